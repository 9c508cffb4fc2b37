//! The client against a fake agent on a socket pair: handshakes, calls,
//! timeouts and closed channels.

use super::*;
use sandvisor_proto::frame::read_frame;

/// A scripted agent on the other end of a socket pair: answers hello
/// with `version`, check with check, and exec with two chunks and an
/// exit. With `forgetful`, it drops the session after every odd-numbered
/// hello, as an agent does that sees the previous host's EOF late: the
/// first request after such a hello gets `NoHandshake`.
async fn fake_agent(stream: tokio::net::UnixStream, version: u32, forgetful: bool) {
    let std = stream.into_std().expect("std");
    std.set_nonblocking(false).expect("blocking");
    tokio::task::spawn_blocking(move || {
        let mut s = std;
        let mut forget_next = false;
        let mut hellos = 0u32;
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
                Request::Exec(_) => {
                    out.push(AgentMessage::Reply {
                        id,
                        result: Ok(Response::ExecStarted { pid: 42 }),
                    });
                    out.push(AgentMessage::ExecOutput {
                        id: msg.id,
                        stream: OutputStream::Stdout,
                        data: b"out".to_vec(),
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
    tokio::spawn(fake_agent(b, version, false));
    AgentClient::from_stream(Box::new(a))
}

#[tokio::test]
async fn a_forgotten_handshake_is_renewed_once_and_the_request_retried() {
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    tokio::spawn(fake_agent(b, PROTOCOL_VERSION, true));
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
