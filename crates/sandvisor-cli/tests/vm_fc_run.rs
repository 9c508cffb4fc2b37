//! `sandvisor run --hypervisor firecracker --config F --timeout 15 -- true`
//! on this host, without and with the jailer: Firecracker starts (through
//! the API, in a jail for the second), but the guest is the tiny PVH guest,
//! which has no agent, so the run fails with an agent error within its
//! timeout, never with `Unsupported`, and leaves no VM directory, jail or
//! Firecracker process.
//!
//! Needs `$SANDVISOR_VMM_DIR/{firecracker,jailer}`. With a Linux guest and
//! its agent (which barely advances under Firecracker on this PVM host),
//! the same run would exit with `true`'s status 0: not asserted here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sandvisor::image::tiny_guest::TinyGuest;

fn binaries() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(std::env::var_os("SANDVISOR_VMM_DIR").unwrap_or_else(|| {
        panic!(
            "SANDVISOR_VMM_DIR is not set: point it at the folder holding firecracker and jailer"
        )
    }));
    let (fc, jailer) = (dir.join("firecracker"), dir.join("jailer"));
    for b in [&fc, &jailer] {
        assert!(b.is_file(), "{} is missing", b.display());
    }
    (fc, jailer)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn run(jailed: bool) {
    let (fc, jailer) = binaries();
    let runtime = tempfile::Builder::new()
        .prefix("svfr")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let assets = tempfile::tempdir().expect("tempdir");
    let kernel = assets.path().join("guest.elf");
    TinyGuest::default().write_to(&kernel).expect("guest");
    let initrd = assets.path().join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 4096]).expect("initrd");
    let mut toml = format!(
        "[hypervisor.firecracker]\npath = {:?}\nkernel = {:?}\ninitrd = {:?}\ndefault_memory = 256\n",
        fc.display().to_string(),
        kernel.display().to_string(),
        initrd.display().to_string()
    );
    // Unset, the jailer would be found in $SANDVISOR_VMM_DIR: "" opts out.
    let jailer_path = if jailed {
        jailer.display().to_string()
    } else {
        String::new()
    };
    toml.push_str(&format!("jailer_path = {jailer_path:?}\n"));
    let config = assets.path().join("configuration.toml");
    std::fs::write(&config, toml).expect("config");

    let out = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["run", "--hypervisor", "firecracker", "--config"])
        .arg(&config)
        .args(["--timeout", "15", "--", "true"])
        .env("SANDVISOR_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null())
        .output()
        .expect("sandvisor runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("guest agent"), "an agent error: {stderr}");
    assert!(
        !stderr.contains("does not support"),
        "never Unsupported: {stderr}"
    );
    for d in ["vm", "jail"] {
        let left: Vec<_> = entries(&runtime.path().join(d))
            .into_iter()
            .flat_map(|p| if p.is_dir() { entries(&p) } else { vec![p] })
            .collect();
        assert!(left.is_empty(), "left behind in {d}: {left:?}");
    }
    let runtime_str = runtime.path().display().to_string();
    let procs: Vec<_> = entries(Path::new("/proc"))
        .into_iter()
        .filter(|p| {
            // Unjailed, the API socket's path names the runtime folder; a
            // jailed firecracker's root is its jail there.
            let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let root = std::fs::read_link(p.join("root")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&runtime_str) || root.starts_with(runtime.path())
        })
        .collect();
    assert!(procs.is_empty(), "firecracker processes left: {procs:?}");
}

#[test]
fn vm_fc_run_fails_with_an_agent_error_and_leaves_nothing() {
    run(false);
}

#[test]
fn vm_fc_run_jailed_fails_with_an_agent_error_and_leaves_nothing() {
    run(true);
}
