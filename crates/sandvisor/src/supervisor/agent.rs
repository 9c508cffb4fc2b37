//! How the supervisor talks to the guest agent.
//!
//! The supervisor holds the one host connection the agent channel allows
//! (a virtio-serial port takes a single client) and shares it between
//! `exec` streams, CPU and memory onlining after hot-plug, and the power-off
//! before `stop`. [`GuestAgent`] is the part of the agent client it uses.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use sandvisor_proto::{ExecRequest, ExitStatus, OnlineCpuMemRequest, Stream as OutputStream};

use super::proto::{ExecExit, ExecSpec};
pub use crate::agent::AgentAddress;
use crate::agent::{AgentClient, ClientError, ExecEvent as ClientEvent, ExecInput, WritesHeld};
use crate::hypervisor_type::HypervisorType;

/// Errors from the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentLinkError {
    /// The agent did not answer, answered with an error, or the channel
    /// failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl AgentLinkError {
    /// The shell's exit code when a command could not be started because
    /// it is missing (127) or not executable (126).
    pub fn not_runnable_code(&self) -> Option<i32> {
        match self {
            AgentLinkError::Client(e) => e.agent_error().and_then(|a| a.not_runnable_code()),
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
    /// Runs a process, streaming `input` to it; sends its events to
    /// `events` as they come and returns how it ended.
    async fn exec(
        &self,
        spec: &ExecSpec,
        input: ExecInput,
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

    /// The guest's `MemTotal`, in KiB.
    async fn mem_total_kib(&self) -> Result<u64, AgentLinkError>;

    /// The host end of the connection, when the VMM should hold a copy of
    /// it ([`crate::Hypervisor::hold_agent_connection`]); `None` when
    /// there is nothing to hold.
    fn connection(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Holds every write to the agent while the guard lives (a write
    /// under way ends first); `None` when writes cannot be held.
    async fn hold_writes(&self) -> Option<WritesHeld> {
        None
    }
}

/// How long the agent waits for hot-plugged CPUs to appear.
pub const ONLINE_WAIT: Duration = Duration::from_secs(10);

/// Whether a backend runs a guest with an agent; the mock runs none.
pub fn has_guest(kind: HypervisorType) -> bool {
    crate::backends::facts(kind).has_guest
}

/// Connects to the agent at `address`, waiting up to `timeout` for it to
/// answer (a guest that is still booting has not opened its end yet).
///
/// # Errors
/// [`AgentLinkError`]: no answer in time, or an unreachable address.
pub async fn connect(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<Arc<dyn GuestAgent>, AgentLinkError> {
    let client = AgentClient::connect(address, timeout).await?;
    tracing::info!(%address, version = client.agent_version(), "connected to the guest agent");
    Ok(Arc::new(Client(client)))
}

/// The supervisor's view of a connected agent client.
pub fn from_client(client: AgentClient) -> Arc<dyn GuestAgent> {
    Arc::new(Client(client))
}

/// The agent client, as the supervisor uses it.
#[derive(Debug)]
struct Client(AgentClient);

#[async_trait]
impl GuestAgent for Client {
    async fn exec(
        &self,
        spec: &ExecSpec,
        input: ExecInput,
        events: mpsc::Sender<ExecEvent>,
    ) -> Result<ExecExit, AgentLinkError> {
        let request = ExecRequest {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            timeout_ms: spec.timeout_ms,
            uid: spec.uid,
            gid: spec.gid,
            tty: spec.tty,
            ..ExecRequest::default()
        };
        let mut handle = self.0.exec_session(request, input).await?;
        // A client that went away stops reading events; the process still
        // runs to its end, and its exit is still awaited.
        let _ = events.send(ExecEvent::Started(handle.pid())).await;
        loop {
            match handle.next().await? {
                Some(ClientEvent::Output(OutputStream::Stdout, data)) => {
                    let _ = events.send(ExecEvent::Stdout(data)).await;
                }
                Some(ClientEvent::Output(OutputStream::Stderr, data)) => {
                    let _ = events.send(ExecEvent::Stderr(data)).await;
                }
                Some(ClientEvent::Exit(outcome)) => {
                    return Ok(match outcome.status {
                        ExitStatus::Code(c) => ExecExit::Code(c),
                        ExitStatus::Signal(s) => ExecExit::Signal(s),
                    });
                }
                None => return Err(ClientError::Disconnected.into()),
            }
        }
    }

    async fn online_cpu_mem(
        &self,
        cpus: u32,
        memory: bool,
        probe_addresses: &[u64],
    ) -> Result<(), AgentLinkError> {
        let request = OnlineCpuMemRequest {
            nb_cpus: cpus,
            cpu_only: !memory,
            probe_addresses: probe_addresses.to_vec(),
            // The caller polls MemTotal itself until the size it added shows.
            memory_mib: 0,
            wait_ms: u64::try_from(ONLINE_WAIT.as_millis()).unwrap_or(u64::MAX),
        };
        let done = self.0.online_cpu_mem(request).await?;
        tracing::info!(
            cpus_onlined = done.cpus_onlined,
            memory_blocks_onlined = done.memory_blocks_onlined,
            cpus_online = done.cpus_online,
            "guest onlined hot-plugged resources"
        );
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), AgentLinkError> {
        Ok(self.0.shutdown().await?)
    }

    async fn mem_total_kib(&self) -> Result<u64, AgentLinkError> {
        Ok(self.0.guest_details().await?.mem_total_kib)
    }

    fn connection(&self) -> Option<BorrowedFd<'_>> {
        self.0.connection()
    }

    async fn hold_writes(&self) -> Option<WritesHeld> {
        Some(self.0.hold_writes().await)
    }
}
