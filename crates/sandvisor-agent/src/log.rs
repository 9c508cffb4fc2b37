//! Logging to the console: one line per message, prefixed
//! `sandvisor-agent:`. As PID 1 the kernel gives the agent `/dev/console` as
//! stderr.

use std::fmt;
use std::io::Write;

/// Writes one log line on stderr.
pub fn write(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    // Nothing can be done when the console is gone.
    let _ = writeln!(err, "sandvisor-agent: {args}");
}

/// Logs a line on the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}
