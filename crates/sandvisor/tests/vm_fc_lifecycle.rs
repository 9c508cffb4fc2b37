//! A real Firecracker through the life a runtime gives it, without and
//! with the jailer: create, start (banner on the serial console), pause (no
//! output), resume, snapshot while paused, stop; restore the snapshot into
//! a new process (its output continues, no new banner); PCI hot-plug and
//! unplug of a 16 MiB drive (listed by `GET /vm/config` in between); a
//! placeholder swap in MMIO mode; stop; nothing left.
//!
//! Needs `$SANDVISOR_VMM_DIR/{firecracker,jailer}`. The guest is the tiny
//! PVH guest. What would need a booted Linux guest, and is not asserted
//! here: the agent answering on the hybrid vsock, the hot-plugged drive
//! appearing in the guest after `/sys/bus/pci/rescan` (and `remove` before
//! the unplug), the guest seeing a placeholder's new capacity, and a
//! reboot on `SendCtrlAltDel` ending Firecracker (this guest ignores it,
//! so stop goes on to SIGTERM).

mod support;

use std::path::Path;
use std::time::Duration;

use sandvisor::backends::firecracker::api::GetVmConfig;
use sandvisor::backends::firecracker::{Firecracker, HotplugMode};
use sandvisor::device::{BlockDrive, Device, HotplugResult};
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::socket::AgentSocket;
use sandvisor::{Hypervisor, VmState};
use support::fc::{self, Dirs};

const SEE: Duration = Duration::from_secs(10);

async fn boot(vm: &mut Firecracker, id: &str, config: &sandvisor::config::HypervisorConfig) {
    vm.create_sandbox(id, &NetworkNamespace::default(), config, false)
        .await
        .expect("create");
    let AgentSocket::HybridVsock(h) = vm.generate_socket(id, true).expect("agent socket") else {
        panic!("firecracker's agent socket is a hybrid vsock");
    };
    assert_eq!(h.port, 1024);
    vm.add_device(Device::HybridVsock(h.clone()))
        .await
        .expect("add the vsock");
    vm.start_sandbox(fc::START_TIMEOUT).await.expect("start");
    assert_eq!(vm.state(), VmState::Running);
    // Firecracker listens on the hybrid vsock's socket (in the jail when
    // jailed); only a Linux guest's agent would answer `CONNECT 1024`.
    assert!(
        h.uds_path.exists(),
        "the vsock socket {:?} exists",
        h.uds_path
    );
}

async fn stop_and_clean(vm: &mut Firecracker) {
    let pid = vm.pids()[0];
    vm.stop_sandbox().await.expect("stop");
    assert!(!support::alive(pid), "firecracker {pid} is gone after stop");
    vm.cleanup().await.expect("cleanup");
}

fn drives_in(config: &sandvisor::backends::firecracker::api::FullVmConfiguration) -> Vec<String> {
    config.drives.iter().map(|d| d.drive_id.clone()).collect()
}

async fn lifecycle(jailed: bool) {
    support::trace();
    let dirs = Dirs::new();
    let (state_file, mem_file) = dirs.snapshot();
    let mut config = dirs.config(jailed);
    config.devices_state_path = Some(state_file.clone());
    config.memory_path = Some(mem_file.clone());
    let id = if jailed { "fc-life-j" } else { "fc-life" };

    // Boot: the banner, then dots.
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, id, &config).await;
    let serial = vm.serial_log().expect("a serial log");
    if jailed {
        let jail = vm.jail_dir().expect("jailed");
        assert!(serial.starts_with(&jail), "the serial file is in the jail");
        assert!(
            jail.join("root/firecracker").is_file(),
            "the jailer copied firecracker"
        );
    }
    let out = fc::wait_serial(&serial, SEE, |s| fc::dots(s) >= 3).await;
    assert!(fc::banner_then_dots(&out), "{out:?}");
    vm.check().await.expect("healthy");
    let ids = vm.thread_ids().await.expect("thread ids");
    assert_eq!(ids.vcpus.len(), 1, "{ids:?}");
    let pid = vm.pids()[0];
    assert!(Path::new(&format!("/proc/{pid}/task/{}", ids.vcpus[&0])).exists());

    // Pause: no output for 500 ms. Resume: output again.
    vm.pause_sandbox().await.expect("pause");
    vm.check().await.expect("a paused VM is healthy");
    assert_eq!(vm.state(), VmState::Paused);
    let before = fc::serial(&serial).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fc::serial(&serial).len(), before, "no output while paused");
    vm.resume_sandbox().await.expect("resume");
    fc::wait_serial(&serial, SEE, |s| s.len() > before).await;

    // Snapshot while paused, then stop.
    vm.pause_sandbox().await.expect("pause");
    vm.save_sandbox().await.expect("snapshot");
    assert!(state_file.is_file() && mem_file.is_file(), "snapshot files");
    let dots_at_snapshot = fc::dots(&fc::serial(&serial));
    stop_and_clean(&mut vm).await;
    dirs.assert_empty();

    // Restore into a new process: the output continues, with no banner.
    let mut restored = config.clone();
    restored.boot_from_template = true;
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, id, &restored).await;
    let serial = vm.serial_log().expect("a serial log");
    let out = fc::wait_serial(&serial, SEE, |s| fc::dots(s) >= 2).await;
    assert!(
        !out.contains(sandvisor::image::tiny_guest::BANNER),
        "the restored guest goes on, it does not boot again: {out:?} (it had {dots_at_snapshot} dots)"
    );
    vm.check().await.expect("healthy after restore");

    // PCI hot-plug of a 16 MiB drive, and unplug.
    let disk = dirs.assets.path().join("disk16.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("makes the disk");
    let drive = BlockDrive {
        file: disk.clone(),
        format: "raw".into(),
        id: "hp0".into(),
        ..BlockDrive::default()
    };
    let r = vm
        .hotplug_add_device(Device::Block(drive.clone()))
        .await
        .expect("hot-plug");
    assert!(matches!(r, HotplugResult::Attached(_)), "{r:?}");
    let listed = vm.call(&GetVmConfig).await.expect("vm config");
    assert!(
        drives_in(&listed).contains(&"hp0".to_string()),
        "{listed:?}"
    );
    vm.hotplug_remove_device(Device::Block(drive))
        .await
        .expect("unplug");
    let listed = vm.call(&GetVmConfig).await.expect("vm config");
    assert!(
        !drives_in(&listed).contains(&"hp0".to_string()),
        "{listed:?}"
    );
    assert!(disk.is_file(), "the caller's disk stays");
    stop_and_clean(&mut vm).await;
    dirs.assert_empty();

    // MMIO mode, chosen by the config's keys: a placeholder swapped for
    // the drive, and back.
    let mut mmio = config.clone();
    mmio.hotplug_transport = Some(HotplugMode::Mmio);
    mmio.drive_placeholders = Some(1);
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, id, &mmio).await;
    assert!(
        !vm.capabilities().net_hotplug,
        "no network hot-plug over MMIO"
    );
    let drive = BlockDrive {
        file: disk.clone(),
        id: "sw0".into(),
        ..BlockDrive::default()
    };
    vm.hotplug_add_device(Device::Block(drive.clone()))
        .await
        .expect("placeholder swap");
    let listed = vm.call(&GetVmConfig).await.expect("vm config");
    let slot = listed
        .drives
        .iter()
        .find(|d| d.drive_id == "drive_0")
        .expect("the placeholder is listed");
    let path = slot.path_on_host.clone().expect("a path");
    assert!(path.ends_with("disk16.img"), "swapped in: {path:?}");
    vm.hotplug_remove_device(Device::Block(drive))
        .await
        .expect("swap back");
    stop_and_clean(&mut vm).await;
    dirs.assert_empty();
    let leaked = fc::any_process_with(&format!("--id={id}"));
    assert!(leaked.is_empty(), "firecracker processes left: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_lifecycle_without_jailer() {
    lifecycle(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_lifecycle_with_jailer() {
    lifecycle(true).await;
}
