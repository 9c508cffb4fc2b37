//! Running a process for the host: stdin in, stdout and stderr streamed out
//! in chunks, then how it ended.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sandvisor_proto::{AgentError, AgentMessage, ExecRequest, ExitStatus, Response, Stream};

use crate::init::DEFAULT_PATH;
use crate::log;
use crate::ops::failed;
use crate::reaper::Reaper;
use crate::server::Outbound;

/// Output is read and sent in chunks of at most this size.
const CHUNK: usize = 32 * 1024;

/// How long to wait for the output pipes to close once the process has
/// ended: a daemonised grandchild may hold them open for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

fn build_command(req: &ExecRequest) -> Result<Command, AgentError> {
    let Some((program, args)) = req.argv.split_first() else {
        return Err(AgentError::InvalidRequest {
            reason: "exec needs a program: argv is empty".into(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/")
        .current_dir(req.cwd.as_deref().unwrap_or("/"))
        // Its own process group, so that a timeout kills what it started
        // too.
        .process_group(0)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in &req.env {
        let Some((k, v)) = var.split_once('=') else {
            return Err(AgentError::InvalidRequest {
                reason: format!("environment entry {var:?} has no '='"),
            });
        };
        cmd.env(k, v);
    }
    Ok(cmd)
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        log!("cannot start thread {name}: {e}");
    }
}

/// Starts the process of request `id`. On success the `ExecStarted` reply,
/// the output and the exit are sent on `out`, in that order; on failure
/// nothing is sent and the caller replies with the error.
///
/// # Errors
/// [`AgentError::InvalidRequest`] for an empty argv or a bad environment
/// entry; [`AgentError::Failed`] when the process cannot be started.
pub fn start(
    id: u64,
    req: ExecRequest,
    reaper: &Reaper,
    out: &Sender<Outbound>,
) -> Result<(), AgentError> {
    let mut cmd = build_command(&req)?;
    let (mut child, exited) = reaper
        .spawn(&mut cmd)
        .map_err(|e| failed(format!("exec {:?}", req.argv[0]), &e))?;
    let pid = child.id();
    let _ = out.send(Outbound::Msg(AgentMessage::Reply {
        id: Some(id),
        result: Ok(Response::ExecStarted { pid }),
    }));

    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), req.stdin) {
        spawn_named("exec-stdin", move || {
            // A process that does not read its stdin closes it: EPIPE is
            // expected then.
            let _ = stdin.write_all(&data);
        });
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pipes: [(Stream, Option<Box<dyn Read + Send>>); 2] = [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    let mut pumps = 0;
    for (stream, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        pumps += 1;
        let out = out.clone();
        let done = done_tx.clone();
        spawn_named("exec-output", move || {
            pump(id, stream, pipe, &out);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let out = out.clone();
    let timeout = req.timeout_ms.map(Duration::from_millis);
    spawn_named("exec-wait", move || {
        let pgid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
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
        let _ = out.send(Outbound::Msg(AgentMessage::ExecExit {
            id,
            status,
            timed_out,
        }));
    });
    Ok(())
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
}
