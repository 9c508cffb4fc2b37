//! `rootless = true`: QEMU runs as an unprivileged uid of its own.
//!
//! QEMU is spawned with that uid and gid (as Kata does), never as root:
//! QEMU's own `-runas` would keep it root while it parses its command line,
//! and QEMU 7.2 is killed by its own seccomp filter (SIGSYS) when `-runas`
//! meets `-sandbox elevateprivileges=deny`, which sandvisor keeps on.
//!
//! - **Which uid.** One per sandbox, from a reserved range
//!   ([`UID_BASE`], [`UID_COUNT`] uids), picked from the sandbox id and
//!   unique among the VM directories of the storage directory (each VM
//!   directory is owned by its QEMU's uid). No user is created: a numeric
//!   uid needs no `/etc/passwd` entry, so a failed start or a kill leaves
//!   no user behind, and one sandbox's QEMU cannot read another's files.
//! - **Its files.** The VM directory (0700) is given to that uid. The
//!   directories above it stay private to root: QEMU reaches its directory
//!   through a descriptor it inherits at [`VM_DIR_FD`], and its command line
//!   names the VM's sockets as `/proc/self/fd/<VM_DIR_FD>/...`. The sockets
//!   of virtiofsd and vhost-device-vsock (root's, in that directory) are
//!   given to the uid once they exist. The kernel, initrd and firmware must
//!   be readable by others (they are, as `setup.sh` installs them).
//! - **Hot-plugged block files** are opened by sandvisor and passed over
//!   QMP (`add-fd`, then `/dev/fdset/N`): QEMU never opens them by path.
//! - **Refused, with a [`RootlessError`]**: what QEMU would have to open by
//!   path after it started as the uid: cold-plugged block devices, an
//!   image or NVDIMM file, virtio-9p shares, hugepages, `file_mem_backend`,
//!   VM templates (the memory file), and KVM when `/dev/kvm` is neither
//!   world- nor group-accessible.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::cmdline::{Accelerator, VmPaths};
use crate::assets::AssetType;
use crate::config::HypervisorConfig;
use crate::device::Device;

/// The first uid (and gid) of the range rootless QEMUs run as.
pub const UID_BASE: u32 = 0x5356_0000;
/// How many uids the range holds.
pub const UID_COUNT: u32 = 1 << 16;
/// The descriptor number at which a rootless QEMU inherits its VM
/// directory.
pub const VM_DIR_FD: i32 = 64;
/// The device QEMU opens for KVM.
pub const DEV_KVM: &str = "/dev/kvm";

/// Why a config or a request cannot run with `rootless = true`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootlessError {
    /// Something QEMU would have to open by path as the unprivileged uid.
    #[error("rootless = true: {what}; {todo}, or set rootless = false")]
    Unsupported {
        /// What cannot work, naming the key or file.
        what: String,
        /// What to do instead.
        todo: &'static str,
    },
    /// A file QEMU reads at start that the uid cannot read.
    #[error("rootless = true: QEMU cannot read {path:?} as uid {uid} (mode {mode:o}); make it readable by others (chmod o+r), or set rootless = false")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The uid QEMU runs as.
        uid: u32,
        /// The file's mode.
        mode: u32,
    },
    /// `/dev/kvm` is closed to the uid.
    #[error("rootless = true: {DEV_KVM} (mode {mode:o}) is not open to other users or to a group; chmod 0666 {DEV_KVM}, or give it a group with rw (0660), or use accel = \"tcg\", or set rootless = false")]
    Kvm {
        /// The device's mode.
        mode: u32,
    },
    /// The host could not be inspected.
    #[error("rootless = true: cannot inspect {path:?} ({kind}); check that it exists")]
    Inspect {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
}

/// Who QEMU runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// What the config asks for that a rootless QEMU cannot do, whatever the
/// devices.
///
/// # Errors
/// [`RootlessError::Unsupported`] naming the key.
pub fn check_config(c: &HypervisorConfig) -> Result<(), RootlessError> {
    let refuse = |what: &str, todo| {
        Err(RootlessError::Unsupported {
            what: what.to_string(),
            todo,
        })
    };
    if c.boot_to_be_template || c.boot_from_template {
        return refuse(
            "VM templates (boot_to_be_template, boot_from_template) map the template's memory file, which QEMU opens by path",
            "disable the factory's enable_template",
        );
    }
    if c.file_backed_mem_root_dir.is_some() {
        return refuse(
            "file_mem_backend makes QEMU open a memory file by path",
            "unset file_mem_backend",
        );
    }
    if c.huge_pages {
        return refuse(
            "enable_hugepages makes QEMU open files in hugetlbfs by path",
            "set enable_hugepages = false",
        );
    }
    if c.mlock {
        return refuse(
            "mlock (enable_swap = false) locks all guest memory, past an unprivileged RLIMIT_MEMLOCK",
            "set mlock off (enable_swap = true)",
        );
    }
    if c.asset_path(AssetType::Image).is_some() {
        return refuse(
            "an `image` is opened by QEMU by path",
            "boot from an `initrd`",
        );
    }
    Ok(())
}

/// What the cold-plugged `devices` need that a rootless QEMU cannot do.
///
/// # Errors
/// [`RootlessError::Unsupported`] naming the device.
pub fn check_devices(c: &HypervisorConfig, devices: &[Device]) -> Result<(), RootlessError> {
    for d in devices {
        match d {
            Device::Block(b) | Device::Image(b) => {
                return Err(RootlessError::Unsupported {
                    what: format!(
                        "block device {:?} added before start would be opened by QEMU by path",
                        b.file
                    ),
                    todo: "hot-plug it after start (it is then passed to QEMU by descriptor)",
                })
            }
            Device::Fs(_) if !c.shared_fs.is_virtio_fs() => {
                return Err(RootlessError::Unsupported {
                    what: format!(
                        "shared_fs = {:?} has QEMU read the shared directory itself",
                        c.shared_fs.as_str()
                    ),
                    todo: "use shared_fs = \"virtio-fs\" (virtiofsd reads it)",
                })
            }
            Device::VhostUser(v) => {
                return Err(RootlessError::Unsupported {
                    what: format!(
                        "vhost-user device {:?} has QEMU connect to a socket by path",
                        v.socket_path
                    ),
                    todo: "leave enable_vhost_user_store off",
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A stable hash of the sandbox id (FNV-1a), so the same sandbox asks for
/// the same uid first.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The uid for sandbox `id`: the id's slot in the range, or the next one
/// that `taken` does not hold.
///
/// # Errors
/// [`RootlessError::Unsupported`] when the whole range is taken.
pub fn uid_for(id: &str, taken: impl Fn(u32) -> bool) -> Result<u32, RootlessError> {
    let start = fnv1a(id) % UID_COUNT;
    (0..UID_COUNT)
        .map(|i| UID_BASE + (start + i) % UID_COUNT)
        .find(|uid| !taken(*uid))
        .ok_or(RootlessError::Unsupported {
            what: format!("all {UID_COUNT} uids from {UID_BASE} are taken"),
            todo: "delete sandboxes",
        })
}

/// The gid for `uid`: its own, or `/dev/kvm`'s group when KVM is only
/// open to that group (`kvm` = the device's mode and gid).
///
/// # Errors
/// [`RootlessError::Kvm`] when KVM is asked for and `/dev/kvm` is open to
/// neither others nor a group.
pub fn gid_for(
    uid: u32,
    accel: Accelerator,
    kvm: Option<(u32, u32)>,
) -> Result<u32, RootlessError> {
    match (accel, kvm) {
        (Accelerator::Tcg, _) => Ok(uid),
        (Accelerator::Kvm, Some((mode, _))) if mode & 0o006 == 0o006 => Ok(uid),
        (Accelerator::Kvm, Some((mode, gid))) if mode & 0o060 == 0o060 && gid != 0 => Ok(gid),
        (Accelerator::Kvm, Some((mode, _))) => Err(RootlessError::Kvm {
            mode: mode & 0o7777,
        }),
        (Accelerator::Kvm, None) => Err(RootlessError::Kvm { mode: 0 }),
    }
}

fn inspect(path: &Path) -> Result<std::fs::Metadata, RootlessError> {
    std::fs::metadata(path).map_err(|e| RootlessError::Inspect {
        path: path.to_path_buf(),
        kind: e.kind(),
    })
}

/// Picks who QEMU of sandbox `id`, whose VM directory is `dir`, runs as.
///
/// # Errors
/// See [`uid_for`], [`gid_for`] and [`RootlessError::Inspect`].
pub fn pick(id: &str, dir: &Path, accel: Accelerator) -> Result<RunAs, RootlessError> {
    let storage = dir.parent().unwrap_or(Path::new("/"));
    let owners: Vec<u32> = std::fs::read_dir(storage)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path() != dir)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_dir())
                .map(|m| m.uid())
                .collect()
        })
        .unwrap_or_default();
    let uid = uid_for(id, |uid| owners.contains(&uid))?;
    let kvm = match accel {
        Accelerator::Kvm => std::fs::metadata(DEV_KVM)
            .ok()
            .map(|m| (m.permissions().mode(), m.gid())),
        Accelerator::Tcg => None,
    };
    Ok(RunAs {
        uid,
        gid: gid_for(uid, accel, kvm)?,
    })
}

/// Checks that `run_as` can read the files QEMU opens at start: kernel,
/// initrd, firmware.
///
/// # Errors
/// [`RootlessError::Unreadable`] for the first one others cannot read.
pub fn check_assets(c: &HypervisorConfig, run_as: RunAs) -> Result<(), RootlessError> {
    for kind in [AssetType::Kernel, AssetType::Initrd, AssetType::Firmware] {
        let Some(path) = c.asset_path(kind) else {
            continue;
        };
        let m = inspect(path)?;
        let mode = m.permissions().mode();
        let readable = mode & 0o004 != 0
            || (m.uid() == run_as.uid && mode & 0o400 != 0)
            || (m.gid() == run_as.gid && mode & 0o040 != 0);
        if !readable {
            return Err(RootlessError::Unreadable {
                path: path.to_path_buf(),
                uid: run_as.uid,
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// The VM's paths as a rootless QEMU sees them: inside the directory it
/// inherits at [`VM_DIR_FD`].
pub fn qemu_view() -> VmPaths {
    VmPaths::new(Path::new("/proc/self/fd"), &VM_DIR_FD.to_string())
}

/// `path` as QEMU sees it when QEMU's VM directory `real` is `view`:
/// unchanged outside `real`.
pub fn view_of(path: &Path, real: &Path, view: &Path) -> PathBuf {
    match path.strip_prefix(real) {
        Ok(rest) => view.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// Gives `path` to `run_as`.
///
/// # Errors
/// The failing `chown`.
pub fn give(path: &Path, run_as: RunAs) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_gets_its_own_uid_and_the_next_when_taken() {
        let a = uid_for("a", |_| false).expect("a uid");
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&a), "{a}");
        assert_eq!(uid_for("a", |_| false), Ok(a), "stable for one id");
        let next = uid_for("a", |u| u == a).expect("another");
        assert_ne!(next, a);
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&next));
        assert!(matches!(
            uid_for("a", |_| true),
            Err(RootlessError::Unsupported { .. })
        ));
    }

    #[test]
    fn kvm_decides_the_gid() {
        let uid = UID_BASE + 7;
        let cases = [
            (Accelerator::Tcg, None, Ok(uid)),
            (Accelerator::Kvm, Some((0o20666, 0)), Ok(uid)),
            (Accelerator::Kvm, Some((0o20660, 993)), Ok(993)),
            (
                Accelerator::Kvm,
                Some((0o20600, 0)),
                Err(RootlessError::Kvm { mode: 0o600 }),
            ),
            (
                Accelerator::Kvm,
                Some((0o20660, 0)),
                Err(RootlessError::Kvm { mode: 0o660 }),
            ),
        ];
        for (accel, kvm, want) in cases {
            assert_eq!(gid_for(uid, accel, kvm), want, "{accel} {kvm:?}");
        }
    }

    #[test]
    fn what_qemu_would_open_by_path_is_refused_naming_rootless() {
        let base = HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            rootless: true,
            ..HypervisorConfig::default()
        };
        assert_eq!(check_config(&base), Ok(()));
        let mut tpl = base.clone();
        tpl.boot_from_template = true;
        let mut huge = base.clone();
        huge.huge_pages = true;
        let mut mlock = base.clone();
        mlock.mlock = true;
        for (c, key) in [
            (tpl, "boot_from_template"),
            (huge, "enable_hugepages"),
            (mlock, "mlock"),
        ] {
            let e = check_config(&c).expect_err(key).to_string();
            assert!(e.starts_with("rootless = true: ") && e.contains(key), "{e}");
            assert!(e.ends_with("or set rootless = false"), "{e}");
        }
        let disk = Device::Block(crate::device::BlockDrive {
            file: "/d.img".into(),
            ..Default::default()
        });
        let e = check_devices(&base, &[disk]).expect_err("cold block");
        assert!(e.to_string().contains("\"/d.img\""), "{e}");
        assert!(e.to_string().contains("hot-plug it after start"), "{e}");
    }

    #[test]
    fn paths_in_the_vm_directory_are_seen_through_the_inherited_descriptor() {
        let view = qemu_view();
        assert_eq!(view.qmp, Path::new("/proc/self/fd/64/qmp.sock"));
        let real = Path::new("/run/sandvisor/vm/sb");
        assert_eq!(
            view_of(&real.join("kata.sock"), real, &view.dir),
            Path::new("/proc/self/fd/64/kata.sock")
        );
        assert_eq!(
            view_of(Path::new("/elsewhere/x.sock"), real, &view.dir),
            Path::new("/elsewhere/x.sock")
        );
    }

    #[test]
    fn unreadable_assets_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").expect("kernel");
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = HypervisorConfig {
            kernel_path: Some(kernel.clone()),
            ..HypervisorConfig::default()
        };
        let run_as = RunAs {
            uid: UID_BASE,
            gid: UID_BASE,
        };
        assert_eq!(
            check_assets(&c, run_as),
            Err(RootlessError::Unreadable {
                path: kernel.clone(),
                uid: UID_BASE,
                mode: 0o600
            })
        );
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(check_assets(&c, run_as), Ok(()));
    }
}
