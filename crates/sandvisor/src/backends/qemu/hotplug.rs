//! Hot-plug: where devices go (PCI bridge slots, root ports, the SCSI
//! bus), and the QMP sequences that add and remove block devices, vCPUs,
//! memory, network interfaces, VFIO and vhost-user devices.
//!
//! Removal waits for QEMU's `DEVICE_DELETED` event before it frees what
//! the device used (its block node, netdev, chardev or slot): `device_del`
//! only *asks* the guest to release a PCI device, and freeing the backend
//! under a device the guest still drives fails or corrupts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::broadcast;

use super::cmdline::{self, Accelerator, MachineType};
use super::qmp::{self, DeviceProps, Event, Qmp, VersionTriple};
use super::{Qemu, QemuError};
use crate::config::BlockDeviceDriver;
use crate::device::{
    BlockDrive, HotplugResult, MemoryDevice, NetDevice, VfioDevice, VhostUserDevice, VhostUserKind,
};
use crate::hypervisor::{Error, Result};
use crate::hypervisor_type::HypervisorType;

/// Slots on a PCI bridge that devices may take: 0 is the bridge's own.
pub const BRIDGE_SLOTS: std::ops::RangeInclusive<u32> = 1..=30;
/// How long an unplug waits for the guest to release the device.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a hot-plugged device sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A slot on a PCI bridge.
    Bridge {
        /// The bridge index.
        bridge: u32,
        /// The slot.
        slot: u32,
    },
    /// A PCIe root port, alone.
    RootPort(u32),
    /// The root bus.
    RootBus,
    /// The SCSI controller's bus.
    Scsi,
    /// An NVDIMM slot.
    Nvdimm,
}

impl Placement {
    /// The guest PCI path, `bridge/slot` in hex, as Kata's `PciPath`.
    pub fn pci_path(&self) -> Option<String> {
        match self {
            Placement::Bridge { bridge, slot } => {
                Some(format!("{:02x}/{slot:02x}", cmdline::bridge_addr(*bridge)))
            }
            _ => None,
        }
    }

    /// `bus` and `addr` for `device_add`.
    fn bus_addr(&self) -> (Option<String>, Option<String>) {
        match self {
            Placement::Bridge { bridge, slot } => (
                Some(cmdline::bridge_id(*bridge)),
                Some(format!("{slot:#04x}")),
            ),
            Placement::RootPort(i) => (Some(format!("{}{i}", cmdline::ROOT_PORT_PREFIX)), None),
            Placement::Scsi => (Some(cmdline::SCSI_BUS.to_string()), None),
            Placement::RootBus | Placement::Nvdimm => (None, None),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Bridge { bridge, slot } => write!(f, "bridge{bridge}/{slot}"),
            Placement::RootPort(i) => write!(f, "rootport{i}"),
            Placement::RootBus => f.write_str("root"),
            Placement::Scsi => f.write_str("scsi"),
            Placement::Nvdimm => f.write_str("nvdimm"),
        }
    }
}

/// A placement string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad device placement {0:?}: expected bridgeN/S, rootportN, root, scsi or nvdimm")]
pub struct BadPlacement(pub String);

impl FromStr for Placement {
    type Err = BadPlacement;

    fn from_str(s: &str) -> Result<Self, BadPlacement> {
        let bad = || BadPlacement(s.to_string());
        match s {
            "root" => Ok(Placement::RootBus),
            "scsi" => Ok(Placement::Scsi),
            "nvdimm" => Ok(Placement::Nvdimm),
            _ => {
                if let Some(rest) = s.strip_prefix("bridge") {
                    let (b, slot) = rest.split_once('/').ok_or_else(bad)?;
                    Ok(Placement::Bridge {
                        bridge: b.parse().map_err(|_| bad())?,
                        slot: slot.parse().map_err(|_| bad())?,
                    })
                } else if let Some(i) = s.strip_prefix("rootport") {
                    Ok(Placement::RootPort(i.parse().map_err(|_| bad())?))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// What the VM has hot-plugged, and where: the part of its state that
/// another process needs to go on hot-plugging after a re-attach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HotplugState {
    /// PCI bridges.
    pub bridges: u32,
    /// PCIe root ports.
    pub root_ports: u32,
    /// Hot-plugged devices (block, net, vfio, vhost-user) by QEMU id.
    pub devices: BTreeMap<String, Placement>,
    /// Ids of hot-plugged vCPUs, in order.
    pub vcpus: Vec<String>,
    /// Ids of hot-plugged DIMMs.
    pub memory: Vec<String>,
    /// Memory added so far, MiB (DIMMs, or virtio-mem's requested size).
    pub memory_mib: u32,
    /// Block drive indexes in use.
    pub block_indexes: BTreeSet<u32>,
}

impl HotplugState {
    /// An empty state for a VM with `bridges` bridges and `root_ports`
    /// root ports.
    pub fn new(bridges: u32, root_ports: u32) -> Self {
        HotplugState {
            bridges,
            root_ports,
            ..HotplugState::default()
        }
    }

    /// The first free bridge slot.
    pub fn free_bridge_slot(&self) -> Option<Placement> {
        (0..self.bridges).find_map(|bridge| {
            BRIDGE_SLOTS
                .clone()
                .find(|slot| {
                    !self.devices.values().any(
                        |p| matches!(p, Placement::Bridge { bridge: b, slot: s } if *b == bridge && s == slot),
                    )
                })
                .map(|slot| Placement::Bridge { bridge, slot })
        })
    }

    /// The first free root port.
    pub fn free_root_port(&self) -> Option<Placement> {
        (0..self.root_ports)
            .find(|i| !self.devices.values().any(|p| *p == Placement::RootPort(*i)))
            .map(Placement::RootPort)
    }

    /// `id=placement` strings, for [`crate::HypervisorState`].
    pub fn device_strings(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|(id, p)| format!("{id}={p}"))
            .collect()
    }

    /// Restores devices from [`HotplugState::device_strings`] output.
    ///
    /// # Errors
    /// [`BadPlacement`] for a malformed entry.
    pub fn restore_devices(&mut self, entries: &[String]) -> Result<(), BadPlacement> {
        for e in entries {
            let (id, p) = e.split_once('=').ok_or_else(|| BadPlacement(e.clone()))?;
            self.devices.insert(id.to_string(), p.parse()?);
        }
        Ok(())
    }

    /// A vCPU id not in use.
    fn next_vcpu_id(&self) -> String {
        (0..)
            .map(|i| format!("cpu-{i}"))
            .find(|id| !self.vcpus.contains(id))
            .expect("an unbounded range holds a free id")
    }
}

/// Rounds `mib` up to a multiple of `block_mib` (0: no rounding), as
/// Kata's `calcHotplugMemMiBSize`.
pub fn round_up_to_block(mib: u32, block_mib: u32) -> u32 {
    if block_mib == 0 {
        return mib;
    }
    mib.div_ceil(block_mib).saturating_mul(block_mib)
}

/// Waits for `DEVICE_DELETED` of `id` on `events`, up to `timeout`.
async fn wait_deleted(
    events: &mut broadcast::Receiver<Event>,
    id: &str,
    timeout: Duration,
) -> Result<(), QemuError> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::DeviceDeleted {
                    device: Some(d), ..
                }) if d == id => return Ok(()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(QemuError::Qmp(qmp::QmpError::Disconnected {
                        command: "device_del",
                    }))
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(QemuError::UnplugTimeout {
            id: id.to_string(),
            timeout,
        }),
    }
}

/// `device_del`, then wait for the guest to let go.
async fn unplug(qmp: &Qmp, id: &str) -> Result<(), QemuError> {
    let mut events = qmp.subscribe();
    qmp.execute(&qmp::DeviceDel { id: id.to_string() }).await?;
    wait_deleted(&mut events, id, UNPLUG_TIMEOUT).await
}

/// Why vCPU hot-unplug is refused on this QEMU, if it is.
///
/// Under TCG, QEMU before the 9.x series does not tear down an unplugged
/// vCPU's address space; the next change to the memory map (a DIMM, a PCI
/// device) then frees it twice and QEMU aborts ("double free or
/// corruption", seen on QEMU 7.2 here). Refusing the unplug keeps the VM
/// alive. KVM is not affected.
pub fn cpu_unplug_hazard(accel: Option<Accelerator>, version: VersionTriple) -> Option<String> {
    let fixed = (version.major, version.minor) >= (9, 2);
    (accel == Some(Accelerator::Tcg) && !fixed).then(|| {
        format!(
            "vCPU hot-unplug under TCG on QEMU {version} leaves the vCPU's address space behind, \
             and the next memory or device hot-plug crashes QEMU; use KVM or QEMU 9.2 or later"
        )
    })
}

/// `device_del` of a vCPU, then wait until QEMU no longer lists it.
///
/// QEMU 7.2 announces a vCPU's removal with `DEVICE_DELETED` for its
/// `lapic` child only, without the vCPU's id, so the event cannot tell
/// which unplug finished; `query-cpus-fast` can.
async fn unplug_cpu(qmp: &Qmp, id: &str) -> Result<(), QemuError> {
    qmp.execute(&qmp::DeviceDel { id: id.to_string() }).await?;
    let path = format!("/machine/peripheral/{id}");
    let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
    loop {
        let cpus = qmp.execute(&qmp::QueryCpusFast {}).await?;
        if !cpus.iter().any(|c| c.qom_path == path) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(QemuError::UnplugTimeout {
                id: id.to_string(),
                timeout: UNPLUG_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unsupported(op: &'static str, reason: impl Into<String>) -> Error {
    Error::unsupported(op, HypervisorType::Qemu, reason)
}

impl Qemu {
    fn require_hotplug(&self, op: &'static str) -> Result<()> {
        if self.machine().supports_hotplug() {
            Ok(())
        } else {
            Err(unsupported(
                op,
                "the microvm machine type has no ACPI hot-plug; use q35 or pc",
            ))
        }
    }

    /// Adds a block device to the running VM.
    pub(super) async fn hotplug_add_block(
        &mut self,
        mut drive: BlockDrive,
    ) -> Result<HotplugResult> {
        self.require_hotplug("hotplug_add_device")?;
        let node = cmdline::truncate_id(&drive.id);
        let dev_id = format!("virtio-{}", drive.id);
        if self.hot.devices.contains_key(&dev_id) {
            return Err(QemuError::DeviceExists { id: dev_id }.into());
        }
        let driver = self.config.block_driver();
        if driver == BlockDeviceDriver::Nvdimm {
            return self.hotplug_add_nvdimm(drive, dev_id).await;
        }
        let placement = match driver {
            BlockDeviceDriver::VirtioBlock => self
                .hot
                .free_bridge_slot()
                .ok_or(QemuError::NoFreeSlot { id: dev_id.clone() })?,
            BlockDeviceDriver::VirtioScsi => Placement::Scsi,
            other => {
                return Err(unsupported(
                    "hotplug_add_device",
                    format!("block_device_driver {other} cannot be hot-plugged on x86"),
                ))
            }
        };
        let host_device = std::fs::metadata(&drive.file)
            .map(|m| m.file_type().is_block_device())
            .map_err(|source| QemuError::BlockFile {
                path: drive.file.clone(),
                source,
            })?;
        let c = &self.config;
        let add = qmp::BlockdevAdd {
            driver: if drive.format.is_empty() {
                "raw".to_string()
            } else {
                drive.format.clone()
            },
            node_name: node.clone(),
            read_only: drive.read_only,
            cache: c.block_device_cache_set.then_some(qmp::BlockdevCache {
                direct: c.block_device_cache_direct,
                no_flush: c.block_device_cache_noflush,
            }),
            file: qmp::BlockdevFile {
                driver: if host_device { "host_device" } else { "file" },
                filename: drive.file.clone(),
                aio: Some("threads"),
            },
        };
        let qmp = self.qmp().await?;
        qmp.execute(&add).await.map_err(QemuError::from)?;
        let (bus, addr) = placement.bus_addr();
        let (driver_name, props) = match placement {
            Placement::Scsi => {
                let (scsi_id, lun) = cmdline::scsi_id_lun(drive.index);
                (
                    "scsi-hd",
                    DeviceProps::ScsiHd {
                        drive: node.clone(),
                        scsi_id,
                        lun,
                    },
                )
            }
            _ => (
                "virtio-blk-pci",
                DeviceProps::VirtioBlk {
                    drive: node.clone(),
                },
            ),
        };
        let dev = qmp::DeviceAdd {
            driver: driver_name.to_string(),
            id: dev_id.clone(),
            bus,
            addr,
            props,
        };
        if let Err(e) = qmp.execute(&dev).await {
            // Leave nothing behind: the node goes with the failed device.
            if let Err(del) = qmp
                .execute(&qmp::BlockdevDel {
                    node_name: node.clone(),
                })
                .await
            {
                tracing::warn!(node, error = %del, "cannot delete block node after a failed device_add");
            }
            return Err(QemuError::from(e).into());
        }
        drive.pci_path = placement.pci_path();
        tracing::info!(id = dev_id, file = %drive.file.display(), %placement, "block device hot-plugged");
        self.hot.devices.insert(dev_id, placement);
        self.hot.block_indexes.insert(drive.index);
        Ok(HotplugResult::Attached(Some(drive)))
    }

    async fn hotplug_add_nvdimm(
        &mut self,
        drive: BlockDrive,
        dev_id: String,
    ) -> Result<HotplugResult> {
        let size = std::fs::metadata(&drive.file)
            .map_err(|source| QemuError::BlockFile {
                path: drive.file.clone(),
                source,
            })?
            .len();
        let memdev = format!("mem-{}", drive.id);
        let qmp = self.qmp().await?;
        qmp.execute(&qmp::ObjectAdd {
            qom_type: "memory-backend-file",
            id: memdev.clone(),
            size,
            mem_path: Some(drive.file.clone()),
            share: Some(!drive.read_only),
            prealloc: None,
        })
        .await
        .map_err(QemuError::from)?;
        let add = qmp::DeviceAdd {
            driver: "nvdimm".to_string(),
            id: dev_id.clone(),
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
        self.hot.devices.insert(dev_id, Placement::Nvdimm);
        self.hot.block_indexes.insert(drive.index);
        Ok(HotplugResult::Attached(Some(drive)))
    }

    /// Removes a hot-plugged block device.
    pub(super) async fn hotplug_remove_block(
        &mut self,
        drive: BlockDrive,
    ) -> Result<HotplugResult> {
        let dev_id = format!("virtio-{}", drive.id);
        let placement = self
            .hot
            .devices
            .get(&dev_id)
            .cloned()
            .ok_or_else(|| QemuError::UnknownDevice { id: dev_id.clone() })?;
        let qmp = self.qmp().await?;
        if placement == Placement::Nvdimm {
            return Err(unsupported(
                "hotplug_remove_device",
                "NVDIMMs cannot be hot-unplugged",
            ));
        }
        unplug(&qmp, &dev_id).await?;
        self.hot.devices.remove(&dev_id);
        self.hot.block_indexes.remove(&drive.index);
        qmp.execute(&qmp::BlockdevDel {
            node_name: cmdline::truncate_id(&drive.id),
        })
        .await
        .map_err(QemuError::from)?;
        tracing::info!(id = dev_id, "block device hot-unplugged");
        Ok(HotplugResult::Attached(Some(drive)))
    }

    /// Adds up to `amount` vCPUs; returns how many were added. Like Kata,
    /// asking for more than `default_maxvcpus` allows adds what fits.
    pub(super) async fn hotplug_add_cpus(&mut self, amount: u32) -> Result<u32> {
        self.require_hotplug("hotplug_add_device")?;
        let current = self.config.num_vcpus + self.hot.vcpus.len() as u32;
        let max = self.config.default_max_vcpus;
        let amount = if current + amount > max {
            tracing::warn!(
                amount,
                current,
                max,
                "cannot add that many vCPUs: adding up to the maximum"
            );
            max.saturating_sub(current)
        } else {
            amount
        };
        if amount == 0 {
            return Ok(0);
        }
        let qmp = self.qmp().await?;
        let mut slots = qmp
            .execute(&qmp::QueryHotpluggableCpus {})
            .await
            .map_err(QemuError::from)?;
        // QEMU lists slots highest first, and Kata plugs them in that
        // order. A guest given APIC ids out of order (3 before 2) hangs
        // when it onlines the second CPU (seen on QEMU 7.2 with Linux 6.1):
        // fill the topology from the bottom instead.
        slots.sort_by_key(|s| {
            let p = s.props;
            (p.node_id, p.socket_id, p.die_id, p.core_id, p.thread_id)
        });
        let mut added = 0;
        let mut last_err = None;
        for slot in slots.iter().filter(|s| s.qom_path.is_none()) {
            let id = self.hot.next_vcpu_id();
            let add = qmp::DeviceAdd {
                driver: slot.driver.clone(),
                id: id.clone(),
                bus: None,
                addr: None,
                props: DeviceProps::Cpu(slot.props),
            };
            match qmp.execute(&add).await {
                Ok(_) => {
                    tracing::info!(id, "vCPU hot-plugged");
                    self.hot.vcpus.push(id);
                    added += 1;
                    if added == amount {
                        return Ok(added);
                    }
                }
                // Try the next slot, as Kata does.
                Err(e) => {
                    tracing::warn!(id, error = %e, "cannot hot-plug vCPU");
                    last_err = Some(Box::new(e));
                }
            }
        }
        Err(QemuError::CpuHotplug {
            added,
            requested: amount,
            last: last_err,
        }
        .into())
    }

    /// Removes `amount` hot-plugged vCPUs, newest first; returns how many.
    pub(super) async fn hotplug_remove_cpus(&mut self, amount: u32) -> Result<u32> {
        let qmp = self.qmp().await?;
        if let Some(reason) = cpu_unplug_hazard(self.accel, qmp.version()) {
            return Err(unsupported("hotplug_remove_device", reason));
        }
        let hotplugged = self.hot.vcpus.len() as u32;
        if amount > hotplugged {
            return Err(QemuError::CpuRemove {
                requested: amount,
                hotplugged,
            }
            .into());
        }
        for removed in 0..amount {
            let Some(id) = self.hot.vcpus.last().cloned() else {
                return Ok(removed);
            };
            unplug_cpu(&qmp, &id).await?;
            self.hot.vcpus.pop();
            tracing::info!(id, "vCPU hot-unplugged");
        }
        Ok(amount)
    }

    /// Adds a DIMM of `dev.size_mib`; returns the device with its slot and,
    /// when `dev.probe`, its guest address.
    pub(super) async fn hotplug_add_memory(
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
    pub(super) async fn resize_virtio_mem(
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

    /// Adds a network interface on a host tap device.
    pub(super) async fn hotplug_add_net(&mut self, net: NetDevice) -> Result<HotplugResult> {
        self.require_hotplug("hotplug_add_device")?;
        let dev_id = format!("virtio-{}", net.id);
        let netdev = cmdline::truncate_id(&format!("netdev-{}", net.id));
        if self.hot.devices.contains_key(&dev_id) {
            return Err(QemuError::DeviceExists { id: dev_id }.into());
        }
        let placement = self
            .hot
            .free_bridge_slot()
            .ok_or(QemuError::NoFreeSlot { id: dev_id.clone() })?;
        let vhost = self.vhost_net();
        let qmp = self.qmp().await?;
        qmp.execute(&qmp::NetdevAddTap {
            kind: "tap",
            id: netdev.clone(),
            ifname: net.tap_name.clone(),
            script: "no",
            downscript: "no",
            vhost,
            queues: (net.queues > 1).then_some(net.queues),
        })
        .await
        .map_err(QemuError::from)?;
        let (bus, addr) = placement.bus_addr();
        let props = if net.queues > 1 {
            DeviceProps::VirtioNetMq {
                netdev: netdev.clone(),
                mac: net.mac.clone(),
                mq: true,
                vectors: 2 * net.queues + 2,
            }
        } else {
            DeviceProps::VirtioNet {
                netdev: netdev.clone(),
                mac: net.mac.clone(),
            }
        };
        let add = qmp::DeviceAdd {
            driver: "virtio-net-pci".to_string(),
            id: dev_id.clone(),
            bus,
            addr,
            props,
        };
        if let Err(e) = qmp.execute(&add).await {
            let _ = qmp.execute(&qmp::NetdevDel { id: netdev }).await;
            return Err(QemuError::from(e).into());
        }
        tracing::info!(id = dev_id, tap = net.tap_name, %placement, "network device hot-plugged");
        self.hot.devices.insert(dev_id, placement);
        Ok(HotplugResult::Attached(None))
    }

    /// Removes a hot-plugged network interface.
    pub(super) async fn hotplug_remove_net(&mut self, net: NetDevice) -> Result<HotplugResult> {
        let dev_id = format!("virtio-{}", net.id);
        if !self.hot.devices.contains_key(&dev_id) {
            return Err(QemuError::UnknownDevice { id: dev_id }.into());
        }
        let qmp = self.qmp().await?;
        unplug(&qmp, &dev_id).await?;
        self.hot.devices.remove(&dev_id);
        qmp.execute(&qmp::NetdevDel {
            id: cmdline::truncate_id(&format!("netdev-{}", net.id)),
        })
        .await
        .map_err(QemuError::from)?;
        Ok(HotplugResult::Attached(None))
    }

    /// Passes a host PCI device through: on a root port or the root bus
    /// with `hotplug_vfio_on_root_bus`, else on a bridge.
    pub(super) async fn hotplug_add_vfio(&mut self, dev: VfioDevice) -> Result<HotplugResult> {
        self.require_hotplug("hotplug_add_device")?;
        let id = cmdline::truncate_id(&dev.id);
        if self.hot.devices.contains_key(&id) {
            return Err(QemuError::DeviceExists { id }.into());
        }
        let placement = if self.config.hotplug_vfio_on_root_bus {
            match (self.machine(), self.hot.free_root_port()) {
                (MachineType::Q35, Some(port)) => port,
                (MachineType::Q35, None) if self.config.pcie_root_port > 0 => {
                    return Err(QemuError::NoFreeSlot { id }.into())
                }
                _ => Placement::RootBus,
            }
        } else {
            self.hot
                .free_bridge_slot()
                .ok_or(QemuError::NoFreeSlot { id: id.clone() })?
        };
        let props = if dev.bdf.is_empty() {
            DeviceProps::VfioSysfs {
                sysfsdev: dev.sysfs_dev.to_string_lossy().into_owned(),
            }
        } else {
            DeviceProps::VfioHost {
                host: dev.bdf.clone(),
            }
        };
        let (bus, addr) = placement.bus_addr();
        let qmp = self.qmp().await?;
        qmp.execute(&qmp::DeviceAdd {
            driver: "vfio-pci".to_string(),
            id: id.clone(),
            bus,
            addr,
            props,
        })
        .await
        .map_err(QemuError::from)?;
        tracing::info!(id, bdf = dev.bdf, %placement, "VFIO device hot-plugged");
        self.hot.devices.insert(id, placement);
        Ok(HotplugResult::Attached(None))
    }

    /// Removes a passed-through device.
    pub(super) async fn hotplug_remove_vfio(&mut self, dev: VfioDevice) -> Result<HotplugResult> {
        let id = cmdline::truncate_id(&dev.id);
        if !self.hot.devices.contains_key(&id) {
            return Err(QemuError::UnknownDevice { id }.into());
        }
        let qmp = self.qmp().await?;
        unplug(&qmp, &id).await?;
        self.hot.devices.remove(&id);
        Ok(HotplugResult::Attached(None))
    }

    /// Adds a vhost-user-blk device.
    pub(super) async fn hotplug_add_vhost_user(
        &mut self,
        dev: VhostUserDevice,
    ) -> Result<HotplugResult> {
        self.require_hotplug("hotplug_add_device")?;
        if dev.kind != VhostUserKind::Blk {
            return Err(unsupported(
                "hotplug_add_device",
                "only vhost-user-blk can be hot-plugged",
            ));
        }
        let id = format!("virtio-{}", dev.id);
        let chardev = cmdline::truncate_id(&format!("char-{}", dev.id));
        if self.hot.devices.contains_key(&id) {
            return Err(QemuError::DeviceExists { id }.into());
        }
        let placement = self
            .hot
            .free_bridge_slot()
            .ok_or(QemuError::NoFreeSlot { id: id.clone() })?;
        let qmp = self.qmp().await?;
        qmp.execute(&qmp::ChardevAdd {
            id: chardev.clone(),
            backend: qmp::ChardevBackend {
                kind: "socket",
                data: qmp::ChardevSocket {
                    addr: qmp::SocketAddress {
                        kind: "unix",
                        data: qmp::UnixSocketAddress {
                            path: dev.socket_path.clone(),
                        },
                    },
                    server: false,
                },
            },
        })
        .await
        .map_err(QemuError::from)?;
        let (bus, addr) = placement.bus_addr();
        let add = qmp::DeviceAdd {
            driver: "vhost-user-blk-pci".to_string(),
            id: id.clone(),
            bus,
            addr,
            props: DeviceProps::VhostUserBlk {
                chardev: chardev.clone(),
            },
        };
        if let Err(e) = qmp.execute(&add).await {
            let _ = qmp.execute(&qmp::ChardevRemove { id: chardev }).await;
            return Err(QemuError::from(e).into());
        }
        self.hot.devices.insert(id, placement);
        Ok(HotplugResult::Attached(None))
    }

    /// Removes a vhost-user-blk device.
    pub(super) async fn hotplug_remove_vhost_user(
        &mut self,
        dev: VhostUserDevice,
    ) -> Result<HotplugResult> {
        let id = format!("virtio-{}", dev.id);
        if !self.hot.devices.contains_key(&id) {
            return Err(QemuError::UnknownDevice { id }.into());
        }
        let qmp = self.qmp().await?;
        unplug(&qmp, &id).await?;
        self.hot.devices.remove(&id);
        qmp.execute(&qmp::ChardevRemove {
            id: cmdline::truncate_id(&format!("char-{}", dev.id)),
        })
        .await
        .map_err(QemuError::from)?;
        Ok(HotplugResult::Attached(None))
    }

    /// Whether vhost-net is usable: allowed by the config and present.
    pub(super) fn vhost_net(&self) -> bool {
        !self.config.disable_vhost_net && Path::new("/dev/vhost-net").exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_slots_fill_in_order_and_free_up() {
        let mut h = HotplugState::new(2, 0);
        let first = h.free_bridge_slot().expect("free");
        assert_eq!(first, Placement::Bridge { bridge: 0, slot: 1 });
        assert_eq!(first.pci_path().as_deref(), Some("02/01"));
        for slot in BRIDGE_SLOTS {
            h.devices
                .insert(format!("d{slot}"), Placement::Bridge { bridge: 0, slot });
        }
        let next = h.free_bridge_slot().expect("second bridge");
        assert_eq!(next, Placement::Bridge { bridge: 1, slot: 1 });
        assert_eq!(next.pci_path().as_deref(), Some("03/01"));
        h.devices.remove("d7");
        assert_eq!(
            h.free_bridge_slot(),
            Some(Placement::Bridge { bridge: 0, slot: 7 })
        );
        assert_eq!(HotplugState::new(0, 0).free_bridge_slot(), None);
    }

    #[test]
    fn placements_survive_a_round_trip_through_strings() {
        let mut h = HotplugState::new(1, 2);
        h.devices
            .insert("virtio-a".into(), Placement::Bridge { bridge: 0, slot: 3 });
        h.devices.insert("vfio0".into(), Placement::RootPort(1));
        h.devices.insert("virtio-b".into(), Placement::Scsi);
        let strings = h.device_strings();
        assert_eq!(
            strings,
            ["vfio0=rootport1", "virtio-a=bridge0/3", "virtio-b=scsi"]
        );
        let mut back = HotplugState::new(1, 2);
        back.restore_devices(&strings).expect("parses");
        assert_eq!(back.devices, h.devices);
        assert_eq!(back.free_root_port(), Some(Placement::RootPort(0)));
        assert!(back.restore_devices(&["x=bridge/1".into()]).is_err());
    }

    #[test]
    fn vcpu_unplug_is_refused_only_where_it_crashes_qemu() {
        let v = |major, minor| VersionTriple {
            major,
            minor,
            micro: 0,
        };
        let why = cpu_unplug_hazard(Some(Accelerator::Tcg), v(7, 2)).expect("refused");
        assert!(why.contains("QEMU 7.2.0"), "{why}");
        assert_eq!(cpu_unplug_hazard(Some(Accelerator::Kvm), v(7, 2)), None);
        assert_eq!(cpu_unplug_hazard(Some(Accelerator::Tcg), v(9, 2)), None);
        assert_eq!(cpu_unplug_hazard(None, v(7, 2)), None);
    }

    #[test]
    fn memory_rounds_up_to_whole_blocks() {
        assert_eq!(round_up_to_block(100, 128), 128);
        assert_eq!(round_up_to_block(128, 128), 128);
        assert_eq!(round_up_to_block(129, 128), 256);
        assert_eq!(round_up_to_block(100, 0), 100);
    }

    #[test]
    fn device_add_addresses_are_hex_slots() {
        let (bus, addr) = Placement::Bridge {
            bridge: 1,
            slot: 10,
        }
        .bus_addr();
        assert_eq!(bus.as_deref(), Some("pci-bridge-1"));
        assert_eq!(addr.as_deref(), Some("0x0a"));
    }
}
