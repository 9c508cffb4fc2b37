//! The `Hypervisor` trait: one method per method of Kata's `hypervisor`
//! interface, async and object-safe, so callers hold a `Box<dyn Hypervisor>`.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, HypervisorConfig};
use crate::device::{Device, DeviceType, HotplugResult, MemoryDevice, VcpuThreadIds};
use crate::hypervisor_type::HypervisorType;
use crate::process::{Exit, ProcessRef};
use crate::socket::{AgentSocket, SocketError};

/// Result of hypervisor operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A backend's own error, boxed so that the trait names no backend.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from hypervisor operations. Every variant is backend-neutral; a
/// backend's own failures travel as [`Error::Backend`], and a caller that
/// knows the backend can look inside with [`Error::backend_source`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot do this; its [`Capabilities`] said so.
    #[error("{hypervisor} does not support {op}: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend.
        hypervisor: HypervisorType,
        /// Why.
        reason: String,
    },
    /// The operation needs the VM in another state.
    #[error("cannot {op}: the VM is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state the VM is in.
        state: VmState,
    },
    /// The config is invalid.
    #[error("invalid hypervisor config")]
    Config(#[from] ConfigError),
    /// The agent socket could not be made.
    #[error("cannot make the agent socket")]
    Socket(#[from] SocketError),
    /// The VMM exited without being asked to: while starting, or later (a
    /// crash, the OOM killer, `kill -9`).
    #[error(
        "{hypervisor} ({binary:?}, pid {pid}) exited {when}: {exit}; its log ends with:\n{log_tail}",
        when = if *.starting { "while starting" } else { "on its own" }
    )]
    VmmExited {
        /// The backend.
        hypervisor: HypervisorType,
        /// The VMM binary.
        binary: PathBuf,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// Whether it was still starting.
        starting: bool,
        /// The end of its log.
        log_tail: String,
    },
    /// A helper the VM's devices need (virtiofsd, vhost-device-vsock)
    /// exited: the VMM runs on with a device that no longer answers.
    #[error(
        "the {lost} is lost: {helper} (pid {pid}) exited ({exit}){}",
        log_suffix(log_tail)
    )]
    HelperExited {
        /// The backend.
        hypervisor: HypervisorType,
        /// The helper's name ([`VIRTIOFSD`], [`VSOCK_DAEMON`]).
        helper: &'static str,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// What the guest lost with it: "shared directory", "agent channel".
        lost: &'static str,
        /// The end of its log, when it has one.
        log_tail: String,
    },
    /// The VMM did not answer within the start deadline.
    #[error("{hypervisor} did not {what} within {timeout:?}; its log ends with:\n{log_tail}")]
    StartTimeout {
        /// The backend.
        hypervisor: HypervisorType,
        /// What it did not do, such as "answer on QMP socket \"/run/x\"".
        what: String,
        /// How long it waited.
        timeout: Duration,
        /// The end of the VMM's log.
        log_tail: String,
        /// The last error seen while waiting.
        #[source]
        last: Option<BackendError>,
    },
    /// A failure of the backend's own: its protocol, files, helpers.
    #[error("{hypervisor} backend")]
    Backend {
        /// The backend.
        hypervisor: HypervisorType,
        /// Its error.
        #[source]
        source: BackendError,
    },
}

impl Error {
    /// An [`Error::Unsupported`].
    pub fn unsupported(
        op: &'static str,
        hypervisor: HypervisorType,
        reason: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            op,
            hypervisor,
            reason: reason.into(),
        }
    }

    /// An [`Error::Backend`] holding `source`.
    pub fn backend(
        hypervisor: HypervisorType,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            hypervisor,
            source: Box::new(source),
        }
    }

    /// Whether this is [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// The backend's own error, when this is an [`Error::Backend`] holding
    /// a `T`.
    pub fn backend_source<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Error::Backend { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }

    /// Which helper ended and how, when this error says one did.
    pub fn helper_exit(&self) -> Option<(&'static str, Exit)> {
        match self {
            Error::HelperExited { helper, exit, .. } => Some((helper, *exit)),
            _ => None,
        }
    }

    /// How the VMM ended, when this error says (it exited by itself).
    pub fn vmm_exit(&self) -> Option<Exit> {
        match self {
            Error::VmmExited { exit, .. } => Some(*exit),
            _ => None,
        }
    }
}

/// `; its log ends with:\n<tail>`, or nothing for an empty log.
fn log_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its log ends with:\n{tail}")
    }
}

/// The state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Nothing created yet.
    #[default]
    New,
    /// Created: configured, VMM not yet running the guest.
    Created,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// The VMM has exited or was stopped.
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::New => "not created",
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        })
    }
}

/// What a backend can do, known before trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Block devices can be attached.
    pub block_device: bool,
    /// Block devices can be hot-plugged.
    pub block_device_hotplug: bool,
    /// Multi-queue network devices.
    pub multi_queue: bool,
    /// Host directories can be shared (9p or virtio-fs).
    pub fs_sharing: bool,
    /// The agent channel can be a hybrid vsock.
    pub hybrid_vsock: bool,
    /// vCPUs can be hot-plugged.
    pub cpu_hotplug: bool,
    /// Memory can be hot-plugged.
    pub memory_hotplug: bool,
    /// Network devices can be hot-plugged.
    pub net_hotplug: bool,
    /// VFIO devices can be attached.
    pub vfio: bool,
    /// The VM can be paused and resumed.
    pub pause: bool,
    /// The VM state can be saved to a file (`save_sandbox`).
    pub save: bool,
    /// VMs can be booted as and from templates.
    pub vm_template: bool,
    /// The handle can be serialised for a VM cache (`to_grpc`/`from_grpc`).
    pub vm_cache: bool,
    /// Another process can re-attach to the running VM (`save`/`load`).
    pub reattach: bool,
    /// The VMM holds a copy of the agent connection
    /// ([`Hypervisor::hold_agent_connection`]).
    #[serde(default)]
    pub holds_agent_connection: bool,
}

impl Capabilities {
    /// Whether a device of `kind` can be hot-plugged.
    pub fn can_hotplug(&self, kind: DeviceType) -> bool {
        match kind {
            DeviceType::Block => self.block_device_hotplug,
            DeviceType::Cpu => self.cpu_hotplug,
            DeviceType::Memory => self.memory_hotplug,
            DeviceType::Net => self.net_hotplug,
            DeviceType::Vfio => self.vfio,
            _ => false,
        }
    }
}

/// The network namespace a VM runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkNamespace {
    /// Path of the namespace, such as `/var/run/netns/x`; `None` for the
    /// caller's.
    pub path: Option<PathBuf>,
    /// Whether sandvisor created it (and so removes it).
    pub created: bool,
}

/// What a backend persists so that another process can re-attach to a
/// running VM (Kata's `persistapi.HypervisorState`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HypervisorState {
    /// The backend.
    pub hypervisor: HypervisorType,
    /// The sandbox id.
    pub id: String,
    /// VMM pid.
    pub pid: u32,
    /// The VMM's start time (`/proc/<pid>/stat` field 22; 0 when unknown),
    /// so that a reused pid is not taken for it.
    #[serde(default)]
    pub vmm_start_time: u64,
    /// VM UUID.
    pub uuid: String,
    /// The VM state when saved.
    pub state: VmState,
    /// The VM directory holding its sockets and files.
    pub vm_dir: PathBuf,
    /// The VMM control socket (QMP, or the HTTP API).
    pub api_socket: Option<PathBuf>,
    /// The console socket.
    pub console_socket: Option<PathBuf>,
    /// Block drive indexes in use.
    pub block_index_map: BTreeSet<u32>,
    /// Memory hot-plugged so far, in MiB.
    pub hotplugged_memory_mib: u32,
    /// Ids of hot-plugged vCPU devices.
    pub hotplugged_vcpus: Vec<String>,
    /// Ids of hot-plugged memory devices.
    pub hotplugged_memory: Vec<String>,
    /// Ids of other hot-plugged devices (block, net, vfio) and where they sit.
    pub hotplugged_devices: Vec<String>,
    /// virtiofsd pid, when one runs.
    pub virtiofsd_pid: Option<u32>,
    /// The vhost-device-vsock behind a hybrid vsock, when one runs: its pid
    /// and start time, so that a reused pid is not adopted.
    #[serde(default)]
    pub vsock_daemon: Option<crate::process::ProcessRef>,
    /// PCIe root ports.
    pub pcie_root_port: u32,
    /// Whether VFIO devices go on the root bus.
    pub hotplug_vfio_on_root_bus: bool,
    /// Where `save_sandbox` wrote the VM's snapshot, when the backend
    /// snapshots to a directory (Cloud Hypervisor).
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
    /// The validated config the VM was created with.
    pub config: HypervisorConfig,
}

/// A process the VM's devices depend on besides the VMM (virtiofsd behind
/// virtio-fs, vhost-device-vsock behind a hybrid vsock). When one dies the
/// VMM keeps running with a device that no longer answers, so the caller
/// stops the sandbox, as Kata does when virtiofsd dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    /// Its program's name, as users know it: `virtiofsd`,
    /// `vhost-device-vsock`.
    pub name: &'static str,
    /// The process.
    pub process: ProcessRef,
}

/// The name [`HypervisorState::helpers`] gives virtiofsd.
pub const VIRTIOFSD: &str = "virtiofsd";
/// The name [`HypervisorState::helpers`] gives vhost-device-vsock.
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";

impl HypervisorState {
    /// The helper processes this state names, to be watched alongside the
    /// VMM. virtiofsd is recorded by pid alone, so its start time is read
    /// now: call this while it runs (right after a start or a load).
    pub fn helpers(&self) -> Vec<Helper> {
        let virtiofsd = self.virtiofsd_pid.map(|pid| Helper {
            name: VIRTIOFSD,
            process: ProcessRef::of(pid),
        });
        let vsock = self.vsock_daemon.map(|process| Helper {
            name: VSOCK_DAEMON,
            process,
        });
        virtiofsd.into_iter().chain(vsock).collect()
    }
}

/// One VMM driving one VM.
///
/// A backend that cannot do an operation returns [`Error::Unsupported`], and
/// its [`Hypervisor::capabilities`] says so in advance.
#[async_trait]
pub trait Hypervisor: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn hypervisor_type(&self) -> HypervisorType;

    /// Validates `config` and prepares the VM `id`: its directory and
    /// sockets. The VMM does not run yet.
    async fn create_sandbox(
        &mut self,
        id: &str,
        network_ns: &NetworkNamespace,
        config: &HypervisorConfig,
        stateful: bool,
    ) -> Result<()>;

    /// Starts the VMM and waits, up to `timeout`, until it answers.
    async fn start_sandbox(&mut self, timeout: Duration) -> Result<()>;

    /// Stops the VMM, gently then by force.
    async fn stop_sandbox(&mut self) -> Result<()>;

    /// Pauses the guest.
    async fn pause_sandbox(&mut self) -> Result<()>;

    /// Saves the VM's device state (for templates).
    async fn save_sandbox(&mut self) -> Result<()>;

    /// Resumes the guest.
    async fn resume_sandbox(&mut self) -> Result<()>;

    /// Adds a device before the VM starts.
    async fn add_device(&mut self, device: Device) -> Result<()>;

    /// Hot-plugs a device into the running VM.
    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult>;

    /// Hot-unplugs a device from the running VM.
    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult>;

    /// Grows the VM's memory to `mem_mib`, in blocks of `block_size_mib`;
    /// `probe` says whether the guest must probe the new memory. Returns the
    /// new size and the memory device added.
    async fn resize_memory(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)>;

    /// Sets the number of vCPUs. Returns the old and the new count.
    async fn resize_vcpus(&mut self, vcpus: u32) -> Result<(u32, u32)>;

    /// The console socket of sandbox `id`, when it has one.
    async fn sandbox_console(&self, id: &str) -> Result<Option<PathBuf>>;

    /// Drops the connection to the VMM without stopping it.
    async fn disconnect(&mut self);

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The config the VM was created with.
    fn hypervisor_config(&self) -> HypervisorConfig;

    /// vCPU to host thread ids.
    async fn thread_ids(&mut self) -> Result<VcpuThreadIds>;

    /// Removes what the VM left on the host: its directory and sockets.
    async fn cleanup(&mut self) -> Result<()>;

    /// The VMM's pid first, then its helpers' (virtiofsd).
    fn pids(&self) -> Vec<u32>;

    /// Rebuilds the handle from [`Hypervisor::to_grpc`] output, without
    /// launching anything (VM cache). Named after Kata's `fromGrpc`.
    #[allow(clippy::wrong_self_convention)]
    async fn from_grpc(&mut self, config: &HypervisorConfig, data: &[u8]) -> Result<()>;

    /// Serialises the handle for a VM cache and closes its connections.
    async fn to_grpc(&mut self) -> Result<Vec<u8>>;

    /// Checks that the VMM is alive and the guest healthy.
    async fn check(&mut self) -> Result<()>;

    /// The state to persist so that another process can re-attach.
    fn save(&self) -> HypervisorState;

    /// Re-attaches to the VM described by `state`.
    async fn load(&mut self, state: HypervisorState) -> Result<()>;

    /// Makes the agent socket of VM `id`.
    fn generate_socket(&self, id: &str, use_vsock: bool) -> Result<AgentSocket>;

    /// Gives the VMM a copy of `connection`, the host end of the agent
    /// connection just made, in place of the one it held before (closed
    /// then). The connection then outlives the process that made it, so a
    /// supervisor that dies closes nothing in the guest's channel; the
    /// next connection, made while the guest runs, closes the old one.
    ///
    /// QEMU with a hybrid vsock needs it: vhost-device-vsock 0.3 ends its
    /// device thread for good when a host connection opens or closes while
    /// the guest is paused (its rings are stopped then), and the agent is
    /// unreachable afterwards.
    ///
    /// # Errors
    /// [`Error::Unsupported`] where [`Capabilities::holds_agent_connection`]
    /// is false; the VMM's error.
    async fn hold_agent_connection(&mut self, connection: BorrowedFd<'_>) -> Result<()> {
        let _ = connection;
        Err(Error::unsupported(
            "hold_agent_connection",
            self.hypervisor_type(),
            "its agent channel needs no copy held by the VMM",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_the_state_s_daemons() {
        let mut state = HypervisorState::default();
        assert!(state.helpers().is_empty());
        let me = ProcessRef::current();
        state.virtiofsd_pid = Some(me.pid);
        state.vsock_daemon = Some(me);
        let helpers = state.helpers();
        let names: Vec<_> = helpers.iter().map(|h| h.name).collect();
        assert_eq!(names, [VIRTIOFSD, VSOCK_DAEMON]);
        assert!(helpers.iter().all(|h| h.process == me), "{helpers:?}");
    }

    #[test]
    fn a_dead_helper_is_named_with_what_was_lost() {
        let e = Error::HelperExited {
            hypervisor: HypervisorType::Qemu,
            helper: VIRTIOFSD,
            pid: 7,
            exit: Exit::Signal(9),
            lost: "shared directory",
            log_tail: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "the shared directory is lost: virtiofsd (pid 7) exited (killed by signal 9 (SIGKILL))"
        );
        assert_eq!(e.helper_exit(), Some((VIRTIOFSD, Exit::Signal(9))));
        assert_eq!(e.vmm_exit(), None);
    }
}
