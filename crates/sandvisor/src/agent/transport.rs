//! Byte streams to the agent: a unix socket (QEMU's virtio-serial chardev),
//! vsock, or a hybrid vsock (a unix socket that Firecracker or Cloud
//! Hypervisor bridges to guest vsock after a `CONNECT <port>` line).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{
    connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

use crate::socket::AgentSocket;

/// Where the agent is reached from the host; persisted in a sandbox's
/// state so that a new supervisor reconnects to the same channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAddress {
    /// A unix socket that carries the stream as is (QEMU's chardev behind
    /// the virtio-serial port `agent.channel.0`).
    Unix(PathBuf),
    /// vsock: the guest's context id and the agent's port.
    Vsock {
        /// Guest context id.
        cid: u32,
        /// Agent port.
        port: u32,
    },
    /// A hybrid vsock's unix socket, and the guest port to ask for.
    HybridVsock {
        /// The VMM's unix socket.
        path: PathBuf,
        /// Agent port.
        port: u32,
    },
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            AgentAddress::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            AgentAddress::HybridVsock { path, port } => {
                write!(f, "hvsock:{}:{port}", path.display())
            }
        }
    }
}

impl AgentAddress {
    /// The address of an agent socket made by a backend.
    ///
    /// # Errors
    /// When a vsock context id does not fit the 32 bits of a vsock address.
    pub fn from_socket(socket: &AgentSocket) -> Result<Self, io::Error> {
        Ok(match socket {
            AgentSocket::Unix(u) => AgentAddress::Unix(u.host_path.clone()),
            AgentSocket::Vsock(v) => AgentAddress::Vsock {
                cid: u32::try_from(v.context_id).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("vsock context id {} is over 32 bits", v.context_id),
                    )
                })?,
                port: v.port,
            },
            AgentSocket::HybridVsock(h) => AgentAddress::HybridVsock {
                path: h.uds_path.clone(),
                port: h.port,
            },
        })
    }
}

/// A connected stream to the agent.
pub trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug> Stream for T {}

/// An open stream to the agent.
#[derive(Debug)]
pub struct Opened {
    /// The stream.
    pub stream: Box<dyn Stream>,
    /// For a hybrid vsock, a second descriptor of the same host socket,
    /// for a VMM to hold (see [`AgentClient::connection`]).
    ///
    /// [`AgentClient::connection`]: super::AgentClient::connection
    pub duplicate: Option<OwnedFd>,
}

/// Opens a stream to `addr`. One attempt; the caller retries.
///
/// # Errors
/// The connect error; for a hybrid vsock, also a refused `CONNECT`.
pub async fn open(addr: &AgentAddress) -> io::Result<Opened> {
    let only = |stream: Box<dyn Stream>| Opened {
        stream,
        duplicate: None,
    };
    match addr {
        AgentAddress::Unix(path) => Ok(only(Box::new(UnixStream::connect(path).await?))),
        AgentAddress::Vsock { cid, port } => {
            Ok(only(Box::new(VsockStream::connect(*cid, *port).await?)))
        }
        AgentAddress::HybridVsock { path, port } => {
            let mut s = UnixStream::connect(path).await?;
            s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
            // Byte by byte: whatever follows the line belongs to the agent.
            let mut line = Vec::new();
            loop {
                let b = s.read_u8().await?;
                if b == b'\n' {
                    break;
                }
                line.push(b);
                if line.len() > 64 {
                    break;
                }
            }
            check_hybrid_reply(&line, *port)?;
            let duplicate = s.as_fd().try_clone_to_owned()?;
            Ok(Opened {
                stream: Box::new(s),
                duplicate: Some(duplicate),
            })
        }
    }
}

/// Checks the line a hybrid vsock answers `CONNECT <port>` with (without
/// its newline): `OK <host port>` lets the connection through.
///
/// # Errors
/// `ConnectionRefused` naming the port and the line, for any other line.
pub fn check_hybrid_reply(line: &[u8], port: u32) -> io::Result<()> {
    let line = String::from_utf8_lossy(line);
    if line.starts_with("OK ") {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("hybrid vsock refused CONNECT {port}: {line:?}"),
    ))
}

/// An `AF_VSOCK` stream on tokio's reactor. tokio has no vsock type; this
/// is the few lines of one that the client needs.
#[derive(Debug)]
pub struct VsockStream {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// Connects to `port` of guest `cid`.
    ///
    /// # Errors
    /// `EAFNOSUPPORT` when the host has no vsock, or the connect error.
    pub async fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = VsockAddr::new(cid, port);
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = crate::sys::register_async_fd(fd)?;
        let guard = fd.writable().await?;
        drop(guard);
        let err = getsockopt(fd.get_ref(), sockopt::SocketError)?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(VsockStream { fd })
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            }) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            nix::sys::socket::shutdown(
                self.fd.get_ref().as_raw_fd(),
                nix::sys::socket::Shutdown::Write,
            )
            .map_err(io::Error::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{HybridVsock, UnixSocket};

    #[test]
    fn addresses_from_sockets() {
        let unix = AgentSocket::Unix(UnixSocket {
            host_path: "/run/x/kata.sock".into(),
            ..UnixSocket::default()
        });
        assert_eq!(
            AgentAddress::from_socket(&unix).expect("unix"),
            AgentAddress::Unix("/run/x/kata.sock".into())
        );
        let h = AgentSocket::HybridVsock(HybridVsock {
            uds_path: "/run/x/hvsock".into(),
            context_id: 3,
            port: 1024,
        });
        assert_eq!(
            AgentAddress::from_socket(&h).expect("hvsock").to_string(),
            "hvsock:/run/x/hvsock:1024"
        );
    }

    #[test]
    fn only_an_ok_line_lets_a_hybrid_connection_through() {
        assert!(check_hybrid_reply(b"OK 1073741824", 1024).is_ok());
        let err = check_hybrid_reply(b"ERR no listener", 1024).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains("CONNECT 1024"), "{err}");
        assert!(check_hybrid_reply(b"", 1024).is_err());
    }

    #[tokio::test]
    async fn hybrid_vsock_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hv.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut line = vec![0u8; "CONNECT 1024\n".len()];
            s.read_exact(&mut line).await.expect("read");
            assert_eq!(line, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nagent").await.expect("write");
        });
        let opened = open(&AgentAddress::HybridVsock { path, port: 1024 })
            .await
            .expect("connects");
        assert!(opened.duplicate.is_some(), "a hybrid vsock has a duplicate");
        let mut s = opened.stream;
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.expect("read");
        assert_eq!(&rest, b"agent");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn vsock_without_a_guest_fails_cleanly() {
        // Either the host has no vsock (EAFNOSUPPORT) or nobody listens:
        // an error, not a hang or a panic.
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            VsockStream::connect(u32::MAX - 1, 1024),
        )
        .await
        .expect("does not hang");
        assert!(r.is_err());
    }
}
