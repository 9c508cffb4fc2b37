//! Network interfaces, VFIO devices and vhost-user devices.

use super::{unplug, unsupported, Placement};
use crate::backends::qemu::cmdline::{self, MachineType};
use crate::backends::qemu::qmp::{self, DeviceProps};
use crate::backends::qemu::{Qemu, QemuError};
use crate::device::{HotplugResult, NetDevice, VfioDevice, VhostUserDevice, VhostUserKind};
use crate::hypervisor::Result;

impl Qemu {
    /// Adds a network interface on a host tap device.
    pub(in crate::backends::qemu) async fn hotplug_add_net(
        &mut self,
        net: NetDevice,
    ) -> Result<HotplugResult> {
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
    pub(in crate::backends::qemu) async fn hotplug_remove_net(
        &mut self,
        net: NetDevice,
    ) -> Result<HotplugResult> {
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
    pub(in crate::backends::qemu) async fn hotplug_add_vfio(
        &mut self,
        dev: VfioDevice,
    ) -> Result<HotplugResult> {
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
    pub(in crate::backends::qemu) async fn hotplug_remove_vfio(
        &mut self,
        dev: VfioDevice,
    ) -> Result<HotplugResult> {
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
    pub(in crate::backends::qemu) async fn hotplug_add_vhost_user(
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
    pub(in crate::backends::qemu) async fn hotplug_remove_vhost_user(
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
}
