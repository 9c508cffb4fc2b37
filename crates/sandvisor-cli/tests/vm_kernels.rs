//! Both guest kernels boot `sandvisor run -- uname -r`: the default assets
//! (the sandbox kernel built from Debian's source with everything built
//! in, `sandvisor image build`) and Debian's cloud kernel with its modules
//! (`sandvisor image build --kernel-from cloud`, which `scripts/setup.sh`
//! puts in `<asset dir>/cloud-kernel` when `SANDVISOR_CLOUD_KERNEL=1`).
//!
//! Every assertion needs a booted Linux guest. Fails, not skips, when the
//! assets are missing, and says how to build them.

use std::path::Path;
use std::process::Command;

use sandvisor::image::{source::LOCALVERSION, Manifest, MANIFEST_FILE};
use sandvisor::paths::{INITRD_FILE, KERNEL_FILE};

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn manifest(dir: &Path, how: &str) -> Manifest {
    for f in [KERNEL_FILE, INITRD_FILE, MANIFEST_FILE] {
        assert!(
            dir.join(f).is_file(),
            "guest asset {} is missing: {how}",
            dir.join(f).display()
        );
    }
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).expect("manifest readable");
    serde_json::from_str(&text).expect("manifest parses")
}

/// `sandvisor run -- sh -c script` with the assets in `dir`; its stdout.
fn run_in(dir: &Path, script: &str) -> String {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tempfile::Builder::new()
        .prefix("sv-kernel-")
        .tempdir()
        .expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["run", "--", "sh", "-c", script])
        .env("SANDVISOR_ASSET_DIR", dir)
        .env("SANDVISOR_RUNTIME_DIR", runtime.path())
        .output()
        .expect("sandvisor runs");
    assert!(
        out.status.success(),
        "sandvisor run failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(runtime.path().join("vm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM files left behind: {left:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn vm_the_cloud_kernel_reports_its_release_and_loads_modules() {
    let dir = sandvisor::paths::cloud_kernel_asset_dir();
    let m = manifest(
        &dir,
        &format!(
            "run SANDVISOR_CLOUD_KERNEL=1 scripts/setup.sh, or sandvisor image build \
             --kernel-from cloud --output {}",
            dir.display()
        ),
    );
    assert!(!m.modules.is_empty(), "the initrd holds no modules");
    let out = run_in(&dir, "uname -r; test -e /proc/modules && echo modular");
    let mut lines = out.lines();
    let release = lines.next().unwrap_or_default();
    if let Some(expected) = &m.kernel_release {
        assert_eq!(release, expected, "{out}");
    }
    assert!(!release.ends_with(LOCALVERSION), "{out}");
    assert_eq!(lines.next(), Some("modular"), "{out}");
}

#[test]
fn vm_the_sandbox_kernel_reports_its_own_release_without_modules() {
    let dir = sandvisor::paths::asset_dir();
    let m = manifest(&dir, "run sandvisor image build (or scripts/setup.sh)");
    assert!(
        m.modules.is_empty(),
        "the initrd holds modules: {:?}",
        m.modules
    );
    // No /proc/modules: the kernel cannot load modules; no /lib/modules:
    // the initrd carries none; ext4 and overlay are there all the same.
    let out = run_in(
        &dir,
        "uname -r; test -e /proc/modules || echo no-modules; \
         test -e /lib/modules || echo no-module-dir; \
         grep -wc -e ext4 -e overlay -e fuse /proc/filesystems",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.first().is_some_and(|r| r.ends_with(LOCALVERSION)),
        "{out}"
    );
    assert_eq!(lines.first().copied(), m.kernel_release.as_deref(), "{out}");
    assert_eq!(
        lines.get(1..3),
        Some(&["no-modules", "no-module-dir"][..]),
        "{out}"
    );
    assert_eq!(lines.get(3).copied(), Some("3"), "{out}");
}
