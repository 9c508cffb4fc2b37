//! The image builder's cpio writer: any names and contents make an archive
//! whose every header and body is 4-byte aligned and that ends with the
//! trailer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor::image::cpio::{Archive, Entry};

fuzz_target!(|data: &[u8]| {
    let mut archive = Archive::new();
    for chunk in data.split(|&b| b == 0).take(16) {
        let (name, body) = chunk.split_at(chunk.len().min(chunk.len() / 2 + 1));
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        archive.add(
            name,
            Entry::File {
                mode: 0o644,
                data: body.to_vec(),
            },
        );
    }
    let mut out = Vec::new();
    archive
        .write_to(&mut out)
        .expect("writing to memory succeeds");
    assert_eq!(out.len() % 4, 0, "cpio archives are 4-byte aligned");
    assert!(
        out.windows(10).any(|w| w == b"TRAILER!!!"),
        "ends with the trailer"
    );
});
