//! What the Firecracker backend can do, as its options and config say.

use super::vm_config::HotplugMode;
use super::{Firecracker, FC};
use crate::hypervisor::{Capabilities, Error};

impl Firecracker {
    /// What this backend can do with its options and config.
    pub(super) fn caps(&self) -> Capabilities {
        let pci = self.options.hotplug == HotplugMode::Pci;
        let placeholders = self.options.placeholder_count() > 0;
        Capabilities {
            block_device: true,
            block_device_hotplug: pci || placeholders,
            multi_queue: false,
            fs_sharing: false,
            hybrid_vsock: true,
            cpu_hotplug: false,
            memory_hotplug: self.config.virtio_mem,
            net_hotplug: pci,
            vfio: false,
            pause: true,
            save: true,
            vm_template: true,
            vm_cache: true,
            reattach: true,
            // Its hybrid vsock is the VMM's own device, not
            // vhost-device-vsock.
            holds_agent_connection: false,
        }
    }
}

/// The error for any vCPU hot-plug: Firecracker has none.
pub(super) fn no_vcpu_hotplug(op: &'static str) -> Error {
    Error::unsupported(
        op,
        FC,
        "firecracker cannot hot-plug vCPUs: boot with the vCPUs needed (default_vcpus)",
    )
}

#[cfg(test)]
mod tests {
    use super::super::FcOptions;
    use super::*;
    use crate::hypervisor::Hypervisor;

    #[tokio::test]
    async fn capabilities_follow_the_hot_plug_mode() {
        let pci = Firecracker::with_storage("/tmp/x");
        let c = pci.capabilities();
        assert!(c.block_device_hotplug && c.net_hotplug && !c.cpu_hotplug && c.pause);
        let mmio = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                hotplug: HotplugMode::Mmio,
                ..FcOptions::default()
            },
        );
        let c = mmio.capabilities();
        assert!(c.block_device_hotplug && !c.net_hotplug);
        let mut none = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                hotplug: HotplugMode::Mmio,
                placeholders: Some(0),
                ..FcOptions::default()
            },
        );
        assert!(!none.capabilities().block_device_hotplug);
        let e = none.resize_vcpus(2).await.expect_err("no vcpu hot-plug");
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("cannot hot-plug vCPUs"), "{e}");
    }
}
