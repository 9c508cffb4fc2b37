//! Sandboxes that outlive the command that made them: one supervisor
//! process per sandbox, a control socket, and persisted state.
//!
//! ```text
//!  sandvisor create/start/exec/...        (CLI, one process per command)
//!     │  Manager: lock <runtime>/<id>/lock, make sure the supervisor answers
//!     │  control protocol on <runtime>/<id>/control.sock (proto)
//!     ▼
//!  sandvisor supervise <id>               (one per sandbox, own session)
//!     owner task: Box<dyn Hypervisor>, the record, the agent connection
//!     watcher: the VMM's pid → how it ended (code or signal)
//!     │  writes <runtime>/<id>/state.json after every change (state)
//!     ▼
//!  VMM (QEMU)  ◄── agent channel ──► guest agent
//! ```
//!
//! * **The supervisor** ([`supervise`]) is started by `create` with the
//!   sandbox's record, creates the VM through the backend, and serves the
//!   control socket until `delete`. It is the only process that talks to
//!   the VMM and the agent, so one agent connection is enough (a
//!   virtio-serial port admits one).
//! * **The record** ([`SandboxRecord`]) holds the metadata and the backend's
//!   [`save`](crate::Hypervisor::save) output, written atomically after
//!   every change.
//! * **Re-attach.** When a command finds the supervisor dead, it starts a
//!   new one that [`load`](crate::Hypervisor::load)s the saved state into a
//!   fresh backend, reconnecting to the VMM that still runs; when the VMM is
//!   gone too, the sandbox is recorded dead and `delete` cleans up.
//! * **Locking.** A command that changes a sandbox holds an exclusive
//!   `flock` on `<runtime>/<id>/lock` ([`SandboxDir::lock`]), so two
//!   commands cannot both start a supervisor for it, or delete it while the
//!   other works on it.
//! * **State machine.** [`Op::allowed_in`] says which [`SandboxStatus`]es
//!   accept which operation; anything else is a typed
//!   [`RemoteError::WrongState`] ("cannot resume sandbox x: it is running").

pub mod agent;
pub mod console;
pub mod id;
pub mod layout;
pub mod manager;

pub mod proto;
pub mod server;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::process::{Exit, ProcessRef};
pub use id::{InvalidId, SandboxId};
pub use layout::{LayoutError, SandboxDir, SandboxLock};
pub use manager::{CreateSpec, Launcher, Manager};
pub use proto::{ExecExit, ExecSpec, HotplugOutcome, HotplugTarget, Op, RemoteError};
pub use server::{supervise, LaunchMode};
pub use state::{HelperExit, PluggedDevice, SandboxRecord, SandboxStatus, StateError};

/// Errors from managing sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A bad id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The sandbox directory or lock.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The record.
    #[error(transparent)]
    State(#[from] StateError),
    /// The supervisor refused or failed the request.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The config does not validate.
    #[error("invalid hypervisor config")]
    Config(#[from] crate::config::ConfigError),
    /// A file or socket operation failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was tried.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor program could not be started.
    #[error("cannot start the supervisor {program:?}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor ended before it answered.
    #[error("the supervisor of sandbox {id} exited ({status}) before answering; see {log:?}")]
    SupervisorExited {
        /// The sandbox.
        id: SandboxId,
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
    },
    /// The supervisor runs but does not answer.
    #[error("the supervisor of sandbox {id} (pid {pid}) does not answer; see {log:?}")]
    Unresponsive {
        /// The sandbox.
        id: SandboxId,
        /// Its pid.
        pid: u32,
        /// Its log.
        log: PathBuf,
    },
    /// A wait ran out.
    #[error("sandbox {id}: gave up waiting for {what} after {after:?}")]
    Timeout {
        /// The sandbox.
        id: SandboxId,
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The control connection failed.
    #[error("lost contact with the supervisor of sandbox {id}")]
    Proto {
        /// The sandbox.
        id: SandboxId,
        /// What went wrong.
        #[source]
        source: proto::ProtoError,
    },
    /// The sandbox has no supervisor and the operation needs one.
    #[error("sandbox {0} has no supervisor")]
    NotLive(SandboxId),
    /// The console session failed.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
}
