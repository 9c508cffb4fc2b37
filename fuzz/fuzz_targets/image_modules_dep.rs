//! The image builder's `modules.dep` reader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sandvisor::image::modules::parse_modules_dep(text);
    }
});
