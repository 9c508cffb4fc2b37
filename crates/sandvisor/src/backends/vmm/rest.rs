//! A typed REST client for the VMM APIs on a unix socket: Cloud
//! Hypervisor's `--api-socket` and Firecracker's `--api-sock`.
//!
//! It reads like the QMP client (`qemu::qmp`): every request is a
//! serde struct implementing [`Endpoint`], which names its method, its path
//! and the type its reply decodes into; the struct itself is the JSON body.
//! One [`RestClient`] holds one HTTP/1.1 connection (hyper) to one VMM and
//! sends one request at a time; it connects on first use and again when
//! the VMM closed the connection. Every call has a deadline. An error reply
//! becomes [`RestError::Fault`] keeping the VMM's whole message, decoded as
//! the [`Flavour`] of the VMM writes it.
//!
//! Only one kind of error is retried, and only by
//! [`RestClient::call_when_ready`]: a connect that fails because the VMM has
//! not made its socket yet, or does not listen on it yet. A request the VMM
//! answered, whatever the status, is never sent again.
//!
//! File descriptors (Cloud Hypervisor's `vm.add-net` takes tap fds) travel
//! with [`RestClient::call_with_fds`] as `SCM_RIGHTS` on the same connection
//! as the request, which is where the VMM reads them.

mod error;
mod fdpass;
pub(crate) use self::fdpass::send_with_fds;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vmm_tests;

use std::borrow::Cow;
use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use error::RestError;
use fdpass::{FdStream, PendingFds};

/// The first pause of [`RestClient::call_when_ready`] between connects.
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between connects.
const RETRY_MAX: Duration = Duration::from_millis(200);

/// The HTTP methods the VMM APIs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`: read state; no body.
    Get,
    /// `PUT`: create or act.
    Put,
    /// `PATCH`: change part of a resource.
    Patch,
    /// `DELETE`: remove a resource.
    Delete,
}

impl Method {
    /// The method as it goes on the wire, such as `PUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn to_hyper(self) -> hyper::Method {
        match self {
            Method::Get => hyper::Method::GET,
            Method::Put => hyper::Method::PUT,
            Method::Patch => hyper::Method::PATCH,
            Method::Delete => hyper::Method::DELETE,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request of a VMM API: the value is its JSON body, and the type
/// names the method, the path and what the reply decodes into.
///
/// ```
/// use std::borrow::Cow;
/// use sandvisor::backends::vmm::rest::{Endpoint, Method};
///
/// /// Cloud Hypervisor's `vm.resize`.
/// #[derive(serde::Serialize)]
/// struct Resize {
///     desired_vcpus: u32,
/// }
///
/// impl Endpoint for Resize {
///     type Reply = ();
///     const METHOD: Method = Method::Put;
///     fn path(&self) -> Cow<'static, str> {
///         Cow::Borrowed("/api/v1/vm.resize")
///     }
/// }
/// ```
pub trait Endpoint: Serialize {
    /// The decoded reply; `()` for an empty (204) body.
    ///
    /// An empty body decodes as JSON `null`, so `()` and `Option<T>` take
    /// it; [`serde::de::IgnoredAny`] takes any body.
    type Reply: DeserializeOwned;
    /// The method.
    const METHOD: Method;
    /// Path, e.g. "/api/v1/vm.create" or "/drives/rootfs".
    fn path(&self) -> Cow<'static, str>;
    /// Whether to send `self` as a JSON body (false for GETs and body-less PUTs).
    fn has_body(&self) -> bool {
        true
    }
}

/// Which VMM answers: it decides how an error reply decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// Cloud Hypervisor: an error body is plain text, or a JSON array of
    /// strings from the outermost error to its root cause.
    CloudHypervisor,
    /// Firecracker: an error body is `{"fault_message": "..."}`.
    Firecracker,
}

/// A client for one VMM's API socket.
///
/// Calls are serialised: one request is on the wire at a time, on one
/// connection, opened on first use and again after the VMM closed it.
#[derive(Debug)]
pub struct RestClient {
    socket: PathBuf,
    flavour: Flavour,
    conn: Mutex<Option<Connection>>,
    /// The fds the next write on the connection carries; shared with the
    /// connection's stream. Only the call holding `conn` touches it.
    pending: PendingFds,
}

/// An open connection: the request half, and the task driving it.
#[derive(Debug)]
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A request ready to go: the endpoint's parts, encoded once.
#[derive(Debug)]
struct Prepared {
    method: Method,
    path: String,
    uri: Uri,
    body: Option<Bytes>,
}

impl Prepared {
    fn new<E: Endpoint>(ep: &E) -> Result<Prepared, RestError> {
        let method = E::METHOD;
        let path = ep.path().into_owned();
        let uri = match Uri::try_from(path.as_str()) {
            Ok(uri) => uri,
            Err(source) => {
                return Err(RestError::Path {
                    method,
                    path,
                    source,
                })
            }
        };
        let body = if ep.has_body() {
            match serde_json::to_vec(ep) {
                Ok(body) => Some(Bytes::from(body)),
                Err(source) => {
                    return Err(RestError::Encode {
                        method,
                        path,
                        source,
                    })
                }
            }
        } else {
            None
        };
        Ok(Prepared {
            method,
            path,
            uri,
            body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let body = self.body.clone().unwrap_or_default();
        let len = body.len() as u64;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.to_hyper();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, HeaderValue::from_static("localhost"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        // Body-less PUTs say so: the VMMs' servers want a length on a PUT.
        if self.body.is_some() || self.method != Method::Get {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        request
    }

    fn timeout(&self, timeout: Duration) -> RestError {
        RestError::Timeout {
            method: self.method,
            path: self.path.clone(),
            timeout,
        }
    }

    fn http(&self, source: hyper::Error) -> RestError {
        RestError::Http {
            method: self.method,
            path: self.path.clone(),
            source,
        }
    }
}

impl RestClient {
    /// A client for the API socket at `socket`; it connects on first use.
    pub fn new(socket: impl Into<PathBuf>, flavour: Flavour) -> Self {
        RestClient {
            socket: socket.into(),
            flavour,
            conn: Mutex::new(None),
            pending: PendingFds::default(),
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `ep` and decodes its reply, all within `timeout`.
    ///
    /// # Errors
    ///
    /// [`RestError::Connect`] when the socket cannot be connected,
    /// [`RestError::Timeout`] when no whole reply came in time,
    /// [`RestError::Fault`] when the VMM answered with an error status,
    /// [`RestError::Decode`] when a success reply is not a `E::Reply`,
    /// [`RestError::Encode`] or [`RestError::Path`] when `ep` cannot be
    /// sent, and [`RestError::Http`] when the connection failed.
    pub async fn call<E: Endpoint>(
        &self,
        ep: &E,
        timeout: Duration,
    ) -> Result<E::Reply, RestError> {
        self.call_with_fds(ep, &[], timeout).await
    }

    /// Same, passing `fds` with SCM_RIGHTS alongside the request (CH's vm.add-net takes tap fds).
    ///
    /// The fds go with the first bytes of the request, on the connection
    /// that carries it; the caller keeps its own.
    ///
    /// # Errors
    ///
    /// As [`RestClient::call`], and [`RestError::Io`] when the fds cannot
    /// be duplicated for sending.
    pub async fn call_with_fds<E: Endpoint>(
        &self,
        ep: &E,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<E::Reply, RestError> {
        let prepared = Prepared::new(ep)?;
        let fds = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| RestError::Io {
                method: prepared.method,
                path: prepared.path.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        let Ok(mut slot) = tokio::time::timeout_at(deadline, self.conn.lock()).await else {
            return Err(prepared.timeout(timeout));
        };
        // A connection the exchange does not hand back (on an error, or when
        // the deadline drops it half way) is closed: its state is unknown.
        let outcome =
            tokio::time::timeout_at(deadline, self.exchange(&mut slot, &prepared, fds)).await;
        self.pending.clear();
        drop(slot);
        let (status, body) = match outcome {
            Ok(reply) => reply?,
            Err(_) => return Err(prepared.timeout(timeout)),
        };
        decode(self.flavour, &prepared, status, &body)
    }

    /// Retries `ep` while the VMM is starting (connect fails with ENOENT or ECONNREFUSED), until `timeout`; keeps the last error.
    ///
    /// # Errors
    ///
    /// As [`RestClient::call`]; when the VMM's socket never took a
    /// connection in time, the last [`RestError::Connect`].
    pub async fn call_when_ready<E: Endpoint>(
        &self,
        ep: &E,
        timeout: Duration,
    ) -> Result<E::Reply, RestError> {
        let deadline = Instant::now() + timeout;
        let mut pause = RETRY_FIRST;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.call(ep, left).await {
                Err(err) if err.is_transient() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(pause.min(left)).await;
                    if Instant::now() >= deadline {
                        return Err(err);
                    }
                    tracing::trace!(socket = ?self.socket, error = %err, "vmm api not ready yet");
                    pause = (pause * 2).min(RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// Sends the request on the open connection, or a new one, and reads
    /// the whole reply. A request that never left (the VMM had closed an
    /// idle connection) goes once more on a new connection.
    async fn exchange(
        &self,
        slot: &mut Option<Connection>,
        prepared: &Prepared,
        fds: Vec<OwnedFd>,
    ) -> Result<(StatusCode, Bytes), RestError> {
        let mut conn = match slot.take() {
            Some(conn) if !conn.sender.is_closed() => (conn, true),
            _ => (self.connect(prepared).await?, false),
        };
        self.pending.set(fds);
        loop {
            let (mut current, reused) = conn;
            if let Err(err) = current.sender.ready().await {
                if reused {
                    conn = (self.connect(prepared).await?, false);
                    continue;
                }
                return Err(prepared.http(err));
            }
            match current.sender.try_send_request(prepared.request()).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|err| prepared.http(err))?
                        .to_bytes();
                    *slot = Some(current);
                    return Ok((status, body));
                }
                Err(mut err) => {
                    if reused && err.take_message().is_some() {
                        conn = (self.connect(prepared).await?, false);
                        continue;
                    }
                    return Err(prepared.http(err.into_error()));
                }
            }
        }
    }

    async fn connect(&self, prepared: &Prepared) -> Result<Connection, RestError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| RestError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let io = TokioIo::new(FdStream::new(stream, self.pending.clone()));
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| prepared.http(err))?;
        let socket = self.socket.clone();
        let driver = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(?socket, error = %err, "vmm api connection ended");
            }
        });
        Ok(Connection { sender, driver })
    }
}

/// Decodes a reply of `status` with `body` for endpoint `ep` as a call does,
/// for the fuzz targets.
///
/// # Errors
/// The [`RestError`] the call would return.
#[cfg(feature = "fuzzing")]
pub fn fuzz_decode<E: Endpoint>(
    ep: &E,
    flavour: Flavour,
    status: u16,
    body: &[u8],
) -> Result<E::Reply, RestError> {
    let prepared = Prepared::new(ep)?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    decode(flavour, &prepared, status, body)
}

/// Turns a whole reply into the endpoint's reply type, or its fault.
fn decode<T: DeserializeOwned>(
    flavour: Flavour,
    prepared: &Prepared,
    status: StatusCode,
    body: &[u8],
) -> Result<T, RestError> {
    if !status.is_success() {
        return Err(RestError::Fault {
            method: prepared.method,
            path: prepared.path.clone(),
            status: status.as_u16(),
            message: error::fault_message(flavour, status, body),
        });
    }
    let json: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    serde_json::from_slice(json).map_err(|source| RestError::Decode {
        method: prepared.method,
        path: prepared.path.clone(),
        body: error::excerpt(body),
        source,
    })
}
