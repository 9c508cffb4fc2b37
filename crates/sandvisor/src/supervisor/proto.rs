//! The control protocol between the CLI and a sandbox's supervisor, on
//! `<runtime>/<id>/control.sock`.
//!
//! # Frames
//!
//! A frame is a kind byte, a 4-byte big-endian payload length, then the
//! payload, at most [`MAX_PAYLOAD`] bytes:
//!
//! | kind | payload |
//! |---|---|
//! | 1 [`Frame::Message`] | JSON: a [`ClientMessage`] or a [`Reply`] |
//! | 2 [`Frame::Stdout`] | raw bytes of a process's stdout |
//! | 3 [`Frame::Stderr`] | raw bytes of a process's stderr |
//! | 4 [`Frame::Stdin`] | raw bytes for a process's stdin; empty means end |
//!
//! Output travels as raw bytes, not in JSON, so a process's output costs no
//! encoding and keeps its bytes exactly.
//!
//! # Exchanges
//!
//! One request per connection. The client sends a [`ClientMessage`] (the
//! protocol version and a [`Request`]); the supervisor answers one
//! [`Reply`], except for [`Request::Exec`]: the supervisor sends
//! [`Reply::ExecStarted`], output frames as they come, and one
//! [`Reply::ExecExited`] (or [`Reply::Error`]). Meanwhile the client may
//! send, as they come, [`Frame::Stdin`] frames (when it asked for stdin),
//! ending with an empty one, and [`ExecControl`] messages: signals and
//! terminal resizes for the process.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::id::SandboxId;
use super::state::{SandboxRecord, SandboxStatus};
use crate::hypervisor_type::HypervisorType;

/// The protocol version. A supervisor answers only clients of its version:
/// after an upgrade, an old supervisor says so instead of misreading.
///
/// Version 2: `exec` streams stdin while the process runs (version 1 read
/// it whole first), takes [`ExecControl`] messages, and runs as a user or
/// on a terminal; a version-1 supervisor would run such a command as root
/// without one.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest payload of one frame: 1 MiB.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Errors on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing failed.
    #[error("control socket i/o failed")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a complete frame.
    #[error("the supervisor closed the connection")]
    Closed,
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame over the size limit.
    #[error("frame of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A message that does not decode.
    #[error("malformed control message")]
    Malformed(#[source] serde_json::Error),
    /// A frame that is valid but not what the exchange expects here.
    #[error("unexpected {0} frame on the control socket")]
    Unexpected(&'static str),
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON message.
    Message(Vec<u8>),
    /// Process stdout.
    Stdout(Vec<u8>),
    /// Process stderr.
    Stderr(Vec<u8>),
    /// Process stdin; empty for end of input.
    Stdin(Vec<u8>),
}

impl Frame {
    /// A message frame holding `msg` as JSON.
    ///
    /// # Errors
    /// [`ProtoError::TooLarge`] when the JSON does not fit.
    pub fn message<T: Serialize>(msg: &T) -> Result<Self, ProtoError> {
        let json = serde_json::to_vec(msg).map_err(ProtoError::Malformed)?;
        if json.len() > MAX_PAYLOAD {
            return Err(ProtoError::TooLarge { len: json.len() });
        }
        Ok(Frame::Message(json))
    }

    /// Decodes a message frame as `T`.
    ///
    /// # Errors
    /// [`ProtoError::Unexpected`] for a data frame;
    /// [`ProtoError::Malformed`] when the JSON is not a `T`.
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtoError> {
        match self {
            Frame::Message(json) => serde_json::from_slice(json).map_err(ProtoError::Malformed),
            other => Err(ProtoError::Unexpected(other.kind_name())),
        }
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Frame::Message(_) => "message",
            Frame::Stdout(_) => "stdout",
            Frame::Stderr(_) => "stderr",
            Frame::Stdin(_) => "stdin",
        }
    }

    fn parts(&self) -> (u8, &[u8]) {
        match self {
            Frame::Message(p) => (1, p),
            Frame::Stdout(p) => (2, p),
            Frame::Stderr(p) => (3, p),
            Frame::Stdin(p) => (4, p),
        }
    }
}

/// Writes one frame.
///
/// # Errors
/// [`ProtoError::TooLarge`] or [`ProtoError::Io`].
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), ProtoError> {
    let (kind, payload) = frame.parts();
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_PAYLOAD)
        .ok_or(ProtoError::TooLarge { len: payload.len() })?;
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `None` when the peer closed the connection between
/// frames.
///
/// # Errors
/// [`ProtoError::Closed`] mid-frame; [`ProtoError::UnknownKind`],
/// [`ProtoError::TooLarge`] (checked before reading the payload) or
/// [`ProtoError::Io`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ProtoError> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut header[1..])
        .await
        .map_err(eof_is_closed)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge { len });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(eof_is_closed)?;
    Ok(Some(match header[0] {
        1 => Frame::Message(payload),
        2 => Frame::Stdout(payload),
        3 => Frame::Stderr(payload),
        4 => Frame::Stdin(payload),
        k => return Err(ProtoError::UnknownKind(k)),
    }))
}

fn eof_is_closed(e: io::Error) -> ProtoError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProtoError::Closed
    } else {
        ProtoError::Io(e)
    }
}

/// The first frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What it asks.
    pub request: Request,
}

/// A device to hot-plug or unplug, as the CLI names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HotplugTarget {
    /// A host file or block device.
    Block {
        /// Its path.
        path: PathBuf,
        /// Attach read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// vCPUs.
    Cpu {
        /// How many.
        count: u32,
    },
    /// Memory.
    Memory {
        /// How much, in MiB.
        size_mib: u32,
    },
    /// A network interface on a host tap device.
    Net {
        /// The tap's name.
        tap: String,
    },
}

impl fmt::Display for HotplugTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HotplugTarget::Block { path, .. } => write!(f, "block device {}", path.display()),
            HotplugTarget::Cpu { count } => write!(f, "{count} vCPU(s)"),
            HotplugTarget::Memory { size_mib } => write!(f, "{size_mib} MiB of memory"),
            HotplugTarget::Net { tap } => write!(f, "network device on tap {tap}"),
        }
    }
}

/// A process to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, as `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `/` when unset.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the process after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the client sends stdin frames; without them stdin is
    /// `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run as this user id; root when unset.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Run with this group id; the user id's number when unset.
    #[serde(default)]
    pub gid: Option<u32>,
    /// A terminal of this size for the process.
    #[serde(default)]
    pub tty: Option<sandvisor_proto::WindowSize>,
}

/// What a client sends while its `exec` runs, besides stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub enum ExecControl {
    /// Send this signal to the process's group.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// The process's terminal has a new size.
    Resize {
        /// The size.
        size: sandvisor_proto::WindowSize,
    },
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExecExit {
    /// The shell's view: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExecExit::Code(c) => c,
            ExecExit::Signal(s) => 128 + s,
        }
    }
}

/// What a client asks a supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The record, as the supervisor holds it now. Answered at once, even
    /// while another operation runs.
    Status,
    /// Starts the VM and waits, up to `timeout_ms`, for the VMM and the
    /// guest agent.
    Start {
        /// The deadline, in milliseconds.
        timeout_ms: u64,
    },
    /// Pauses the guest.
    Pause,
    /// Resumes the guest.
    Resume,
    /// Saves the VM's device state (the backend's `save_sandbox`) and the
    /// record.
    Save,
    /// Stops the VM: the guest agent powers the guest off, then the backend
    /// stops the VMM.
    Stop,
    /// Hot-plugs or unplugs a device.
    Hotplug {
        /// The device.
        target: HotplugTarget,
        /// Unplug instead.
        remove: bool,
    },
    /// Sets the vCPU count and/or the memory size.
    Resize {
        /// The new vCPU count.
        vcpus: Option<u32>,
        /// The new memory size, in MiB.
        memory_mib: Option<u32>,
    },
    /// Runs a process in the guest, streaming its output.
    Exec(ExecSpec),
    /// The console socket to attach to.
    Console,
    /// Stops the VM when `force` (else it must not run), cleans up what the
    /// backend left, and ends the supervisor.
    Delete {
        /// Stop a running VM first.
        force: bool,
    },
}

/// An operation, for errors and the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `create`.
    Create,
    /// `start`.
    Start,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `save`.
    Save,
    /// `stop`.
    Stop,
    /// `hotplug`.
    Hotplug,
    /// `resize`.
    Resize,
    /// `exec`.
    Exec,
    /// `console`.
    Console,
    /// `delete`.
    Delete,
    /// Re-attaching a new supervisor to a running VM.
    Reattach,
}

impl Op {
    /// The statuses this operation accepts.
    pub fn allowed_in(self) -> &'static [SandboxStatus] {
        use SandboxStatus::*;
        match self {
            Op::Create => &[Creating],
            Op::Start => &[Created],
            Op::Pause => &[Running],
            Op::Resume => &[Paused],
            Op::Save => &[Running, Paused],
            Op::Stop => &[Created, Running, Paused],
            Op::Hotplug | Op::Resize | Op::Exec => &[Running],
            Op::Console => &[Running, Paused],
            Op::Delete => &[Creating, Created, Running, Paused, Stopped, Dead],
            Op::Reattach => &[Created, Running, Paused],
        }
    }

    /// Checks that `status` accepts this operation.
    ///
    /// # Errors
    /// [`RemoteError::WrongState`].
    pub fn check(self, id: &SandboxId, status: SandboxStatus) -> Result<(), RemoteError> {
        if self.allowed_in().contains(&status) {
            Ok(())
        } else {
            Err(RemoteError::WrongState {
                id: id.clone(),
                op: self,
                status,
            })
        }
    }
}

/// What to do about an operation refused in `status`.
fn state_hint(op: Op, status: SandboxStatus) -> String {
    use SandboxStatus::*;
    match (op, status) {
        (Op::Exec | Op::Hotplug | Op::Resize | Op::Save | Op::Console, Paused) => {
            "; `sandvisor resume` it first".to_string()
        }
        (Op::Pause, Paused) => "; it is paused already".to_string(),
        (Op::Resume, Running) => "; it runs already".to_string(),
        (Op::Start, Running | Paused) => "; it was started already".to_string(),
        (Op::Delete, _) => "; `sandvisor stop` it first, or use `delete --force`".to_string(),
        (_, Stopped | Dead) => "; `sandvisor delete` it and create another".to_string(),
        (_, Created) => "; `sandvisor start` it first".to_string(),
        _ => {
            let allowed: Vec<String> = op.allowed_in().iter().map(ToString::to_string).collect();
            format!("; it must be {}", allowed.join(" or "))
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Create => "create",
            Op::Start => "start",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Save => "save",
            Op::Stop => "stop",
            Op::Hotplug => "hotplug into",
            Op::Resize => "resize",
            Op::Exec => "exec in",
            Op::Console => "attach to the console of",
            Op::Delete => "delete",
            Op::Reattach => "re-attach to",
        })
    }
}

/// A failure the supervisor reports to the client, typed so the client can
/// tell a wrong state from an unsupported operation from a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum RemoteError {
    /// The operation does not apply in the sandbox's state.
    #[error("cannot {op} sandbox {id}: it is {status}{}", state_hint(*.op, *.status))]
    WrongState {
        /// The sandbox.
        id: SandboxId,
        /// The operation.
        op: Op,
        /// Its state.
        status: SandboxStatus,
    },
    /// The backend cannot do it (its capabilities say so).
    #[error("cannot {op} sandbox {id}: {hypervisor} does not support {what}: {reason}")]
    Unsupported {
        /// The sandbox.
        id: SandboxId,
        /// The operation.
        op: Op,
        /// What the backend was asked.
        what: String,
        /// The backend.
        hypervisor: HypervisorType,
        /// Why.
        reason: String,
    },
    /// The operation failed; `causes` is the error chain, outermost first.
    #[error("cannot {op} sandbox {id}: {}", causes.join(": "))]
    Failed {
        /// The sandbox.
        id: SandboxId,
        /// The operation.
        op: Op,
        /// The error chain.
        causes: Vec<String>,
    },
    /// The request makes no sense for this sandbox (an unplug of a device
    /// that was never plugged, a resize with nothing to change).
    #[error("cannot {op} sandbox {id}: {reason}")]
    BadRequest {
        /// The sandbox.
        id: SandboxId,
        /// The operation.
        op: Op,
        /// Why.
        reason: String,
    },
    /// The command could not be started: it does not exist or is not
    /// executable. `code` is the shell's exit code for that (127, 126).
    #[error("cannot run the command in sandbox {id}: {message}")]
    NotRunnable {
        /// The sandbox.
        id: SandboxId,
        /// The guest's reason.
        message: String,
        /// 127 when the program is missing, 126 when it cannot be run.
        code: i32,
    },
    /// The client speaks another protocol version.
    #[error("the supervisor of sandbox {id} speaks control protocol {supervisor}, this sandvisor {client}; restart it with `sandvisor stop` and `start`, or use the matching binary")]
    Version {
        /// The sandbox.
        id: SandboxId,
        /// The supervisor's version.
        supervisor: u32,
        /// The client's version.
        client: u32,
    },
}

impl RemoteError {
    /// A [`RemoteError::Failed`] from an error and its sources.
    pub fn failed(id: &SandboxId, op: Op, err: &dyn std::error::Error) -> Self {
        let mut causes = vec![err.to_string()];
        let mut source = err.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        RemoteError::Failed {
            id: id.clone(),
            op,
            causes,
        }
    }

    /// From a backend error: [`RemoteError::Unsupported`] when the backend
    /// said so, else [`RemoteError::Failed`].
    pub fn from_hypervisor(id: &SandboxId, op: Op, err: &crate::Error) -> Self {
        match err {
            crate::Error::Unsupported {
                op: what,
                hypervisor,
                reason,
            } => RemoteError::Unsupported {
                id: id.clone(),
                op,
                what: (*what).to_string(),
                hypervisor: *hypervisor,
                reason: reason.clone(),
            },
            other => RemoteError::failed(id, op, other),
        }
    }
}

/// What a hot-plug did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugOutcome {
    /// A sentence for people: what was added or removed, and where the
    /// guest sees it.
    pub summary: String,
    /// The guest device node of a block device, when known.
    pub guest_path: Option<String>,
}

/// A supervisor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done; the record afterwards.
    Done {
        /// The record.
        record: Box<SandboxRecord>,
    },
    /// A hot-plug was done.
    Hotplugged {
        /// What it did.
        outcome: HotplugOutcome,
        /// The record afterwards.
        record: Box<SandboxRecord>,
    },
    /// The console socket.
    Console {
        /// Its path.
        path: PathBuf,
    },
    /// The guest process started; output frames follow.
    ExecStarted {
        /// Its guest pid.
        pid: u32,
    },
    /// The guest process ended.
    ExecExited {
        /// How.
        exit: ExecExit,
    },
    /// The request failed.
    Error(RemoteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::message(&ClientMessage {
                version: PROTOCOL_VERSION,
                request: Request::Hotplug {
                    target: HotplugTarget::Cpu { count: 2 },
                    remove: false,
                },
            })
            .expect("fits"),
            Frame::Stdout(b"out\n".to_vec()),
            Frame::Stderr(vec![0, 255]),
            Frame::Stdin(Vec::new()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.expect("written");
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(read_frame(&mut r).await.expect("read").as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).await.expect("clean end"), None);
    }

    #[tokio::test]
    async fn bad_frames_are_refused() {
        let mut huge: &[u8] = &[1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(ProtoError::TooLarge { .. })
        ));
        let mut unknown: &[u8] = &[9, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut unknown).await,
            Err(ProtoError::UnknownKind(9))
        ));
        let mut cut: &[u8] = &[1, 0, 0, 0, 5, b'{'];
        assert!(matches!(
            read_frame(&mut cut).await,
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn wrong_state_reads_well() {
        let id: SandboxId = "x".parse().expect("valid id");
        let err = Op::Resume
            .check(&id, SandboxStatus::Running)
            .expect_err("resume needs paused");
        assert_eq!(
            err.to_string(),
            "cannot resume sandbox x: it is running; it runs already"
        );
        assert!(Op::Resume.check(&id, SandboxStatus::Paused).is_ok());
    }

    #[test]
    fn state_machine() {
        use SandboxStatus::*;
        let id: SandboxId = "x".parse().expect("valid id");
        let all = [Creating, Created, Running, Paused, Stopped, Dead];
        let table: &[(Op, &[SandboxStatus])] = &[
            (Op::Start, &[Created]),
            (Op::Pause, &[Running]),
            (Op::Resume, &[Paused]),
            (Op::Exec, &[Running]),
            (Op::Hotplug, &[Running]),
            (Op::Stop, &[Created, Running, Paused]),
            (Op::Delete, &all),
        ];
        for (op, ok) in table {
            for status in all {
                assert_eq!(
                    op.check(&id, status).is_ok(),
                    ok.contains(&status),
                    "{op:?} in {status:?}"
                );
            }
        }
    }

    #[test]
    fn messages_are_tagged_json() {
        let json = serde_json::to_value(Request::Resize {
            vcpus: Some(2),
            memory_mib: None,
        })
        .expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"op": "resize", "vcpus": 2, "memory_mib": null})
        );
    }
}
