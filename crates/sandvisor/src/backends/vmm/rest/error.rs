//! The REST client's errors, and how a VMM's error reply reads.

use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;

use super::{Flavour, Method};

/// How much of an undecodable reply an error keeps.
const EXCERPT_CHARS: usize = 256;

/// Errors from a VMM's REST API.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The API socket could not be connected.
    #[error("cannot connect to VMM API socket {socket:?}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// No whole reply within the deadline.
    #[error("{method} {path}: no reply within {timeout:?}")]
    Timeout {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The deadline it had.
        timeout: Duration,
    },
    /// The VMM answered with an error status.
    #[error("{method} {path}: status {status}: {message}")]
    Fault {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The VMM's whole message (its reason phrase when the body is empty).
        message: String,
    },
    /// A success reply did not decode into the endpoint's reply type.
    #[error("{method} {path}: cannot decode the reply {body:?}")]
    Decode {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// The start of the reply body.
        body: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The request body did not encode.
    #[error("{method} {path}: cannot encode the request body")]
    Encode {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The endpoint's path is not a valid request path.
    #[error("{method} {path}: invalid request path")]
    Path {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// What went wrong.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// Preparing the request failed outside HTTP (duplicating the fds to pass).
    #[error("{method} {path}: i/o error")]
    Io {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed: the connection broke, or the reply was not HTTP.
    #[error("{method} {path}: http exchange failed")]
    Http {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// What went wrong.
        #[source]
        source: hyper::Error,
    },
}

impl RestError {
    /// Whether the error can pass by itself: the socket does not exist yet,
    /// or nobody listens on it yet, while the VMM starts.
    pub fn is_transient(&self) -> bool {
        match self {
            RestError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    /// The HTTP status of an error reply.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Fault { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Firecracker's error body.
#[derive(Deserialize)]
struct FirecrackerFault {
    fault_message: String,
}

/// The message of an error reply, whole, as `flavour` writes it. A body
/// in neither of its shapes is kept as text.
pub(super) fn fault_message(flavour: Flavour, status: StatusCode, body: &[u8]) -> String {
    let decoded = match flavour {
        Flavour::Firecracker => serde_json::from_slice::<FirecrackerFault>(body)
            .ok()
            .map(|fault| fault.fault_message),
        // Outermost error first, root cause last; each entry trimmed so a
        // trailing newline does not split the line.
        Flavour::CloudHypervisor => serde_json::from_slice::<Vec<String>>(body)
            .ok()
            .map(|chain| {
                chain
                    .iter()
                    .map(|s| s.trim())
                    .collect::<Vec<_>>()
                    .join(": ")
            }),
    };
    let message = decoded.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        message
    }
}

/// The start of a reply body, for an error message.
pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.into_owned(),
    }
}
