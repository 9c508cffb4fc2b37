//! The image builder's ELF readers: linkage of a binary, a module's
//! `.modinfo`, a kernel's PVH note.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor::image::{elf, vmlinux};

fuzz_target!(|data: &[u8]| {
    let _ = elf::linkage(data);
    let _ = elf::modinfo(data);
    let _ = vmlinux::has_pvh_note(data);
});
