//! The naive baseline: the same kernel booted by a plain QEMU command line
//! (q35, TCG, no sandvisor devices, SeaBIOS) with a busybox initrd whose
//! init powers the machine off at once; timed from spawn to QEMU's exit.
//! What `sandvisor run -- true` costs above "boot Linux and stop".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, BenchError};
use crate::image::cpio::{Archive, Entry};
use crate::image::BUSYBOX_PATH;

/// The kernel command line of the naive boot.
pub const NAIVE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The naive boot's `/init`: power off, forcibly (no init system to ask).
const NAIVE_INIT: &str = "#!/bin/busybox sh\nexec /bin/busybox poweroff -f\n";

/// A busybox initrd whose init powers off.
///
/// # Errors
/// When busybox-static cannot be read.
pub fn busybox_initrd(busybox: &Path) -> Result<Vec<u8>, BenchError> {
    let data = std::fs::read(busybox).map_err(io_err(format!("read {}", busybox.display())))?;
    let mut a = Archive::new();
    a.add(
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    a.add("bin/busybox", Entry::File { mode: 0o755, data });
    a.add(
        "bin/sh",
        Entry::Symlink {
            target: "busybox".into(),
        },
    );
    a.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: NAIVE_INIT.as_bytes().to_vec(),
        },
    );
    let mut out = Vec::new();
    a.write_to(&mut out)
        .map_err(io_err("write the naive initrd"))?;
    Ok(out)
}

/// The naive QEMU arguments: the machine sandvisor uses (q35, TCG), its
/// vCPUs and memory, nothing else but the serial console.
pub fn naive_args(kernel: &Path, initrd: &Path, vcpus: u32, memory_mib: u32) -> Vec<String> {
    [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "null",
        "-no-reboot",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([
        "-smp".to_string(),
        vcpus.to_string(),
        "-m".to_string(),
        memory_mib.to_string(),
        "-kernel".to_string(),
        kernel.display().to_string(),
        "-initrd".to_string(),
        initrd.display().to_string(),
        "-append".to_string(),
        NAIVE_CMDLINE.to_string(),
    ])
    .collect()
}

/// A naive boot, prepared: the initrd in a temporary directory.
pub(super) struct Naive {
    _dir: tempfile::TempDir,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Naive {
    /// Prepares naive boots of `kernel` with `vcpus` and `memory_mib`.
    pub(super) fn new(
        qemu: &Path,
        kernel: &Path,
        vcpus: u32,
        memory_mib: u32,
    ) -> Result<Naive, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("sandvisor-bench-naive-")
            .tempdir()
            .map_err(io_err("make a directory for the naive initrd"))?;
        let initrd = dir.path().join("initrd.cpio");
        std::fs::write(&initrd, busybox_initrd(Path::new(BUSYBOX_PATH))?)
            .map_err(io_err(format!("write {}", initrd.display())))?;
        Ok(Naive {
            args: naive_args(kernel, &initrd, vcpus, memory_mib),
            qemu: qemu.to_path_buf(),
            _dir: dir,
        })
    }

    /// One boot, spawn to exit; killed at `deadline`.
    pub(super) async fn boot(&self, deadline: Duration) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let mut child = tokio::process::Command::from({
            let mut c = Command::new(&self.qemu);
            c.args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        })
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!("spawn {}", self.qemu.display())))?;
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(started.elapsed()),
            Ok(Ok(status)) => Err(BenchError::Raw(format!(
                "the naive boot ended with {status}"
            ))),
            Ok(Err(e)) => Err(io_err("wait for the naive QEMU")(e)),
            Err(_) => {
                let _ = child.kill().await;
                Err(BenchError::Raw(format!(
                    "the naive boot did not power off within {deadline:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naive_command_line_is_plain_q35_tcg() {
        let args = naive_args(Path::new("/k"), Path::new("/i"), 1, 2048);
        assert_eq!(
            args.join(" "),
            "-machine q35 -accel tcg -nodefaults -no-user-config -display none -serial null \
             -no-reboot -smp 1 -m 2048 -kernel /k -initrd /i -append console=ttyS0 panic=-1 quiet"
        );
    }

    #[test]
    fn the_naive_initrd_powers_off_with_busybox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF busybox").expect("write");
        let cpio = busybox_initrd(&fake).expect("initrd");
        let text = String::from_utf8_lossy(&cpio);
        for member in ["dev/console", "bin/busybox", "bin/sh", "init"] {
            assert!(text.contains(member), "{member} missing");
        }
        assert!(text.contains("poweroff -f"));
        assert!(text.contains("TRAILER!!!"));
    }
}
