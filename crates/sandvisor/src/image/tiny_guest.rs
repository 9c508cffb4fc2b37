//! The tiny PVH test guest: an ELF kernel of a few hundred bytes that prints
//! a banner on COM1 and then one character after every N turns of a busy
//! loop, forever.
//!
//! Cloud Hypervisor and Firecracker both boot it as a PVH kernel: they load
//! its one `PT_LOAD` segment at its physical address and, finding a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note in its `PT_NOTE` segment, enter it at the
//! note's address in 32-bit protected mode with flat segments and paging
//! off. The guest needs no stack, no memory map and no interrupts. Its
//! output shows whether a VM runs: the banner says it booted, the dots keep
//! coming while it runs, stop while it is paused, and continue after a
//! resume or a snapshot restore.
//!
//! The bytes come from a pure function ([`TinyGuest::elf`]), so tests and
//! the bench need no toolchain and no file from elsewhere.
//!
//! ```
//! use sandvisor::image::tiny_guest::{TinyGuest, BANNER};
//!
//! let elf = TinyGuest::default().elf();
//! assert_eq!(&elf[..4], b"\x7fELF");
//! assert!(elf.ends_with(BANNER.as_bytes()));
//! ```

use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::path::Path;

/// The banner the default guest prints first.
pub const BANNER: &str = "sandvisor-tiny-guest\n";

/// The byte the guest prints after every [`TinyGuest::dot_every`] turns of
/// its loop.
pub const DOT: u8 = b'.';

/// Turns of the busy loop between two dots by default. On a PVM-backed host
/// the loop (`dec ecx; jnz`) ran 1 to 2.7 M turns a second under Cloud
/// Hypervisor and Firecracker, so this prints 10 to 27 dots a second there:
/// enough to see a pause stop them within a fraction of a second.
pub const DEFAULT_DOT_EVERY: NonZeroU32 = match NonZeroU32::new(100_000) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The physical (and virtual) address the guest is loaded at: 1 MiB, the
/// lowest address both VMMs accept for a kernel segment.
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// The serial port the guest writes to (COM1's data register).
pub const COM1: u16 = 0x3f8;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note type giving the 32-bit PVH
/// entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of one ELF64 program header.
const PHDR_SIZE: usize = 56;
/// Program headers: `PT_LOAD`, `PT_NOTE`.
const PHDR_COUNT: usize = 2;
/// Where the note starts in the file.
const NOTE_OFFSET: usize = EHDR_SIZE + PHDR_SIZE * PHDR_COUNT;
/// The note's owner name, NUL included (4 bytes, so no padding).
const NOTE_NAME: &[u8; 4] = b"Xen\0";
/// The note: header (namesz, descsz, type), name, 32-bit descriptor.
const NOTE_SIZE: usize = 12 + NOTE_NAME.len() + 4;
/// Where the code starts in the file.
const CODE_OFFSET: usize = NOTE_OFFSET + NOTE_SIZE;

/// The guest's description: what it prints and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyGuest {
    banner: String,
    dot_every: NonZeroU32,
}

impl Default for TinyGuest {
    /// [`BANNER`], then a dot every [`DEFAULT_DOT_EVERY`] turns.
    fn default() -> Self {
        Self {
            banner: BANNER.to_owned(),
            dot_every: DEFAULT_DOT_EVERY,
        }
    }
}

impl TinyGuest {
    /// A guest printing `banner` once, then [`DOT`] after every `dot_every`
    /// turns of its loop.
    pub fn new(banner: impl Into<String>, dot_every: NonZeroU32) -> Self {
        Self {
            banner: banner.into(),
            dot_every,
        }
    }

    /// What the guest prints first.
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// Turns of the busy loop between two dots.
    pub fn dot_every(&self) -> NonZeroU32 {
        self.dot_every
    }

    /// The guest's entry point: the address in its PVH note and the ELF
    /// header's `e_entry`.
    pub fn entry(&self) -> u64 {
        LOAD_ADDRESS + CODE_OFFSET as u64
    }

    /// The ELF64 image: the file header, a `PT_LOAD` segment covering the
    /// whole file at [`LOAD_ADDRESS`], a `PT_NOTE` segment holding the PVH
    /// entry note, the code, and the banner.
    pub fn elf(&self) -> Vec<u8> {
        let banner = self.banner.as_bytes();
        // The banner follows the code; its address goes into the code.
        let code_len = code(0, 0, 1).len();
        let banner_offset = CODE_OFFSET + code_len;
        let total = banner_offset + banner.len();
        let banner_address = address32(LOAD_ADDRESS + banner_offset as u64);
        let banner_len = u32::try_from(banner.len()).unwrap_or(u32::MAX);
        let entry = self.entry();

        let mut out = Vec::with_capacity(total);
        file_header(&mut out, entry);
        // PT_LOAD: the whole file, readable and executable.
        program_header(
            &mut out,
            &Segment {
                kind: PT_LOAD,
                flags: PF_R | PF_X,
                offset: 0,
                size: total as u64,
                align: 0x1000,
            },
        );
        // PT_NOTE: the PVH entry note.
        program_header(
            &mut out,
            &Segment {
                kind: PT_NOTE,
                flags: PF_R,
                offset: NOTE_OFFSET as u64,
                size: NOTE_SIZE as u64,
                align: 4,
            },
        );
        push_u32(&mut out, NOTE_NAME.len() as u32); // n_namesz
        push_u32(&mut out, 4); // n_descsz
        push_u32(&mut out, XEN_ELFNOTE_PHYS32_ENTRY); // n_type
        out.extend_from_slice(NOTE_NAME);
        push_u32(&mut out, address32(entry));
        out.extend_from_slice(&code(banner_address, banner_len, self.dot_every.get()));
        out.extend_from_slice(banner);
        out
    }

    /// Writes [`TinyGuest::elf`] to `path`.
    ///
    /// # Errors
    ///
    /// The error of writing the file.
    pub fn write_to(&self, path: impl AsRef<Path>) -> io::Result<()> {
        fs::write(path, self.elf())
    }
}

/// The guest's 32-bit code. No stack is used; `edx` holds the port
/// throughout.
fn code(banner: u32, banner_len: u32, dot_every: u32) -> Vec<u8> {
    let mut c = Vec::with_capacity(40);
    c.push(0xfc); //                          cld
    c.push(0xba); //                          mov  edx, COM1
    c.extend_from_slice(&u32::from(COM1).to_le_bytes());
    c.push(0xbe); //                          mov  esi, banner
    c.extend_from_slice(&banner.to_le_bytes());
    c.push(0xb9); //                          mov  ecx, banner_len
    c.extend_from_slice(&banner_len.to_le_bytes());
    c.extend_from_slice(&[0xe3, 0x04]); //    jecxz dots
    c.push(0xac); //                   print: lodsb           ; al = [esi++]
    c.push(0xee); //                          out  dx, al
    c.extend_from_slice(&[0xe2, 0xfc]); //    loop print      ; --ecx, again if not 0
    c.push(0xb9); //                   dots:  mov  ecx, dot_every
    c.extend_from_slice(&dot_every.to_le_bytes());
    c.push(0x49); //                   spin:  dec  ecx
    c.extend_from_slice(&[0x75, 0xfd]); //    jnz  spin
    c.extend_from_slice(&[0xb0, DOT]); //     mov  al, DOT
    c.push(0xee); //                          out  dx, al
    c.extend_from_slice(&[0xeb, 0xf3]); //    jmp  dots
    c
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_R: u32 = 4;

/// One program header's fields; the addresses follow from the offset.
struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    size: u64,
    align: u64,
}

/// The ELF64 file header of a little-endian x86-64 executable with
/// [`PHDR_COUNT`] program headers right after it and no sections.
fn file_header(out: &mut Vec<u8>, entry: u64) {
    out.extend_from_slice(b"\x7fELF");
    out.push(2); // EI_CLASS: ELFCLASS64
    out.push(1); // EI_DATA: ELFDATA2LSB
    out.push(1); // EI_VERSION: EV_CURRENT
    out.push(0); // EI_OSABI: System V
    out.extend_from_slice(&[0; 8]); // EI_ABIVERSION, padding
    push_u16(out, 2); // e_type: ET_EXEC
    push_u16(out, 62); // e_machine: EM_X86_64
    push_u32(out, 1); // e_version
    push_u64(out, entry); // e_entry
    push_u64(out, EHDR_SIZE as u64); // e_phoff
    push_u64(out, 0); // e_shoff
    push_u32(out, 0); // e_flags
    push_u16(out, EHDR_SIZE as u16); // e_ehsize
    push_u16(out, PHDR_SIZE as u16); // e_phentsize
    push_u16(out, PHDR_COUNT as u16); // e_phnum
    push_u16(out, 0); // e_shentsize
    push_u16(out, 0); // e_shnum
    push_u16(out, 0); // e_shstrndx
}

/// An ELF64 program header for `segment`, mapped at [`LOAD_ADDRESS`] plus
/// its file offset (physical and virtual alike).
fn program_header(out: &mut Vec<u8>, segment: &Segment) {
    let address = LOAD_ADDRESS + segment.offset;
    push_u32(out, segment.kind); // p_type
    push_u32(out, segment.flags); // p_flags
    push_u64(out, segment.offset); // p_offset
    push_u64(out, address); // p_vaddr
    push_u64(out, address); // p_paddr
    push_u64(out, segment.size); // p_filesz
    push_u64(out, segment.size); // p_memsz
    push_u64(out, segment.align); // p_align
}

/// `address` as the 32-bit value the code and the note hold. The guest
/// sits just above 1 MiB, so this never truncates.
fn address32(address: u64) -> u32 {
    u32::try_from(address).unwrap_or(u32::MAX)
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::{ElfFile64, FileHeader as _, NoteIterator, ProgramHeader as _};
    use object::{elf, Endianness, Object as _};

    /// The program headers of `data`, parsed by the `object` crate.
    fn segments(data: &[u8]) -> Vec<elf::ProgramHeader64<Endianness>> {
        let file = ElfFile64::<Endianness>::parse(data).expect("the guest is an ELF64 file");
        file.elf_program_headers().to_vec()
    }

    /// The descriptor of the `XEN_ELFNOTE_PHYS32_ENTRY` note, as a u32.
    fn pvh_entry(data: &[u8]) -> Option<u32> {
        let file = ElfFile64::<Endianness>::parse(data).expect("the guest is an ELF64 file");
        let endian = file.endian();
        for ph in file.elf_program_headers() {
            let Some(mut notes): Option<NoteIterator<'_, elf::FileHeader64<Endianness>>> =
                ph.notes(endian, data).expect("notes parse")
            else {
                continue;
            };
            while let Some(note) = notes.next().expect("note parses") {
                if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                    let desc: [u8; 4] = note.desc().try_into().expect("4-byte descriptor");
                    return Some(u32::from_le_bytes(desc));
                }
            }
        }
        None
    }

    #[test]
    fn the_elf_is_an_x86_64_executable() {
        let data = TinyGuest::default().elf();
        let file = ElfFile64::<Endianness>::parse(&*data).expect("parses");
        let header = file.elf_header();
        let endian = file.endian();
        assert_eq!(header.e_type(endian), elf::ET_EXEC);
        assert_eq!(header.e_machine(endian), elf::EM_X86_64);
        assert!(file.is_little_endian());
        assert_eq!(file.entry(), TinyGuest::default().entry());
    }

    #[test]
    fn one_load_segment_covers_the_file_at_one_mib() {
        let data = TinyGuest::default().elf();
        let loads: Vec<_> = segments(&data)
            .into_iter()
            .filter(|ph| ph.p_type(Endianness::Little) == elf::PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 1);
        let e = Endianness::Little;
        let load = &loads[0];
        assert_eq!(load.p_offset(e), 0);
        assert_eq!(load.p_paddr(e), LOAD_ADDRESS);
        assert_eq!(load.p_vaddr(e), LOAD_ADDRESS);
        assert_eq!(load.p_filesz(e), data.len() as u64);
        assert_eq!(load.p_memsz(e), data.len() as u64);
        assert_eq!(load.p_flags(e), elf::PF_R | elf::PF_X);
    }

    #[test]
    fn the_note_segment_holds_the_pvh_entry_which_is_the_elf_entry() {
        let guest = TinyGuest::default();
        let data = guest.elf();
        let notes = segments(&data)
            .into_iter()
            .filter(|ph| ph.p_type(Endianness::Little) == elf::PT_NOTE)
            .count();
        assert_eq!(notes, 1);
        let entry = pvh_entry(&data).expect("a PVH entry note");
        assert_eq!(u64::from(entry), guest.entry());
        let file = ElfFile64::<Endianness>::parse(&*data).expect("parses");
        assert_eq!(file.entry(), u64::from(entry));
        // The entry lies inside the loaded segment, at the code.
        let offset = (u64::from(entry) - LOAD_ADDRESS) as usize;
        assert_eq!(data[offset], 0xfc, "the code starts with cld");
    }

    #[test]
    fn the_code_points_at_the_banner_and_holds_the_loop_count() {
        let guest = TinyGuest::new("hello\n", NonZeroU32::new(12_345).expect("not zero"));
        let data = guest.elf();
        let code_at = CODE_OFFSET;
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        // mov edx, imm32 / mov esi, imm32 / mov ecx, imm32
        assert_eq!(data[code_at + 1], 0xba);
        assert_eq!(word(code_at + 2), u32::from(COM1));
        assert_eq!(data[code_at + 6], 0xbe);
        let banner_at = (u64::from(word(code_at + 7)) - LOAD_ADDRESS) as usize;
        assert_eq!(&data[banner_at..], b"hello\n");
        assert_eq!(data[code_at + 11], 0xb9);
        assert_eq!(word(code_at + 12), 6);
        // dots: mov ecx, dot_every
        assert_eq!(data[code_at + 22], 0xb9);
        assert_eq!(word(code_at + 23), 12_345);
    }

    #[test]
    fn the_jumps_land_on_their_labels() {
        let c = code(0, 0, 1);
        // Each rel8 jump is relative to the end of its two-byte instruction.
        let target = |at: usize| (at as isize + 2 + c[at + 1] as i8 as isize) as usize;
        assert_eq!(c[16], 0xe3, "jecxz");
        assert_eq!(target(16), 22, "jecxz goes to dots");
        assert_eq!(c[20], 0xe2, "loop");
        assert_eq!(target(20), 18, "loop goes to print");
        assert_eq!(c[28], 0x75, "jnz");
        assert_eq!(target(28), 27, "jnz goes to spin");
        assert_eq!(c[33], 0xeb, "jmp");
        assert_eq!(target(33), 22, "jmp goes to dots");
        assert_eq!(c.len(), 35);
    }

    #[test]
    fn write_to_writes_the_elf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("guest.elf");
        let guest = TinyGuest::default();
        guest.write_to(&path).expect("writes");
        assert_eq!(fs::read(&path).expect("reads"), guest.elf());
    }

    #[test]
    fn an_empty_banner_still_parses() {
        let guest = TinyGuest::new("", DEFAULT_DOT_EVERY);
        let data = guest.elf();
        assert_eq!(pvh_entry(&data).map(u64::from), Some(guest.entry()));
        assert_eq!(data.len(), CODE_OFFSET + 35);
    }
}
