//! A unix stream whose next write carries file descriptors.
//!
//! hyper owns the connection's stream, so fds cannot be sent beside it:
//! [`FdStream`] sends them itself, as `SCM_RIGHTS` on the first write
//! after they were set, which holds the first bytes of the request.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// The fds the next write carries, shared by a client and its connection.
#[derive(Debug, Clone, Default)]
pub(super) struct PendingFds(Arc<Mutex<Vec<OwnedFd>>>);

impl PendingFds {
    fn lock(&self) -> MutexGuard<'_, Vec<OwnedFd>> {
        // The vector stays whole whatever panicked while it was held.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `fds` go with the next write.
    pub(super) fn set(&self, fds: Vec<OwnedFd>) {
        *self.lock() = fds;
    }

    /// Drops fds that did not go (the request failed before it was written).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// A [`UnixStream`] that sends the pending fds with its next write.
#[derive(Debug)]
pub(super) struct FdStream {
    stream: UnixStream,
    pending: PendingFds,
}

impl FdStream {
    pub(super) fn new(stream: UnixStream, pending: PendingFds) -> Self {
        FdStream { stream, pending }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut pending = self.pending.lock();
        if pending.is_empty() {
            drop(pending);
            return Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        }
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                send_with_fds(self.stream.as_fd(), bufs, &pending)
            });
            match sent {
                Ok(written) => {
                    // The peer holds its own copies now.
                    pending.clear();
                    return Poll::Ready(Ok(written));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

/// One `sendmsg` of `bufs` with `fds` as `SCM_RIGHTS` (also QMP's
/// `getfd`).
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[OwnedFd],
) -> io::Result<usize> {
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds do not fit one control message", fds.len()),
        ));
    }
    Ok(rustix::net::sendmsg(
        socket,
        bufs,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
