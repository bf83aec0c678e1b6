//! The snapshot file: header, state section, page-aligned guest RAM, one
//! SHA-256 over all of it; written atomically, read back as untrusted.
//!
//! The checksum is a two-level SHA-256 so that all-zero RAM costs nothing
//! to save or verify: guest RAM is cut into 2 MiB chunks, each chunk hashed
//! on its own, and the checksum is `SHA-256(header[0..80] ‖ state ‖
//! chunk digest 0 ‖ chunk digest 1 ‖ …)`. An all-zero chunk's digest is a
//! constant; such a chunk is a hole in the file, and on restore a chunk the
//! file system reports as a hole (`SEEK_DATA`) reads as zeros by definition,
//! so it is neither read nor hashed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::error::{BuildId, SnapshotError};
use crate::memory::GuestMem;

/// First bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"ARNASNAP";
/// Version of the layout described in the module docs of `snapshot`.
pub const FORMAT_VERSION: u32 = 1;
/// Page size: the state section and guest RAM start on page boundaries.
pub const PAGE: u64 = 4096;
/// Bytes of the header that carry fields (the rest of page 0 is zero).
pub const HEADER_LEN: usize = 112;
/// Offset of the checksum inside the header; the checksum covers the header
/// bytes before it.
const CHECKSUM_AT: usize = 80;
/// Largest state section accepted (a 32-vCPU VM with a full console buffer
/// needs well under 16 MiB).
pub const MAX_STATE_LEN: u64 = 64 << 20;
/// Guest RAM is copied and hashed in chunks of this size.
const CHUNK: usize = 2 << 20;

/// SHA-256 of `len` zero bytes; every chunk but the last is [`CHUNK`] long.
fn zero_digest(len: usize) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    let hash = |n| Sha256::digest(vec![0u8; n]).into();
    if len == CHUNK {
        *FULL.get_or_init(|| hash(CHUNK))
    } else {
        hash(len)
    }
}

/// First offset at or after `from` holding data, per the file system;
/// `u64::MAX` when only a hole follows. File systems without hole
/// reporting say "data" everywhere, which only costs reading zeros.
fn next_data(file: &File, from: u64) -> u64 {
    let Ok(off) = libc::off_t::try_from(from) else {
        return from;
    };
    // SAFETY: lseek on the descriptor `file` owns; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r >= 0 {
        r as u64
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        u64::MAX
    } else {
        from
    }
}

/// The fixed header in page 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Layout version.
    pub version: u32,
    /// Build of the VMM that wrote the file.
    pub build_id: BuildId,
    /// Where the JSON state starts (one page in).
    pub state_offset: u64,
    /// Its length.
    pub state_len: u64,
    /// Where guest RAM starts (page aligned).
    pub mem_offset: u64,
    /// Guest RAM bytes, all regions back to back.
    pub mem_len: u64,
    /// SHA-256 of header bytes `0..80`, the state section and the digests
    /// of guest RAM's 2 MiB chunks (see the module docs).
    pub checksum: [u8; 32],
}

impl Header {
    /// Encodes the header, little endian.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..48].copy_from_slice(&self.build_id.0);
        for (i, v) in [
            self.state_offset,
            self.state_len,
            self.mem_offset,
            self.mem_len,
        ]
        .iter()
        .enumerate()
        {
            b[48 + 8 * i..56 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[CHECKSUM_AT..CHECKSUM_AT + 32].copy_from_slice(&self.checksum);
        b
    }

    /// Decodes and checks magic and version; the offsets are checked by
    /// [`open`] against the file.
    pub fn decode(b: &[u8]) -> Result<Self, SnapshotError> {
        if b.len() < HEADER_LEN {
            return Err(SnapshotError::Truncated(format!(
                "{} bytes, the header alone is {HEADER_LEN}",
                b.len()
            )));
        }
        if b[0..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                found: version,
                reads: FORMAT_VERSION,
            });
        }
        Ok(Self {
            version,
            build_id: BuildId(b[16..48].try_into().expect("32 bytes")),
            state_offset: u64_at(48),
            state_len: u64_at(56),
            mem_offset: u64_at(64),
            mem_len: u64_at(72),
            checksum: b[CHECKSUM_AT..CHECKSUM_AT + 32]
                .try_into()
                .expect("32 bytes"),
        })
    }
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}

/// `FILE.tmp` next to `FILE`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes a snapshot to `path` atomically: `path.tmp` is written, fsynced
/// and renamed over `path`; on any error it is removed, so `path` is either
/// the old file or the complete new one. All-zero guest pages are left as
/// holes (sparse file). Returns the file's length.
pub fn write(
    path: &Path,
    build_id: &BuildId,
    state: &[u8],
    mem: &GuestMem,
) -> Result<u64, SnapshotError> {
    let tmp = tmp_path(path);
    let r = write_tmp(&tmp, build_id, state, mem).and_then(|len| {
        std::fs::rename(&tmp, path).map_err(|e| io(path, "rename", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename itself durable; failure only risks that.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(len)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn io(path: &Path, what: &str, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{what} {}", path.display()), e)
}

fn write_tmp(
    tmp: &Path,
    build_id: &BuildId,
    state: &[u8],
    mem: &GuestMem,
) -> Result<u64, SnapshotError> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| io(tmp, "create", e))?;
    let mem_len: u64 = mem.iter().map(|r| r.len()).sum();
    let mut h = Header {
        version: FORMAT_VERSION,
        build_id: *build_id,
        state_offset: PAGE,
        state_len: state.len() as u64,
        mem_offset: align_up(PAGE + state.len() as u64),
        mem_len,
        checksum: [0; 32],
    };
    let mut hasher = Sha256::new();
    hasher.update(&h.encode()[..CHECKSUM_AT]);
    hasher.update(state);
    f.write_all_at(state, h.state_offset)
        .map_err(|e| io(tmp, "write", e))?;
    let zero = [0u8; PAGE as usize];
    let mut buf = vec![0u8; CHUNK];
    let mut at = h.mem_offset;
    for region in mem.iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, vm_memory::MemoryRegionAddress(off))
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            if chunk.chunks(PAGE as usize).all(|p| p == &zero[..p.len()]) {
                hasher.update(zero_digest(n));
                off += n as u64;
                at += n as u64;
                continue;
            }
            hasher.update(Sha256::digest(&*chunk));
            // Write runs of non-zero pages; zero pages stay holes.
            let mut run: Option<usize> = None;
            for (i, page) in chunk.chunks(PAGE as usize).enumerate() {
                let nonzero = page != &zero[..page.len()];
                match (run, nonzero) {
                    (None, true) => run = Some(i),
                    (Some(s), false) => {
                        let p = PAGE as usize;
                        f.write_all_at(&chunk[s * p..i * p], at + (s * p) as u64)
                            .map_err(|e| io(tmp, "write", e))?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run {
                let p = PAGE as usize;
                f.write_all_at(&chunk[s * p..], at + (s * p) as u64)
                    .map_err(|e| io(tmp, "write", e))?;
            }
            off += n as u64;
            at += n as u64;
        }
    }
    let len = h.mem_offset + mem_len;
    f.set_len(len).map_err(|e| io(tmp, "extend", e))?;
    h.checksum = hasher.finalize().into();
    f.write_all_at(&h.encode(), 0)
        .map_err(|e| io(tmp, "write", e))?;
    f.sync_all().map_err(|e| io(tmp, "fsync", e))?;
    Ok(len)
}

/// A verified snapshot file: the header checks, the build matches and the
/// checksum covers every byte that will be used.
#[derive(Debug)]
pub struct Opened {
    /// The file (guest RAM is mapped from it).
    pub file: File,
    /// Its header.
    pub header: Header,
    /// The state section.
    pub state: Vec<u8>,
}

/// How much of a snapshot [`open`] verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Everything, the checksum over all bytes included.
    Checksum,
    /// All but the checksum: the caller verified this file (`--no-verify`).
    TrustCaller,
}

/// Opens and verifies `path`: magic, version, offsets and lengths against
/// the file size (truncation) and the limits, `build_id`, and finally (with
/// [`Check::Checksum`]) the checksum over everything, guest RAM included (data chunks are read
/// through the page cache, which the private mapping then shares; holes
/// are not read).
pub fn open(path: &Path, build_id: &BuildId, check: Check) -> Result<Opened, SnapshotError> {
    let mut file = File::open(path).map_err(|e| io(path, "open", e))?;
    let file_len = file.metadata().map_err(|e| io(path, "stat", e))?.len();
    let mut head = vec![0u8; HEADER_LEN.min(file_len as usize)];
    file.read_exact(&mut head)
        .map_err(|e| io(path, "read", e))?;
    let h = Header::decode(&head)?;
    if h.state_offset != PAGE || h.state_len > MAX_STATE_LEN {
        return Err(SnapshotError::Corrupt(format!(
            "state section at {:#x}, {} bytes",
            h.state_offset, h.state_len
        )));
    }
    if h.mem_offset != align_up(PAGE + h.state_len) {
        return Err(SnapshotError::Corrupt(format!(
            "guest memory at {:#x}, expected right after the state",
            h.mem_offset
        )));
    }
    let need = h
        .mem_offset
        .checked_add(h.mem_len)
        .ok_or_else(|| SnapshotError::Corrupt("guest memory length overflows".into()))?;
    if file_len < need {
        return Err(SnapshotError::Truncated(format!(
            "{file_len} bytes, the header describes {need}"
        )));
    }
    if h.build_id != *build_id {
        return Err(SnapshotError::OtherBuild {
            snapshot: h.build_id,
            this: *build_id,
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(&h.encode()[..CHECKSUM_AT]);
    let mut state = vec![0u8; h.state_len as usize];
    file.seek(SeekFrom::Start(h.state_offset))
        .and_then(|_| file.read_exact(&mut state))
        .map_err(|e| io(path, "read", e))?;
    hasher.update(&state);
    if check == Check::TrustCaller {
        return Ok(Opened {
            file,
            header: h,
            state,
        });
    }
    let mut buf = vec![0u8; CHUNK];
    let end = h.mem_offset + h.mem_len;
    let mut at = h.mem_offset;
    let mut data_at = next_data(&file, at);
    while at < end {
        let n = (end - at).min(CHUNK as u64) as usize;
        if data_at < at {
            data_at = next_data(&file, at);
        }
        if data_at >= at + n as u64 {
            hasher.update(zero_digest(n));
        } else {
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io(path, "read", e))?;
            hasher.update(Sha256::digest(&buf[..n]));
        }
        at += n as u64;
    }
    let sum: [u8; 32] = hasher.finalize().into();
    if sum != h.checksum {
        return Err(SnapshotError::Checksum);
    }
    Ok(Opened {
        file,
        header: h,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::GuestAddress;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-snapfmt-{name}-{}", std::process::id()))
    }

    const ID: BuildId = BuildId([7; 32]);

    fn sample_file(name: &str) -> (PathBuf, GuestMem) {
        let p = tmp(name);
        let mem = create_guest_memory(16).unwrap();
        mem.write_slice(b"page one", GuestAddress(0)).unwrap();
        mem.write_slice(b"far away", GuestAddress(12 << 20))
            .unwrap();
        write(&p, &ID, b"{\"state\":1}", &mem).unwrap();
        (p, mem)
    }

    #[test]
    fn round_trip_is_sparse_and_page_aligned() {
        let (p, _) = sample_file("rt");
        assert!(!tmp_path(&p).exists());
        let o = open(&p, &ID, Check::Checksum).unwrap();
        assert_eq!(o.state, b"{\"state\":1}");
        assert_eq!(o.header.mem_offset, 2 * PAGE);
        assert_eq!(o.header.mem_len, 16 << 20);
        let m = crate::memory::map_guest_memory_private(&o.file, o.header.mem_offset, 16).unwrap();
        let mut b = [0u8; 8];
        m.read_slice(&mut b, GuestAddress(12 << 20)).unwrap();
        assert_eq!(&b, b"far away");
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 2 * PAGE + (16 << 20));
        assert!(md.blocks() * 512 < 1 << 20, "zero pages must be holes");
        let _ = std::fs::remove_file(&p);
    }

    /// `--no-verify` skips the checksum only: a flipped RAM byte passes
    /// (the caller vouched for the file), a bad header or truncation does not.
    #[test]
    fn trusting_the_caller_skips_only_the_checksum() {
        let (p, _) = sample_file("trust");
        let mut b = std::fs::read(&p).unwrap();
        b[(2 * PAGE + (12 << 20)) as usize] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(open(&p, &ID, Check::TrustCaller).is_ok());
        assert!(open(&p, &ID, Check::Checksum).is_err());
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        let e = open(&p, &ID, Check::TrustCaller).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        b[0] = b'X';
        std::fs::write(&p, &b).unwrap();
        assert!(open(&p, &ID, Check::TrustCaller).is_err());
        assert!(open(&p, &BuildId([8; 32]), Check::TrustCaller).is_err());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn corrupt_files_are_refused() {
        let (p, _) = sample_file("bad");
        let good = std::fs::read(&p).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&p, bytes).unwrap();
            let e = open(&p, &ID, Check::Checksum).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        };
        let mut b = good.clone();
        b[0] = b'X';
        check(&b, "not an arena-vmm snapshot");
        let mut b = good.clone();
        b[8] = 9;
        check(&b, "format version 9");
        check(&good[..good.len() - 1], "truncated");
        check(&good[..50], "truncated");
        check(&[], "truncated");
        let mut b = good.clone();
        b[PAGE as usize + 3] ^= 1; // state byte
        check(&b, "checksum");
        let mut b = good.clone();
        b[(2 * PAGE + (12 << 20)) as usize] ^= 1; // guest RAM byte
        check(&b, "checksum");
        let mut b = good.clone();
        b[63] = 0xff; // huge state length
        check(&b, "state section");
        let mut b = good.clone();
        b[72..80].fill(0xff); // mem_len overflows
        check(&b, "overflows");
        std::fs::write(&p, &good).unwrap();
        let e = open(&p, &BuildId([8; 32]), Check::Checksum)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0707070707070707") && e.contains("0808080808080808"),
            "{e}"
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let mem = create_guest_memory(16).unwrap();
        let p = std::path::Path::new("/nonexistent-dir/snap");
        assert!(write(p, &ID, b"{}", &mem).is_err());
        // A directory in the way of the rename: the tmp file is removed.
        let d = tmp("dir");
        std::fs::create_dir_all(d.join("x")).unwrap();
        assert!(write(&d, &ID, b"{}", &mem).is_err());
        assert!(!tmp_path(&d).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
