//! The uncompressed kernel (`vmlinux`) inside a bzImage, for PVH boot.
//!
//! A bzImage is a real-mode setup, a decompressor and the compressed
//! kernel ELF. Booting it makes the guest decompress itself, which under
//! TCG costs a few hundred milliseconds of every boot. A kernel built with
//! `CONFIG_PVH` carries an ELF note (`XEN_ELFNOTE_PHYS32_ENTRY`) that lets
//! QEMU (`-kernel vmlinux`), Firecracker and Cloud Hypervisor jump straight
//! into the uncompressed ELF; Kata ships its guest kernel that way
//! (`vmlinux.container`).
//!
//! The payload's place and size come from the x86 boot protocol's setup
//! header (version 2.08 and later), not from scanning for magic numbers.

use std::io::Read as _;

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::Endianness;

/// Offset of `setup_sects` in the bzImage.
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the `HdrS` magic.
const HEADER_MAGIC: usize = 0x202;
/// Offset of the boot protocol version.
const PROTOCOL_VERSION: usize = 0x206;
/// Offset of `payload_offset` (relative to the protected-mode code).
const PAYLOAD_OFFSET: usize = 0x248;
/// Offset of `payload_length`.
const PAYLOAD_LENGTH: usize = 0x24c;
/// The first protocol with `payload_offset`.
const MIN_PROTOCOL: u16 = 0x0208;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The LZ4 "legacy" frame the kernel's `lz4 -l` writes.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Uncompressed size of each block of the legacy frame.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Why a kernel gives no PVH image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmlinuxError {
    /// Not a bzImage the boot protocol describes.
    #[error("not a bzImage: {0}")]
    NotBzImage(String),
    /// The payload uses a compression the builder does not read.
    #[error("the kernel payload is compressed with {0}, which sandvisor does not decompress (gzip, xz, zstd and lz4 are read)")]
    UnsupportedCompression(&'static str),
    /// Decompressing failed.
    #[error("cannot decompress the {format} kernel payload: {reason}")]
    Decompress {
        /// The format.
        format: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The payload is not a 64-bit ELF.
    #[error("the kernel payload is not a 64-bit ELF file")]
    NotElf,
    /// The ELF has no PVH entry note (a kernel without `CONFIG_PVH`).
    #[error("the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); it needs CONFIG_PVH=y")]
    NoPvhNote,
}

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage.
    BzImage,
    /// An ELF kernel with a PVH entry point.
    PvhElf,
    /// Anything else.
    Other,
}

/// Tells a bzImage from a PVH ELF.
pub fn format(data: &[u8]) -> KernelFormat {
    if data.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(b"HdrS") {
        KernelFormat::BzImage
    } else if has_pvh_note(data) == Ok(true) {
        KernelFormat::PvhElf
    } else {
        KernelFormat::Other
    }
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The compressed payload of a bzImage.
///
/// # Errors
/// [`VmlinuxError::NotBzImage`] when the header is missing, too old or
/// points outside the file.
pub fn payload(bzimage: &[u8]) -> Result<&[u8], VmlinuxError> {
    let bad = |why: &str| VmlinuxError::NotBzImage(why.to_string());
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header"));
    }
    let version = bzimage
        .get(PROTOCOL_VERSION..PROTOCOL_VERSION + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| bad("truncated setup header"))?;
    if version < MIN_PROTOCOL {
        return Err(bad(&format!(
            "boot protocol {}.{:02} has no payload fields (2.08 or later needed)",
            version >> 8,
            version & 0xff
        )));
    }
    // A setup_sects of 0 means 4, as in the boot protocol.
    let sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (sects + 1) * 512;
    let offset = le32(bzimage, PAYLOAD_OFFSET).ok_or_else(|| bad("truncated setup header"))?;
    let length = le32(bzimage, PAYLOAD_LENGTH).ok_or_else(|| bad("truncated setup header"))?;
    let start = pm_start + offset as usize;
    bzimage
        .get(start..start + length as usize)
        .ok_or_else(|| bad("payload_offset and payload_length point outside the file"))
}

/// Decompresses a bzImage payload, telling the format by its magic.
///
/// # Errors
/// [`VmlinuxError::UnsupportedCompression`] or [`VmlinuxError::Decompress`].
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let fail = |format: &'static str| {
        move |e: std::io::Error| VmlinuxError::Decompress {
            format,
            reason: e.to_string(),
        }
    };
    let mut out = Vec::new();
    match payload {
        [0x1f, 0x8b, ..] => {
            flate2::read::GzDecoder::new(payload)
                .read_to_end(&mut out)
                .map_err(fail("gzip"))?;
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => {
            // The kernel appends its uncompressed size after the stream,
            // which the xz reader would take for a damaged block.
            let stream = &payload[..payload.len().saturating_sub(4)];
            let mut input = std::io::BufReader::new(stream);
            lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| VmlinuxError::Decompress {
                format: "xz",
                reason: e.to_string(),
            })?;
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            // Trailing bytes (the size) follow the frame; read one frame.
            let mut d = zstd::stream::read::Decoder::new(payload)
                .map_err(fail("zstd"))?
                .single_frame();
            d.read_to_end(&mut out).map_err(fail("zstd"))?;
        }
        [0x02, 0x21, 0x4c, 0x18, ..] => out = lz4_legacy(payload)?,
        [b'B', b'Z', b'h', ..] => return Err(VmlinuxError::UnsupportedCompression("bzip2")),
        [0x5d, 0x00, 0x00, ..] => return Err(VmlinuxError::UnsupportedCompression("lzma")),
        [0x89, b'L', b'Z', b'O', ..] => return Err(VmlinuxError::UnsupportedCompression("lzo")),
        _ => return Err(VmlinuxError::UnsupportedCompression("an unknown format")),
    }
    Ok(out)
}

/// Reads LZ4's legacy frame: the magic, then blocks of a little-endian
/// compressed size and an LZ4 block of at most 8 MiB each. The stream ends
/// at the data's end, at a new magic, or at a size that cannot be a block
/// (the kernel's trailing uncompressed-size word).
fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let err = |reason: String| VmlinuxError::Decompress {
        format: "lz4",
        reason,
    };
    let mut out = Vec::new();
    let mut at = 4;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = le32(data, at) {
        if size == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let size = size as usize;
        let Some(input) = data.get(at + 4..at + 4 + size) else {
            break;
        };
        let n = lz4_flex::block::decompress_into(input, &mut block)
            .map_err(|e| err(format!("block at byte {at}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        at += 4 + size;
    }
    if out.is_empty() {
        return Err(err("no blocks".into()));
    }
    Ok(out)
}

/// Whether an ELF file has a PVH entry note.
///
/// # Errors
/// [`VmlinuxError::NotElf`] when it is not a 64-bit ELF file.
pub fn has_pvh_note(data: &[u8]) -> Result<bool, VmlinuxError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|_| VmlinuxError::NotElf)?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        let Ok(Some(mut notes)) = ph.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The PVH-bootable ELF inside `bzimage`.
///
/// # Errors
/// See [`VmlinuxError`].
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    let elf = decompress(payload(bzimage)?)?;
    if has_pvh_note(&elf)? {
        Ok(elf)
    } else {
        Err(VmlinuxError::NoPvhNote)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use super::*;

    /// A minimal 64-bit ELF with one PT_NOTE segment holding `notes`.
    pub(crate) fn elf_with_note(name: &[u8], n_type: u32) -> Vec<u8> {
        let mut note = Vec::new();
        let namesz = u32::try_from(name.len() + 1).expect("short name");
        note.extend_from_slice(&namesz.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&n_type.to_le_bytes());
        note.extend_from_slice(name);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x0100_0000u64.to_le_bytes());

        let phoff = 64u64;
        let note_off = phoff + 56;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, LE, version 1
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0x0100_0000u64.to_le_bytes()); // entry
        f.extend_from_slice(&phoff.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        f.extend_from_slice(&56u16.to_le_bytes()); // phentsize
        f.extend_from_slice(&1u16.to_le_bytes()); // phnum
        f.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        f.extend_from_slice(&0u16.to_le_bytes()); // shnum
        f.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
                                                  // PT_NOTE program header.
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes()); // flags R
        f.extend_from_slice(&note_off.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // vaddr
        f.extend_from_slice(&0u64.to_le_bytes()); // paddr
        let len = note.len() as u64;
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes()); // align
        f.extend_from_slice(&note);
        // Padding so compressors have something to chew on.
        f.extend(std::iter::repeat(0x90).take(64 * 1024));
        f
    }

    /// A bzImage-shaped file: setup header, then `payload` at
    /// `payload_offset` 0x100 of the protected-mode code.
    pub(crate) fn bzimage(payload: &[u8], version: u16) -> Vec<u8> {
        let sects = 3u8;
        let pm = (usize::from(sects) + 1) * 512;
        let mut f = vec![0u8; pm + 0x100];
        f[SETUP_SECTS] = sects;
        f[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        f[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        f[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x100u32.to_le_bytes());
        let len = u32::try_from(payload.len()).expect("small payload");
        f[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        f.extend_from_slice(payload);
        // The decompressor's code follows the payload in a real image.
        f.extend_from_slice(&[0xcc; 64]);
        f
    }

    fn lz4_legacy_compress(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&u32::try_from(c.len()).expect("block").to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    /// The kernel's build appends the uncompressed size to every payload.
    fn with_size(mut compressed: Vec<u8>, raw: &[u8]) -> Vec<u8> {
        let n = u32::try_from(raw.len()).expect("small");
        compressed.extend_from_slice(&n.to_le_bytes());
        compressed
    }

    fn compressed(format: &str, data: &[u8]) -> Vec<u8> {
        let c = match format {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).expect("in memory");
                e.finish().expect("in memory")
            }
            "xz" => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::Cursor::new(data), &mut out).expect("xz");
                out
            }
            "zstd" => zstd::encode_all(data, 1).expect("zstd"),
            "lz4" => lz4_legacy_compress(data),
            other => panic!("no compressor {other}"),
        };
        with_size(c, data)
    }

    #[test]
    fn every_supported_compression_round_trips() {
        let elf = elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY);
        for fmt in ["gzip", "xz", "zstd", "lz4"] {
            let image = bzimage(&compressed(fmt, &elf), 0x020f);
            assert_eq!(format(&image), KernelFormat::BzImage, "{fmt}");
            let out = extract(&image).unwrap_or_else(|e| panic!("{fmt}: {e}"));
            assert_eq!(out, elf, "{fmt}");
            assert_eq!(format(&out), KernelFormat::PvhElf, "{fmt}");
        }
    }

    #[test]
    fn lz4_spans_several_blocks() {
        let data: Vec<u8> = (0..LZ4_LEGACY_BLOCK * 2 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let out = lz4_legacy(&with_size(lz4_legacy_compress(&data), &data)).expect("lz4");
        assert_eq!(out.len(), data.len());
        assert!(out == data);
    }

    #[test]
    fn a_kernel_without_pvh_is_refused() {
        let elf = elf_with_note(b"Xen", 6);
        let image = bzimage(&compressed("gzip", &elf), 0x020f);
        assert_eq!(extract(&image), Err(VmlinuxError::NoPvhNote));
        assert_eq!(format(&elf), KernelFormat::Other);
        let elf = elf_with_note(b"GNU", XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(has_pvh_note(&elf), Ok(false));
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let elf = elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY);
        let old = bzimage(&compressed("gzip", &elf), 0x0206);
        let e = extract(&old)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("boot protocol 2.06"), "{e}");

        let mut short = bzimage(&compressed("gzip", &elf), 0x020f);
        short.truncate(4 * 512 + 0x100 + 10);
        let e = extract(&short)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("outside the file"), "{e}");

        assert!(matches!(
            payload(&[0u8; 1024]),
            Err(VmlinuxError::NotBzImage(_))
        ));
        let bz2 = bzimage(b"BZh91AY&SY", 0x020f);
        assert_eq!(
            extract(&bz2),
            Err(VmlinuxError::UnsupportedCompression("bzip2"))
        );
        let junk = bzimage(b"\x02\x21\x4c\x18\x10\x00\x00\x00garbage-garbage!", 0x020f);
        assert!(matches!(
            extract(&junk),
            Err(VmlinuxError::Decompress { format: "lz4", .. })
        ));
    }
}
