//! Where sandvisor keeps things on the host.
//!
//! | what | root | other users | override |
//! |---|---|---|---|
//! | guest assets | `/var/lib/sandvisor/assets` | `$XDG_DATA_HOME/sandvisor/assets`, else the system's when readable | `SANDVISOR_ASSET_DIR` |
//! | runtime state | `/run/sandvisor` | `$XDG_RUNTIME_DIR/sandvisor`, else `/tmp/sandvisor-<uid>` | `SANDVISOR_RUNTIME_DIR` |
//!
//! A user without `$XDG_RUNTIME_DIR` (a `su`/`runuser` session, a cron
//! job) gets a private directory in `/tmp`, as podman does: made `0700`,
//! and refused when it exists but is another user's or open to others
//! ([`prepare_runtime_dir`]).

use std::env;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// The system's guest asset directory, which root's `image build` fills.
pub const SYSTEM_ASSET_DIR: &str = "/var/lib/sandvisor/assets";

/// Errors in preparing the runtime directory.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// It cannot be made or inspected.
    #[error(
        "cannot make runtime directory {path:?}; set SANDVISOR_RUNTIME_DIR or XDG_RUNTIME_DIR"
    )]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not a directory of this user's.
    #[error("runtime directory {path:?} belongs to uid {owner}, not to you (uid {uid}); remove it or set SANDVISOR_RUNTIME_DIR")]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This user.
        uid: u32,
    },
    /// Others can use it.
    #[error("runtime directory {path:?} has mode {mode:o}; it must be 0700 (chmod 700 it)")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link or a file where the directory should be.
    #[error("runtime directory {path:?} is not a directory")]
    NotDirectory {
        /// The path.
        path: PathBuf,
    },
}

/// File name of the guest kernel in the asset directory: the uncompressed
/// ELF, booted through its PVH entry point.
pub const KERNEL_FILE: &str = "vmlinux";
/// File name of the same kernel as a bzImage, kept for kernels without PVH
/// support and for users who want it.
pub const BZIMAGE_FILE: &str = "vmlinuz";
/// File name of the guest initrd in the asset directory.
pub const INITRD_FILE: &str = "initrd.img";

/// The subdirectory of the asset directory that `scripts/setup.sh` fills,
/// when asked (`SANDVISOR_CLOUD_KERNEL=1`), with Debian's cloud kernel
/// (`image build --kernel-from cloud`) and its initrd with modules, beside
/// the default sandbox-kernel assets.
pub const CLOUD_KERNEL_DIR: &str = "cloud-kernel";

/// The environment variable that overrides [`cloud_kernel_asset_dir`].
pub const CLOUD_KERNEL_DIR_ENV: &str = "SANDVISOR_CLOUD_KERNEL_DIR";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The guest asset directory `run` reads: [`build_asset_dir`], unless this
/// is a user without assets of their own and the system's are readable.
pub fn asset_dir() -> PathBuf {
    let own = build_asset_dir();
    if is_root() || env::var_os("SANDVISOR_ASSET_DIR").is_some_and(|d| !d.is_empty()) {
        return own;
    }
    choose_asset_dir(own, Path::new(SYSTEM_ASSET_DIR))
}

/// The guest asset directory `image build` fills: `SANDVISOR_ASSET_DIR`,
/// the system's for root, else `$XDG_DATA_HOME/sandvisor/assets`.
pub fn build_asset_dir() -> PathBuf {
    if let Some(dir) = env::var_os("SANDVISOR_ASSET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from(SYSTEM_ASSET_DIR);
    }
    env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home().join(".local/share"), PathBuf::from)
        .join("sandvisor/assets")
}

/// `own` when it holds a kernel and an initrd, or when `system` has none
/// this user can read; else `system`.
fn choose_asset_dir(own: PathBuf, system: &Path) -> PathBuf {
    let readable = |dir: &Path| {
        fs::File::open(kernel_in(dir)).is_ok() && fs::File::open(dir.join(INITRD_FILE)).is_ok()
    };
    if readable(&own) || !readable(system) {
        own
    } else {
        system.to_path_buf()
    }
}

/// Where the cloud-kernel assets are: `$SANDVISOR_CLOUD_KERNEL_DIR`, else
/// [`CLOUD_KERNEL_DIR`] in [`asset_dir`].
pub fn cloud_kernel_asset_dir() -> PathBuf {
    env::var_os(CLOUD_KERNEL_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| asset_dir().join(CLOUD_KERNEL_DIR), PathBuf::from)
}

/// The kernel to boot from the asset directory `dir`: [`KERNEL_FILE`], or
/// [`BZIMAGE_FILE`] when only that exists (a kernel without PVH support).
pub fn kernel_in(dir: &Path) -> PathBuf {
    let pvh = dir.join(KERNEL_FILE);
    let bz = dir.join(BZIMAGE_FILE);
    if !pvh.exists() && bz.exists() {
        bz
    } else {
        pvh
    }
}

/// The runtime directory: one subdirectory per sandbox.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = env::var_os("SANDVISOR_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/run/sandvisor");
    }
    match env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sandvisor"),
        None => env::temp_dir().join(format!("sandvisor-{}", nix::unistd::geteuid())),
    }
}

/// Makes [`runtime_dir`] when missing (mode `0700`) and checks that it is
/// this user's own directory; for the `/tmp` fallback, also that nobody
/// else can use it.
///
/// # Errors
/// See [`PathsError`].
pub fn prepare_runtime_dir() -> Result<PathBuf, PathsError> {
    let dir = runtime_dir();
    let in_tmp = dir.starts_with(env::temp_dir())
        && !env::var_os("SANDVISOR_RUNTIME_DIR").is_some_and(|d| !d.is_empty());
    ensure_private_dir(&dir, nix::unistd::geteuid().as_raw(), in_tmp)?;
    Ok(dir)
}

fn ensure_private_dir(dir: &Path, uid: u32, strict_mode: bool) -> Result<(), PathsError> {
    let create = |source| PathsError::Create {
        path: dir.to_path_buf(),
        source,
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(create)?;
    if !meta.is_dir() {
        return Err(PathsError::NotDirectory {
            path: dir.to_path_buf(),
        });
    }
    if meta.uid() != uid {
        return Err(PathsError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if strict_mode && mode & 0o077 != 0 {
        return Err(PathsError::NotPrivate {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Where VM directories (sockets, state files) live: `<runtime>/vm`.
pub fn vm_storage_dir() -> PathBuf {
    runtime_dir().join("vm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn assets(dir: &Path) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(KERNEL_FILE), b"k").expect("write");
        fs::write(dir.join(INITRD_FILE), b"i").expect("write");
    }

    #[test]
    fn a_user_without_assets_reads_the_systems() {
        let d = tempfile::tempdir().expect("tempdir");
        let (own, system) = (d.path().join("own"), d.path().join("system"));
        assert_eq!(
            choose_asset_dir(own.clone(), &system),
            own,
            "neither: build into your own"
        );
        assets(&system);
        assert_eq!(
            choose_asset_dir(own.clone(), &system),
            system,
            "only the system's"
        );
        assets(&own);
        assert_eq!(
            choose_asset_dir(own.clone(), &system),
            own,
            "your own first"
        );
    }

    #[test]
    fn the_runtime_dir_is_made_private_and_checked() {
        let d = tempfile::tempdir().expect("tempdir");
        let uid = nix::unistd::geteuid().as_raw();
        let dir = d.path().join("sandvisor-x");
        ensure_private_dir(&dir, uid, true).expect("made");
        let meta = fs::metadata(&dir).expect("exists");
        assert_eq!(meta.mode() & 0o777, 0o700);
        ensure_private_dir(&dir, uid, true).expect("made already");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = ensure_private_dir(&dir, uid, true).expect_err("open to others");
        assert!(
            matches!(err, PathsError::NotPrivate { mode: 0o755, .. }),
            "{err}"
        );
        ensure_private_dir(&dir, uid, false).expect("mode only checked in /tmp");

        let err = ensure_private_dir(&dir, uid + 1, false).expect_err("not ours");
        assert!(matches!(err, PathsError::NotOwned { .. }), "{err}");

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = ensure_private_dir(&link, uid, false).expect_err("a symlink");
        assert!(matches!(err, PathsError::NotDirectory { .. }), "{err}");
    }

    #[test]
    fn the_pvh_kernel_is_preferred_and_the_bzimage_is_the_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(
            kernel_in(d),
            d.join("vmlinux"),
            "neither: name the preferred"
        );
        std::fs::write(d.join("vmlinuz"), b"bz").expect("write");
        assert_eq!(kernel_in(d), d.join("vmlinuz"), "only the bzImage");
        std::fs::write(d.join("vmlinux"), b"elf").expect("write");
        assert_eq!(kernel_in(d), d.join("vmlinux"), "both");
    }
}
