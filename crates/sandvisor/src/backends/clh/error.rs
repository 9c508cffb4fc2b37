//! The backend's errors, and how they become the trait's.

use std::path::PathBuf;
use std::time::Duration;

use super::api::VmRunState;
use super::resize::ResizeError;
use super::vm_config::VmConfigError;
use super::KIND;
use crate::backends::vmm::process::{Exit, ProcessError};
use crate::backends::vmm::rest::RestError;
use crate::backends::vmm::virtiofsd::VirtiofsdError;
use crate::hypervisor::Error;
use crate::hypervisor_type::HypervisorType;
use crate::probe;

/// Errors of the Cloud Hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum ClhError {
    /// The `vm.create` body could not be built.
    #[error(transparent)]
    VmConfig(#[from] VmConfigError),
    /// A resize was refused.
    #[error(transparent)]
    Resize(#[from] ResizeError),
    /// An API call failed; the source keeps CH's message.
    #[error("cloud hypervisor could not {op}")]
    Api {
        /// What was asked, in words.
        op: &'static str,
        /// The failure, with CH's reply.
        #[source]
        source: RestError,
    },
    /// A process could not be spawned or adopted.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// virtiofsd could not be started.
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    /// The host's memory could not be read.
    #[error("cannot read the host's memory size")]
    HostMemory(#[source] probe::ProbeError),
    /// A directory of the VM could not be made or removed.
    #[error("cannot {action} directory {path:?}")]
    Dir {
        /// `create` or `remove`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// CH exited while starting.
    #[error("cloud hypervisor exited while starting")]
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
    /// CH exited without being asked to.
    #[error("cloud hypervisor exited on its own")]
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
    /// CH did not get the VM running in time.
    #[error("cloud hypervisor did not {what} in time")]
    StartTimeout {
        /// What it did not do.
        what: String,
        /// How long it had.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
        /// The last error (boxed: errors stay small to move).
        last: Option<Box<RestError>>,
    },
    /// `vm.boot` answered, but the VM does not run.
    #[error("the VM is {state:?} after vm.boot, not Running")]
    NotRunning {
        /// What `vm.info` said.
        state: VmRunState,
    },
    /// virtiofsd has exited.
    #[error("virtiofsd (pid {pid}) exited: {exit}")]
    VirtiofsdExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
    },
    /// A tap could not be opened for a network device.
    #[error("cannot open tap {name:?}")]
    Tap {
        /// The tap.
        name: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
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
    /// `to_grpc` output that does not decode.
    #[error("cannot decode the VM cache state")]
    Grpc(#[source] serde_json::Error),
    /// A state for another hypervisor.
    #[error("the state is for {0}, not clh")]
    WrongHypervisor(HypervisorType),
    /// CH refused to snapshot a template VM; `message` is CH's own text
    /// (under PVM it cannot read the vCPUs' nested state).
    #[error("cloud hypervisor cannot snapshot the template to {dir:?} (HTTP {status}): {message}")]
    TemplateSnapshot {
        /// The template directory.
        dir: PathBuf,
        /// CH's HTTP status.
        status: u16,
        /// CH's error text.
        message: String,
    },
    /// A template's memory file could not be made.
    #[error("cannot make the template memory file {path:?}")]
    TemplateMemory {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The config a template's snapshot saved could not be read, patched
    /// for clones, or written back.
    #[error("cannot patch the template's saved config {path:?} for copy-on-write clones")]
    TemplateConfig {
        /// The saved config (`config.json` in the template directory).
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

impl ClhError {
    /// CH's HTTP status and message, when an API call got an error reply.
    pub fn fault(&self) -> Option<(u16, &str)> {
        match self {
            ClhError::Api {
                source: RestError::Fault {
                    status, message, ..
                },
                ..
            } => Some((*status, message.as_str())),
            _ => None,
        }
    }
}

impl From<ClhError> for Error {
    /// CH's exits and start timeouts become the shared variants every
    /// backend reports them with; the rest is [`Error::Backend`].
    fn from(e: ClhError) -> Self {
        match e {
            ClhError::VirtiofsdExited { pid, exit } => Error::HelperExited {
                hypervisor: KIND,
                helper: crate::hypervisor::VIRTIOFSD,
                pid,
                exit,
                lost: "shared directory",
                log_tail: String::new(),
            },
            ClhError::EarlyExit {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: KIND,
                binary,
                pid,
                exit,
                starting: true,
                log_tail,
            },
            ClhError::Exited {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: KIND,
                binary,
                pid,
                exit,
                starting: false,
                log_tail,
            },
            ClhError::StartTimeout {
                what,
                timeout,
                log_tail,
                last,
            } => Error::StartTimeout {
                hypervisor: KIND,
                what,
                timeout,
                log_tail,
                last: last.map(|e| e as crate::hypervisor::BackendError),
            },
            other => Error::backend(KIND, other),
        }
    }
}

/// `result`'s error as an API failure of `op`.
pub(super) fn api_err<T>(
    op: &'static str,
    result: std::result::Result<T, RestError>,
) -> Result<T, ClhError> {
    result.map_err(|source| ClhError::Api { op, source })
}
