//! Host directories shared into a one-shot sandbox (`run -v HOST:GUEST[:ro]`).
//!
//! One virtiofsd serves one per-sandbox *shared root* on the host, and each
//! volume is a bind mount of its host directory into that root
//! (`<runtime>/volumes/<id>/<n>`); the guest mounts the root once with
//! virtio-fs and bind-mounts `<n>` on each target. This is Kata's
//! `kataShared` layout. It keeps the backends' one-share-per-VM model (QEMU
//! and Cloud Hypervisor start one virtiofsd for one `Device::Fs`), costs one
//! daemon however many volumes there are, and lets the host enforce `:ro`:
//! a read-only volume is a read-only bind mount, so virtiofsd itself gets
//! `EROFS`, whatever the guest does. The guest's bind mount is remounted
//! read-only as well, so that the guest's `mount` shows it.
//!
//! Host bind mounts need `CAP_SYS_ADMIN`, as QEMU's virtiofsd does (it
//! sandboxes itself in new namespaces): volumes are for root.
//!
//! The `run` that owns a shared root holds an exclusive `flock` on
//! `<id>.lock` beside it. A run killed before it could clean up leaves the
//! lock file unlocked; the next [`SharedRoot::create`] sweeps such roots
//! (unmount, remove) so that no mount outlives its sandbox for long.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sandvisor_proto::MountRequest;

use crate::device::{Device, SharedFsVolume};

/// The virtio-fs tag of the shared root.
pub const TAG: &str = "sandvisor-volumes";

/// Where the guest mounts the shared root.
pub const GUEST_ROOT: &str = "/run/sandvisor/volumes";

/// Errors in volume specifications and in sharing them.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not `HOST:GUEST` or `HOST:GUEST:ro`.
    #[error("volume {spec:?} is not HOST:GUEST or HOST:GUEST:ro")]
    Syntax {
        /// What was given.
        spec: String,
    },
    /// The host directory does not exist or cannot be resolved.
    #[error("volume host path {path:?} cannot be shared")]
    Host {
        /// The host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The host path is not a directory.
    #[error("volume host path {path:?} is not a directory; share the directory that holds it")]
    NotDirectory {
        /// The host path.
        path: PathBuf,
    },
    /// The guest path is relative, `/`, or has `..` in it.
    #[error("volume guest path {guest:?} must be an absolute path other than / without ..")]
    Guest {
        /// The guest path.
        guest: String,
    },
    /// The guest path is where sandvisor mounts the shared root.
    #[error("volume guest path {guest:?} is under {GUEST_ROOT}, which sandvisor uses")]
    Reserved {
        /// The guest path.
        guest: String,
    },
    /// Two volumes on one guest path.
    #[error("two volumes are mounted on guest path {guest:?}")]
    Duplicate {
        /// The guest path.
        guest: String,
    },
    /// A directory of the shared root could not be made or removed.
    #[error("cannot {action} shared directory {path:?}")]
    Dir {
        /// What was being done.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A bind mount into the shared root failed.
    #[error("cannot bind-mount {host:?} on {target:?} (volumes need root)")]
    Bind {
        /// The host directory.
        host: PathBuf,
        /// The shared root's subdirectory.
        target: PathBuf,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },
}

/// One `-v HOST:GUEST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host directory.
    pub host: PathBuf,
    /// The guest mount point: absolute, normalised.
    pub guest: String,
    /// Read-only in the guest.
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = VolumeError;

    /// Parses `HOST:GUEST[:ro|:rw]`; checks the guest path's form, not the
    /// host's existence (see [`validate`]).
    fn from_str(spec: &str) -> Result<Self, VolumeError> {
        let syntax = || VolumeError::Syntax {
            spec: spec.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [h, g] => (*h, *g, false),
            [h, g, "ro"] => (*h, *g, true),
            [h, g, "rw"] => (*h, *g, false),
            _ => return Err(syntax()),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(syntax());
        }
        Ok(Volume {
            host: PathBuf::from(host),
            guest: normalise_guest(guest)?,
            read_only,
        })
    }
}

fn normalise_guest(guest: &str) -> Result<String, VolumeError> {
    let bad = || VolumeError::Guest {
        guest: guest.to_string(),
    };
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    let normal = format!("/{}", parts.join("/"));
    if normal == GUEST_ROOT
        || normal.starts_with(&format!("{GUEST_ROOT}/"))
        || GUEST_ROOT.starts_with(&format!("{normal}/"))
    {
        return Err(VolumeError::Reserved { guest: normal });
    }
    Ok(normal)
}

/// Checks the volumes before anything boots: each host path an existing
/// directory (made absolute), no two on one guest path.
///
/// # Errors
/// The first bad volume.
pub fn validate(volumes: &[Volume]) -> Result<Vec<Volume>, VolumeError> {
    let mut out: Vec<Volume> = Vec::with_capacity(volumes.len());
    for v in volumes {
        let host = fs::canonicalize(&v.host).map_err(|source| VolumeError::Host {
            path: v.host.clone(),
            source,
        })?;
        if !host.is_dir() {
            return Err(VolumeError::NotDirectory {
                path: v.host.clone(),
            });
        }
        if out.iter().any(|o| o.guest == v.guest) {
            return Err(VolumeError::Duplicate {
                guest: v.guest.clone(),
            });
        }
        out.push(Volume { host, ..v.clone() });
    }
    Ok(out)
}

/// What the agent mounts, in order: the shared root, then each volume's
/// bind mount, remounted read-only for `:ro`.
pub fn guest_mounts(volumes: &[Volume]) -> Vec<MountRequest> {
    let mut m = vec![MountRequest {
        source: TAG.to_string(),
        target: GUEST_ROOT.to_string(),
        fstype: "virtiofs".to_string(),
        options: vec![],
    }];
    for (i, v) in volumes.iter().enumerate() {
        m.push(MountRequest {
            source: format!("{GUEST_ROOT}/{i}"),
            target: v.guest.clone(),
            fstype: String::new(),
            options: vec!["bind".to_string()],
        });
        if v.read_only {
            m.push(MountRequest {
                source: v.guest.clone(),
                target: v.guest.clone(),
                fstype: String::new(),
                options: vec!["remount".into(), "bind".into(), "ro".into()],
            });
        }
    }
    m
}

/// The host side: a shared root with one bind mount per volume. Dropping
/// it unmounts them and removes the directories it made.
#[derive(Debug)]
pub struct SharedRoot {
    dir: PathBuf,
    made: Vec<PathBuf>,
    mounted: Vec<PathBuf>,
    lock: Option<(PathBuf, Flock<fs::File>)>,
}

fn lock_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Unmounts and removes the shared roots in `parent` whose lock nobody
/// holds: their run died without cleaning up. Failures are logged; a root
/// that cannot be cleaned keeps its lock file for the next sweep.
pub fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for lock in entries.flatten().map(|e| e.path()) {
        let Some(dir) = lock
            .to_str()
            .and_then(|l| l.strip_suffix(".lock"))
            .map(PathBuf::from)
        else {
            continue;
        };
        let Ok(file) = fs::File::open(&lock) else {
            continue;
        };
        let Ok(held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // its run is alive
        };
        let subdirs: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for sub in &subdirs {
            match umount2(sub, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) => {}
                Err(e) => {
                    tracing::warn!(path = %sub.display(), error = %e, "cannot unmount a stale volume");
                    return;
                }
            }
            // Never recursive: see `Drop`.
            let _ = fs::remove_dir(sub);
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a stale shared root");
                continue;
            }
        }
        let _ = fs::remove_file(&lock);
        tracing::info!(path = %dir.display(), "removed a stale shared root");
        drop(held);
    }
}

impl SharedRoot {
    /// Makes `dir` (which must not exist) and bind-mounts each volume's host
    /// directory on `dir/<n>`, read-only for `:ro`.
    ///
    /// # Errors
    /// A directory or mount that failed; what was done is undone.
    pub fn create(dir: PathBuf, volumes: &[Volume]) -> Result<SharedRoot, VolumeError> {
        let mut root = SharedRoot {
            dir: dir.clone(),
            made: Vec::new(),
            mounted: Vec::new(),
            lock: None,
        };
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(|source| VolumeError::Dir {
                action: "create",
                path: parent.to_path_buf(),
                source,
            })?;
            sweep_stale(parent);
        }
        let lock = lock_path(&dir);
        let lock_err = |source| VolumeError::Dir {
            action: "lock",
            path: lock.clone(),
            source,
        };
        let file = fs::File::create(&lock).map_err(lock_err)?;
        let held = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_err(io::Error::from(errno)))?;
        root.lock = Some((lock.clone(), held));
        root.mkdir(&dir)?;
        for (i, v) in volumes.iter().enumerate() {
            let target = dir.join(i.to_string());
            root.mkdir(&target)?;
            let bind_err = |source| VolumeError::Bind {
                host: v.host.clone(),
                target: target.clone(),
                source,
            };
            mount(
                Some(&v.host),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(bind_err)?;
            root.mounted.push(target.clone());
            // Not seen by the host's other mount namespaces.
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(bind_err)?;
            if v.read_only {
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(bind_err)?;
            }
        }
        Ok(root)
    }

    fn mkdir(&mut self, path: &Path) -> Result<(), VolumeError> {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|source| VolumeError::Dir {
                action: "create",
                path: path.to_path_buf(),
                source,
            })?;
        self.made.push(path.to_path_buf());
        Ok(())
    }

    /// The shared root's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device that shares the root with the guest.
    pub fn device(&self) -> Device {
        Device::Fs(SharedFsVolume {
            mount_tag: TAG.to_string(),
            host_path: self.dir.clone(),
        })
    }
}

impl Drop for SharedRoot {
    fn drop(&mut self) {
        for m in self.mounted.drain(..).rev() {
            if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %m.display(), error = %e, "cannot unmount a volume");
            }
        }
        // `remove_dir`, never `remove_dir_all`: a directory that is still a
        // mount point must not have the host's files deleted through it.
        let mut clean = true;
        for d in self.made.drain(..).rev() {
            if let Err(e) = fs::remove_dir(&d) {
                clean = false;
                tracing::warn!(path = %d.display(), error = %e, "cannot remove a shared directory");
            }
        }
        // Left in place when something stayed, for the next sweep.
        if let Some((lock, held)) = self.lock.take() {
            if clean {
                let _ = fs::remove_file(&lock);
            }
            drop(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(s: &str) -> Result<Volume, VolumeError> {
        s.parse()
    }

    #[test]
    fn specs_parse_and_guest_paths_are_normalised() {
        assert_eq!(
            vol("/srv/data:/mnt/x/").expect("valid"),
            Volume {
                host: "/srv/data".into(),
                guest: "/mnt/x".into(),
                read_only: false
            }
        );
        let ro = vol("rel/dir://data//in:ro").expect("valid");
        assert_eq!((ro.guest.as_str(), ro.read_only), ("/data/in", true));
        assert!(!vol("/a:/b:rw").expect("valid").read_only);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("/a", "is not HOST:GUEST"),
            ("/a:/b:rx", "is not HOST:GUEST"),
            (":/b", "is not HOST:GUEST"),
            ("/a:b", "must be an absolute path"),
            ("/a:/", "must be an absolute path"),
            ("/a:/x/../y", "must be an absolute path"),
            ("/a:/run/sandvisor/volumes/0", "sandvisor uses"),
            ("/a:/run", "sandvisor uses"),
        ] {
            let err = vol(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn validation_needs_existing_directories_and_distinct_targets() {
        let d = tempfile::tempdir().expect("tempdir");
        let file = d.path().join("f");
        fs::write(&file, b"x").expect("write");
        let dir = d.path().display().to_string();
        let ok = validate(&[vol(&format!("{dir}:/a")).expect("valid")]).expect("valid");
        assert!(ok[0].host.is_absolute());

        let missing = validate(&[vol(&format!("{dir}/none:/a")).expect("valid")]);
        assert!(
            matches!(missing, Err(VolumeError::Host { .. })),
            "{missing:?}"
        );
        let not_dir = validate(&[vol(&format!("{}:/a", file.display())).expect("valid")]);
        assert!(
            matches!(not_dir, Err(VolumeError::NotDirectory { .. })),
            "{not_dir:?}"
        );
        let dup = validate(&[
            vol(&format!("{dir}:/a")).expect("valid"),
            vol(&format!("{dir}:/a/:ro")).expect("valid"),
        ]);
        assert!(
            matches!(&dup, Err(VolumeError::Duplicate { guest }) if guest == "/a"),
            "{dup:?}"
        );
    }

    #[test]
    fn the_guest_mounts_the_root_once_then_binds_each_volume() {
        let v = [
            vol("/h1:/mnt/x").expect("valid"),
            vol("/h2:/srv:ro").expect("valid"),
        ];
        let m = guest_mounts(&v);
        let got: Vec<_> = m
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.source,
                    r.target,
                    r.fstype,
                    r.options.join(",")
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "sandvisor-volumes /run/sandvisor/volumes virtiofs ",
                "/run/sandvisor/volumes/0 /mnt/x  bind",
                "/run/sandvisor/volumes/1 /srv  bind",
                "/srv /srv  remount,bind,ro",
            ]
        );
    }

    /// Needs root (bind mounts), as volumes do.
    #[test]
    fn the_shared_root_binds_volumes_read_only_where_asked_and_leaves_nothing() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "bind mounts need root: run this test as root"
        );
        let d = tempfile::tempdir().expect("tempdir");
        let (rw, ro) = (d.path().join("rw"), d.path().join("ro"));
        fs::create_dir(&rw).expect("mkdir");
        fs::create_dir(&ro).expect("mkdir");
        fs::write(ro.join("f"), b"host").expect("write");
        let vols = validate(&[
            vol(&format!("{}:/a", rw.display())).expect("valid"),
            vol(&format!("{}:/b:ro", ro.display())).expect("valid"),
        ])
        .expect("valid");
        let root_dir = d.path().join("run/volumes/sv-1");
        let root = SharedRoot::create(root_dir.clone(), &vols).expect("bind mounts");
        fs::write(root_dir.join("0/new"), b"through").expect("rw volume takes writes");
        assert_eq!(fs::read(rw.join("new")).expect("on the host"), b"through");
        assert_eq!(fs::read(root_dir.join("1/f")).expect("read"), b"host");
        let err = fs::write(root_dir.join("1/g"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
        assert!(matches!(root.device(), Device::Fs(v) if v.host_path == root_dir));
        drop(root);
        assert!(!root_dir.exists(), "the shared root is removed");
        assert!(!lock_path(&root_dir).exists(), "and its lock file");
        assert!(
            ro.join("f").exists() && rw.join("new").exists(),
            "host files stay"
        );
        assert!(!ro.join("g").exists());
    }

    /// Needs root (bind mounts), as volumes do.
    #[test]
    fn a_dead_runs_shared_root_is_swept_and_a_live_one_is_not() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "bind mounts need root: run this test as root"
        );
        let d = tempfile::tempdir().expect("tempdir");
        let host = d.path().join("host");
        fs::create_dir(&host).expect("mkdir");
        fs::write(host.join("f"), b"keep").expect("write");
        let parent = d.path().join("volumes");
        let vols =
            validate(&[vol(&format!("{}:/a", host.display())).expect("valid")]).expect("valid");
        let live = SharedRoot::create(parent.join("sv-live"), &vols).expect("live root");
        // What a killed run leaves: the lock file unlocked, the mount up.
        let dead = parent.join("sv-dead");
        fs::create_dir_all(dead.join("0")).expect("mkdir");
        fs::write(lock_path(&dead), b"").expect("lock file");
        mount(
            Some(&host),
            &dead.join("0"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");

        sweep_stale(&parent);
        assert!(
            !dead.exists() && !lock_path(&dead).exists(),
            "the dead run's root is gone"
        );
        assert!(
            live.dir().join("0/f").exists(),
            "the live run's volume stays"
        );
        assert_eq!(fs::read(host.join("f")).expect("host file"), b"keep");
        drop(live);
        assert_eq!(fs::read_dir(&parent).expect("parent").count(), 0);
    }
}
