//! A sandbox's `state.json`: any bytes are a record or a typed error
//! naming the file, never a panic; a record stores and loads back.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sandvisor::supervisor::SandboxRecord;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/state.json");
    match SandboxRecord::from_slice(data, path) {
        Ok(record) => {
            let again = serde_json::to_vec(&record).expect("a record encodes");
            SandboxRecord::from_slice(&again, path).expect("a stored record loads back");
        }
        Err(e) => assert!(e.to_string().contains("/fuzz/state.json")),
    }
});
