//! How the supervisor talks to the guest agent.
//!
//! The supervisor holds the one host connection the agent channel allows
//! (a virtio-serial port takes a single client) and shares it between
//! `exec` streams, CPU and memory onlining after hot-plug, and the power-off
//! before `stop`. [`GuestAgent`] is the part of the agent client it uses.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::proto::{ExecExit, ExecSpec};
use crate::hypervisor_type::HypervisorType;
use crate::socket::AgentSocket;

/// Errors from the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentLinkError {
    /// This build has no client for the agent protocol.
    #[error("this sandvisor build has no guest agent client")]
    NoClient,
    /// The agent did not answer in time.
    #[error("the guest agent at {address} did not answer within {waited:?}")]
    Timeout {
        /// Where it was tried.
        address: AgentAddress,
        /// How long.
        waited: Duration,
    },
    /// The agent answered with an error, or the channel failed.
    #[error("guest agent request failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the guest agent listens, as the host reaches it; persisted so a
/// new supervisor reconnects to the same channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentAddress {
    /// A virtio-serial port behind a host unix socket.
    Serial {
        /// The host socket.
        path: PathBuf,
    },
    /// vhost-vsock.
    Vsock {
        /// The guest context id.
        cid: u64,
        /// The port.
        port: u32,
    },
    /// A hybrid vsock: a host unix socket the VMM bridges to guest vsock.
    HybridVsock {
        /// The host socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
    },
}

impl From<&AgentSocket> for AgentAddress {
    fn from(socket: &AgentSocket) -> Self {
        match socket {
            AgentSocket::Unix(u) => AgentAddress::Serial {
                path: u.host_path.clone(),
            },
            AgentSocket::Vsock(v) => AgentAddress::Vsock {
                cid: v.context_id,
                port: v.port,
            },
            AgentSocket::HybridVsock(h) => AgentAddress::HybridVsock {
                path: h.uds_path.clone(),
                port: h.port,
            },
        }
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddress::Serial { path } => write!(f, "serial port {}", path.display()),
            AgentAddress::Vsock { cid, port } => write!(f, "vsock {cid}:{port}"),
            AgentAddress::HybridVsock { path, port } => {
                write!(f, "hybrid vsock {}:{port}", path.display())
            }
        }
    }
}

/// Output of a guest process, as it comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The process started with this guest pid.
    Started(u32),
    /// Bytes on its stdout.
    Stdout(Vec<u8>),
    /// Bytes on its stderr.
    Stderr(Vec<u8>),
}

/// The guest agent calls the supervisor makes.
#[async_trait]
pub trait GuestAgent: Send + Sync + fmt::Debug {
    /// Runs a process; sends its events to `events` as they come and
    /// returns how it ended.
    async fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Vec<u8>>,
        events: mpsc::Sender<ExecEvent>,
    ) -> Result<ExecExit, AgentLinkError>;

    /// Brings hot-plugged CPUs (`cpus`, 0 for none) and memory online,
    /// probing `probe_addresses` first.
    async fn online_cpu_mem(
        &self,
        cpus: u32,
        memory: bool,
        probe_addresses: &[u64],
    ) -> Result<(), AgentLinkError>;

    /// Syncs and powers the guest off.
    async fn shutdown(&self) -> Result<(), AgentLinkError>;
}

/// Whether a backend runs a guest with an agent; the mock runs none.
pub fn has_guest(kind: HypervisorType) -> bool {
    kind != HypervisorType::Mock
}

/// Connects to the agent at `address`, waiting up to `timeout` for it to
/// answer (a guest that is still booting has not opened its end yet).
///
/// # Errors
/// [`AgentLinkError`]: no answer in time, or no client in this build.
pub async fn connect(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<Arc<dyn GuestAgent>, AgentLinkError> {
    let _ = (address, timeout);
    Err(AgentLinkError::NoClient)
}
