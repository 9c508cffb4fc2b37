//! The connection: the greeting, a reader task that routes replies to
//! their callers and events to subscribers, and a deadline on every call.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::backends::vmm::rest::send_with_fds;

use super::{
    Command, ErrorClass, Event, QmpCapabilities, QmpError, VersionInfo, VersionTriple,
    DEFAULT_TIMEOUT,
};

#[derive(Serialize)]
struct Request<'a, C> {
    execute: &'static str,
    #[serde(skip_serializing_if = "is_empty_object")]
    arguments: &'a C,
    id: u64,
}

fn is_empty_object<C: Serialize>(c: &&C) -> bool {
    matches!(serde_json::to_value(c), Ok(Value::Object(m)) if m.is_empty())
}

#[derive(Debug, Deserialize)]
struct ErrorReply {
    class: ErrorClass,
    desc: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Incoming {
    Return {
        #[serde(rename = "return")]
        ret: Value,
        id: Option<u64>,
    },
    Error {
        error: ErrorReply,
        id: Option<u64>,
    },
    Event {
        event: String,
        #[serde(default)]
        data: Value,
    },
}

/// One line from QEMU, decoded: a reply to call `id`, or an event.
#[derive(Debug)]
enum Decoded {
    Reply(Option<u64>, Result<Value, ErrorReply>),
    Event(Event),
}

/// Decodes one line of QMP (a reply or an event).
fn decode_line(line: &str) -> Result<Decoded, serde_json::Error> {
    Ok(match serde_json::from_str(line)? {
        Incoming::Return { ret, id } => Decoded::Reply(id, Ok(ret)),
        Incoming::Error { error, id } => Decoded::Reply(id, Err(error)),
        Incoming::Event { event, data } => Decoded::Event(Event::decode(event, data)),
    })
}

/// Decodes `line` as the reader task does and the greeting as `connect`
/// does, for the fuzz targets: `Ok` with a description, or the error.
#[cfg(feature = "fuzzing")]
pub fn fuzz_line(line: &str) -> Result<String, String> {
    let _ = serde_json::from_str::<Greeting>(line).map(|g| g.qmp.version);
    decode_line(line)
        .map(|d| format!("{d:?}"))
        .map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct Greeting {
    #[serde(rename = "QMP")]
    qmp: GreetingBody,
}

#[derive(Deserialize)]
struct GreetingBody {
    version: VersionInfo,
}

type Reply = Result<Value, ErrorReply>;
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    version: VersionTriple,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and leaves
    /// negotiation mode, all within `timeout`.
    ///
    /// # Errors
    /// [`QmpError::Connect`] (see [`QmpError::is_transient_connect`]),
    /// [`QmpError::Greeting`], or the error of `qmp_capabilities`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let connect_err = |source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting_err = |source| QmpError::Greeting {
            path: path.to_path_buf(),
            source,
        };
        let line = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| greeting_err(None))?
            .map_err(|e| QmpError::Connect {
                path: path.to_path_buf(),
                source: e,
            })?
            .ok_or_else(|| greeting_err(None))?;
        let greeting: Greeting = serde_json::from_str(&line).map_err(|e| greeting_err(Some(e)))?;

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(256);
        let reader = tokio::spawn(read_loop(lines, Arc::clone(&pending), events.clone()));
        let qmp = Qmp {
            path: path.to_path_buf(),
            writer: tokio::sync::Mutex::new(writer),
            pending,
            events,
            next_id: AtomicU64::new(1),
            reader,
            version: greeting.qmp.version.qemu,
        };
        qmp.execute_with(&QmpCapabilities {}, timeout).await?;
        tracing::debug!(path = %path.display(), version = %qmp.version, "QMP connected");
        Ok(qmp)
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> VersionTriple {
        self.version
    }

    /// The socket this connection uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the connection is closed (QEMU went away).
    pub fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }

    /// Receives every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `cmd` with the default timeout.
    ///
    /// # Errors
    /// See [`Qmp::execute_with`].
    pub async fn execute<C: Command>(&self, cmd: &C) -> Result<C::Returns, QmpError> {
        self.execute_with(cmd, DEFAULT_TIMEOUT).await
    }

    /// Runs `cmd`, waiting at most `timeout` for its reply.
    ///
    /// # Errors
    /// [`QmpError::Command`] for an error reply; [`QmpError::Timeout`],
    /// [`QmpError::Disconnected`], [`QmpError::Send`] or
    /// [`QmpError::Decode`] otherwise.
    pub async fn execute_with<C: Command>(
        &self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Returns, QmpError> {
        self.execute_inner(cmd, timeout, None).await
    }

    /// Runs `cmd` with a copy of `fd` passed alongside it as
    /// `SCM_RIGHTS`, as `getfd` and `add-fd` expect; waits at most
    /// `timeout`.
    ///
    /// # Errors
    /// As [`Qmp::execute_with`]; a descriptor that cannot be duplicated
    /// is [`QmpError::Send`].
    pub async fn execute_with_fd<C: Command>(
        &self,
        cmd: &C,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<C::Returns, QmpError> {
        let fd = fd.try_clone_to_owned().map_err(|source| QmpError::Send {
            command: C::NAME,
            source,
        })?;
        self.execute_inner(cmd, timeout, Some(fd)).await
    }

    async fn execute_inner<C: Command>(
        &self,
        cmd: &C,
        timeout: Duration,
        fd: Option<OwnedFd>,
    ) -> Result<C::Returns, QmpError> {
        let command = C::NAME;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(&Request {
            execute: command,
            arguments: cmd,
            id,
        })
        .map_err(|source| QmpError::Encode { command, source })?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| QmpError::Disconnected { command })?;
            match pending.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(QmpError::Disconnected { command }),
            };
        }
        let forget = || {
            if let Ok(mut p) = self.pending.lock() {
                if let Some(map) = p.as_mut() {
                    map.remove(&id);
                }
            }
        };
        tracing::trace!(command, id, "qmp send");
        let sent = tokio::time::timeout(timeout, async {
            let mut w = self.writer.lock().await;
            let mut start = 0;
            if let Some(fd) = fd {
                // The descriptor travels with the first bytes of the
                // command; QEMU's monitor keeps it for that command.
                let stream: &UnixStream = w.as_ref();
                let fds = [fd];
                start = loop {
                    stream.writable().await?;
                    match stream.try_io(tokio::io::Interest::WRITABLE, || {
                        send_with_fds(stream.as_fd(), &[std::io::IoSlice::new(&line)], &fds)
                    }) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                };
            }
            w.write_all(&line[start..]).await?;
            w.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                forget();
                return Err(QmpError::Send { command, source });
            }
            Err(_) => {
                forget();
                return Err(QmpError::Timeout { command, timeout });
            }
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(QmpError::Disconnected { command }),
            Err(_) => {
                forget();
                return Err(QmpError::Timeout { command, timeout });
            }
        };
        match reply {
            Ok(value) => {
                serde_json::from_value(value).map_err(|source| QmpError::Decode { command, source })
            }
            Err(e) => Err(QmpError::Command {
                command,
                class: e.class,
                desc: e.desc,
            }),
        }
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (id, reply) = match decode_line(&line) {
            Ok(Decoded::Reply(id, reply)) => (id, reply),
            Ok(Decoded::Event(event)) => {
                tracing::debug!(?event, "qmp event");
                // Nobody listening is fine.
                let _ = events.send(event);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, line, "undecodable QMP message");
                continue;
            }
        };
        let Some(id) = id else {
            tracing::warn!("QMP reply without id");
            continue;
        };
        let waiter = pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        if let Some(tx) = waiter {
            // The caller may have timed out and gone.
            let _ = tx.send(reply);
        }
    }
    // Closing: fail every waiting call, refuse new ones.
    if let Ok(mut p) = pending.lock() {
        p.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::qemu::qmp::{CpuInstanceProperties, DeviceAdd, DeviceProps, Stop};

    #[test]
    fn requests_encode_as_qmp_expects() {
        let line = serde_json::to_value(Request {
            execute: DeviceAdd::NAME,
            arguments: &DeviceAdd {
                driver: "max-x86_64-cpu".into(),
                id: "cpu-0".into(),
                bus: None,
                addr: None,
                props: DeviceProps::Cpu(CpuInstanceProperties {
                    node_id: None,
                    socket_id: Some(1),
                    die_id: Some(0),
                    core_id: Some(0),
                    thread_id: Some(0),
                }),
            },
            id: 7,
        })
        .expect("encodes");
        assert_eq!(
            line,
            serde_json::json!({"execute": "device_add", "id": 7, "arguments": {
                "driver": "max-x86_64-cpu", "id": "cpu-0",
                "socket-id": 1, "die-id": 0, "core-id": 0, "thread-id": 0}})
        );
        let line = serde_json::to_value(Request {
            execute: Stop::NAME,
            arguments: &Stop {},
            id: 1,
        })
        .expect("encodes");
        assert_eq!(line, serde_json::json!({"execute": "stop", "id": 1}));
    }

    #[test]
    fn replies_and_events_decode() {
        let m: Incoming = serde_json::from_str(
            r#"{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": 3}"#,
        )
        .expect("decodes");
        assert!(
            matches!(m, Incoming::Error { error, id: Some(3) } if error.class == ErrorClass::DeviceNotFound)
        );
        let m: Incoming =
            serde_json::from_str(r#"{"error": {"class": "SomethingNew", "desc": "d"}, "id": 4}"#)
                .expect("decodes");
        assert!(matches!(m, Incoming::Error { error, .. } if error.class == ErrorClass::Other));
        let m: Incoming = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "virtio-d", "path": "/machine/peripheral/virtio-d"}}"#,
        )
        .expect("decodes");
        let Incoming::Event { event, data } = m else {
            panic!("not an event")
        };
        assert_eq!(
            Event::decode(event, data),
            Event::DeviceDeleted {
                device: Some("virtio-d".into()),
                path: "/machine/peripheral/virtio-d".into()
            }
        );
    }
}
