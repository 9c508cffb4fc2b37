//! Network hot-plug into Cloud Hypervisor: the tap's descriptors are
//! opened in the sandbox's network namespace (one the test makes) and
//! passed over the API socket with `vm.add-net`.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor`, root and `ip`. A booted
//! Linux guest would also see the interface appear and go; the tiny guest
//! has no driver, so what CH reports is checked.

#[path = "support/clh.rs"]
mod clh;

use std::path::PathBuf;
use std::process::Command;

use sandvisor::backends::clh::Clh;
use sandvisor::device::{Device, NetDevice};
use sandvisor::hypervisor::{Hypervisor, NetworkNamespace};

/// A network namespace made for the test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("svclh{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip runs (install iproute2)");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }

    fn links(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "link", "show"])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn a_tap_in_the_sandbox_namespace_is_hot_plugged_by_descriptor() {
    let guest = clh::guest();
    let storage = tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage");
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let ns = Netns::new();
    let netns = NetworkNamespace {
        path: Some(ns.path()),
        created: false,
    };
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("net", &netns, &clh::config(&guest), false)
        .await
        .expect("creates");
    vm.start_sandbox(clh::START_TIMEOUT)
        .await
        .expect("starts in the namespace");
    let pid = vm.pids()[0];
    let inside = Command::new("ip")
        .args(["netns", "exec", &ns.0, "readlink", "/proc/self/ns/net"])
        .output()
        .expect("ip netns exec");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("CH's netns"),
        PathBuf::from(String::from_utf8_lossy(&inside.stdout).trim()),
        "CH runs in the sandbox's namespace"
    );

    let tap = NetDevice {
        id: "eth1".into(),
        tap_name: "svtap0".into(),
        mac: "02:00:00:00:00:42".into(),
        queues: 1,
    };
    vm.hotplug_add_device(Device::Net(tap.clone()))
        .await
        .expect("add-net with the tap's descriptors");
    assert!(
        ns.links().contains("svtap0"),
        "the tap is in the namespace:\n{}",
        ns.links()
    );
    let info = vm.vm_info().await.expect("vm.info");
    let net = info
        .config
        .net
        .iter()
        .find(|n| n.id.as_deref() == Some("eth1"))
        .unwrap_or_else(|| panic!("vm.info lists eth1: {:?}", info.config.net));
    assert_eq!(net.mac.as_deref(), Some("02:00:00:00:00:42"));
    assert_eq!(net.num_queues, Some(2), "one queue pair");

    vm.hotplug_remove_device(Device::Net(tap))
        .await
        .expect("remove-device");
    let info = vm.vm_info().await.expect("vm.info");
    assert!(
        !info
            .config
            .net
            .iter()
            .any(|n| n.id.as_deref() == Some("eth1")),
        "{:?}",
        info.config.net
    );

    vm.stop_sandbox().await.expect("stops");
    assert!(clh::gone(pid).await);
    vm.cleanup().await.expect("cleans up");
    assert!(
        !ns.links().contains("svtap0"),
        "the tap went with CH's descriptors:\n{}",
        ns.links()
    );
    assert!(clh::processes_mentioning(storage.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(storage.path())
        .expect("storage")
        .collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}
