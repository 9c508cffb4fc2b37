//! The REST client against in-process HTTP servers on unix sockets.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::{IoSliceMut, Read, Seek, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{error, Endpoint, Flavour, Method, RestClient, RestError};

const LONG: Duration = Duration::from_secs(10);

/// Cloud Hypervisor's `vm.add-disk`: a body, and a JSON reply.
#[derive(Debug, Serialize)]
struct AddDisk {
    path: String,
    id: String,
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct PciDevice {
    id: String,
    bdf: String,
}

impl Endpoint for AddDisk {
    type Reply = PciDevice;
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/api/v1/vm.add-disk")
    }
}

/// Cloud Hypervisor's `vm.boot`: a body-less PUT answered with 204.
#[derive(Debug, Serialize)]
struct Boot;

impl Endpoint for Boot {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/api/v1/vm.boot")
    }
    fn has_body(&self) -> bool {
        false
    }
}

/// Firecracker's `GET /`.
#[derive(Debug, Serialize)]
struct Describe;

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct InstanceInfo {
    state: String,
}

impl Endpoint for Describe {
    type Reply = InstanceInfo;
    const METHOD: Method = Method::Get;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/")
    }
    fn has_body(&self) -> bool {
        false
    }
}

/// Firecracker's `PUT /drives/{id}`, with the id in the path.
#[derive(Debug, Serialize)]
struct PutDrive {
    drive_id: String,
    is_root_device: bool,
}

impl Endpoint for PutDrive {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Owned(format!("/drives/{}", self.drive_id))
    }
}

/// Cloud Hypervisor's `vm.add-net` with tap fds.
#[derive(Debug, Serialize)]
struct AddNet {
    id: String,
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct NetAdded {
    id: String,
}

impl Endpoint for AddNet {
    type Reply = NetAdded;
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/api/v1/vm.add-net")
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    content_length: Option<String>,
    body: Bytes,
}

/// What the server does with a request.
enum Answer {
    /// Reply with this status and body.
    Reply(u16, &'static str),
    /// Reply after a pause.
    Later(Duration, u16, &'static str),
    /// Never reply.
    Never,
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// An HTTP server on a unix socket in its own temporary directory; it
/// stops, with all its connections, when dropped.
struct Server {
    socket: PathBuf,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        Server::serve(dir, socket, listener, Arc::new(handler), true)
    }

    fn serve(
        dir: tempfile::TempDir,
        socket: PathBuf,
        listener: UnixListener,
        handler: Handler,
        keep_alive: bool,
    ) -> Server {
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(
            listener,
            handler,
            keep_alive,
            accepts.clone(),
            seen.clone(),
        ));
        Server {
            socket,
            accepts,
            seen,
            task,
            _dir: dir,
        }
    }

    fn client(&self, flavour: Flavour) -> RestClient {
        RestClient::new(&self.socket, flavour)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn accept_loop(
    listener: UnixListener,
    handler: Handler,
    keep_alive: bool,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    // Dropping the set (the task was aborted) aborts every connection.
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        accepts.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        let seen = seen.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let seen = seen.clone();
            async move { Ok::<_, Infallible>(answer(request, &*handler, &seen).await) }
        });
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    handler: &(dyn Fn(&Seen) -> Answer + Send + Sync),
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .map(|v: &hyper::header::HeaderValue| v.to_str().expect("ascii header").to_owned())
    };
    let mut request_seen = Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        content_type: header(hyper::header::CONTENT_TYPE),
        content_length: header(hyper::header::CONTENT_LENGTH),
        body: Bytes::new(),
    };
    request_seen.body = request
        .into_body()
        .collect()
        .await
        .expect("request body")
        .to_bytes();
    seen.lock().expect("seen").push(request_seen.clone());
    let (status, body) = match handler(&request_seen) {
        Answer::Reply(status, body) => (status, body),
        Answer::Later(pause, status, body) => {
            tokio::time::sleep(pause).await;
            (status, body)
        }
        Answer::Never => std::future::pending().await,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    response
}

fn add_disk() -> AddDisk {
    AddDisk {
        path: "/var/lib/disk9.img".into(),
        id: "disk9".into(),
    }
}

#[tokio::test]
async fn rest_json_reply_decodes_and_the_request_carries_the_body() {
    let server = Server::start(|_| Answer::Reply(200, r#"{"id":"disk9","bdf":"0000:00:02.0"}"#));
    let client = server.client(Flavour::CloudHypervisor);

    let reply = client.call(&add_disk(), LONG).await.expect("add-disk");

    assert_eq!(
        reply,
        PciDevice {
            id: "disk9".into(),
            bdf: "0000:00:02.0".into()
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/api/v1/vm.add-disk");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({"path": "/var/lib/disk9.img", "id": "disk9"})
    );
}

#[tokio::test]
async fn rest_empty_204_reply_decodes_into_unit_and_a_bodyless_put_says_length_zero() {
    let server = Server::start(|_| Answer::Reply(204, ""));
    let client = server.client(Flavour::CloudHypervisor);

    client.call(&Boot, LONG).await.expect("boot");

    let seen = server.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/api/v1/vm.boot");
    assert_eq!(seen[0].content_length.as_deref(), Some("0"));
    assert_eq!(seen[0].content_type, None);
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn rest_get_sends_no_body_and_templated_paths_go_as_given() {
    let server = Server::start(|seen| match seen.path.as_str() {
        "/" => Answer::Reply(200, r#"{"state":"Not started","id":"anonymous-instance"}"#),
        _ => Answer::Reply(204, ""),
    });
    let client = server.client(Flavour::Firecracker);

    let info = client.call(&Describe, LONG).await.expect("describe");
    let drive = PutDrive {
        drive_id: "rootfs".into(),
        is_root_device: true,
    };
    client.call(&drive, LONG).await.expect("put drive");

    assert_eq!(info.state, "Not started");
    let seen = server.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.is_empty()),
        ("GET", true)
    );
    assert_eq!(seen[0].content_length, None);
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("PUT", "/drives/rootfs")
    );
}

#[tokio::test]
async fn rest_a_reply_of_the_wrong_shape_is_a_decode_error_with_the_body() {
    let server = Server::start(|_| Answer::Reply(200, r#"{"state":7}"#));
    let client = server.client(Flavour::Firecracker);

    let err = client.call(&Describe, LONG).await.expect_err("wrong shape");

    match &err {
        RestError::Decode {
            method, path, body, ..
        } => {
            assert_eq!(
                (*method, path.as_str(), body.as_str()),
                (Method::Get, "/", r#"{"state":7}"#)
            );
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(err.to_string().starts_with("GET /: "), "{err}");
}

#[tokio::test]
async fn rest_a_silent_server_gives_timeout() {
    let server = Server::start(|_| Answer::Never);
    let client = server.client(Flavour::CloudHypervisor);

    let err = client
        .call(&Boot, Duration::from_millis(200))
        .await
        .expect_err("no reply");

    match &err {
        RestError::Timeout {
            method,
            path,
            timeout,
        } => {
            assert_eq!(*method, Method::Put);
            assert_eq!(path, "/api/v1/vm.boot");
            assert_eq!(*timeout, Duration::from_millis(200));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(!err.is_transient());
}

#[tokio::test]
async fn rest_after_a_timeout_the_next_call_uses_a_new_connection() {
    let calls = AtomicUsize::new(0);
    let server = Server::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Answer::Never,
        _ => Answer::Reply(204, ""),
    });
    let client = server.client(Flavour::CloudHypervisor);

    let first = client.call(&Boot, Duration::from_millis(200)).await;
    client.call(&Boot, LONG).await.expect("second call");

    assert!(matches!(first, Err(RestError::Timeout { .. })), "{first:?}");
    assert_eq!(server.accepts(), 2);
}

#[tokio::test]
async fn rest_call_when_ready_waits_for_the_socket_to_appear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let client = RestClient::new(&socket, Flavour::CloudHypervisor);

    let early = client.call(&Boot, LONG).await.expect_err("no socket yet");
    assert!(early.is_transient(), "{early:?}");
    assert!(matches!(&early, RestError::Connect { socket: s, .. } if *s == socket));

    let late = {
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = UnixListener::bind(&socket).expect("bind");
            let handler: Handler = Arc::new(|_: &Seen| Answer::Reply(204, ""));
            Server::serve(dir, socket, listener, handler, true)
        })
    };
    let ready = client.call_when_ready(&Boot, LONG).await;
    let server = late.await.expect("server task");

    ready.expect("booted once the socket appeared");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn rest_a_socket_nobody_listens_on_is_transient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let client = RestClient::new(&socket, Flavour::Firecracker);

    let err = client.call(&Describe, LONG).await.expect_err("refused");

    match &err {
        RestError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(err.is_transient());
}

#[tokio::test]
async fn rest_call_when_ready_gives_up_with_the_last_connect_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = RestClient::new(dir.path().join("never.sock"), Flavour::CloudHypervisor);

    let err = client
        .call_when_ready(&Boot, Duration::from_millis(300))
        .await
        .expect_err("the socket never appears");

    match &err {
        RestError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn rest_a_4xx_is_not_retried_and_firecracker_faults_keep_their_message() {
    let server = Server::start(|_| {
        Answer::Reply(
            400,
            r#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#,
        )
    });
    let client = server.client(Flavour::Firecracker);
    let drive = PutDrive {
        drive_id: "rootfs".into(),
        is_root_device: true,
    };

    let err = client.call_when_ready(&drive, LONG).await.expect_err("400");

    assert_eq!(server.seen().len(), 1, "a 4xx is never sent again");
    match &err {
        RestError::Fault {
            method,
            path,
            status,
            message,
        } => {
            assert_eq!(
                (*method, path.as_str(), *status),
                (Method::Put, "/drives/rootfs", 400)
            );
            assert_eq!(
                message,
                "The requested operation is not supported after starting the microVM."
            );
        }
        other => panic!("expected Fault, got {other:?}"),
    }
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .starts_with("PUT /drives/rootfs: status 400: "),
        "{err}"
    );
}

#[tokio::test]
async fn rest_cloud_hypervisor_faults_keep_the_whole_error_chain() {
    let server = Server::start(|seen| match seen.path.as_str() {
        "/api/v1/vm.snapshot" => Answer::Reply(
            500,
            r#"["Error from API","The VM could not be snapshotted","Cannot snapshot VM","Failed to snapshot migratable component","Could not get vCPU state GetNestedState(Invalid argument (os error 22)\n\nStack backtrace: ...)"]"#,
        ),
        _ => Answer::Reply(404, "VM is not created\n"),
    });
    let client = server.client(Flavour::CloudHypervisor);

    #[derive(Serialize)]
    struct Snapshot {
        destination_url: String,
    }
    impl Endpoint for Snapshot {
        type Reply = ();
        const METHOD: Method = Method::Put;
        fn path(&self) -> Cow<'static, str> {
            Cow::Borrowed("/api/v1/vm.snapshot")
        }
    }
    let snapshot = Snapshot {
        destination_url: "file:///tmp/snap".into(),
    };

    let array = client.call(&snapshot, LONG).await.expect_err("500");
    let text = client.call(&Boot, LONG).await.expect_err("404");

    match &array {
        RestError::Fault {
            status, message, ..
        } => {
            assert_eq!(*status, 500);
            assert!(
                message.starts_with("Error from API: The VM could not be snapshotted: "),
                "{message}"
            );
            assert!(
                message.contains("GetNestedState(Invalid argument"),
                "{message}"
            );
        }
        other => panic!("expected Fault, got {other:?}"),
    }
    match &text {
        RestError::Fault {
            status, message, ..
        } => assert_eq!((*status, message.as_str()), (404, "VM is not created")),
        other => panic!("expected Fault, got {other:?}"),
    }
}

#[test]
fn rest_fault_messages_by_flavour() {
    use Flavour::{CloudHypervisor as Ch, Firecracker as Fc};
    let cases: &[(Flavour, u16, &str, &str)] = &[
        (
            Fc,
            400,
            r#"{"fault_message":"Invalid drive id"}"#,
            "Invalid drive id",
        ),
        (Fc, 400, "not json at all", "not json at all"),
        (Fc, 500, "", "Internal Server Error"),
        (
            Ch,
            500,
            r#"["Error from API","Cannot boot VM\n"]"#,
            "Error from API: Cannot boot VM",
        ),
        (Ch, 404, "plain text\n", "plain text"),
        (Ch, 405, "", "Method Not Allowed"),
        (
            Ch,
            400,
            r#"{"fault_message":"kept as text"}"#,
            r#"{"fault_message":"kept as text"}"#,
        ),
    ];
    for &(flavour, status, body, expected) in cases {
        let status = StatusCode::from_u16(status).expect("status");
        assert_eq!(
            error::fault_message(flavour, status, body.as_bytes()),
            expected,
            "{flavour:?} {status} {body:?}"
        );
    }
}

#[test]
fn rest_decode_excerpts_are_cut() {
    let long = "x".repeat(1000);
    let excerpt = error::excerpt(long.as_bytes());
    assert_eq!(excerpt.len(), 256 + 3);
    assert!(excerpt.ends_with("..."));
    assert_eq!(error::excerpt(b"short"), "short");
}

#[tokio::test]
async fn rest_concurrent_calls_are_serialised_on_one_connection() {
    let server = Server::start(|_| Answer::Later(Duration::from_millis(100), 204, ""));
    let client = server.client(Flavour::CloudHypervisor);

    let (first, second) = tokio::join!(client.call(&Boot, LONG), client.call(&Boot, LONG));

    first.expect("first");
    second.expect("second");
    assert_eq!(server.seen().len(), 2);
    assert_eq!(server.accepts(), 1, "both requests went on one connection");
}

#[tokio::test]
async fn rest_reconnects_when_the_vmm_closed_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let handler: Handler = Arc::new(|_: &Seen| Answer::Reply(204, ""));
    let server = Server::serve(dir, socket, listener, handler, false);
    let client = server.client(Flavour::CloudHypervisor);

    client.call(&Boot, LONG).await.expect("first");
    // Let the server's close reach the client's connection first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.call(&Boot, LONG).await.expect("second");
    client.call(&Boot, LONG).await.expect("third, right after");

    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.accepts(), 3);
}

/// One `recvmsg`: bytes and any fds that came with them.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    Ok((message.bytes, fds))
}

/// Whether `request` holds a whole HTTP request: its head, and as many
/// body bytes as its content-length says.
fn whole_request(request: &[u8]) -> bool {
    let Some(head_end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
    request.len() >= head_end + 4 + length
}

/// Reads one request with recvmsg, gathering the fds that came with it.
async fn read_request(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut request = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    while !whole_request(&request) {
        let (n, received) = stream
            .async_io(Interest::READABLE, || recv_with_fds(stream, &mut buf))
            .await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        fds.extend(received);
    }
    Ok((request, fds))
}

#[tokio::test]
async fn rest_fds_travel_with_the_request_and_only_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Two requests on one connection: it writes through the fds of the
    // first, and counts those of the second.
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let (first, fds) = read_request(&stream).await?;
        let passed = fds.len();
        for fd in fds {
            std::fs::File::from(fd).write_all(b"written by the server")?;
        }
        let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"id\":\"net0\"}";
        stream.write_all(reply).await?;
        let (second, later_fds) = read_request(&stream).await?;
        stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
        Ok::<_, std::io::Error>((first, passed, second, later_fds.len()))
    });
    let mut file = tempfile::tempfile().expect("tempfile");
    let client = RestClient::new(&socket, Flavour::CloudHypervisor);

    let added = client
        .call_with_fds(&AddNet { id: "net0".into() }, &[file.as_fd()], LONG)
        .await;
    let booted = client.call(&Boot, LONG).await;
    let (first, passed, second, later) = tokio::time::timeout(LONG, server)
        .await
        .expect("server done")
        .expect("server task")
        .expect("server io");

    assert_eq!(added.expect("add-net"), NetAdded { id: "net0".into() });
    booted.expect("boot");
    assert_eq!(passed, 1, "one fd with the request");
    assert_eq!(later, 0, "no fd with the next request");
    assert!(first.starts_with(b"PUT /api/v1/vm.add-net HTTP/1.1\r\n"));
    assert!(first.ends_with(br#"{"id":"net0"}"#));
    assert!(second.starts_with(b"PUT /api/v1/vm.boot HTTP/1.1\r\n"));
    let mut written = String::new();
    file.rewind().expect("rewind");
    file.read_to_string(&mut written).expect("read back");
    assert_eq!(written, "written by the server");
}
