//! The two things the builder reads from ELF files: whether an executable
//! is static (no `PT_INTERP`), and a kernel module's `.modinfo`.

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{elf, Endianness, Object as _, ObjectSection as _};

/// Whether an ELF file is an executable, and whether it is static.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Not a 64-bit ELF file.
    NotElf,
    /// Needs a program interpreter (the dynamic loader).
    Dynamic,
    /// Runs without one.
    Static,
}

/// The linkage of the ELF image `data`.
pub fn linkage(data: &[u8]) -> Linkage {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
        return Linkage::NotElf;
    };
    let endian = file.endian();
    let interp = file
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
    if interp {
        Linkage::Dynamic
    } else {
        Linkage::Static
    }
}

/// What `.modinfo` says a module needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules that must be loaded first.
    pub depends: Vec<String>,
    /// `softdep=pre: ...`: modules that should be loaded first.
    pub soft_pre: Vec<String>,
    /// `alias=`: the device (and other) aliases the module serves, as
    /// `fnmatch` patterns such as `virtio:d00000002v*`.
    pub aliases: Vec<String>,
}

/// Reads the `.modinfo` section of the module image `data`; `None` when it
/// is not an ELF object with one.
pub fn modinfo(data: &[u8]) -> Option<ModInfo> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let section = file.section_by_name(".modinfo")?;
    let bytes = section.data().ok()?;
    let mut info = ModInfo::default();
    for field in bytes.split(|b| *b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        if let Some(deps) = field.strip_prefix("depends=") {
            info.depends.extend(
                deps.split(',')
                    .filter(|d| !d.is_empty())
                    .map(super::modules::normalize),
            );
        } else if let Some(soft) = field.strip_prefix("softdep=") {
            info.soft_pre.extend(parse_softdep_pre(soft));
        } else if let Some(alias) = field.strip_prefix("alias=") {
            info.aliases.push(alias.to_string());
        }
    }
    Some(info)
}

/// The `pre:` modules of a softdep value such as `pre: crc32c post: x`.
fn parse_softdep_pre(value: &str) -> Vec<String> {
    let mut pre = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => pre.push(super::modules::normalize(name)),
            _ => {}
        }
    }
    pre
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softdeps() {
        assert_eq!(parse_softdep_pre("pre: crc32c"), ["crc32c"]);
        assert_eq!(
            parse_softdep_pre("pre: a b-c post: d"),
            ["a".to_string(), "b_c".to_string()]
        );
        assert!(parse_softdep_pre("post: x").is_empty());
    }

    #[test]
    fn not_elf() {
        assert_eq!(linkage(b"#!/bin/sh\n"), Linkage::NotElf);
        assert_eq!(modinfo(b"nope"), None);
    }

    #[test]
    fn this_test_binary_is_dynamic_or_static() {
        let exe = std::env::current_exe().expect("exe");
        let data = std::fs::read(exe).expect("read");
        assert_ne!(linkage(&data), Linkage::NotElf);
    }

    #[test]
    fn busybox_static_is_static() {
        let Ok(data) = std::fs::read("/bin/busybox") else {
            return; // Not installed here; the builder reports that itself.
        };
        // Either package may provide /bin/busybox; only ask that it parses.
        assert_ne!(linkage(&data), Linkage::NotElf);
    }
}
