//! Hot-plug: drives over PCI or by placeholder swap, and virtio-mem; and
//! what was plugged, as `save` keeps it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::api::{
    DeleteDrive, DeleteNetworkInterface, MemoryHotplugSizeUpdate, PartialDrive, PatchDrive,
    PatchMemoryHotplug, PutDrive, PutNetworkInterface,
};
use super::caps::no_vcpu_hotplug;
use super::jailer::Placement;
use super::vm_config::{self, HotplugMode};
use super::{jail_fs, FcError, Firecracker, API_TIMEOUT, FC};
use crate::backends::vmm::rest::RestClient;
use crate::device::{BlockDrive, Device, HotplugResult, MemoryDevice};
use crate::hypervisor::{self, Error, VmState};

/// What was hot-plugged, for unplug and for `save`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Hot {
    /// PCI-plugged drives: id to the in-jail file placed (if any).
    pub(super) drives: BTreeMap<String, Option<PathBuf>>,
    /// Placeholder ids, in order.
    pub(super) placeholders: Vec<String>,
    /// Swapped placeholders: placeholder id to the drive id in it.
    pub(super) swapped: BTreeMap<String, String>,
    /// PCI-plugged interfaces.
    pub(super) nets: Vec<String>,
    /// virtio-mem MiB asked for.
    pub(super) memory_mib: u32,
}

impl Hot {
    pub(super) fn to_strings(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (id, f) in &self.drives {
            let f = f
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            v.push(format!("drive:{id}={f}"));
        }
        for p in &self.placeholders {
            match self.swapped.get(p) {
                Some(d) => v.push(format!("placeholder:{p}={d}")),
                None => v.push(format!("placeholder:{p}=")),
            }
        }
        for n in &self.nets {
            v.push(format!("net:{n}"));
        }
        v
    }

    pub(super) fn from_strings(items: &[String], memory_mib: u32) -> Hot {
        let mut h = Hot {
            memory_mib,
            ..Hot::default()
        };
        for s in items {
            if let Some(rest) = s.strip_prefix("drive:") {
                let (id, f) = rest.split_once('=').unwrap_or((rest, ""));
                h.drives.insert(
                    id.to_string(),
                    Some(PathBuf::from(f)).filter(|_| !f.is_empty()),
                );
            } else if let Some(rest) = s.strip_prefix("placeholder:") {
                let (p, d) = rest.split_once('=').unwrap_or((rest, ""));
                h.placeholders.push(p.to_string());
                if !d.is_empty() {
                    h.swapped.insert(p.to_string(), d.to_string());
                }
            } else if let Some(n) = s.strip_prefix("net:") {
                h.nets.push(n.to_string());
            }
        }
        h
    }
}

impl Firecracker {
    /// Hot-plugs a drive, a network interface (PCI mode) or memory.
    pub(super) async fn hotplug_add(
        &mut self,
        device: Device,
    ) -> hypervisor::Result<HotplugResult> {
        self.require("hotplug_add_device", &[VmState::Running, VmState::Paused])?;
        let api = self.api()?;
        let result = match device {
            Device::Block(d) => self.hotplug_add_block(&api, d).await,
            Device::Net(n) if self.options.hotplug == HotplugMode::Pci => {
                if self.hot.nets.contains(&n.id) {
                    Err(FcError::DeviceExists { id: n.id })
                } else {
                    let put = PutNetworkInterface(vm_config::network_interface(&n));
                    match api.call(&put, API_TIMEOUT).await {
                        Ok(()) => {
                            self.hot.nets.push(n.id);
                            Ok(HotplugResult::Attached(None))
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            }
            Device::Cpu(_) => return Err(no_vcpu_hotplug("hotplug_add_device")),
            Device::Memory(m) => {
                let target = self.config.memory_size + self.hot.memory_mib + m.size_mib;
                self.resize_memory_inner(&api, target)
                    .await
                    .map(|(_, d)| HotplugResult::MemoryMib(d.size_mib))
            }
            other => {
                return Err(Error::unsupported(
                    "hotplug_add_device",
                    FC,
                    format!(
                        "{} devices cannot be hot-plugged into firecracker{}",
                        other.device_type(),
                        if matches!(other, Device::Net(_)) {
                            " in MMIO mode (hot-plug mode pci can)"
                        } else {
                            ""
                        }
                    ),
                ))
            }
        };
        self.or_exited(result).await
    }

    /// Hot-unplugs a drive or a hot-plugged network interface.
    pub(super) async fn hotplug_remove(
        &mut self,
        device: Device,
    ) -> hypervisor::Result<HotplugResult> {
        self.require(
            "hotplug_remove_device",
            &[VmState::Running, VmState::Paused],
        )?;
        let api = self.api()?;
        let result = match device {
            Device::Block(d) => self.hotplug_remove_block(&api, d).await,
            Device::Net(n) if self.hot.nets.contains(&n.id) => {
                match api
                    .call(
                        &DeleteNetworkInterface {
                            iface_id: n.id.clone(),
                        },
                        API_TIMEOUT,
                    )
                    .await
                {
                    Ok(()) => {
                        self.hot.nets.retain(|x| *x != n.id);
                        Ok(HotplugResult::Attached(None))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Device::Net(n) => Err(FcError::UnknownDevice { id: n.id }),
            Device::Cpu(_) => return Err(no_vcpu_hotplug("hotplug_remove_device")),
            other => {
                return Err(Error::unsupported(
                    "hotplug_remove_device",
                    FC,
                    format!(
                        "{} devices cannot be hot-unplugged from firecracker",
                        other.device_type()
                    ),
                ))
            }
        };
        self.or_exited(result).await
    }

    pub(super) fn drive_path_inside(
        &self,
        d: &BlockDrive,
        writable: bool,
    ) -> Result<PathBuf, FcError> {
        let placement = if writable {
            Placement::LinkOrBind
        } else {
            Placement::LinkOrCopy
        };
        self.hand_over(&d.file, "drives", placement, writable)
    }

    pub(super) async fn hotplug_add_block(
        &mut self,
        api: &RestClient,
        d: BlockDrive,
    ) -> Result<HotplugResult, FcError> {
        if self.hot.drives.contains_key(&d.id) || self.hot.swapped.values().any(|v| *v == d.id) {
            return Err(FcError::DeviceExists { id: d.id });
        }
        let path = self.drive_path_inside(&d, !d.read_only)?;
        let jailed = self.files.as_ref().is_some_and(|f| f.jail.is_some());
        let placed = jailed.then(|| path.clone());
        if self.options.hotplug == HotplugMode::Pci {
            let put = PutDrive(vm_config::drive(&self.config, &d, path));
            if let Err(e) = api.call(&put, API_TIMEOUT).await {
                self.unplace(placed.as_deref());
                return Err(e.into());
            }
            self.hot.drives.insert(d.id.clone(), placed);
        } else {
            let Some(slot) = self
                .hot
                .placeholders
                .iter()
                .find(|p| !self.hot.swapped.contains_key(*p))
                .cloned()
            else {
                self.unplace(placed.as_deref());
                return Err(FcError::NoFreePlaceholder {
                    id: d.id,
                    count: self.hot.placeholders.len(),
                });
            };
            let patch = PatchDrive(PartialDrive {
                drive_id: slot.clone(),
                path_on_host: Some(path),
            });
            if let Err(e) = api.call(&patch, API_TIMEOUT).await {
                self.unplace(placed.as_deref());
                return Err(e.into());
            }
            self.hot.swapped.insert(slot, d.id.clone());
        }
        tracing::info!(id = self.id, drive = d.id, mode = ?self.options.hotplug, "drive hot-plugged");
        Ok(HotplugResult::Attached(Some(d)))
    }

    pub(super) fn unplace(&self, inside: Option<&Path>) {
        let (Some(inside), Some(jail)) =
            (inside, self.files.as_ref().and_then(|f| f.jail.as_ref()))
        else {
            return;
        };
        if let Ok(target) = jail.host_path(inside) {
            jail_fs::unplace(&target);
        }
    }

    pub(super) async fn hotplug_remove_block(
        &mut self,
        api: &RestClient,
        d: BlockDrive,
    ) -> Result<HotplugResult, FcError> {
        if let Some(placed) = self.hot.drives.get(&d.id).cloned() {
            api.call(
                &DeleteDrive {
                    drive_id: d.id.clone(),
                },
                API_TIMEOUT,
            )
            .await?;
            self.hot.drives.remove(&d.id);
            self.unplace(placed.as_deref());
            return Ok(HotplugResult::Attached(Some(d)));
        }
        let slot = self
            .hot
            .swapped
            .iter()
            .find(|(_, v)| **v == d.id)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| FcError::UnknownDevice { id: d.id.clone() })?;
        let f = self.files.clone().expect("a running VM has its files");
        let patch = PatchDrive(PartialDrive {
            drive_id: slot.clone(),
            path_on_host: Some(f.inside(&format!("{slot}.img"))),
        });
        api.call(&patch, API_TIMEOUT).await?;
        self.hot.swapped.remove(&slot);
        if f.jail.is_some() {
            self.unplace(Some(
                &Path::new("/drives").join(d.file.file_name().unwrap_or_default()),
            ));
        }
        Ok(HotplugResult::Attached(Some(d)))
    }

    pub(super) async fn resize_memory_inner(
        &mut self,
        api: &RestClient,
        mem_mib: u32,
    ) -> Result<(u32, MemoryDevice), FcError> {
        let boot = self.config.memory_size;
        let extra = mem_mib.saturating_sub(boot);
        if mem_mib < boot || extra > self.memory_region_mib {
            return Err(FcError::MemoryRange {
                requested_mib: mem_mib,
                boot_mib: boot,
                max_extra_mib: self.memory_region_mib,
            });
        }
        let block = vm_config::MEMORY_BLOCK_MIB;
        let extra = extra.div_ceil(block) * block;
        api.call(
            &PatchMemoryHotplug(MemoryHotplugSizeUpdate {
                requested_size_mib: extra,
            }),
            API_TIMEOUT,
        )
        .await?;
        let added = extra.saturating_sub(self.hot.memory_mib);
        self.hot.memory_mib = extra;
        Ok((
            boot + extra,
            MemoryDevice {
                slot: 0,
                size_mib: added,
                addr: 0,
                probe: false,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_plug_state_survives_save_and_load() {
        let mut h = Hot {
            placeholders: vec!["drive_0".into(), "drive_1".into()],
            memory_mib: 128,
            ..Hot::default()
        };
        h.drives.insert("d1".into(), Some("/drives/d1.img".into()));
        h.drives.insert("d2".into(), None);
        h.swapped.insert("drive_1".into(), "d3".into());
        h.nets.push("eth1".into());
        assert_eq!(Hot::from_strings(&h.to_strings(), 128), h);
    }
}
