//! `sandvisor run` end to end: a real VM from the default assets, through
//! the configured hypervisor (QEMU), one command per test.
//!
//! Fails, not skips, when the assets are missing. Each test boots one VM;
//! they run one at a time.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_assets() {
    let dir = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            dir.join(f).is_file(),
            "guest asset {} is missing: run sandvisor image build",
            dir.join(f).display()
        );
    }
}

/// Runs `sandvisor run` with `args` and `stdin`, in a private runtime
/// directory; checks that the directory holds no VM afterwards.
fn sandvisor_run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    require_assets();
    sandvisor_run_with(&sandvisor::paths::asset_dir(), args, stdin)
}

/// [`sandvisor_run`] with the guest assets in `assets`.
fn sandvisor_run_with(assets: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tempfile::Builder::new()
        .prefix("sv-run-")
        .tempdir()
        .expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .arg("run")
        .args(args)
        .env("SANDVISOR_ASSET_DIR", assets)
        .env("SANDVISOR_RUNTIME_DIR", runtime.path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("sandvisor ends");
    assert_no_vm_left(runtime.path());
    out
}

fn assert_no_vm_left(runtime: &Path) {
    let vm_dir = runtime.join("vm");
    let left: Vec<_> = std::fs::read_dir(&vm_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM files left behind: {left:?}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn vm_run_streams_and_exits_with_the_command_code() {
    let out = sandvisor_run(
        &["--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).contains("to-err\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn vm_run_exits_3_and_sees_two_cpus() {
    let out = sandvisor_run(&["--", "sh", "-c", "exit 3"], None);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let out = sandvisor_run(&["--cpus", "2", "--", "nproc"], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2\n");
}

#[test]
fn vm_run_passes_piped_stdin_and_guest_kernel() {
    let out = sandvisor_run(
        &[
            "--cpus",
            "1",
            "--memory",
            "512",
            "--",
            "sh",
            "-c",
            "cat; uname -r",
        ],
        Some(b"piped\n"),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("piped\n"), "{stdout}");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    assert!(
        !stdout.contains(host.trim()),
        "ran on the host kernel: {stdout}"
    );
}

#[test]
fn vm_run_reports_a_signal_as_128_plus() {
    let out = sandvisor_run(&["--", "sh", "-c", "kill -9 $$"], None);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn vm_run_kills_a_command_at_its_timeout() {
    let out = sandvisor_run(&["--timeout", "10", "--", "sleep", "600"], None);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("--timeout"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn vm_run_without_a_guest_fails_cleanly() {
    // The mock backend runs no guest, so no agent answers: a clear error
    // and a failure exit, in about the timeout.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args([
            "run",
            "--hypervisor",
            "mock",
            "--timeout",
            "1",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("sandvisor runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn vm_run_loads_drivers_for_the_guests_devices_only() {
    // The cloud kernel's sandbox has virtio-serial, virtio-scsi and
    // virtio-rng: their drivers load; those of devices it lacks (network,
    // virtio-blk, virtio-fs, pmem) stay on the shelf of the initrd. The
    // default sandbox kernel has no modules at all (vm_kernels.rs).
    let assets = sandvisor::paths::cloud_kernel_asset_dir();
    assert!(
        assets.join(sandvisor::paths::INITRD_FILE).is_file(),
        "cloud-kernel assets missing in {}: run SANDVISOR_CLOUD_KERNEL=1 scripts/setup.sh",
        assets.display()
    );
    let out = sandvisor_run_with(
        &assets,
        &["--", "sh", "-c", "cut -d' ' -f1 /proc/modules"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let loaded: Vec<&str> = stdout.lines().collect();
    for m in ["virtio_pci", "virtio_console", "virtio_scsi", "virtio_rng"] {
        assert!(loaded.contains(&m), "{m} not loaded: {loaded:?}");
    }
    for m in [
        "virtio_net",
        "virtio_blk",
        "virtiofs",
        "fuse",
        "libnvdimm",
        "sd_mod",
    ] {
        assert!(
            !loaded.contains(&m),
            "{m} loaded without its device: {loaded:?}"
        );
    }
}
