//! A writer for the `newc` cpio format the kernel unpacks as initramfs.
//! Output is deterministic: fixed mtimes, owners and inode numbers.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams cpio entries into `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// Add a directory (`path` without leading `/`).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, &[])
    }

    /// Add a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, data)
    }

    /// Add a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Add a character device node (e.g. `dev/console`, 5:1).
    pub fn chardev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry_full(path, S_IFCHR | perm, 1, &[], (major, minor))
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, &[])?;
        // Pad the archive to a 512-byte multiple, as cpio(1) does.
        let pad = (512 - (self.offset % 512)) % 512;
        self.write(&vec![0u8; pad as usize])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        self.entry_full(path, mode, nlink, data, (0, 0))
    }

    fn entry_full(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        data: &[u8],
        (rmaj, rmin): (u32, u32),
    ) -> io::Result<()> {
        let name_len = path.len() + 1;
        let ino = self.next_ino;
        self.next_ino += 1;
        let header = format!(
            "{MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            maj = 0,
            min = 0,
            namesize = name_len,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(path.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        self.write(data)?;
        self.pad4()
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4)) % 4;
        self.write(&[0u8; 3][..pad as usize])
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(archive: &[u8], at: usize, idx: usize) -> u32 {
        let s = std::str::from_utf8(&archive[at + 6 + idx * 8..at + 6 + (idx + 1) * 8]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn header_layout_and_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"hello").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 0, 1), S_IFREG | 0o755); // mode
        assert_eq!(field(&out, 0, 6), 5); // filesize
        assert_eq!(field(&out, 0, 11), 5); // namesize incl. NUL
                                           // 110-byte header + "init\0" = 115, padded to 116; data starts there.
        assert_eq!(&out[116..121], b"hello");
        // Next header (trailer) starts 4-aligned at 124.
        assert_eq!(&out[124..130], b"070701");
        assert_eq!(out.len() % 512, 0);
    }

    #[test]
    fn the_real_cpio_tool_reads_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: cpio(1) not installed");
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("etc/a", 0o644, b"abc").unwrap();
        w.symlink("b", "etc/a").unwrap();
        let out = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let listing = child.wait_with_output().unwrap();
        let names = String::from_utf8(listing.stdout).unwrap();
        assert_eq!(names.lines().collect::<Vec<_>>(), ["etc", "etc/a", "b"]);
    }
}
