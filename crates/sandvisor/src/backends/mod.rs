//! The backends, one per [`HypervisorType`], and the facts about each that
//! the rest of sandvisor reads instead of matching on the type.
//!
//! | backend | binary | Kata's install paths | install | Kata loader rules | can do |
//! |---|---|---|---|---|---|
//! | qemu | `qemu-system-x86_64` | `/usr/bin`, `/opt/kata/bin` | `apt-get install qemu-system-x86` | machine `q35` by default; `use_vsock` without `/dev/vhost-vsock` is a hybrid vsock through vhost-device-vsock, or an error | everything but VFIO here; vCPU hot-unplug needs QEMU ≥ 9.2 under TCG |
//! | firecracker | `firecracker` (+ `jailer`) | `/usr/bin`, `/opt/kata/bin` | `scripts/setup.sh` (release binary) | forces `use_vsock` and `disable_vhost_net` | all but vCPU hot-plug; PCI or placeholder hot-plug; jailer |
//! | acrn | `acrn-dm` (+ `acrnctl`) | `/usr/bin` | an ACRN Service VM | — | boot, stop, pause, re-attach; block hot-plug into placeholders (`acrnctl blkrescan`); UUIDs from a locked pool |
//! | clh | `cloud-hypervisor` | `/usr/bin`, `/opt/kata/bin` | `scripts/setup.sh` (release binary) | forces `use_vsock` and `disable_vhost_net` | every operation but making templates; agent over a hybrid vsock |
//! | mock | — | — | — | — | everything, with no VM |
//!
//! `shared_fs` and `block_device_driver` values a backend does not list in
//! its facts are refused when a config file names them: qemu takes
//! virtio-9p, virtio-fs, none and virtio-scsi, virtio-blk, nvdimm;
//! firecracker none and virtio-mmio, virtio-blk; clh virtio-fs, none and
//! virtio-blk; acrn none and virtio-blk.
//!
//! `vmm/` holds what the VMM-process backends share: process supervision,
//! virtiofsd, vhost-device-vsock, the REST client and the VMM lookup.

pub mod acrn;
pub mod clh;
pub mod firecracker;
pub mod mock;
pub mod qemu;
pub mod vmm;

use std::path::PathBuf;

use crate::config::{BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::hypervisor::Hypervisor;
use crate::hypervisor_type::HypervisorType;

/// What sandvisor knows about a backend before building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFacts {
    /// The backend.
    pub kind: HypervisorType,
    /// Its name for people.
    pub display_name: &'static str,
    /// The VMM binary's file name; `None` for the mock.
    pub binary: Option<&'static str>,
    /// Where Kata installs that binary, most preferred first.
    pub kata_paths: &'static [&'static str],
    /// How to install the binary.
    pub install_hint: &'static str,
    /// The machine type a config gets when it names none.
    pub default_machine_type: Option<&'static str>,
    /// Kata's loader forces `use_vsock = true` and `disable_vhost_net = true`
    /// for this backend (its agent channel is a hybrid vsock).
    pub forces_vsock: bool,
    /// Whether the backend runs a guest with an agent (the mock runs none).
    pub has_guest: bool,
    /// Whether guests need KVM: the VMM has no software emulation (TCG).
    pub kvm_only: bool,
    /// The `shared_fs` values it honours; any other is refused when a
    /// config file names it.
    pub shared_fs: &'static [SharedFs],
    /// The `block_device_driver` values it honours; any other is refused
    /// when a config file names it.
    pub block_drivers: &'static [BlockDeviceDriver],
    /// One line on what it can do, for `check` and docs.
    pub summary: &'static str,
}

/// The facts of every backend, in [`HypervisorType::ALL`] order.
pub const BACKENDS: [BackendFacts; 5] = [
    BackendFacts {
        kind: HypervisorType::Qemu,
        display_name: "QEMU",
        binary: Some("qemu-system-x86_64"),
        kata_paths: &[
            "/usr/bin/qemu-system-x86_64",
            "/opt/kata/bin/qemu-system-x86_64",
        ],
        install_hint: "install qemu-system-x86 (`apt-get install qemu-system-x86`), or set `path`",
        default_machine_type: Some("q35"),
        forces_vsock: false,
        has_guest: true,
        kvm_only: false,
        shared_fs: &[SharedFs::Virtio9p, SharedFs::VirtioFs, SharedFs::None],
        block_drivers: &[
            BlockDeviceDriver::VirtioScsi,
            BlockDeviceDriver::VirtioBlock,
            BlockDeviceDriver::Nvdimm,
        ],
        summary: "every operation; vCPU hot-unplug needs QEMU >= 9.2 under TCG",
    },
    BackendFacts {
        kind: HypervisorType::Firecracker,
        display_name: "Firecracker",
        binary: Some("firecracker"),
        kata_paths: &["/usr/bin/firecracker", "/opt/kata/bin/firecracker"],
        install_hint: "run scripts/setup.sh (installs firecracker and jailer), or set `path`",
        default_machine_type: None,
        forces_vsock: true,
        has_guest: true,
        kvm_only: true,
        shared_fs: &[SharedFs::None],
        block_drivers: &[BlockDeviceDriver::VirtioMmio, BlockDeviceDriver::VirtioBlock],
        summary: "every operation but vCPU hot-plug; drives and interfaces hot-plug over PCI (or placeholder drives); memory with virtio-mem; optional jailer",
    },
    BackendFacts {
        kind: HypervisorType::Acrn,
        display_name: "ACRN",
        binary: Some("acrn-dm"),
        kata_paths: &["/usr/bin/acrn-dm"],
        install_hint: "run on an ACRN Service VM with acrn-dm and acrnctl installed, or set `path`",
        default_machine_type: None,
        forces_vsock: false,
        has_guest: true,
        kvm_only: false,
        shared_fs: &[SharedFs::None],
        block_drivers: &[BlockDeviceDriver::VirtioBlock],
        summary: "boot, stop, pause, re-attach and block hot-plug into placeholders; needs an ACRN Service VM",
    },
    BackendFacts {
        kind: HypervisorType::Clh,
        display_name: "Cloud Hypervisor",
        binary: Some("cloud-hypervisor"),
        kata_paths: &[
            "/usr/bin/cloud-hypervisor",
            "/opt/kata/bin/cloud-hypervisor",
        ],
        install_hint: "run scripts/setup.sh (installs cloud-hypervisor), or set `path`",
        default_machine_type: None,
        forces_vsock: true,
        has_guest: true,
        kvm_only: true,
        shared_fs: &[SharedFs::VirtioFs, SharedFs::None],
        block_drivers: &[BlockDeviceDriver::VirtioBlock],
        summary: "every operation but templates; a stock Linux guest needs a KVM host without PVM",
    },
    BackendFacts {
        kind: HypervisorType::Mock,
        display_name: "mock",
        binary: None,
        kata_paths: &[],
        install_hint: "nothing to install",
        default_machine_type: None,
        forces_vsock: false,
        has_guest: false,
        kvm_only: false,
        shared_fs: &[
            SharedFs::Virtio9p,
            SharedFs::VirtioFs,
            SharedFs::VirtioFsNydus,
            SharedFs::None,
        ],
        block_drivers: &[
            BlockDeviceDriver::VirtioScsi,
            BlockDeviceDriver::VirtioBlock,
            BlockDeviceDriver::VirtioBlockCcw,
            BlockDeviceDriver::VirtioMmio,
            BlockDeviceDriver::Nvdimm,
        ],
        summary: "every operation succeeds, with no VM (for tests of the layers above)",
    },
];

/// The facts of `kind`.
pub fn facts(kind: HypervisorType) -> &'static BackendFacts {
    // BACKENDS lists every type once, in HypervisorType::ALL order.
    &BACKENDS[kind as usize]
}

impl BackendFacts {
    /// The `shared_fs` a config that names none gets: the default
    /// (virtio-9p) where the backend has it, else the first it honours.
    pub fn default_shared_fs(&self) -> SharedFs {
        if self.shared_fs.contains(&SharedFs::default()) {
            SharedFs::default()
        } else {
            self.shared_fs.first().copied().unwrap_or_default()
        }
    }

    /// The `block_device_driver` a config that names none gets: the
    /// default (virtio-scsi) where the backend has it, else the first it
    /// honours.
    pub fn default_block_driver(&self) -> BlockDeviceDriver {
        let default = crate::defaults::DEFAULT_BLOCK_DRIVER;
        if self.block_drivers.contains(&default) {
            default
        } else {
            self.block_drivers.first().copied().unwrap_or(default)
        }
    }

    /// The binary a config without `path` gets: found by
    /// [`vmm::lookup::find`] (`$SANDVISOR_VMM_DIR`, then `PATH`, then
    /// [`BackendFacts::kata_paths`]), else the first Kata path (which
    /// `sandvisor check` then reports missing). `None` for the mock.
    pub fn default_binary(&self) -> Option<PathBuf> {
        let binary = vmm::lookup::Binary::for_backend(self.kind)?;
        Some(match vmm::lookup::find(&binary, None) {
            Ok(found) => found.path,
            Err(_) => self
                .kata_paths
                .first()
                .map_or_else(|| PathBuf::from(binary.name), PathBuf::from),
        })
    }
}

/// The checks of a validated config that `create_sandbox` makes before it
/// touches anything, run without building a backend, so that `sandvisor
/// check` refuses what `create` would: for QEMU the machine type and the
/// memory settings ([`qemu::QemuSpec::new`], the code `create_sandbox`
/// runs), for Firecracker its vCPU limit.
///
/// # Errors
/// The backend's error, as `create_sandbox` would return it.
pub fn preflight(
    kind: HypervisorType,
    config: &HypervisorConfig,
) -> Result<(), crate::hypervisor::Error> {
    match kind {
        HypervisorType::Qemu => qemu::QemuSpec::new(config)
            .map(drop)
            .map_err(|e| qemu::QemuError::from(e).into()),
        HypervisorType::Firecracker => firecracker::preflight(config),
        HypervisorType::Clh | HypervisorType::Acrn | HypervisorType::Mock => Ok(()),
    }
}

/// Builds the backend for `kind`, not yet created or started.
///
/// This is `newHypervisor` of Kata's `hypervisor.go`. Because the type is an
/// enum, an unknown type is rejected when it is parsed, not here.
pub fn new_hypervisor(kind: HypervisorType) -> Box<dyn Hypervisor> {
    match kind {
        HypervisorType::Qemu => Box::new(qemu::Qemu::new()),
        HypervisorType::Firecracker => Box::new(firecracker::Firecracker::new()),
        HypervisorType::Clh => Box::new(clh::Clh::new()),
        HypervisorType::Acrn => Box::new(acrn::Acrn::new()),
        HypervisorType::Mock => Box::new(mock::MockHypervisor::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_backend_in_order() {
        for (facts, kind) in BACKENDS.iter().zip(HypervisorType::ALL) {
            assert_eq!(facts.kind, kind);
            assert_eq!(super::facts(kind).kind, kind);
        }
    }

    #[test]
    fn only_the_mock_has_no_binary_and_no_guest() {
        for f in &BACKENDS {
            let mock = f.kind == HypervisorType::Mock;
            assert_eq!(f.binary.is_none(), mock, "{}", f.kind);
            assert_eq!(f.has_guest, !mock, "{}", f.kind);
            assert_eq!(f.default_binary().is_none(), mock, "{}", f.kind);
        }
    }

    #[test]
    fn defaults_belong_to_their_backend() {
        assert_eq!(
            facts(HypervisorType::Qemu).default_machine_type,
            Some("q35")
        );
        let clh = facts(HypervisorType::Clh)
            .default_binary()
            .expect("clh has a binary");
        assert!(clh.ends_with("cloud-hypervisor"), "{clh:?}");
        assert!(facts(HypervisorType::Clh).forces_vsock);
        assert!(facts(HypervisorType::Firecracker).forces_vsock);
        assert!(!facts(HypervisorType::Qemu).forces_vsock);
    }
}
