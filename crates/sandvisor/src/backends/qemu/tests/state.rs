//! The backend's state rules, typed errors and capabilities, without a VM.

use super::*;

#[test]
fn what_cannot_be_built_is_a_typed_error() {
    use super::cmdline::CmdlineError as E;
    let build = |c: &HypervisorConfig, accel: Accel, d: &[Device]| {
        let p = paths();
        cmdline::build(&LaunchSpec {
            config: c,
            id: "vm1",
            uuid: UUID,
            accel: Accelerator::from_resolved(accel)?,
            host_memory_mib: HOST_MIB,
            paths: &p,
            devices: d,
            image_size: None,
            vhost_net: false,
            vm_dir_fd: None,
        })
        .map(|_| ())
    };
    let fs = Device::Fs(SharedFsVolume {
        mount_tag: "t".into(),
        host_path: "/s".into(),
    });
    let mut c = base();
    c.hypervisor_machine_type = "virt".into();
    assert_eq!(
        build(&c, Accel::Tcg, &[]),
        Err(E::UnsupportedMachine("virt".into()))
    );
    assert_eq!(build(&base(), Accel::Auto, &[]), Err(E::UnresolvedAccel));
    let mut c = base();
    c.shared_fs = SharedFs::None;
    assert_eq!(
        build(&c, Accel::Tcg, std::slice::from_ref(&fs)),
        Err(E::SharedFsDisabled { tag: "t".into() })
    );
    let mut c = virtio_fs().0;
    c.virtio_fs_cache_size = 1024;
    assert_eq!(
        build(&c, Accel::Tcg, std::slice::from_ref(&fs)),
        Err(E::VirtioFsDax(1024))
    );
    let mut c = template(false);
    c.shared_fs = SharedFs::VirtioFs;
    assert_eq!(
        build(&c, Accel::Tcg, std::slice::from_ref(&fs)),
        Err(E::TemplateWithSharedMemory)
    );
    let mut c = base();
    c.enable_vhost_user_store = true;
    assert_eq!(
        build(&c, Accel::Tcg, &[]),
        Err(E::VhostUserWithoutHugepages)
    );
    // A hybrid vsock needs shared memory, which a template cannot have.
    let hybrid = Device::HybridVsock(crate::device::HybridVsock::default());
    assert_eq!(
        build(&template(false), Accel::Tcg, &[hybrid]),
        Err(E::TemplateWithSharedMemory)
    );
    let bad = Device::Block(BlockDrive {
        id: "x".into(),
        ..BlockDrive::default()
    });
    assert_eq!(
        build(&base(), Accel::Tcg, &[bad]),
        Err(E::IncompleteDrive { id: "x".into() })
    );
    let mut c = pc_kvm_image().0;
    c.disable_image_nvdimm = false;
    assert_eq!(
        build(&c, Accel::Kvm, &[]),
        Err(E::MissingImageSize("/k/root,1.img".into()))
    );
}

#[test]
fn an_image_on_virtio_blk_gets_its_root_parameters() {
    let mut c = pc_kvm_image().0;
    c.disable_image_nvdimm = true;
    let p = paths();
    let args = cmdline::build(&LaunchSpec {
        config: &c,
        id: "vm1",
        uuid: UUID,
        accel: Accelerator::Tcg,
        host_memory_mib: HOST_MIB,
        paths: &p,
        devices: &[],
        image_size: None,
        vhost_net: false,
        vm_dir_fd: None,
    })
    .expect("builds")
    .args;
    assert!(args.contains(&"virtio-blk-pci,drive=image0,id=virtio-image0,share-rw=on".to_string()));
    assert!(args.contains(
        &"id=image0,file=/k/root,,1.img,aio=threads,format=raw,if=none,readonly=on".to_string()
    ));
    let append = args.last().expect("append");
    assert!(append.contains("root=/dev/vda1 "), "{append}");
    assert!(!args.iter().any(|a| a.contains("nvdimm")));
}

#[test]
fn helpers() {
    assert_eq!(cmdline::escape_opt("/a,b"), "/a,,b");
    assert_eq!(cmdline::truncate_id(&"x".repeat(40)).len(), 31);
    assert_eq!(cmdline::scsi_id_lun(0), (0, 0));
    assert_eq!(cmdline::scsi_id_lun(257), (1, 1));
    assert_eq!(fd_uri("sv-migration"), "fd:sv-migration");
    let u = new_uuid();
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "4", "version 4: {u}");
    assert_ne!(new_uuid(), u);
}

#[tokio::test]
async fn operations_in_the_wrong_state_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Qemu::with_storage(dir.path());
    assert!(matches!(
        q.start_sandbox(std::time::Duration::from_secs(1)).await,
        Err(Error::InvalidState {
            op: "start_sandbox",
            state: VmState::New
        })
    ));
    q.create_sandbox("s1", &NetworkNamespace::default(), &base(), false)
        .await
        .expect("create");
    assert_eq!(q.state(), VmState::Created);
    for r in [
        q.pause_sandbox().await,
        q.resume_sandbox().await,
        q.save_sandbox().await,
        q.check().await,
    ] {
        assert!(
            matches!(
                r,
                Err(Error::InvalidState {
                    state: VmState::Created,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert!(matches!(
        q.hotplug_add_device(Device::Cpu(1)).await,
        Err(Error::InvalidState { .. })
    ));
    let r = q
        .add_device(Device::HybridVsock(crate::device::HybridVsock::default()))
        .await;
    assert!(r.as_ref().is_err_and(Error::is_unsupported), "{r:?}");
    // Stopping or cleaning up a VM that never ran is fine.
    q.stop_sandbox().await.expect("stop");
    q.cleanup().await.expect("cleanup");
    assert!(!dir.path().join("s1").exists());
    assert_eq!(
        q.sandbox_console("s1").await.expect("console"),
        Some(dir.path().join("s1/console.sock"))
    );
}

#[tokio::test]
async fn socket_paths_that_do_not_fit_are_refused_at_create() {
    let long = PathBuf::from("/tmp").join("d".repeat(100));
    let mut q = Qemu::with_storage(&long);
    let r = q
        .create_sandbox("s1", &NetworkNamespace::default(), &base(), false)
        .await;
    assert!(matches!(r, Err(Error::Socket(_))), "{r:?}");
    assert_eq!(q.state(), VmState::New);
}

#[test]
fn capabilities_follow_the_machine_and_config() {
    let mut q = Qemu::with_storage("/tmp");
    q.config = base();
    let caps = q.capabilities();
    assert!(caps.cpu_hotplug && caps.memory_hotplug && caps.block_device_hotplug);
    assert!(caps.pause && caps.save && caps.vm_template && caps.reattach && caps.vm_cache);
    assert!(!caps.hybrid_vsock);
    q.config.mem_slots = 0;
    assert!(!q.capabilities().memory_hotplug);
    q.config = microvm();
    let caps = q.capabilities();
    assert!(!caps.cpu_hotplug && !caps.memory_hotplug && !caps.block_device_hotplug);
    assert!(caps.block_device);
}

#[test]
fn state_round_trips_through_save() {
    let mut q = Qemu::with_storage("/tmp/svs");
    q.config = base();
    q.id = "s1".into();
    q.paths = Some(VmPaths::new(Path::new("/tmp/svs"), "s1"));
    q.hot = hotplug::HotplugState::new(1, 0);
    q.hot.vcpus = vec!["cpu-0".into()];
    q.hot.devices.insert(
        "virtio-d".into(),
        hotplug::Placement::Bridge { bridge: 0, slot: 1 },
    );
    q.hot.memory_mib = 256;
    let s = q.save();
    assert_eq!(s.vm_dir, PathBuf::from("/tmp/svs/s1"));
    assert_eq!(s.api_socket, Some(PathBuf::from("/tmp/svs/s1/qmp.sock")));
    assert_eq!(s.hotplugged_devices, ["virtio-d=bridge0/1"]);
    let mut back = Qemu::with_storage("/elsewhere");
    back.config = s.config.clone();
    back.restore_from_state(&s).expect("restores");
    assert_eq!(back.hot, q.hot);
    assert_eq!(back.paths, q.paths);
    let bytes = serde_json::to_vec(&s).expect("encodes");
    let decoded: HypervisorState = serde_json::from_slice(&bytes).expect("decodes");
    assert_eq!(decoded, s);
    // A state written before hybrid vsock existed still decodes.
    let mut old: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    old.as_object_mut().expect("object").remove("vsock_daemon");
    let decoded: HypervisorState = serde_json::from_value(old).expect("decodes");
    assert_eq!(decoded.vsock_daemon, None);
}

#[test]
fn vsock_without_vhost_vsock_is_a_clear_error() {
    let q = Qemu::with_storage("/tmp/svs");
    let r = q.generate_socket("s1", true);
    if std::path::Path::new(crate::probe::DEV_VHOST_VSOCK).exists() {
        // A host with vhost-vsock claims a context id instead.
        if let Ok(AgentSocket::Vsock(v)) = &r {
            assert!(v.context_id >= 3);
        }
        return;
    }
    let err = r.expect_err("no /dev/vhost-vsock here");
    assert!(matches!(err, Error::Socket(_)), "{err}");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err).map_or(String::new(), |s| s.to_string())
    );
    assert!(
        chain.contains("vhost-vsock") && chain.contains("use_vsock"),
        "{chain}"
    );
    match q.generate_socket("s1", false).expect("unix socket") {
        AgentSocket::Unix(u) => {
            assert_eq!(u.host_path, PathBuf::from("/tmp/svs/s1/kata.sock"));
            assert_eq!(u.name, "agent.channel.0");
        }
        other => panic!("expected a unix socket, got {other:?}"),
    }
}

#[test]
fn errors_stay_small_enough_to_return_by_value() {
    // clippy's result_large_err threshold: callers wrap Error in theirs.
    assert!(
        std::mem::size_of::<Error>() <= 128,
        "{}",
        std::mem::size_of::<Error>()
    );
    assert!(
        std::mem::size_of::<QemuError>() <= 112,
        "{}",
        std::mem::size_of::<QemuError>()
    );
}

/// The vhost-device-vsock processes serving a VM under `dir`.
fn daemons_in(dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("vhost-device-vsock") && c.contains(&dir)
            }) && crate::process::pid_alive(pid)
        })
        .collect()
}

#[tokio::test]
async fn a_failed_start_with_a_hybrid_vsock_leaves_no_daemon_and_no_socket() {
    use crate::backends::vmm::lookup;
    let daemon = lookup::find(&lookup::Binary::VHOST_DEVICE_VSOCK, None)
        .unwrap_or_else(|e| panic!("{e}; run scripts/setup.sh"))
        .path;
    let storage = tempfile::Builder::new()
        .prefix("svq")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let (mut c, _) = hybrid_vsock();
    c.vhost_user_vsock_daemon = Some(daemon);
    c.accel = Accel::Tcg;
    // A "QEMU" that exits at once, after the daemon is up.
    c.hypervisor_path = Some("/bin/false".into());
    let mut q = Qemu::with_storage(storage.path());
    q.create_sandbox("s1", &NetworkNamespace::default(), &c, false)
        .await
        .expect("created");
    let socket = q.generate_socket("s1", true).expect("hybrid socket");
    q.add_device(socket.into_device()).await.expect("added");
    let err = q
        .start_sandbox(Duration::from_secs(30))
        .await
        .expect_err("qemu exits");
    assert!(
        matches!(err, Error::VmmExited { starting: true, .. }),
        "{err}"
    );
    assert!(q.pids().is_empty(), "{:?}", q.pids());
    assert!(daemons_in(storage.path()).is_empty(), "daemon left running");
    assert!(!storage.path().join("s1").exists(), "VM directory left");
}
