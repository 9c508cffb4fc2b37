//! `rootless = true`: QEMU runs as an unprivileged uid of its own, and the
//! sandbox still works: the agent answers (exec), a disk hot-plugged from
//! a directory that uid cannot enter is usable in the guest (it is passed
//! by descriptor), and after shutdown no file, process or user is left.
//!
//! Every assertion needs a booted Linux guest (under TCG here) except the
//! uid read from `/proc` and the leftovers checked at the end.

mod support;
use support::sh;

use std::os::unix::fs::MetadataExt;

use sandvisor::backends::qemu::{rootless, Qemu};
use sandvisor::config::BlockDeviceDriver;
use sandvisor::sandbox::Sandbox;
use sandvisor_proto::MountRequest;

/// The real, effective, saved and filesystem uids of `pid`.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status of qemu");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a uid"))
        .collect()
}

/// Processes running as `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}"))
                .map(|m| m.uid() == uid)
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_rootless_qemu_runs_unprivileged_and_still_execs_and_hotplugs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: rootless drops from root to a uid of its own");
        return;
    }
    let storage = support::storage();
    let mut config = support::config(BlockDeviceDriver::VirtioBlock);
    config.kernel_params.clear();
    config.rootless = true;
    config.validate().expect("valid config");
    let mut sandbox = Sandbox::launch(
        "rootless".into(),
        Box::new(Qemu::with_storage(storage.path())),
        &config,
        support::BOOT_TIMEOUT,
    )
    .await
    .expect("sandbox boots rootless and its agent answers");

    let pids = sandbox.hypervisor().pids();
    let qemu = *pids.first().expect("a qemu pid");
    let ids = uids(qemu);
    assert_eq!(ids.len(), 4, "{ids:?}");
    let uid = ids[0];
    assert!(ids.iter().all(|u| *u == uid), "one uid throughout: {ids:?}");
    assert!(
        (rootless::UID_BASE..rootless::UID_BASE + rootless::UID_COUNT).contains(&uid),
        "qemu runs as uid {uid}, outside the rootless range"
    );
    let vm_dir = storage.path().join("rootless");
    assert_eq!(
        std::fs::metadata(&vm_dir).expect("VM dir").uid(),
        uid,
        "the VM directory is the uid's"
    );

    assert_eq!(sh(sandbox.agent(), "echo rootless").await, "rootless");

    // The disk's directory is root's and 0700: QEMU could not open the
    // file by path, so the hot-plug proves it was passed by descriptor.
    let disk_dir = tempfile::tempdir().expect("tempdir");
    let image = support::ext4_image(disk_dir.path(), "passed by descriptor\n");
    let added = support::hotplug_data_disk(
        &mut sandbox,
        &image,
        "hot-plug the disk into a rootless QEMU",
    )
    .await;
    sandbox
        .agent()
        .mount(MountRequest {
            source: format!("/dev/{}", added.name),
            target: "/mnt/data".into(),
            fstype: "ext4".into(),
            options: vec!["ro".into()],
        })
        .await
        .expect("agent mounts the disk");
    assert_eq!(
        sh(sandbox.agent(), "cat /mnt/data/hello.txt").await,
        "passed by descriptor"
    );

    sandbox.hypervisor().pause_sandbox().await.expect("pause");
    sandbox.hypervisor().resume_sandbox().await.expect("resume");
    assert_eq!(sh(sandbox.agent(), "echo resumed").await, "resumed");

    sandbox.shutdown().await.expect("clean shutdown");
    assert!(!support::alive(qemu), "qemu {qemu} still runs");
    assert_eq!(
        processes_of(uid),
        Vec::<u32>::new(),
        "processes of uid {uid} left"
    );
    assert_eq!(
        support::entries(storage.path()),
        Vec::<std::path::PathBuf>::new(),
        "VM files left"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    assert!(
        !passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string())),
        "a user for uid {uid} exists"
    );
}
