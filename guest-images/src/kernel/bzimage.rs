//! The x86 boot protocol header of a bzImage: identification, the version
//! string and the compressed payload, which is the ELF vmlinux.
//! Offsets are those of Documentation/arch/x86/boot.rst.

use std::io::Read;

/// `setup_sects` (byte).
const SETUP_SECTS: usize = 0x1f1;
/// "HdrS" magic (u32).
const HEADER_MAGIC: usize = 0x202;
/// Boot protocol version (u16).
const PROTOCOL_VERSION: usize = 0x206;
/// Pointer to the version string, relative to 0x200 (u16).
const KERNEL_VERSION: usize = 0x20e;
/// Payload offset relative to the protected-mode code (u32).
const PAYLOAD_OFFSET: usize = 0x248;
/// Payload length (u32).
const PAYLOAD_LENGTH: usize = 0x24c;
/// Boot protocol version that introduced the payload fields.
const MIN_PAYLOAD_PROTOCOL: u16 = 0x208;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Facts read from a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BzImage {
    /// Boot protocol version, e.g. 0x20f.
    pub protocol: u16,
    /// The header's version string (`6.12.117+deb12-amd64 (debian-kernel@...) #1 ...`).
    pub version: String,
    /// Byte range of the compressed vmlinux in the file.
    pub payload: std::ops::Range<usize>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parse the header; `Err` says why the bytes are not a usable bzImage.
pub fn parse(image: &[u8]) -> Result<BzImage, String> {
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err("no \"HdrS\" boot header".into());
    }
    let protocol = u16_at(image, PROTOCOL_VERSION).ok_or("truncated header")?;
    if protocol < MIN_PAYLOAD_PROTOCOL {
        return Err(format!("boot protocol {protocol:#x} is too old"));
    }
    let setup_sects = match image[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let version_ptr = u16_at(image, KERNEL_VERSION).ok_or("truncated header")? as usize + 0x200;
    let version = image
        .get(version_ptr..)
        .map(|b| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(0).min(256);
            String::from_utf8_lossy(&b[..end]).into_owned()
        })
        .unwrap_or_default();
    let off = u32_at(image, PAYLOAD_OFFSET).ok_or("truncated header")? as usize;
    let len = u32_at(image, PAYLOAD_LENGTH).ok_or("truncated header")? as usize;
    let start = pm_start + off;
    if len == 0 || start.checked_add(len).is_none_or(|end| end > image.len()) {
        return Err("payload outside the file".into());
    }
    Ok(BzImage {
        protocol,
        version,
        payload: start..start + len,
    })
}

/// Decompress the payload (the ELF vmlinux). `Ok(None)` when the compression
/// is one this tool does not decode (then the bzImage is booted as is).
pub fn extract_vmlinux(image: &[u8], bz: &BzImage) -> std::io::Result<Option<Vec<u8>>> {
    let payload = &image[bz.payload.clone()];
    let mut out = Vec::with_capacity(payload.len() * 4);
    if payload.starts_with(&ZSTD_MAGIC) {
        // The kernel appends the decompressed size after the frame: read one frame only.
        zstd::stream::read::Decoder::new(payload)?
            .single_frame()
            .read_to_end(&mut out)?;
    } else if payload.starts_with(&GZIP_MAGIC) {
        flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A synthetic bzImage: 1 setup sector + boot sector, then a zstd payload.
    fn fake_bzimage(payload_plain: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[SETUP_SECTS] = 1;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        // Version string at 0x300 (pointer 0x100 relative to 0x200).
        img[KERNEL_VERSION..KERNEL_VERSION + 2].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + 9].copy_from_slice(b"6.99.0-x\0");
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(payload_plain).unwrap();
        let mut compressed = enc.finish().unwrap();
        compressed.extend_from_slice(&(payload_plain.len() as u32).to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(compressed.len() as u32).to_le_bytes());
        img.resize(1024 + 16, 0);
        img.extend_from_slice(&compressed);
        img
    }

    #[test]
    fn parses_header_and_extracts_zstd_payload() {
        let img = fake_bzimage(b"\x7fELF-pretend-vmlinux");
        let bz = parse(&img).unwrap();
        assert_eq!(bz.protocol, 0x20f);
        assert_eq!(bz.version, "6.99.0-x");
        let out = extract_vmlinux(&img, &bz).unwrap().unwrap();
        assert_eq!(out, b"\x7fELF-pretend-vmlinux");
    }

    #[test]
    fn rejects_non_kernels_with_a_reason() {
        assert!(parse(b"just text").unwrap_err().contains("HdrS"));
        let mut img = fake_bzimage(b"x");
        let len = img.len() as u32;
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        assert!(parse(&img).unwrap_err().contains("payload"));
    }
}
