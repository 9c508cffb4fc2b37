//! `sandvisor env` and `sandvisor check`, run as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandvisor/tests/data/kata")
}

fn fixtures() -> Vec<PathBuf> {
    let mut all = Vec::new();
    for generation in ["1.x", "current"] {
        let dir = fixtures_dir().join(generation);
        for entry in std::fs::read_dir(&dir).expect("fixture dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                all.push(path);
            }
        }
    }
    all.sort();
    assert_eq!(all.len(), 7, "{all:?}");
    all
}

/// Writes `fixture` into `dir` with each `@NAME@` replaced by a file there
/// (the image left absent when an initrd is named, as on a Kata 1.x host).
fn filled(fixture: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture).expect("fixture");
    let has_initrd = text.contains("@INITRDPATH@");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('@') {
        let Some(len) = rest[start + 1..].find('@') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        let path = dir.join(name.to_lowercase());
        if !(name == "IMAGEPATH" && has_initrd) {
            std::fs::write(&path, name).expect("placeholder file");
        }
        out.push_str(&rest[..start]);
        out.push_str(&path.display().to_string());
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    let file = dir.join("configuration.toml");
    std::fs::write(&file, out).expect("config");
    file
}

fn sandvisor(args: &[&str], asset_dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SANDVISOR_ASSET_DIR", asset_dir)
        .env_remove("SANDVISOR_LOG")
        .output()
        .expect("run sandvisor")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn env_accepts_every_stock_kata_fixture() {
    for fixture in fixtures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = filled(&fixture, dir.path());
        let out = sandvisor(
            &["env", "--config", &file.display().to_string()],
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{}: {}",
            fixture.display(),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains("default_memory = 2048"), "{stdout}");
        assert!(stdout.contains("[factory]"), "{stdout}");
    }
}

#[test]
fn env_warns_on_stderr_about_unimplemented_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = filled(
        &fixtures_dir().join("current/configuration-qemu.toml"),
        dir.path(),
    );
    let out = sandvisor(
        &["env", "--config", &file.display().to_string()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"rootfs_type\"") && stderr.contains("does not implement"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("rootfs_type"));
}

#[test]
fn env_rejects_a_misspelt_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, "[hypervisor.qemu]\ndefualt_vcpus = 2\n").expect("write");
    let out = sandvisor(
        &["env", "--config", &file.display().to_string()],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown key \"defualt_vcpus\"")
            && stderr.contains("did you mean \"default_vcpus\"?"),
        "{stderr}"
    );
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert_eq!(
        stderr.matches("defualt_vcpus").count(),
        1,
        "printed once: {stderr}"
    );
}

#[test]
fn env_rejects_an_invalid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, "[hypervisor.qemu]\ndefault_memory = 100\n").expect("write");
    let out = sandvisor(
        &["env", "--config", &file.display().to_string()],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid hypervisor config in") && stderr.contains("100 MiB"),
        "{stderr}"
    );
}

#[test]
fn env_hypervisor_must_name_a_section_of_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, "[hypervisor.qemu]\n").expect("write");
    let out = sandvisor(
        &[
            "env",
            "--config",
            &file.display().to_string(),
            "--hypervisor",
            "clh",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--hypervisor clh") && stderr.contains("[hypervisor.qemu]"),
        "{stderr}"
    );
}

#[test]
fn env_json_has_values_after_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("my-vmlinuz");
    let file = dir.path().join("configuration.toml");
    std::fs::write(
        &file,
        format!(
            "[hypervisor.qemu]\nkernel = \"{}\"\naccel = \"tcg\"\n",
            kernel.display()
        ),
    )
    .expect("write");
    let out = sandvisor(
        &["env", "--config", &file.display().to_string(), "--json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["hypervisor"], "qemu");
    assert_eq!(json["default_vcpus"], 1);
    assert_eq!(json["default_memory"], 2048);
    assert_eq!(json["kernel"], kernel.display().to_string());
    assert_eq!(
        json["initrd"],
        dir.path().join("initrd.img").display().to_string()
    );
    assert_eq!(json["block_device_driver"], "virtio-scsi");
    assert_eq!(json["accel"], "tcg");
    assert_eq!(json["factory"]["enable_template"], false);

    // Without a file: the built-in default, assets from the asset dir.
    let out = sandvisor(&["env", "--json"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json["kernel"],
        dir.path().join("vmlinux").display().to_string()
    );
    assert_eq!(json["machine_type"], "q35");
    // Kata's shipped `default_maxvcpus = 0`: the host's CPUs.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(json["default_maxvcpus"], cpus);
    assert_eq!(json["memory_slots"], 10, "Kata's default DIMM slots");
    // The built-in sandbox is small; Kata files keep their 2048.
    assert_eq!(json["default_memory"], 1024);
    if std::path::Path::new(sandvisor::config::kata::QBOOT_PATH).is_file() {
        assert_eq!(json["firmware"], sandvisor::config::kata::QBOOT_PATH);
    }
}

#[test]
fn check_agrees_with_the_kvm_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(dir.path().join(f), f).expect("asset");
    }
    let out = sandvisor(&["check"], dir.path());
    let stdout = text(&out.stdout);
    let kvm = sandvisor::probe::probe_host_kvm();
    if kvm.usable() {
        assert!(stdout.contains("ok  accel        KVM usable"), "{stdout}");
    } else {
        assert!(
            stdout.contains("KVM cannot run stock guests here (")
                && stdout.contains("); TCG will be used"),
            "{stdout}"
        );
    }
    let can_start = stdout
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("a sandbox can start"));
    assert_eq!(out.status.success(), can_start, "{stdout}");
    for name in [
        "config",
        "kvm",
        "accel",
        "vhost-vsock",
        "memory",
        "vmm",
        "kernel",
        "initrd",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| (l.starts_with("ok  ") || l.starts_with("no  "))
                    && l[4..].starts_with(name)),
            "{name}: {stdout}"
        );
    }

    let out = sandvisor(&["check", "--json"], dir.path());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["kvm"]["hardware_virt"], kvm.hardware_virt);
    assert_eq!(json["kvm"]["pvm"], kvm.pvm);
    assert_eq!(json["accel"], if kvm.usable() { "kvm" } else { "tcg" });
    assert_eq!(json["startable"], out.status.success());
}

#[test]
fn check_fails_on_a_bad_config_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("configuration.toml");
    std::fs::write(
        &file,
        "[hypervisor.qemu]\nblock_device_driver = \"floppy\"\n",
    )
    .expect("write");
    let out = sandvisor(
        &["check", "--config", &file.display().to_string()],
        dir.path(),
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("no  config") && stdout.contains("\"floppy\""),
        "{stdout}"
    );
    assert!(stdout.contains("a sandbox cannot start here"), "{stdout}");
}

#[test]
fn check_accel_kvm_follows_the_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(dir.path().join(f), f).expect("asset");
    }
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, "[hypervisor.qemu]\naccel = \"kvm\"\n").expect("write");
    let out = sandvisor(
        &["check", "--config", &file.display().to_string()],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    if !sandvisor::probe::probe_host_kvm().usable() {
        assert!(!out.status.success(), "{stdout}");
        assert!(
            stdout.contains("no  accel") && stdout.contains("forbids TCG"),
            "{stdout}"
        );
    } else {
        assert!(stdout.contains("ok  accel"), "{stdout}");
    }
}

#[test]
fn a_zero_timeout_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sandvisor(&["run", "--timeout", "0", "--", "true"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid value '0' for '--timeout"),
        "the message names the flag and the value: {err}"
    );
}

/// Kata's ACRN config on a host that is no ACRN Service VM (this one).
fn acrn_config(dir: &Path) -> Option<PathBuf> {
    let devices = ["/dev/acrn_hsm", "/dev/acrn_vhm"];
    if devices.iter().any(|d| Path::new(d).exists()) {
        eprintln!("skipped: this host is an ACRN Service VM");
        return None;
    }
    Some(filled(
        &fixtures_dir().join("1.x/configuration-acrn.toml"),
        dir,
    ))
}

#[test]
fn check_names_the_missing_acrn_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(file) = acrn_config(dir.path()) else {
        return;
    };
    let out = sandvisor(
        &["check", "--config", &file.display().to_string()],
        dir.path(),
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("no ACRN hypervisor") && stdout.contains("/dev/acrn_hsm"),
        "{stdout}"
    );
    assert!(stdout.contains("a sandbox cannot start here"), "{stdout}");
}

#[test]
fn run_with_acrn_fails_with_the_missing_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(file) = acrn_config(dir.path()) else {
        return;
    };
    let runtime = dir.path().join("run");
    let out = Command::new(BIN)
        .args(["run", "--config", &file.display().to_string(), "--", "true"])
        .env("SANDVISOR_ASSET_DIR", dir.path())
        .env("SANDVISOR_RUNTIME_DIR", &runtime)
        .env_remove("SANDVISOR_LOG")
        .output()
        .expect("run sandvisor");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no ACRN hypervisor") && stderr.contains("/dev/acrn_hsm"),
        "{stderr}"
    );
    assert!(!stderr.contains("does not support"), "{stderr}");
}
