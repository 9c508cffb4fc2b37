//! The backend's typed view of a validated config, made once by
//! `create_sandbox` (or by a re-attach) so that the start path, hot-plug
//! and `capabilities` read typed values instead of parsing strings again.

use std::path::PathBuf;

use super::cmdline::{self, CmdlineError, MachineType};
use crate::assets::AssetType;
use crate::config::HypervisorConfig;

/// What the QEMU backend derives from a validated [`HypervisorConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// The machine type, from `machine_type`.
    pub machine: MachineType,
    /// The image when it is mapped as an NVDIMM, whose size the command
    /// line needs; `None` without an image or when it goes on virtio-blk.
    pub nvdimm_image: Option<PathBuf>,
    /// The vhost-device-vsock binary when the agent's vsock is a hybrid
    /// vsock (`use_vsock` and `vhost_user_vsock_daemon`); `None` for the
    /// kernel's vhost-vsock or virtio-serial.
    pub hybrid_vsock: Option<PathBuf>,
}

impl QemuSpec {
    /// The spec of `config`, which [`HypervisorConfig::validate`] passed.
    ///
    /// Rejects here, not at start, what cannot be launched whatever the
    /// devices: an unknown machine type, and memory settings QEMU cannot
    /// combine (a template with a hybrid vsock among them: it needs shared
    /// memory).
    ///
    /// # Errors
    /// [`CmdlineError::UnsupportedMachine`], and the errors of
    /// [`cmdline::memory_knobs`].
    pub fn new(config: &HypervisorConfig) -> Result<Self, CmdlineError> {
        let machine = MachineType::parse(&config.hypervisor_machine_type)?;
        cmdline::memory_knobs(config, &[])?;
        let nvdimm_image = match config.asset_path(AssetType::Image) {
            Some(img) if !config.disable_image_nvdimm && machine != MachineType::Microvm => {
                Some(img.to_path_buf())
            }
            _ => None,
        };
        let hybrid_vsock = config
            .vhost_user_vsock_daemon
            .clone()
            .filter(|_| config.use_vsock);
        Ok(QemuSpec {
            machine,
            nvdimm_image,
            hybrid_vsock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(machine: &str, image: bool, disable_nvdimm: bool) -> HypervisorConfig {
        let mut c = HypervisorConfig {
            kernel_path: Some("/k/vmlinuz".into()),
            hypervisor_machine_type: machine.into(),
            disable_image_nvdimm: disable_nvdimm,
            ..HypervisorConfig::default()
        };
        if image {
            c.image_path = Some("/k/root.img".into());
        } else {
            c.initrd_path = Some("/k/initrd.img".into());
        }
        c.validate().expect("valid");
        c
    }

    #[test]
    fn the_machine_and_the_nvdimm_image_are_resolved_once() {
        let cases = [
            ("", true, false, MachineType::Q35, Some("/k/root.img")),
            ("pc", true, true, MachineType::Pc, None),
            ("microvm", true, false, MachineType::Microvm, None),
            ("q35", false, false, MachineType::Q35, None),
        ];
        for (machine, image, disable, want_machine, want_image) in cases {
            let spec = QemuSpec::new(&config(machine, image, disable)).expect("spec");
            assert_eq!(spec.machine, want_machine, "{machine:?}");
            assert_eq!(
                spec.nvdimm_image,
                want_image.map(PathBuf::from),
                "{machine:?}"
            );
        }
    }

    #[test]
    fn what_cannot_be_launched_is_refused() {
        assert_eq!(
            QemuSpec::new(&config("virt", false, false)),
            Err(CmdlineError::UnsupportedMachine("virt".into()))
        );
        let mut c = config("q35", false, false);
        c.use_vsock = true;
        c.vhost_user_vsock_daemon = Some("/bin/vhost-device-vsock".into());
        assert_eq!(
            QemuSpec::new(&c).map(|s| s.hybrid_vsock),
            Ok(Some(PathBuf::from("/bin/vhost-device-vsock")))
        );
        c.boot_to_be_template = true;
        c.memory_path = Some("/run/tpl/memory".into());
        c.devices_state_path = Some("/run/tpl/state".into());
        assert_eq!(
            QemuSpec::new(&c),
            Err(CmdlineError::TemplateWithSharedMemory)
        );
        let mut c = config("q35", false, false);
        c.enable_vhost_user_store = true;
        assert_eq!(
            QemuSpec::new(&c),
            Err(CmdlineError::VhostUserWithoutHugepages)
        );
    }
}
