//! Finding a VMM binary, and asking it its version.
//!
//! [`find`] looks for a [`Binary`] in this order and takes the first
//! executable file:
//!
//! 1. the config's path (`path =` in Kata's `configuration.toml`), when set:
//!    then nothing else is tried, and a missing or non-executable file is an
//!    error naming it;
//! 2. `$SANDVISOR_VMM_DIR/<name>` ([`VMM_DIR_ENV`]), where tests and CI keep
//!    their VMM builds;
//! 3. each absolute directory of `PATH` (relative entries, including the
//!    empty one meaning the working directory, are skipped);
//! 4. where Kata installs it: `/usr/bin` for distribution packages and
//!    `/opt/kata/bin` (or `/opt/kata/libexec`) for kata-deploy;
//! 5. for a binary installed with `cargo install` ([`Binary::cargo_installed`],
//!    e.g. vhost-device-vsock), `$CARGO_HOME/bin` (or `$HOME/.cargo/bin`),
//!    which a service's or CI's `PATH` often lacks.
//!
//! The answer says where the binary came from ([`Source`]); the error when
//! none is found lists every place looked and why each failed. The search
//! itself is [`find_in`], a function of its inputs, so tests need not touch
//! the process environment.
//!
//! [`version`] runs `<binary> --version` under a deadline and returns the
//! first line, e.g. `cloud-hypervisor v54.0.0` or `Firecracker v1.17.0`.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::unistd::{access, AccessFlags};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};

use crate::hypervisor_type::HypervisorType;

/// The environment variable naming a directory of VMM binaries, searched
/// before `PATH`.
pub const VMM_DIR_ENV: &str = "SANDVISOR_VMM_DIR";

/// How long [`version`] waits when the caller has no better figure.
pub const DEFAULT_VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of each output stream [`version`] reads.
const VERSION_OUTPUT_LIMIT: u64 = 64 * 1024;

/// A binary a backend runs: its file name and where Kata installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    /// The file name looked for in [`VMM_DIR_ENV`] and `PATH`.
    pub name: &'static str,
    /// Kata's install paths, tried after `PATH` and in this order.
    pub kata_paths: &'static [&'static str],
    /// Whether it is installed with `cargo install`, so `$CARGO_HOME/bin` is
    /// searched last.
    pub cargo_installed: bool,
}

impl Binary {
    /// Cloud Hypervisor (`[hypervisor.clh] path`).
    pub const CLOUD_HYPERVISOR: Binary = Binary {
        name: "cloud-hypervisor",
        kata_paths: &[
            "/usr/bin/cloud-hypervisor",
            "/opt/kata/bin/cloud-hypervisor",
        ],
        cargo_installed: false,
    };
    /// Cloud Hypervisor's command-line API client. Kata does not install
    /// it, so only [`VMM_DIR_ENV`] and `PATH` are searched.
    pub const CH_REMOTE: Binary = Binary {
        name: "ch-remote",
        kata_paths: &[],
        cargo_installed: false,
    };
    /// Firecracker (`[hypervisor.firecracker] path`).
    pub const FIRECRACKER: Binary = Binary {
        name: "firecracker",
        kata_paths: &["/usr/bin/firecracker", "/opt/kata/bin/firecracker"],
        cargo_installed: false,
    };
    /// Firecracker's jailer (`[hypervisor.firecracker] jailer_path`).
    pub const JAILER: Binary = Binary {
        name: "jailer",
        kata_paths: &["/usr/bin/jailer", "/opt/kata/bin/jailer"],
        cargo_installed: false,
    };
    /// QEMU for x86-64 (`[hypervisor.qemu] path`).
    pub const QEMU: Binary = Binary {
        name: "qemu-system-x86_64",
        kata_paths: &[
            "/usr/bin/qemu-system-x86_64",
            "/opt/kata/bin/qemu-system-x86_64",
        ],
        cargo_installed: false,
    };
    /// ACRN's device model (`[hypervisor.acrn] path`).
    pub const ACRN_DM: Binary = Binary {
        name: "acrn-dm",
        kata_paths: &["/usr/bin/acrn-dm"],
        cargo_installed: false,
    };
    /// ACRN's control tool (`[hypervisor.acrn] ctlpath`).
    pub const ACRNCTL: Binary = Binary {
        name: "acrnctl",
        kata_paths: &["/usr/bin/acrnctl"],
        cargo_installed: false,
    };
    /// The virtio-fs daemon (`virtio_fs_daemon`).
    pub const VIRTIOFSD: Binary = Binary {
        name: "virtiofsd",
        kata_paths: &["/usr/libexec/virtiofsd", "/opt/kata/libexec/virtiofsd"],
        cargo_installed: false,
    };

    /// rust-vmm's vhost-user vsock daemon, which gives a QEMU guest a hybrid
    /// vsock on a host without `/dev/vhost-vsock`. It is a crates.io
    /// binary (`cargo install vhost-device-vsock`); Kata does not ship it.
    pub const VHOST_DEVICE_VSOCK: Binary = Binary {
        name: "vhost-device-vsock",
        kata_paths: &[],
        cargo_installed: true,
    };

    /// The VMM binary of backend `kind`, from its
    /// [`BackendFacts`](crate::backends::BackendFacts); `None` for the mock.
    pub fn for_backend(kind: HypervisorType) -> Option<Binary> {
        let facts = crate::backends::facts(kind);
        facts.binary.map(|name| Binary {
            name,
            kata_paths: facts.kata_paths,
            cargo_installed: false,
        })
    }
}

/// Where a binary was found, or looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The path the config names.
    Config,
    /// The directory [`VMM_DIR_ENV`] names.
    VmmDir,
    /// A directory of `PATH`.
    Path,
    /// One of Kata's install paths ([`Binary::kata_paths`]).
    KataDefault,
    /// Cargo's install directory, for [`Binary::cargo_installed`].
    CargoBin,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Config => "the config's path",
            Source::VmmDir => "$SANDVISOR_VMM_DIR",
            Source::Path => "PATH",
            Source::KataDefault => "Kata's default",
            Source::CargoBin => "cargo's bin directory",
        })
    }
}

/// A binary found: its path (as looked up, not canonicalised) and where it
/// came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The executable file.
    pub path: PathBuf,
    /// Which step of the search found it.
    pub source: Source,
}

/// Why a candidate path was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Nothing is there.
    Missing,
    /// Something is there but it is not a regular file (e.g. a directory).
    NotAFile,
    /// A file without execute permission for this process.
    NotExecutable,
    /// Its metadata cannot be read (e.g. a directory on the way is not
    /// searchable).
    Inaccessible(io::ErrorKind),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("does not exist"),
            Problem::NotAFile => f.write_str("is not a file"),
            Problem::NotExecutable => f.write_str("is not executable"),
            Problem::Inaccessible(kind) => write!(f, "cannot be read ({kind})"),
        }
    }
}

/// One place looked at and why it was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// The candidate path.
    pub path: PathBuf,
    /// Which step of the search it belongs to.
    pub source: Source,
    /// What was wrong with it.
    pub problem: Problem,
}

impl fmt::Display for Looked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}: {})",
            self.path.display(),
            self.source,
            self.problem
        )
    }
}

/// Errors of [`find`] and [`find_in`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The config names a path that cannot be used.
    #[error("configured {name} {} {problem}", path.display())]
    Configured {
        /// The binary's name.
        name: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        problem: Problem,
    },
    /// No step of the search found an executable file.
    #[error("{name} not found; looked at {}", list(looked))]
    NotFound {
        /// The binary's name.
        name: &'static str,
        /// Every place looked, in search order.
        looked: Vec<Looked>,
    },
}

fn list(looked: &[Looked]) -> String {
    if looked.is_empty() {
        return "nothing".to_owned();
    }
    looked
        .iter()
        .map(Looked::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The environment [`find_in`] reads: the values of [`VMM_DIR_ENV`] and
/// `PATH`, and cargo's bin directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchEnv {
    /// `$SANDVISOR_VMM_DIR`; unset or empty means no such step.
    pub vmm_dir: Option<OsString>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, or
    /// `$HOME/.cargo/bin`. `None` (or a relative path) means no such step.
    pub cargo_bin: Option<PathBuf>,
}

impl SearchEnv {
    /// The values in this process's environment.
    pub fn from_process() -> Self {
        Self {
            vmm_dir: std::env::var_os(VMM_DIR_ENV),
            path: std::env::var_os("PATH"),
            cargo_bin: cargo_bin(
                std::env::var_os("CARGO_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            ),
        }
    }
}

/// Cargo's bin directory given `$CARGO_HOME` and `$HOME`, as cargo picks
/// it: `$CARGO_HOME/bin` when set and not empty, else `$HOME/.cargo/bin`.
fn cargo_bin(
    cargo_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    match cargo_home.filter(|h| !h.is_empty()) {
        Some(h) => Some(Path::new(h).join("bin")),
        None => home
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(h).join(".cargo").join("bin")),
    }
}

/// Finds `binary` with this process's environment; see the module docs for
/// the order. `configured` is the config's path for it, if any.
///
/// # Errors
///
/// [`LookupError::Configured`] when `configured` is set but is not an
/// executable file; [`LookupError::NotFound`] when no step finds one.
pub fn find(binary: &Binary, configured: Option<&Path>) -> Result<Found, LookupError> {
    find_in(binary, configured, &SearchEnv::from_process())
}

/// [`find`] with the environment given as `env`.
///
/// # Errors
///
/// As for [`find`].
pub fn find_in(
    binary: &Binary,
    configured: Option<&Path>,
    env: &SearchEnv,
) -> Result<Found, LookupError> {
    let kata = binary.kata_paths.iter().map(PathBuf::from);
    let cargo = env
        .cargo_bin
        .as_ref()
        .filter(|dir| binary.cargo_installed && dir.is_absolute())
        .map(|dir| (dir.join(binary.name), Source::CargoBin));
    let last = kata.map(|p| (p, Source::KataDefault)).chain(cargo);
    search(binary.name, configured, env, last)
}

/// The search proper, over the candidates the inputs give.
fn search(
    name: &'static str,
    configured: Option<&Path>,
    env: &SearchEnv,
    last: impl IntoIterator<Item = (PathBuf, Source)>,
) -> Result<Found, LookupError> {
    if let Some(path) = configured {
        return match check(path) {
            Ok(()) => Ok(Found {
                path: path.to_owned(),
                source: Source::Config,
            }),
            Err(problem) => Err(LookupError::Configured {
                name,
                path: path.to_owned(),
                problem,
            }),
        };
    }
    let mut looked: Vec<Looked> = Vec::new();
    for (path, source) in candidates(name, env, last) {
        if looked.iter().any(|l| l.path == path) {
            continue;
        }
        match check(&path) {
            Ok(()) => return Ok(Found { path, source }),
            Err(problem) => looked.push(Looked {
                path,
                source,
                problem,
            }),
        }
    }
    Err(LookupError::NotFound { name, looked })
}

/// Steps 2 to 5 of the search, in order; `last` holds steps 4 and 5.
fn candidates(
    name: &str,
    env: &SearchEnv,
    last: impl IntoIterator<Item = (PathBuf, Source)>,
) -> Vec<(PathBuf, Source)> {
    let mut out = Vec::new();
    if let Some(dir) = env.vmm_dir.as_ref().filter(|d| !d.is_empty()) {
        out.push((Path::new(dir).join(name), Source::VmmDir));
    }
    if let Some(path) = &env.path {
        out.extend(
            std::env::split_paths(path)
                .filter(|dir| dir.is_absolute())
                .map(|dir| (dir.join(name), Source::Path)),
        );
    }
    out.extend(last);
    out
}

/// Whether `path` is a regular file (after symlinks) this process may
/// execute.
fn check(path: &Path) -> Result<(), Problem> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Problem::Missing),
        Err(e) => return Err(Problem::Inaccessible(e.kind())),
    };
    if !meta.is_file() {
        return Err(Problem::NotAFile);
    }
    access(path, AccessFlags::X_OK).map_err(|_| Problem::NotExecutable)
}

/// Errors of [`version`].
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The binary could not be started.
    #[error("cannot run {} --version", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for it or reading its output failed.
    #[error("cannot read the output of {} --version", path.display())]
    Io {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It did not exit within the deadline; it was killed.
    #[error("{} --version did not answer within {timeout:?}", path.display())]
    Timeout {
        /// The binary.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("{} --version failed ({status}): {message}", path.display())]
    Failed {
        /// The binary.
        path: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The first line of its error output (or of its output).
        message: String,
    },
    /// It exited successfully but printed nothing.
    #[error("{} --version printed nothing", path.display())]
    Empty {
        /// The binary.
        path: PathBuf,
    },
}

/// Runs `<path> --version` and returns the first non-empty line it prints
/// (on standard output, or on standard error when standard output is
/// empty), trimmed. The child gets no standard input; if it has not exited
/// within `timeout` it is killed and reaped.
///
/// # Errors
///
/// [`VersionError::Spawn`] if it cannot be started, [`VersionError::Timeout`]
/// if it overruns, [`VersionError::Failed`] if it exits unsuccessfully,
/// [`VersionError::Empty`] if it prints nothing, [`VersionError::Io`] if
/// its output cannot be read.
pub async fn version(path: &Path, timeout: Duration) -> Result<String, VersionError> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| VersionError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    let outcome = tokio::time::timeout(timeout, collect(&mut child)).await;
    let (status, stdout, stderr) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(source)) => {
            reap(&mut child, timeout).await;
            return Err(VersionError::Io {
                path: path.to_owned(),
                source,
            });
        }
        Err(_) => {
            reap(&mut child, timeout).await;
            return Err(VersionError::Timeout {
                path: path.to_owned(),
                timeout,
            });
        }
    };
    let first = first_line(&stdout).or_else(|| first_line(&stderr));
    if !status.success() {
        return Err(VersionError::Failed {
            path: path.to_owned(),
            status,
            message: first_line(&stderr)
                .or_else(|| first_line(&stdout))
                .unwrap_or_default(),
        });
    }
    first.ok_or_else(|| VersionError::Empty {
        path: path.to_owned(),
    })
}

/// Reads both output streams (up to [`VERSION_OUTPUT_LIMIT`] each) and
/// waits for the exit.
async fn collect(child: &mut Child) -> io::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), child.wait());
    Ok((status?, out?, err?))
}

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(stream) = stream {
        stream
            .take(VERSION_OUTPUT_LIMIT)
            .read_to_end(&mut buf)
            .await?;
    }
    Ok(buf)
}

/// Kills `child` and waits (at most `timeout`) for it to be reaped.
async fn reap(child: &mut Child, timeout: Duration) {
    // Either may fail only because the child is already gone.
    let _ = child.start_kill();
    let _ = tokio::time::timeout(timeout, child.wait()).await;
}

fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
