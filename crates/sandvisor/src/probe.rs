//! Host probes: memory, nesting, KVM and vhost-vsock.
//!
//! Each probe reads the file it is given, so tests feed it fixtures.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Accel;

/// `/proc/meminfo`.
pub const PROC_MEMINFO: &str = "/proc/meminfo";
/// `/proc/cpuinfo`.
pub const PROC_CPUINFO: &str = "/proc/cpuinfo";
/// The KVM device.
pub const DEV_KVM: &str = "/dev/kvm";
/// The vhost-vsock device.
pub const DEV_VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// Errors from host probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read.
    #[error("cannot read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// No `MemTotal: N kB` line.
    #[error("no MemTotal line in {0:?}")]
    NoMemTotal(PathBuf),
    /// No `flags` line.
    #[error("no \"flags\" line in {0:?}")]
    NoFlags(PathBuf),
}

fn lines(path: &Path) -> Result<impl Iterator<Item = Result<String, ProbeError>> + '_, ProbeError> {
    let read_err = |source| ProbeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    Ok(BufReader::new(file)
        .lines()
        .map(move |l| l.map_err(read_err)))
}

/// Parses an unsigned number the way Go's `ParseUint(s, 0, 64)` does:
/// decimal, `0x` hex, `0o`/leading-`0` octal or `0b` binary.
fn parse_uint_any_base(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        u64::from_str_radix(b, 2).ok()
    } else if let Some(o) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
        u64::from_str_radix(o, 8).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// This host's `MemTotal` in MiB, from [`PROC_MEMINFO`]: what the backends
/// bound memory hot-plug by and `run --memory` is checked against.
///
/// # Errors
/// As for [`host_memory_size_kb`].
pub fn host_memory_mib() -> Result<u64, ProbeError> {
    host_memory_size_kb(Path::new(PROC_MEMINFO)).map(|kb| kb / 1024)
}

/// The host's total memory in kB, from a meminfo file.
///
/// Malformed lines are skipped.
///
/// # Errors
/// When the file cannot be read, or holds no well-formed `MemTotal` line.
pub fn host_memory_size_kb(meminfo: &Path) -> Result<u64, ProbeError> {
    for line in lines(meminfo)? {
        let line = line?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 3 || parts[0] != "MemTotal:" || parts[2] != "kB" {
            continue;
        }
        if let Some(kb) = parse_uint_any_base(parts[1]) {
            return Ok(kb);
        }
    }
    Err(ProbeError::NoMemTotal(meminfo.to_path_buf()))
}

/// The CPU flags of the first `flags` line of a cpuinfo file.
///
/// # Errors
/// When the file cannot be read or has no `flags` line.
pub fn cpu_flags(cpuinfo: &Path) -> Result<Vec<String>, ProbeError> {
    for line in lines(cpuinfo)? {
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 || !fields[0].starts_with("flags") {
            continue;
        }
        return Ok(fields[1..]
            .iter()
            .filter(|f| **f != ":")
            .map(|f| f.to_string())
            .collect());
    }
    Err(ProbeError::NoFlags(cpuinfo.to_path_buf()))
}

/// Whether this host is itself a VM: the first `flags` line of cpuinfo has
/// `hypervisor`. Off x86 this cannot be told and is `false`, without reading.
///
/// # Errors
/// When the file cannot be read or has no `flags` line.
pub fn running_on_vmm(cpuinfo: &Path) -> Result<bool, ProbeError> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
        tracing::info!("cannot tell whether this host runs inside a VM on this architecture");
        return Ok(false);
    }
    Ok(cpu_flags(cpuinfo)?.iter().any(|f| f == "hypervisor"))
}

/// What this host's KVM can do for stock guest kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmProbe {
    /// `/dev/kvm` exists.
    pub present: bool,
    /// `/dev/kvm` opens read-write.
    pub openable: bool,
    /// The CPU has hardware virtualisation (`vmx` or `svm`).
    pub hardware_virt: bool,
    /// KVM is provided by PVM (`kvm_pvm`), which runs only PVM-aware guests
    /// at full speed.
    pub pvm: bool,
    /// Why stock guests cannot use KVM, when they cannot.
    pub reason: Option<String>,
}

impl KvmProbe {
    /// Whether a stock guest kernel runs at full speed on KVM here.
    pub fn usable(&self) -> bool {
        self.reason.is_none()
    }
}

/// Probes `/dev/kvm`, the CPU flags in `cpuinfo`, and whether `kvm_pvm` is
/// loaded (looked up under `sys_module`, normally `/sys/module`).
pub fn probe_kvm(dev_kvm: &Path, cpuinfo: &Path, sys_module: &Path) -> KvmProbe {
    let present = dev_kvm.exists();
    let openable = present
        && OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_kvm)
            .is_ok();
    let flags = cpu_flags(cpuinfo).unwrap_or_default();
    let hardware_virt = flags.iter().any(|f| f == "vmx" || f == "svm");
    let pvm = sys_module.join("kvm_pvm").exists();
    let reason = if !present {
        Some(format!("{} does not exist", dev_kvm.display()))
    } else if !openable {
        Some(format!("{} cannot be opened read-write", dev_kvm.display()))
    } else if !hardware_virt {
        Some(format!(
            "the CPU has no vmx/svm{}, so stock guest kernels run far too slowly on it",
            if pvm {
                " (KVM here is PVM, kvm_pvm)"
            } else {
                ""
            }
        ))
    } else {
        None
    };
    KvmProbe {
        present,
        openable,
        hardware_virt,
        pvm,
        reason,
    }
}

/// Probes KVM on this host.
pub fn probe_host_kvm() -> KvmProbe {
    probe_kvm(
        Path::new(DEV_KVM),
        Path::new(PROC_CPUINFO),
        Path::new("/sys/module"),
    )
}

/// The accelerator to use for `requested`: `auto` becomes KVM when stock
/// guests run on it here, else TCG.
pub fn resolve_accel(requested: Accel, kvm: &KvmProbe) -> Accel {
    match requested {
        Accel::Auto if kvm.usable() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        other => other,
    }
}

/// Whether `/dev/vhost-vsock` can be opened, and why not when it cannot.
pub fn probe_vhost_vsock(dev: &Path) -> Result<(), String> {
    match OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "{} does not exist (load the vhost_vsock module)",
            dev.display()
        )),
        Err(e) => Err(format!("{} cannot be opened: {e}", dev.display())),
    }
}
