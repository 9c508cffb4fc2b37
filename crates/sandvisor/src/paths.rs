//! Where sandvisor keeps things on the host.
//!
//! | what | root | other users | override |
//! |---|---|---|---|
//! | guest assets | `/var/lib/sandvisor/assets` | `$XDG_DATA_HOME/sandvisor/assets` | `SANDVISOR_ASSET_DIR` |
//! | runtime state | `/run/sandvisor` | `$XDG_RUNTIME_DIR/sandvisor` | `SANDVISOR_RUNTIME_DIR` |

use std::env;
use std::path::PathBuf;

/// File name of the guest kernel in the asset directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of the guest initrd in the asset directory.
pub const INITRD_FILE: &str = "initrd.img";

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
