//! What `run` and `exec` share about the process they start: its
//! environment, directory and user, and its I/O: stdin streamed as it
//! comes, a terminal in raw mode while a `-t` command runs (restored on
//! every way out), signals and window-size changes passed on, and the
//! shell's exit codes.

use std::io::IsTerminal as _;
use std::io::Read as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;
use rustix::termios::{self, OptionalActions, Termios};
use sandvisor::agent::{Control, ExecInput};
use sandvisor_proto::WindowSize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

/// Stdin is read and sent in chunks of at most this size.
const READ_CHUNK: usize = 256 * 1024;

/// The process's environment, directory, user and I/O: the flags `run` and
/// `exec` share.
#[derive(Debug, Clone, Default, Args)]
pub struct IoArgs {
    /// Set an environment variable in the guest; `KEY` alone takes the
    /// host's value. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file: one `KEY=VALUE` per line,
    /// `#` comments; `-e` wins over it.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory in the guest.
    #[arg(short = 'w', long, visible_alias = "cwd", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user id (and group id) in the guest.
    #[arg(short = 'u', long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<User>,
    /// Stream this command's stdin to the process as it comes, including
    /// from a terminal.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal in the guest; this terminal goes raw
    /// while it runs, so Ctrl-C and the keys reach the process.
    #[arg(short = 't', long)]
    pub tty: bool,
}

/// A guest user and group, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The group id; the user id's number when unset.
    pub gid: Option<u32>,
}

/// Parses `UID[:GID]`; `root` is 0.
fn parse_user(s: &str) -> Result<User, String> {
    let number = |part: &str, what: &str| -> Result<u32, String> {
        if part == "root" {
            return Ok(0);
        }
        part.parse::<u32>().map_err(|_| {
            format!("{what} {part:?} is not a number: the guest has no user names; give UID[:GID]")
        })
    };
    match s.split_once(':') {
        Some((u, g)) => Ok(User {
            uid: number(u, "user")?,
            gid: Some(number(g, "group")?),
        }),
        None => Ok(User {
            uid: number(s, "user")?,
            gid: None,
        }),
    }
}

/// Errors in the flags and in setting the terminal up.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// An `-e` or `--env-file` entry without a name.
    #[error("environment entry {entry:?} has no name: give KEY=VALUE")]
    EnvEntry {
        /// The entry.
        entry: String,
    },
    /// The env file cannot be read.
    #[error("cannot read the env file {path:?}")]
    EnvFile {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `-t` without a terminal to make raw.
    #[error("-t needs a terminal on stdin; leave -t out to pipe data (-i)")]
    NotATerminal,
    /// The terminal's settings cannot be read or changed.
    #[error("cannot set the terminal up")]
    Terminal(#[source] std::io::Error),
}

/// An environment entry: `KEY=VALUE` as it is, `KEY` alone with the
/// host's value (left out when the host has none), as docker does.
fn env_entry(
    entry: &str,
    host: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, StdioError> {
    let name = entry.split_once('=').map_or(entry, |(k, _)| k);
    if name.is_empty() {
        return Err(StdioError::EnvEntry {
            entry: entry.to_string(),
        });
    }
    if entry.contains('=') {
        return Ok(Some(entry.to_string()));
    }
    Ok(host(entry).map(|v| format!("{entry}={v}")))
}

/// The entries of an env file: blank lines and `#` comments skipped.
fn env_file_entries(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
}

fn host_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl IoArgs {
    /// The process's environment: the env files' entries, then `-e`'s, so
    /// that a later one wins.
    ///
    /// # Errors
    /// An unreadable file or an entry without a name.
    pub fn environment(&self) -> Result<Vec<String>, StdioError> {
        let mut env = Vec::new();
        for path in &self.env_file {
            let text = read_env_file(path)?;
            for entry in env_file_entries(&text) {
                env.extend(env_entry(entry, host_env)?);
            }
        }
        for entry in &self.env {
            env.extend(env_entry(entry, host_env)?);
        }
        Ok(env)
    }

    /// The user id and group id asked for.
    pub fn uid_gid(&self) -> (Option<u32>, Option<u32>) {
        match self.user {
            Some(u) => (Some(u.uid), u.gid),
            None => (None, None),
        }
    }

    /// Whether stdin goes to the process: with `-i` or `-t`, or, when
    /// `piped_by_default`, whenever it is not a terminal.
    pub fn streams_stdin(&self, piped_by_default: bool) -> bool {
        self.interactive || self.tty || (piped_by_default && !std::io::stdin().is_terminal())
    }
}

fn read_env_file(path: &Path) -> Result<String, StdioError> {
    std::fs::read_to_string(path).map_err(|source| StdioError::EnvFile {
        path: path.to_path_buf(),
        source,
    })
}

/// This process's terminal, made raw while the guest process runs and put
/// back as it was when dropped, [`Terminal::restore`]d, or on any way out
/// that unwinds. Signals that would end this process are handled and
/// passed on instead (see [`signals`]), so they end it through here too.
#[derive(Debug, Clone)]
pub struct Terminal {
    inner: Arc<Mutex<TerminalState>>,
}

#[derive(Debug)]
struct TerminalState {
    saved: Termios,
    raw: bool,
}

impl Terminal {
    /// Remembers the settings of the terminal on stdin.
    ///
    /// # Errors
    /// [`StdioError::NotATerminal`] when stdin is none.
    pub fn open() -> Result<Terminal, StdioError> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(StdioError::NotATerminal);
        }
        let saved =
            termios::tcgetattr(stdin.as_fd()).map_err(|e| StdioError::Terminal(e.into()))?;
        Ok(Terminal {
            inner: Arc::new(Mutex::new(TerminalState { saved, raw: false })),
        })
    }

    /// Its size now.
    pub fn size(&self) -> Option<WindowSize> {
        window_size()
    }

    /// Makes it raw: every key goes to the guest as typed, and the guest's
    /// terminal does the echo and the line editing.
    ///
    /// # Errors
    /// When the settings cannot be changed.
    pub fn make_raw(&self) -> Result<(), StdioError> {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut raw = state.saved.clone();
        raw.make_raw();
        termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Drain, &raw)
            .map_err(|e| StdioError::Terminal(e.into()))?;
        state.raw = true;
        Ok(())
    }

    /// Puts the saved settings back, when it was made raw.
    pub fn restore(&self) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.raw {
            if let Err(e) =
                termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &state.saved)
            {
                eprintln!("sandvisor: cannot restore the terminal ({e}); run `stty sane`");
            }
            state.raw = false;
        }
    }
}

impl Drop for TerminalState {
    fn drop(&mut self) {
        if self.raw {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
        }
    }
}

/// The size of the terminal on stdout, else stdin.
fn window_size() -> Option<WindowSize> {
    let out = std::io::stdout();
    let inp = std::io::stdin();
    let ws = termios::tcgetwinsize(out.as_fd())
        .or_else(|_| termios::tcgetwinsize(inp.as_fd()))
        .ok()?;
    Some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Reads stdin on a thread of its own (a read of a terminal cannot be
/// cancelled, and must not hold the runtime up at exit) and hands chunks
/// over as they come; the channel closes at the end of input. The bounded
/// channel makes reading wait while the guest catches up.
pub fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("stdin ended: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read stdin: {e}");
    }
    rx
}

/// Passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on as [`Control::Signal`]s
/// and, with a terminal, SIGWINCH as [`Control::Resize`] with the new
/// size. Handling them keeps this process alive to tear down and restore
/// the terminal; the library decides what each means (before the command
/// runs: stop booting).
pub fn signals(tty: bool) -> std::io::Result<mpsc::Receiver<Control>> {
    let (tx, rx) = mpsc::channel(16);
    let mut streams = Vec::new();
    for (kind, number) in [
        (SignalKind::interrupt(), 2),
        (SignalKind::terminate(), 15),
        (SignalKind::hangup(), 1),
        (SignalKind::quit(), 3),
    ] {
        streams.push((signal(kind)?, number));
    }
    let mut winch = if tty {
        Some(signal(SignalKind::window_change())?)
    } else {
        None
    };
    for (mut stream, number) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(Control::Signal(number)).await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some(mut winch) = winch.take() {
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some(size) = window_size() {
                    if tx.send(Control::Resize(size)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    Ok(rx)
}

/// The process's I/O for `run` or `exec`: stdin when it is streamed, the
/// signals, and the terminal (made raw once the process has started).
#[derive(Debug)]
pub struct ProcessIo {
    /// What feeds the process.
    pub input: ExecInput,
    /// The terminal, with `-t`.
    pub terminal: Option<Terminal>,
    /// Its size at the start, with `-t`.
    pub size: Option<WindowSize>,
}

impl ProcessIo {
    /// Sets the I/O up as `args` say; call it inside the runtime.
    /// `piped_by_default`: stdin that is not a terminal goes to the process
    /// without `-i` (`run` does so).
    ///
    /// # Errors
    /// `-t` without a terminal, or signals that cannot be handled.
    pub fn setup(
        args: &IoArgs,
        piped_by_default: bool,
    ) -> Result<ProcessIo, Box<dyn std::error::Error>> {
        let terminal = if args.tty {
            Some(Terminal::open()?)
        } else {
            None
        };
        let size = terminal
            .as_ref()
            .map(|t| t.size().unwrap_or(WindowSize { rows: 24, cols: 80 }));
        let stdin = args.streams_stdin(piped_by_default).then(stdin_chunks);
        let control = signals(args.tty)?;
        let started = terminal.clone().map(|term| {
            let (tx, rx) = oneshot::channel::<u32>();
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    if let Err(e) = term.make_raw() {
                        tracing::warn!("{e}");
                    }
                }
            });
            tx
        });
        Ok(ProcessIo {
            input: ExecInput {
                stdin,
                control: Some(control),
                started,
            },
            terminal,
            size,
        })
    }

    /// Restores the terminal; call before printing anything at the end.
    pub fn finish(&self) {
        if let Some(t) = &self.terminal {
            t.restore();
        }
    }
}

/// An exit code from the shell's number: clamped to 0..=255.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).expect("clamped to 0..=255"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numbers_or_root() {
        assert_eq!(
            parse_user("1000:1001"),
            Ok(User {
                uid: 1000,
                gid: Some(1001)
            })
        );
        assert_eq!(
            parse_user("1000"),
            Ok(User {
                uid: 1000,
                gid: None
            })
        );
        assert_eq!(parse_user("root"), Ok(User { uid: 0, gid: None }));
        let err = parse_user("alice").expect_err("no names");
        assert!(
            err.contains("\"alice\"") && err.contains("UID[:GID]"),
            "{err}"
        );
        assert!(parse_user("1:x").is_err());
        assert!(parse_user("-1").is_err());
    }

    #[test]
    fn env_entries_as_docker_reads_them() {
        let host = |k: &str| (k == "HOSTVAR").then(|| "from-host".to_string());
        assert_eq!(env_entry("A=b", host).expect("ok"), Some("A=b".into()));
        assert_eq!(env_entry("A=", host).expect("ok"), Some("A=".into()));
        assert_eq!(env_entry("A=b=c", host).expect("ok"), Some("A=b=c".into()));
        assert_eq!(
            env_entry("HOSTVAR", host).expect("ok"),
            Some("HOSTVAR=from-host".into())
        );
        assert_eq!(env_entry("UNSET", host).expect("ok"), None);
        assert!(matches!(
            env_entry("=x", host),
            Err(StdioError::EnvEntry { .. })
        ));
    }

    #[test]
    fn env_files_skip_comments_and_blank_lines_and_dash_e_wins() {
        let text = "# a comment\nA=1\n\n   \n  B=two words\nA=3\n";
        assert_eq!(
            env_file_entries(text).collect::<Vec<_>>(),
            vec!["A=1", "B=two words", "A=3"]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("env");
        std::fs::write(&file, text).expect("write");
        let args = IoArgs {
            env: vec!["A=from-flag".into()],
            env_file: vec![file],
            ..IoArgs::default()
        };
        let env = args.environment().expect("readable");
        assert_eq!(env, vec!["A=1", "B=two words", "A=3", "A=from-flag"]);
        let missing = IoArgs {
            env_file: vec![dir.path().join("nope")],
            ..IoArgs::default()
        };
        let err = missing.environment().expect_err("missing file");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
