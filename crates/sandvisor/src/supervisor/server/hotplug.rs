//! Hot-plug and resize on a running sandbox: each device kind added or
//! removed through the backend, the record kept in step, and hot-plugged
//! vCPUs and memory brought online by the guest agent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Owner, MEMORY_BLOCK_MIB, ONLINE_SLACK};
use crate::device::{BlockDrive, Device, HotplugResult, MemoryDevice, NetDevice};
use crate::supervisor::agent::ONLINE_WAIT;
use crate::supervisor::proto::{HotplugOutcome, HotplugTarget, Op, RemoteError};
use crate::supervisor::state::PluggedDevice;

impl Owner {
    /// Brings hot-plugged CPUs online in the guest.
    async fn online_cpus(&mut self, op: Op, cpus: u32) -> Result<(), RemoteError> {
        if self.agent_address.is_none() {
            return Ok(());
        }
        let agent = self.agent().await.map_err(|e| e.with_op(op))?;
        let limit = ONLINE_WAIT + ONLINE_SLACK;
        tokio::time::timeout(limit, agent.online_cpu_mem(cpus, false, &[]))
            .await
            .map_err(|_| RemoteError::Failed {
                id: self.id().clone(),
                op,
                causes: vec![format!(
                    "the guest did not online {cpus} vCPU(s) within {limit:?}"
                )],
            })?
            .map_err(|e| RemoteError::failed(self.id(), op, &e))
    }

    /// The guest's `MemTotal` before a memory hot-plug, when it has an agent.
    async fn guest_mem_kib(&mut self, op: Op) -> Result<Option<u64>, RemoteError> {
        if self.agent_address.is_none() {
            return Ok(None);
        }
        let agent = self.agent().await.map_err(|e| e.with_op(op))?;
        let kib = agent
            .mem_total_kib()
            .await
            .map_err(|e| RemoteError::failed(self.id(), op, &e))?;
        Ok(Some(kib))
    }

    /// Brings `added_mib` of hot-plugged memory online: the guest learns of
    /// a DIMM a moment after the VMM added it, so blocks are onlined as they
    /// appear until `MemTotal` has grown from `before` by the size added.
    async fn online_memory(
        &mut self,
        op: Op,
        before: Option<u64>,
        added_mib: u32,
        probe: &[u64],
    ) -> Result<(), RemoteError> {
        let Some(before) = before else {
            return Ok(());
        };
        let id = self.id().clone();
        let agent = self.agent().await.map_err(|e| e.with_op(op))?;
        let want = before + u64::from(added_mib) * 1024;
        let deadline = tokio::time::Instant::now() + ONLINE_WAIT + ONLINE_SLACK;
        let mut probe = probe;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let round = async {
                agent.online_cpu_mem(0, true, probe).await?;
                agent.mem_total_kib().await
            };
            let now = match tokio::time::timeout(left, round).await {
                Ok(r) => r.map_err(|e| RemoteError::failed(&id, op, &e))?,
                Err(_) => before,
            };
            if now >= want {
                return Ok(());
            }
            // Probing an address twice fails: only the first round probes.
            probe = &[];
            if tokio::time::Instant::now() >= deadline {
                return Err(RemoteError::Failed {
                    id,
                    op,
                    causes: vec![format!(
                        "the guest sees {} of the {added_mib} MiB added after {:?}",
                        now.saturating_sub(before) / 1024,
                        ONLINE_WAIT + ONLINE_SLACK
                    )],
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Adds or removes one device, and keeps the record in step.
    pub(super) async fn hotplug(
        &mut self,
        target: HotplugTarget,
        remove: bool,
    ) -> Result<HotplugOutcome, RemoteError> {
        match target {
            HotplugTarget::Block { path, read_only } if remove => {
                self.unplug_block(path, read_only).await
            }
            HotplugTarget::Block { path, read_only } => self.plug_block(path, read_only).await,
            HotplugTarget::Cpu { count } => self.hotplug_cpus(count, remove).await,
            HotplugTarget::Memory { size_mib } if remove => self.unplug_memory(size_mib).await,
            HotplugTarget::Memory { size_mib } => self.plug_memory(size_mib).await,
            HotplugTarget::Net { tap } if remove => self.unplug_net(tap).await,
            HotplugTarget::Net { tap } => self.plug_net(tap).await,
        }
    }

    /// A hot-plug request that cannot be applied as asked.
    fn bad(&self, reason: String) -> RemoteError {
        RemoteError::BadRequest {
            id: self.id().clone(),
            op: Op::Hotplug,
            reason,
        }
    }

    async fn unplug_block(
        &mut self,
        path: PathBuf,
        read_only: bool,
    ) -> Result<HotplugOutcome, RemoteError> {
        let pos = self
            .record
            .devices
            .iter()
            .position(|d| matches!(d, PluggedDevice::Block { path: p, .. } if *p == path))
            .ok_or_else(|| self.bad(format!("no block device {} is plugged", path.display())))?;
        let PluggedDevice::Block {
            drive_id, index, ..
        } = self.record.devices[pos].clone()
        else {
            return Err(self.bad("device record mismatch".to_string()));
        };
        let drive = BlockDrive {
            file: path.clone(),
            format: "raw".to_string(),
            id: drive_id,
            index,
            read_only,
            ..BlockDrive::default()
        };
        self.hv
            .hotplug_remove_device(Device::Block(drive))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        self.record.devices.remove(pos);
        Ok(HotplugOutcome {
            summary: format!("removed block device {}", path.display()),
            guest_path: None,
        })
    }

    async fn plug_block(
        &mut self,
        path: PathBuf,
        read_only: bool,
    ) -> Result<HotplugOutcome, RemoteError> {
        if !path.exists() {
            return Err(self.bad(format!("{} does not exist", path.display())));
        }
        if self
            .record
            .devices
            .iter()
            .any(|d| matches!(d, PluggedDevice::Block { path: p, .. } if *p == path))
        {
            return Err(self.bad(format!("{} is plugged already", path.display())));
        }
        let index = self.free_block_index();
        let drive = BlockDrive {
            file: path.clone(),
            format: "raw".to_string(),
            id: format!("drive-sv{index}"),
            index,
            read_only,
            ..BlockDrive::default()
        };
        let result = self
            .hv
            .hotplug_add_device(Device::Block(drive.clone()))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        let attached = match result {
            HotplugResult::Attached(Some(d)) => d,
            _ => drive,
        };
        let guest_path = attached.virt_path.clone();
        self.record.devices.push(PluggedDevice::Block {
            path: path.clone(),
            drive_id: attached.id,
            index,
            guest_path: guest_path.clone(),
        });
        let at = guest_path
            .as_deref()
            .or(attached.pci_path.as_deref())
            .map(|p| format!(" as {p}"))
            .unwrap_or_default();
        Ok(HotplugOutcome {
            summary: format!("added block device {}{at}", path.display()),
            guest_path,
        })
    }

    async fn hotplug_cpus(
        &mut self,
        count: u32,
        remove: bool,
    ) -> Result<HotplugOutcome, RemoteError> {
        if count == 0 {
            return Err(self.bad("the vCPU count must be at least 1".to_string()));
        }
        let verb = if remove { "removed" } else { "added" };
        let device = Device::Cpu(count);
        let result = if remove {
            self.hv.hotplug_remove_device(device).await
        } else {
            self.hv.hotplug_add_device(device).await
        }
        .map_err(self.hv_err(Op::Hotplug))?;
        let n = match result {
            HotplugResult::Cpus(n) => n,
            _ => count,
        };
        if n == 0 && !remove {
            // Kata caps a hot-plug at default_maxvcpus; one that adds
            // nothing at all did not do what was asked.
            return Err(self.bad(format!(
                "cannot add {count} vCPU(s): the guest has {} of at most {} (default_maxvcpus)",
                self.record.vcpus, self.record.config.default_max_vcpus
            )));
        }
        if remove {
            self.record.vcpus = self.record.vcpus.saturating_sub(n);
        } else {
            self.record.vcpus += n;
            self.persist().await;
            self.online_cpus(Op::Hotplug, n).await?;
        }
        Ok(HotplugOutcome {
            summary: format!("{verb} {n} vCPU(s); the guest has {}", self.record.vcpus),
            guest_path: None,
        })
    }

    async fn unplug_memory(&mut self, size_mib: u32) -> Result<HotplugOutcome, RemoteError> {
        if size_mib == 0 {
            return Err(self.bad("the memory size must be at least 1 MiB".to_string()));
        }
        let pos = self
            .record
            .devices
            .iter()
            .rposition(|d| matches!(d, PluggedDevice::Memory { size_mib: s, .. } if *s == size_mib))
            .ok_or_else(|| self.bad(format!("no {size_mib} MiB memory region is plugged")))?;
        let PluggedDevice::Memory { slot, .. } = self.record.devices[pos] else {
            return Err(self.bad("device record mismatch".to_string()));
        };
        let device = MemoryDevice {
            slot,
            size_mib,
            ..MemoryDevice::default()
        };
        self.hv
            .hotplug_remove_device(Device::Memory(device))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        self.record.devices.remove(pos);
        self.record.memory_mib = self.record.memory_mib.saturating_sub(size_mib);
        Ok(HotplugOutcome {
            summary: format!(
                "removed {size_mib} MiB of memory; the guest has {} MiB",
                self.record.memory_mib
            ),
            guest_path: None,
        })
    }

    async fn plug_memory(&mut self, size_mib: u32) -> Result<HotplugOutcome, RemoteError> {
        if size_mib == 0 {
            return Err(self.bad("the memory size must be at least 1 MiB".to_string()));
        }
        let before = self.guest_mem_kib(Op::Hotplug).await?;
        let slot = self.free_memory_slot();
        let device = MemoryDevice {
            slot,
            size_mib,
            ..MemoryDevice::default()
        };
        let result = self
            .hv
            .hotplug_add_device(Device::Memory(device))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        let added = match result {
            HotplugResult::MemoryMib(n) if n > 0 => n,
            _ => size_mib,
        };
        self.record.memory_mib += added;
        self.record.devices.push(PluggedDevice::Memory {
            slot,
            size_mib: added,
        });
        self.persist().await;
        let probe: Vec<u64> = if device.probe {
            vec![device.addr]
        } else {
            Vec::new()
        };
        self.online_memory(Op::Hotplug, before, added, &probe)
            .await?;
        Ok(HotplugOutcome {
            summary: format!(
                "added {added} MiB of memory; the guest has {} MiB",
                self.record.memory_mib
            ),
            guest_path: None,
        })
    }

    async fn unplug_net(&mut self, tap: String) -> Result<HotplugOutcome, RemoteError> {
        let pos = self
            .record
            .devices
            .iter()
            .position(|d| matches!(d, PluggedDevice::Net { tap: t, .. } if *t == tap))
            .ok_or_else(|| self.bad(format!("no network device on tap {tap} is plugged")))?;
        let PluggedDevice::Net { device_id, mac, .. } = self.record.devices[pos].clone() else {
            return Err(self.bad("device record mismatch".to_string()));
        };
        let net = NetDevice {
            id: device_id,
            tap_name: tap.clone(),
            mac,
            queues: 1,
        };
        self.hv
            .hotplug_remove_device(Device::Net(net))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        self.record.devices.remove(pos);
        Ok(HotplugOutcome {
            summary: format!("removed network device on tap {tap}"),
            guest_path: None,
        })
    }

    async fn plug_net(&mut self, tap: String) -> Result<HotplugOutcome, RemoteError> {
        if self
            .record
            .devices
            .iter()
            .any(|d| matches!(d, PluggedDevice::Net { tap: t, .. } if *t == tap))
        {
            return Err(self.bad(format!("tap {tap} is plugged already")));
        }
        // QEMU would make a tap of that name, which nobody configured.
        let sys = Path::new("/sys/class/net").join(&tap);
        if tap.is_empty()
            || tap.contains('/')
            || !tokio::fs::try_exists(&sys).await.unwrap_or(false)
        {
            return Err(self.bad(format!(
                "no network device {tap:?} on the host: create the tap first (`ip tuntap add {tap} mode tap`)"
            )));
        }
        let net = NetDevice {
            id: format!("net-{tap}"),
            tap_name: tap.clone(),
            mac: random_mac(),
            queues: 1,
        };
        self.hv
            .hotplug_add_device(Device::Net(net.clone()))
            .await
            .map_err(self.hv_err(Op::Hotplug))?;
        self.record.devices.push(PluggedDevice::Net {
            tap: tap.clone(),
            device_id: net.id,
            mac: net.mac.clone(),
        });
        Ok(HotplugOutcome {
            summary: format!("added network device on tap {tap} with MAC {}", net.mac),
            guest_path: None,
        })
    }

    fn free_block_index(&self) -> u32 {
        let mut used: BTreeSet<u32> = self.hv.save().block_index_map;
        used.extend(self.record.devices.iter().filter_map(|d| match d {
            PluggedDevice::Block { index, .. } => Some(*index),
            _ => None,
        }));
        (0..).find(|i| !used.contains(i)).unwrap_or(u32::MAX)
    }

    fn free_memory_slot(&self) -> u32 {
        let used: BTreeSet<u32> = self
            .record
            .devices
            .iter()
            .filter_map(|d| match d {
                PluggedDevice::Memory { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect();
        (0..).find(|s| !used.contains(s)).unwrap_or(u32::MAX)
    }

    pub(super) async fn resize(
        &mut self,
        vcpus: Option<u32>,
        memory_mib: Option<u32>,
    ) -> Result<(), RemoteError> {
        let id = self.id().clone();
        if vcpus.is_none() && memory_mib.is_none() {
            return Err(RemoteError::BadRequest {
                id,
                op: Op::Resize,
                reason: "give --cpus and/or --memory".to_string(),
            });
        }
        let refuse = |reason: String| RemoteError::BadRequest {
            id: id.clone(),
            op: Op::Resize,
            reason,
        };
        if vcpus == Some(0) {
            return Err(refuse("the vCPU count must be at least 1".to_string()));
        }
        if let Some(n) = vcpus {
            let (old, new) = self
                .hv
                .resize_vcpus(n)
                .await
                .map_err(self.hv_err(Op::Resize))?;
            // A backend that does not say (0) leaves the count as asked.
            self.record.vcpus = if new > 0 { new } else { n };
            self.persist().await;
            if new > 0 && new == old && n != old {
                return Err(refuse(format!(
                    "cannot resize to {n} vCPUs: the guest stays at {old}, between 1 and {} (default_maxvcpus)",
                    self.record.config.default_max_vcpus
                )));
            }
            if new > old {
                self.online_cpus(Op::Resize, new - old).await?;
            }
        }
        if let Some(mib) = memory_mib {
            let before = self.record.memory_mib;
            let guest_before = self.guest_mem_kib(Op::Resize).await?;
            let (new, device) = self
                .hv
                .resize_memory(mib, MEMORY_BLOCK_MIB, false)
                .await
                .map_err(self.hv_err(Op::Resize))?;
            self.record.memory_mib = if new > 0 { new } else { mib };
            self.persist().await;
            if new > 0 && new == before && mib < before {
                return Err(refuse(format!(
                    "cannot resize memory to {mib} MiB: the guest has {before} MiB and memory is only added; ask for more than {before}"
                )));
            }
            if self.record.memory_mib > before {
                let probe: Vec<u64> = if device.probe {
                    vec![device.addr]
                } else {
                    Vec::new()
                };
                let added = self.record.memory_mib - before;
                self.online_memory(Op::Resize, guest_before, added, &probe)
                    .await?;
            }
        }
        self.persist().await;
        Ok(())
    }
}

/// A locally administered, unicast MAC address.
fn random_mac() -> String {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
