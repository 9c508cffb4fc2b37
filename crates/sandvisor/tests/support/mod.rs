//! Shared support for the tests that boot real VMs (`vm_*`).
//!
//! The guest is the one `sandvisor image build` puts in the asset
//! directory: a Debian cloud kernel and an initrd whose init, given
//! `sandvisor.debug_console` on the kernel command line, runs a shell on
//! the serial console after printing `sandvisor: debug console ready`.
//! A test without those assets fails and says how to make them.
#![allow(dead_code)]

pub mod fc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandvisor::config::{Accel, BlockDeviceDriver, HypervisorConfig};
use sandvisor::param::Param;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long a boot may take under TCG on a busy two-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest command may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest kernel and initrd, or a failure saying how to build them.
pub fn assets() -> (PathBuf, PathBuf) {
    let dir = sandvisor::paths::asset_dir();
    let kernel = dir.join(sandvisor::paths::KERNEL_FILE);
    let initrd = dir.join(sandvisor::paths::INITRD_FILE);
    assert!(
        kernel.is_file() && initrd.is_file(),
        "guest assets missing: {} and {} must exist; run `sandvisor image build` \
         (or scripts/setup.sh) first, or point SANDVISOR_ASSET_DIR at them",
        kernel.display(),
        initrd.display()
    );
    (kernel, initrd)
}

/// A config for a small TCG guest with a shell on its console.
pub fn config(driver: BlockDeviceDriver) -> HypervisorConfig {
    let (kernel, initrd) = assets();
    HypervisorConfig {
        kernel_path: Some(kernel),
        initrd_path: Some(initrd),
        hypervisor_path: Some("/usr/bin/qemu-system-x86_64".into()),
        hypervisor_machine_type: "q35".into(),
        accel: Accel::Tcg,
        num_vcpus: 1,
        default_max_vcpus: 4,
        memory_size: 512,
        mem_slots: 4,
        block_device_driver: Some(driver),
        kernel_params: vec![Param::new("sandvisor.debug_console", "")],
        ..HypervisorConfig::default()
    }
}

/// A short storage directory under /tmp (unix socket paths are short).
pub fn storage() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sv")
        .tempdir_in("/tmp")
        .expect("temporary directory under /tmp")
}

/// Whether anything is left in `dir`.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Whether a process with `pid` runs (not a zombie).
pub fn alive(pid: u32) -> bool {
    sandvisor::backends::vmm::process::pid_alive(pid)
}

/// A shell on the guest's serial console.
pub struct Console {
    stream: UnixStream,
    out: String,
    seq: u32,
}

impl Console {
    /// Connects to the console socket and waits until the guest's shell
    /// answers.
    pub async fn ready(path: &Path) -> Console {
        match Console::ready_within(path, BOOT_TIMEOUT).await {
            Ok(c) => c,
            Err(said) => panic!(
                "the guest shell did not come up within {BOOT_TIMEOUT:?}; console said:\n{said}"
            ),
        }
    }

    /// Like [`Console::ready`], but gives up after `timeout` and returns
    /// what the console said.
    pub async fn ready_within(path: &Path, timeout: Duration) -> Result<Console, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot connect to console {}: {e}", path.display()),
            }
        };
        let mut c = Console {
            stream,
            out: String::new(),
            seq: 0,
        };
        // The ready line may have gone by before we connected: then the
        // shell answers a probe. The quotes keep the typed probe (echoed
        // by the tty) from matching its own output.
        let mut probe_at = Instant::now() + Duration::from_secs(1);
        loop {
            if c.out.contains("sandvisor: debug console ready") || c.out.contains("SV_PROBE_OK") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(c.out);
            }
            if Instant::now() >= probe_at {
                c.send("echo SV_PROBE\"\"_OK").await;
                probe_at = Instant::now() + Duration::from_secs(2);
            }
            c.read_some(Duration::from_millis(200)).await;
        }
        Ok(c)
    }

    async fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("console write");
    }

    async fn read_some(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("console closed; it said:\n{}", self.out),
            Ok(Ok(n)) => {
                self.out.push_str(&String::from_utf8_lossy(&buf[..n]));
                true
            }
            Ok(Err(e)) => panic!("console read: {e}"),
            Err(_) => false,
        }
    }

    /// Runs `cmd` in the guest shell and returns its output, or `None`
    /// when it does not finish within `timeout`.
    pub async fn try_run(&mut self, cmd: &str, timeout: Duration) -> Option<String> {
        self.seq += 1;
        let n = self.seq;
        let (begin, end) = (format!("SV_B{n}_"), format!("SV_E{n}_"));
        self.send(&format!("echo SV_B\"\"{n}_; {cmd}; echo SV_E\"\"{n}_"))
            .await;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.out.find(&begin) {
                if let Some(e) = self.out[b..].find(&end) {
                    let body = self.out[b + begin.len()..b + e].trim().replace('\r', "");
                    self.out.drain(..b + e + end.len());
                    return Some(body);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read_some(left.min(Duration::from_millis(500))).await;
        }
    }

    /// Runs `cmd` in the guest shell and returns its output.
    pub async fn run(&mut self, cmd: &str) -> String {
        match self.try_run(cmd, CMD_TIMEOUT).await {
            Some(out) => out,
            None => panic!(
                "guest command {cmd:?} did not finish within {CMD_TIMEOUT:?}; console said:\n{}",
                self.out
            ),
        }
    }

    /// Waits for the output of a command run earlier by
    /// [`Console::try_run`] that timed out: the one numbered `n`, the
    /// last one sent.
    pub async fn finish_last(&mut self, timeout: Duration) -> Option<String> {
        let n = self.seq;
        let (begin, end) = (format!("SV_B{n}_"), format!("SV_E{n}_"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.out.find(&begin) {
                if let Some(e) = self.out[b..].find(&end) {
                    let body = self.out[b + begin.len()..b + e].trim().replace('\r', "");
                    self.out.drain(..b + e + end.len());
                    return Some(body);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read_some(left.min(Duration::from_millis(500))).await;
        }
    }

    /// Runs `cmd` until its output satisfies `ok`, for guest-side events
    /// that take a moment (a hot-plugged disk appearing).
    pub async fn run_until(&mut self, cmd: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            let out = self.run(cmd).await;
            if ok(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "guest command {cmd:?} kept answering {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Initialises tracing for a test binary, once; `RUST_LOG` filters it.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sandvisor=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `sh -c script` in the guest; returns stdout, failing on a non-zero
/// exit with the guest's stderr.
pub async fn sh(agent: &sandvisor::agent::AgentClient, script: &str) -> String {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let outcome = agent
        .exec(
            sandvisor_proto::ExecRequest {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                ..sandvisor_proto::ExecRequest::default()
            },
            |b| out.extend_from_slice(b),
            |b| err.extend_from_slice(b),
        )
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    assert_eq!(
        outcome.status,
        sandvisor_proto::ExitStatus::Code(0),
        "{script:?} failed: {}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8_lossy(&out).trim().to_string()
}

/// A raw disk image with an ext4 file system holding `hello.txt`.
pub fn ext4_image(dir: &Path, content: &str) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("image root");
    std::fs::write(root.join("hello.txt"), content).expect("file in image");
    let image = dir.join("disk.img");
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 runs (install e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");
    image
}

/// Hot-plugs `image` into `sandbox` as the raw disk `data` (index 1) and
/// waits up to 5 s for the guest to list a disk it did not list before;
/// returns that disk. `what` says what failed when the hot-plug does.
pub async fn hotplug_data_disk(
    sandbox: &mut sandvisor::sandbox::Sandbox,
    image: &Path,
    what: &str,
) -> sandvisor_proto::BlockDevice {
    use sandvisor::device::{BlockDrive, Device};
    let before: Vec<String> = sandbox
        .agent()
        .list_block_devices()
        .await
        .expect("list block devices")
        .into_iter()
        .map(|d| d.name)
        .collect();
    sandbox
        .hypervisor()
        .hotplug_add_device(Device::Block(BlockDrive {
            file: image.to_path_buf(),
            format: "raw".into(),
            id: "data".into(),
            index: 1,
            ..BlockDrive::default()
        }))
        .await
        .expect(what);
    let mut added = None;
    for _ in 0..50 {
        let now = sandbox
            .agent()
            .list_block_devices()
            .await
            .expect("list block devices");
        added = now.into_iter().find(|d| !before.contains(&d.name));
        if added.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    added.expect("the guest sees the hot-plugged disk within 5 s")
}
