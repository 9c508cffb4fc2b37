//! The ACRN backend against stand-in `acrn-dm` and `acrnctl` scripts.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::config::HypervisorConfig;

const START: Duration = Duration::from_secs(10);

/// A tempdir with stand-in binaries, a fake ACRN device and a pool file.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("acrn_hsm"), "").expect("fake device");
        let h = Host { dir };
        // acrn-dm: records its argv, makes its console socket (the argument
        // after `console0=`), stays until signalled (as a shell, so that its
        // command line keeps the VM name).
        h.script(
            "acrn-dm",
            &format!(
                "echo \"$@\" >> {rec}\n\
                 for a in \"$@\"; do case \"$a\" in *console0=*) : > \"${{a#*console0=}}\";; esac; done\n\
                 trap 'kill $!; exit 0' TERM\n\
                 sleep 600 & wait\n",
                rec = h.path("dm.argv").display()
            ),
        );
        h.ctl(0, "");
        h
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("writes script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// acrnctl: records its argv, writes `stderr`, exits with `code`.
    fn ctl(&self, code: i32, stderr: &str) {
        self.script(
            "acrnctl",
            &format!(
                "echo \"$@\" >> {rec}\necho '{stderr}' >&2\nexit {code}\n",
                rec = self.path("ctl.argv").display()
            ),
        );
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn options(&self) -> AcrnOptions {
        AcrnOptions {
            pool_file: self.path("uuids.json"),
            devices: vec![self.path("acrn_hsm")],
            placeholders: 2,
            ..AcrnOptions::default()
        }
    }

    fn acrn(&self) -> Acrn {
        Acrn::with_options(self.path("vm"), self.options())
    }

    fn config(&self) -> HypervisorConfig {
        HypervisorConfig {
            kernel_path: Some(self.path("vmlinux")),
            image_path: Some(self.path("rootfs.img")),
            hypervisor_path: Some(self.path("acrn-dm")),
            hypervisor_ctl_path: Some(self.path("acrnctl")),
            memory_size: 512,
            default_max_vcpus: 2,
            ..HypervisorConfig::default()
        }
    }
}

async fn created(h: &Host, id: &str) -> Acrn {
    let mut a = h.acrn();
    a.create_sandbox(id, &NetworkNamespace::default(), &h.config(), false)
        .await
        .expect("creates");
    a
}

#[tokio::test]
async fn create_start_stop_records_the_argv_and_frees_the_uuid() {
    let h = Host::new();
    let mut a = created(&h, "s1").await;
    let uuid = a.uuid().expect("has a uuid").to_string();
    assert_eq!(uuid, uuid::KATA_UUIDS[0]);
    a.start_sandbox(START).await.expect("starts");
    let pid = a.pids()[0];
    let held = a.pool.holders().expect("reads");
    assert_eq!(held[&uuid].owner.pid, pid, "acrn-dm holds the UUID");
    a.check().await.expect("alive");
    let vm = h.path("vm").join("s1");
    let want = format!(
        "-U {uuid} -A -m 512M -s 0:0,hostbridge -s 1:0,lpc -l com1,stdio \
         -s 3,virtio-console,@socket:console0={vm}/console.sock \
         -s 4,virtio-blk,{img} -s 5,virtio-blk,nodisk -s 6,virtio-blk,nodisk \
         -k {k} -B tsc=reliable no_timer_check nohpet console=hvc0 console=hvc1 quiet panic=1 maxcpus=2 \
         root=/dev/vda1 rw rootwait sandbox-s1",
        vm = vm.display(),
        img = h.path("rootfs.img").display(),
        k = h.path("vmlinux").display(),
    );
    assert_eq!(h.lines("dm.argv"), [want]);
    a.pause_sandbox().await.expect("pauses");
    a.resume_sandbox().await.expect("resumes");
    assert_eq!(
        h.lines("ctl.argv"),
        ["pause sandbox-s1", "resume sandbox-s1"]
    );
    a.stop_sandbox().await.expect("stops");
    assert!(!crate::process::pid_alive(pid));
    assert!(a.pool.holders().expect("reads").is_empty());
    a.cleanup().await.expect("cleans up");
    assert!(!vm.exists());
}

#[tokio::test]
async fn eight_parallel_creates_get_eight_uuids_and_the_ninth_an_error() {
    let h = Host::new();
    let creates = (0..8).map(|i| {
        let mut a = h.acrn();
        let c = h.config();
        async move {
            a.create_sandbox(&format!("p{i}"), &NetworkNamespace::default(), &c, false)
                .await
                .map(|()| a)
        }
    });
    let mut vms: Vec<Acrn> = futures_join(creates).await;
    let uuids: std::collections::BTreeSet<String> = vms
        .iter()
        .map(|a| a.uuid().expect("uuid").to_string())
        .collect();
    assert_eq!(uuids.len(), 8);
    let mut ninth = h.acrn();
    let e = ninth
        .create_sandbox("p8", &NetworkNamespace::default(), &h.config(), false)
        .await
        .expect_err("no UUID left");
    assert!(matches!(
        e.backend_source::<AcrnError>(),
        Some(AcrnError::NoFreeUuid { pool: 8 })
    ));
    assert!(
        std::error::Error::source(&e)
            .expect("has a source")
            .to_string()
            .contains("no free ACRN UUID"),
        "{e}"
    );
    // A stop gives one back.
    vms[0].start_sandbox(START).await.expect("starts");
    vms[0].stop_sandbox().await.expect("stops");
    vms[0].cleanup().await.expect("cleans up");
    let mut again = created(&h, "p9").await;
    // So does a killed acrn-dm.
    again.start_sandbox(START).await.expect("starts");
    let dm = again.dm.take().expect("runs");
    dm.kill();
    dm.wait(START).await.expect("dies");
    // The pool was full again until acrn-dm died.
    let mut last = created(&h, "p10").await;
    assert_eq!(last.uuid(), again.uuid());
    last.cleanup().await.expect("cleans up");
    for a in &mut vms[1..] {
        a.cleanup().await.expect("cleans up");
    }
    assert!(last.pool.holders().expect("reads").is_empty());
}

/// Runs futures one after another on this task but started together, so
/// their pool accesses interleave with the blocking-pool threads.
async fn futures_join<F, T>(fs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("joins").expect("creates"));
    }
    out
}

#[tokio::test]
async fn block_hotplug_rescans_placeholders_and_surfaces_acrnctl_errors() {
    let h = Host::new();
    let mut a = created(&h, "hp").await;
    a.start_sandbox(START).await.expect("starts");
    let drive = |index: u32, id: &str| BlockDrive {
        file: PathBuf::from(format!("/d/{id}.img")),
        id: id.into(),
        index,
        ..BlockDrive::default()
    };
    let r = a
        .hotplug_add_device(Device::Block(drive(2, "b")))
        .await
        .expect("plugs");
    let HotplugResult::Attached(Some(d)) = r else {
        panic!("no drive back: {r:?}");
    };
    assert_eq!(d.virt_path.as_deref(), Some("/dev/vdc"));
    // The last placeholder's index is in bounds; one more is not.
    let e = a
        .hotplug_add_device(Device::Block(drive(3, "c")))
        .await
        .expect_err("no placeholder");
    assert!(matches!(
        e.backend_source::<AcrnError>(),
        Some(AcrnError::NoPlaceholder {
            index: 3,
            placeholders: 2
        })
    ));
    a.hotplug_remove_device(Device::Block(drive(2, "b")))
        .await
        .expect("unplugs");
    assert_eq!(
        h.lines("ctl.argv"),
        [
            "blkrescan sandbox-hp 6,/d/b.img",
            "blkrescan sandbox-hp 6,nodisk"
        ]
    );
    h.ctl(3, "blkrescan: no such VM");
    let e = a
        .hotplug_add_device(Device::Block(drive(1, "a")))
        .await
        .expect_err("acrnctl fails");
    let Some(AcrnError::Ctl { status, stderr, .. }) = e.backend_source::<AcrnError>() else {
        panic!("not an acrnctl error: {e:?}");
    };
    assert_eq!(status, "exit status 3");
    assert_eq!(stderr, "blkrescan: no such VM");
    a.stop_sandbox().await.expect("stops");
    a.cleanup().await.expect("cleans up");
}

#[tokio::test]
async fn what_acrn_cannot_do_is_a_typed_error() {
    let h = Host::new();
    let mut a = created(&h, "t").await;
    let refused = [
        Device::Fs(Default::default()),
        Device::Vfio(Default::default()),
        Device::VhostUser(Default::default()),
        Device::HybridVsock(Default::default()),
        Device::Cpu(1),
        Device::Memory(Default::default()),
        Device::Net(NetDevice {
            queues: 4,
            ..NetDevice::default()
        }),
    ];
    for d in refused {
        let e = a.add_device(d.clone()).await.expect_err("refused");
        assert!(e.is_unsupported(), "{d:?}: {e}");
    }
    a.add_device(Device::Net(NetDevice::default()))
        .await
        .expect("a single-queue interface is fine");
    assert!(a
        .save_sandbox()
        .await
        .expect_err("no save")
        .is_unsupported());
    assert!(a
        .resize_vcpus(2)
        .await
        .expect_err("no vcpus")
        .is_unsupported());
    assert!(a
        .resize_memory(1024, 128, false)
        .await
        .expect_err("no memory")
        .is_unsupported());
    assert!(a.to_grpc().await.expect_err("no cache").is_unsupported());
    assert!(a
        .generate_socket("t", true)
        .expect_err("no vsock")
        .is_unsupported());
    let c = a.capabilities();
    assert!(c.block_device_hotplug && c.pause && c.reattach);
    assert!(!c.net_hotplug && !c.cpu_hotplug && !c.memory_hotplug && !c.save && !c.vfio);
    a.cleanup().await.expect("cleans up");
    assert!(a.pool.holders().expect("reads").is_empty());
}

#[tokio::test]
async fn without_an_acrn_device_create_names_it() {
    let h = Host::new();
    let mut a = Acrn::with_options(
        h.path("vm"),
        AcrnOptions {
            devices: vec![h.path("no_hsm"), h.path("no_vhm")],
            ..h.options()
        },
    );
    let e = a
        .create_sandbox("n", &NetworkNamespace::default(), &h.config(), false)
        .await
        .expect_err("no ACRN");
    let src = std::error::Error::source(&e)
        .expect("has a source")
        .to_string();
    assert!(src.contains("no ACRN hypervisor"), "{src}");
    assert!(
        src.contains(&h.path("no_hsm").display().to_string()),
        "{src}"
    );
    assert!(a.pool.holders().expect("reads").is_empty());
}

#[tokio::test]
async fn a_saved_vm_is_re_attached() {
    let h = Host::new();
    let mut a = created(&h, "r").await;
    a.start_sandbox(START).await.expect("starts");
    let saved = a.save();
    assert_ne!(saved.vmm_start_time, 0);
    a.disconnect().await;
    drop(a);
    let mut b = h.acrn();
    b.load(saved.clone()).await.expect("re-attaches");
    assert_eq!(b.pids(), [saved.pid]);
    assert_eq!(b.uuid(), Some(saved.uuid.as_str()));
    b.check().await.expect("alive");
    b.stop_sandbox().await.expect("stops");
    b.cleanup().await.expect("cleans up");
    let mut c = h.acrn();
    assert!(c.load(saved).await.is_err(), "the process is gone");
}

#[test]
fn service_vm_finds_either_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vhm = dir.path().join("acrn_vhm");
    std::fs::write(&vhm, "").expect("writes");
    let devices = [dir.path().join("acrn_hsm"), vhm.clone()];
    let found = service_vm(&devices).expect("found");
    assert_eq!(found, vhm.as_path());
    let e = service_vm(&[dir.path().join("x")]).expect_err("none");
    assert!(e.to_string().starts_with("no ACRN hypervisor"), "{e}");
}
