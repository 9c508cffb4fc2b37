//! One session: frames in, requests dispatched, replies and exec events
//! out through one writer thread, so frames never interleave.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sandvisor_proto::frame::{self, FrameError};
use sandvisor_proto::{AgentError, AgentMessage, HostMessage, Request, Response, PROTOCOL_VERSION};

use crate::reaper::Reaper;
use crate::{exec, log, modules, ops};

/// What goes to the writer thread.
#[derive(Debug)]
pub enum Outbound {
    /// A message to send.
    Msg(AgentMessage),
    /// Answered once everything queued before it was written.
    Flush(SyncSender<()>),
}

/// What `shutdown` does after replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// Sync and power off (PID 1).
    PowerOff,
    /// Nothing (tests).
    Ignore,
}

/// The agent's shared state.
#[derive(Debug)]
pub struct Agent {
    /// The reaper that owns children's exit statuses.
    pub reaper: Arc<Reaper>,
    /// What shutdown does.
    pub shutdown: ShutdownAction,
}

fn start_writer<W: Write + Send + 'static>(
    mut writer: W,
    open: Arc<AtomicBool>,
) -> Sender<Outbound> {
    let (tx, rx) = mpsc::channel::<Outbound>();
    let spawned = thread::Builder::new().name("writer".into()).spawn(move || {
        for out in rx {
            match out {
                Outbound::Msg(msg) => {
                    if !open.load(Ordering::Acquire) {
                        continue;
                    }
                    if let Err(e) = frame::write_frame(&mut writer, &msg) {
                        log!("cannot send to the host: {e}");
                        open.store(false, Ordering::Release);
                    }
                }
                Outbound::Flush(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    });
    if let Err(e) = spawned {
        log!("cannot start the writer thread: {e}");
    }
    tx
}

impl Agent {
    /// Serves one session until the host closes the stream.
    pub fn serve<R: Read, W: Write + Send + 'static>(&self, mut reader: R, writer: W) {
        let open = Arc::new(AtomicBool::new(true));
        let out = start_writer(writer, Arc::clone(&open));
        let mut handshaken = false;
        let reply = |id: Option<u64>, result: Result<Response, AgentError>| {
            let _ = out.send(Outbound::Msg(AgentMessage::Reply { id, result }));
        };
        loop {
            let payload = match frame::read_frame(&mut reader) {
                Ok(p) => p,
                Err(FrameError::TooLarge { len, max }) => {
                    reply(
                        None,
                        Err(AgentError::FrameTooLarge {
                            len: len as u64,
                            max: max as u64,
                        }),
                    );
                    continue;
                }
                Err(FrameError::Closed) => break,
                Err(e) => {
                    log!("session ended: {e}");
                    break;
                }
            };
            let msg: HostMessage = match frame::decode(&payload) {
                Ok(m) => m,
                Err(e) => {
                    let reason = match &e {
                        FrameError::Malformed(j) => j.to_string(),
                        other => other.to_string(),
                    };
                    reply(
                        frame::peek_id(&payload),
                        Err(AgentError::Malformed { reason }),
                    );
                    continue;
                }
            };
            let id = msg.id;
            match msg.request {
                Request::Hello { protocol_version } => {
                    if protocol_version == PROTOCOL_VERSION {
                        handshaken = true;
                        reply(
                            Some(id),
                            Ok(Response::Hello {
                                protocol_version: PROTOCOL_VERSION,
                                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                            }),
                        );
                    } else {
                        reply(
                            Some(id),
                            Err(AgentError::VersionMismatch {
                                host: protocol_version,
                                agent: PROTOCOL_VERSION,
                            }),
                        );
                    }
                }
                _ if !handshaken => reply(Some(id), Err(AgentError::NoHandshake)),
                Request::Check => reply(Some(id), Ok(Response::Check)),
                Request::GuestDetails => {
                    reply(Some(id), ops::guest_details().map(Response::GuestDetails))
                }
                Request::Exec(req) => {
                    // Commands expect the guest's devices to have drivers.
                    modules::wait_loaded();
                    if let Err(e) = exec::start(id, req, &self.reaper, &out) {
                        reply(Some(id), Err(e));
                    }
                }
                // These need drivers (virtio-mem, disks, file systems) that
                // may still be loading.
                Request::OnlineCpuMem(req) => {
                    modules::wait_loaded();
                    reply(
                        Some(id),
                        ops::online_cpu_mem(&req).map(Response::OnlineCpuMem),
                    )
                }
                Request::ListBlockDevices => {
                    modules::storage_ready();
                    reply(
                        Some(id),
                        ops::list_block_devices().map(|devices| Response::BlockDevices { devices }),
                    )
                }
                Request::Mount(req) => {
                    modules::storage_ready();
                    reply(Some(id), ops::mount_fs(&req).map(|()| Response::Mounted))
                }
                Request::SetTime(req) => {
                    reply(Some(id), ops::set_time(&req).map(|()| Response::TimeSet))
                }
                Request::ReseedRng(req) => reply(
                    Some(id),
                    ops::reseed_rng(&req).map(|()| Response::RngReseeded),
                ),
                Request::Quiesce => {
                    // What the agent would otherwise do at a first exec or
                    // mount (load the boot-time drivers, scan the SCSI
                    // buses) is done here, once for every clone.
                    modules::storage_ready();
                    // Everything queued before the reply goes out; then
                    // the session ends, with nothing of it left in flight.
                    reply(Some(id), Ok(Response::Quiesced));
                    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                    let _ = out.send(Outbound::Flush(ack_tx));
                    let _ = ack_rx.recv_timeout(Duration::from_secs(2));
                    log!("quiesced: session closed for a template");
                    break;
                }
                Request::Shutdown => {
                    reply(Some(id), Ok(Response::ShuttingDown));
                    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                    let _ = out.send(Outbound::Flush(ack_tx));
                    let _ = ack_rx.recv_timeout(Duration::from_secs(2));
                    self.shut_down();
                }
            }
        }
        // Output of processes still running has nobody to go to.
        open.store(false, Ordering::Release);
    }

    fn shut_down(&self) {
        match self.shutdown {
            ShutdownAction::Ignore => {}
            ShutdownAction::PowerOff => {
                log!("powering off");
                nix::unistd::sync();
                let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
                log!("cannot power off: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use sandvisor_proto::{ExecRequest, ExitStatus, Stream};

    use super::*;

    struct Host {
        stream: UnixStream,
        next_id: u64,
    }

    impl Host {
        fn send(&mut self, request: Request) -> u64 {
            self.next_id += 1;
            let msg = HostMessage {
                id: self.next_id,
                request,
            };
            frame::write_frame(&mut self.stream, &msg).expect("write");
            self.next_id
        }

        fn recv(&mut self) -> AgentMessage {
            let payload = frame::read_frame(&mut self.stream).expect("a frame");
            frame::decode(&payload).expect("an agent message")
        }

        fn call(&mut self, request: Request) -> Result<Response, AgentError> {
            let id = self.send(request);
            match self.recv() {
                AgentMessage::Reply {
                    id: Some(r),
                    result,
                } if r == id => result,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn session() -> Host {
        let (host, agent_end) = UnixStream::pair().expect("socketpair");
        host.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        // One reaper per process: two would steal each other's children.
        static REAPER: std::sync::OnceLock<Arc<Reaper>> = std::sync::OnceLock::new();
        let agent = Agent {
            reaper: Arc::clone(REAPER.get_or_init(Reaper::start)),
            shutdown: ShutdownAction::Ignore,
        };
        thread::spawn(move || {
            let writer = agent_end.try_clone().expect("clone");
            agent.serve(agent_end, writer);
        });
        Host {
            stream: host,
            next_id: 0,
        }
    }

    fn hello(host: &mut Host) {
        let r = host.call(Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        });
        assert!(matches!(r, Ok(Response::Hello { .. })), "{r:?}");
    }

    #[test]
    fn requests_before_hello_are_refused() {
        let mut host = session();
        assert_eq!(host.call(Request::Check), Err(AgentError::NoHandshake));
        hello(&mut host);
        assert_eq!(host.call(Request::Check), Ok(Response::Check));
    }

    #[test]
    fn version_mismatch_is_typed() {
        let mut host = session();
        assert_eq!(
            host.call(Request::Hello {
                protocol_version: PROTOCOL_VERSION + 1
            }),
            Err(AgentError::VersionMismatch {
                host: PROTOCOL_VERSION + 1,
                agent: PROTOCOL_VERSION
            })
        );
        assert_eq!(host.call(Request::Check), Err(AgentError::NoHandshake));
    }

    #[test]
    fn malformed_frames_get_an_error_and_serving_goes_on() {
        let mut host = session();
        hello(&mut host);
        let bad = br#"{"id": 77, "type": "frobnicate"}"#;
        let mut framed = (bad.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(bad);
        host.stream.write_all(&framed).expect("write");
        match host.recv() {
            AgentMessage::Reply {
                id: Some(77),
                result: Err(AgentError::Malformed { .. }),
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        let huge = ((frame::MAX_FRAME_SIZE + 1) as u32).to_be_bytes();
        host.stream.write_all(&huge).expect("write");
        host.stream
            .write_all(&vec![0u8; frame::MAX_FRAME_SIZE + 1])
            .expect("write");
        assert!(matches!(
            host.recv(),
            AgentMessage::Reply {
                id: None,
                result: Err(AgentError::FrameTooLarge { .. })
            }
        ));
        assert_eq!(host.call(Request::Check), Ok(Response::Check));
    }

    fn run(host: &mut Host, req: ExecRequest) -> (Vec<u8>, Vec<u8>, ExitStatus, bool) {
        let id = host.send(Request::Exec(req));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match host.recv() {
                AgentMessage::Reply {
                    id: Some(r),
                    result,
                } if r == id => {
                    assert!(
                        matches!(result, Ok(Response::ExecStarted { .. })),
                        "{result:?}"
                    )
                }
                AgentMessage::ExecOutput {
                    id: r,
                    stream,
                    data,
                } if r == id => match stream {
                    Stream::Stdout => out.extend(data),
                    Stream::Stderr => err.extend(data),
                },
                AgentMessage::ExecExit {
                    id: r,
                    status,
                    timed_out,
                } if r == id => return (out, err, status, timed_out),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn exec_streams_and_reports_exit() {
        let mut host = session();
        hello(&mut host);
        let (out, err, status, timed_out) = run(
            &mut host,
            ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat; echo oops >&2; exit 3".into(),
                ],
                stdin: Some(b"hello".to_vec()),
                ..ExecRequest::default()
            },
        );
        assert_eq!(out, b"hello");
        assert_eq!(err, b"oops\n");
        assert_eq!(status, ExitStatus::Code(3));
        assert!(!timed_out);
    }

    #[test]
    fn exec_timeout_kills() {
        let mut host = session();
        hello(&mut host);
        let (_, _, status, timed_out) = run(
            &mut host,
            ExecRequest {
                argv: vec!["sleep".into(), "30".into()],
                timeout_ms: Some(200),
                ..ExecRequest::default()
            },
        );
        assert_eq!(status, ExitStatus::Signal(9));
        assert!(timed_out);
    }

    #[test]
    fn quiesce_replies_then_ends_the_session() {
        let mut host = session();
        hello(&mut host);
        assert_eq!(host.call(Request::Quiesce), Ok(Response::Quiesced));
        // The agent closed its end: the next read is end of file.
        let mut rest = Vec::new();
        host.stream.read_to_end(&mut rest).expect("end of file");
        assert!(rest.is_empty(), "nothing after the reply: {rest:?}");
    }

    #[test]
    fn reseed_refuses_empty_and_oversized_entropy() {
        let mut host = session();
        hello(&mut host);
        for len in [0, sandvisor_proto::MAX_RESEED_BYTES + 1] {
            let r = host.call(Request::ReseedRng(sandvisor_proto::ReseedRngRequest {
                data: vec![7; len],
            }));
            assert!(
                matches!(r, Err(AgentError::InvalidRequest { .. })),
                "{len} bytes: {r:?}"
            );
        }
    }

    #[test]
    fn exec_of_a_missing_program_fails_cleanly() {
        let mut host = session();
        hello(&mut host);
        let r = host.call(Request::Exec(ExecRequest {
            argv: vec!["/no/such/program".into()],
            ..ExecRequest::default()
        }));
        assert!(
            matches!(r, Err(AgentError::Failed { errno: Some(2), .. })),
            "{r:?}"
        );
        assert_eq!(host.call(Request::Check), Ok(Response::Check));
    }
}
