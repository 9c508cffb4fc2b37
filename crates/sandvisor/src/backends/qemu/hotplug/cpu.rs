//! vCPUs: added into the slots QEMU lists as hot-pluggable, and removed
//! newest first, where this QEMU survives it.

use std::time::Duration;

use super::{unsupported, UNPLUG_TIMEOUT};
use crate::backends::qemu::cmdline::Accelerator;
use crate::backends::qemu::qmp::{self, DeviceProps, Qmp, VersionTriple};
use crate::backends::qemu::{Qemu, QemuError};
use crate::hypervisor::Result;

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

impl Qemu {
    /// Adds up to `amount` vCPUs; returns how many were added. Like Kata,
    /// asking for more than `default_maxvcpus` allows adds what fits.
    pub(in crate::backends::qemu) async fn hotplug_add_cpus(&mut self, amount: u32) -> Result<u32> {
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
    pub(in crate::backends::qemu) async fn hotplug_remove_cpus(
        &mut self,
        amount: u32,
    ) -> Result<u32> {
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
}
