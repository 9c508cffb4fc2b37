//! Shared support for the Firecracker VM tests (`vm_fc_*`): the binaries
//! from `$SANDVISOR_VMM_DIR`, the tiny PVH guest, and checks that nothing
//! is left behind.
//!
//! The guest is the tiny PVH guest (a banner on COM1, then dots while it
//! runs): a Linux guest barely advances under Firecracker on this host.
//! What only a booted Linux guest could show (the agent answering on the
//! hybrid vsock, a hot-plugged disk appearing after a PCI rescan, memory
//! onlined by virtio-mem, a reboot on Ctrl+Alt+Del) is named in each test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandvisor::backends::firecracker::{FcOptions, Firecracker};
use sandvisor::config::HypervisorConfig;
use sandvisor::image::tiny_guest::{TinyGuest, BANNER, DOT};

/// How long a Firecracker start may take on a busy two-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `firecracker` and `jailer` in `$SANDVISOR_VMM_DIR`, or a failure
/// naming what is missing.
pub fn binaries() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("SANDVISOR_VMM_DIR").unwrap_or_else(|| {
        panic!(
            "SANDVISOR_VMM_DIR is not set: point it at the folder holding the firecracker \
             and jailer binaries (../shared/vmm here)"
        )
    });
    let dir = PathBuf::from(dir);
    let fc = dir.join("firecracker");
    let jailer = dir.join("jailer");
    for b in [&fc, &jailer] {
        assert!(
            b.is_file(),
            "{} is missing: SANDVISOR_VMM_DIR={} must hold firecracker and jailer",
            b.display(),
            dir.display()
        );
    }
    (fc, jailer)
}

/// Temporary folders of one test: VM storage, jails, assets; all short
/// and under /tmp (unix socket paths are short).
pub struct Dirs {
    /// VM directories.
    pub storage: tempfile::TempDir,
    /// Jails.
    pub jails: tempfile::TempDir,
    /// The guest and snapshot files.
    pub assets: tempfile::TempDir,
}

fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temporary directory under /tmp")
}

impl Dirs {
    /// New, empty folders, and the tiny guest with a dummy initrd (the
    /// config needs one; the guest never reads it).
    pub fn new() -> Dirs {
        let d = Dirs {
            storage: tmp("svfs"),
            jails: tmp("svfj"),
            assets: tmp("svfa"),
        };
        TinyGuest::default()
            .write_to(d.kernel())
            .expect("writes the guest");
        std::fs::write(d.initrd(), vec![0u8; 4096]).expect("writes the initrd");
        d
    }

    /// The guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.assets.path().join("guest.elf")
    }

    /// The dummy initrd.
    pub fn initrd(&self) -> PathBuf {
        self.assets.path().join("initrd.img")
    }

    /// Snapshot files `(state, memory)`.
    pub fn snapshot(&self) -> (PathBuf, PathBuf) {
        (
            self.assets.path().join("vm.state"),
            self.assets.path().join("vm.mem"),
        )
    }

    /// A config for the tiny guest, jailed or not.
    pub fn config(&self, jailed: bool) -> HypervisorConfig {
        let (fc, jailer) = binaries();
        HypervisorConfig {
            kernel_path: Some(self.kernel()),
            initrd_path: Some(self.initrd()),
            hypervisor_path: Some(fc),
            jailer_path: jailed.then_some(jailer),
            unjailed: !jailed,
            num_vcpus: 1,
            default_max_vcpus: 1,
            memory_size: 256,
            use_vsock: true,
            ..HypervisorConfig::default()
        }
    }

    /// Options with jails under [`Dirs::jails`].
    pub fn options(&self) -> FcOptions {
        FcOptions {
            chroot_base: self.jails.path().to_path_buf(),
            ..FcOptions::default()
        }
    }

    /// A backend with `options`, VMs under [`Dirs::storage`].
    pub fn backend(&self, options: FcOptions) -> Firecracker {
        Firecracker::with_options(self.storage.path(), options)
    }

    /// Fails unless storage and jails are empty.
    pub fn assert_empty(&self) {
        for d in [self.storage.path(), self.jails.path()] {
            let left = super::entries(d);
            assert!(left.is_empty(), "left behind in {}: {left:?}", d.display());
        }
    }
}

/// The serial output so far.
pub fn serial(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until the serial output satisfies `ok`, up to `timeout`.
pub async fn wait_serial(path: &Path, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s = serial(path);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "serial output {path:?} not as expected within {timeout:?}; it is {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of dots in the output.
pub fn dots(s: &str) -> usize {
    s.bytes().filter(|b| *b == DOT).count()
}

/// Whether the output is the banner then only dots.
pub fn banner_then_dots(s: &str) -> bool {
    s.strip_prefix(BANNER)
        .is_some_and(|rest| rest.bytes().all(|b| b == DOT))
}

/// Whether any process's command line holds `needle` (a leaked
/// Firecracker of this test would).
pub fn any_process_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && super::alive(pid) {
            found.push(pid);
        }
    }
    found
}
