//! Golden `vm.create` bodies. Each config's JSON lives in
//! `testdata/<name>.json`; `SANDVISOR_BLESS=1` rewrites them after a
//! deliberate change (then read the diff).

use std::path::{Path, PathBuf};

use super::*;
use crate::device::{HybridVsock, SharedFsVolume, UnixSocket};

const HOST_MIB: u64 = 4096;

fn base() -> HypervisorConfig {
    let mut c = HypervisorConfig {
        kernel_path: Some("/a/vmlinux".into()),
        initrd_path: Some("/a/initrd.img".into()),
        num_vcpus: 1,
        default_max_vcpus: 2,
        memory_size: 512,
        ..HypervisorConfig::default()
    };
    c.validate().expect("valid");
    c
}

fn paths() -> VmPaths {
    VmPaths::new(Path::new("/run/sv/vm"), "vm1")
}

fn vsock() -> Device {
    Device::HybridVsock(HybridVsock {
        uds_path: paths().vsock,
        context_id: 3,
        port: 1024,
    })
}

fn json(config: &HypervisorConfig, devices: &[Device]) -> String {
    let p = paths();
    let vm = build(&VmSpec {
        config,
        devices,
        paths: &p,
        host_memory_mib: HOST_MIB,
    })
    .expect("builds");
    let mut s = serde_json::to_string_pretty(&vm).expect("serialises");
    s.push('\n');
    s
}

fn golden(name: &str, actual: &str) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "src/backends/clh/testdata",
        &format!("{name}.json"),
    ]
    .iter()
    .collect();
    if std::env::var_os("SANDVISOR_BLESS").is_some() {
        std::fs::write(&path, actual).expect("writes the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SANDVISOR_BLESS=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name}: differs from {}", path.display());
}

#[test]
fn initrd_boot() {
    golden("initrd_boot", &json(&base(), &[vsock()]));
}

#[test]
fn image_boot_on_pmem_or_a_read_only_disk() {
    let mut c = base();
    c.initrd_path = None;
    c.image_path = Some("/a/rootfs.img".into());
    c.debug = true;
    golden("image_pmem", &json(&c, &[vsock()]));
    c.disable_image_nvdimm = true;
    golden("image_disk", &json(&c, &[vsock()]));
}

#[test]
fn virtio_fs_shares_memory() {
    let mut c = base();
    c.shared_fs = SharedFs::VirtioFs;
    c.virtio_fs_daemon = Some("/usr/lib/qemu/virtiofsd".into());
    let share = Device::Fs(SharedFsVolume {
        mount_tag: "kataShared".into(),
        host_path: "/run/share".into(),
    });
    golden("virtio_fs", &json(&c, &[vsock(), share.clone()]));
    let vm = build(&VmSpec {
        config: &c,
        devices: &[share.clone(), share],
        paths: &paths(),
        host_memory_mib: HOST_MIB,
    });
    assert_eq!(
        vm,
        Err(VmConfigError::SecondVirtioFs {
            tag: "kataShared".into()
        })
    );
}

#[test]
fn hotplug_size_or_virtio_mem() {
    let mut c = base();
    c.mem_slots = 10;
    golden("hotplug_acpi", &json(&c, &[vsock()]));
    c.virtio_mem = true;
    golden("hotplug_virtio_mem", &json(&c, &[vsock()]));
    c.mem_slots = 0;
    c.virtio_mem = false;
    let vm: serde_json::Value = serde_json::from_str(&json(&c, &[])).expect("json");
    assert_eq!(
        vm["memory"],
        serde_json::json!({"size": 512u64 << 20, "shared": false, "hugepages": false})
    );
}

#[test]
fn hotplug_room_is_the_host_less_boot_memory_in_acpi_steps() {
    let mut c = base();
    assert_eq!(hotplug_room_mib(&c, HOST_MIB), 0, "no slots, no virtio-mem");
    c.mem_slots = 1;
    assert_eq!(hotplug_room_mib(&c, 4096), 3584);
    assert_eq!(hotplug_room_mib(&c, 4000), 3456, "rounded down to 128 MiB");
    assert_eq!(hotplug_room_mib(&c, 256), 0, "host smaller than the VM");
}

#[test]
fn net_tap_and_vfio_and_disks() {
    let mut c = base();
    c.iommu = true;
    c.block_device_cache_direct = true;
    let devices = [
        vsock(),
        Device::Net(NetDevice {
            id: "eth0".into(),
            tap_name: "tap0_kata".into(),
            mac: "02:00:00:00:00:01".into(),
            queues: 2,
        }),
        Device::Vfio(VfioDevice {
            id: String::new(),
            bdf: "0000:3b:00.0".into(),
            sysfs_dev: PathBuf::new(),
        }),
        Device::Block(BlockDrive {
            file: "/data/disk.qcow2".into(),
            format: "qcow2".into(),
            index: 3,
            ..BlockDrive::default()
        }),
    ];
    golden("net_vfio_disk", &json(&c, &devices));
}

#[test]
fn devices_ch_cannot_take_are_refused() {
    let c = base();
    let p = paths();
    let try_one = |d: Device| {
        build(&VmSpec {
            config: &c,
            devices: &[d],
            paths: &p,
            host_memory_mib: HOST_MIB,
        })
    };
    let serial = try_one(Device::SerialPort(UnixSocket::default()));
    assert!(
        matches!(&serial, Err(VmConfigError::UnsupportedDevice { kind, .. }) if kind == "serial-port"),
        "{serial:?}"
    );
    let ninep = try_one(Device::Fs(SharedFsVolume {
        mount_tag: "t".into(),
        host_path: "/s".into(),
    }));
    assert_eq!(ninep, Err(VmConfigError::NoNineP { tag: "t".into() }));
    let odd = try_one(Device::Block(BlockDrive {
        file: "/d".into(),
        format: "vmdk".into(),
        ..BlockDrive::default()
    }));
    assert!(
        matches!(&odd, Err(VmConfigError::DiskFormat { format, .. }) if format == "vmdk"),
        "{odd:?}"
    );
    assert!(matches!(
        try_one(Device::Cpu(1)),
        Err(VmConfigError::UnsupportedDevice { .. })
    ));
}

#[test]
fn no_vsock_device_no_vsock() {
    let vm: serde_json::Value = serde_json::from_str(&json(&base(), &[])).expect("json");
    assert!(vm.get("vsock").is_none());
    assert_eq!(vm["serial"]["socket"], "/run/sv/vm/vm1/console.sock");
}

#[test]
fn user_kernel_params_come_last() {
    let mut c = base();
    c.kernel_params = vec![Param::new("console", "hvc0"), Param::new("quiet", "")];
    let p = kernel_params(&c);
    let s = serialize_params(&p, "=");
    assert_eq!(&s[s.len() - 2..], ["console=hvc0", "quiet"]);
    assert!(s.contains(&"agent.use_vsock=true".to_string()));
    assert!(s.contains(&"nr_cpus=2".to_string()));
}

#[test]
fn ignored_keys_are_named() {
    assert!(ignored_keys(&base()).is_empty());
    let c = HypervisorConfig {
        hypervisor_machine_type: "q35".into(),
        firmware_path: Some("/usr/share/qemu/qboot.rom".into()),
        pcie_root_port: 2,
        accel: Accel::Tcg,
        ..base()
    };
    assert_eq!(
        ignored_keys(&c),
        ["machine_type", "firmware", "pcie_root_port", "accel"]
    );
}

#[test]
fn paths_sit_in_the_vm_directory() {
    let p = paths();
    assert_eq!(p.api, Path::new("/run/sv/vm/vm1/clh-api.sock"));
    assert_eq!(p.vsock, Path::new("/run/sv/vm/vm1/clh.sock"));
    assert_eq!(p.snapshot, Path::new("/run/sv/vm/vm1/snapshot"));
}

#[test]
fn a_template_s_memory_is_one_shared_zone_on_its_file() {
    let mut c = base();
    c.boot_to_be_template = true;
    c.memory_path = Some("/run/vc/vm/template/memory".into());
    c.devices_state_path = Some("/run/vc/vm/template/state".into());
    golden("template", &json(&c, &[vsock()]));
    let vm = build(&VmSpec {
        config: &c,
        devices: &[],
        paths: &paths(),
        host_memory_mib: HOST_MIB,
    })
    .expect("builds");
    assert_eq!(vm.memory.size, 0, "memory is the zone's");
    assert_eq!(vm.memory.zones.len(), 1);
    let zone = &vm.memory.zones[0];
    assert_eq!(zone.size, 512 << 20);
    assert!(zone.shared && vm.memory.shared);
    assert_eq!(zone.file.as_deref(), c.memory_path.as_deref());
    // Without a memory path there is no template file: plain memory.
    c.memory_path = None;
    assert!(memory(&c, HOST_MIB).zones.is_empty());
}

#[test]
fn a_clone_s_saved_config_maps_the_template_private_on_its_own_sockets() {
    let saved = r#"{"cpus":{"boot_vcpus":1},"memory":{"size":0,"shared":true,"mergeable":false,
        "zones":[{"id":"template","size":536870912,"file":"/t/memory","shared":true,"reserve":false}]},
        "serial":{"mode":"Socket","socket":"/run/sv/tpl/console.sock"},
        "vsock":{"cid":3,"socket":"/run/sv/tpl/clh.sock","iommu":false},
        "platform":{"num_pci_segments":1}}"#;
    let clone = VmPaths::new(Path::new("/run/sv"), "clone1");
    let out = template_restore_config(saved, &clone).expect("patches");
    assert_eq!(
        out,
        r#"{"cpus":{"boot_vcpus":1},"memory":{"mergeable":false,"shared":false,"size":0,"zones":[{"file":"/t/memory","id":"template","reserve":false,"shared":false,"size":536870912}]},"platform":{"num_pci_segments":1},"serial":{"mode":"Socket","socket":"/run/sv/clone1/console.sock"},"vsock":{"cid":3,"iommu":false,"socket":"/run/sv/clone1/clh.sock"}}"#
    );
    let e = template_restore_config(r#"{"cpus":{}}"#, &clone).expect_err("no memory");
    assert!(e.to_string().contains("\"memory\""), "{e}");
    assert!(template_restore_config("not json", &clone).is_err());
}
