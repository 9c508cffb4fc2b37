//! Firecracker's jailer, as pure functions: its command line and the jail's
//! layout.
//!
//! The jailer makes `<chroot base>/<exec name>/<id>/root`, copies
//! Firecracker there, makes `dev/kvm`, `dev/net/tun` and friends, chowns
//! the root to `--uid`/`--gid`, optionally joins `--netns` and cgroups,
//! pivots into the root and execs Firecracker with the arguments after
//! `--` (upstream `docs/jailer.md`). Firecracker then sees only the jail:
//! every file handed to it (kernel, initrd, drives, logs) is placed under
//! the root first, and every path in an API request is the path *inside*
//! the jail. [`Jail`] maps between the two.
//!
//! Checked here, with errors naming the value: the id (1 to 64 letters,
//! digits and hyphens, as the jailer's own validator), and the host paths
//! of the jail's unix sockets (at most 107 bytes, which a long chroot base
//! and id easily pass).

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use crate::defaults::MAX_SOCKET_PATH_LEN;

/// The jailer's longest id.
pub const MAX_ID_LEN: usize = 64;
/// The API socket, inside the jail.
pub const API_SOCKET: &str = "/run/firecracker.socket";
/// The uid and gid Firecracker runs as in the jail when the config names
/// none: `nobody`/`nogroup`, never root unless asked for.
pub const DEFAULT_JAIL_ID: u32 = 65534;

/// Errors from planning a jail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JailError {
    /// The id is empty or too long for the jailer.
    #[error("jailer id {id:?} is {len} characters long: it must be 1 to {MAX_ID_LEN}")]
    IdLength {
        /// The id.
        id: String,
        /// Its length.
        len: usize,
    },
    /// The id has a character the jailer refuses.
    #[error(
        "jailer id {id:?} has {ch:?} at position {pos}: only letters, digits and '-' are allowed"
    )]
    IdChar {
        /// The id.
        id: String,
        /// The character.
        ch: char,
        /// Its position.
        pos: usize,
    },
    /// A socket in the jail would not fit in a unix socket address.
    #[error("jail socket {path:?} is {len} bytes long, over the {max}-byte limit of unix sockets: use a shorter chroot base or sandbox id")]
    SocketPathTooLong {
        /// The host path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The Firecracker binary has no file name.
    #[error("firecracker binary path {0:?} has no file name")]
    ExecName(PathBuf),
    /// A path inside the jail that is not absolute or climbs out.
    #[error("path {0:?} is not an absolute path inside the jail")]
    BadJailPath(PathBuf),
}

/// Which cgroup hierarchy the jailer writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupVersion {
    /// cgroup v1 (the jailer's default).
    #[default]
    V1,
    /// The unified hierarchy.
    V2,
}

/// What the jailer is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The jailer binary.
    pub jailer: PathBuf,
    /// The Firecracker binary it copies into the jail and execs.
    pub exec_file: PathBuf,
    /// The VM id (`--id`), also the jail directory's name.
    pub id: String,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// Where jails are made.
    pub chroot_base: PathBuf,
    /// A network namespace to join.
    pub netns: Option<PathBuf>,
    /// The cgroup hierarchy; it matters only with `cgroups`.
    pub cgroup_version: CgroupVersion,
    /// `<file>=<value>` cgroup settings, such as `cpuset.cpus=0`.
    pub cgroups: Vec<String>,
    /// `<resource>=<value>` limits, such as `no-file=1024`.
    pub resource_limits: Vec<String>,
    /// Run Firecracker as init of a new pid namespace (its pid is then
    /// read from the pid file; it ignores SIGTERM there).
    pub new_pid_ns: bool,
}

/// A jail's layout on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    dir: PathBuf,
    root: PathBuf,
    exec_name: String,
}

/// Checks `id` as the jailer does.
///
/// # Errors
/// [`JailError::IdLength`] or [`JailError::IdChar`].
pub fn check_id(id: &str) -> Result<(), JailError> {
    let len = id.chars().count();
    if len == 0 || len > MAX_ID_LEN {
        return Err(JailError::IdLength {
            id: id.to_string(),
            len,
        });
    }
    if let Some((pos, ch)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '-'))
    {
        return Err(JailError::IdChar {
            id: id.to_string(),
            ch,
            pos,
        });
    }
    Ok(())
}

impl Jail {
    /// The layout for `spec`: `<chroot base>/<exec name>/<id>/root`.
    ///
    /// # Errors
    /// A bad id, a Firecracker path without a file name, or an API socket
    /// path over the unix socket limit.
    pub fn new(spec: &JailSpec) -> Result<Jail, JailError> {
        check_id(&spec.id)?;
        let exec_name = spec
            .exec_file
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| JailError::ExecName(spec.exec_file.clone()))?
            .to_string();
        let dir = spec.chroot_base.join(&exec_name).join(&spec.id);
        let root = dir.join("root");
        let jail = Jail {
            dir,
            root,
            exec_name,
        };
        jail.socket_on_host(Path::new(API_SOCKET))?;
        Ok(jail)
    }

    /// `<chroot base>/<exec name>/<id>`: what cleanup removes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The jail's root, `/` for Firecracker.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pid file the jailer writes (`<root>/<exec name>.pid`).
    pub fn pid_file(&self) -> PathBuf {
        self.root.join(format!("{}.pid", self.exec_name))
    }

    /// Where `inside` (an absolute path in the jail) is on the host.
    ///
    /// # Errors
    /// [`JailError::BadJailPath`] for a relative path or one with `..`.
    pub fn host_path(&self, inside: &Path) -> Result<PathBuf, JailError> {
        let mut out = self.root.clone();
        let mut comps = inside.components();
        if comps.next() != Some(Component::RootDir) {
            return Err(JailError::BadJailPath(inside.to_path_buf()));
        }
        for c in comps {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                _ => return Err(JailError::BadJailPath(inside.to_path_buf())),
            }
        }
        Ok(out)
    }

    /// The host path of a unix socket at `inside`, checked against the
    /// unix socket limit.
    ///
    /// # Errors
    /// [`JailError::SocketPathTooLong`], or a bad path.
    pub fn socket_on_host(&self, inside: &Path) -> Result<PathBuf, JailError> {
        let path = self.host_path(inside)?;
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(JailError::SocketPathTooLong {
                path,
                len,
                max: MAX_SOCKET_PATH_LEN,
            });
        }
        Ok(path)
    }

    /// The API socket, as the host reaches it.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join(API_SOCKET.trim_start_matches('/'))
    }
}

/// The jailer's command line: program and arguments, with `fc_args` for
/// Firecracker after `--` (`--api-sock` is added first).
pub fn command(spec: &JailSpec, fc_args: &[String]) -> (PathBuf, Vec<String>) {
    let mut args: Vec<String> = vec![
        "--id".into(),
        spec.id.clone(),
        "--exec-file".into(),
        spec.exec_file.display().to_string(),
        "--uid".into(),
        spec.uid.to_string(),
        "--gid".into(),
        spec.gid.to_string(),
        "--chroot-base-dir".into(),
        spec.chroot_base.display().to_string(),
    ];
    if let Some(ns) = &spec.netns {
        args.extend(["--netns".into(), ns.display().to_string()]);
    }
    if !spec.cgroups.is_empty() {
        let v = match spec.cgroup_version {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        };
        args.extend(["--cgroup-version".into(), v.into()]);
        for c in &spec.cgroups {
            args.extend(["--cgroup".into(), c.clone()]);
        }
    }
    for r in &spec.resource_limits {
        args.extend(["--resource-limit".into(), r.clone()]);
    }
    if spec.new_pid_ns {
        args.push("--new-pid-ns".into());
    }
    args.extend(["--".into(), "--api-sock".into(), API_SOCKET.into()]);
    args.extend(fc_args.iter().cloned());
    (spec.jailer.clone(), args)
}

/// How a host file gets into the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link (same file system), else a copy: for files Firecracker
    /// only reads (kernel, initrd, read-only drives).
    LinkOrCopy,
    /// A hard link, else a bind mount: for drives Firecracker writes, which
    /// must stay the caller's file.
    LinkOrBind,
}

/// One host file placed in the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailedFile {
    /// The caller's file.
    pub host: PathBuf,
    /// Its path inside the jail, as API requests name it.
    pub inside: PathBuf,
    /// Its path on the host under the jail root.
    pub target: PathBuf,
    /// How it gets there.
    pub placement: Placement,
}

impl Jail {
    /// Where `host` goes in the jail: `/<dir>/<file name>`, with `dir`
    /// such as `boot` or `drives`.
    ///
    /// # Errors
    /// [`JailError::BadJailPath`] when `host` has no file name.
    pub fn place(
        &self,
        host: &Path,
        dir: &str,
        placement: Placement,
    ) -> Result<JailedFile, JailError> {
        let name = host
            .file_name()
            .ok_or_else(|| JailError::BadJailPath(host.to_path_buf()))?;
        let inside = Path::new("/").join(dir).join(name);
        Ok(JailedFile {
            host: host.to_path_buf(),
            target: self.host_path(&inside)?,
            inside,
            placement,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec {
            jailer: "/opt/fc/jailer".into(),
            exec_file: "/opt/fc/firecracker".into(),
            id: "sv-0123456789ab".into(),
            uid: DEFAULT_JAIL_ID,
            gid: DEFAULT_JAIL_ID,
            chroot_base: "/run/sv/jail".into(),
            netns: None,
            cgroup_version: CgroupVersion::V1,
            cgroups: Vec::new(),
            resource_limits: Vec::new(),
            new_pid_ns: false,
        }
    }

    #[test]
    fn the_layout_is_base_exec_name_id_root() {
        let jail = Jail::new(&spec()).expect("valid");
        assert_eq!(
            jail.dir(),
            Path::new("/run/sv/jail/firecracker/sv-0123456789ab")
        );
        assert_eq!(
            jail.root(),
            Path::new("/run/sv/jail/firecracker/sv-0123456789ab/root")
        );
        assert_eq!(
            jail.api_socket(),
            Path::new("/run/sv/jail/firecracker/sv-0123456789ab/root/run/firecracker.socket")
        );
        assert_eq!(
            jail.pid_file(),
            Path::new("/run/sv/jail/firecracker/sv-0123456789ab/root/firecracker.pid")
        );
        let k = jail
            .place(Path::new("/assets/vmlinux"), "boot", Placement::LinkOrCopy)
            .expect("placed");
        assert_eq!(k.inside, Path::new("/boot/vmlinux"));
        assert_eq!(
            k.target,
            Path::new("/run/sv/jail/firecracker/sv-0123456789ab/root/boot/vmlinux")
        );
        assert!(jail.host_path(Path::new("/a/../../etc")).is_err());
        assert!(jail.host_path(Path::new("relative")).is_err());
    }

    #[test]
    fn the_command_line_has_every_option_asked_for() {
        let mut s = spec();
        let (program, args) = command(&s, &["--enable-pci".into()]);
        assert_eq!(program, Path::new("/opt/fc/jailer"));
        assert_eq!(
            args.join(" "),
            "--id sv-0123456789ab --exec-file /opt/fc/firecracker --uid 65534 --gid 65534 \
             --chroot-base-dir /run/sv/jail -- --api-sock /run/firecracker.socket --enable-pci"
        );
        s.uid = 0;
        s.gid = 0;
        s.netns = Some("/var/run/netns/t".into());
        s.cgroup_version = CgroupVersion::V2;
        s.cgroups = vec!["cpuset.cpus=0".into(), "cpuset.mems=0".into()];
        s.resource_limits = vec!["no-file=1024".into()];
        s.new_pid_ns = true;
        let (_, args) = command(&s, &[]);
        assert_eq!(
            args.join(" "),
            "--id sv-0123456789ab --exec-file /opt/fc/firecracker --uid 0 --gid 0 \
             --chroot-base-dir /run/sv/jail --netns /var/run/netns/t --cgroup-version 2 \
             --cgroup cpuset.cpus=0 --cgroup cpuset.mems=0 --resource-limit no-file=1024 \
             --new-pid-ns -- --api-sock /run/firecracker.socket"
        );
    }

    #[test]
    fn ids_are_checked_as_the_jailer_does() {
        assert_eq!(check_id("a-1"), Ok(()));
        assert_eq!(check_id(&"a".repeat(64)), Ok(()));
        assert_eq!(
            check_id(&"a".repeat(65)),
            Err(JailError::IdLength {
                id: "a".repeat(65),
                len: 65
            })
        );
        assert!(matches!(
            check_id(""),
            Err(JailError::IdLength { len: 0, .. })
        ));
        let e = check_id("sv_1").expect_err("underscore");
        assert_eq!(
            e.to_string(),
            "jailer id \"sv_1\" has '_' at position 2: only letters, digits and '-' are allowed"
        );
    }

    #[test]
    fn socket_paths_over_107_bytes_are_refused_with_the_path() {
        let mut s = spec();
        s.id = "x".repeat(64);
        s.chroot_base = "/var/lib/sandvisor/jails".into();
        let e = Jail::new(&s).expect_err("too long");
        let JailError::SocketPathTooLong { len, max, .. } = e else {
            panic!("expected SocketPathTooLong, got {e:?}");
        };
        assert_eq!(max, 107);
        assert!(len > 107);
        // The same id under a short base fits.
        s.chroot_base = "/j".into();
        Jail::new(&s).expect("fits");
    }
}
