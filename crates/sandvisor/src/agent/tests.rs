//! The client against a fake agent on a socket pair: handshakes, calls,
//! timeouts and closed channels.

use super::*;
use sandvisor_proto::frame::read_frame;

/// A scripted agent on the other end of a socket pair: answers hello
/// with `version`, check with check, and exec with two chunks and an
/// exit. With `forgetful`, it drops the session after every odd-numbered
/// hello, as an agent does that sees the previous host's EOF late: the
/// first request after such a hello gets `NoHandshake`. With `exec_io` it
/// names [`FEATURE_EXEC_IO`]: an exec with streamed stdin echoes each chunk
/// as output and exits with the number of chunks at the end of input; an
/// exec of `wait` runs until signalled, one of `ignore` for ever. Any other exec writes its whole
/// stdin (else `out`) and `err`, and exits with 3.
async fn fake_agent(stream: tokio::net::UnixStream, version: u32, forgetful: bool, exec_io: bool) {
    let std = stream.into_std().expect("std");
    std.set_nonblocking(false).expect("blocking");
    tokio::task::spawn_blocking(move || {
        let mut s = std;
        let mut forget_next = false;
        let mut hellos = 0u32;
        let mut chunks = 0;
        let mut waiting = None;
        let mut ignoring = None;
        while let Ok(payload) = read_frame(&mut s) {
            let msg: HostMessage = frame::decode(&payload).expect("valid request");
            let id = Some(msg.id);
            let mut out = vec![];
            let is_hello = matches!(msg.request, Request::Hello { .. });
            if forget_next && !is_hello {
                forget_next = false;
                let refusal = AgentMessage::Reply {
                    id,
                    result: Err(AgentError::NoHandshake),
                };
                frame::write_frame(&mut s, &refusal).expect("write");
                continue;
            }
            if is_hello {
                hellos += 1;
                forget_next = forgetful && hellos % 2 == 1;
            }
            match msg.request {
                Request::Hello { protocol_version } if protocol_version == version => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::Hello {
                            protocol_version: version,
                            agent_version: "test".into(),
                            features: if exec_io {
                                vec![FEATURE_EXEC_IO.into()]
                            } else {
                                Vec::new()
                            },
                        }),
                    })
                }
                Request::Hello { protocol_version } => out.push(AgentMessage::Reply {
                    id,
                    result: Err(AgentError::VersionMismatch {
                        host: protocol_version,
                        agent: version,
                    }),
                }),
                Request::Check => out.push(AgentMessage::Reply {
                    id,
                    result: Ok(Response::Check),
                }),
                Request::Exec(req) if req.argv[0] == "ignore" => {
                    ignoring = Some(msg.id);
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::ExecStarted { pid: 44 }),
                    });
                }
                Request::ExecSignal { exec_id, .. } if ignoring == Some(exec_id) => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::Signalled),
                    });
                }
                Request::Exec(req) if req.stream_stdin || req.argv[0] == "wait" => {
                    waiting = Some(msg.id);
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::ExecStarted { pid: 43 }),
                    });
                }
                Request::ExecStdin(req) => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::StdinWritten),
                    });
                    if req.eof {
                        out.push(AgentMessage::ExecExit {
                            id: req.exec_id,
                            status: ExitStatus::Code(chunks),
                            timed_out: false,
                        });
                    } else {
                        chunks += 1;
                        out.push(AgentMessage::ExecOutput {
                            id: req.exec_id,
                            stream: OutputStream::Stdout,
                            data: req.data,
                        });
                    }
                }
                Request::ExecSignal { exec_id, signal } if waiting == Some(exec_id) => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::Signalled),
                    });
                    out.push(AgentMessage::ExecExit {
                        id: exec_id,
                        status: ExitStatus::Signal(signal),
                        timed_out: false,
                    });
                }
                Request::Exec(req) => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::ExecStarted { pid: 42 }),
                    });
                    out.push(AgentMessage::ExecOutput {
                        id: msg.id,
                        stream: OutputStream::Stdout,
                        // Stdin given whole comes back as the output.
                        data: req.stdin.unwrap_or_else(|| b"out".to_vec()),
                    });
                    out.push(AgentMessage::ExecOutput {
                        id: msg.id,
                        stream: OutputStream::Stderr,
                        data: b"err".to_vec(),
                    });
                    out.push(AgentMessage::ExecExit {
                        id: msg.id,
                        status: ExitStatus::Code(3),
                        timed_out: false,
                    });
                }
                // Never answered: the client's timeout must fire.
                _ => {}
            }
            for m in out {
                frame::write_frame(&mut s, &m).expect("write");
            }
        }
    });
}

fn pair(version: u32) -> AgentClient {
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    tokio::spawn(fake_agent(b, version, false, true));
    AgentClient::from_stream(Box::new(a))
}

#[tokio::test]
async fn a_forgotten_handshake_is_renewed_once_and_the_request_retried() {
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    tokio::spawn(fake_agent(b, PROTOCOL_VERSION, true, true));
    let client = AgentClient::from_stream(Box::new(a));
    client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect("handshake");
    client.check().await.expect("check after a renewed hello");
    // A new host session that the agent will forget again.
    client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect("handshake");
    let outcome = client
        .exec(
            ExecRequest {
                argv: vec!["x".into()],
                ..ExecRequest::default()
            },
            |_| {},
            |_| {},
        )
        .await
        .expect("exec after a renewed hello");
    assert_eq!(outcome.status, ExitStatus::Code(3));
}

#[tokio::test]
async fn handshake_check_and_exec() {
    let client = pair(PROTOCOL_VERSION);
    client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect("handshake");
    client.check().await.expect("check");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = client
        .exec(
            ExecRequest {
                argv: vec!["x".into()],
                ..ExecRequest::default()
            },
            |d| out.extend_from_slice(d),
            |d| err.extend_from_slice(d),
        )
        .await
        .expect("exec");
    assert_eq!(outcome.status, ExitStatus::Code(3));
    assert_eq!(outcome.pid, 42);
    assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
}

#[tokio::test]
async fn version_mismatch_is_reported_not_retried() {
    let client = pair(PROTOCOL_VERSION + 1);
    let err = client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect_err("mismatch");
    assert!(matches!(
        err.agent_error(),
        Some(AgentError::VersionMismatch { .. })
    ));
}

#[tokio::test]
async fn unanswered_call_times_out() {
    let mut client = pair(PROTOCOL_VERSION);
    client.set_timeout(Duration::from_millis(200));
    client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect("handshake");
    let err = client.guest_details().await.expect_err("no answer");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    // The route of the timed-out call is gone.
    assert!(client.shared.routes().is_empty());
}

#[tokio::test]
async fn closed_channel_wakes_callers() {
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    let client = AgentClient::from_stream(Box::new(a));
    drop(b);
    let err = client.check().await.expect_err("closed");
    assert!(
        matches!(err, ClientError::Disconnected | ClientError::Io(_)),
        "{err}"
    );
}

#[tokio::test]
async fn connect_gives_up_with_the_last_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = AgentAddress::Unix(dir.path().join("nobody.sock"));
    let err = AgentClient::connect(&addr, Duration::from_millis(300))
        .await
        .expect_err("nobody listens");
    match err {
        ClientError::ConnectTimeout { last, .. } => {
            assert!(matches!(*last, ClientError::Connect { .. }), "{last}")
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn a_hybrid_vsock_that_never_answers_connect_ends_at_the_deadline() {
    // The VMM's side of a hybrid vsock with no listener in the guest: it
    // takes the connection and the CONNECT line, and says nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hv.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            kept.push(s);
        }
    });
    let addr = AgentAddress::HybridVsock { path, port: 1024 };
    let err = AgentClient::connect(&addr, Duration::from_millis(300))
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err:?}");
    held.abort();
}

#[tokio::test]
async fn an_unanswered_hybrid_connect_is_asked_again() {
    // The VMM's side of a hybrid vsock whose guest was not ready for the
    // first CONNECT: that one is never answered, the next one is.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hv.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let server = tokio::spawn(async move {
        let (lost, _) = listener.accept().await.expect("first");
        let (mut s, _) = listener.accept().await.expect("second");
        let mut line = vec![0u8; "CONNECT 1024\n".len()];
        s.read_exact(&mut line).await.expect("read");
        assert_eq!(line, b"CONNECT 1024\n");
        s.write_all(b"OK 1073741824\n").await.expect("write");
        drop(lost);
        fake_agent(s, PROTOCOL_VERSION, false, false).await;
    });
    let addr = AgentAddress::HybridVsock { path, port: 1024 };
    let client = AgentClient::connect(&addr, Duration::from_secs(60))
        .await
        .expect("the second CONNECT is answered");
    assert_eq!(client.address, Some(addr));
    drop(client);
    server.await.expect("server");
}

async fn connected(exec_io: bool) -> AgentClient {
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    tokio::spawn(fake_agent(b, PROTOCOL_VERSION, false, exec_io));
    let mut client = AgentClient::from_stream(Box::new(a));
    let (version, features) = client
        .handshake_until(Instant::now() + Duration::from_secs(5))
        .await
        .expect("handshake");
    client.agent_version = version;
    client.features = features;
    client
}

#[tokio::test]
async fn a_session_streams_stdin_past_its_window_in_order_then_the_end() {
    let client = connected(true).await;
    let (tx, rx) = mpsc::channel(2);
    let feeder = tokio::spawn(async move {
        for i in 0..(3 * STDIN_WINDOW as u8) {
            tx.send(vec![b'a' + i; 1000]).await.expect("session reads");
        }
    });
    let mut session = client
        .exec_session(
            ExecRequest {
                argv: vec!["cat".into()],
                ..ExecRequest::default()
            },
            ExecInput {
                stdin: Some(rx),
                ..ExecInput::default()
            },
        )
        .await
        .expect("started");
    let mut out = Vec::new();
    let exit = loop {
        match session.next().await.expect("event") {
            Some(ExecEvent::Output(_, data)) => out.extend(data),
            Some(ExecEvent::Exit(o)) => break o.status,
            None => panic!("no exit"),
        }
    };
    feeder.await.expect("fed");
    let expected: Vec<u8> = (0..(3 * STDIN_WINDOW as u8))
        .flat_map(|i| vec![b'a' + i; 1000])
        .collect();
    assert_eq!(out, expected);
    assert_eq!(exit, ExitStatus::Code(3 * STDIN_WINDOW as i32));
    assert!(client.shared.routes().is_empty() || session.next().await.expect("done").is_none());
}

#[tokio::test]
async fn a_session_passes_a_signal_on() {
    let client = connected(true).await;
    let (ctl_tx, ctl_rx) = mpsc::channel(1);
    let mut session = client
        .exec_session(
            ExecRequest {
                argv: vec!["wait".into()],
                ..ExecRequest::default()
            },
            ExecInput {
                control: Some(ctl_rx),
                ..ExecInput::default()
            },
        )
        .await
        .expect("started");
    ctl_tx.send(Control::Signal(2)).await.expect("sent");
    match session.next().await.expect("event") {
        Some(ExecEvent::Exit(o)) => assert_eq!(o.status, ExitStatus::Signal(2)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(session.signalled());
}

#[tokio::test]
async fn an_old_agent_is_not_asked_for_what_it_would_ignore() {
    let client = connected(false).await;
    for req in [
        ExecRequest {
            argv: vec!["id".into()],
            uid: Some(1000),
            ..ExecRequest::default()
        },
        ExecRequest {
            argv: vec!["sh".into()],
            tty: Some(sandvisor_proto::WindowSize { rows: 1, cols: 1 }),
            ..ExecRequest::default()
        },
    ] {
        let err = client.exec_start(req).await.expect_err("too old");
        assert!(matches!(err, ClientError::AgentTooOld { .. }), "{err}");
        assert!(err.to_string().contains("image build"), "{err}");
    }
    // Stdin goes whole to an agent that cannot take it streamed.
    let (tx, rx) = mpsc::channel(2);
    tx.send(b"whole".to_vec()).await.expect("queued");
    drop(tx);
    let mut session = client
        .exec_session(
            ExecRequest {
                argv: vec!["x".into()],
                ..ExecRequest::default()
            },
            ExecInput {
                stdin: Some(rx),
                ..ExecInput::default()
            },
        )
        .await
        .expect("started without streaming");
    assert_eq!(
        session.next().await.expect("event"),
        Some(ExecEvent::Output(OutputStream::Stdout, b"whole".to_vec()))
    );
    // What version 1 did still works.
    let outcome = client
        .exec(
            ExecRequest {
                argv: vec!["x".into()],
                ..ExecRequest::default()
            },
            |_| {},
            |_| {},
        )
        .await
        .expect("plain exec");
    assert_eq!(outcome.status, ExitStatus::Code(3));
}

#[tokio::test]
async fn a_session_gives_up_a_grace_after_an_ignored_signal() {
    let client = connected(true).await;
    let (ctl_tx, ctl_rx) = mpsc::channel(1);
    let mut session = client
        .exec_session(
            ExecRequest {
                argv: vec!["ignore".into()],
                ..ExecRequest::default()
            },
            ExecInput {
                control: Some(ctl_rx),
                ..ExecInput::default()
            },
        )
        .await
        .expect("started");
    session.set_signal_grace(Duration::from_millis(200));
    ctl_tx.send(Control::Signal(15)).await.expect("sent");
    let err = session.next().await.expect_err("the process ignores it");
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                op: "end after a signal",
                ..
            }
        ),
        "{err}"
    );
}
