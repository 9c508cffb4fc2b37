//! One real QEMU (TCG) guest through the life a runtime gives it: boot,
//! pause and resume, vCPU, memory and disk hot-plug seen from inside the
//! guest, re-attach from a fresh handle, VM-cache handoff, stop, cleanup.
//! One VM serves every step: under TCG a boot costs seconds.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sandvisor::backends::qemu::Qemu;
use sandvisor::config::BlockDeviceDriver;
use sandvisor::device::{BlockDrive, Device, HotplugResult};
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::socket::AgentSocket;
use sandvisor::{Error, Hypervisor, VmState};
use support::{alive, entries, Console};

fn mem_total_kb(meminfo_line: &str) -> u64 {
    meminfo_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a MemTotal line: {meminfo_line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hotplug_and_reattach() {
    support::trace();
    let storage = support::storage();
    let config = support::config(BlockDeviceDriver::VirtioBlock);
    let id = "life";

    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox(id, &NetworkNamespace::default(), &config, false)
        .await
        .expect("create");
    let AgentSocket::Unix(agent) = vm.generate_socket(id, false).expect("agent socket") else {
        panic!("expected a unix agent socket without vsock");
    };
    assert_eq!(agent.host_path, storage.path().join(id).join("kata.sock"));
    vm.add_device(Device::SerialPort(agent.clone()))
        .await
        .expect("add agent channel");

    // Boot.
    let t0 = Instant::now();
    vm.start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start");
    let qmp_up = t0.elapsed();
    let pids = vm.pids();
    assert_eq!(pids.len(), 1, "qemu only, no virtiofsd: {pids:?}");
    let pid = pids[0];
    assert!(alive(pid));
    assert!(agent.host_path.exists(), "the agent socket is listening");
    let console_path = vm
        .sandbox_console(id)
        .await
        .expect("console")
        .expect("qemu has a console");
    let mut console = Console::ready(&console_path).await;
    let booted = t0.elapsed();
    eprintln!("qmp after {qmp_up:?}, guest shell after {booted:?}");
    vm.check().await.expect("healthy");
    assert_eq!(console.run("cat /sys/devices/system/cpu/online").await, "0");
    let ids = vm.thread_ids().await.expect("thread ids");
    assert_eq!(ids.vcpus.len(), 1);
    let tid = ids.vcpus[&0];
    assert!(
        PathBuf::from(format!("/proc/{pid}/task/{tid}")).exists(),
        "vCPU 0 thread {tid} is a thread of qemu {pid}"
    );

    // Pause: the guest stops answering, and answers once resumed.
    vm.pause_sandbox().await.expect("pause");
    assert_eq!(vm.save().state, VmState::Paused);
    vm.check().await.expect("a paused VM is healthy");
    assert!(matches!(
        vm.pause_sandbox().await,
        Err(Error::InvalidState {
            state: VmState::Paused,
            ..
        })
    ));
    assert_eq!(
        console.try_run("echo alive", Duration::from_secs(2)).await,
        None,
        "a paused guest runs nothing"
    );
    vm.resume_sandbox().await.expect("resume");
    assert_eq!(vm.save().state, VmState::Running);
    assert_eq!(
        console.finish_last(support::CMD_TIMEOUT).await.as_deref(),
        Some("alive")
    );

    // vCPUs: 1 -> 3, onlined by the guest.
    assert_eq!(vm.resize_vcpus(3).await.expect("add vCPUs"), (1, 3));
    console
        .run_until("ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l", |o| {
            o == "3"
        })
        .await;
    console
        .run("for c in 1 2; do echo 1 > /sys/devices/system/cpu/cpu$c/online; done")
        .await;
    assert_eq!(
        console.run("cat /sys/devices/system/cpu/online").await,
        "0-2"
    );
    assert_eq!(vm.thread_ids().await.expect("thread ids").vcpus.len(), 3);
    // Removing one under TCG on this QEMU would crash it at the next
    // hot-plug: refused, typed, and the VM goes on.
    let err = vm
        .resize_vcpus(2)
        .await
        .expect_err("TCG vCPU unplug refused");
    assert!(err.is_unsupported(), "{err}");
    assert_eq!(
        console.run("cat /sys/devices/system/cpu/online").await,
        "0-2"
    );
    let err = vm
        .hotplug_remove_device(Device::Cpu(5))
        .await
        .expect_err("more than hot-plugged");
    assert!(
        err.is_unsupported() || err.to_string().contains("only 2 were hot-plugged"),
        "{err}"
    );

    // Memory: +128 MiB in one 128 MiB block.
    let before = mem_total_kb(&console.run("grep MemTotal /proc/meminfo").await);
    let (now, dimm) = vm.resize_memory(600, 128, false).await.expect("add memory");
    assert_eq!(
        (now, dimm.size_mib),
        (640, 128),
        "600 rounds up to a whole block"
    );
    // The guest learns of the DIMM a moment after QEMU added it (an ACPI
    // event): online blocks as they appear, for up to 10 s.
    let mut after = before;
    for _ in 0..100 {
        console
            .run(
                "for m in /sys/devices/system/memory/memory*; do \
                 grep -q offline $m/state && echo online > $m/state; done; true",
            )
            .await;
        after = mem_total_kb(&console.run("grep MemTotal /proc/meminfo").await);
        if after > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(after - before, 128 * 1024, "the guest gained 128 MiB");
    let (same, _) = vm.resize_memory(512, 128, false).await.expect("shrink");
    assert_eq!(same, 640, "memory is not taken back, as in the seed");

    // A disk on the PCI bridge, seen by the guest, then gone.
    let disk = storage.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk image");
    let drive = BlockDrive {
        file: disk.clone(),
        format: "raw".into(),
        id: "drive1".into(),
        index: 1,
        ..BlockDrive::default()
    };
    let HotplugResult::Attached(Some(attached)) = vm
        .hotplug_add_device(Device::Block(drive.clone()))
        .await
        .expect("hot-plug disk")
    else {
        panic!("a block hot-plug returns the drive");
    };
    assert_eq!(attached.pci_path.as_deref(), Some("02/01"));
    console
        .run_until("ls /sys/block", |o| o.contains("vda"))
        .await;
    assert_eq!(console.run("cat /sys/block/vda/size").await, "32768");
    let open = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("qemu fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|p| p == disk)
    };
    assert!(open(pid), "qemu holds the disk open");
    vm.hotplug_remove_device(Device::Block(drive.clone()))
        .await
        .expect("hot-unplug disk");
    assert!(!console.run("ls /sys/block").await.contains("vda"));
    assert!(!open(pid), "qemu closed the disk after blockdev-del");

    // Re-attach: another handle, as another process would, from save().
    let state = vm.save();
    assert_eq!(state.pid, pid);
    assert_eq!(state.hotplugged_vcpus.len(), 2);
    assert_eq!(state.hotplugged_memory_mib, 128);
    vm.disconnect().await;
    drop(vm);
    assert!(alive(pid), "a disconnected handle leaves the VM running");
    let mut vm = Qemu::with_storage(storage.path());
    vm.load(state).await.expect("re-attach");
    assert_eq!(vm.pids(), vec![pid]);
    vm.check().await.expect("healthy after re-attach");
    assert_eq!(vm.resize_vcpus(4).await.expect("add a vCPU"), (3, 4));
    console
        .run_until("ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l", |o| {
            o == "4"
        })
        .await;

    // VM cache handoff: serialise, rebuild without launching.
    let data = vm.to_grpc().await.expect("to_grpc");
    drop(vm);
    assert!(alive(pid), "to_grpc hands the VM over");
    let mut vm = Qemu::with_storage(storage.path());
    vm.from_grpc(&config, &data).await.expect("from_grpc");
    assert_eq!(vm.pids(), vec![pid]);
    vm.check().await.expect("healthy after from_grpc");
    assert_eq!(
        vm.resize_vcpus(8)
            .await
            .expect("capped at default_maxvcpus"),
        (4, 4)
    );
    assert_eq!(vm.thread_ids().await.expect("thread ids").vcpus.len(), 4);

    // Stop and clean up: nothing left.
    vm.stop_sandbox().await.expect("stop");
    assert!(!alive(pid), "qemu is gone");
    assert!(matches!(vm.check().await, Err(Error::InvalidState { .. })));
    vm.cleanup().await.expect("cleanup");
    let left: Vec<_> = entries(storage.path())
        .into_iter()
        .filter(|p| *p != disk)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
