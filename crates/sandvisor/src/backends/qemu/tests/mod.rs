//! Golden command lines, without a VM; the backend's state rules are in
//! [`state`].

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cmdline::{self, Accelerator, LaunchSpec, VmPaths};
use super::*;
use crate::config::{Accel, BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::device::{BlockDrive, NetDevice, SharedFsVolume, UnixSocket, VSock, VfioDevice};
use crate::param::Param;

const UUID: &str = "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94";
const HOST_MIB: u64 = 16384;

fn base() -> HypervisorConfig {
    let mut c = HypervisorConfig {
        kernel_path: Some("/k/vmlinuz".into()),
        initrd_path: Some("/k/initrd.img".into()),
        hypervisor_path: Some("/usr/bin/qemu-system-x86_64".into()),
        memory_size: 512,
        default_max_vcpus: 4,
        mem_slots: 2,
        ..HypervisorConfig::default()
    };
    c.validate().expect("valid");
    c
}

fn paths() -> VmPaths {
    VmPaths::new(Path::new("/run/sv"), "vm1")
}

fn agent() -> Device {
    Device::SerialPort(UnixSocket {
        device_id: "channel0".into(),
        id: "charch0".into(),
        host_path: "/run/sv/vm1/kata.sock".into(),
        name: "agent.channel.0".into(),
    })
}

fn argv(
    c: &HypervisorConfig,
    accel: Accelerator,
    devices: &[Device],
    image: Option<u64>,
) -> Vec<String> {
    let p = paths();
    let spec = LaunchSpec {
        config: c,
        id: "vm1",
        uuid: UUID,
        accel,
        host_memory_mib: HOST_MIB,
        paths: &p,
        devices,
        image_size: image,
        vhost_net: false,
        vm_dir_fd: None,
    };
    cmdline::build(&spec).expect("builds").args
}

fn dev_null() -> Arc<std::os::fd::OwnedFd> {
    Arc::new(std::fs::File::open("/dev/null").expect("/dev/null").into())
}

fn drive(id: &str, index: u32) -> BlockDrive {
    BlockDrive {
        file: PathBuf::from(format!("/dev/disk/{id}")),
        format: "raw".into(),
        id: id.into(),
        index,
        ..BlockDrive::default()
    }
}

fn pc_kvm_image() -> (HypervisorConfig, Vec<Device>) {
    let mut c = base();
    c.initrd_path = None;
    c.image_path = Some("/k/root,1.img".into());
    c.hypervisor_machine_type = "pc".into();
    c.block_device_driver = Some(BlockDeviceDriver::VirtioBlock);
    c.default_bridges = 2;
    c.debug = true;
    c.cpu_features = "pmu=off".into();
    c.machine_accelerators = ",kernel_irqchip=on".into();
    c.entropy_source = Some("/dev/random".into());
    c.mem_prealloc = true;
    c.use_vsock = true;
    c.kernel_params = vec![Param::new("agent.log", "debug")];
    c.shared_fs = SharedFs::Virtio9p;
    let devices = vec![
        Device::VsockPci(VSock {
            vhost_fd: dev_null(),
            context_id: 42,
            port: 1024,
        }),
        Device::Fs(SharedFsVolume {
            mount_tag: "kataShared".into(),
            host_path: "/run/share".into(),
        }),
        Device::Net(NetDevice {
            id: "eth0".into(),
            tap_name: "tap0_kata".into(),
            mac: "02:00:ca:fe:00:01".into(),
            queues: 2,
        }),
        Device::Block(BlockDrive {
            read_only: true,
            ..drive("rootfs", 0)
        }),
        Device::Vfio(VfioDevice {
            id: "vfio0".into(),
            bdf: "0000:03:00.0".into(),
            sysfs_dev: PathBuf::new(),
        }),
    ];
    (c, devices)
}

fn microvm() -> HypervisorConfig {
    let mut c = base();
    c.hypervisor_machine_type = "microvm".into();
    c.block_device_driver = Some(BlockDeviceDriver::VirtioBlock);
    c
}

fn template(from: bool) -> HypervisorConfig {
    let mut c = base();
    c.memory_path = Some("/run/tpl/memory".into());
    c.devices_state_path = Some("/run/tpl/state".into());
    c.boot_to_be_template = !from;
    c.boot_from_template = from;
    c
}

fn virtio_fs() -> (HypervisorConfig, Vec<Device>) {
    let mut c = base();
    c.shared_fs = SharedFs::VirtioFs;
    c.virtio_fs_daemon = Some("/usr/libexec/virtiofsd".into());
    c.pcie_root_port = 2;
    c.iommu = true;
    c.enable_io_threads = true;
    c.block_device_cache_set = true;
    c.block_device_cache_direct = true;
    c.virtio_mem = true;
    let devices = vec![
        agent(),
        Device::Fs(SharedFsVolume {
            mount_tag: "kataShared".into(),
            host_path: "/run/share".into(),
        }),
        Device::Block(drive("d2", 258)),
    ];
    (c, devices)
}

// Golden command lines. Each was read line by line against QEMU 7.2's
// documentation and Kata 1.x's; the ones QEMU can run here (TCG) are also
// booted by tests/vm_qemu_configs.rs. Update them only with that review.

const Q35_TCG: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "q35,accel=tcg",
    "-cpu",
    "max,-erms,-fsrm",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-device",
    "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-scsi-pci,id=scsi0",
    "-device",
    "virtio-serial-pci,id=serial0",
    "-chardev",
    "socket,id=charch0,path=/run/sv/vm1/kata.sock,server=on,wait=off",
    "-device",
    "virtserialport,bus=serial0.0,chardev=charch0,id=channel0,name=agent.channel.0",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=false",
];

const PC_KVM_IMAGE: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "pc,accel=kvm,kernel_irqchip=on,nvdimm=on,memory-backend=ram0",
    "-cpu",
    "host,pmu=off",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-object",
    "memory-backend-ram,id=ram0,size=512M,prealloc=on",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-device",
    "pci-bridge,bus=pci.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-device",
    "pci-bridge,bus=pci.0,id=pci-bridge-1,chassis_nr=2,shpc=on,addr=3",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off,logfile=/run/sv/vm1/console.log",
    "-serial",
    "chardev:charconsole0",
    "-object",
    "memory-backend-file,id=mem0,mem-path=/k/root,,1.img,size=314572800,readonly=on",
    "-device",
    "nvdimm,id=nv0,memdev=mem0,unarmed=on",
    "-device",
    "vhost-vsock-pci,id=vsock-42,guest-cid=42,vhostfd=3",
    "-fsdev",
    "local,id=extra-9p-kataShared,path=/run/share,security_model=none,multidevs=remap",
    "-device",
    "virtio-9p-pci,fsdev=extra-9p-kataShared,mount_tag=kataShared",
    "-netdev",
    "tap,id=network-0,ifname=tap0_kata,script=no,downscript=no,queues=2",
    "-device",
    "virtio-net-pci,netdev=network-0,mac=02:00:ca:fe:00:01,id=virtio-eth0,mq=on,vectors=6",
    "-drive",
    "id=rootfs,file=/dev/disk/rootfs,aio=threads,format=raw,if=none,readonly=on",
    "-device",
    "virtio-blk-pci,drive=rootfs,id=virtio-rootfs",
    "-device",
    "vfio-pci,host=0000:03:00.0,id=vfio0",
    "-object",
    "rng-random,id=rng0,filename=/dev/random",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-global",
    "kvm-pit.lost_tick_policy=discard",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 iommu=off root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4 debug systemd.show_status=true panic=1 nr_cpus=4 agent.use_vsock=true agent.log=debug",
];

const MICROVM_TCG: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "microvm,accel=tcg",
    "-cpu",
    "max,-erms,-fsrm",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-serial-device,id=serial0",
    "-chardev",
    "socket,id=charch0,path=/run/sv/vm1/kata.sock,server=on,wait=off",
    "-device",
    "virtserialport,bus=serial0.0,chardev=charch0,id=channel0,name=agent.channel.0",
    "-drive",
    "id=d1,file=/dev/disk/d1,aio=threads,format=raw,if=none",
    "-device",
    "virtio-blk-device,drive=d1,id=virtio-d1",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-device,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=false",
];

const TEMPLATE_TO_BE_KVM: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "q35,accel=kvm,kernel_irqchip=on,memory-backend=ram0",
    "-cpu",
    "host,vmx=off",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-object",
    "memory-backend-file,id=ram0,size=512M,mem-path=/run/tpl/memory,share=on",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-device",
    "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-scsi-pci,id=scsi0",
    "-device",
    "virtio-serial-pci,id=serial0",
    "-chardev",
    "socket,id=charch0,path=/run/sv/vm1/kata.sock,server=on,wait=off",
    "-device",
    "virtserialport,bus=serial0.0,chardev=charch0,id=channel0,name=agent.channel.0",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-global",
    "kvm-pit.lost_tick_policy=discard",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=false",
];

const TEMPLATE_FROM_TCG: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "q35,accel=tcg,memory-backend=ram0",
    "-cpu",
    "max,-erms,-fsrm",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-object",
    "memory-backend-file,id=ram0,size=512M,mem-path=/run/tpl/memory,share=off",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-device",
    "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-scsi-pci,id=scsi0",
    "-device",
    "virtio-serial-pci,id=serial0",
    "-chardev",
    "socket,id=charch0,path=/run/sv/vm1/kata.sock,server=on,wait=off",
    "-device",
    "virtserialport,bus=serial0.0,chardev=charch0,id=channel0,name=agent.channel.0",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-incoming",
    "defer",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=false",
];

const VIRTIO_FS_Q35_TCG: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "q35,accel=tcg,memory-backend=ram0",
    "-cpu",
    "max,-erms,-fsrm",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-object",
    "memory-backend-memfd,id=ram0,size=512M,share=on",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-object",
    "iothread,id=iothread0",
    "-device",
    "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on",
    "-device",
    "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-device",
    "pcie-root-port,id=rp0,bus=pcie.0,chassis=0,slot=0,multifunction=off",
    "-device",
    "pcie-root-port,id=rp1,bus=pcie.0,chassis=0,slot=1,multifunction=off",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-scsi-pci,id=scsi0,iothread=iothread0",
    "-device",
    "virtio-serial-pci,id=serial0",
    "-chardev",
    "socket,id=charch0,path=/run/sv/vm1/kata.sock,server=on,wait=off",
    "-device",
    "virtserialport,bus=serial0.0,chardev=charch0,id=channel0,name=agent.channel.0",
    "-chardev",
    "socket,id=char-virtiofs,path=/run/sv/vm1/vhost-fs.sock",
    "-device",
    "vhost-user-fs-pci,chardev=char-virtiofs,tag=kataShared",
    "-drive",
    "id=d2,file=/dev/disk/d2,aio=threads,format=raw,if=none,cache.direct=on,cache.no-flush=off",
    "-device",
    "scsi-hd,bus=scsi0.0,drive=d2,id=virtio-d2,scsi-id=1,lun=2",
    "-object",
    "memory-backend-memfd,id=virtiomem-mem,size=15872M,share=on",
    "-device",
    "virtio-mem-pci,id=virtiomem0,memdev=virtiomem-mem,requested-size=0",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 intel_iommu=on iommu=pt quiet panic=1 nr_cpus=4 agent.use_vsock=false",
];

#[test]
fn q35_tcg_with_the_agent_channel() {
    assert_eq!(argv(&base(), Accelerator::Tcg, &[agent()], None), Q35_TCG);
}

#[test]
fn pc_kvm_with_an_nvdimm_image_and_every_cold_device() {
    let (c, d) = pc_kvm_image();
    assert_eq!(
        argv(&c, Accelerator::Kvm, &d, Some(300 << 20)),
        PC_KVM_IMAGE
    );
}

#[test]
fn microvm_uses_virtio_mmio_and_no_hotplug_room() {
    assert_eq!(
        argv(
            &microvm(),
            Accelerator::Tcg,
            &[agent(), Device::Block(drive("d1", 1))],
            None
        ),
        MICROVM_TCG
    );
}

#[test]
fn templates_share_memory_one_way_and_restore_the_other() {
    assert_eq!(
        argv(&template(false), Accelerator::Kvm, &[agent()], None),
        TEMPLATE_TO_BE_KVM
    );
    assert_eq!(
        argv(&template(true), Accelerator::Tcg, &[agent()], None),
        TEMPLATE_FROM_TCG
    );
}

#[test]
fn virtio_fs_iommu_iothreads_root_ports_and_virtio_mem() {
    let (c, d) = virtio_fs();
    assert_eq!(argv(&c, Accelerator::Tcg, &d, None), VIRTIO_FS_Q35_TCG);
}

#[test]
fn vsock_descriptors_are_passed_at_fixed_numbers() {
    let fd = dev_null();
    let devices = [Device::VsockPci(VSock {
        vhost_fd: Arc::clone(&fd),
        context_id: 7,
        port: 1024,
    })];
    let p = paths();
    let c = base();
    let cmd = cmdline::build(&LaunchSpec {
        config: &c,
        id: "vm1",
        uuid: UUID,
        accel: Accelerator::Tcg,
        host_memory_mib: HOST_MIB,
        paths: &p,
        devices: &devices,
        image_size: None,
        vhost_net: true,
        vm_dir_fd: None,
    })
    .expect("builds");
    assert_eq!(cmd.fds.len(), 1);
    assert!(Arc::ptr_eq(&cmd.fds[0].0, &fd));
    assert_eq!(cmd.fds[0].1, 3);
    assert!(cmd
        .args
        .contains(&"vhost-vsock-pci,id=vsock-7,guest-cid=7,vhostfd=3".to_string()));
    assert_eq!(cmd.program, PathBuf::from("/usr/bin/qemu-system-x86_64"));
}

#[test]
fn vhost_net_is_used_when_present() {
    let d = [Device::Net(NetDevice {
        id: "eth0".into(),
        tap_name: "tap0".into(),
        mac: "02:00:00:00:00:01".into(),
        queues: 1,
    })];
    let p = paths();
    let c = base();
    let cmd = cmdline::build(&LaunchSpec {
        config: &c,
        id: "vm1",
        uuid: UUID,
        accel: Accelerator::Tcg,
        host_memory_mib: HOST_MIB,
        paths: &p,
        devices: &d,
        image_size: None,
        vhost_net: true,
        vm_dir_fd: None,
    })
    .expect("builds");
    assert!(cmd
        .args
        .contains(&"tap,id=network-0,ifname=tap0,script=no,downscript=no,vhost=on".to_string()));
}

fn hybrid_vsock() -> (HypervisorConfig, Vec<Device>) {
    let mut c = base();
    c.use_vsock = true;
    c.vhost_user_vsock_daemon = Some("/usr/local/bin/vhost-device-vsock".into());
    let devices = vec![Device::HybridVsock(crate::device::HybridVsock {
        uds_path: "/run/sv/vm1/hvsock.sock".into(),
        context_id: 3,
        port: 1024,
    })];
    (c, devices)
}

/// Q35_TCG with a hybrid vsock: no virtio-serial, guest RAM on a shared
/// memfd (vhost-device-vsock maps the rings), and the vhost-user-vsock
/// device on a client chardev to the daemon's socket. Booted by
/// crates/sandvisor-cli/tests/vm_vsock.rs.
const Q35_TCG_HYBRID_VSOCK: &[&str] = &[
    "-name",
    "sandbox-vm1",
    "-uuid",
    "6b9e2a8c-1f0d-4c3e-9a7b-2d5f8e1c0a94",
    "-machine",
    "q35,accel=tcg,memory-backend=ram0",
    "-cpu",
    "max,-erms,-fsrm",
    "-qmp",
    "unix:/run/sv/vm1/qmp.sock,server=on,wait=off",
    "-m",
    "512M,slots=2,maxmem=17408M",
    "-object",
    "memory-backend-memfd,id=ram0,size=512M,share=on",
    "-smp",
    "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-device",
    "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2",
    "-chardev",
    "socket,id=charconsole0,path=/run/sv/vm1/console.sock,server=on,wait=off",
    "-serial",
    "chardev:charconsole0",
    "-device",
    "virtio-scsi-pci,id=scsi0",
    "-chardev",
    "socket,id=charvsock0,path=/run/sv/vm1/vhost-user-vsock.sock",
    "-device",
    "vhost-user-vsock-pci,id=vsock0,chardev=charvsock0",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=rng0",
    "-rtc",
    "base=utc,driftfix=slew,clock=host",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "--no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.img",
    "-append",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k console=ttyS0 cryptomgr.notests net.ifnames=0 pci=lastbus=0 iommu=off quiet panic=1 nr_cpus=4 agent.use_vsock=true",
];

#[test]
fn golden_hybrid_vsock() {
    let (c, d) = hybrid_vsock();
    assert_eq!(argv(&c, Accelerator::Tcg, &d, None), Q35_TCG_HYBRID_VSOCK);
}

#[test]
fn a_hybrid_vsock_always_gets_shared_memory() {
    let (base, d) = hybrid_vsock();
    let mut huge = base.clone();
    huge.huge_pages = true;
    let mut file = base.clone();
    file.file_backed_mem_root_dir = Some("/dev/shm".into());
    let mut prealloc = base.clone();
    prealloc.mem_prealloc = true;
    for c in [base, huge, file, prealloc] {
        let knobs = cmdline::memory_knobs(&c, &d).expect("knobs");
        assert!(knobs.share, "{knobs:?}");
        let args = argv(&c, Accelerator::Tcg, &d, None);
        let backend = args
            .iter()
            .find(|a| a.starts_with("memory-backend-"))
            .unwrap_or_else(|| panic!("no memory backend in {args:?}"));
        assert!(backend.contains("share=on"), "{backend}");
        assert!(
            args.iter().any(|a| a.contains("memory-backend=ram0")),
            "{args:?}"
        );
    }
    // The config alone asks for it, before any device is added.
    let (c, _) = hybrid_vsock();
    assert!(cmdline::memory_knobs(&c, &[]).expect("knobs").share);
}

#[tokio::test]
async fn a_hybrid_vsock_sandbox_gets_a_hybrid_socket_and_says_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Qemu::with_storage(dir.path());
    let (c, _) = hybrid_vsock();
    q.create_sandbox("s1", &NetworkNamespace::default(), &c, false)
        .await
        .expect("created");
    let socket = q.generate_socket("s1", true).expect("hybrid socket");
    let AgentSocket::HybridVsock(h) = &socket else {
        panic!("expected a hybrid vsock, got {socket:?}");
    };
    assert_eq!(h.uds_path, dir.path().join("s1").join("hvsock.sock"));
    assert_eq!((h.context_id, h.port), (3, 1024));
    let caps = q.capabilities();
    assert!(caps.hybrid_vsock && caps.pause && caps.reattach);
    assert!(!caps.save && !caps.vm_template, "{caps:?}");
    // QEMU holds the agent connection's copy, but only once it runs.
    assert!(caps.holds_agent_connection, "{caps:?}");
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let early = q.hold_agent_connection(ours.as_fd()).await;
    assert!(
        matches!(early, Err(Error::InvalidState { .. })),
        "{early:?}"
    );
    q.add_device(socket.clone().into_device())
        .await
        .expect("the hybrid vsock is a device");
    let second = q.add_device(socket.into_device()).await;
    assert!(
        matches!(second, Err(Error::Unsupported { .. })),
        "{second:?}"
    );
    // Without the daemon in the config, no hybrid vsock.
    let mut plain = Qemu::with_storage(dir.path());
    plain
        .create_sandbox("s2", &NetworkNamespace::default(), &base(), false)
        .await
        .expect("created");
    assert!(!plain.capabilities().hybrid_vsock);
    assert!(!plain.capabilities().holds_agent_connection);
    let held = plain.hold_agent_connection(ours.as_fd()).await;
    assert!(matches!(held, Err(Error::Unsupported { .. })), "{held:?}");
    let r = plain
        .add_device(Device::HybridVsock(crate::device::HybridVsock::default()))
        .await;
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
}

#[tokio::test]
async fn a_hybrid_vsock_vm_cannot_be_saved() {
    let mut q = Qemu::with_storage("/tmp/svs");
    let (mut c, _) = hybrid_vsock();
    c.devices_state_path = Some("/tmp/svs/state".into());
    q.config = c.clone();
    q.spec = Some(QemuSpec::new(&c).expect("spec"));
    q.state = VmState::Running;
    let err = q.save_sandbox().await.expect_err("refused");
    let Error::Unsupported { op, reason, .. } = &err else {
        panic!("expected Unsupported, got {err:?}");
    };
    assert_eq!(*op, "save_sandbox");
    assert!(reason.contains("vhost-user-vsock"), "{reason}");
    // Refused before anything happened: still running.
    assert_eq!(q.state(), VmState::Running);
}

mod state;

#[test]
fn user_networking_is_slirp_on_the_link_local_plan_with_loopback_forwards() {
    use crate::device::{PortForward, UserNetwork};
    let net = Device::UserNet(UserNetwork {
        id: "usernet0".into(),
        mac: "02:5a:00:00:64:02".into(),
        network: "169.254.100.0".parse().expect("address"),
        prefix_len: 24,
        gateway: "169.254.100.1".parse().expect("address"),
        guest: "169.254.100.2".parse().expect("address"),
        dns: "169.254.100.3".parse().expect("address"),
        forwards: vec![
            PortForward {
                host_addr: "127.0.0.1".parse().expect("address"),
                host_port: 18080,
                guest_port: 80,
            },
            PortForward {
                host_addr: "127.0.0.1".parse().expect("address"),
                host_port: 2222,
                guest_port: 22,
            },
        ],
    });
    let a = argv(&base(), Accelerator::Tcg, &[agent(), net], None);
    let netdev = a
        .windows(2)
        .find(|w| w[0] == "-netdev")
        .map(|w| w[1].as_str());
    assert_eq!(
        netdev,
        Some(
            "user,id=network-0,ipv6=off,net=169.254.100.0/24,host=169.254.100.1,\
             dhcpstart=169.254.100.2,dns=169.254.100.3,\
             hostfwd=tcp:127.0.0.1:18080-169.254.100.2:80,\
             hostfwd=tcp:127.0.0.1:2222-169.254.100.2:22"
        )
    );
    assert!(a.contains(
        &"virtio-net-pci,netdev=network-0,mac=02:5a:00:00:64:02,id=virtio-usernet0".to_string()
    ));
}

/// A rootless QEMU gets the same command line, with every file of its VM
/// directory named through the directory's inherited descriptor; paths
/// outside that directory (kernel, initrd) stay as they are.
#[test]
fn golden_rootless_names_the_vm_directory_through_its_descriptor() {
    let (c, mut d) = hybrid_vsock();
    d.push(agent());
    let p = paths();
    let build = |vm_dir_fd| {
        cmdline::build(&LaunchSpec {
            config: &c,
            id: "vm1",
            uuid: UUID,
            accel: Accelerator::Tcg,
            host_memory_mib: HOST_MIB,
            paths: &p,
            devices: &d,
            image_size: None,
            vhost_net: false,
            vm_dir_fd,
        })
        .expect("builds")
        .args
    };
    let root = build(None);
    let rootless = build(Some(crate::backends::qemu::rootless::VM_DIR_FD));
    let want: Vec<String> = root
        .iter()
        .map(|a| a.replace("/run/sv/vm1/", "/proc/self/fd/64/"))
        .collect();
    assert_eq!(rootless, want);
    assert!(
        rootless
            .iter()
            .any(|a| a == "unix:/proc/self/fd/64/qmp.sock,server=on,wait=off"),
        "{rootless:?}"
    );
    assert!(
        rootless
            .iter()
            .any(|a| a.contains("path=/proc/self/fd/64/kata.sock,")),
        "{rootless:?}"
    );
    assert!(
        rootless.iter().all(|a| !a.contains("/run/sv/vm1")),
        "{rootless:?}"
    );
    assert!(rootless.iter().any(|a| a == "/k/vmlinuz"), "{rootless:?}");
}
