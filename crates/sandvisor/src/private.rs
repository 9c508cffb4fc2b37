//! Files only their owner can read: the runtime and VM directories (0700),
//! and the logs, records and sockets in them (0600).
//!
//! A VM directory holds the guest's console log and the sockets that
//! control the VMM and reach the agent: anyone who can open them owns the
//! sandbox. The directory's 0700 is the boundary (nothing inside can be
//! reached by another user from the moment it exists); the file modes are
//! the second wall, so a file copied or hard-linked out keeps them.
//!
//! Sockets a VMM or a helper binds get the mode its umask gives (0755
//! under the usual 022); [`tighten`] sets them to 0600 once they exist.
//! sandvisor does not change its children's umask: QEMU and virtiofsd
//! create files in shared directories on the guest's behalf, with the
//! guest's modes, which a tighter umask would change.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of a private file or socket.
pub const FILE_MODE: u32 = 0o600;

/// Makes `dir` and any missing parents with mode 0700, and sets `dir`
/// itself to 0700 when it already existed with another mode.
///
/// # Errors
/// The failing `mkdir` or `chmod`.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Opens `path` for appending, creating it with mode 0600 (and setting an
/// existing file to 0600): for logs.
///
/// # Errors
/// The failing `open` or `chmod`.
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Creates (or truncates) `path` for writing with mode 0600.
///
/// # Errors
/// The failing `open` or `chmod`.
pub fn create(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Makes everything under `dir` (recursively, `dir` included) private:
/// directories 0700, regular files and sockets 0600. Symbolic links are
/// not followed; entries of another owner and files with more than one
/// link (an asset hard-linked in, whose mode belongs to its other name)
/// are left alone; entries that vanish meanwhile are skipped (a VMM may
/// remove a socket while this runs).
///
/// # Errors
/// The first `chmod` or directory read that fails for another reason.
pub fn tighten(dir: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    let want = if kind.is_dir() {
        DIR_MODE
    } else if kind.is_file() || kind.is_socket() {
        FILE_MODE
    } else {
        return Ok(());
    };
    let ours = meta.uid() == nix::unistd::geteuid().as_raw();
    let shared = kind.is_file() && meta.nlink() > 1;
    if ours && !shared && meta.permissions().mode() & 0o7777 != want {
        match set_mode(dir, want) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if kind.is_dir() {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            tighten(&entry?.path())?;
        }
    }
    Ok(())
}

/// [`tighten`] on a blocking thread, for async callers: a backend calls it
/// once its VMM has bound its sockets, so that a VM started without the
/// supervisor (`sandvisor run`, the factory) is as private as one it
/// started.
///
/// # Errors
/// As [`tighten`]; a walk that could not run is an error of kind `Other`.
pub async fn tighten_in_background(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || tighten(&dir))
        .await
        .map_err(io::Error::other)?
}

/// Entries under `dir` (recursively, `dir` included) that are not private:
/// a directory whose mode is not 0700, a file or socket whose mode is not
/// 0600. Each comes with its mode. For tests and `check`.
///
/// # Errors
/// A directory that cannot be read.
pub fn not_private(dir: &Path) -> io::Result<Vec<(std::path::PathBuf, u32)>> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

fn walk(path: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    let mode = meta.permissions().mode() & 0o7777;
    let want = if kind.is_dir() {
        Some(DIR_MODE)
    } else if kind.is_file() || kind.is_socket() {
        Some(FILE_MODE)
    } else {
        None
    };
    if want.is_some_and(|w| w != mode) {
        out.push((path.to_path_buf(), mode));
    }
    if kind.is_dir() {
        for entry in std::fs::read_dir(path)? {
            walk(&entry?.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tightened_tree_is_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path().join("a/b");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("log"), b"console").expect("write");
        let sock = d.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        set_mode(&d, 0o755).expect("chmod");
        set_mode(&d.join("log"), 0o644).expect("chmod");
        set_mode(&sock, 0o755).expect("chmod");
        let before = not_private(root.path()).expect("walk");
        assert!(before.iter().any(|(p, m)| p == &sock && *m == 0o755));
        tighten(root.path()).expect("tighten");
        assert_eq!(not_private(root.path()).expect("walk"), vec![]);
    }

    #[test]
    fn new_dirs_and_logs_are_private_even_over_looser_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path().join("x/y");
        std::fs::create_dir_all(&d).expect("mkdir");
        set_mode(&d, 0o755).expect("chmod");
        create_dir_all(&d).expect("private dir");
        let log = d.join("qemu.log");
        std::fs::write(&log, b"").expect("write");
        set_mode(&log, 0o644).expect("chmod");
        drop(open_append(&log).expect("open"));
        drop(create(&d.join("new")).expect("create"));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&d.join("new")), 0o600);
    }
}
