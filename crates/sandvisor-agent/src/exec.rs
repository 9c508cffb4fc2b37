//! Running a process for the host: stdin in (whole, or streamed chunk by
//! chunk), stdout and stderr streamed out in chunks, then how it ended.
//! With a terminal the process gets a pseudo-terminal as stdin, stdout and
//! stderr, in a session of its own; the host may resize it and signal the
//! process while it runs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
use sandvisor_proto::{
    AgentError, AgentMessage, ExecRequest, ExecStdinRequest, ExitStatus, Response, Stream,
    WindowSize,
};

use crate::init::DEFAULT_PATH;
use crate::log;
use crate::ops::failed;
use crate::reaper::Reaper;
use crate::server::Outbound;
use crate::sys;

/// Output is read and sent in chunks of at most this size.
const CHUNK: usize = 32 * 1024;

/// How long to wait for the output pipes to close once the process has
/// ended: a daemonised grandchild may hold them open for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A chunk for a streamed stdin, with the id of the request to answer.
struct StdinChunk {
    reply_id: u64,
    data: Vec<u8>,
    eof: bool,
}

/// A running process the host may still talk to.
struct Running {
    /// Its pid, which is also its process group.
    pid: Pid,
    /// Where streamed stdin goes; `None` once closed or when not streamed.
    stdin: Option<Sender<StdinChunk>>,
    /// The terminal's master side, for resizes.
    pty: Option<Arc<OwnedFd>>,
}

/// The processes of one session that are still running, by exec id.
#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<u64, Running>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("running", &self.lock().len())
            .finish()
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Running>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_running(exec_id: u64) -> AgentError {
        AgentError::InvalidRequest {
            reason: format!("no running process for exec {exec_id}"),
        }
    }

    /// Queues a chunk of stdin; its writer answers request `reply_id` once
    /// it is written.
    ///
    /// # Errors
    /// [`AgentError::InvalidRequest`] when the process has ended or its
    /// stdin was not streamed or is closed.
    pub fn stdin(&self, reply_id: u64, req: ExecStdinRequest) -> Result<(), AgentError> {
        let mut running = self.lock();
        let entry = running
            .get_mut(&req.exec_id)
            .ok_or_else(|| Self::not_running(req.exec_id))?;
        let tx = entry
            .stdin
            .as_ref()
            .ok_or_else(|| AgentError::InvalidRequest {
                reason: format!("exec {} has no open streamed stdin", req.exec_id),
            })?;
        let eof = req.eof;
        let sent = tx.send(StdinChunk {
            reply_id,
            data: req.data,
            eof,
        });
        if eof || sent.is_err() {
            entry.stdin = None;
        }
        sent.map_err(|_| AgentError::InvalidRequest {
            reason: format!("the stdin of exec {} is closed", req.exec_id),
        })
    }

    /// Sends `signal` to the process group of exec `exec_id`.
    ///
    /// # Errors
    /// An unknown signal or exec, or the `kill` errno.
    pub fn signal(&self, exec_id: u64, signal: i32) -> Result<(), AgentError> {
        let sig = Signal::try_from(signal).map_err(|_| AgentError::InvalidRequest {
            reason: format!("unknown signal {signal}"),
        })?;
        let pid = self
            .lock()
            .get(&exec_id)
            .map(|r| r.pid)
            .ok_or_else(|| Self::not_running(exec_id))?;
        killpg(pid, sig).map_err(|e| AgentError::Failed {
            op: format!("send {sig} to process group {pid}"),
            message: e.desc().to_string(),
            errno: Some(e as i32),
        })
    }

    /// Resizes the terminal of exec `exec_id`.
    ///
    /// # Errors
    /// An unknown exec, one without a terminal, or the ioctl's errno.
    pub fn resize(&self, exec_id: u64, size: WindowSize) -> Result<(), AgentError> {
        let pty = {
            let running = self.lock();
            let entry = running
                .get(&exec_id)
                .ok_or_else(|| Self::not_running(exec_id))?;
            entry
                .pty
                .clone()
                .ok_or_else(|| AgentError::InvalidRequest {
                    reason: format!("exec {exec_id} has no terminal"),
                })?
        };
        sys::set_window_size(pty.as_fd(), &winsize(size)).map_err(|e| AgentError::Failed {
            op: format!("resize the terminal of exec {exec_id}"),
            message: e.desc().to_string(),
            errno: Some(e as i32),
        })
    }

    fn remove(&self, exec_id: u64) {
        self.lock().remove(&exec_id);
    }
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn build_command(req: &ExecRequest) -> Result<Command, AgentError> {
    let Some((program, args)) = req.argv.split_first() else {
        return Err(AgentError::InvalidRequest {
            reason: "exec needs a program: argv is empty".into(),
        });
    };
    if req.stream_stdin && req.stdin.is_some() {
        return Err(AgentError::InvalidRequest {
            reason: "stdin is either given whole or streamed, not both".into(),
        });
    }
    let cwd = req.cwd.as_deref().unwrap_or("/");
    if !Path::new(cwd).is_dir() {
        return Err(AgentError::InvalidRequest {
            reason: format!("working directory {cwd} does not exist in the guest"),
        });
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/")
        .current_dir(cwd)
        .stdin(if req.stdin.is_some() || req.stream_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if req.tty.is_some() {
        // A session of its own, whose leader takes the terminal; a new
        // session is also a new process group.
        cmd.env("TERM", "xterm");
    } else {
        // Its own process group, so that a timeout or a forwarded signal
        // reaches what it started too.
        cmd.process_group(0);
    }
    for var in &req.env {
        let Some((k, v)) = var.split_once('=') else {
            return Err(AgentError::InvalidRequest {
                reason: format!("environment entry {var:?} has no '='"),
            });
        };
        cmd.env(k, v);
    }
    if let Some(uid) = req.uid {
        // Without supplementary groups: std drops them when root changes
        // its user.
        cmd.uid(uid).gid(req.gid.unwrap_or(uid));
    } else if let Some(gid) = req.gid {
        cmd.gid(gid);
    }
    Ok(cmd)
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        log!("cannot start thread {name}: {e}");
    }
}

/// The process's terminal: the master side stays here, the slave side
/// becomes the process's stdin, stdout and stderr.
fn attach_pty(
    cmd: &mut Command,
    req: &ExecRequest,
    size: WindowSize,
) -> Result<OwnedFd, AgentError> {
    let pty = openpty(Some(&winsize(size)), None).map_err(|e| AgentError::Failed {
        op: "open a pseudo-terminal".into(),
        message: e.desc().to_string(),
        errno: Some(e as i32),
    })?;
    if let Some(uid) = req.uid {
        let gid = req.gid.unwrap_or(uid);
        if let Err(e) = nix::unistd::fchown(
            pty.slave.as_raw_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        ) {
            log!("cannot give the terminal to uid {uid}: {e}");
        }
    }
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| failed("duplicate the terminal", &e))
    };
    cmd.stdin(Stdio::from(dup(&pty.slave)?))
        .stdout(Stdio::from(dup(&pty.slave)?))
        .stderr(Stdio::from(pty.slave));
    sys::take_terminal_on_exec(cmd);
    Ok(pty.master)
}

/// Starts the process of request `id`. On success the `ExecStarted` reply,
/// the output and the exit are sent on `out`, in that order, and the
/// process is in `registry` until it ends; on failure nothing is sent and
/// the caller replies with the error.
///
/// # Errors
/// [`AgentError::InvalidRequest`] for an empty argv, a bad environment
/// entry or a missing working directory; [`AgentError::Failed`] when the
/// process cannot be started (its errno says whether the program is
/// missing or not executable).
pub fn start(
    id: u64,
    req: ExecRequest,
    reaper: &Reaper,
    registry: &Registry,
    out: &Sender<Outbound>,
) -> Result<(), AgentError> {
    let mut cmd = build_command(&req)?;
    let master = match req.tty {
        Some(size) => Some(attach_pty(&mut cmd, &req, size)?),
        None => None,
    };
    let spawned = reaper.spawn(&mut cmd);
    // The command holds the terminal's slave side: the process must be its
    // only holder, or reading the master never ends.
    drop(cmd);
    let (mut child, exited) = spawned.map_err(|e| failed(format!("exec {:?}", req.argv[0]), &e))?;
    let pid = child.id();
    let pgid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));

    let master = master.map(Arc::new);
    let mut stdin_tx = None;
    let mut sources: Vec<(Stream, Box<dyn Read + Send>)> = Vec::new();
    match &master {
        Some(m) => {
            let reader = File::from(
                m.try_clone()
                    .map_err(|e| failed("duplicate the terminal", &e))?,
            );
            sources.push((Stream::Stdout, Box::new(reader)));
            if req.stream_stdin {
                let writer = File::from(
                    m.try_clone()
                        .map_err(|e| failed("duplicate the terminal", &e))?,
                );
                stdin_tx = Some(stream_stdin(Box::new(writer), out.clone()));
            }
        }
        None => {
            if let Some(p) = child.stdout.take() {
                sources.push((Stream::Stdout, Box::new(p)));
            }
            if let Some(p) = child.stderr.take() {
                sources.push((Stream::Stderr, Box::new(p)));
            }
            if let Some(pipe) = child.stdin.take() {
                if req.stream_stdin {
                    stdin_tx = Some(stream_stdin(Box::new(pipe), out.clone()));
                } else if let Some(data) = req.stdin {
                    let mut pipe = pipe;
                    spawn_named("exec-stdin", move || {
                        // A process that does not read its stdin closes it:
                        // EPIPE is expected then.
                        let _ = pipe.write_all(&data);
                    });
                }
            }
        }
    }
    registry.lock().insert(
        id,
        Running {
            pid: pgid,
            stdin: stdin_tx,
            pty: master.clone(),
        },
    );
    let _ = out.send(Outbound::Msg(AgentMessage::Reply {
        id: Some(id),
        result: Ok(Response::ExecStarted { pid }),
    }));

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pumps = sources.len();
    for (stream, source) in sources {
        let out = out.clone();
        let done = done_tx.clone();
        spawn_named("exec-output", move || {
            pump(id, stream, source, &out);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let out = out.clone();
    let registry = registry.clone();
    let timeout = req.timeout_ms.map(Duration::from_millis);
    spawn_named("exec-wait", move || {
        let (status, timed_out) = match timeout {
            None => (exited.recv(), false),
            Some(t) => match exited.recv_timeout(t) {
                Ok(status) => (Ok(status), false),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = killpg(pgid, Signal::SIGKILL) {
                        log!("cannot kill process group {pid} at its timeout: {e}");
                    }
                    (exited.recv(), true)
                }
                Err(RecvTimeoutError::Disconnected) => (Err(mpsc::RecvError), false),
            },
        };
        // No more signals, resizes or stdin for a process that has ended:
        // its pid may be reused.
        registry.remove(id);
        let status = status.unwrap_or_else(|_| {
            log!("lost the exit status of pid {pid}");
            ExitStatus::Code(-1)
        });
        let deadline = Instant::now() + DRAIN_GRACE;
        for _ in 0..pumps {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        drop(master);
        let _ = out.send(Outbound::Msg(AgentMessage::ExecExit {
            id,
            status,
            timed_out,
        }));
    });
    Ok(())
}

/// Starts the writer of a streamed stdin: each chunk is written, then its
/// request answered. A pipe is closed at the end of input; a terminal
/// stays open (its process reads an end of input from the keys typed).
fn stream_stdin(mut sink: Box<dyn Write + Send>, out: Sender<Outbound>) -> Sender<StdinChunk> {
    let (tx, rx) = mpsc::channel::<StdinChunk>();
    spawn_named("exec-stdin", move || {
        let mut broken = None;
        for chunk in rx {
            let result = match &broken {
                Some(e) => Err(failed("write stdin", e)),
                None => match sink.write_all(&chunk.data).and_then(|()| sink.flush()) {
                    Ok(()) => Ok(Response::StdinWritten),
                    Err(e) => {
                        let err = failed("write stdin", &e);
                        broken = Some(e);
                        Err(err)
                    }
                },
            };
            let _ = out.send(Outbound::Msg(AgentMessage::Reply {
                id: Some(chunk.reply_id),
                result,
            }));
            if chunk.eof {
                break;
            }
        }
        // On a terminal this closes one of several descriptors of the
        // master side, which hangs nothing up: the reader holds another.
        drop(sink);
    });
    tx
}

fn pump(id: u64, stream: Stream, mut pipe: Box<dyn Read + Send>, out: &Sender<Outbound>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let msg = AgentMessage::ExecOutput {
                    id,
                    stream,
                    data: buf[..n].to_vec(),
                };
                if out.send(Outbound::Msg(msg)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A terminal's master reads EIO once the last holder of the
            // slave side has closed it: the end of output.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_argv_is_refused() {
        assert!(matches!(
            build_command(&ExecRequest::default()),
            Err(AgentError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn env_entry_without_equals_is_refused() {
        let req = ExecRequest {
            argv: vec!["true".into()],
            env: vec!["NOPE".into()],
            ..ExecRequest::default()
        };
        assert!(matches!(
            build_command(&req),
            Err(AgentError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn missing_working_directory_and_double_stdin_are_refused() {
        let req = ExecRequest {
            argv: vec!["true".into()],
            cwd: Some("/no/such/dir".into()),
            ..ExecRequest::default()
        };
        let err = build_command(&req).expect_err("no such directory");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
        let req = ExecRequest {
            argv: vec!["true".into()],
            stdin: Some(Vec::new()),
            stream_stdin: true,
            ..ExecRequest::default()
        };
        assert!(build_command(&req).is_err());
    }
}
