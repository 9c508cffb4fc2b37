//! QMP replies and events: any line QEMU could send decodes or is an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = sandvisor::backends::qemu::qmp::fuzz_line(line);
    }
});
