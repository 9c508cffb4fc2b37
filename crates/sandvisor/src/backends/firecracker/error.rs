//! The Firecracker backend's errors.

use std::path::PathBuf;

use super::jail_fs::JailFsError;
use super::jailer::JailError;
use super::vm_config::VmConfigError;
use super::FC;
use crate::backends::vmm::process::ProcessError;
use crate::backends::vmm::rest::RestError;
use crate::hypervisor::Error;
use crate::hypervisor_type::HypervisorType;

/// Errors of the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FcError {
    /// An API call failed (a fault keeps Firecracker's `fault_message`).
    #[error(transparent)]
    Api(#[from] RestError),
    /// Firecracker or the jailer could not be spawned or adopted.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The jail could not be planned.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The jail's files could not be placed or removed.
    #[error(transparent)]
    JailFs(#[from] JailFsError),
    /// The boot could not be planned.
    #[error(transparent)]
    VmConfig(#[from] VmConfigError),
    /// No `jailer_path`, and no jailer where the lookup searched.
    #[error("no jailer for firecracker (key `jailer_path`): install Firecracker's jailer (scripts/setup.sh), set jailer_path to it, or set jailer_path = \"\" to run Firecracker unjailed")]
    NoJailer(#[source] crate::backends::vmm::lookup::LookupError),
    /// The VM directory could not be made or removed.
    #[error("cannot {action} VM directory {path:?}")]
    VmDir {
        /// `create` or `remove`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The host's memory could not be read.
    #[error("cannot read the host's memory size")]
    HostMemory(#[source] crate::probe::ProbeError),
    /// The jailer did not leave a pid file (`--new-pid-ns`).
    #[error("the jailer left no readable pid file {path:?}")]
    PidFile {
        /// The file.
        path: PathBuf,
    },
    /// A snapshot file could not be moved where the config wants it.
    #[error("cannot move snapshot file {from:?} to {to:?}")]
    SnapshotFile {
        /// Where Firecracker wrote it.
        from: PathBuf,
        /// Where it goes.
        to: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A kernel, initrd or image that is not there.
    #[error("{what} {path:?} does not exist")]
    MissingAsset {
        /// `kernel`, `initrd` or `image`.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Booting from a template needs both snapshot files.
    #[error("boot_from_template needs memory_path and devices_state_path")]
    NoTemplateFiles,
    /// A device id already attached.
    #[error("device {id:?} is already attached")]
    DeviceExists {
        /// The id.
        id: String,
    },
    /// A device that was not hot-plugged.
    #[error("device {id:?} was not hot-plugged into this VM")]
    UnknownDevice {
        /// The id.
        id: String,
    },
    /// Every placeholder drive is in use.
    #[error("no free placeholder drive for {id:?}: all {count} are in use")]
    NoFreePlaceholder {
        /// The drive.
        id: String,
        /// How many there are.
        count: usize,
    },
    /// Memory asked for outside the virtio-mem region.
    #[error("cannot resize memory to {requested_mib} MiB: the VM boots with {boot_mib} MiB and may grow by at most {max_extra_mib} MiB")]
    MemoryRange {
        /// Asked for.
        requested_mib: u32,
        /// Boot memory.
        boot_mib: u32,
        /// The region's size.
        max_extra_mib: u32,
    },
    /// `to_grpc` output or saved state that does not decode.
    #[error("cannot decode the saved firecracker state")]
    Grpc(#[source] serde_json::Error),
    /// A state for another hypervisor.
    #[error("the state is for {0}, not firecracker")]
    WrongHypervisor(HypervisorType),
    /// A thread list that cannot be read.
    #[error("cannot read the threads of pid {pid}")]
    Threads {
        /// Firecracker's pid.
        pid: u32,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

impl From<FcError> for Error {
    fn from(e: FcError) -> Self {
        Error::backend(FC, e)
    }
}
