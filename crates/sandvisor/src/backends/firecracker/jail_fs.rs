//! The jail on disk: placing the caller's files under the jail root, and
//! removing the jail on every exit path.
//!
//! A file goes in by hard link when it is on the jail's file system (the
//! jailed name is then the caller's inode), else by copy (files Firecracker
//! only reads) or by a bind mount of the file (drives it writes, which must
//! stay the caller's). Files Firecracker writes are chowned to the jail's
//! uid and gid, as Kata does: for a hard-linked or bind-mounted drive this
//! is the caller's file.
//!
//! Removal first detaches every mount under the jail (bind-mounted drives),
//! so that removing the tree never reaches into a caller's file.

use std::io;
use std::path::{Path, PathBuf};

use super::jailer::{JailedFile, Placement};

/// Errors from the jail's files.
#[derive(Debug, thiserror::Error)]
pub enum JailFsError {
    /// A file could not be placed in the jail.
    #[error("cannot place {host:?} in the jail at {target:?}")]
    Place {
        /// The caller's file.
        host: PathBuf,
        /// Where it was to go.
        target: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A directory or file of the jail could not be made or chowned.
    #[error("cannot prepare {path:?} in the jail")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The jail could not be removed.
    #[error("cannot remove jail {path:?}")]
    Remove {
        /// The jail directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

fn prepare(path: &Path) -> impl FnOnce(io::Error) -> JailFsError + '_ {
    move |source| JailFsError::Prepare {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `dir` (and its parents) owned by `uid:gid`.
///
/// # Errors
/// [`JailFsError::Prepare`].
pub fn make_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), JailFsError> {
    std::fs::create_dir_all(dir).map_err(prepare(dir))?;
    chown(dir, uid, gid)
}

/// Makes an empty file that Firecracker writes (log, metrics, serial).
///
/// # Errors
/// [`JailFsError::Prepare`].
pub fn make_file(path: &Path, uid: u32, gid: u32) -> Result<(), JailFsError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(prepare(path))?;
    chown(path, uid, gid)
}

/// Makes a placeholder drive: a file of `size` zero bytes (sparse).
///
/// # Errors
/// [`JailFsError::Prepare`].
pub fn make_placeholder(path: &Path, size: u64, uid: u32, gid: u32) -> Result<(), JailFsError> {
    let f = std::fs::File::create(path).map_err(prepare(path))?;
    f.set_len(size).map_err(prepare(path))?;
    chown(path, uid, gid)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailFsError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(prepare(path))
}

/// Places `f` in the jail; `writable` files are chowned to `uid:gid`.
///
/// # Errors
/// [`JailFsError::Place`] when no way works (the last error is kept).
pub fn place(f: &JailedFile, writable: bool, uid: u32, gid: u32) -> Result<(), JailFsError> {
    let err = |source| JailFsError::Place {
        host: f.host.clone(),
        target: f.target.clone(),
        source,
    };
    if let Some(dir) = f.target.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(&f.target);
    let linked = std::fs::hard_link(&f.host, &f.target);
    match (linked, f.placement) {
        (Ok(()), _) => {}
        (Err(e), _) if e.raw_os_error() != Some(nix::libc::EXDEV) => return Err(err(e)),
        (Err(_), Placement::LinkOrCopy) => {
            std::fs::copy(&f.host, &f.target).map_err(err)?;
        }
        (Err(_), Placement::LinkOrBind) => {
            std::fs::File::create(&f.target).map_err(err)?;
            nix::mount::mount(
                Some(&f.host),
                &f.target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| err(e.into()))?;
        }
    }
    if writable {
        std::os::unix::fs::chown(&f.target, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// Removes a file placed in the jail (unmounting it if it was bound).
pub fn unplace(target: &Path) {
    if mounts_under(target).iter().any(|m| m == target) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_file(target);
}

/// Mount points at or under `dir`, deepest first, from
/// `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Removes the jail directory `dir` (`<base>/<exec>/<id>`): detaches every
/// mount under it, then removes the tree. A jail that is not there is fine.
///
/// # Errors
/// [`JailFsError::Remove`].
pub fn remove_jail(dir: &Path) -> Result<(), JailFsError> {
    for m in mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "cannot detach a mount in the jail");
        }
    }
    crate::backends::vmm::remove_dir_if_present(dir).map_err(|source| JailFsError::Remove {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn placed_files_are_linked_and_the_jail_goes_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("kernel");
        std::fs::write(&host, b"elf").expect("write");
        let jail = dir.path().join("fc/id1");
        let f = JailedFile {
            host: host.clone(),
            inside: "/boot/kernel".into(),
            target: jail.join("root/boot/kernel"),
            placement: Placement::LinkOrCopy,
        };
        place(&f, false, 0, 0).expect("placed");
        assert_eq!(std::fs::read(&f.target).expect("read"), b"elf");
        remove_jail(&jail).expect("removed");
        assert!(!jail.exists());
        assert!(host.exists(), "the caller's file stays");
        remove_jail(&jail).expect("a missing jail is fine");
    }
}
