//! The sandvisor agent protocol: how the host talks to the guest agent.
//!
//! # Transport
//!
//! One byte stream per session: a virtio-serial port (`agent.channel.0`,
//! a unix socket on the host) or a vsock connection (port
//! [`VSOCK_PORT`], or a hybrid vsock's unix socket on the host). When the
//! stream closes, the session ends; the next connection starts a new one.
//!
//! # Frames
//!
//! Every message is one frame: a 4-byte big-endian payload length, then the
//! payload. A payload is at most [`MAX_FRAME_SIZE`] bytes; a larger length is
//! refused from the header alone, before anything is allocated, and the
//! reader skips the payload so that the stream stays in step
//! ([`frame`]).
//!
//! The payload is JSON (serde). JSON costs some bytes, but the channel is
//! not a hot path, every frame can be read with `socat` and `jq` while
//! debugging a guest, and unknown fields are ignored, so a newer peer can add
//! optional fields without a version bump. Byte strings (exec stdin and
//! output) travel as base64 strings, not as arrays of numbers.
//!
//! # Messages
//!
//! The host sends [`HostMessage`]s: a request id and a [`Request`]. The
//! agent sends [`AgentMessage`]s:
//!
//! * [`AgentMessage::Reply`] answers one request, by id, with a
//!   [`Response`] or an [`AgentError`];
//! * [`AgentMessage::ExecOutput`] and then one [`AgentMessage::ExecExit`]
//!   follow a successful [`Request::Exec`] reply, carrying the request's id:
//!   output chunks as they come, then how the process ended.
//!
//! While a process runs, the host may stream its stdin
//! ([`Request::ExecStdin`], each chunk answered once written, so the host
//! bounds what is in flight), signal it ([`Request::ExecSignal`]) and
//! resize its terminal ([`Request::ExecResize`]), naming it by the exec
//! request's id.
//!
//! A frame the agent cannot decode gets a reply with
//! [`AgentError::Malformed`], with the request id when the payload still
//! showed one; the agent then serves the next frame.
//!
//! # Versions
//!
//! A session starts with [`Request::Hello`] carrying the host's
//! [`PROTOCOL_VERSION`]. The agent answers [`Response::Hello`] with its own
//! version, or [`AgentError::VersionMismatch`] naming both. Any other request
//! before a successful hello gets [`AgentError::NoHandshake`]. The host may
//! repeat hello until it is answered: data sent before the agent opened the
//! port is lost on virtio-serial.
//!
//! ```
//! use sandvisor_proto::{frame, HostMessage, Request, PROTOCOL_VERSION};
//!
//! let hello = HostMessage {
//!     id: 1,
//!     request: Request::Hello { protocol_version: PROTOCOL_VERSION },
//! };
//! let bytes = frame::encode(&hello).expect("a hello fits in a frame");
//! let len = frame::decode_header(bytes[..4].try_into().expect("4 bytes"))
//!     .expect("under the limit");
//! let back: HostMessage = frame::decode(&bytes[4..4 + len]).expect("valid JSON");
//! assert_eq!(back, hello);
//! ```

pub mod bytes;
pub mod frame;
mod message;

pub use frame::{FrameError, MAX_FRAME_SIZE};
pub use message::*;

/// The protocol version this crate speaks. Bump it on any change that an
/// older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// The feature an agent names in its hello when it takes
/// [`ExecRequest`]'s `uid`, `gid`, `tty` and `stream_stdin`, and
/// [`Request::ExecStdin`], [`Request::ExecSignal`] and
/// [`Request::ExecResize`]. An older agent would ignore those fields (and
/// run as root, without a terminal), so a host checks for it first instead
/// of the protocol version changing.
pub const FEATURE_EXEC_IO: &str = "exec_io";

/// The vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;

/// The virtio-serial port name the agent serves.
pub const SERIAL_PORT_NAME: &str = "agent.channel.0";

/// The kernel command-line key that tells the agent its channel:
/// `agent.use_vsock=true` means vsock only, so the agent does not look for
/// the virtio-serial port. Kata's name for it.
pub const USE_VSOCK_PARAM: &str = "agent.use_vsock";

/// The kernel command-line word that turns on the debug shell on the
/// console.
pub const DEBUG_CONSOLE_PARAM: &str = "sandvisor.debug_console";

/// The line the agent prints on the console before it starts the debug
/// shell.
pub const DEBUG_CONSOLE_READY: &str = "sandvisor: debug console ready";
