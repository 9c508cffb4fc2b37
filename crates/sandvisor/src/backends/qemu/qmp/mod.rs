//! A typed, async QMP client.
//!
//! Every command is a serde struct implementing [`Command`], which names
//! the QMP command and the type its `return` decodes into. A reader task
//! owns the read half of the socket: it hands each reply to the caller
//! waiting on its `id`, and each event to every [`Qmp::subscribe`]r.
//! Every call has a timeout; an error reply keeps QEMU's `class` and `desc`.
//!
//! Why not the `qapi`/`qapi-qmp` crates: their types are generated from
//! the newest QEMU schema, not from the 7.2 this project runs, so a field
//! QEMU 7.2 lacks or names differently fails to decode; and the few dozen
//! commands used here are small, stable structs that read better next to
//! the code that sends them.

mod client;
mod commands;
mod events;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[cfg(feature = "fuzzing")]
pub use self::client::fuzz_line;
pub use self::client::Qmp;
pub use self::commands::*;
pub use self::events::Event;

/// How long a command waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {path:?}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// QEMU's greeting was missing or malformed.
    #[error("no QMP greeting from {path:?}")]
    Greeting {
        /// The socket.
        path: PathBuf,
        /// What went wrong, when something was read.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// Writing a command failed.
    #[error("cannot send QMP command {command}")]
    Send {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered with an error.
    #[error("qmp {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: &'static str,
        /// QEMU's error class.
        class: ErrorClass,
        /// QEMU's description.
        desc: String,
    },
    /// No reply in time.
    #[error("qmp {command}: no reply within {timeout:?}")]
    Timeout {
        /// The command.
        command: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// The connection closed before the reply came.
    #[error("qmp {command}: QEMU closed the connection")]
    Disconnected {
        /// The command.
        command: &'static str,
    },
    /// The reply did not decode into the expected type.
    #[error("qmp {command}: unexpected reply")]
    Decode {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A command's arguments did not encode.
    #[error("qmp {command}: cannot encode the arguments")]
    Encode {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
}

impl QmpError {
    /// Whether a connect error can pass: the socket does not exist yet, or
    /// nobody listens on it yet, while QEMU starts.
    pub fn is_transient_connect(&self) -> bool {
        match self {
            QmpError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    /// QEMU's error class, for an error reply.
    pub fn class(&self) -> Option<&ErrorClass> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// QEMU's error classes (`qapi/error.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum ErrorClass {
    /// Most errors.
    GenericError,
    /// The command does not exist.
    CommandNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// The device does not exist.
    DeviceNotFound,
    /// KVM lacks a capability.
    KVMMissingCap,
    /// A class this client does not know.
    #[serde(other)]
    Other,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
