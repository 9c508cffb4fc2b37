//! A running process with its input: stdin streamed to it as it comes,
//! signals and terminal resizes passed on, output and the exit read back.
//!
//! [`ExecSession`] is what `sandvisor run` and the supervisor's `exec`
//! drive. Stdin goes in chunks the agent answers once written, at most
//! [`STDIN_WINDOW`] in flight, so a command that reads slowly (or not at
//! all) slows the sender instead of filling the guest's memory; signals
//! and resizes do not wait behind stdin.

use std::collections::VecDeque;

use sandvisor_proto::{
    ExecRequest, ExecStdinRequest, Request, Response, WindowSize, FEATURE_EXEC_IO,
};
use tokio::sync::mpsc;

use super::{AgentClient, ClientError, ExecEvent, ExecHandle, Route};

/// The largest stdin chunk sent in one request: with base64 and JSON it
/// stays well under the 4 MiB frame limit.
pub const STDIN_CHUNK: usize = 256 * 1024;
/// How many stdin chunks may be unanswered at once.
pub const STDIN_WINDOW: usize = 8;

/// Something to pass to a running process besides its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send this signal to its process group.
    Signal(i32),
    /// Its terminal now has this size.
    Resize(WindowSize),
}

/// What feeds a running process.
#[derive(Debug, Default)]
pub struct ExecInput {
    /// Chunks of stdin as they come; the sender's drop is the end of input.
    /// `None`: stdin is `/dev/null` (or the request's own bytes).
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// Signals and resizes; its closing means nothing more comes.
    pub control: Option<mpsc::Receiver<Control>>,
    /// Told the guest pid once the process has started: a terminal goes
    /// raw then, not while the sandbox boots.
    pub started: Option<tokio::sync::oneshot::Sender<u32>>,
}

/// A started process and what feeds it.
#[derive(Debug)]
pub struct ExecSession<'a> {
    client: &'a AgentClient,
    handle: ExecHandle<'a>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// Replies awaited for stdin chunks, oldest first.
    in_flight: VecDeque<Route<'a>>,
    /// The end of input was sent (or stdin is not streamed).
    stdin_done: bool,
    control: Option<mpsc::Receiver<Control>>,
    signalled: bool,
    /// How long the process may run on after the first signal.
    grace: Option<std::time::Duration>,
    /// When that ends, once a signal was passed on.
    grace_deadline: Option<tokio::time::Instant>,
}

impl AgentClient {
    /// Starts `req` and returns a session that streams `input` to it while
    /// its events are read. `req.stream_stdin` is set from `input.stdin`;
    /// an agent without [`FEATURE_EXEC_IO`] gets the stdin whole instead,
    /// read to its end before the start, as before streaming.
    ///
    /// # Errors
    /// Those of [`AgentClient::exec_start`].
    pub async fn exec_session(
        &self,
        mut req: ExecRequest,
        input: ExecInput,
    ) -> Result<ExecSession<'_>, ClientError> {
        let mut stdin = input.stdin;
        req.stream_stdin = stdin.is_some();
        if req.stream_stdin && !self.has_feature(FEATURE_EXEC_IO) {
            // An agent from before streaming takes stdin whole, as it did:
            // read it to its end first.
            if let Some(mut rx) = stdin.take() {
                let mut whole = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    whole.extend_from_slice(&chunk);
                }
                req.stream_stdin = false;
                req.stdin = Some(whole);
            }
        }
        let handle = self.exec_start(req).await?;
        if let Some(started) = input.started {
            let _ = started.send(handle.pid());
        }
        Ok(ExecSession {
            client: self,
            handle,
            stdin_done: stdin.is_none(),
            stdin,
            in_flight: VecDeque::new(),
            control: input.control,
            signalled: false,
            grace: None,
            grace_deadline: None,
        })
    }

    /// Sends a signal to the process group of the process started by exec
    /// request `exec_id`.
    ///
    /// # Errors
    /// The process has ended, the signal is unknown, or the call failed.
    pub async fn exec_signal(&self, exec_id: u64, signal: i32) -> Result<(), ClientError> {
        match self
            .call_with(
                "signal the process",
                Request::ExecSignal { exec_id, signal },
                self.timeout,
            )
            .await?
        {
            Response::Signalled => Ok(()),
            other => Self::unexpected("signal the process", other),
        }
    }

    /// Resizes the terminal of the process started by exec request
    /// `exec_id`.
    ///
    /// # Errors
    /// The process has ended or has no terminal, or the call failed.
    pub async fn exec_resize(&self, exec_id: u64, size: WindowSize) -> Result<(), ClientError> {
        match self
            .call_with(
                "resize the terminal",
                Request::ExecResize { exec_id, size },
                self.timeout,
            )
            .await?
        {
            Response::Resized => Ok(()),
            other => Self::unexpected("resize the terminal", other),
        }
    }
}

impl ExecSession<'_> {
    /// The guest pid.
    pub fn pid(&self) -> u32 {
        self.handle.pid()
    }

    /// Whether a signal was passed on.
    pub fn signalled(&self) -> bool {
        self.signalled
    }

    /// Makes [`ExecSession::next`] fail with [`ClientError::Timeout`] when
    /// the process has not ended `grace` after the first signal passed on.
    pub fn set_signal_grace(&mut self, grace: std::time::Duration) {
        self.grace = Some(grace);
    }

    /// The next output or the exit, passing stdin, signals and resizes on
    /// meanwhile; `Ok(None)` after the exit. Once the process has closed
    /// its stdin (or ended), the rest of the input is dropped.
    ///
    /// # Errors
    /// Those of [`ExecHandle::next`], a failure to send a signal or a
    /// resize that is not the process having just ended, and
    /// [`ClientError::Timeout`] past the signal grace
    /// ([`ExecSession::set_signal_grace`]).
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        loop {
            let can_send = !self.stdin_done && self.in_flight.len() < STDIN_WINDOW;
            let grace_deadline = self.grace_deadline;
            tokio::select! {
                // Output first: it is what frees the process to go on.
                biased;
                event = self.handle.next() => return event,
                () = sleep_until(grace_deadline), if grace_deadline.is_some() => {
                    return Err(ClientError::Timeout {
                        op: "end after a signal",
                        after: self.grace.unwrap_or_default(),
                    });
                }
                reply = next_reply(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    self.in_flight.pop_front();
                    match reply {
                        Ok(()) => {}
                        // The process closed its stdin or ended: what it
                        // did not read is dropped, as a pipe would.
                        Err(ClientError::Agent { source, .. }) => {
                            tracing::debug!(error = %source, "stdin no longer taken");
                            self.close_stdin();
                        }
                        Err(e) => return Err(e),
                    }
                }
                chunk = recv_chunk(&mut self.stdin), if can_send => {
                    self.send_stdin(chunk).await?;
                }
                control = recv_control(&mut self.control), if self.control.is_some() => {
                    match control {
                        Some(c) => self.pass_on(c).await?,
                        None => self.control = None,
                    }
                }
            }
        }
    }

    fn close_stdin(&mut self) {
        self.stdin_done = true;
        self.stdin = None;
        self.in_flight.clear();
    }

    async fn send_stdin(&mut self, chunk: Option<Vec<u8>>) -> Result<(), ClientError> {
        let exec_id = self.handle.id();
        let Some(data) = chunk else {
            // The end of input.
            self.stdin_done = true;
            self.stdin = None;
            let route = self
                .client
                .send(Request::ExecStdin(ExecStdinRequest {
                    exec_id,
                    data: Vec::new(),
                    eof: true,
                }))
                .await?;
            self.in_flight.push_back(route);
            return Ok(());
        };
        for piece in data.chunks(STDIN_CHUNK) {
            let route = self
                .client
                .send(Request::ExecStdin(ExecStdinRequest {
                    exec_id,
                    data: piece.to_vec(),
                    eof: false,
                }))
                .await?;
            self.in_flight.push_back(route);
        }
        Ok(())
    }

    async fn pass_on(&mut self, control: Control) -> Result<(), ClientError> {
        let exec_id = self.handle.id();
        let result = match control {
            Control::Signal(signal) => {
                self.signalled = true;
                if let (Some(grace), None) = (self.grace, self.grace_deadline) {
                    self.grace_deadline = Some(tokio::time::Instant::now() + grace);
                }
                tracing::debug!(signal, pid = self.pid(), "passing a signal on");
                self.client.exec_signal(exec_id, signal).await
            }
            Control::Resize(size) => self.client.exec_resize(exec_id, size).await,
        };
        match result {
            // The process ended meanwhile: its exit is on the way.
            Err(ClientError::Agent { source, .. }) => {
                tracing::debug!(error = %source, "control not taken");
                Ok(())
            }
            other => other,
        }
    }
}

async fn next_reply(in_flight: &mut VecDeque<Route<'_>>) -> Result<(), ClientError> {
    let Some(route) = in_flight.front_mut() else {
        return std::future::pending().await;
    };
    // No deadline of its own: the agent answers when the process has read
    // the chunk, or with an error when the process ends.
    let msg = route.rx.recv().await.ok_or(ClientError::Disconnected)?;
    match msg {
        sandvisor_proto::AgentMessage::Reply { result, .. } => match result {
            Ok(Response::StdinWritten) => Ok(()),
            Ok(other) => AgentClient::unexpected("write stdin", other),
            Err(source) => Err(ClientError::Agent {
                op: "write stdin",
                source,
            }),
        },
        other => Err(ClientError::UnexpectedReply {
            op: "write stdin",
            got: format!("{other:?}"),
        }),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_chunk(stdin: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match stdin {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
