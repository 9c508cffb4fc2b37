//! Firecracker going wrong, and the jailer's variants: a SIGKILLed
//! Firecracker is reported with its signal and cleaned up; a bad kernel
//! fails the start cleanly; twenty jailed lifecycles in a row leave
//! nothing; `--new-pid-ns` (SIGTERM ignored: stop ends with SIGKILL);
//! cgroup v1 works and v2 fails cleanly here; the jail runs as a non-root
//! uid by default; re-attach with `save`/`load` and `to_grpc`/`from_grpc`;
//! a dropped handle kills its VM; virtio-mem's resize is a typed fault;
//! Firecracker in a network namespace the test made (nsenter, or the
//! jailer's `--netns`) takes a tap from it by PCI hot-plug.
//!
//! Needs `$SANDVISOR_VMM_DIR/{firecracker,jailer}`; the guest is the tiny
//! PVH guest. Would need a booted Linux guest (not asserted): memory
//! onlined after `resize_memory` (the tiny guest never drives virtio-mem,
//! so Firecracker answers 400), the agent answering after a re-attach, and
//! the hot-plugged interface appearing in the guest after a PCI rescan.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandvisor::backends::firecracker::jailer::CgroupVersion;
use sandvisor::backends::firecracker::{FcError, FcOptions, Firecracker};
use sandvisor::backends::vmm::rest::RestError;
use sandvisor::config::HypervisorConfig;
use sandvisor::device::Device;
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::process::Exit;
use sandvisor::socket::AgentSocket;
use sandvisor::{Error, Hypervisor, VmState};
use support::fc::{self, Dirs};

async fn create(vm: &mut Firecracker, id: &str, config: &HypervisorConfig) {
    vm.create_sandbox(id, &NetworkNamespace::default(), config, false)
        .await
        .expect("create");
    let AgentSocket::HybridVsock(h) = vm.generate_socket(id, true).expect("agent socket") else {
        panic!("firecracker's agent socket is a hybrid vsock");
    };
    vm.add_device(Device::HybridVsock(h))
        .await
        .expect("add the vsock");
}

async fn boot(vm: &mut Firecracker, id: &str, config: &HypervisorConfig) {
    create(vm, id, config).await;
    vm.start_sandbox(fc::START_TIMEOUT).await.expect("start");
}

fn no_process(id: &str) {
    let left = fc::any_process_with(id);
    assert!(left.is_empty(), "processes of {id} left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_sigkill_is_reported_with_its_signal_and_cleaned_up() {
    support::trace();
    let dirs = Dirs::new();
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-kill", &dirs.config(true)).await;
    let pid = vm.pids()[0];
    let jail = vm.jail_dir().expect("jailed");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
    // The exit watch sees the death; check reports it (give the reaper a
    // moment, with a deadline).
    let mut last = None;
    for _ in 0..100 {
        match vm.check().await {
            Err(e) => {
                last = Some(e);
                break;
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let e = last.expect("check fails once firecracker is dead");
    assert_eq!(e.vmm_exit(), Some(Exit::Signal(9)), "{e}");
    assert!(e.to_string().contains("SIGKILL"), "{e}");
    let stop = vm.stop_sandbox().await.expect_err("stop reports the death");
    assert_eq!(stop.vmm_exit(), Some(Exit::Signal(9)), "{stop}");
    assert!(jail.exists(), "the jail stays until cleanup");
    vm.cleanup().await.expect("cleanup");
    assert!(!jail.exists());
    dirs.assert_empty();
    no_process("fc-kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_a_bad_kernel_fails_the_start_cleanly() {
    support::trace();
    let dirs = Dirs::new();
    for jailed in [false, true] {
        let mut config = dirs.config(jailed);
        config.kernel_path = Some(dirs.assets.path().join("no-such-kernel"));
        let mut vm = dirs.backend(dirs.options());
        create(&mut vm, "fc-badk", &config).await;
        let e = vm
            .start_sandbox(fc::START_TIMEOUT)
            .await
            .expect_err("no kernel, no start");
        assert!(
            e.to_string().contains("no-such-kernel") || format!("{e:?}").contains("no-such-kernel"),
            "the error names the kernel: {e:?}"
        );
        assert!(vm.pids().is_empty(), "nothing runs after a failed start");
        dirs.assert_empty();
        no_process("fc-badk");

        // A kernel that exists but is no kernel: Firecracker refuses it.
        let mut config = dirs.config(jailed);
        let junk = dirs.assets.path().join("junk.elf");
        std::fs::write(&junk, b"not an elf").expect("write");
        config.kernel_path = Some(junk);
        let mut vm = dirs.backend(dirs.options());
        create(&mut vm, "fc-badk", &config).await;
        let e = vm
            .start_sandbox(fc::START_TIMEOUT)
            .await
            .expect_err("a junk kernel fails");
        let fault = e.backend_source::<FcError>().and_then(|f| match f {
            FcError::Api(RestError::Fault {
                status, message, ..
            }) => Some((*status, message.clone())),
            _ => None,
        });
        let (status, message) = fault.unwrap_or_else(|| panic!("a firecracker fault: {e:?}"));
        assert_eq!(status, 400, "{message}");
        assert!(!message.is_empty());
        dirs.assert_empty();
        no_process("fc-badk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_twenty_jailed_lifecycles_leave_nothing() {
    support::trace();
    let dirs = Dirs::new();
    let config = dirs.config(true);
    for i in 0..20 {
        let id = format!("fc-soak-{i}");
        let mut vm = dirs.backend(dirs.options());
        boot(&mut vm, &id, &config).await;
        let pid = vm.pids()[0];
        vm.stop_sandbox().await.expect("stop");
        vm.cleanup().await.expect("cleanup");
        assert!(!support::alive(pid), "round {i}: firecracker {pid} is gone");
        dirs.assert_empty();
    }
    no_process("fc-soak-");
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("a Uid line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_the_jail_runs_as_nobody_unless_root_is_asked_for() {
    support::trace();
    let dirs = Dirs::new();
    let config = dirs.config(true);
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-uid", &config).await;
    assert_eq!(uid_of(vm.pids()[0]), 65534);
    let out = fc::wait_serial(
        &vm.serial_log().expect("serial"),
        Duration::from_secs(10),
        |s| fc::dots(s) >= 1,
    )
    .await;
    assert!(fc::banner_then_dots(&out), "{out:?}");
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");

    // Root when the config asks for it.
    let mut root = config.clone();
    root.jailer_uid = Some(0);
    root.jailer_gid = Some(0);
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-uid", &root).await;
    assert_eq!(uid_of(vm.pids()[0]), 0);
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    dirs.assert_empty();
    no_process("fc-uid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_new_pid_ns_is_adopted_from_the_pid_file_and_killed() {
    support::trace();
    let dirs = Dirs::new();
    let config = dirs.config(true);
    let options = FcOptions {
        new_pid_ns: true,
        ..dirs.options()
    };
    let mut vm = dirs.backend(options);
    boot(&mut vm, "fc-pidns", &config).await;
    let pid = vm.pids()[0];
    assert!(support::alive(pid));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("fc-pidns"),
        "pid {pid} is the jailed firecracker"
    );
    vm.check().await.expect("healthy");
    vm.pause_sandbox().await.expect("pause");
    vm.resume_sandbox().await.expect("resume");
    vm.stop_sandbox().await.expect("stop ends with SIGKILL");
    assert!(!support::alive(pid));
    vm.cleanup().await.expect("cleanup");
    dirs.assert_empty();
    no_process("fc-pidns");
}

fn cgroup_v1_dir(controller: &str) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == controller))
            .then(|| std::path::PathBuf::from(f[1]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_jailer_cgroups_v1_work_and_are_removed_v2_fails_cleanly() {
    support::trace();
    let dirs = Dirs::new();
    let config = dirs.config(true);
    let cpuset = cgroup_v1_dir("cpuset")
        .expect("this host mounts the cpuset controller as cgroup v1 (the test is written for it)");
    let options = FcOptions {
        cgroup_version: CgroupVersion::V1,
        cgroups: vec!["cpuset.cpus=0".into(), "cpuset.mems=0".into()],
        ..dirs.options()
    };
    let mut vm = dirs.backend(options.clone());
    boot(&mut vm, "fc-cg1", &config).await;
    let cg = cpuset.join("firecracker").join("fc-cg1");
    assert!(cg.is_dir(), "the jailer made {cg:?}");
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    assert!(!cg.exists(), "cleanup removed {cg:?}");
    dirs.assert_empty();

    // cgroup v2: this host has only the empty unified hierarchy.
    let v2 = FcOptions {
        cgroup_version: CgroupVersion::V2,
        ..options
    };
    let mut vm = dirs.backend(v2);
    create(&mut vm, "fc-cg2", &config).await;
    let e = vm
        .start_sandbox(fc::START_TIMEOUT)
        .await
        .expect_err("the jailer refuses cgroup v2 here");
    assert!(
        matches!(e, Error::VmmExited { starting: true, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("Cgroup"),
        "the jailer's words are kept: {e}"
    );
    dirs.assert_empty();
    no_process("fc-cg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_reattach_through_save_load_and_grpc() {
    support::trace();
    let dirs = Dirs::new();
    for jailed in [false, true] {
        let config = dirs.config(jailed);
        let mut first = dirs.backend(dirs.options());
        boot(&mut first, "fc-re", &config).await;
        let pid = first.pids()[0];
        let state = first.save();
        first.disconnect().await;
        drop(first);
        assert!(
            support::alive(pid),
            "a disconnected handle leaves the VM running"
        );

        // A handle with the defaults: the VM directory and the jail come
        // from the saved state.
        let mut second = Firecracker::new();
        second.load(state).await.expect("load");
        assert_eq!(second.pids(), vec![pid]);
        assert_eq!(second.state(), VmState::Running);
        second
            .pause_sandbox()
            .await
            .expect("pause through the new handle");
        let data = second.to_grpc().await.expect("to_grpc");
        drop(second);
        assert!(support::alive(pid));

        let mut third = Firecracker::new();
        third.from_grpc(&config, &data).await.expect("from_grpc");
        assert_eq!(third.state(), VmState::Paused);
        third.resume_sandbox().await.expect("resume");
        third.check().await.expect("healthy");
        third.stop_sandbox().await.expect("stop");
        third.cleanup().await.expect("cleanup");
        assert!(!support::alive(pid));
        dirs.assert_empty();
    }
    no_process("fc-re");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_a_dropped_handle_kills_its_vm() {
    support::trace();
    let dirs = Dirs::new();
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-drop", &dirs.config(true)).await;
    let pid = vm.pids()[0];
    drop(vm);
    for _ in 0..200 {
        if !support::alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !support::alive(pid),
        "dropping the owner killed firecracker"
    );
    dirs.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_virtio_mem_resize_is_a_typed_fault_and_vcpus_are_unsupported() {
    support::trace();
    let dirs = Dirs::new();
    let mut config = dirs.config(false);
    config.virtio_mem = true;
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-mem", &config).await;
    assert!(vm.capabilities().memory_hotplug);
    assert!(!vm.capabilities().cpu_hotplug);
    let e = vm
        .resize_memory(256 + 128, 2, false)
        .await
        .expect_err("the tiny guest never drives virtio-mem");
    match e.backend_source::<FcError>() {
        Some(FcError::Api(RestError::Fault {
            status,
            message,
            path,
            ..
        })) => {
            assert_eq!(*status, 400);
            assert_eq!(path, "/hotplug/memory");
            assert!(!message.is_empty(), "firecracker's fault_message is kept");
        }
        other => panic!("a firecracker fault, not {other:?} ({e})"),
    }
    let e = vm.resize_vcpus(2).await.expect_err("no vCPU hot-plug");
    assert!(e.is_unsupported(), "{e}");
    vm.check().await.expect("still healthy");
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    dirs.assert_empty();
    no_process("fc-mem");
}

/// A network namespace made for one test, with a tap device in it;
/// deleted on drop.
struct Netns {
    name: String,
    path: std::path::PathBuf,
}

impl Netns {
    fn new(name: &str, tap: &str) -> Netns {
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", name])
            .output();
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
            path: std::path::PathBuf::from(format!("/run/netns/{name}")),
        };
        ip(&["-n", name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_network_namespace_and_pci_network_hot_plug() {
    use sandvisor::backends::firecracker::api::GetVmConfig;
    use sandvisor::device::NetDevice;
    support::trace();
    let dirs = Dirs::new();
    for jailed in [false, true] {
        let ns = Netns::new(if jailed { "svfc-nsj" } else { "svfc-ns" }, "svtap0");
        let mut vm = dirs.backend(dirs.options());
        let netns = NetworkNamespace {
            path: Some(ns.path.clone()),
            created: false,
        };
        let config = dirs.config(jailed);
        vm.create_sandbox("fc-net", &netns, &config, false)
            .await
            .expect("create");
        let AgentSocket::HybridVsock(h) = vm.generate_socket("fc-net", true).expect("socket")
        else {
            panic!("a hybrid vsock");
        };
        vm.add_device(Device::HybridVsock(h)).await.expect("vsock");
        vm.start_sandbox(fc::START_TIMEOUT)
            .await
            .expect("start in the namespace");
        let pid = vm.pids()[0];
        let own = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns of fc");
        let want = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        assert_ne!(own, want, "firecracker runs in the test's namespace");
        let nic = NetDevice {
            id: "eth1".into(),
            tap_name: "svtap0".into(),
            mac: "02:00:00:00:00:07".into(),
            queues: 1,
        };
        vm.hotplug_add_device(Device::Net(nic.clone()))
            .await
            .expect("PCI network hot-plug of a tap in the namespace");
        let listed = vm.call(&GetVmConfig).await.expect("vm config");
        assert!(
            listed
                .network_interfaces
                .iter()
                .any(|n| n.iface_id == "eth1"),
            "{listed:?}"
        );
        vm.hotplug_remove_device(Device::Net(nic))
            .await
            .expect("unplug");
        let listed = vm.call(&GetVmConfig).await.expect("vm config");
        assert!(listed.network_interfaces.is_empty(), "{listed:?}");
        vm.stop_sandbox().await.expect("stop");
        vm.cleanup().await.expect("cleanup");
        dirs.assert_empty();
        drop(ns);
    }
    no_process("fc-net");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_a_jailed_snapshot_with_placeholder_drives_restores() {
    support::trace();
    let dirs = Dirs::new();
    let (state_file, mem_file) = dirs.snapshot();
    let mut config = dirs.config(true);
    config.hotplug_transport = Some(sandvisor::config::HotplugMode::Mmio);
    config.drive_placeholders = Some(2);
    config.devices_state_path = Some(state_file);
    config.memory_path = Some(mem_file);
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-tpl", &config).await;
    vm.save_sandbox().await.expect("snapshot (pauses first)");
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    dirs.assert_empty();

    let mut from = config.clone();
    from.boot_from_template = true;
    let mut vm = dirs.backend(dirs.options());
    boot(&mut vm, "fc-tpl", &from).await;
    let serial = vm.serial_log().expect("serial");
    fc::wait_serial(&serial, Duration::from_secs(10), |s| fc::dots(s) >= 1).await;
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    dirs.assert_empty();
    no_process("fc-tpl");
}
