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
//! - `-sandbox on` keeps `spawn` allowed, because saving a VM uses an
//!   `exec:` migration URI;
//! - the guest memory of a VM that needs shared memory (virtio-fs,
//!   vhost-user) and has no `file_mem_backend` is a `memory-backend-memfd`,
//!   which leaves no file behind, instead of a file in `/dev/shm`.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Accel, BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::device::{
    BlockDrive, Device, NetDevice, SharedFsVolume, UnixSocket, VSock, VfioDevice, VhostUserDevice,
    VhostUserKind,
};
use crate::param::{self, serialize_params, Param};

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
    #[error("unsupported machine type {0:?}: expected q35, pc or microvm")]
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
    /// A device QEMU cannot take.
    #[error(
        "qemu cannot attach a {0} device; hybrid vsock is for firecracker and cloud hypervisor"
    )]
    UnsupportedDevice(&'static str),
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
    #[error("VM templates cannot be combined with virtio-fs or file_mem_backend: templates need private memory for the clones")]
    TemplateWithSharedMemory,
}

/// The accelerator, resolved: `auto` has become one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// KVM.
    Kvm,
    /// QEMU's TCG emulation.
    Tcg,
}

impl Accelerator {
    /// The resolved form of `accel`.
    ///
    /// # Errors
    /// [`CmdlineError::UnresolvedAccel`] for [`Accel::Auto`].
    pub fn from_resolved(accel: Accel) -> Result<Self, CmdlineError> {
        match accel {
            Accel::Kvm => Ok(Accelerator::Kvm),
            Accel::Tcg => Ok(Accelerator::Tcg),
            Accel::Auto => Err(CmdlineError::UnresolvedAccel),
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// The machine types sandvisor drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineType {
    /// `q35`: PCIe, the default.
    Q35,
    /// `pc`: i440FX and PCI.
    Pc,
    /// `microvm`: no PCI, virtio-mmio, no hot-plug.
    Microvm,
}

impl MachineType {
    /// Parses Kata's `machine_type`; empty means q35.
    ///
    /// # Errors
    /// [`CmdlineError::UnsupportedMachine`] for anything else.
    pub fn parse(name: &str) -> Result<Self, CmdlineError> {
        match name {
            "" | "q35" => Ok(MachineType::Q35),
            "pc" => Ok(MachineType::Pc),
            "microvm" => Ok(MachineType::Microvm),
            other => Err(CmdlineError::UnsupportedMachine(other.to_string())),
        }
    }

    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35",
            MachineType::Pc => "pc",
            MachineType::Microvm => "microvm",
        }
    }

    /// The root PCI bus, if the machine has PCI.
    pub fn root_bus(self) -> Option<&'static str> {
        match self {
            MachineType::Q35 => Some("pcie.0"),
            MachineType::Pc => Some("pci.0"),
            MachineType::Microvm => None,
        }
    }

    /// Whether devices and memory can be hot-plugged (ACPI hot-plug).
    pub fn supports_hotplug(self) -> bool {
        self != MachineType::Microvm
    }

    fn transport(self) -> Transport {
        if self == MachineType::Microvm {
            Transport::Mmio
        } else {
            Transport::Pci
        }
    }
}

/// How virtio devices attach: to PCI, or as virtio-mmio on microvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Pci,
    Mmio,
}

impl Transport {
    /// `virtio-blk` becomes `virtio-blk-pci` or `virtio-blk-device`.
    fn driver(self, base: &str) -> String {
        match self {
            Transport::Pci => format!("{base}-pci"),
            Transport::Mmio => format!("{base}-device"),
        }
    }
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

    /// The paths of VM `id` under `storage`.
    pub fn new(storage: &Path, id: &str) -> Self {
        let dir = storage.join(id);
        VmPaths {
            qmp: dir.join(Self::QMP),
            console: dir.join(Self::CONSOLE),
            virtiofs: dir.join(Self::VIRTIOFS),
            qemu_log: dir.join("qemu.log"),
            virtiofsd_log: dir.join("virtiofsd.log"),
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

/// The `-cpu` model under TCG: every feature TCG emulates, less ERMS and
/// FSRM.
///
/// TCG runs a `rep movsb`/`rep stosb` one element per pass through its
/// translated loop. A guest that sees ERMS clears every page with
/// `rep stosb` (4096 passes) and copies with `rep movsb`; without it, the
/// kernel uses `rep stosq` (512 passes) and unrolled copies. Measured on a
/// Debian 6.1 guest, that takes about 0.25 s off the time to the agent
/// answering. A config's `cpu_features` come after, so `+erms` brings it
/// back. KVM guests get `host`, untouched.
pub const TCG_CPU_MODEL: &str = "max,-erms,-fsrm";

/// Truncates `id` to QEMU's block node-name limit.
pub fn truncate_id(id: &str) -> String {
    id.chars().take(MAX_DEV_ID_LEN).collect()
}

/// SCSI id and LUN of the drive at `index`, as Kata's `GetSCSIIdLun`.
pub fn scsi_id_lun(index: u32) -> (u32, u32) {
    (index / 256, index % 256)
}

/// Kata's amd64 kernel parameters, with `console=ttyS0` for the serial
/// console instead of `hvc0`/`hvc1`.
fn arch_kernel_params(config: &HypervisorConfig, machine: MachineType) -> Vec<Param> {
    let mut p: Vec<Param> = [
        ("tsc", "reliable"),
        ("no_timer_check", ""),
        ("rcupdate.rcu_expedited", "1"),
        ("i8042.direct", "1"),
        ("i8042.dumbkbd", "1"),
        ("i8042.nopnp", "1"),
        ("i8042.noaux", "1"),
        ("noreplace-smp", ""),
        ("reboot", "k"),
        ("console", "ttyS0"),
        ("cryptomgr.notests", ""),
        ("net.ifnames", "0"),
    ]
    .into_iter()
    .map(|(k, v)| Param::new(k, v))
    .collect();
    if machine != MachineType::Microvm {
        p.push(Param::new("pci", "lastbus=0"));
    }
    if config.iommu {
        p.push(Param::new("intel_iommu", "on"));
        p.push(Param::new("iommu", "pt"));
    } else {
        p.push(Param::new("iommu", "off"));
    }
    p
}

/// How the image reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageMode {
    Nvdimm,
    VirtioBlk,
}

fn image_mode(config: &HypervisorConfig, machine: MachineType) -> Option<ImageMode> {
    config.image_path.as_ref()?;
    if config.disable_image_nvdimm || machine == MachineType::Microvm {
        Some(ImageMode::VirtioBlk)
    } else {
        Some(ImageMode::Nvdimm)
    }
}

/// The guest kernel command line, as Kata orders it: arch defaults, root
/// parameters for an image, `debug` or `quiet`, `panic=1`, `nr_cpus`,
/// `agent.use_vsock`, then the config's `kernel_params`, which win because
/// the kernel honours the last value.
///
/// # Errors
/// [`CmdlineError::UnsupportedMachine`].
pub fn kernel_params(config: &HypervisorConfig) -> Result<Vec<Param>, CmdlineError> {
    let machine = MachineType::parse(&config.hypervisor_machine_type)?;
    let mut params = arch_kernel_params(config, machine);
    match image_mode(config, machine) {
        Some(ImageMode::Nvdimm) => params.extend(param::nvdimm_kernel_root_params()),
        Some(ImageMode::VirtioBlk) => params.extend(param::virtio_blk_kernel_root_params()),
        None => {}
    }
    if config.debug {
        params.push(Param::new("debug", ""));
    } else {
        params.push(Param::new("quiet", ""));
    }
    if config.image_path.is_some() {
        let show = if config.debug { "true" } else { "false" };
        params.push(Param::new("systemd.show_status", show));
    }
    params.push(Param::new("panic", "1"));
    params.push(Param::new("nr_cpus", config.default_max_vcpus.to_string()));
    params.push(Param::new("agent.use_vsock", config.use_vsock.to_string()));
    params.extend(config.kernel_params.iter().cloned());
    Ok(params)
}

/// What backs guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBackend {
    /// Anonymous memory, QEMU's default.
    Ram,
    /// A memfd, shareable with vhost-user daemons.
    Memfd,
    /// A file, or a temporary file in a directory.
    File {
        /// The file or directory.
        path: PathBuf,
    },
}

/// How guest RAM is backed: the backend and its knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryKnobs {
    /// The backend.
    pub backend: MemoryBackend,
    /// Map it shared.
    pub share: bool,
    /// Preallocate it.
    pub prealloc: bool,
}

impl MemoryKnobs {
    /// Whether boot RAM needs an explicit backend object.
    fn needs_object(&self) -> bool {
        self.backend != MemoryBackend::Ram || self.share || self.prealloc
    }

    /// `-object` properties of a backend named `id` of `size_mib`.
    pub fn object(&self, id: &str, size_mib: u64) -> String {
        let mut s = match &self.backend {
            MemoryBackend::Ram => format!("memory-backend-ram,id={id},size={size_mib}M"),
            MemoryBackend::Memfd => format!("memory-backend-memfd,id={id},size={size_mib}M"),
            MemoryBackend::File { path } => format!(
                "memory-backend-file,id={id},size={size_mib}M,mem-path={}",
                path_opt(path)
            ),
        };
        if self.share {
            s.push_str(",share=on");
        } else if matches!(self.backend, MemoryBackend::File { .. }) {
            s.push_str(",share=off");
        }
        if self.prealloc {
            s.push_str(",prealloc=on");
        }
        s
    }
}

/// Whether a device in `devices` (or the config) needs guest memory shared
/// with another process.
fn needs_shared_memory(config: &HypervisorConfig, devices: &[Device]) -> bool {
    let fs = config.shared_fs.is_virtio_fs() && devices.iter().any(|d| matches!(d, Device::Fs(_)));
    let vhost_user = devices.iter().any(|d| matches!(d, Device::VhostUser(_)));
    fs || vhost_user || config.enable_vhost_user_store
}

/// How guest RAM is backed for `config` and `devices`: Kata's
/// `setupTemplate`, `setupFileBackedMem` and `getMemArgs` in one place.
///
/// # Errors
/// [`CmdlineError::TemplateWithSharedMemory`] and
/// [`CmdlineError::VhostUserWithoutHugepages`], as Kata.
pub fn memory_knobs(
    config: &HypervisorConfig,
    devices: &[Device],
) -> Result<MemoryKnobs, CmdlineError> {
    let template = config.boot_to_be_template || config.boot_from_template;
    let shared = needs_shared_memory(config, devices);
    if config.enable_vhost_user_store && !config.huge_pages {
        return Err(CmdlineError::VhostUserWithoutHugepages);
    }
    if template {
        if shared || config.file_backed_mem_root_dir.is_some() {
            return Err(CmdlineError::TemplateWithSharedMemory);
        }
        let path = config
            .memory_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File { path },
            share: config.boot_to_be_template,
            prealloc: config.mem_prealloc,
        });
    }
    if config.huge_pages {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File {
                path: PathBuf::from("/dev/hugepages"),
            },
            share: true,
            prealloc: true,
        });
    }
    if let Some(dir) = &config.file_backed_mem_root_dir {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File { path: dir.clone() },
            share: true,
            prealloc: config.mem_prealloc,
        });
    }
    if shared {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::Memfd,
            share: true,
            prealloc: config.mem_prealloc,
        });
    }
    Ok(MemoryKnobs {
        backend: MemoryBackend::Ram,
        share: false,
        prealloc: config.mem_prealloc,
    })
}

/// The `maxmem` in MiB: the host's memory plus `memory_offset` plus room
/// for the image NVDIMM (at least 1 GiB, as Kata's amd64 code).
pub fn max_memory_mib(
    config: &HypervisorConfig,
    host_memory_mib: u64,
    image_size: Option<u64>,
) -> u64 {
    let nvdimm = image_size.map_or(0, |b| b.div_ceil(1 << 20)).max(1024);
    host_memory_mib + u64::from(config.mem_offset) + nvdimm
}

/// The id of PCI bridge `index`, as Kata names them.
pub fn bridge_id(index: u32) -> String {
    format!("pci-bridge-{index}")
}

/// The PCI address of bridge `index` on the root bus.
pub fn bridge_addr(index: u32) -> u32 {
    BRIDGE_PCI_START_ADDR + index
}

/// Builds the QEMU command line.
///
/// # Errors
/// See [`CmdlineError`].
pub fn build(spec: &LaunchSpec<'_>) -> Result<QemuCommand, CmdlineError> {
    let c = spec.config;
    let machine = MachineType::parse(&c.hypervisor_machine_type)?;
    let transport = machine.transport();
    let image = image_mode(c, machine);
    let knobs = memory_knobs(c, spec.devices)?;
    let kernel = c
        .asset_path(crate::assets::AssetType::Kernel)
        .ok_or(CmdlineError::MissingKernel)?;
    let mut a = Args::default();
    let mut fds: Vec<(Arc<OwnedFd>, i32)> = Vec::new();
    let iommu_platform = if c.iommu_platform {
        ",iommu_platform=on"
    } else {
        ""
    };

    a.push2("-name", format!("sandbox-{}", spec.id));
    a.push2("-uuid", spec.uuid);

    // -machine
    let mut m = machine.as_str().to_string();
    match spec.accel {
        Accelerator::Kvm if c.iommu && machine == MachineType::Q35 => {
            m.push_str(",accel=kvm,kernel_irqchip=split")
        }
        Accelerator::Kvm => m.push_str(",accel=kvm,kernel_irqchip=on"),
        Accelerator::Tcg => m.push_str(",accel=tcg"),
    }
    if image == Some(ImageMode::Nvdimm) {
        m.push_str(",nvdimm=on");
    }
    if knobs.needs_object() {
        m.push_str(&format!(",memory-backend={RAM_BACKEND_ID}"));
    }
    // The config's accelerators, minus keys set above (kernel_irqchip is a
    // common one in Kata files): QEMU would take the last, silently.
    for opt in c.machine_accelerators.split(',').filter(|o| !o.is_empty()) {
        let key = opt.split_once('=').map_or(opt, |(k, _)| k);
        let set = m
            .split(',')
            .any(|o| o.split_once('=').map_or(o, |(k, _)| k) == key);
        if set {
            tracing::debug!(option = opt, "machine accelerator already set: skipped");
        } else {
            m.push(',');
            m.push_str(opt);
        }
    }
    a.push2("-machine", m);

    // -cpu: host on KVM; under TCG, where host does not exist, see
    // TCG_CPU_MODEL.
    let mut cpu = match spec.accel {
        Accelerator::Kvm => "host".to_string(),
        Accelerator::Tcg => TCG_CPU_MODEL.to_string(),
    };
    if spec.accel == Accelerator::Kvm && (c.boot_to_be_template || c.boot_from_template) {
        // VMX state does not migrate (kata runtime#1750).
        cpu.push_str(",vmx=off");
    }
    let features = c.cpu_features.trim_matches(',');
    if !features.is_empty() {
        cpu.push(',');
        cpu.push_str(features);
    }
    a.push2("-cpu", cpu);

    a.push2(
        "-qmp",
        format!("unix:{},server=on,wait=off", path_opt(&spec.paths.qmp)),
    );

    // -m: slots and maxmem make room for hot-plugged DIMMs, the image
    // NVDIMM and virtio-mem.
    let mut slots = c.mem_slots;
    if image == Some(ImageMode::Nvdimm) {
        slots = slots.max(1);
    }
    let mut mem = format!("{}M", c.memory_size);
    if machine.supports_hotplug() && (slots > 0 || c.virtio_mem) {
        mem.push_str(&format!(
            ",slots={slots},maxmem={}M",
            max_memory_mib(c, spec.host_memory_mib, spec.image_size)
        ));
    }
    a.push2("-m", mem);
    if knobs.needs_object() {
        a.push2(
            "-object",
            knobs.object(RAM_BACKEND_ID, u64::from(c.memory_size)),
        );
    }
    if c.realtime || c.mlock {
        let lock = if c.mlock { "on" } else { "off" };
        a.push2("-overcommit", format!("mem-lock={lock}"));
    }

    a.push2(
        "-smp",
        format!(
            "{},cores=1,threads=1,sockets={max},maxcpus={max}",
            c.num_vcpus,
            max = c.default_max_vcpus
        ),
    );

    let iothread = if c.enable_io_threads && c.block_driver() == BlockDeviceDriver::VirtioScsi {
        a.push2("-object", "iothread,id=iothread0");
        Some("iothread0")
    } else {
        None
    };

    // The vIOMMU before any PCI device it translates.
    if c.iommu && machine == MachineType::Q35 {
        a.push2(
            "-device",
            "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on",
        );
    }

    // Bridges first, so they get the first free addresses (Kata). SHPC
    // stays on although the guest is notified through ACPI: with it, the
    // firmware reserves I/O and memory windows behind the empty bridge;
    // without it, a hot-plugged device finds "no space" for its BARs.
    if let Some(root) = machine.root_bus() {
        for i in 0..c.default_bridges {
            a.push2(
                "-device",
                format!(
                    "pci-bridge,bus={root},id={},chassis_nr={},shpc=on,addr={}",
                    bridge_id(i),
                    i + 1,
                    bridge_addr(i)
                ),
            );
        }
        if machine == MachineType::Q35 {
            for i in 0..c.pcie_root_port {
                a.push2(
                    "-device",
                    format!(
                        "pcie-root-port,id={ROOT_PORT_PREFIX}{i},bus={root},chassis=0,slot={i},multifunction=off"
                    ),
                );
            }
        }
    }

    // Serial console on a unix socket.
    let mut console = format!(
        "socket,id=charconsole0,path={},server=on,wait=off",
        path_opt(&spec.paths.console)
    );
    if c.debug {
        console.push_str(&format!(",logfile={}", path_opt(&spec.paths.console_log)));
    }
    a.push2("-chardev", console);
    a.push2("-serial", "chardev:charconsole0");

    // The image.
    if let (Some(mode), Some(path)) = (image, c.asset_path(crate::assets::AssetType::Image)) {
        match mode {
            ImageMode::Nvdimm => {
                let size = spec
                    .image_size
                    .ok_or_else(|| CmdlineError::MissingImageSize(path.to_path_buf()))?;
                a.push2(
                    "-object",
                    format!(
                        "memory-backend-file,id=mem0,mem-path={},size={size},readonly=on",
                        path_opt(path)
                    ),
                );
                a.push2("-device", "nvdimm,id=nv0,memdev=mem0,unarmed=on");
            }
            ImageMode::VirtioBlk => {
                a.push2(
                    "-drive",
                    format!(
                        "id=image0,file={},aio=threads,format=raw,if=none,readonly=on",
                        path_opt(path)
                    ),
                );
                a.push2(
                    "-device",
                    format!(
                        "{},drive=image0,id=virtio-image0,share-rw=on{iommu_platform}",
                        transport.driver("virtio-blk")
                    ),
                );
            }
        }
    }

    if c.block_driver() == BlockDeviceDriver::VirtioScsi {
        let mut s = format!(
            "{},id={SCSI_CONTROLLER_ID}",
            transport.driver("virtio-scsi")
        );
        if let Some(t) = iothread {
            s.push_str(&format!(",iothread={t}"));
        }
        s.push_str(iommu_platform);
        a.push2("-device", s);
    }

    // Cold-plugged devices.
    let has_serial_port = spec
        .devices
        .iter()
        .any(|d| matches!(d, Device::SerialPort(_)));
    if has_serial_port {
        a.push2(
            "-device",
            format!(
                "{},id=serial0{iommu_platform}",
                transport.driver("virtio-serial")
            ),
        );
    }
    let mut net_index = 0u32;
    for dev in spec.devices {
        match dev {
            Device::SerialPort(s) => serial_port(&mut a, s),
            Device::VsockPci(v) => {
                let fd = FIRST_INHERITED_FD
                    + i32::try_from(fds.len()).expect("a VM has far fewer than 2^31 descriptors");
                fds.push((Arc::clone(&v.vhost_fd), fd));
                vsock(&mut a, transport, v, fd);
            }
            Device::Fs(v) => shared_fs(&mut a, transport, c, spec.paths, v)?,
            Device::Net(n) => {
                net(&mut a, transport, n, net_index, spec.vhost_net);
                net_index += 1;
            }
            Device::Block(d) => block(&mut a, transport, c, d)?,
            Device::Vfio(v) => vfio(&mut a, v),
            Device::VhostUser(v) => vhost_user(&mut a, transport, v),
            // The image comes from the config, not as a device.
            Device::Image(d) => block(&mut a, transport, c, d)?,
            Device::HybridVsock(_) => return Err(CmdlineError::UnsupportedDevice("hybrid-vsock")),
            // vCPUs and memory are sized by -smp and -m.
            Device::Cpu(_) | Device::Memory(_) => {}
        }
    }

    if c.virtio_mem && machine.supports_hotplug() {
        // As Kata: room for the rest of the host's memory, in whole
        // 128 MiB guest memory blocks (QEMU wants 2 MiB multiples).
        let size = (spec
            .host_memory_mib
            .saturating_sub(u64::from(c.memory_size))
            / 128
            * 128)
            .max(128);
        a.push2(
            "-object",
            hotplug_memory_knobs(c, spec.devices)?.object("virtiomem-mem", size),
        );
        a.push2(
            "-device",
            format!(
                "virtio-mem-pci,id={VIRTIO_MEM_ID},memdev=virtiomem-mem,requested-size=0{iommu_platform}"
            ),
        );
    }

    let entropy = c
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
            "{},rng=rng0{iommu_platform}",
            transport.driver("virtio-rng")
        ),
    );

    a.push2("-rtc", "base=utc,driftfix=slew,clock=host");
    if spec.accel == Accelerator::Kvm && machine != MachineType::Microvm {
        a.push2("-global", "kvm-pit.lost_tick_policy=discard");
    }
    if let Some(fw) = c.asset_path(crate::assets::AssetType::Firmware) {
        a.push2("-bios", path_opt(fw));
    }
    for (unit, flash) in c.pflash.iter().enumerate() {
        a.push2(
            "-drive",
            format!("if=pflash,format=raw,unit={unit},file={}", path_opt(flash)),
        );
    }
    a.push("-no-user-config");
    a.push("-nodefaults");
    a.push("-nographic");
    a.push("--no-reboot");
    a.push2(
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny",
    );
    if c.boot_from_template {
        a.push2("-incoming", "defer");
    }

    a.push2("-kernel", path_opt(kernel));
    if image.is_none() {
        if let Some(initrd) = c.asset_path(crate::assets::AssetType::Initrd) {
            a.push2("-initrd", path_opt(initrd));
        }
    }
    a.push2(
        "-append",
        serialize_params(&kernel_params(c)?, "=").join(" "),
    );
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

/// The backend knobs for hot-plugged memory: like boot RAM, except in a
/// VM template, whose memory file holds boot RAM only; hot-plugged memory
/// there is plain RAM.
///
/// # Errors
/// As [`memory_knobs`].
pub fn hotplug_memory_knobs(
    config: &HypervisorConfig,
    devices: &[Device],
) -> Result<MemoryKnobs, CmdlineError> {
    let boot = memory_knobs(config, devices)?;
    if config.boot_to_be_template || config.boot_from_template {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::Ram,
            share: false,
            prealloc: boot.prealloc,
        });
    }
    Ok(boot)
}

#[derive(Debug, Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn push2(&mut self, opt: &str, value: impl Into<String>) {
        self.0.push(opt.to_string());
        self.0.push(value.into());
    }
}

fn serial_port(a: &mut Args, s: &UnixSocket) {
    let chardev = truncate_id(&s.id);
    a.push2(
        "-chardev",
        format!(
            "socket,id={chardev},path={},server=on,wait=off",
            path_opt(&s.host_path)
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
