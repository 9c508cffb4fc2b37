//! The Kata `configuration.toml` loader: any text is a config or a typed
//! error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sandvisor::config::kata::{parse_config, VsockHost};
use sandvisor::config::vocabulary::HostFacts;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let host = HostFacts { cpus: 2 };
    let no_vsock = VsockHost {
        no_vhost_vsock: Some("no /dev/vhost-vsock".into()),
        daemon: Err("no vhost-device-vsock".into()),
    };
    for vsock in [VsockHost::vhost_vsock(), no_vsock] {
        if let Ok(rc) = parse_config(
            text,
            Path::new("/fuzz/configuration.toml"),
            None,
            host,
            &vsock,
        ) {
            let mut config = rc.config;
            let _ = config.validate();
        }
    }
});
