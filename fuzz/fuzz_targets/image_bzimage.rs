//! The image builder's kernel readers: a bzImage's header, payload and
//! decompression to the vmlinux inside.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor::image::vmlinux;

fuzz_target!(|data: &[u8]| {
    let _ = vmlinux::format(data);
    if let Ok(payload) = vmlinux::payload(data) {
        let _ = vmlinux::decompress(payload);
    }
    let _ = vmlinux::decompress(data);
    let _ = vmlinux::extract(data);
});
