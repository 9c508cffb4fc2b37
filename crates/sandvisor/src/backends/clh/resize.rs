//! What `vm.resize` is asked for: pure functions of what `vm.info` said
//! and what the caller wants.

use super::api::{HotplugMethod, VmInfo};
use super::vm_config::{ACPI_BLOCK_MIB, VIRTIO_MEM_BLOCK_MIB};

const MIB: u64 = 1 << 20;

/// Why a resize is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// Zero vCPUs.
    #[error("a VM needs at least one vCPU: 0 refused")]
    ZeroVcpus,
    /// Memory hot-plug was not enabled when the VM was created.
    #[error(
        "the VM was created without room for more memory: set memory_slots or enable_virtio_mem"
    )]
    NoHotplugRoom,
    /// The room for hot-plugged memory is used up.
    #[error("cannot grow memory to {requested_mib} MiB: the VM has {current_mib} MiB and room for at most {max_mib} MiB")]
    MemoryLimit {
        /// Asked for.
        requested_mib: u64,
        /// The VM's memory now.
        current_mib: u64,
        /// Boot memory plus the hot-plug room.
        max_mib: u64,
    },
}

/// The vCPU count to ask for: `wanted`, clamped to `max_vcpus`.
///
/// # Errors
/// [`ResizeError::ZeroVcpus`].
pub fn vcpus(wanted: u32, max_vcpus: u32) -> Result<u32, ResizeError> {
    if wanted == 0 {
        return Err(ResizeError::ZeroVcpus);
    }
    Ok(wanted.min(max_vcpus.max(1)))
}

/// The memory plan: the VM's size now and the size to ask for, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The VM's memory now.
    pub current_mib: u64,
    /// The memory to ask for; equal to `current_mib` when nothing changes.
    pub target_mib: u64,
}

/// Rounds `mib` up to a multiple of `block` (0 or 1: unchanged).
pub fn round_up(mib: u64, block: u64) -> u64 {
    if block <= 1 {
        return mib;
    }
    mib.div_ceil(block) * block
}

/// Plans growing the VM `info` describes, booted with `boot_mib`, to
/// `wanted_mib`, in steps of
/// `block_size_mib` and of what its hot-plug method needs (128 MiB for
/// ACPI, 2 MiB for virtio-mem). Memory never shrinks: a smaller `wanted_mib`
/// keeps the current size. Growth stops at boot memory plus the VM's
/// `hotplug_size`, rounded down to whole steps. (ACPI hot-plug grows the
/// `size` CH reports, so the boot size comes from the config.)
///
/// # Errors
/// [`ResizeError::NoHotplugRoom`] when the VM has no `hotplug_size` and must
/// grow; [`ResizeError::MemoryLimit`] when no whole step fits.
pub fn memory(
    info: &VmInfo,
    boot_mib: u64,
    wanted_mib: u64,
    block_size_mib: u32,
) -> Result<MemoryPlan, ResizeError> {
    let current_mib = info.memory_bytes() / MIB;
    let keep = MemoryPlan {
        current_mib,
        target_mib: current_mib,
    };
    if wanted_mib <= current_mib {
        return Ok(keep);
    }
    let mem = &info.config.memory;
    let room = mem.hotplug_size.unwrap_or(0) / MIB;
    if room == 0 {
        return Err(ResizeError::NoHotplugRoom);
    }
    let method_block = match mem.hotplug_method.unwrap_or_default() {
        HotplugMethod::Acpi => ACPI_BLOCK_MIB,
        HotplugMethod::VirtioMem => VIRTIO_MEM_BLOCK_MIB,
    };
    let step = u64::from(block_size_mib.max(method_block));
    let max_mib = boot_mib + room;
    let target = current_mib + round_up(wanted_mib - current_mib, step);
    let target_mib = if target <= max_mib {
        target
    } else {
        current_mib + (max_mib.saturating_sub(current_mib) / step) * step
    };
    if target_mib == current_mib {
        return Err(ResizeError::MemoryLimit {
            requested_mib: wanted_mib,
            current_mib,
            max_mib,
        });
    }
    Ok(MemoryPlan {
        current_mib,
        target_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::clh::api::{MemoryConfig, VmConfig, VmRunState};

    fn info(size_mib: u64, hotplug_mib: Option<u64>, virtio_mem: Option<u64>) -> VmInfo {
        VmInfo {
            config: VmConfig {
                memory: MemoryConfig {
                    size: size_mib * MIB,
                    hotplug_size: hotplug_mib.map(|m| m * MIB),
                    hotplugged_size: virtio_mem.map(|m| m * MIB),
                    hotplug_method: virtio_mem.map(|_| HotplugMethod::VirtioMem),
                    ..MemoryConfig::default()
                },
                ..VmConfig::default()
            },
            state: VmRunState::Running,
            memory_actual_size: None,
            device_tree: Default::default(),
        }
    }

    #[test]
    fn vcpus_are_clamped_and_zero_refused() {
        assert_eq!(vcpus(2, 4), Ok(2));
        assert_eq!(vcpus(8, 4), Ok(4));
        assert_eq!(vcpus(0, 4), Err(ResizeError::ZeroVcpus));
    }

    #[test]
    fn acpi_memory_grows_in_128_mib_steps() {
        let i = info(256, Some(1024), None);
        assert_eq!(
            memory(&i, 256, 512, 0),
            Ok(MemoryPlan {
                current_mib: 256,
                target_mib: 512
            })
        );
        assert_eq!(memory(&i, 256, 300, 0).map(|p| p.target_mib), Ok(384));
        assert_eq!(memory(&i, 256, 300, 256).map(|p| p.target_mib), Ok(512));
    }

    #[test]
    fn memory_never_shrinks() {
        let i = info(512, Some(1024), None);
        assert_eq!(
            memory(&i, 256, 256, 128),
            Ok(MemoryPlan {
                current_mib: 512,
                target_mib: 512
            })
        );
    }

    #[test]
    fn virtio_mem_counts_what_it_added() {
        let i = info(256, Some(1024), Some(256));
        assert_eq!(
            memory(&i, 256, 520, 0),
            Ok(MemoryPlan {
                current_mib: 512,
                target_mib: 520
            })
        );
    }

    #[test]
    fn growth_stops_at_the_room() {
        let i = info(256, Some(512), Some(0));
        assert_eq!(memory(&i, 256, 4096, 0).map(|p| p.target_mib), Ok(768));
        let full = info(256, Some(512), Some(512));
        assert_eq!(
            memory(&full, 256, 1024, 0),
            Err(ResizeError::MemoryLimit {
                requested_mib: 1024,
                current_mib: 768,
                max_mib: 768
            })
        );
        assert_eq!(
            memory(&info(256, None, None), 256, 512, 0),
            Err(ResizeError::NoHotplugRoom)
        );
    }
}
