//! Hot-plug: where devices go (PCI bridge slots, root ports, the SCSI
//! bus), and the QMP sequences that add and remove block devices, vCPUs,
//! memory, network interfaces, VFIO and vhost-user devices.
//!
//! Removal waits for QEMU's `DEVICE_DELETED` event before it frees what
//! the device used (its block node, netdev, chardev or slot): `device_del`
//! only *asks* the guest to release a PCI device, and freeing the backend
//! under a device the guest still drives fails or corrupts.
//!
//! This module holds the placement bookkeeping and the unplug wait; the
//! sequences are in `block`, `cpu`, `memory` and `devices`.

mod block;
mod cpu;
mod devices;
mod memory;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::broadcast;

use super::cmdline;
use super::qmp::{self, Event, Qmp};
use super::{Qemu, QemuError};
use crate::hypervisor::{Error, Result};
use crate::hypervisor_type::HypervisorType;

pub use self::cpu::cpu_unplug_hazard;

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

    /// Whether vhost-net is usable: allowed by the config and present.
    pub(super) fn vhost_net(&self) -> bool {
        !self.config.disable_vhost_net && Path::new("/dev/vhost-net").exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::qemu::cmdline::Accelerator;
    use crate::backends::qemu::qmp::VersionTriple;

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
