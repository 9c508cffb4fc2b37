//! The host side of the agent protocol: an async client for the
//! `sandvisor-agent` running in the guest.
//!
//! [`AgentClient::connect`] opens the agent channel and repeats the
//! handshake until the agent answers or the deadline passes: QEMU's chardev
//! accepts connections before the guest has booted, and virtio-serial drops
//! what is sent before the agent opens its port. After that, requests are
//! independent: each carries an id, a reader task routes replies and exec
//! events by id, and every call has a timeout.
//!
//! The wire format is in the `sandvisor-proto` crate.

mod session;
pub mod transport;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandvisor_proto::frame::{self, FrameError, HEADER_LEN};
use sandvisor_proto::{
    AgentError, AgentMessage, BlockDevice, ExecRequest, ExitStatus, GuestDetails, HostMessage,
    MountRequest, OnlineCpuMemRequest, OnlineCpuMemResult, Request, Response, SetTimeRequest,
    Stream as OutputStream, FEATURE_EXEC_IO, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use session::{Control, ExecInput, ExecSession, STDIN_CHUNK, STDIN_WINDOW};
pub use transport::AgentAddress;
use transport::Stream;

/// How long one handshake attempt waits before hello is sent again.
const HELLO_RETRY: Duration = Duration::from_millis(500);
/// Pause between connection attempts.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// How long one open may wait for its answer before it is dropped and
/// retried. A hybrid vsock's `CONNECT` made while the guest's vsock was not
/// ready can go unanswered for good; a fresh one is answered as soon as
/// the guest listens. A listening guest answers in milliseconds.
const OPEN_ATTEMPT: Duration = Duration::from_secs(2);
/// Default timeout of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors from talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The channel could not be opened.
    #[error("cannot connect to the agent at {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer the handshake in time.
    #[error("the agent at {addr} did not answer within {waited:.1?}")]
    ConnectTimeout {
        /// The address.
        addr: String,
        /// How long it was tried.
        waited: Duration,
        /// The last error seen.
        #[source]
        last: Box<ClientError>,
    },
    /// A call did not complete in time.
    #[error("{op} timed out after {after:.1?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// Its timeout.
        after: Duration,
    },
    /// The connection closed.
    #[error("the agent connection closed")]
    Disconnected,
    /// The agent answered with an error.
    #[error("{op} failed in the guest")]
    Agent {
        /// The call.
        op: &'static str,
        /// The agent's error.
        #[source]
        source: AgentError,
    },
    /// The request needs something the agent does not do: it predates it.
    #[error("the guest agent (version {agent_version}) cannot {what}; rebuild the guest image with `sandvisor image build`")]
    AgentTooOld {
        /// The agent's version.
        agent_version: String,
        /// What was asked.
        what: &'static str,
    },
    /// The agent answered something the call did not expect.
    #[error("{op}: unexpected reply {got}")]
    UnexpectedReply {
        /// The call.
        op: &'static str,
        /// What came.
        got: String,
    },
    /// A frame could not be encoded or decoded.
    #[error("bad frame on the agent channel")]
    Frame(#[from] FrameError),
    /// Writing to the channel failed.
    #[error("cannot write to the agent channel")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    fn agent(op: &'static str) -> impl FnOnce(AgentError) -> ClientError {
        move |source| ClientError::Agent { op, source }
    }

    /// The agent's own error, when this is one.
    pub fn agent_error(&self) -> Option<&AgentError> {
        match self {
            ClientError::Agent { source, .. } => Some(source),
            _ => None,
        }
    }
}

type Routes = HashMap<u64, mpsc::UnboundedSender<AgentMessage>>;

#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<Routes>,
    /// Replies without an id (to frames the agent could not read).
    unrouted: Mutex<Option<mpsc::UnboundedSender<AgentMessage>>>,
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn route(&self, msg: AgentMessage) {
        let id = match &msg {
            AgentMessage::Reply { id, .. } => *id,
            AgentMessage::ExecOutput { id, .. } | AgentMessage::ExecExit { id, .. } => Some(*id),
        };
        let tx = match id {
            Some(id) => self.routes().get(&id).cloned(),
            None => self
                .unrouted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        match tx {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => tracing::debug!(?id, "agent message for no waiting call"),
        }
    }
}

/// Removes a route when its call ends, however it ends.
struct Route<'a> {
    shared: &'a Shared,
    id: u64,
    rx: mpsc::UnboundedReceiver<AgentMessage>,
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        self.shared.routes().remove(&self.id);
    }
}

/// A connected, handshaken agent.
#[derive(Debug)]
pub struct AgentClient {
    shared: Arc<Shared>,
    writer: Arc<tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>>,
    reader: JoinHandle<()>,
    next_id: AtomicU64,
    timeout: Duration,
    agent_version: String,
    features: Vec<String>,
    /// Where it connected, when [`AgentClient::connect`] made it.
    address: Option<AgentAddress>,
    /// A second descriptor of a hybrid vsock connection.
    duplicate: Option<OwnedFd>,
}

/// Writes to the agent wait while this lives ([`AgentClient::hold_writes`]).
pub struct WritesHeld {
    _guard: tokio::sync::OwnedMutexGuard<WriteHalf<Box<dyn Stream>>>,
}

impl std::fmt::Debug for WritesHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WritesHeld")
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How a process run with [`AgentClient::exec`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Its guest pid.
    pub pid: u32,
    /// Its exit code or signal.
    pub status: ExitStatus,
    /// Whether the agent killed it at its timeout.
    pub timed_out: bool,
}

/// One event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Output.
    Output(OutputStream, Vec<u8>),
    /// The end; no more events follow.
    Exit(ExecOutcome),
}

/// A started exec: its events, in order.
#[derive(Debug)]
pub struct ExecHandle<'a> {
    route: Route<'a>,
    pid: u32,
    deadline: Option<Instant>,
    done: bool,
}

impl ExecHandle<'_> {
    /// The exec request's id, by which the agent knows the process.
    pub fn id(&self) -> u64 {
        self.route.id
    }

    /// The guest pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event; `Ok(None)` after the exit.
    ///
    /// # Errors
    /// [`ClientError::Disconnected`] when the channel closes first,
    /// [`ClientError::Timeout`] past the deadline.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let msg = match self.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.route.rx.recv())
                .await
                .map_err(|_| ClientError::Timeout {
                    op: "exec",
                    after: d.saturating_duration_since(Instant::now()),
                })?,
            None => self.route.rx.recv().await,
        };
        match msg.ok_or(ClientError::Disconnected)? {
            AgentMessage::ExecOutput { stream, data, .. } => {
                Ok(Some(ExecEvent::Output(stream, data)))
            }
            AgentMessage::ExecExit {
                status, timed_out, ..
            } => {
                self.done = true;
                Ok(Some(ExecEvent::Exit(ExecOutcome {
                    pid: self.pid,
                    status,
                    timed_out,
                })))
            }
            other => Err(ClientError::UnexpectedReply {
                op: "exec",
                got: format!("{other:?}"),
            }),
        }
    }
}

/// What of `req` only an agent with [`FEATURE_EXEC_IO`] does.
fn needs_exec_io(req: &ExecRequest) -> Option<&'static str> {
    if req.uid.is_some() || req.gid.is_some() {
        Some("run a command as another user")
    } else if req.tty.is_some() {
        Some("give a command a terminal")
    } else if req.stream_stdin {
        Some("stream stdin")
    } else {
        None
    }
}

impl std::fmt::Debug for Route<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("id", &self.id).finish()
    }
}

async fn read_loop(mut reader: ReadHalf<Box<dyn Stream>>, shared: Arc<Shared>) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if let Err(e) = reader.read_exact(&mut header).await {
            tracing::debug!(error = %e, "agent channel closed");
            break;
        }
        let len = match frame::decode_header(header) {
            Ok(len) => len,
            Err(e) => {
                // Out of step with the agent: nothing after this can be
                // trusted.
                tracing::warn!(error = %e, "oversized frame from the agent; closing");
                break;
            }
        };
        let mut payload = vec![0u8; len];
        if let Err(e) = reader.read_exact(&mut payload).await {
            tracing::debug!(error = %e, "agent channel closed inside a frame");
            break;
        }
        match frame::decode::<AgentMessage>(&payload) {
            Ok(msg) => shared.route(msg),
            Err(e) => tracing::warn!(error = %e, "undecodable frame from the agent; skipped"),
        }
    }
    // Dropping the senders wakes every waiting call with Disconnected.
    shared.routes().clear();
    shared
        .unrouted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}

impl AgentClient {
    /// Connects to the agent at `addr` and completes the handshake,
    /// retrying both until `wait` has passed.
    ///
    /// # Errors
    /// [`ClientError::ConnectTimeout`] with the last error seen; a version
    /// mismatch at once, as [`ClientError::Agent`].
    pub async fn connect(addr: &AgentAddress, wait: Duration) -> Result<Self, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            // A hybrid vsock's `CONNECT` may get no answer while the guest
            // is not listening: each open ends after OPEN_ATTEMPT (or at the
            // deadline), and the next one asks again.
            let attempt_end = deadline.min(Instant::now() + OPEN_ATTEMPT);
            let opened =
                match tokio::time::timeout_at(attempt_end.into(), transport::open(addr)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to the connect within the deadline",
                    )),
                };
            let last = match opened {
                Ok(opened) => {
                    let mut client = AgentClient::from_stream(opened.stream);
                    client.duplicate = opened.duplicate;
                    match client.handshake_until(deadline).await {
                        Ok((version, features)) => {
                            client.agent_version = version;
                            client.features = features;
                            client.address = Some(addr.clone());
                            return Ok(client);
                        }
                        Err(e @ ClientError::Agent { .. }) => return Err(e),
                        Err(e) => e,
                    }
                }
                Err(source) => ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                },
            };
            if Instant::now() + CONNECT_RETRY >= deadline {
                return Err(ClientError::ConnectTimeout {
                    addr: addr.to_string(),
                    waited: wait,
                    last: Box::new(last),
                });
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }

    /// A client over an open stream, before the handshake. Most callers
    /// want [`AgentClient::connect`].
    pub fn from_stream(stream: Box<dyn Stream>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared)));
        AgentClient {
            shared,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            reader,
            next_id: AtomicU64::new(1),
            timeout: DEFAULT_TIMEOUT,
            agent_version: String::new(),
            features: Vec::new(),
            address: None,
            duplicate: None,
        }
    }

    /// Where the agent listens, when this client connected to it by
    /// address (the VM cache passes it on to a VM's next owner).
    pub fn address(&self) -> Option<&AgentAddress> {
        self.address.as_ref()
    }

    /// Sets the timeout of each call (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The host end of a hybrid vsock connection, for a VMM to hold a copy
    /// of: the connection then outlives this process, and a host-side
    /// close cannot reach vhost-device-vsock while the guest is paused
    /// (see `Hypervisor::hold_agent_connection`). `None` for other
    /// channels.
    pub fn connection(&self) -> Option<BorrowedFd<'_>> {
        self.duplicate.as_ref().map(AsFd::as_fd)
    }

    /// Holds every write to the agent until the guard is dropped; waits
    /// for a write under way to end first. For a paused guest, which
    /// reads nothing: vhost-device-vsock loses its device for good when
    /// host data reaches it while the guest is paused.
    pub async fn hold_writes(&self) -> WritesHeld {
        WritesHeld {
            _guard: Arc::clone(&self.writer).lock_owned().await,
        }
    }

    /// The agent's version, from the handshake.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Whether the agent named `feature` (such as
    /// [`sandvisor_proto::FEATURE_EXEC_IO`]) in its hello.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Sends hello until answered; returns the agent's version and
    /// features.
    async fn handshake_until(
        &self,
        deadline: Instant,
    ) -> Result<(String, Vec<String>), ClientError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout {
                    op: "hello",
                    after: HELLO_RETRY,
                });
            }
            let attempt = left.min(HELLO_RETRY);
            let hello = Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            };
            match self.call_with("hello", hello, attempt).await {
                Ok(Response::Hello {
                    agent_version,
                    features,
                    ..
                }) => return Ok((agent_version, features)),
                Ok(other) => {
                    return Err(ClientError::UnexpectedReply {
                        op: "hello",
                        got: format!("{other:?}"),
                    })
                }
                Err(ClientError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn register(&self, id: u64) -> Route<'_> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.routes().insert(id, tx);
        Route {
            shared: &self.shared,
            id,
            rx,
        }
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    async fn send(&self, request: Request) -> Result<Route<'_>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let route = self.register(id);
        if self.reader.is_finished() {
            return Err(ClientError::Disconnected);
        }
        let bytes = frame::encode(&HostMessage { id, request })?;
        self.write(&bytes).await?;
        Ok(route)
    }

    async fn reply(
        op: &'static str,
        route: &mut Route<'_>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let msg = tokio::time::timeout(timeout, route.rx.recv())
            .await
            .map_err(|_| ClientError::Timeout { op, after: timeout })?
            .ok_or(ClientError::Disconnected)?;
        match msg {
            AgentMessage::Reply { result, .. } => result.map_err(ClientError::agent(op)),
            other => Err(ClientError::UnexpectedReply {
                op,
                got: format!("{other:?}"),
            }),
        }
    }

    async fn call_with(
        &self,
        op: &'static str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut route = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| ClientError::Timeout { op, after: timeout })??;
        let left = deadline.saturating_duration_since(Instant::now());
        Self::reply(op, &mut route, left).await
    }

    async fn call(&self, op: &'static str, request: Request) -> Result<Response, ClientError> {
        match self.call_with(op, request.clone(), self.timeout).await {
            Err(e) if Self::lost_handshake(&e) => {
                self.rehandshake().await?;
                self.call_with(op, request, self.timeout).await
            }
            other => other,
        }
    }

    fn lost_handshake(e: &ClientError) -> bool {
        matches!(e.agent_error(), Some(AgentError::NoHandshake))
    }

    /// Greets the agent again after it forgot the session.
    ///
    /// A virtio-serial port has no connection the guest sees at once: the
    /// agent learns that the previous host left only when a read returns
    /// EOF, which can come after this host's hello was already answered.
    /// The agent then starts a new session and refuses the next request
    /// with `NoHandshake`; one more hello puts the two ends back in step.
    async fn rehandshake(&self) -> Result<(), ClientError> {
        tracing::debug!("agent forgot the handshake; greeting it again");
        self.handshake_until(Instant::now() + self.timeout)
            .await
            .map(drop)
    }

    fn unexpected<T>(op: &'static str, got: Response) -> Result<T, ClientError> {
        Err(ClientError::UnexpectedReply {
            op,
            got: format!("{got:?}"),
        })
    }

    /// Checks that the agent answers.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn check(&self) -> Result<(), ClientError> {
        match self.call("check", Request::Check).await? {
            Response::Check => Ok(()),
            other => Self::unexpected("check", other),
        }
    }

    /// Kernel release, CPUs and memory of the guest.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn guest_details(&self) -> Result<GuestDetails, ClientError> {
        match self.call("guest details", Request::GuestDetails).await? {
            Response::GuestDetails(d) => Ok(d),
            other => Self::unexpected("guest details", other),
        }
    }

    /// Starts a process; read its events from the handle. The handle's
    /// deadline is the request's own timeout plus this client's, so a
    /// process the agent kills still reports back; without a request
    /// timeout the handle waits as long as the process runs.
    ///
    /// # Errors
    /// When the agent cannot start it.
    pub async fn exec_start(&self, req: ExecRequest) -> Result<ExecHandle<'_>, ClientError> {
        if let Some(what) = needs_exec_io(&req).filter(|_| !self.has_feature(FEATURE_EXEC_IO)) {
            // An older agent would ignore the fields and run the command
            // differently from what was asked.
            return Err(ClientError::AgentTooOld {
                agent_version: self.agent_version.clone(),
                what,
            });
        }
        let deadline = req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms) + self.timeout);
        let mut route = self.send(Request::Exec(req.clone())).await?;
        let mut reply = Self::reply("exec", &mut route, self.timeout).await;
        if matches!(&reply, Err(e) if Self::lost_handshake(e)) {
            self.rehandshake().await?;
            route = self.send(Request::Exec(req)).await?;
            reply = Self::reply("exec", &mut route, self.timeout).await;
        }
        match reply? {
            Response::ExecStarted { pid } => Ok(ExecHandle {
                route,
                pid,
                deadline,
                done: false,
            }),
            other => Self::unexpected("exec", other),
        }
    }

    /// Runs a process, handing its output chunks to `on_stdout` and
    /// `on_stderr` as they come.
    ///
    /// # Errors
    /// When it cannot be started, or the channel fails before its exit.
    pub async fn exec(
        &self,
        req: ExecRequest,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
    ) -> Result<ExecOutcome, ClientError> {
        let mut handle = self.exec_start(req).await?;
        loop {
            match handle.next().await? {
                Some(ExecEvent::Output(OutputStream::Stdout, data)) => on_stdout(&data),
                Some(ExecEvent::Output(OutputStream::Stderr, data)) => on_stderr(&data),
                Some(ExecEvent::Exit(outcome)) => return Ok(outcome),
                None => return Err(ClientError::Disconnected),
            }
        }
    }

    /// Onlines hot-plugged CPUs and memory (Kata's `OnlineCPUMem`).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn online_cpu_mem(
        &self,
        req: OnlineCpuMemRequest,
    ) -> Result<OnlineCpuMemResult, ClientError> {
        let timeout = self.timeout + Duration::from_millis(req.wait_ms);
        match self
            .call_with("online cpu/mem", Request::OnlineCpuMem(req), timeout)
            .await?
        {
            Response::OnlineCpuMem(r) => Ok(r),
            other => Self::unexpected("online cpu/mem", other),
        }
    }

    /// The guest's block devices.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_block_devices(&self) -> Result<Vec<BlockDevice>, ClientError> {
        match self
            .call("list block devices", Request::ListBlockDevices)
            .await?
        {
            Response::BlockDevices { devices } => Ok(devices),
            other => Self::unexpected("list block devices", other),
        }
    }

    /// Mounts a file system in the guest.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn mount(&self, req: MountRequest) -> Result<(), ClientError> {
        match self.call("mount", Request::Mount(req)).await? {
            Response::Mounted => Ok(()),
            other => Self::unexpected("mount", other),
        }
    }

    /// Sets the guest clock to `time`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn set_time(&self, time: SystemTime) -> Result<(), ClientError> {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let req = SetTimeRequest {
            secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            nanos: since.subsec_nanos(),
        };
        match self.call("set time", Request::SetTime(req)).await? {
            Response::TimeSet => Ok(()),
            other => Self::unexpected("set time", other),
        }
    }

    /// Adds `entropy` (host random bytes) to the guest's random pool and
    /// reseeds its CRNG.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn reseed_rng(&self, entropy: Vec<u8>) -> Result<(), ClientError> {
        let req = sandvisor_proto::ReseedRngRequest { data: entropy };
        match self.call("reseed rng", Request::ReseedRng(req)).await? {
            Response::RngReseeded => Ok(()),
            other => Self::unexpected("reseed rng", other),
        }
    }

    /// Asks the agent to end this session once it has replied, so that
    /// the VM can be saved as a template with no session open. The client
    /// is of no further use.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn quiesce(&self) -> Result<(), ClientError> {
        match self.call("quiesce", Request::Quiesce).await? {
            Response::Quiesced => Ok(()),
            other => Self::unexpected("quiesce", other),
        }
    }

    /// Asks the guest to sync and power off. Returns once the agent has
    /// acknowledged; the VMM exits shortly after.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        match self.call("shutdown", Request::Shutdown).await? {
            Response::ShuttingDown => Ok(()),
            other => Self::unexpected("shutdown", other),
        }
    }

    /// Sends `payload` as one frame, as is, and returns the reply it gets:
    /// for diagnosing the agent's handling of bad input. The reply is
    /// matched by the id the payload shows, or is the next reply without
    /// an id.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no reply comes.
    pub async fn send_raw_frame(&self, payload: &[u8]) -> Result<AgentMessage, ClientError> {
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
            len: payload.len(),
            max: frame::MAX_FRAME_SIZE,
        })?;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut route = None;
        match frame::peek_id(payload) {
            Some(id) => {
                let mut r = self.register(id);
                std::mem::swap(&mut r.rx, &mut rx);
                route = Some(r);
                drop(tx);
            }
            None => {
                *self
                    .shared
                    .unrouted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(tx);
            }
        }
        self.write(&bytes).await?;
        let got = tokio::time::timeout(self.timeout, rx.recv()).await;
        drop(route);
        self.shared
            .unrouted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        got.map_err(|_| ClientError::Timeout {
            op: "raw frame",
            after: self.timeout,
        })?
        .ok_or(ClientError::Disconnected)
    }
}

#[cfg(test)]
mod tests;
