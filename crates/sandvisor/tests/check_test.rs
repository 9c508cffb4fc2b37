//! `sandvisor check` on fixture hosts: KVM usable or not, PVM, accel
//! choices, the VMM binary, guest assets and config errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandvisor::check::{run_check, CheckOptions, CheckReport, HostPaths};
use sandvisor::config::kata::{parse_config, KataConfigError, RuntimeConfig};
use sandvisor::config::vocabulary::HostFacts;
use sandvisor::config::{Accel, HypervisorConfig};
use sandvisor::HypervisorType;

const FLAGS_VMX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx lm\n";
const FLAGS_NO_VIRT: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\n";

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// A host whose KVM device exists, with the given CPU flags, PVM or not.
    fn new(cpuinfo: &str, pvm: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("kvm"), "").expect("kvm");
        std::fs::write(d.join("cpuinfo"), cpuinfo).expect("cpuinfo");
        std::fs::write(d.join("meminfo"), "MemTotal: 4194304 kB\n").expect("meminfo");
        std::fs::create_dir_all(d.join("module")).expect("module");
        if pvm {
            std::fs::create_dir_all(d.join("module/kvm_pvm")).expect("kvm_pvm");
        }
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(d.join(f), f).expect("asset");
        }
        Host { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self) -> CheckOptions {
        CheckOptions {
            paths: HostPaths {
                dev_kvm: self.path("kvm"),
                dev_vhost_vsock: self.path("vhost-vsock"),
                cpuinfo: self.path("cpuinfo"),
                meminfo: self.path("meminfo"),
                sys_module: self.path("module"),
                acrn_devices: vec![self.path("acrn_hsm")],
            },
            vmm_timeout: Duration::from_secs(10),
        }
    }

    /// A QEMU config whose assets exist; `echo` stands in for the VMM.
    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            hypervisor: HypervisorType::Qemu,
            config: HypervisorConfig {
                kernel_path: Some(self.path("vmlinuz")),
                initrd_path: Some(self.path("initrd.img")),
                hypervisor_path: Some(PathBuf::from("/bin/echo")),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

fn item<'a>(report: &'a CheckReport, name: &str) -> &'a sandvisor::check::CheckItem {
    report
        .items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no {name} item in {report:#?}"))
}

#[tokio::test]
async fn kvm_usable_host_uses_kvm() {
    let host = Host::new(FLAGS_VMX, false);
    let report = run_check(Ok(host.config()), &host.options()).await;
    assert!(report.kvm.usable());
    assert_eq!(report.accel, Some(Accel::Kvm));
    assert_eq!(report.accel_conclusion, "KVM usable");
    assert!(report.startable, "{}", report.to_text());
    assert!(report.to_text().contains("ok  accel        KVM usable"));
    assert_eq!(report.running_on_vmm, Some(false));
    assert_eq!(report.mem_total_kb, Some(4_194_304));
}

#[tokio::test]
async fn pvm_host_falls_back_to_tcg() {
    let host = Host::new(FLAGS_NO_VIRT, true);
    let report = run_check(Ok(host.config()), &host.options()).await;
    assert!(!report.kvm.usable());
    assert!(report.kvm.pvm);
    assert_eq!(report.accel, Some(Accel::Tcg));
    assert!(
        report
            .accel_conclusion
            .starts_with("KVM cannot run stock guests here (")
            && report.accel_conclusion.ends_with("); TCG will be used"),
        "{}",
        report.accel_conclusion
    );
    assert!(report.accel_conclusion.contains("kvm_pvm"));
    assert!(report.startable, "{}", report.to_text());
    assert!(!item(&report, "kvm").ok && !item(&report, "kvm").required);
    assert_eq!(report.running_on_vmm, Some(true));
}

#[tokio::test]
async fn accel_kvm_without_usable_kvm_cannot_start() {
    let host = Host::new(FLAGS_NO_VIRT, true);
    let mut rc = host.config();
    rc.config.accel = Accel::Kvm;
    let report = run_check(Ok(rc), &host.options()).await;
    assert_eq!(report.accel, None);
    assert!(!report.startable);
    let accel = item(&report, "accel");
    assert!(accel.blocks());
    assert!(accel
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("accel = \"auto\" or \"tcg\"")));
    assert!(report
        .to_text()
        .ends_with("a sandbox cannot start here: 1 problem above\n"));
}

#[tokio::test]
async fn accel_tcg_on_kvm_host_uses_tcg() {
    let host = Host::new(FLAGS_VMX, false);
    let mut rc = host.config();
    rc.config.accel = Accel::Tcg;
    let report = run_check(Ok(rc), &host.options()).await;
    assert_eq!(report.accel, Some(Accel::Tcg));
    assert!(report.startable);
}

#[tokio::test]
async fn missing_kvm_device_is_reported() {
    let host = Host::new(FLAGS_VMX, false);
    std::fs::remove_file(host.path("kvm")).expect("remove kvm");
    let report = run_check(Ok(host.config()), &host.options()).await;
    assert!(!report.kvm.present);
    assert!(
        report.accel_conclusion.contains("does not exist"),
        "{}",
        report.accel_conclusion
    );
    assert_eq!(report.accel, Some(Accel::Tcg));
}

#[tokio::test]
async fn missing_assets_say_to_build_the_image() {
    let host = Host::new(FLAGS_VMX, false);
    std::fs::remove_file(host.path("vmlinuz")).expect("remove");
    std::fs::remove_file(host.path("initrd.img")).expect("remove");
    let report = run_check(Ok(host.config()), &host.options()).await;
    assert!(!report.startable);
    for name in ["kernel", "initrd"] {
        let i = item(&report, name);
        assert!(i.blocks(), "{name}");
        assert!(
            i.fix
                .as_deref()
                .is_some_and(|f| f.contains("sandvisor image build")),
            "{name}"
        );
    }
    assert!(report.to_text().contains("2 problems above"));
}

#[tokio::test]
async fn vmm_binary_found_missing_failing_or_hanging() {
    let host = Host::new(FLAGS_VMX, false);

    let qemu = host.path("qemu-system-x86_64");
    std::fs::write(
        &qemu,
        "#!/bin/sh\necho 'QEMU emulator version 7.2.0'\necho second line\n",
    )
    .expect("script");
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let hang = host.path("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").expect("script");
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let fail = host.path("fail");
    std::fs::write(&fail, "#!/bin/sh\nexit 3\n").expect("script");
    std::fs::set_permissions(&fail, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let run = |vmm: &Path| {
        let mut rc = host.config();
        rc.config.hypervisor_path = Some(vmm.to_path_buf());
        let mut options = host.options();
        options.vmm_timeout = Duration::from_millis(500);
        async move { run_check(Ok(rc), &options).await }
    };

    let report = run(&qemu).await;
    assert_eq!(
        report.vmm_version.as_deref(),
        Some("QEMU emulator version 7.2.0")
    );
    assert!(report.startable);

    let report = run(&host.path("absent")).await;
    let vmm = item(&report, "vmm");
    assert!(
        vmm.blocks() && vmm.detail.ends_with("is missing"),
        "{vmm:?}"
    );
    assert!(vmm
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("install qemu-system-x86")));

    let report = run(&fail).await;
    assert!(
        item(&report, "vmm").detail.contains("failed"),
        "{report:#?}"
    );

    let started = std::time::Instant::now();
    let report = run(&hang).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout holds"
    );
    assert!(
        item(&report, "vmm").detail.contains("did not answer"),
        "{report:#?}"
    );
    assert!(!report.startable);
}

#[tokio::test]
async fn config_errors_block_and_are_explained() {
    let host = Host::new(FLAGS_VMX, false);
    let loaded: Result<RuntimeConfig, KataConfigError> = parse_config(
        "[hypervisor.qemu]\ndefualt_vcpus = 1\n",
        Path::new("/etc/kata/configuration.toml"),
        None,
        HostFacts { cpus: 2 },
        &sandvisor::config::kata::VsockHost::vhost_vsock(),
    );
    let report = run_check(loaded, &host.options()).await;
    assert!(!report.startable);
    let config = item(&report, "config");
    assert!(config.blocks());
    assert!(
        config.detail.contains("did you mean \"default_vcpus\""),
        "{}",
        config.detail
    );
    assert_eq!(report.hypervisor, None);

    let mut rc = host.config();
    rc.config.memory_size = 64;
    let report = run_check(Ok(rc), &host.options()).await;
    let config = item(&report, "config");
    assert!(
        config.blocks() && config.detail.contains("below the minimum"),
        "{config:?}"
    );
}

#[tokio::test]
async fn acrn_needs_an_acrn_service_vm() {
    let host = Host::new(FLAGS_VMX, false);
    let mut rc = host.config();
    rc.hypervisor = HypervisorType::Acrn;
    rc.config.hypervisor_ctl_path = Some(host.path("acrnctl"));
    let report = run_check(Ok(rc.clone()), &host.options()).await;
    assert!(!item(&report, "backend").blocks());
    let acrn = item(&report, "acrn");
    assert!(
        acrn.blocks() && acrn.detail.contains("no ACRN hypervisor"),
        "{acrn:?}"
    );
    assert!(
        acrn.detail
            .contains(&host.path("acrn_hsm").display().to_string()),
        "{acrn:?}"
    );
    assert!(item(&report, "acrnctl").blocks());
    assert!(!report.startable);

    std::fs::write(host.path("acrn_hsm"), "").expect("fake device");
    std::fs::write(host.path("acrnctl"), "").expect("fake acrnctl");
    let report = run_check(Ok(rc), &host.options()).await;
    assert!(!item(&report, "acrn").blocks());
    assert!(!item(&report, "acrnctl").blocks());
}

#[tokio::test]
async fn firecracker_is_driven_and_its_jailer_is_checked() {
    let host = Host::new(FLAGS_VMX, false);
    let mut rc = host.config();
    rc.hypervisor = HypervisorType::Firecracker;
    rc.config.jailer_path = Some("/nonexistent/jailer".into());
    let report = run_check(Ok(rc), &host.options()).await;
    let backend = item(&report, "backend");
    assert!(!backend.blocks(), "{backend:?}");
    let jailer = item(&report, "jailer_path");
    assert!(
        jailer.blocks() && jailer.detail.contains("/nonexistent/jailer is missing"),
        "{jailer:?}"
    );
    assert!(!report.startable);
}

#[tokio::test]
async fn vsock_is_required_only_when_configured() {
    let host = Host::new(FLAGS_VMX, false);
    let report = run_check(Ok(host.config()), &host.options()).await;
    let vsock = item(&report, "vhost-vsock");
    assert!(!vsock.ok && !vsock.required && vsock.detail.contains("not needed"));
    assert!(!report.vhost_vsock);

    let mut rc = host.config();
    rc.config.use_vsock = true;
    let report = run_check(Ok(rc), &host.options()).await;
    assert!(item(&report, "vhost-vsock").blocks());
    assert!(!report.startable);
}

#[tokio::test]
async fn report_serialises_to_json() {
    let host = Host::new(FLAGS_NO_VIRT, true);
    let report = run_check(Ok(host.config()), &host.options()).await;
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["startable"], true);
    assert_eq!(json["accel"], "tcg");
    assert_eq!(json["kvm"]["pvm"], true);
    assert!(json["items"]
        .as_array()
        .is_some_and(|a| a.len() == report.items.len()));
}

#[tokio::test]
async fn cloud_hypervisor_needs_kvm_that_runs_stock_guests() {
    for (flags, pvm, usable) in [(FLAGS_VMX, false, true), (FLAGS_NO_VIRT, true, false)] {
        let host = Host::new(flags, pvm);
        let mut rc = host.config();
        rc.hypervisor = HypervisorType::Clh;
        rc.config.accel = Accel::Auto;
        let report = run_check(Ok(rc), &host.options()).await;
        let backend = item(&report, "backend");
        assert!(backend.ok, "{backend:?}");
        let accel = item(&report, "accel");
        assert_eq!(accel.ok, usable, "{accel:?}");
        assert!(accel.required);
        if !usable {
            assert!(accel.detail.contains("no TCG"), "{accel:?}");
        }
        let vsock = item(&report, "vhost-vsock");
        assert!(
            !vsock.required,
            "the agent uses the hybrid vsock: {vsock:?}"
        );
        assert!(
            vsock.ok || vsock.detail.contains("hybrid vsock"),
            "{vsock:?}"
        );
    }
}
