//! Where the host reaches the agent: the virtio-serial port
//! `agent.channel.0`, and vsock port 1024 when the guest has vsock.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use sandvisor_proto::{SERIAL_PORT_NAME, USE_VSOCK_PARAM, VSOCK_PORT};

use crate::server::Agent;
use crate::{log, sys};

const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The `/dev/vportNpM` whose port name is `name`.
fn find_serial_port(name: &str) -> Option<PathBuf> {
    fs::read_dir(VIRTIO_PORTS)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let port_name = fs::read_to_string(entry.path().join("name")).ok()?;
            (port_name.trim() == name).then(|| PathBuf::from("/dev").join(entry.file_name()))
        })
}

/// How often a port without a host is looked at again.
const HOST_POLL: Duration = Duration::from_millis(10);

/// Waits until the host end of the port is connected. While it is not,
/// virtio-console reports `POLLHUP` at once, together with `POLLIN` (a read
/// would not block: it returns end of file), so `poll` cannot wait for
/// the host: this looks every [`HOST_POLL`].
fn wait_for_host(port: &File) {
    loop {
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) => return,
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if !revents.contains(PollFlags::POLLHUP) {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => log!("poll on the agent port failed: {e}"),
        }
        thread::sleep(HOST_POLL);
    }
}

/// How long the port is looked for every [`PORT_POLL_FAST`] before the
/// agent says so and looks only every [`PORT_POLL_SLOW`].
const PORT_FAST_FOR: Duration = Duration::from_secs(5);
/// The port is named by the host a moment after the driver binds; every
/// millisecond here is boot time.
const PORT_POLL_FAST: Duration = Duration::from_millis(2);
/// A port that has not come in [`PORT_FAST_FOR`] is late (or not coming):
/// looking for it must not keep a vCPU busy.
const PORT_POLL_SLOW: Duration = Duration::from_secs(1);

/// How long to wait before looking for the port again, `waited` after the
/// first look.
fn port_poll_interval(waited: Duration) -> Duration {
    if waited < PORT_FAST_FOR {
        PORT_POLL_FAST
    } else {
        PORT_POLL_SLOW
    }
}

/// Which channels the host asked for on the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// `agent.use_vsock=true`: vsock only; there is no virtio-serial port
    /// to look for.
    VsockOnly,
    /// The virtio-serial port, and vsock when the guest has it.
    SerialAndVsock,
}

impl Channels {
    /// The channels a kernel command line asks for.
    pub fn from_cmdline(cmdline: &str) -> Self {
        match crate::init::cmdline_value(cmdline, USE_VSOCK_PARAM) {
            Some("true" | "1" | "on" | "yes") => Self::VsockOnly,
            _ => Self::SerialAndVsock,
        }
    }
}

/// Serves the virtio-serial port for ever: one session per host
/// connection.
pub fn serve_serial(agent: &Agent) {
    let started = Instant::now();
    let mut warned = false;
    let path = loop {
        if let Some(path) = find_serial_port(SERIAL_PORT_NAME) {
            break path;
        }
        let waited = started.elapsed();
        if !warned && waited >= PORT_FAST_FOR {
            log!("no virtio-serial port named {SERIAL_PORT_NAME} yet; still looking, every {PORT_POLL_SLOW:?}");
            warned = true;
        }
        thread::sleep(port_poll_interval(waited));
    };
    log!("serving {SERIAL_PORT_NAME} on {}", path.display());
    loop {
        let port = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(p) => p,
            Err(e) => {
                log!("cannot open {}: {e}", path.display());
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            wait_for_host(&port);
            let writer = match port.try_clone() {
                Ok(w) => w,
                Err(e) => {
                    log!("cannot clone the port handle: {e}");
                    break;
                }
            };
            // Returns when the host disconnects: the port reads EOF.
            agent.serve(&port, writer);
        }
    }
}

/// Listens on vsock port [`VSOCK_PORT`] in a thread, one thread per
/// connection, once the vsock modules are loaded. Without vsock in the
/// guest, logs and ends.
pub fn start_vsock(agent: Arc<Agent>) {
    let spawned = thread::Builder::new()
        .name("vsock-listen".into())
        .spawn(move || {
            crate::modules::wait_loaded();
            listen_vsock(agent);
        });
    if let Err(e) = spawned {
        log!("cannot start the vsock thread: {e}");
    }
}

fn listen_vsock(agent: Arc<Agent>) {
    let listener = match socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            log!("no vsock ({e}); serving virtio-serial only");
            return;
        }
    };
    let addr = VsockAddr::new(nix::libc::VMADDR_CID_ANY, VSOCK_PORT);
    if let Err(e) = bind(std::os::fd::AsRawFd::as_raw_fd(&listener), &addr) {
        log!("cannot bind vsock port {VSOCK_PORT} ({e}); serving virtio-serial only");
        return;
    }
    let backlog = Backlog::new(8).unwrap_or(Backlog::MAXCONN);
    if let Err(e) = listen(&listener, backlog) {
        log!("cannot listen on vsock port {VSOCK_PORT} ({e}); serving virtio-serial only");
        return;
    }
    log!("listening on vsock port {VSOCK_PORT}");
    let spawned = thread::Builder::new()
        .name("vsock".into())
        .spawn(move || loop {
            let conn = match sys::accept(&listener) {
                Ok(fd) => File::from(fd),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log!("vsock accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let agent = Arc::clone(&agent);
            let spawned = thread::Builder::new()
                .name("vsock-session".into())
                .spawn(move || match conn.try_clone() {
                    Ok(writer) => agent.serve(&conn, writer),
                    Err(e) => log!("cannot clone the vsock connection: {e}"),
                });
            if let Err(e) = spawned {
                log!("cannot start a vsock session thread: {e}");
            }
        });
    if let Err(e) = spawned {
        log!("cannot start the vsock thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_vsock_true_means_vsock_only() {
        let cases = [
            ("quiet panic=1 agent.use_vsock=true", Channels::VsockOnly),
            ("agent.use_vsock=false", Channels::SerialAndVsock),
            ("quiet", Channels::SerialAndVsock),
            // The last value wins, as the config's kernel_params come last.
            (
                "agent.use_vsock=true agent.use_vsock=false",
                Channels::SerialAndVsock,
            ),
            (
                "agent.use_vsock=false agent.use_vsock=true",
                Channels::VsockOnly,
            ),
        ];
        for (cmdline, want) in cases {
            assert_eq!(Channels::from_cmdline(cmdline), want, "{cmdline}");
        }
    }

    #[test]
    fn the_port_is_looked_for_fast_then_slowly() {
        assert_eq!(port_poll_interval(Duration::ZERO), PORT_POLL_FAST);
        assert_eq!(
            port_poll_interval(PORT_FAST_FOR - Duration::from_millis(1)),
            PORT_POLL_FAST
        );
        assert_eq!(port_poll_interval(PORT_FAST_FOR), PORT_POLL_SLOW);
        assert_eq!(
            port_poll_interval(Duration::from_secs(3600)),
            PORT_POLL_SLOW
        );
    }
}
