//! The messages: requests from the host, replies and exec events from the
//! agent.

use serde::{Deserialize, Serialize};

/// A request from the host, with the id its reply will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMessage {
    /// Chosen by the host; unique among its requests in flight.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub request: Request,
}

/// What the host can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Opens the session: the host's protocol version.
    Hello {
        /// The host's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// Is the agent alive?
    Check,
    /// Kernel release, CPUs and memory of the guest.
    GuestDetails,
    /// Runs a process.
    Exec(ExecRequest),
    /// Onlines hot-plugged CPUs and memory (Kata's `OnlineCPUMem`).
    OnlineCpuMem(OnlineCpuMemRequest),
    /// Lists the guest's block devices.
    ListBlockDevices,
    /// Mounts a file system.
    Mount(MountRequest),
    /// Sets the guest clock.
    SetTime(SetTimeRequest),
    /// Syncs and powers the guest off. The reply comes before the power-off.
    Shutdown,
    /// Adds host entropy to the guest's random pool and reseeds its CRNG
    /// (Kata's `ReseedRandomDev`): a VM restored from a template would
    /// otherwise share its random state with every other clone.
    ReseedRng(ReseedRngRequest),
    /// Ends this session once the reply is written, so that the VM can be
    /// paused and saved as a template with no session open: a clone's host
    /// then connects afresh and opens its own. The agent first finishes
    /// what it does lazily (loading the boot-time drivers, scanning for
    /// disks), so that clones need not. Other sessions go on; the agent
    /// keeps serving new connections as before.
    Quiesce,
}

/// Host entropy for [`Request::ReseedRng`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReseedRngRequest {
    /// Random bytes from the host; at most [`MAX_RESEED_BYTES`].
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

/// The most entropy one [`Request::ReseedRng`] carries.
pub const MAX_RESEED_BYTES: usize = 4096;

/// A process to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH` when it has
    /// no slash.
    pub argv: Vec<String>,
    /// Environment, as `KEY=VALUE`; replaces the agent's own.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `/` when unset.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes written to the process's stdin, which is then closed; without
    /// them stdin is `/dev/null`.
    #[serde(default, with = "crate::bytes::option")]
    pub stdin: Option<Vec<u8>>,
    /// Kill the process (its whole process group) after this many
    /// milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Which output stream a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's view: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Onlining hot-plugged CPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OnlineCpuMemRequest {
    /// CPUs to bring online; 0 means every offline CPU. The agent waits up
    /// to `wait_ms` for that many to appear.
    #[serde(default)]
    pub nb_cpus: u32,
    /// Only CPUs: leave memory alone.
    #[serde(default)]
    pub cpu_only: bool,
    /// Guest physical addresses to write to
    /// `/sys/devices/system/memory/probe` first, for memory the guest does
    /// not discover by itself.
    #[serde(default)]
    pub probe_addresses: Vec<u64>,
    /// MiB of hot-plugged memory to bring online; 0 means whatever is
    /// offline now. The agent waits up to `wait_ms` for that much to appear:
    /// the guest learns of a DIMM a moment after the VMM added it.
    #[serde(default)]
    pub memory_mib: u32,
    /// How long to wait for `nb_cpus` CPUs and `memory_mib` MiB to appear.
    #[serde(default)]
    pub wait_ms: u64,
}

/// What [`Request::OnlineCpuMem`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OnlineCpuMemResult {
    /// CPUs brought online.
    pub cpus_onlined: u32,
    /// Memory blocks brought online.
    pub memory_blocks_onlined: u32,
    /// CPUs online afterwards.
    pub cpus_online: u32,
}

/// A block device the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, such as `vdb`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Whether it is read-only.
    pub read_only: bool,
}

/// A file system to mount.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountRequest {
    /// Device or source, such as `/dev/vdb` or a 9p tag.
    pub source: String,
    /// Mount point; created when missing.
    pub target: String,
    /// File system type, such as `ext4`.
    pub fstype: String,
    /// Options: flags (`ro`, `nosuid`, `nodev`, `noexec`, `noatime`, ...)
    /// and file-system data (`trans=virtio`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

/// A time to set the guest clock to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetTimeRequest {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

/// The guest, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestDetails {
    /// `uname -r`.
    pub kernel_release: String,
    /// CPUs online.
    pub cpus_online: u32,
    /// `MemTotal` of `/proc/meminfo`, in KiB.
    pub mem_total_kib: u64,
    /// The agent's version.
    pub agent_version: String,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The session is open.
    Hello {
        /// The agent's protocol version.
        protocol_version: u32,
        /// The agent's version.
        agent_version: String,
    },
    /// The agent is alive.
    Check,
    /// See [`GuestDetails`].
    GuestDetails(GuestDetails),
    /// The process started; output and exit follow under the same id.
    ExecStarted {
        /// Its guest pid.
        pid: u32,
    },
    /// See [`OnlineCpuMemResult`].
    OnlineCpuMem(OnlineCpuMemResult),
    /// The block devices.
    BlockDevices {
        /// One per device.
        devices: Vec<BlockDevice>,
    },
    /// Mounted.
    Mounted,
    /// The clock was set.
    TimeSet,
    /// The guest powers off next.
    ShuttingDown,
    /// The entropy was added and the CRNG reseeded.
    RngReseeded,
    /// The session ends after this reply.
    Quiesced,
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The answer to request `id` (`None` when the frame showed none).
    Reply {
        /// The request's id.
        id: Option<u64>,
        /// The answer.
        result: Result<Response, AgentError>,
    },
    /// A chunk of a process's output.
    ExecOutput {
        /// The exec request's id.
        id: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The process ended; nothing more comes for `id`.
    ExecExit {
        /// The exec request's id.
        id: u64,
        /// How it ended.
        status: ExitStatus,
        /// Whether the agent killed it at its timeout.
        timed_out: bool,
    },
}

/// Why the agent refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentError {
    /// The frame could not be decoded.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The decoder's message.
        reason: String,
    },
    /// The frame was over the size limit.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The host speaks another protocol version.
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch {
        /// The host's version.
        host: u32,
        /// The agent's version.
        agent: u32,
    },
    /// A request came before a successful hello.
    #[error("no handshake yet: send hello first")]
    NoHandshake,
    /// The request's arguments are wrong.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The operation failed in the guest.
    #[error("{op} failed: {message}")]
    Failed {
        /// What was being done, such as `mount /dev/vdb on /mnt`.
        op: String,
        /// The guest's error message.
        message: String,
        /// The errno, when there was one.
        errno: Option<i32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_wire_shape() {
        let msg = HostMessage {
            id: 5,
            request: Request::Exec(ExecRequest {
                argv: vec!["cat".into()],
                stdin: Some(b"hi\n".to_vec()),
                ..ExecRequest::default()
            }),
        };
        let json = serde_json::to_value(&msg).expect("serialises");
        assert_eq!(json["id"], 5);
        assert_eq!(json["type"], "exec");
        assert_eq!(json["argv"][0], "cat");
        assert_eq!(json["stdin"], "aGkK");
        let back: HostMessage = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, msg);
    }

    #[test]
    fn minimal_exec_request_takes_defaults() {
        let msg: HostMessage =
            serde_json::from_str(r#"{"id":1,"type":"exec","argv":["true"]}"#).expect("valid");
        assert_eq!(
            msg.request,
            Request::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            })
        );
    }

    #[test]
    fn exec_events_round_trip() {
        for msg in [
            AgentMessage::ExecOutput {
                id: 3,
                stream: Stream::Stderr,
                data: vec![0, 255, 10],
            },
            AgentMessage::ExecExit {
                id: 3,
                status: ExitStatus::Signal(9),
                timed_out: true,
            },
        ] {
            let json = serde_json::to_string(&msg).expect("serialises");
            assert_eq!(
                serde_json::from_str::<AgentMessage>(&json).expect("valid"),
                msg
            );
        }
    }

    #[test]
    fn reseed_and_quiesce_wire_shape() {
        let msg = HostMessage {
            id: 9,
            request: Request::ReseedRng(ReseedRngRequest {
                data: vec![1, 2, 3],
            }),
        };
        let json = serde_json::to_value(&msg).expect("serialises");
        assert_eq!(json["type"], "reseed_rng");
        assert_eq!(json["data"], "AQID");
        let back: HostMessage = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, msg);
        let q: HostMessage = serde_json::from_str(r#"{"id":2,"type":"quiesce"}"#).expect("valid");
        assert_eq!(q.request, Request::Quiesce);
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn bad_base64_is_rejected() {
        let r = serde_json::from_str::<AgentMessage>(
            r#"{"type":"exec_output","id":1,"stream":"stdout","data":"!!"}"#,
        );
        assert!(r.is_err());
    }
}
