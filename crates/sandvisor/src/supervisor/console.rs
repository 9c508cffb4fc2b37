//! `sandvisor console`: a plain byte copy between the terminal and the VM's
//! console socket, until the escape byte (Ctrl-], as in telnet and virsh)
//! or until the VMM closes the socket.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Ctrl-]: the byte that detaches.
pub const ESCAPE: u8 = 0x1d;

/// Why a console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The user typed the escape byte.
    Detached,
    /// The VMM closed the console.
    Closed,
    /// The input ended.
    InputEnded,
}

/// Errors of a console session.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console socket refused the connection.
    #[error("cannot connect to console socket {path:?}")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Copying failed.
    #[error("console i/o failed")]
    Io(#[from] io::Error),
    /// The terminal could not be put in raw mode.
    #[error("cannot set the terminal to raw mode")]
    Terminal(#[source] nix::Error),
}

/// A terminal in raw mode, restored on drop.
#[derive(Debug)]
pub struct RawTerminal<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawTerminal<'fd> {
    /// Puts the terminal `fd` in raw mode; `None` when `fd` is not a
    /// terminal.
    ///
    /// # Errors
    /// [`ConsoleError::Terminal`] when a terminal refuses raw mode.
    pub fn enter(fd: BorrowedFd<'fd>) -> Result<Option<Self>, ConsoleError> {
        let saved = match termios::tcgetattr(fd) {
            Ok(t) => t,
            Err(nix::Error::ENOTTY) | Err(nix::Error::EINVAL) => return Ok(None),
            Err(e) => return Err(ConsoleError::Terminal(e)),
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(ConsoleError::Terminal)?;
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Copies `input` to the console socket at `socket` and the console to
/// `output`, until `escape` appears in the input, the input ends, or the
/// VMM closes the console.
///
/// `input` is read on a thread of its own, because a terminal cannot be
/// read without blocking; when the session ends that thread stays blocked
/// in its read until the next byte or the end of the process.
///
/// # Errors
/// [`ConsoleError`] when the socket refuses or a copy fails.
pub async fn attach<R, W>(
    socket: &Path,
    input: R,
    mut output: W,
    escape: u8,
) -> Result<ConsoleEnd, ConsoleError>
where
    R: Read + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ConsoleError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut from_vm, mut to_vm) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut input = input;
        let mut buf = [0u8; 4096];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                None => return Ok(ConsoleEnd::InputEnded),
                Some(bytes) => {
                    if let Some(at) = bytes.iter().position(|&b| b == escape) {
                        to_vm.write_all(&bytes[..at]).await?;
                        return Ok(ConsoleEnd::Detached);
                    }
                    to_vm.write_all(&bytes).await?;
                }
            },
            n = from_vm.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(ConsoleEnd::Closed);
                }
                output.write_all(&buf[..n]).await?;
                output.flush().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn copies_both_ways_and_detaches_on_escape() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("console.sock");
        let listener = UnixListener::bind(&path).expect("bound");
        let vm = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accepted");
            // The client may detach before the greeting goes out: then the
            // write meets a closed socket, which is no failure of attach.
            match s.write_all(b"login: ").await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => panic!("write: {e}"),
            }
            // The client detaches with the greeting possibly unread, and a
            // unix socket closed with unread data resets its peer: after
            // the bytes sent, a reset is the end of the stream too.
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            got
        });
        let input: &'static [u8] = b"root\n\x1dignored";
        let mut output = Vec::new();
        let end = attach(&path, input, &mut output, ESCAPE)
            .await
            .expect("session");
        assert_eq!(end, ConsoleEnd::Detached);
        let got = vm.await.expect("joined");
        assert_eq!(got, b"root\n");
        // The VM's greeting may or may not have been read before the escape.
        assert!(output.is_empty() || output == b"login: ");
    }

    #[tokio::test]
    async fn ends_when_the_vm_closes() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("console.sock");
        let listener = UnixListener::bind(&path).expect("bound");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accepted");
            s.write_all(b"bye\n").await.expect("written");
        });
        // An input that never ends, like an idle terminal.
        let (reader, _writer) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut output = Vec::new();
        let end = attach(&path, reader, &mut output, ESCAPE)
            .await
            .expect("session");
        assert_eq!(end, ConsoleEnd::Closed);
        assert_eq!(output, b"bye\n");
    }
}
