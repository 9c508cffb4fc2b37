//! Where log lines go: with `--log FILTER` (or `SANDVISOR_LOG`) to stderr;
//! without, warnings and errors go to `<runtime>/sandvisor.log` and stderr
//! carries only what the command prints and its error chain, once.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Mutex;

/// The filter used when none is given.
pub const DEFAULT_FILTER: &str = "warn";

/// The log file used when no filter is given.
pub fn default_log_file() -> PathBuf {
    sandvisor::paths::runtime_dir().join("sandvisor.log")
}

/// Installs the subscriber for `filter` (`None`: the default).
pub fn init(filter: Option<&str>) {
    let builder = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(
        filter.unwrap_or(DEFAULT_FILTER),
    ));
    if filter.is_some() {
        builder
            .with_writer(std::io::stderr)
            // Supervisors log to a file: colours only on a terminal.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        return;
    }
    // A runtime directory that cannot be made or is not ours is reported by
    // the command that needs it; the log lines are then dropped.
    let file = sandvisor::paths::prepare_runtime_dir().ok().and_then(|_| {
        // 0600 as every file in the runtime directory: the log names
        // sandboxes and may quote their consoles.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(default_log_file())
            .ok()
    });
    match file {
        Some(f) => builder.with_writer(Mutex::new(f)).with_ansi(false).init(),
        None => builder.with_writer(std::io::sink).init(),
    }
}
