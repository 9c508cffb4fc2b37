//! `sandvisor-agent`: the guest agent, run as `/init` (PID 1) of the initrd
//! that `sandvisor image build` makes.
//!
//! As PID 1 it mounts proc, sys, dev, dev/pts, run and tmp; loads the
//! kernel modules of `/etc/sandvisor/modules.early` (what the agent channel
//! needs) before serving, then drivers for the devices present and
//! hot-plugged, by their aliases (see [`modules`]); reaps
//! every orphan; and logs to the console, each line prefixed
//! `sandvisor-agent:`. With `sandvisor.debug_console` on the kernel command
//! line it keeps a shell on the console (see [`console`]).
//!
//! It serves the sandvisor agent protocol (crate `sandvisor-proto`) on the
//! virtio-serial port `agent.channel.0` and, when the guest has vsock, on
//! vsock port 1024; with `agent.use_vsock=true` on the kernel command line,
//! on vsock only. Requests: health check, guest details, exec with
//! streamed output, onlining hot-plugged CPUs and memory, listing and
//! mounting block devices, setting the clock and powering off.
//!
//! # Building
//!
//! The initrd has no C library, so the agent must be linked statically.
//! There is no musl target here; glibc links statically with `crt-static`:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build --release -p sandvisor-agent --target x86_64-unknown-linux-gnu
//! ```
//!
//! The explicit `--target` keeps `RUSTFLAGS` away from build scripts and
//! proc-macros, which must stay dynamic. The agent uses nothing of glibc that
//! needs NSS or `dlopen`, which static glibc cannot do.
//!
//! Threads, not async: a handful of sessions and processes at a time do not
//! need a runtime, and the binary stays small.

mod channel;
mod console;
mod exec;
mod init;
mod log;
mod modules;
mod ops;
mod reaper;
mod server;
mod sys;

use std::sync::Arc;

use sandvisor_proto::DEBUG_CONSOLE_PARAM;

use crate::reaper::Reaper;
use crate::server::{Agent, ShutdownAction};

fn main() {
    let pid1 = std::process::id() == 1;
    // The kernel starts init with no PATH.
    std::env::set_var("PATH", init::DEFAULT_PATH);
    if pid1 {
        init::mount_base();
        init::enable_module_autoload();
        let (loaded, failed) = modules::load_early();
        log!("loaded {loaded} modules for the agent channel ({failed} failed)");
        modules::start_device_drivers();
        modules::follow_scsi_hotplug();
    }
    let reaper = Reaper::start();
    if init::cmdline_has(&init::cmdline(), DEBUG_CONSOLE_PARAM) {
        console::start(Arc::clone(&reaper));
    }
    let agent = Arc::new(Agent {
        reaper,
        shutdown: if pid1 {
            ShutdownAction::PowerOff
        } else {
            ShutdownAction::Ignore
        },
    });
    channel::start_vsock(Arc::clone(&agent));
    match channel::Channels::from_cmdline(&init::cmdline()) {
        channel::Channels::SerialAndVsock => channel::serve_serial(&agent),
        channel::Channels::VsockOnly => {
            log!("agent.use_vsock=true: serving vsock only");
            // The vsock threads serve; PID 1 must not return.
            loop {
                std::thread::park();
            }
        }
    }
}
