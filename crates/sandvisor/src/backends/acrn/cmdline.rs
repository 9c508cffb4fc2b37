//! The `acrn-dm` command line: a pure function of what the VM is made of.
//!
//! Devices sit on PCI slots in a fixed order, one per `-s`: the host
//! bridge (0), the LPC bridge with COM1 on stdio (1), slot 2 left free
//! (ACRN reserves it for GVT-g graphics), then the console, the root image,
//! the placeholder drives kept for hot-plug, the extra drives, the agent
//! channel and the network interfaces.

use std::path::{Path, PathBuf};

use crate::device::{BlockDrive, NetDevice, UnixSocket};
use crate::param::{serialize_params, Param};

/// The slot ACRN keeps for GVT-g, never given to a device.
pub const GVT_G_SLOT: u32 = 2;
/// A placeholder drive's backing: none, until `acrnctl blkrescan`.
pub const NODISK: &str = "nodisk";

/// What the VM is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The sandbox id (the VM is `sandbox-<id>`).
    pub id: String,
    /// The VM's UUID, one of the pool's.
    pub uuid: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The most vCPUs the guest may see (`maxcpus=`).
    pub max_vcpus: u32,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The root image, when the guest boots from one.
    pub image: Option<PathBuf>,
    /// The console socket (`<vm dir>/console.sock`).
    pub console: PathBuf,
    /// How many placeholder drives to make for hot-plug.
    pub placeholders: u32,
    /// Drives added before boot, after the placeholders.
    pub drives: Vec<BlockDrive>,
    /// The agent channel, a virtio-console port on a unix socket.
    pub agent: Option<UnixSocket>,
    /// Network interfaces on tap devices.
    pub nets: Vec<NetDevice>,
    /// Debug kernel parameters rather than quiet ones.
    pub debug: bool,
    /// The user's kernel parameters, last so they win.
    pub kernel_params: Vec<Param>,
}

/// The command line and where the placeholders landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// `acrn-dm`'s arguments.
    pub args: Vec<String>,
    /// The slot of each placeholder drive, in drive-index order (the
    /// placeholder for drive index `i` is `placeholder_slots[i - 1]`).
    pub placeholder_slots: Vec<u32>,
}

/// The VM's name, as `acrnctl` knows it.
pub fn vm_name(id: &str) -> String {
    format!("sandbox-{id}")
}

/// The kernel parameters: Kata's for ACRN, the root device when booting
/// from an image, then the user's.
pub fn kernel_params(spec: &LaunchSpec) -> String {
    let mut params = vec![
        Param::new("tsc", "reliable"),
        Param::new("no_timer_check", ""),
        Param::new("nohpet", ""),
        Param::new("console", "hvc0"),
        Param::new("console", "hvc1"),
        Param::new(if spec.debug { "debug" } else { "quiet" }, ""),
        Param::new("panic", "1"),
        Param::new("maxcpus", spec.max_vcpus.to_string()),
    ];
    if spec.image.is_some() {
        params.extend([
            Param::new("root", "/dev/vda1"),
            Param::new("rw", ""),
            Param::new("rootwait", ""),
        ]);
    }
    params.extend(spec.kernel_params.iter().cloned());
    serialize_params(&params, "=").join(" ")
}

/// The next slot from `slot`, skipping [`GVT_G_SLOT`].
fn next(slot: &mut u32) -> u32 {
    if *slot == GVT_G_SLOT {
        *slot += 1;
    }
    let s = *slot;
    *slot += 1;
    s
}

fn blk(path: &Path, read_only: bool) -> String {
    let ro = if read_only { ",ro" } else { "" };
    format!("virtio-blk,{}{ro}", path.display())
}

/// Builds the command line of `spec`.
pub fn launch(spec: &LaunchSpec) -> Launch {
    let mut args: Vec<String> = vec![
        "-U".into(),
        spec.uuid.clone(),
        "-A".into(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
    ];
    let dev = |args: &mut Vec<String>, slot: String, device: String| {
        args.push("-s".into());
        args.push(format!("{slot},{device}"));
    };
    dev(&mut args, "0:0".into(), "hostbridge".into());
    dev(&mut args, "1:0".into(), "lpc".into());
    args.push("-l".into());
    args.push("com1,stdio".into());
    let mut slot = 3;
    dev(
        &mut args,
        next(&mut slot).to_string(),
        format!("virtio-console,@socket:console0={}", spec.console.display()),
    );
    if let Some(image) = &spec.image {
        dev(&mut args, next(&mut slot).to_string(), blk(image, false));
    }
    let mut placeholder_slots = Vec::new();
    for _ in 0..spec.placeholders {
        let s = next(&mut slot);
        placeholder_slots.push(s);
        dev(&mut args, s.to_string(), format!("virtio-blk,{NODISK}"));
    }
    for d in &spec.drives {
        dev(
            &mut args,
            next(&mut slot).to_string(),
            blk(&d.file, d.read_only),
        );
    }
    if let Some(a) = &spec.agent {
        dev(
            &mut args,
            next(&mut slot).to_string(),
            format!(
                "virtio-console,@socket:{}={}",
                a.name,
                a.host_path.display()
            ),
        );
    }
    for n in &spec.nets {
        dev(
            &mut args,
            next(&mut slot).to_string(),
            format!("virtio-net,{},mac={}", n.tap_name, n.mac),
        );
    }
    args.push("-k".into());
    args.push(spec.kernel.display().to_string());
    args.push("-B".into());
    args.push(kernel_params(spec));
    args.push(vm_name(&spec.id));
    Launch {
        args,
        placeholder_slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LaunchSpec {
        LaunchSpec {
            id: "s1".into(),
            uuid: "a7ada506-1ab0-4b6b-a0da-e513ca9b8c2f".into(),
            memory_mib: 2048,
            max_vcpus: 4,
            kernel: "/k/vmlinux".into(),
            image: None,
            console: "/run/vm/s1/console.sock".into(),
            placeholders: 0,
            drives: Vec::new(),
            agent: None,
            nets: Vec::new(),
            debug: false,
            kernel_params: Vec::new(),
        }
    }

    /// Compares with `golden/<name>.json`, or writes it when
    /// `SANDVISOR_BLESS` is set.
    fn golden(name: &str, launch: &Launch) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/backends/acrn/golden")
            .join(format!("{name}.json"));
        let got = serde_json::to_string_pretty(&launch.args).expect("serialises") + "\n";
        if std::env::var_os("SANDVISOR_BLESS").is_some() {
            std::fs::write(&path, &got).expect("writes golden");
        }
        let want = std::fs::read_to_string(&path).expect("golden file exists");
        assert_eq!(got, want, "{name}");
    }

    #[test]
    fn image_boot() {
        let spec = LaunchSpec {
            image: Some("/k/rootfs.img".into()),
            ..base()
        };
        let l = launch(&spec);
        golden("image", &l);
        assert!(l.placeholder_slots.is_empty());
    }

    #[test]
    fn placeholders_follow_the_image_and_skip_nothing_twice() {
        let spec = LaunchSpec {
            image: Some("/k/rootfs.img".into()),
            placeholders: 3,
            agent: Some(UnixSocket {
                device_id: "channel0".into(),
                id: "charch0".into(),
                host_path: "/run/vm/s1/kata.sock".into(),
                name: "agent.channel.0".into(),
            }),
            ..base()
        };
        let l = launch(&spec);
        golden("placeholders", &l);
        assert_eq!(l.placeholder_slots, [5, 6, 7]);
    }

    #[test]
    fn net_and_drives() {
        let spec = LaunchSpec {
            drives: vec![BlockDrive {
                file: "/d/data.img".into(),
                read_only: true,
                ..BlockDrive::default()
            }],
            nets: vec![NetDevice {
                id: "eth0".into(),
                tap_name: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
                queues: 1,
            }],
            ..base()
        };
        golden("net", &launch(&spec));
    }

    #[test]
    fn debug_and_user_params() {
        let spec = LaunchSpec {
            debug: true,
            kernel_params: vec![Param::new("agent.log", "debug"), Param::new("panic", "0")],
            ..base()
        };
        let l = launch(&spec);
        golden("debug", &l);
        let b = l.args.iter().position(|a| a == "-B").expect("has -B");
        assert_eq!(
            l.args[b + 1],
            "tsc=reliable no_timer_check nohpet console=hvc0 console=hvc1 debug panic=1 maxcpus=4 agent.log=debug panic=0"
        );
    }

    #[test]
    fn slot_two_is_never_used() {
        let spec = LaunchSpec {
            placeholders: 8,
            ..base()
        };
        let l = launch(&spec);
        assert!(!l.args.iter().any(|a| a.starts_with("2,")), "{:?}", l.args);
        assert_eq!(l.placeholder_slots, (4..12).collect::<Vec<_>>());
        assert_eq!(l.args.last().map(String::as_str), Some("sandbox-s1"));
    }
}
