//! The hybrid-vsock handshake: whatever line answers `CONNECT <port>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandvisor::agent::transport::check_hybrid_reply;

fuzz_target!(|data: &[u8]| {
    let ok = check_hybrid_reply(data, 1024).is_ok();
    assert_eq!(
        ok,
        data.starts_with(b"OK "),
        "only `OK ` lets a connection through"
    );
});
