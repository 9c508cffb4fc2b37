//! A Firecracker template and two clones of it, as the factory makes them:
//! a running tiny guest is paused and written to a template directory
//! (`PUT /snapshot/create`: a state file and a memory file); then two
//! clones start at once, each a fresh Firecracker process that loads the
//! template (`PUT /snapshot/load` with `mem_backend {File}` and a
//! `vsock_override` to its own hybrid-vsock socket) and resumes. Each
//! clone runs on (its serial output goes on from the template's, with no
//! new banner; `GET /` says `Running`), the template's memory file is
//! byte-for-byte the same after the clones ran (Firecracker maps it
//! private: copy on write), and nothing is left once they stop.
//!
//! Needs `$SANDVISOR_VMM_DIR/firecracker`. The guest is the tiny PVH guest.
//! What would need a booted Linux guest, and is not asserted here: the
//! agent answering each clone on its own vsock socket after the load (the
//! override is checked by the socket existing where the clone asked), the
//! factory's steps after a clone resumes (the agent reseeding the RNG,
//! setting the clock, onlining hot-added CPUs and memory), and two clones
//! reading different bytes from `/dev/urandom`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandvisor::backends::firecracker::api::{GetInstanceInfo, InstanceState};
use sandvisor::backends::firecracker::Firecracker;
use sandvisor::config::HypervisorConfig;
use sandvisor::device::Device;
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::image::tiny_guest::BANNER;
use sandvisor::socket::AgentSocket;
use sandvisor::{Hypervisor, VmState};
use support::fc::{self, Dirs};

const SEE: Duration = Duration::from_secs(10);

/// Creates, gives a hybrid vsock, starts; returns the vsock's host socket.
async fn start(vm: &mut Firecracker, id: &str, config: &HypervisorConfig) -> PathBuf {
    vm.create_sandbox(id, &NetworkNamespace::default(), config, false)
        .await
        .expect("create");
    let AgentSocket::HybridVsock(h) = vm.generate_socket(id, true).expect("agent socket") else {
        panic!("firecracker's agent socket is a hybrid vsock");
    };
    vm.add_device(Device::HybridVsock(h.clone()))
        .await
        .expect("add the vsock");
    vm.start_sandbox(fc::START_TIMEOUT).await.expect("start");
    assert_eq!(vm.state(), VmState::Running);
    h.uds_path
}

fn digest(path: &Path) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).expect("reads the memory file");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len() as u64, h.finish())
}

async fn stop(vm: &mut Firecracker) {
    let pid = vm.pids()[0];
    vm.stop_sandbox().await.expect("stop");
    assert!(!support::alive(pid), "firecracker {pid} is gone after stop");
    vm.cleanup().await.expect("cleanup");
}

/// Starts a clone and checks it runs on from the template.
async fn start_clone(dirs: &Dirs, id: &str, config: &HypervisorConfig) -> Firecracker {
    let mut vm = dirs.backend(dirs.options());
    let vsock = start(&mut vm, id, config).await;
    // The override moved the vsock to this clone's own socket (in its
    // own jail when jailed), not the template's.
    let own = if config.jailer_path.is_some() {
        vm.jail_dir().expect("jailed")
    } else {
        dirs.storage.path().join(id)
    };
    assert!(
        vsock.exists() && vsock.starts_with(&own),
        "{id}'s vsock socket is its own: {vsock:?}"
    );
    vm
}

async fn two_clones_at_once(jailed: bool) {
    support::trace();
    let dirs = Dirs::new();
    let template = dirs.assets.path().join("template");
    std::fs::create_dir(&template).expect("template dir");
    let (state, memory) = (template.join("vm.state"), template.join("vm.mem"));
    let mut config = dirs.config(jailed);
    config.devices_state_path = Some(state.clone());
    config.memory_path = Some(memory.clone());

    // The template: a running guest, paused and written out.
    let mut making = config.clone();
    making.boot_to_be_template = true;
    let mut vm = dirs.backend(dirs.options());
    start(&mut vm, "fc-tpl", &making).await;
    let serial = vm.serial_log().expect("a serial log");
    let out = fc::wait_serial(&serial, SEE, |s| fc::dots(s) >= 3).await;
    assert!(fc::banner_then_dots(&out), "{out:?}");
    vm.pause_sandbox().await.expect("pause");
    vm.save_sandbox().await.expect("snapshot to the template");
    assert!(state.is_file() && memory.is_file(), "template files");
    assert_eq!(
        std::fs::metadata(&memory).expect("memory file").len(),
        256 << 20,
        "a full snapshot holds all guest memory"
    );
    stop(&mut vm).await;
    dirs.assert_empty();
    let before = digest(&memory);

    // Two clones at once, each its own process.
    let mut from = config.clone();
    from.boot_from_template = true;
    let (mut a, mut b) = tokio::join!(
        start_clone(&dirs, "fc-clone-a", &from),
        start_clone(&dirs, "fc-clone-b", &from)
    );
    assert_ne!(a.pids(), b.pids(), "each clone is its own firecracker");
    for vm in [&mut a, &mut b] {
        let serial = vm.serial_log().expect("a serial log");
        let out = fc::wait_serial(&serial, SEE, |s| fc::dots(s) >= 3).await;
        assert!(
            !out.contains(BANNER),
            "a clone goes on from the template, it does not boot: {out:?}"
        );
        let info = vm.call(&GetInstanceInfo).await.expect("GET /");
        assert_eq!(info.state, InstanceState::Running, "{info:?}");
        vm.check().await.expect("healthy");
    }
    // Both ran (and wrote guest memory) for a while: the template is
    // unchanged.
    assert_eq!(digest(&memory), before, "clones leave the template alone");

    stop(&mut a).await;
    stop(&mut b).await;
    dirs.assert_empty();
    for id in ["fc-tpl", "fc-clone-a", "fc-clone-b"] {
        let leaked = fc::any_process_with(&format!("--id={id}"));
        assert!(leaked.is_empty(), "firecracker processes left: {leaked:?}");
    }
    assert_eq!(digest(&memory), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_template_two_clones_at_once() {
    two_clones_at_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fc_template_two_clones_at_once_jailed() {
    two_clones_at_once(true).await;
}
