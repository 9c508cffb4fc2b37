//! `sandvisor run --hypervisor clh`: the whole path through Cloud
//! Hypervisor with the real guest assets.
//!
//! On a host whose KVM runs stock guests, the command runs and succeeds.
//! On this PVM-backed host the Linux guest barely advances under CH, so
//! the run must fail within its timeout with an error about the agent
//! (never `Unsupported`), and leave no VM, process or socket behind.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor` and the guest assets.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cloud_hypervisor() -> PathBuf {
    let Some(dir) = std::env::var_os("SANDVISOR_VMM_DIR").filter(|d| !d.is_empty()) else {
        panic!(
            "SANDVISOR_VMM_DIR is not set: point it at the directory holding the \
             cloud-hypervisor binary (CI: /work/shared/vmm-equivalent)"
        )
    };
    let bin = Path::new(&dir).join("cloud-hypervisor");
    assert!(
        bin.is_file(),
        "{} is missing: SANDVISOR_VMM_DIR must hold the cloud-hypervisor binary",
        bin.display()
    );
    bin
}

fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                        .unwrap_or(false)
                })
                .filter(|pid| sandvisor::process::pid_alive(*pid))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_through_cloud_hypervisor() {
    let assets = sandvisor::paths::asset_dir();
    let kernel = assets.join(sandvisor::paths::KERNEL_FILE);
    let initrd = assets.join(sandvisor::paths::INITRD_FILE);
    assert!(
        kernel.is_file() && initrd.is_file(),
        "guest assets {} and {} are missing: run sandvisor image build",
        kernel.display(),
        initrd.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("sv-clh-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let config = dir.path().join("clh.toml");
    std::fs::write(
        &config,
        format!(
            "[hypervisor.clh]\npath = {:?}\nkernel = {:?}\ninitrd = {:?}\ndefault_memory = 512\n",
            cloud_hypervisor(),
            kernel,
            initrd
        ),
    )
    .expect("config");
    let runtime = dir.path().join("rt");
    let out = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["run", "--hypervisor", "clh", "--config"])
        .arg(&config)
        .args(["--timeout", "15", "--", "true"])
        .env("SANDVISOR_RUNTIME_DIR", &runtime)
        .output()
        .expect("sandvisor runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("does not support"),
        "clh answered Unsupported: {stderr}"
    );
    if sandvisor::probe::probe_host_kvm().usable() {
        assert!(out.status.success(), "a KVM host runs the guest: {stderr}");
    } else {
        assert!(!out.status.success(), "PVM cannot boot the guest: {stderr}");
        assert!(
            stderr.contains("agent"),
            "the error is about the agent: {stderr}"
        );
    }
    let vms: Vec<_> = std::fs::read_dir(runtime.join("vm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(vms.is_empty(), "VM files left: {vms:?}");
    assert!(
        processes_mentioning(&runtime).is_empty(),
        "processes left: {:?}",
        processes_mentioning(&runtime)
    );
}
