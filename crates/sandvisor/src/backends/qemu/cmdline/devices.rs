//! Devices: the serial console, the SCSI controller, the cold-plugged
//! devices by kind (agent channels, vsock, shared directories, NICs,
//! drives, VFIO, vhost-user) and the entropy source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    escape_opt, path_opt, scsi_id_lun, truncate_id, Args, CmdlineError, InheritedFds, Plan,
    Transport, VmPaths, FIRST_INHERITED_FD, SCSI_BUS, SCSI_CONTROLLER_ID,
};
use crate::config::{BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::device::{
    BlockDrive, Device, NetDevice, SharedFsVolume, UnixSocket, UserNetwork, VSock, VfioDevice,
    VhostUserDevice, VhostUserKind,
};

/// The I/O thread virtio-scsi runs on, when the config asks for one.
pub(super) fn iothread_id(c: &HypervisorConfig) -> Option<&'static str> {
    (c.enable_io_threads && c.block_driver() == BlockDeviceDriver::VirtioScsi)
        .then_some("iothread0")
}

/// The I/O thread object.
pub(super) fn iothread(p: &Plan<'_>) -> Args {
    let mut a = Args::default();
    if let Some(t) = p.iothread {
        a.push2("-object", format!("iothread,id={t}"));
    }
    a
}

/// The serial console on a unix socket, logged to a file when debugging.
pub(super) fn console(p: &Plan<'_>) -> Args {
    let mut a = Args::default();
    let mut console = format!(
        "socket,id=charconsole0,path={},server=on,wait=off",
        path_opt(&p.paths.console)
    );
    if p.spec.config.debug {
        console.push_str(&format!(",logfile={}", path_opt(&p.paths.console_log)));
    }
    a.push2("-chardev", console);
    a.push2("-serial", "chardev:charconsole0");
    a
}

/// The virtio-scsi controller, when drives go on SCSI.
pub(super) fn scsi_controller(p: &Plan<'_>) -> Args {
    let mut a = Args::default();
    if p.spec.config.block_driver() == BlockDeviceDriver::VirtioScsi {
        let mut s = format!(
            "{},id={SCSI_CONTROLLER_ID}",
            p.transport.driver("virtio-scsi")
        );
        if let Some(t) = p.iothread {
            s.push_str(&format!(",iothread={t}"));
        }
        s.push_str(p.iommu_platform);
        a.push2("-device", s);
    }
    a
}

/// The devices added before start, in order, and the descriptors they
/// pass to QEMU.
///
/// # Errors
/// A device QEMU cannot take or that the config does not allow.
pub(super) fn cold_plugged(p: &Plan<'_>) -> Result<(Args, InheritedFds), CmdlineError> {
    let c = p.spec.config;
    let transport = p.transport;
    let mut a = Args::default();
    let mut fds = InheritedFds::new();
    let has_serial_port = p
        .spec
        .devices
        .iter()
        .any(|d| matches!(d, Device::SerialPort(_)));
    if has_serial_port {
        a.push2(
            "-device",
            format!(
                "{},id=serial0{}",
                transport.driver("virtio-serial"),
                p.iommu_platform
            ),
        );
    }
    let mut net_index = 0u32;
    for dev in p.spec.devices {
        match dev {
            Device::SerialPort(s) => serial_port(&mut a, s, &p.qemu_path(&s.host_path)),
            Device::VsockPci(v) => {
                let fd = FIRST_INHERITED_FD
                    + i32::try_from(fds.len()).expect("a VM has far fewer than 2^31 descriptors");
                fds.push((Arc::clone(&v.vhost_fd), fd));
                vsock(&mut a, transport, v, fd);
            }
            Device::Fs(v) => shared_fs(&mut a, transport, c, &p.paths, v)?,
            Device::Net(n) => {
                net(&mut a, transport, n, net_index, p.spec.vhost_net);
                net_index += 1;
            }
            Device::Block(d) => block(&mut a, transport, c, d)?,
            Device::Vfio(v) => vfio(&mut a, v),
            Device::VhostUser(v) => vhost_user(&mut a, transport, v),
            // The image comes from the config, not as a device.
            Device::Image(d) => block(&mut a, transport, c, d)?,
            Device::HybridVsock(_) => hybrid_vsock(&mut a, transport, &p.paths),
            Device::UserNet(u) => {
                user_net(&mut a, transport, u, net_index);
                net_index += 1;
            }
            // vCPUs and memory are sized by -smp and -m.
            Device::Cpu(_) | Device::Memory(_) => {}
        }
    }
    Ok((a, fds))
}

/// The entropy source and its virtio-rng device.
pub(super) fn rng(p: &Plan<'_>) -> Args {
    let mut a = Args::default();
    let entropy = p
        .spec
        .config
        .entropy_source
        .clone()
        .unwrap_or_else(|| PathBuf::from("/dev/urandom"));
    a.push2(
        "-object",
        format!("rng-random,id=rng0,filename={}", path_opt(&entropy)),
    );
    a.push2(
        "-device",
        format!(
            "{},rng=rng0{}",
            p.transport.driver("virtio-rng"),
            p.iommu_platform
        ),
    );
    a
}

fn serial_port(a: &mut Args, s: &UnixSocket, host_path: &Path) {
    let chardev = truncate_id(&s.id);
    a.push2(
        "-chardev",
        format!(
            "socket,id={chardev},path={},server=on,wait=off",
            path_opt(host_path)
        ),
    );
    a.push2(
        "-device",
        format!(
            "virtserialport,bus=serial0.0,chardev={chardev},id={},name={}",
            s.device_id, s.name
        ),
    );
}

fn vsock(a: &mut Args, t: Transport, v: &VSock, fd: i32) {
    a.push2(
        "-device",
        format!(
            "{},id=vsock-{cid},guest-cid={cid},vhostfd={fd}",
            t.driver("vhost-vsock"),
            cid = v.context_id
        ),
    );
}

/// vhost-user-vsock, served by vhost-device-vsock on the VM's
/// [`VmPaths::vsock_vhost_user`]. The chardev is a client without
/// `reconnect`: the device needs the daemon during realize (QEMU 7.2 fails
/// with reconnect), so the daemon is started first.
fn hybrid_vsock(a: &mut Args, t: Transport, paths: &VmPaths) {
    a.push2(
        "-chardev",
        format!(
            "socket,id=charvsock0,path={}",
            path_opt(&paths.vsock_vhost_user)
        ),
    );
    a.push2(
        "-device",
        format!(
            "{},id=vsock0,chardev=charvsock0",
            t.driver("vhost-user-vsock")
        ),
    );
}

fn shared_fs(
    a: &mut Args,
    t: Transport,
    c: &HypervisorConfig,
    paths: &VmPaths,
    v: &SharedFsVolume,
) -> Result<(), CmdlineError> {
    match c.shared_fs {
        SharedFs::None => Err(CmdlineError::SharedFsDisabled {
            tag: v.mount_tag.clone(),
        }),
        SharedFs::VirtioFs | SharedFs::VirtioFsNydus => {
            if c.virtio_fs_cache_size > 0 {
                return Err(CmdlineError::VirtioFsDax(c.virtio_fs_cache_size));
            }
            a.push2(
                "-chardev",
                format!("socket,id=char-virtiofs,path={}", path_opt(&paths.virtiofs)),
            );
            a.push2(
                "-device",
                format!(
                    "{},chardev=char-virtiofs,tag={}",
                    t.driver("vhost-user-fs"),
                    escape_opt(&v.mount_tag)
                ),
            );
            Ok(())
        }
        SharedFs::Virtio9p => {
            let id = truncate_id(&format!("extra-9p-{}", v.mount_tag));
            a.push2(
                "-fsdev",
                format!(
                    "local,id={id},path={},security_model=none,multidevs=remap",
                    path_opt(&v.host_path)
                ),
            );
            a.push2(
                "-device",
                format!(
                    "{},fsdev={id},mount_tag={}",
                    t.driver("virtio-9p"),
                    escape_opt(&v.mount_tag)
                ),
            );
            Ok(())
        }
    }
}

fn net(a: &mut Args, t: Transport, n: &NetDevice, index: u32, vhost: bool) {
    let netdev = format!("network-{index}");
    let mut nd = format!(
        "tap,id={netdev},ifname={},script=no,downscript=no",
        escape_opt(&n.tap_name)
    );
    if vhost {
        nd.push_str(",vhost=on");
    }
    if n.queues > 1 {
        nd.push_str(&format!(",queues={}", n.queues));
    }
    a.push2("-netdev", nd);
    let mut dev = format!(
        "{},netdev={netdev},mac={},id=virtio-{}",
        t.driver("virtio-net"),
        n.mac,
        truncate_id(&n.id)
    );
    if n.queues > 1 && t == Transport::Pci {
        dev.push_str(&format!(",mq=on,vectors={}", 2 * n.queues + 2));
    }
    a.push2("-device", dev);
}

/// A NIC on QEMU's slirp stack: no IPv6 (slirp's default prefix is a
/// site-local one), the address plan from the device, and one `hostfwd`
/// per forwarded port, to the guest's fixed address.
fn user_net(a: &mut Args, t: Transport, u: &UserNetwork, index: u32) {
    let netdev = format!("network-{index}");
    let mut nd = format!(
        "user,id={netdev},ipv6=off,net={}/{},host={},dhcpstart={},dns={}",
        u.network, u.prefix_len, u.gateway, u.guest, u.dns
    );
    for f in &u.forwards {
        nd.push_str(&format!(
            ",hostfwd=tcp:{}:{}-{}:{}",
            f.host_addr, f.host_port, u.guest, f.guest_port
        ));
    }
    a.push2("-netdev", nd);
    a.push2(
        "-device",
        format!(
            "{},netdev={netdev},mac={},id=virtio-{}",
            t.driver("virtio-net"),
            u.mac,
            truncate_id(&u.id)
        ),
    );
}

fn drive_cache(c: &HypervisorConfig) -> String {
    if !c.block_device_cache_set {
        return String::new();
    }
    let on = |b: bool| if b { "on" } else { "off" };
    format!(
        ",cache.direct={},cache.no-flush={}",
        on(c.block_device_cache_direct),
        on(c.block_device_cache_noflush)
    )
}

fn block(
    a: &mut Args,
    t: Transport,
    c: &HypervisorConfig,
    d: &BlockDrive,
) -> Result<(), CmdlineError> {
    if d.file.as_os_str().is_empty() || d.id.is_empty() || d.format.is_empty() {
        return Err(CmdlineError::IncompleteDrive { id: d.id.clone() });
    }
    let id = truncate_id(&d.id);
    let mut drive = format!(
        "id={id},file={},aio=threads,format={},if=none",
        path_opt(&d.file),
        escape_opt(&d.format)
    );
    if d.read_only {
        drive.push_str(",readonly=on");
    }
    drive.push_str(&drive_cache(c));
    a.push2("-drive", drive);
    let dev = match c.block_driver() {
        BlockDeviceDriver::VirtioScsi => {
            let (scsi_id, lun) = scsi_id_lun(d.index);
            format!("scsi-hd,bus={SCSI_BUS},drive={id},id=virtio-{id},scsi-id={scsi_id},lun={lun}")
        }
        BlockDeviceDriver::VirtioBlockCcw => format!("virtio-blk-ccw,drive={id},id=virtio-{id}"),
        BlockDeviceDriver::VirtioBlock
        | BlockDeviceDriver::VirtioMmio
        | BlockDeviceDriver::Nvdimm => {
            format!("{},drive={id},id=virtio-{id}", t.driver("virtio-blk"))
        }
    };
    a.push2("-device", dev);
    Ok(())
}

fn vfio(a: &mut Args, v: &VfioDevice) {
    let id = truncate_id(&v.id);
    if v.bdf.is_empty() {
        a.push2(
            "-device",
            format!("vfio-pci,sysfsdev={},id={id}", path_opt(&v.sysfs_dev)),
        );
    } else {
        a.push2("-device", format!("vfio-pci,host={},id={id}", v.bdf));
    }
}

fn vhost_user(a: &mut Args, t: Transport, v: &VhostUserDevice) {
    let id = truncate_id(&v.id);
    let chardev = truncate_id(&format!("char-{}", v.id));
    a.push2(
        "-chardev",
        format!("socket,id={chardev},path={}", path_opt(&v.socket_path)),
    );
    match v.kind {
        VhostUserKind::Net => {
            let netdev = truncate_id(&format!("net-{}", v.id));
            a.push2(
                "-netdev",
                format!("type=vhost-user,id={netdev},chardev={chardev},vhostforce=on"),
            );
            a.push2(
                "-device",
                format!(
                    "{},netdev={netdev},mac={},id={id}",
                    t.driver("virtio-net"),
                    v.mac
                ),
            );
        }
        VhostUserKind::Blk => a.push2(
            "-device",
            format!("{},chardev={chardev},id={id}", t.driver("vhost-user-blk")),
        ),
        VhostUserKind::Scsi => a.push2(
            "-device",
            format!("{},chardev={chardev},id={id}", t.driver("vhost-user-scsi")),
        ),
        VhostUserKind::Fs => a.push2(
            "-device",
            format!(
                "{},chardev={chardev},tag={},id={id}",
                t.driver("vhost-user-fs"),
                escape_opt(&v.tag)
            ),
        ),
    }
}
