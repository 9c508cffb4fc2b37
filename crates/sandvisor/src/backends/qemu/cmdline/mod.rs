//! QEMU's command line as a pure function of the validated config, the
//! cold-plugged devices and the VM's paths.
//!
//! [`build`] opens nothing, binds nothing and reads no file: everything it
//! needs from the host (the resolved accelerator, the host's memory, the
//! image's size, whether vhost-net exists) is resolved by the caller and
//! passed in a [`LaunchSpec`]. That keeps it testable with golden argv.
//!
//! The layout follows Kata 1.x (`qemu.go`, `qemu_arch_base.go`,
//! `qemu_amd64.go`) with these differences, each deliberate:
//!
//! - the console is a serial port (`ttyS0`) on a unix socket, not
//!   virtio-console: it works before any module is loaded, so early boot
//!   and panics are visible;
//! - QEMU is supervised, not `-daemonize`d (see [`super::process`]);
//! - `-sandbox on` denies `spawn` as well: QEMU never runs a program,
//!   since a migration's state file is passed to it as a descriptor
//!   (`getfd`, an `fd:` URI) and taps are opened by sandvisor;
//! - the guest memory of a VM that needs shared memory (virtio-fs,
//!   vhost-user) and has no `file_mem_backend` is a `memory-backend-memfd`,
//!   which leaves no file behind, instead of a file in `/dev/shm`.

mod boot;
mod devices;
mod machine;
mod memory;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::HypervisorConfig;
use crate::device::Device;
use crate::param::serialize_params;

pub use self::boot::kernel_params;
use self::boot::ImageMode;
use self::machine::Transport;
pub use self::machine::{bridge_addr, bridge_id, Accelerator, MachineType, TCG_CPU_MODEL};
pub use self::memory::{
    hotplug_memory_knobs, max_memory_mib, memory_knobs, MemoryBackend, MemoryKnobs,
};

/// The QEMU id of the SCSI controller.
pub const SCSI_CONTROLLER_ID: &str = "scsi0";
/// The bus that SCSI disks go on.
pub const SCSI_BUS: &str = "scsi0.0";
/// The QEMU id of the virtio-mem device.
pub const VIRTIO_MEM_ID: &str = "virtiomem0";
/// The id of the guest RAM backend, when the RAM has one.
pub const RAM_BACKEND_ID: &str = "ram0";
/// Prefix of the ids of PCIe root ports.
pub const ROOT_PORT_PREFIX: &str = "rp";
/// The first PCI address of bridges on the root bus; 0 and 1 belong to the
/// platform on x86.
pub const BRIDGE_PCI_START_ADDR: u32 = 2;
/// The longest QEMU block node name.
pub const MAX_DEV_ID_LEN: usize = 31;
/// The lowest fd number a child inherits extra descriptors at.
pub const FIRST_INHERITED_FD: i32 = 3;

/// Errors from building the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// A machine type sandvisor does not drive.
    #[error("unsupported machine_type {0:?}: expected q35, pc or microvm")]
    UnsupportedMachine(String),
    /// `accel = "auto"` reached the builder unresolved.
    #[error(
        "accelerator \"auto\" must be resolved to kvm or tcg before building the command line"
    )]
    UnresolvedAccel,
    /// The config lacks a kernel.
    #[error("missing kernel path (key `kernel`)")]
    MissingKernel,
    /// An NVDIMM image without its size.
    #[error("the size of image {0:?} is needed to map it as an NVDIMM")]
    MissingImageSize(PathBuf),
    /// A file system device while `shared_fs = "none"`.
    #[error(
        "shared directory {tag:?} needs shared_fs = \"virtio-9p\" or \"virtio-fs\", not \"none\""
    )]
    SharedFsDisabled {
        /// The mount tag.
        tag: String,
    },
    /// virtio-fs DAX, which QEMU 7.2 does not have.
    #[error("virtio_fs_cache_size = {0} asks for a virtio-fs DAX window, which this QEMU lacks (vhost-user-fs-pci has no cache-size); set it to 0")]
    VirtioFsDax(u32),
    /// A drive without a file, id or format.
    #[error("block drive {id:?} needs a file, an id and a format")]
    IncompleteDrive {
        /// The drive id.
        id: String,
    },
    /// vhost-user without the memory it needs.
    #[error("vhost-user storage (enable_vhost_user_store) needs enable_hugepages = true")]
    VhostUserWithoutHugepages,
    /// A template VM with memory that templates cannot use.
    #[error("VM templates cannot be combined with virtio-fs, a hybrid vsock (vhost-device-vsock) or file_mem_backend: templates need private memory for the clones")]
    TemplateWithSharedMemory,
}

/// Paths inside the VM directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The VM directory, `<storage>/<id>`.
    pub dir: PathBuf,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Serial console socket.
    pub console: PathBuf,
    /// virtiofsd's vhost-user socket.
    pub virtiofs: PathBuf,
    /// QEMU's stdout and stderr.
    pub qemu_log: PathBuf,
    /// virtiofsd's stdout and stderr.
    pub virtiofsd_log: PathBuf,
    /// vhost-device-vsock's vhost-user socket, QEMU's chardev for a hybrid
    /// vsock.
    pub vsock_vhost_user: PathBuf,
    /// vhost-device-vsock's hybrid vsock socket, where the host reaches
    /// the agent.
    pub hvsock: PathBuf,
    /// vhost-device-vsock's stdout and stderr.
    pub vsock_daemon_log: PathBuf,
    /// A copy of the console output, kept when debugging.
    pub console_log: PathBuf,
}

impl VmPaths {
    /// File name of the QMP socket.
    pub const QMP: &'static str = "qmp.sock";
    /// File name of the console socket.
    pub const CONSOLE: &'static str = "console.sock";
    /// File name of virtiofsd's socket.
    pub const VIRTIOFS: &'static str = "vhost-fs.sock";
    /// File name of vhost-device-vsock's vhost-user socket.
    pub const VSOCK_VHOST_USER: &'static str = "vhost-user-vsock.sock";
    /// File name of the hybrid vsock socket.
    pub const HVSOCK: &'static str = "hvsock.sock";

    /// The paths of VM `id` under `storage`.
    pub fn new(storage: &Path, id: &str) -> Self {
        let dir = storage.join(id);
        VmPaths {
            qmp: dir.join(Self::QMP),
            console: dir.join(Self::CONSOLE),
            virtiofs: dir.join(Self::VIRTIOFS),
            qemu_log: dir.join("qemu.log"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            vsock_vhost_user: dir.join(Self::VSOCK_VHOST_USER),
            hvsock: dir.join(Self::HVSOCK),
            vsock_daemon_log: dir.join("vhost-device-vsock.log"),
            console_log: dir.join("console.log"),
            dir,
        }
    }
}

/// Everything [`build`] needs, resolved.
#[derive(Debug, Clone, Copy)]
pub struct LaunchSpec<'a> {
    /// The validated config.
    pub config: &'a HypervisorConfig,
    /// The sandbox id.
    pub id: &'a str,
    /// The VM's UUID.
    pub uuid: &'a str,
    /// KVM or TCG.
    pub accel: Accelerator,
    /// The host's memory in MiB; bounds `maxmem` as in Kata.
    pub host_memory_mib: u64,
    /// The VM's paths.
    pub paths: &'a VmPaths,
    /// Devices added before start, in order.
    pub devices: &'a [Device],
    /// The size in bytes of the image, when there is one.
    pub image_size: Option<u64>,
    /// Whether `/dev/vhost-net` can be used.
    pub vhost_net: bool,
    /// QEMU runs rootless and inherits its VM directory at this
    /// descriptor: the command line names the VM's files through
    /// `/proc/self/fd/<n>/` (see [`super::rootless`]); the caller passes
    /// the descriptor.
    pub vm_dir_fd: Option<i32>,
}

/// What to execute: a program, its arguments and the descriptors it
/// inherits at fixed numbers.
#[derive(Debug, Clone)]
pub struct QemuCommand {
    /// The QEMU binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Descriptors to pass: the open file and the number the child sees.
    pub fds: Vec<(Arc<OwnedFd>, i32)>,
}

/// Escapes `,` in a QEMU option value by doubling it.
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_opt(path: &Path) -> String {
    escape_opt(&path.to_string_lossy())
}

/// Truncates `id` to QEMU's block node-name limit.
pub fn truncate_id(id: &str) -> String {
    id.chars().take(MAX_DEV_ID_LEN).collect()
}

/// SCSI id and LUN of the drive at `index`, as Kata's `GetSCSIIdLun`.
pub fn scsi_id_lun(index: u32) -> (u32, u32) {
    (index / 256, index % 256)
}

/// Descriptors QEMU inherits: the open file and the number the child sees.
type InheritedFds = Vec<(Arc<OwnedFd>, i32)>;

#[derive(Debug, Default)]
struct Args(Vec<String>);

impl Plan<'_> {
    /// `path` as QEMU names it: inside the VM directory, through the
    /// inherited descriptor when rootless.
    fn qemu_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.spec.paths.dir) {
            Ok(rest) if self.spec.vm_dir_fd.is_some() => self.paths.dir.join(rest),
            _ => path.to_path_buf(),
        }
    }
}

impl Args {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn push2(&mut self, opt: &str, value: impl Into<String>) {
        self.0.push(opt.to_string());
        self.0.push(value.into());
    }
    fn extend(&mut self, other: Args) {
        self.0.extend(other.0);
    }
}

/// What [`build`] derives once from its [`LaunchSpec`] and each part of
/// the command line reads.
struct Plan<'a> {
    spec: &'a LaunchSpec<'a>,
    /// The VM's paths as QEMU names them: `spec.paths`, or their view
    /// through the inherited VM directory when rootless.
    paths: VmPaths,
    machine: MachineType,
    transport: Transport,
    image: Option<ImageMode>,
    knobs: MemoryKnobs,
    iothread: Option<&'static str>,
    /// `,iommu_platform=on` or nothing, appended to virtio devices.
    iommu_platform: &'static str,
}

/// Builds the QEMU command line.
///
/// The parts come in a fixed order: identity, machine and CPU, QMP,
/// memory, vCPUs, PCI topology, console, boot image, storage controller,
/// cold-plugged devices, virtio-mem, entropy, platform flags, kernel, and
/// last the config's own `hypervisor_params`.
///
/// # Errors
/// See [`CmdlineError`].
pub fn build(spec: &LaunchSpec<'_>) -> Result<QemuCommand, CmdlineError> {
    build_for(
        spec,
        MachineType::parse(&spec.config.hypervisor_machine_type)?,
    )
}

/// [`build`] for a `machine` the caller parsed already, from the same
/// config: the backend's [`super::QemuSpec`].
///
/// # Errors
/// See [`CmdlineError`].
pub fn build_for(spec: &LaunchSpec<'_>, machine: MachineType) -> Result<QemuCommand, CmdlineError> {
    let c = spec.config;
    let image = boot::image_mode(c, machine);
    let knobs = memory_knobs(c, spec.devices)?;
    let kernel = c
        .asset_path(crate::assets::AssetType::Kernel)
        .ok_or(CmdlineError::MissingKernel)?;
    let paths = match spec.vm_dir_fd {
        Some(fd) => VmPaths::new(Path::new("/proc/self/fd"), &fd.to_string()),
        None => spec.paths.clone(),
    };
    let plan = Plan {
        spec,
        paths,
        machine,
        transport: machine.transport(),
        image,
        knobs,
        iothread: devices::iothread_id(c),
        iommu_platform: if c.iommu_platform {
            ",iommu_platform=on"
        } else {
            ""
        },
    };

    let mut a = Args::default();
    a.push2("-name", format!("sandbox-{}", spec.id));
    a.push2("-uuid", spec.uuid);
    a.extend(machine::machine(&plan));
    a.extend(machine::cpu(&plan));
    a.push2(
        "-qmp",
        format!("unix:{},server=on,wait=off", path_opt(&plan.paths.qmp)),
    );
    a.extend(memory::boot_memory(&plan));
    a.extend(machine::smp(&plan));
    a.extend(devices::iothread(&plan));
    a.extend(machine::pci_topology(&plan));
    a.extend(devices::console(&plan));
    a.extend(boot::image(&plan)?);
    a.extend(devices::scsi_controller(&plan));
    let (cold, fds) = devices::cold_plugged(&plan)?;
    a.extend(cold);
    a.extend(memory::virtio_mem(&plan)?);
    a.extend(devices::rng(&plan));
    a.extend(machine::platform(&plan));
    a.extend(boot::kernel(&plan, kernel));
    a.0.extend(serialize_params(&c.hypervisor_params, ""));

    let program = c
        .asset_path(crate::assets::AssetType::Hypervisor)
        .map_or_else(
            || PathBuf::from("/usr/bin/qemu-system-x86_64"),
            Path::to_path_buf,
        );
    Ok(QemuCommand {
        program,
        args: a.0,
        fds,
    })
}
