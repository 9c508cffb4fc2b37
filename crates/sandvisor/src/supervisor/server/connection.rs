//! One client connection to the control socket: the handshake, requests
//! passed to the owner, and `exec` output streamed from the agent.

use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::{Event, STDIN_QUEUE};
use crate::agent::{Control, ExecInput};
use crate::supervisor::agent::ExecEvent;
use crate::supervisor::id::SandboxId;
use crate::supervisor::proto::{
    read_frame, write_frame, ClientMessage, ExecControl, ExecSpec, Frame, Op, RemoteError, Reply,
    Request, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use crate::supervisor::state::SandboxRecord;

/// One client connection.
pub(super) struct Connection {
    pub(super) id: SandboxId,
    /// Told when a `delete` reply has reached its client.
    pub(super) exit: Arc<Notify>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) published: watch::Receiver<SandboxRecord>,
}

impl Connection {
    pub(super) async fn serve(self, stream: UnixStream) {
        if let Err(e) = self.serve_inner(stream).await {
            tracing::debug!("control connection ended: {e}");
        }
    }

    async fn serve_inner(
        self,
        mut stream: UnixStream,
    ) -> Result<(), crate::supervisor::proto::ProtoError> {
        let Some(first) = read_frame(&mut stream).await? else {
            return Ok(());
        };
        let msg: ClientMessage = first.decode()?;
        if msg.version != PROTOCOL_VERSION {
            let reply = Reply::Error(RemoteError::Version {
                id: self.id.clone(),
                supervisor: PROTOCOL_VERSION,
                client: msg.version,
            });
            return write_frame(&mut stream, &Frame::message(&reply)?).await;
        }
        let reply = match msg.request {
            Request::Status => Reply::Done {
                record: Box::new(self.published.borrow().clone()),
            },
            Request::Exec(spec) => return self.exec(stream, spec).await,
            request => {
                let delete = matches!(request, Request::Delete { .. });
                let (tx, rx) = oneshot::channel();
                if self.events.send(Event::Request(request, tx)).await.is_err() {
                    return Ok(());
                }
                let Ok(reply) = rx.await else {
                    return Ok(());
                };
                if delete && matches!(reply, Reply::Done { .. }) {
                    let written = write_frame(&mut stream, &Frame::message(&reply)?).await;
                    self.exit.notify_one();
                    return written;
                }
                reply
            }
        };
        write_frame(&mut stream, &Frame::message(&reply)?).await
    }

    async fn exec(
        &self,
        stream: UnixStream,
        spec: ExecSpec,
    ) -> Result<(), crate::supervisor::proto::ProtoError> {
        let (mut reader, mut stream) = stream.into_split();
        let (tx, rx) = oneshot::channel();
        if self.events.send(Event::Agent(tx)).await.is_err() {
            return Ok(());
        }
        let agent = match rx.await {
            Ok(Ok(agent)) => agent,
            Ok(Err(e)) => {
                return write_frame(&mut stream, &Frame::message(&Reply::Error(e))?).await
            }
            Err(_) => return Ok(()),
        };
        // The client's stdin and control messages, passed on as they come.
        // A full stdin queue stops the reading, and so the client: the
        // process reads no faster than that.
        let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        let (control_tx, control_rx) = mpsc::channel::<Control>(8);
        let input = ExecInput {
            stdin: spec.stdin.then_some(stdin_rx),
            control: Some(control_rx),
            started: None,
        };
        let mut stdin_tx = spec.stdin.then_some(stdin_tx);
        let client_input = tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut reader).await {
                    Ok(Some(frame)) => frame,
                    // The client went away: the process runs on, with the
                    // end of its input.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!("exec client input ended: {e}");
                        return;
                    }
                };
                match frame {
                    Frame::Stdin(chunk) if chunk.is_empty() => stdin_tx = None,
                    Frame::Stdin(chunk) => {
                        if let Some(tx) = &stdin_tx {
                            if tx.send(chunk).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    msg @ Frame::Message(_) => match msg.decode::<ExecControl>() {
                        Ok(c) => {
                            let c = match c {
                                ExecControl::Signal { signal } => Control::Signal(signal),
                                ExecControl::Resize { size } => Control::Resize(size),
                            };
                            let _ = control_tx.send(c).await;
                        }
                        Err(e) => tracing::debug!("bad exec control message: {e}"),
                    },
                    other => tracing::debug!("unexpected {} frame during exec", other.kind_name()),
                }
            }
        });
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let run = {
            let spec = spec.clone();
            tokio::spawn(async move { agent.exec(&spec, input, ev_tx).await })
        };
        // The agent task ends the stream by dropping its sender.
        let mut client_gone = false;
        while let Some(event) = ev_rx.recv().await {
            if client_gone {
                continue;
            }
            let frame = match event {
                ExecEvent::Started(pid) => Frame::message(&Reply::ExecStarted { pid })?,
                ExecEvent::Stdout(b) => Frame::Stdout(b),
                ExecEvent::Stderr(b) => Frame::Stderr(b),
            };
            for chunk in split_frame(frame) {
                if write_frame(&mut stream, &chunk).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
        }
        client_input.abort();
        let reply = match run.await {
            Ok(Ok(exit)) => Reply::ExecExited { exit },
            Ok(Err(e)) => Reply::Error(match e.not_runnable_code() {
                Some(code) => RemoteError::NotRunnable {
                    id: self.id.clone(),
                    message: error_chain(&e),
                    code,
                },
                None => RemoteError::failed(&self.id, Op::Exec, &e),
            }),
            Err(e) => Reply::Error(RemoteError::failed(&self.id, Op::Exec, &e)),
        };
        if client_gone {
            return Ok(());
        }
        write_frame(&mut stream, &Frame::message(&reply)?).await
    }
}

/// The innermost message of an error chain: for a command that cannot
/// start, the guest's reason.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Splits an output frame whose payload is over the frame limit.
fn split_frame(frame: Frame) -> Vec<Frame> {
    match frame {
        Frame::Stdout(b) if b.len() > MAX_PAYLOAD => b
            .chunks(MAX_PAYLOAD)
            .map(|c| Frame::Stdout(c.to_vec()))
            .collect(),
        Frame::Stderr(b) if b.len() > MAX_PAYLOAD => b
            .chunks(MAX_PAYLOAD)
            .map(|c| Frame::Stderr(c.to_vec()))
            .collect(),
        f => vec![f],
    }
}
