//! Hot-plug and unplug (`vm.add-*`, `vm.remove-device`) and resize
//! (`vm.resize`).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::api::{
    PciDeviceInfo, VmAddDevice, VmAddDisk, VmAddFs, VmAddNet, VmInfoGet, VmRemoveDevice,
    VmRemoveDevicePut, VmResize, VmResizePut,
};
use super::{api_err, resize, vm_config, Clh, ClhError, API_TIMEOUT, MIB};
use crate::backends::vmm::virtiofsd;
use crate::device::{
    BlockDrive, Device, HotplugResult, MemoryDevice, NetDevice, SharedFsVolume, VfioDevice,
};

impl Clh {
    pub(super) fn record_hotplug(&mut self, info: &PciDeviceInfo) {
        tracing::info!(id = info.id, bdf = info.bdf, "device hot-plugged");
        self.hot.insert(info.id.clone(), info.bdf.clone());
    }

    pub(super) fn hot_id_free(&self, id: &str) -> Result<(), ClhError> {
        if self.hot.contains_key(id) {
            return Err(ClhError::DeviceExists { id: id.to_string() });
        }
        Ok(())
    }

    pub(super) async fn hotplug_block(&mut self, d: BlockDrive) -> Result<HotplugResult, ClhError> {
        let disk = vm_config::disk(&self.config, &d)?;
        let id = vm_config::drive_id(d.index);
        self.hot_id_free(&id)?;
        let info = self
            .call("add the disk (vm.add-disk)", &VmAddDisk(disk), API_TIMEOUT)
            .await?;
        self.record_hotplug(&info);
        self.block_indexes.insert(d.index);
        Ok(HotplugResult::Attached(Some(BlockDrive {
            pci_path: info.pci_path(),
            id,
            ..d
        })))
    }

    pub(super) async fn hotplug_net(&mut self, n: &NetDevice) -> Result<HotplugResult, ClhError> {
        let id = vm_config::net_id(n);
        self.hot_id_free(&id)?;
        // The tap's descriptors go with the request; CH keeps its copies.
        let fds = open_tap(&n.tap_name, n.queues.max(1), self.netns.path.as_deref())
            .await
            .map_err(|source| ClhError::Tap {
                name: n.tap_name.clone(),
                source,
            })?;
        let body = vm_config::net(&self.config, n, fds.len());
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let api = self.client()?;
        let info = api_err(
            "add the network device (vm.add-net)",
            api.call_with_fds(&VmAddNet(body), &borrowed, API_TIMEOUT)
                .await,
        )?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    pub(super) async fn hotplug_vfio(&mut self, v: &VfioDevice) -> Result<HotplugResult, ClhError> {
        let body = vm_config::vfio(&self.config, v);
        self.hot_id_free(body.id.as_deref().unwrap_or_default())?;
        let info = self
            .call(
                "add the VFIO device (vm.add-device)",
                &VmAddDevice(body),
                API_TIMEOUT,
            )
            .await?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    pub(super) async fn hotplug_fs(
        &mut self,
        v: SharedFsVolume,
    ) -> Result<HotplugResult, ClhError> {
        // The rules of a boot-time share: virtio-fs only, one share.
        let mut shares: Vec<Device> = self
            .devices
            .iter()
            .filter(|d| matches!(d, Device::Fs(_)))
            .cloned()
            .collect();
        shares.push(Device::Fs(v.clone()));
        self.vm_config(&shares)?;
        self.hot_id_free(vm_config::FS_ID)?;
        let paths = self.paths.clone().expect("a running VM has paths");
        if self.virtiofsd.is_none() {
            self.virtiofsd = Some(virtiofsd::start(
                &self.config,
                &v.host_path,
                &paths.virtiofs,
                &paths.virtiofsd_log,
            )?);
        }
        let body = vm_config::fs(&v.mount_tag, &paths.virtiofs);
        let info = self
            .call(
                "add the virtio-fs device (vm.add-fs)",
                &VmAddFs(body),
                API_TIMEOUT,
            )
            .await?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    pub(super) async fn add_vcpus(&mut self, n: u32) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let (old, new) = self.resize_vcpus_inner(current.saturating_add(n)).await?;
        Ok(HotplugResult::Cpus(new.saturating_sub(old)))
    }

    pub(super) async fn remove_vcpus(&mut self, n: u32) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let (old, new) = self
            .resize_vcpus_inner(current.saturating_sub(n).max(1))
            .await?;
        Ok(HotplugResult::Cpus(old.saturating_sub(new)))
    }

    pub(super) async fn add_memory(&mut self, m: MemoryDevice) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = u32::try_from(info.memory_bytes() / MIB).unwrap_or(u32::MAX);
        let (_, dev) = self
            .resize_memory_inner(current.saturating_add(m.size_mib), 0, m.probe)
            .await?;
        Ok(HotplugResult::MemoryMib(dev.size_mib))
    }

    pub(super) async fn unplug(&mut self, id: String) -> Result<HotplugResult, ClhError> {
        if !self.hot.contains_key(&id) {
            return Err(ClhError::UnknownDevice { id });
        }
        self.call(
            "remove the device (vm.remove-device)",
            &VmRemoveDevicePut(VmRemoveDevice { id: id.clone() }),
            API_TIMEOUT,
        )
        .await?;
        self.hot.remove(&id);
        tracing::info!(id, "device hot-unplugged");
        Ok(HotplugResult::Attached(None))
    }

    pub(super) async fn resize_vcpus_inner(&mut self, vcpus: u32) -> Result<(u32, u32), ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let max = info.config.cpus.max_vcpus;
        let target = resize::vcpus(vcpus, max)?;
        if target < vcpus {
            tracing::warn!(requested = vcpus, max, "vCPUs clamped to max_vcpus");
        }
        if target != current {
            let body = VmResizePut(VmResize {
                desired_vcpus: Some(target),
                ..VmResize::default()
            });
            self.call("resize vCPUs (vm.resize)", &body, API_TIMEOUT)
                .await?;
        }
        Ok((current, target))
    }

    pub(super) async fn resize_memory_inner(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice), ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let plan = resize::memory(
            &info,
            u64::from(self.config.memory_size),
            u64::from(mem_mib),
            block_size_mib,
        )?;
        let added = plan.target_mib - plan.current_mib;
        if added > 0 {
            let body = VmResizePut(VmResize {
                desired_ram: Some(plan.target_mib * MIB),
                ..VmResize::default()
            });
            self.call("resize memory (vm.resize)", &body, API_TIMEOUT)
                .await?;
            self.hot_memory_mib += added as u32;
        } else if u64::from(mem_mib) < plan.current_mib {
            tracing::warn!(
                current = plan.current_mib,
                requested = mem_mib,
                "memory does not shrink: keeping the current size"
            );
        }
        Ok((
            plan.target_mib as u32,
            MemoryDevice {
                size_mib: added as u32,
                probe,
                ..MemoryDevice::default()
            },
        ))
    }
}

/// Opens `queues` descriptors of tap `name`, inside network namespace
/// `netns` when one is given (on a thread of its own, which enters it and
/// ends).
pub(super) async fn open_tap(
    name: &str,
    queues: u32,
    netns: Option<&Path>,
) -> std::io::Result<Vec<OwnedFd>> {
    let name = name.to_string();
    let netns = netns.map(Path::to_path_buf);
    let open = move || -> std::io::Result<Vec<OwnedFd>> {
        if let Some(ns) = &netns {
            let f = std::fs::File::open(ns)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        (0..queues)
            .map(|_| crate::sys::open_tap_queue(&name, queues > 1))
            .collect()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("clh-tap".into())
        .spawn(move || {
            let _ = tx.send(open());
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the tap thread ended without an answer",
        ))
    })
}
