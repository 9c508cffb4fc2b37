//! Block devices: virtio-blk, SCSI disks and NVDIMMs, added as a block
//! node and a device, and removed in the reverse order.

use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::{unplug, unsupported, Placement};
use crate::backends::qemu::cmdline;
use crate::backends::qemu::qmp::{self, DeviceProps, Qmp};
use crate::backends::qemu::rootless::RootlessError;
use crate::backends::qemu::{Qemu, QemuError};
use crate::config::BlockDeviceDriver;
use crate::device::{BlockDrive, HotplugResult};
use crate::hypervisor::Result;

/// The file name under which QEMU opens the descriptors of fd set `id`.
pub fn fdset_path(id: i64) -> PathBuf {
    PathBuf::from(format!("/dev/fdset/{id}"))
}

/// Opens `drive`'s file here, read-only or read-write as the drive is, and
/// passes it to QEMU in a new fd set (`add-fd`); returns the set's id.
async fn pass_block_file(qmp: &Qmp, drive: &BlockDrive) -> Result<i64, QemuError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!drive.read_only)
        .open(&drive.file)
        .map_err(|source| QemuError::BlockFile {
            path: drive.file.clone(),
            source,
        })?;
    let info = qmp
        .execute_with_fd(
            &qmp::AddFd {
                opaque: Some(drive.file.display().to_string()),
            },
            file.as_fd(),
            qmp::DEFAULT_TIMEOUT,
        )
        .await?;
    Ok(info.fdset_id)
}

impl Qemu {
    /// Adds a block device to the running VM.
    pub(in crate::backends::qemu) async fn hotplug_add_block(
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
        let qmp = self.qmp().await?;
        // A rootless QEMU cannot open the file: it gets it by descriptor.
        let fdset = match self.config.rootless {
            true => Some(pass_block_file(&qmp, &drive).await?),
            false => None,
        };
        let filename = match fdset {
            Some(id) => fdset_path(id),
            None => drive.file.clone(),
        };
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
                filename,
                aio: Some("threads"),
            },
        };
        let added = qmp.execute(&add).await;
        if let Some(fdset_id) = fdset {
            // The node holds its own copy now (or nothing took it): the
            // set goes, and QEMU closes it with the node.
            if let Err(e) = qmp.execute(&qmp::RemoveFd { fdset_id }).await {
                tracing::warn!(fdset_id, error = %e, "cannot remove the fd set of a block file");
            }
        }
        added.map_err(QemuError::from)?;
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
        if self.config.rootless {
            return Err(QemuError::from(RootlessError::Unsupported {
                what: format!("an NVDIMM maps {:?}, which QEMU opens by path", drive.file),
                todo: "use block_device_driver = \"virtio-blk\" or \"virtio-scsi\"",
            })
            .into());
        }
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
    pub(in crate::backends::qemu) async fn hotplug_remove_block(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_file_passed_by_descriptor_is_named_by_its_fd_set() {
        assert_eq!(fdset_path(3), PathBuf::from("/dev/fdset/3"));
        let add = qmp::AddFd {
            opaque: Some("/d.img".into()),
        };
        assert_eq!(
            serde_json::to_string(&add).expect("serializes"),
            r#"{"opaque":"/d.img"}"#
        );
        assert_eq!(
            serde_json::to_string(&qmp::RemoveFd { fdset_id: 3 }).expect("serializes"),
            r#"{"fdset-id":3}"#
        );
        let info: qmp::AddFdInfo =
            serde_json::from_str(r#"{"fdset-id":1,"fd":27}"#).expect("decodes");
        assert_eq!(
            info,
            qmp::AddFdInfo {
                fdset_id: 1,
                fd: 27
            }
        );
    }
}
