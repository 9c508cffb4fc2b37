//! The debug console: an interactive shell on `/dev/console`, when the
//! kernel command line holds `sandvisor.debug_console`.
//!
//! The contract others rely on: the agent prints the exact line
//! `sandvisor: debug console ready` on the console, then starts `/bin/sh`
//! there, and does both again whenever the shell exits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sandvisor_proto::DEBUG_CONSOLE_READY;

use crate::init::DEFAULT_PATH;
use crate::log;
use crate::reaper::Reaper;

const CONSOLE: &str = "/dev/console";

/// Starts the debug console thread.
pub fn start(reaper: Arc<Reaper>) {
    let spawned = thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || {
            // The shell's user expects the devices to have drivers.
            crate::modules::wait_loaded();
            loop {
                if let Err(e) = run_shell(&reaper) {
                    log!("debug console: {e}");
                }
                // Keeps a shell that dies at once from spinning.
                thread::sleep(Duration::from_millis(500));
            }
        });
    if let Err(e) = spawned {
        log!("cannot start the debug console thread: {e}");
    }
}

fn open_console() -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(CONSOLE)
}

fn run_shell(reaper: &Reaper) -> std::io::Result<()> {
    let console = open_console()?;
    {
        let mut out = &console;
        writeln!(out, "{DEBUG_CONSOLE_READY}")?;
    }
    // A new session, and busybox's cttyhack: /dev/console cannot be a
    // controlling terminal, so cttyhack reopens the real one (ttyS0) and
    // job control and Ctrl-C work.
    let mut cmd = if Path::new("/usr/bin/setsid").exists() && Path::new("/bin/cttyhack").exists() {
        let mut c = Command::new("/usr/bin/setsid");
        c.args(["/bin/cttyhack", "/bin/sh"]);
        c
    } else {
        Command::new("/bin/sh")
    };
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .current_dir("/")
        .stdin(Stdio::from(console.try_clone()?))
        .stdout(Stdio::from(console.try_clone()?))
        .stderr(Stdio::from(console));
    let (_child, exited) = reaper.spawn(&mut cmd)?;
    if let Ok(status) = exited.recv() {
        log!("debug console shell ended ({status:?}); starting another");
    }
    Ok(())
}
