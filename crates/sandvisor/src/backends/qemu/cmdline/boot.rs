//! What the guest boots: the kernel, its command line, the initrd or the
//! image (an NVDIMM or a virtio-blk disk).

use std::path::Path;

use super::{path_opt, Args, CmdlineError, MachineType, Plan};
use crate::assets::AssetType;
use crate::config::HypervisorConfig;
use crate::param::{self, serialize_params, Param};

/// Kata's amd64 kernel parameters, with `console=ttyS0` for the serial
/// console instead of `hvc0`/`hvc1`.
fn arch_kernel_params(config: &HypervisorConfig, machine: MachineType) -> Vec<Param> {
    let mut p: Vec<Param> = [
        ("tsc", "reliable"),
        ("no_timer_check", ""),
        ("rcupdate.rcu_expedited", "1"),
        ("i8042.direct", "1"),
        ("i8042.dumbkbd", "1"),
        ("i8042.nopnp", "1"),
        ("i8042.noaux", "1"),
        ("noreplace-smp", ""),
        ("reboot", "k"),
        ("console", "ttyS0"),
        ("cryptomgr.notests", ""),
        ("net.ifnames", "0"),
    ]
    .into_iter()
    .map(|(k, v)| Param::new(k, v))
    .collect();
    if machine != MachineType::Microvm {
        p.push(Param::new("pci", "lastbus=0"));
    }
    if config.iommu {
        p.push(Param::new("intel_iommu", "on"));
        p.push(Param::new("iommu", "pt"));
    } else {
        p.push(Param::new("iommu", "off"));
    }
    p
}

/// How the image reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImageMode {
    Nvdimm,
    VirtioBlk,
}

pub(super) fn image_mode(config: &HypervisorConfig, machine: MachineType) -> Option<ImageMode> {
    config.image_path.as_ref()?;
    if config.disable_image_nvdimm || machine == MachineType::Microvm {
        Some(ImageMode::VirtioBlk)
    } else {
        Some(ImageMode::Nvdimm)
    }
}

/// The guest kernel command line, as Kata orders it: arch defaults, root
/// parameters for an image, `debug` or `quiet`, `panic=1`, `nr_cpus`,
/// `agent.use_vsock`, then the config's `kernel_params`, which win because
/// the kernel honours the last value.
///
/// # Errors
/// [`CmdlineError::UnsupportedMachine`].
pub fn kernel_params(config: &HypervisorConfig) -> Result<Vec<Param>, CmdlineError> {
    let machine = MachineType::parse(&config.hypervisor_machine_type)?;
    Ok(kernel_params_for(config, machine))
}

/// [`kernel_params`] for a machine type already parsed.
pub(super) fn kernel_params_for(config: &HypervisorConfig, machine: MachineType) -> Vec<Param> {
    let mut params = arch_kernel_params(config, machine);
    match image_mode(config, machine) {
        Some(ImageMode::Nvdimm) => params.extend(param::nvdimm_kernel_root_params()),
        Some(ImageMode::VirtioBlk) => params.extend(param::virtio_blk_kernel_root_params()),
        None => {}
    }
    if config.debug {
        params.push(Param::new("debug", ""));
    } else {
        params.push(Param::new("quiet", ""));
    }
    if config.image_path.is_some() {
        let show = if config.debug { "true" } else { "false" };
        params.push(Param::new("systemd.show_status", show));
    }
    params.push(Param::new("panic", "1"));
    params.push(Param::new("nr_cpus", config.default_max_vcpus.to_string()));
    params.push(Param::new("agent.use_vsock", config.use_vsock.to_string()));
    params.extend(config.kernel_params.iter().cloned());
    params
}

/// The image, as an NVDIMM or a read-only virtio-blk disk.
///
/// # Errors
/// [`CmdlineError::MissingImageSize`] for an NVDIMM without its size.
pub(super) fn image(p: &Plan<'_>) -> Result<Args, CmdlineError> {
    let c = p.spec.config;
    let mut a = Args::default();
    if let (Some(mode), Some(path)) = (p.image, c.asset_path(AssetType::Image)) {
        match mode {
            ImageMode::Nvdimm => {
                let size = p
                    .spec
                    .image_size
                    .ok_or_else(|| CmdlineError::MissingImageSize(path.to_path_buf()))?;
                a.push2(
                    "-object",
                    format!(
                        "memory-backend-file,id=mem0,mem-path={},size={size},readonly=on",
                        path_opt(path)
                    ),
                );
                a.push2("-device", "nvdimm,id=nv0,memdev=mem0,unarmed=on");
            }
            ImageMode::VirtioBlk => {
                a.push2(
                    "-drive",
                    format!(
                        "id=image0,file={},aio=threads,format=raw,if=none,readonly=on",
                        path_opt(path)
                    ),
                );
                a.push2(
                    "-device",
                    format!(
                        "{},drive=image0,id=virtio-image0,share-rw=on{}",
                        p.transport.driver("virtio-blk"),
                        p.iommu_platform
                    ),
                );
            }
        }
    }
    Ok(a)
}

/// `-kernel`, `-initrd` (without an image) and `-append`.
pub(super) fn kernel(p: &Plan<'_>, kernel: &Path) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    a.push2("-kernel", path_opt(kernel));
    if p.image.is_none() {
        if let Some(initrd) = c.asset_path(AssetType::Initrd) {
            a.push2("-initrd", path_opt(initrd));
        }
    }
    a.push2(
        "-append",
        serialize_params(&kernel_params_for(c, p.machine), "=").join(" "),
    );
    a
}
