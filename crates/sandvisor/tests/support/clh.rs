//! Support for the Cloud Hypervisor tests (`vm_clh_*`): the binary from
//! `$SANDVISOR_VMM_DIR`, the tiny PVH guest, its serial console, and the
//! checks that nothing is left behind.
//!
//! The guest is `sandvisor::image::tiny_guest`: it prints a banner on COM1,
//! then a dot every so many loop turns, forever. It runs under CH on this
//! host's PVM-backed KVM, where a Linux guest barely advances, so it shows
//! boot, pause and resume; it has no ACPI, no drivers and no agent, so what
//! needs the guest's cooperation (onlining memory and vCPUs, ejecting a
//! device) is seen only in what CH reports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandvisor::config::HypervisorConfig;
use sandvisor::image::tiny_guest::{TinyGuest, BANNER, DOT};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// How long a start may take here.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `$SANDVISOR_VMM_DIR/cloud-hypervisor`, or a failure naming what is
/// missing.
pub fn binary() -> PathBuf {
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

/// The files a test VM boots: the tiny guest as its kernel and a small
/// initrd (validation wants an image or an initrd; the guest ignores it).
pub struct Guest {
    /// Holds the files.
    pub dir: tempfile::TempDir,
    /// The guest ELF.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
}

/// Writes the tiny guest and an initrd into a fresh directory.
pub fn guest() -> Guest {
    let dir = tempfile::Builder::new()
        .prefix("svg")
        .tempdir_in("/tmp")
        .expect("temporary directory");
    let kernel = dir.path().join("guest.elf");
    TinyGuest::default()
        .write_to(&kernel)
        .expect("writes the guest");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, [0u8; 4096]).expect("writes the initrd");
    Guest {
        dir,
        kernel,
        initrd,
    }
}

/// A config for the tiny guest under CH: 1 of 2 vCPUs, 256 MiB with room
/// for ACPI memory hot-plug.
pub fn config(guest: &Guest) -> HypervisorConfig {
    HypervisorConfig {
        kernel_path: Some(guest.kernel.clone()),
        initrd_path: Some(guest.initrd.clone()),
        hypervisor_path: Some(binary()),
        num_vcpus: 1,
        default_max_vcpus: 2,
        memory_size: 256,
        mem_slots: 1,
        use_vsock: true,
        ..HypervisorConfig::default()
    }
}

/// The guest's serial console, read from CH's console socket.
pub struct Serial {
    stream: UnixStream,
    /// Everything read so far.
    pub out: Vec<u8>,
}

impl Serial {
    /// Connects to the console socket at `path`.
    pub async fn connect(path: &Path) -> Serial {
        let stream = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect to console {}: {e}", path.display()));
        Serial {
            stream,
            out: Vec::new(),
        }
    }

    /// Reads for `window`; returns the bytes that came in it.
    pub async fn read_for(&mut self, window: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("console read: {e}"),
            }
        }
        self.out.extend_from_slice(&got);
        got
    }

    /// Reads until the output holds the banner and at least one dot, up to
    /// `timeout`.
    pub async fn wait_banner(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let text = String::from_utf8_lossy(&self.out);
            if text.starts_with(BANNER) && self.out.len() > BANNER.len() {
                return;
            }
            self.read_for(Duration::from_millis(100)).await;
        }
        panic!(
            "no banner on the console within {timeout:?}: {:?}",
            String::from_utf8_lossy(&self.out)
        );
    }

    /// Reads until at least one new dot comes, up to `timeout`; whether
    /// one came. Everything that came must be dots.
    pub async fn new_dots(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let got = self.read_for(Duration::from_millis(100)).await;
            assert!(got.iter().all(|b| *b == DOT), "not dots: {got:?}");
            if !got.is_empty() {
                return true;
            }
        }
        false
    }
}

/// Processes whose command line mentions `needle` (a test's storage
/// directory): what a test started and must not leave.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| sandvisor::backends::vmm::process::pid_alive(*pid))
        .collect()
}

/// Waits up to 5 s for `pid` to be gone; whether it is.
pub async fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        if !sandvisor::backends::vmm::process::pid_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Kills what a failed test left (a backstop; the backend's own Drop is
/// the first line).
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
