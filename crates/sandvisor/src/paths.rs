//! Where sandvisor keeps things on the host.
//!
//! | what | root | other users | override |
//! |---|---|---|---|
//! | guest assets | `/var/lib/sandvisor/assets` | `$XDG_DATA_HOME/sandvisor/assets` | `SANDVISOR_ASSET_DIR` |
//! | runtime state | `/run/sandvisor` | `$XDG_RUNTIME_DIR/sandvisor` | `SANDVISOR_RUNTIME_DIR` |

use std::env;
use std::path::{Path, PathBuf};

/// File name of the guest kernel in the asset directory: the uncompressed
/// ELF, booted through its PVH entry point.
pub const KERNEL_FILE: &str = "vmlinux";
/// File name of the same kernel as a bzImage, kept for kernels without PVH
/// support and for users who want it.
pub const BZIMAGE_FILE: &str = "vmlinuz";
/// File name of the guest initrd in the asset directory.
pub const INITRD_FILE: &str = "initrd.img";

/// The subdirectory of the asset directory that `scripts/setup.sh` fills
/// with the sandbox kernel (`image build --kernel-from source`) and its
/// initrd, beside the default cloud-kernel assets.
pub const SANDBOX_KERNEL_DIR: &str = "sandbox-kernel";

/// The environment variable that overrides [`sandbox_kernel_asset_dir`].
pub const SANDBOX_KERNEL_DIR_ENV: &str = "SANDVISOR_SANDBOX_KERNEL_DIR";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The guest asset directory that `image build` fills and `run` reads.
pub fn asset_dir() -> PathBuf {
    if let Some(dir) = env::var_os("SANDVISOR_ASSET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/lib/sandvisor/assets");
    }
    env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home().join(".local/share"), PathBuf::from)
        .join("sandvisor/assets")
}

/// Where the sandbox-kernel assets are: `$SANDVISOR_SANDBOX_KERNEL_DIR`,
/// else [`SANDBOX_KERNEL_DIR`] in [`asset_dir`].
pub fn sandbox_kernel_asset_dir() -> PathBuf {
    env::var_os(SANDBOX_KERNEL_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| asset_dir().join(SANDBOX_KERNEL_DIR), PathBuf::from)
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

/// Where VM directories (sockets, state files) live: `<runtime>/vm`.
pub fn vm_storage_dir() -> PathBuf {
    runtime_dir().join("vm")
}

#[cfg(test)]
mod tests {
    use super::*;

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
