//! The machine: its type and accelerator, the vCPUs, the PCI topology
//! (vIOMMU, bridges, root ports) and the platform flags.

use std::fmt;

use super::boot::ImageMode;
use super::{
    path_opt, Args, CmdlineError, Plan, BRIDGE_PCI_START_ADDR, RAM_BACKEND_ID, ROOT_PORT_PREFIX,
};
use crate::config::Accel;

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

    pub(super) fn transport(self) -> Transport {
        if self == MachineType::Microvm {
            Transport::Mmio
        } else {
            Transport::Pci
        }
    }
}

/// How virtio devices attach: to PCI, or as virtio-mmio on microvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Pci,
    Mmio,
}

impl Transport {
    /// `virtio-blk` becomes `virtio-blk-pci` or `virtio-blk-device`.
    pub(super) fn driver(self, base: &str) -> String {
        match self {
            Transport::Pci => format!("{base}-pci"),
            Transport::Mmio => format!("{base}-device"),
        }
    }
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

/// The id of PCI bridge `index`, as Kata names them.
pub fn bridge_id(index: u32) -> String {
    format!("pci-bridge-{index}")
}

/// The PCI address of bridge `index` on the root bus.
pub fn bridge_addr(index: u32) -> u32 {
    BRIDGE_PCI_START_ADDR + index
}

/// `-machine`: the type, the accelerator, NVDIMM and the RAM backend, then
/// the config's `machine_accelerators`.
pub(super) fn machine(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    let mut m = p.machine.as_str().to_string();
    match p.spec.accel {
        Accelerator::Kvm if c.iommu && p.machine == MachineType::Q35 => {
            m.push_str(",accel=kvm,kernel_irqchip=split")
        }
        Accelerator::Kvm => m.push_str(",accel=kvm,kernel_irqchip=on"),
        Accelerator::Tcg => m.push_str(",accel=tcg"),
    }
    if p.image == Some(ImageMode::Nvdimm) {
        m.push_str(",nvdimm=on");
    }
    if p.knobs.needs_object() {
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
    a
}

/// `-cpu`: host on KVM; under TCG, where host does not exist, see
/// [`TCG_CPU_MODEL`].
pub(super) fn cpu(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    let mut cpu = match p.spec.accel {
        Accelerator::Kvm => "host".to_string(),
        Accelerator::Tcg => TCG_CPU_MODEL.to_string(),
    };
    if p.spec.accel == Accelerator::Kvm && (c.boot_to_be_template || c.boot_from_template) {
        // VMX state does not migrate (kata runtime#1750).
        cpu.push_str(",vmx=off");
    }
    let features = c.cpu_features.trim_matches(',');
    if !features.is_empty() {
        cpu.push(',');
        cpu.push_str(features);
    }
    a.push2("-cpu", cpu);
    a
}

/// `-smp`: the boot vCPUs and room for the maximum.
pub(super) fn smp(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    a.push2(
        "-smp",
        format!(
            "{},cores=1,threads=1,sockets={max},maxcpus={max}",
            c.num_vcpus,
            max = c.default_max_vcpus
        ),
    );
    a
}

/// The vIOMMU, PCI bridges and PCIe root ports.
pub(super) fn pci_topology(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    // The vIOMMU before any PCI device it translates.
    if c.iommu && p.machine == MachineType::Q35 {
        a.push2(
            "-device",
            "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on",
        );
    }

    // Bridges first, so they get the first free addresses (Kata). SHPC
    // stays on although the guest is notified through ACPI: with it, the
    // firmware reserves I/O and memory windows behind the empty bridge;
    // without it, a hot-plugged device finds "no space" for its BARs.
    if let Some(root) = p.machine.root_bus() {
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
        if p.machine == MachineType::Q35 {
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
    a
}

/// The clock, firmware, flash and the flags that keep QEMU to what the
/// command line asks for.
pub(super) fn platform(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    a.push2("-rtc", "base=utc,driftfix=slew,clock=host");
    if p.spec.accel == Accelerator::Kvm && p.machine != MachineType::Microvm {
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
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    );
    if c.boot_from_template {
        a.push2("-incoming", "defer");
    }
    a
}
