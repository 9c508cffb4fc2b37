//! A Cloud Hypervisor template from the tiny PVH guest: its memory is one
//! shared zone on the template's memory file, `save_sandbox` is
//! `vm.snapshot` into the template directory. On a KVM host that can
//! snapshot, two clones then start at once, each a fresh CH restoring
//! (`vm.restore`) its own copy of the saved config, patched to map the
//! file private and to use its own sockets: both run on from the template
//! (dots, no banner), and the template's memory file is unchanged by them.
//! On this host's PVM-backed KVM, CH cannot read the vCPUs' nested state:
//! the snapshot fails with [`ClhError::TemplateSnapshot`] carrying CH's
//! text, and nothing of the template (snapshot files, memory file) or of
//! the VM (process, directory) is left once it is stopped.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor`. What would need a booted
//! Linux guest, and is not asserted here: the agent answering a clone on
//! its own vsock socket, and the factory's steps after a clone resumes
//! (reseeding the RNG, setting the clock, onlining hot-added resources).

#[path = "support/clh.rs"]
mod clh;

use std::path::Path;
use std::time::Duration;

use sandvisor::backends::clh::{Clh, ClhError};
use sandvisor::config::HypervisorConfig;
use sandvisor::hypervisor::{Hypervisor, NetworkNamespace, VmState};

fn digest(path: &Path) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).expect("reads the memory file");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len() as u64, h.finish())
}

async fn start(storage: &Path, id: &str, config: &HypervisorConfig) -> Clh {
    let mut vm = Clh::with_storage(storage);
    vm.create_sandbox(id, &NetworkNamespace::default(), config, false)
        .await
        .expect("creates");
    let agent = vm.generate_socket(id, true).expect("agent socket");
    vm.add_device(agent.into_device())
        .await
        .expect("adds the hybrid vsock");
    vm.start_sandbox(clh::START_TIMEOUT).await.expect("starts");
    assert_eq!(vm.state(), VmState::Running);
    vm
}

async fn stop(vm: &mut Clh) {
    let pids = vm.pids();
    vm.stop_sandbox().await.expect("stops");
    for pid in &pids {
        assert!(clh::gone(*pid).await, "pid {pid} is still alive");
    }
    vm.cleanup().await.expect("cleans up");
}

fn nothing_left(storage: &Path) {
    let procs = clh::processes_mentioning(storage);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let left: Vec<_> = std::fs::read_dir(storage).expect("storage").collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}

#[tokio::test]
async fn a_template_and_two_clones_or_chs_snapshot_error() {
    let guest = clh::guest();
    let storage = tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage");
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let template = guest.dir.path().join("template");
    std::fs::create_dir(&template).expect("template dir");
    let (memory, state) = (template.join("memory"), template.join("state"));
    let mut config = clh::config(&guest);
    config.memory_path = Some(memory.clone());
    config.devices_state_path = Some(state.clone());

    let mut making = config.clone();
    making.boot_to_be_template = true;
    let mut vm = start(storage.path(), "tpl", &making).await;
    assert_eq!(
        std::fs::metadata(&memory).expect("the zone's file").len(),
        u64::from(config.memory_size) << 20,
        "guest memory is the template's file"
    );
    let console = vm
        .sandbox_console("tpl")
        .await
        .expect("console")
        .expect("a console socket");
    let mut serial = clh::Serial::connect(&console).await;
    serial.wait_banner(Duration::from_secs(10)).await;
    assert!(serial.new_dots(Duration::from_secs(5)).await, "it runs");

    match vm.save_sandbox().await {
        Ok(()) => {
            assert!(state.join("state.json").is_file(), "snapshot in {state:?}");
            stop(&mut vm).await;
            nothing_left(storage.path());
            assert!(memory.is_file(), "a made template keeps its memory");
            let before = digest(&memory);
            let mut from = config.clone();
            from.boot_from_template = true;
            let (mut a, mut b) = tokio::join!(
                start(storage.path(), "clone-a", &from),
                start(storage.path(), "clone-b", &from)
            );
            assert_ne!(a.pids(), b.pids(), "each clone is its own process");
            for (id, vm) in [("clone-a", &mut a), ("clone-b", &mut b)] {
                let console = vm
                    .sandbox_console(id)
                    .await
                    .expect("console")
                    .expect("a console socket");
                let mut serial = clh::Serial::connect(&console).await;
                assert!(
                    serial.new_dots(Duration::from_secs(10)).await,
                    "{id} runs on from the template"
                );
                vm.check().await.expect("healthy");
            }
            assert_eq!(digest(&memory), before, "clones leave the template alone");
            stop(&mut a).await;
            stop(&mut b).await;
            nothing_left(storage.path());
        }
        Err(e) => {
            // This host: CH's own words, typed.
            let typed = e.backend_source::<ClhError>();
            let Some(ClhError::TemplateSnapshot {
                dir,
                status,
                message,
            }) = typed
            else {
                panic!("a template snapshot fails typed: {e:?}");
            };
            assert_eq!(dir, &state);
            assert_eq!(*status, 500, "{message}");
            assert!(message.contains("GetNestedState"), "CH's text: {message}");
            let said = typed.map(ToString::to_string).unwrap_or_default();
            eprintln!("template snapshot refused: {said}");
            assert!(said.contains("GetNestedState"), "the error says it: {said}");
            assert!(vm.snapshot_dir().is_none());
            assert!(!state.exists(), "no half snapshot: {state:?}");
            assert_eq!(vm.state(), VmState::Paused, "save pauses first");
            stop(&mut vm).await;
            nothing_left(storage.path());
            assert!(!memory.exists(), "an unmade template leaves no memory file");
        }
    }
    let left: Vec<_> = std::fs::read_dir(&template)
        .expect("template dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &memory && p != &state)
        .collect();
    assert!(left.is_empty(), "stray files in the template: {left:?}");
}

fn chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// A clone of a template directory whose snapshot this host could not
/// have made (a saved config, an empty state): the config is patched into
/// the clone's own directory and handed to `vm.restore`, which CH refuses
/// with its message; a saved config that is not a VM config is refused
/// before CH is asked. Either way nothing is left and the template is
/// untouched.
#[tokio::test]
async fn a_clone_patches_its_own_config_and_fails_cleanly_on_a_bad_snapshot() {
    let guest = clh::guest();
    let storage = tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage");
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let template = guest.dir.path().join("template");
    let state = template.join("state");
    std::fs::create_dir_all(&state).expect("template dirs");
    let memory = template.join("memory");
    std::fs::write(&memory, [0u8; 4096]).expect("memory");
    let saved = format!(
        r#"{{"memory":{{"size":0,"shared":true,"zones":[{{"id":"template","size":4096,"file":"{}","shared":true}}]}}}}"#,
        memory.display()
    );
    std::fs::write(state.join("config.json"), &saved).expect("saved config");
    std::fs::write(state.join("state.json"), "{}").expect("state");
    let mut config = clh::config(&guest);
    config.boot_from_template = true;
    config.memory_path = Some(memory.clone());
    config.devices_state_path = Some(state.clone());

    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("clone", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    let e = vm
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("no real snapshot");
    let said = chain(&e);
    assert!(said.contains("vm.restore"), "CH was asked: {said}");
    assert!(vm.pids().is_empty());
    nothing_left(storage.path());
    assert_eq!(
        std::fs::read_to_string(state.join("config.json")).expect("saved config"),
        saved,
        "the template's own config is not patched"
    );

    std::fs::write(state.join("config.json"), r#"{"cpus":{}}"#).expect("bad config");
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("clone", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    let e = vm
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("not a VM config");
    let typed = e.backend_source::<ClhError>();
    assert!(
        matches!(typed, Some(ClhError::TemplateConfig { .. })),
        "{e:?}"
    );
    assert!(chain(&e).contains("\"memory\""), "{}", chain(&e));
    assert!(vm.pids().is_empty());
    nothing_left(storage.path());
}
