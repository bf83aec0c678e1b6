//! Just enough ELF64 reading, through the program headers, to tell whether a
//! vmlinux can be booted through its PVH entry (a `Xen` note of type
//! `XEN_ELFNOTE_PHYS32_ENTRY`) and which dynamic loader a binary names.

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Whether `b` starts like an ELF file.
pub fn is_elf(b: &[u8]) -> bool {
    b.starts_with(ELF_MAGIC)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A 64-bit ELF's program header table: offset, entry size, count.
fn program_headers(b: &[u8]) -> Option<(usize, usize, usize)> {
    if !is_elf(b) || *b.get(4)? != ELFCLASS64 {
        return None;
    }
    Some((
        usize::try_from(u64_at(b, 0x20)?).ok()?,
        usize::from(u16_at(b, 0x36)?),
        usize::from(u16_at(b, 0x38)?),
    ))
}

/// The file contents of a 64-bit ELF's segments of type `p_type`, in
/// program header order. The walk ends at the first program header or
/// segment that lies outside the file.
fn segments(b: &[u8], p_type: u32) -> impl Iterator<Item = &[u8]> {
    let (phoff, phentsize, phnum) = program_headers(b).unwrap_or_default();
    (0..phnum)
        .map_while(move |i| {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if u32_at(b, ph)? != p_type {
                return Some(None);
            }
            let off = usize::try_from(u64_at(b, ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(b, ph + 32)?).ok()?;
            b.get(off..off.checked_add(size)?).map(Some)
        })
        .flatten()
}

/// The PVH entry address of a 64-bit ELF, if it has one. Never panics on
/// malformed input.
pub fn pvh_entry(b: &[u8]) -> Option<u32> {
    segments(b, PT_NOTE).find_map(find_pvh_note)
}

/// The dynamic loader (`PT_INTERP`) a 64-bit little-endian ELF names, if any.
pub fn interpreter(b: &[u8]) -> Option<String> {
    if *b.get(5)? != ELFDATA2LSB {
        return None;
    }
    let raw = segments(b, PT_INTERP).next()?;
    let raw = raw.split(|&c| c == 0).next()?;
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn find_pvh_note(mut notes: &[u8]) -> Option<u32> {
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)? as usize;
        let descsz = u32_at(notes, 4)? as usize;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(align4(namesz))?;
        let desc_end = name_end.checked_add(align4(descsz))?;
        let name = notes.get(12..12 + namesz)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4 {
            return u32_at(notes, name_end);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// Find the `Linux version ...` banner in a kernel image.
pub fn linux_banner(b: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = b[from..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = from + pos;
        let rest = &b[start..];
        let end = rest
            .iter()
            .position(|&c| c == 0 || c == b'\n')
            .unwrap_or(0)
            .min(400);
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        // Skip format strings such as "Linux version %s".
        if s.len() > NEEDLE.len() && !s.contains('%') {
            return Some(s);
        }
        from = start + NEEDLE.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE holding the PVH note.
    fn elf_with_note(kind: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = ELFCLASS64;
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[0x40..0x44].copy_from_slice(&PT_NOTE.to_le_bytes());
        b[0x48..0x50].copy_from_slice(&0x100u64.to_le_bytes()); // p_offset
        b[0x60..0x68].copy_from_slice(&20u64.to_le_bytes()); // p_filesz
        let note = &mut b[0x100..0x114];
        note[0..4].copy_from_slice(&4u32.to_le_bytes());
        note[4..8].copy_from_slice(&4u32.to_le_bytes());
        note[8..12].copy_from_slice(&kind.to_le_bytes());
        note[12..16].copy_from_slice(b"Xen\0");
        note[16..20].copy_from_slice(&0x0100_0123u32.to_le_bytes());
        b
    }

    #[test]
    fn finds_pvh_entry() {
        assert_eq!(pvh_entry(&elf_with_note(18)), Some(0x0100_0123));
        assert_eq!(pvh_entry(&elf_with_note(17)), None);
    }

    #[test]
    fn malformed_elf_is_not_pvh() {
        let mut b = elf_with_note(18);
        b[0x48..0x50].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&b), None);
        assert_eq!(pvh_entry(b"\x7fELF"), None);
    }

    #[test]
    fn interpreter_of_host_binary() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let interp = interpreter(&sh).expect("/bin/sh is dynamic");
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
        assert_eq!(interpreter(b"not an elf"), None);
        assert_eq!(interpreter(b"\x7fELF\x02\x01"), None);
        assert_eq!(interpreter(&elf_with_note(18)), None);
    }

    #[test]
    fn banner_skips_format_strings() {
        let img = b"xxLinux version %s\0yyLinux version 6.12.1 (x@y) #1\0";
        assert_eq!(
            linux_banner(img).as_deref(),
            Some("Linux version 6.12.1 (x@y) #1")
        );
    }
}
