//! Memory: DIMMs on their own backend objects, and virtio-mem resized.

use super::{round_up_to_block, unsupported};
use crate::backends::qemu::cmdline;
use crate::backends::qemu::qmp::{self, DeviceProps};
use crate::backends::qemu::{Qemu, QemuError};
use crate::device::MemoryDevice;
use crate::hypervisor::Result;

impl Qemu {
    /// Adds a DIMM of `dev.size_mib`; returns the device with its slot and,
    /// when `dev.probe`, its guest address.
    pub(in crate::backends::qemu) async fn hotplug_add_memory(
        &mut self,
        mut dev: MemoryDevice,
    ) -> Result<MemoryDevice> {
        self.require_hotplug("hotplug_add_device")?;
        if self.config.mem_slots == 0 {
            return Err(unsupported(
                "hotplug_add_device",
                "memory_slots is 0: the VM was started without DIMM slots",
            ));
        }
        if dev.size_mib == 0 {
            return Ok(dev);
        }
        let current = u64::from(self.config.memory_size) + u64::from(self.hot.memory_mib);
        let max = self.host_memory_mib;
        if current + u64::from(dev.size_mib) > max {
            return Err(QemuError::MemoryLimit {
                requested_mib: dev.size_mib,
                current_mib: current,
                max_mib: max,
            }
            .into());
        }
        let knobs =
            cmdline::hotplug_memory_knobs(&self.config, &self.devices).map_err(QemuError::from)?;
        let qmp = self.qmp().await?;
        let existing = qmp
            .execute(&qmp::QueryMemoryDevices {})
            .await
            .map_err(QemuError::from)?;
        dev.slot = existing
            .iter()
            .filter_map(|d| d.data.slot)
            .max()
            .map_or(0, |s| s + 1);
        let memdev = format!("mem{}", dev.slot);
        let dimm = format!("dimm{}", dev.slot);
        let (qom_type, mem_path) = match &knobs.backend {
            cmdline::MemoryBackend::Ram => ("memory-backend-ram", None),
            cmdline::MemoryBackend::Memfd => ("memory-backend-memfd", None),
            cmdline::MemoryBackend::File { path } => ("memory-backend-file", Some(path.clone())),
        };
        qmp.execute(&qmp::ObjectAdd {
            qom_type,
            id: memdev.clone(),
            size: u64::from(dev.size_mib) << 20,
            mem_path,
            share: knobs.share.then_some(true),
            prealloc: knobs.prealloc.then_some(true),
        })
        .await
        .map_err(QemuError::from)?;
        let add = qmp::DeviceAdd {
            driver: "pc-dimm".to_string(),
            id: dimm.clone(),
            bus: None,
            addr: None,
            props: DeviceProps::Memdev {
                memdev: memdev.clone(),
            },
        };
        if let Err(e) = qmp.execute(&add).await {
            let _ = qmp.execute(&qmp::ObjectDel { id: memdev }).await;
            return Err(QemuError::from(e).into());
        }
        if dev.probe {
            let devices = qmp
                .execute(&qmp::QueryMemoryDevices {})
                .await
                .map_err(QemuError::from)?;
            dev.addr = devices
                .iter()
                .find(|d| d.data.id.as_deref() == Some(dimm.as_str()))
                .and_then(|d| d.data.addr)
                .ok_or_else(|| QemuError::MemoryAddress { id: dimm.clone() })?;
        }
        tracing::info!(id = dimm, size_mib = dev.size_mib, "memory hot-plugged");
        self.hot.memory.push(dimm);
        self.hot.memory_mib += dev.size_mib;
        Ok(dev)
    }

    /// Sets virtio-mem's requested size so that the VM has `total_mib`.
    pub(in crate::backends::qemu) async fn resize_virtio_mem(
        &mut self,
        total_mib: u32,
        block_mib: u32,
    ) -> Result<u32> {
        // virtio-mem plugs in blocks of 2 MiB at least.
        let block = block_mib.max(2);
        let extra = round_up_to_block(total_mib.saturating_sub(self.config.memory_size), block);
        let qmp = self.qmp().await?;
        qmp.execute(&qmp::QomSet {
            path: format!("/machine/peripheral/{}", cmdline::VIRTIO_MEM_ID),
            property: "requested-size",
            value: u64::from(extra) << 20,
        })
        .await
        .map_err(QemuError::from)?;
        self.hot.memory_mib = extra;
        Ok(self.config.memory_size + extra)
    }
}
