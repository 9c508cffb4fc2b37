//! The QEMU backend's error, and how it maps onto the backend-neutral
//! [`Error`].

use std::path::PathBuf;
use std::time::Duration;

use super::qmp::QmpError;
use super::{cmdline, hotplug};
use crate::backends::vmm::process::{self, Exit};
use crate::backends::vmm::virtiofsd;
use crate::backends::vmm::vsock_daemon::VsockDaemonError;
use crate::hypervisor::Error;
use crate::hypervisor_type::HypervisorType;
use crate::probe;

/// Errors from driving QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The command line could not be built.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// A QMP failure.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// What `rootless = true` cannot do.
    #[error(transparent)]
    Rootless(#[from] super::rootless::RootlessError),
    /// A process could not be spawned or adopted.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// virtiofsd could not be started.
    #[error(transparent)]
    Virtiofsd(#[from] virtiofsd::VirtiofsdError),
    /// vhost-device-vsock could not be started or adopted (boxed: errors
    /// stay small to move).
    #[error(transparent)]
    VsockDaemon(Box<VsockDaemonError>),
    /// vhost-device-vsock exited while the VM runs: the guest's vsock, and
    /// so the agent channel, is gone for good (QEMU cannot reconnect a
    /// vhost-user-vsock device, and says nothing).
    #[error("the agent channel is lost: vhost-device-vsock (pid {pid}) exited ({exit}); its log ends with:\n{log_tail}")]
    AgentChannelLost {
        /// The daemon's pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The end of its log.
        log_tail: String,
    },
    /// The host's memory could not be read.
    #[error("cannot read the host's memory size")]
    HostMemory(#[source] probe::ProbeError),
    /// The VM directory could not be made or removed.
    #[error("cannot {action} VM directory {path:?}")]
    VmDir {
        /// `create`, `remove` or `restrict access to`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be read for its size.
    #[error("cannot read image {path:?}")]
    Image {
        /// The image.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A block device's file could not be read.
    #[error("cannot read block device file {path:?}")]
    BlockFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A descriptor could not be duplicated for the child.
    #[error("cannot duplicate a descriptor for qemu")]
    DupFd(#[source] std::io::Error),
    /// The agent connection's file status flags could not be read or set.
    #[error("cannot {action} the agent connection's file status flags")]
    ConnectionFlags {
        /// `read` or `restore`.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited while starting.
    #[error("qemu ({binary:?}, pid {pid}) exited while starting ({exit}); its log ends with:\n{log_tail}")]
    EarlyExit {
        /// The binary.
        binary: PathBuf,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The end of its log.
        log_tail: String,
    },
    /// QEMU did not answer on QMP in time.
    #[error("qemu did not answer on QMP socket {path:?} within {timeout:?}; its log ends with:\n{log_tail}")]
    StartTimeout {
        /// The socket.
        path: PathBuf,
        /// How long it waited.
        timeout: Duration,
        /// The end of QEMU's log.
        log_tail: String,
        /// The last connect error (boxed: errors stay small to move).
        #[source]
        last: Option<Box<QmpError>>,
    },
    /// QEMU has exited without being asked to.
    #[error(
        "qemu ({binary:?}, pid {pid}) exited on its own: {exit}; its log ends with:\n{log_tail}"
    )]
    Exited {
        /// The binary.
        binary: PathBuf,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The end of its log.
        log_tail: String,
    },
    /// virtiofsd has exited.
    #[error("virtiofsd (pid {pid}) exited: {exit}")]
    VirtiofsdExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
    },
    /// The guest is in a failed state.
    #[error("guest failure: qemu reports status {status:?}")]
    GuestFailure {
        /// QEMU's run state.
        status: String,
    },
    /// A migration failed or did not finish.
    #[error("migration {uri:?} ended in status {status:?}: {desc}")]
    Migration {
        /// The URI.
        uri: String,
        /// The last status.
        status: String,
        /// QEMU's description, or why it was abandoned.
        desc: String,
    },
    /// The device state file cannot be opened or created.
    #[error("cannot open device state file {path}")]
    StateFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Saving needs `devices_state_path`.
    #[error("save_sandbox needs devices_state_path in the config")]
    NoDevicesStatePath,
    /// A device id already in use.
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
    /// No bridge slot or root port is free.
    #[error("no free PCI slot for device {id:?}: raise default_bridges (30 slots each) or pcie_root_port")]
    NoFreeSlot {
        /// The device.
        id: String,
    },
    /// The guest did not release a device.
    #[error("the guest did not release device {id:?} within {timeout:?}")]
    UnplugTimeout {
        /// The device.
        id: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Fewer vCPUs were added than asked.
    #[error("only {added} of {requested} vCPUs were hot-plugged")]
    CpuHotplug {
        /// Added.
        added: u32,
        /// Asked.
        requested: u32,
        /// The last error (boxed: errors stay small to move).
        #[source]
        last: Option<Box<QmpError>>,
    },
    /// More vCPUs to remove than were hot-plugged.
    #[error(
        "cannot remove {requested} vCPUs: only {hotplugged} were hot-plugged, and boot vCPUs stay"
    )]
    CpuRemove {
        /// Asked.
        requested: u32,
        /// Hot-plugged.
        hotplugged: u32,
    },
    /// Memory over the host's.
    #[error("cannot add {requested_mib} MiB: the VM has {current_mib} MiB and may have at most the host's {max_mib} MiB")]
    MemoryLimit {
        /// Asked.
        requested_mib: u32,
        /// Current.
        current_mib: u64,
        /// Most.
        max_mib: u64,
    },
    /// A DIMM's address was not reported.
    #[error("qemu did not report the address of memory device {id:?}")]
    MemoryAddress {
        /// The DIMM.
        id: String,
    },
    /// Only one virtio-fs share per VM.
    #[error("a VM has one virtio-fs share, served by one virtiofsd: {tag:?} would be a second")]
    SecondVirtioFs {
        /// The mount tag.
        tag: String,
    },
    /// `to_grpc` output that does not decode.
    #[error("cannot decode the VM cache state")]
    Grpc(#[source] serde_json::Error),
    /// A state for another hypervisor.
    #[error("the state is for {0}, not qemu")]
    WrongHypervisor(HypervisorType),
    /// A saved placement that does not parse.
    #[error(transparent)]
    Placement(#[from] hotplug::BadPlacement),
}

impl From<QemuError> for Error {
    /// QEMU's exits and start timeouts become the shared variants every
    /// backend reports them with; the rest is [`Error::Backend`].
    fn from(e: QemuError) -> Self {
        match e {
            QemuError::VirtiofsdExited { pid, exit } => Error::HelperExited {
                hypervisor: HypervisorType::Qemu,
                helper: crate::hypervisor::VIRTIOFSD,
                pid,
                exit,
                lost: "shared directory",
                log_tail: String::new(),
            },
            QemuError::AgentChannelLost {
                pid,
                exit,
                log_tail,
            } => Error::HelperExited {
                hypervisor: HypervisorType::Qemu,
                helper: crate::hypervisor::VSOCK_DAEMON,
                pid,
                exit,
                lost: "agent channel",
                log_tail,
            },
            QemuError::EarlyExit {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: HypervisorType::Qemu,
                binary,
                pid,
                exit,
                starting: true,
                log_tail,
            },
            QemuError::Exited {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: HypervisorType::Qemu,
                binary,
                pid,
                exit,
                starting: false,
                log_tail,
            },
            QemuError::StartTimeout {
                path,
                timeout,
                log_tail,
                last,
            } => Error::StartTimeout {
                hypervisor: HypervisorType::Qemu,
                what: format!("answer on QMP socket {path:?}"),
                timeout,
                log_tail,
                last: last.map(|e| e as crate::hypervisor::BackendError),
            },
            QemuError::VsockDaemon(e) => match *e {
                VsockDaemonError::Timeout {
                    pid,
                    socket,
                    timeout,
                    log_tail,
                } => Error::StartTimeout {
                    hypervisor: HypervisorType::Qemu,
                    what: format!("see vhost-device-vsock (pid {pid}) create {socket:?}"),
                    timeout,
                    log_tail,
                    last: None,
                },
                other => Error::backend(
                    HypervisorType::Qemu,
                    QemuError::VsockDaemon(Box::new(other)),
                ),
            },
            other => Error::backend(HypervisorType::Qemu, other),
        }
    }
}

impl From<VsockDaemonError> for QemuError {
    fn from(e: VsockDaemonError) -> Self {
        QemuError::VsockDaemon(Box::new(e))
    }
}
