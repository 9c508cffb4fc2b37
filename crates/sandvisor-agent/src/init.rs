//! PID 1 duties: the base file systems and the kernel command line.

use std::fs;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::log;

/// Where the initrd has `modprobe`: not at the kernel's default
/// `/sbin/modprobe`, which the kernel would run for module requests during
/// boot, before anything could be loaded (`image::MODPROBE_PATH` in the
/// library must match).
pub const MODPROBE: &str = "/usr/sbin/modprobe";

/// The kernel's module autoloading helper; absent in a kernel built
/// without module support (`CONFIG_MODULES=n`).
const MODPROBE_SYSCTL: &str = "/proc/sys/kernel/modprobe";

/// Points the kernel's module autoloading (`kernel.modprobe`) at
/// [`MODPROBE`], when the initrd has it and the kernel loads modules.
pub fn enable_module_autoload() {
    if !Path::new(MODPROBE).exists() || !Path::new(MODPROBE_SYSCTL).exists() {
        return;
    }
    if let Err(e) = fs::write(MODPROBE_SYSCTL, MODPROBE) {
        log!("cannot set kernel.modprobe to {MODPROBE}: {e}");
    }
}

/// The `PATH` the agent and its processes get when none is given.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const BASE_MOUNTS: &[BaseMount] = &[
    BaseMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    BaseMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    BaseMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Mounts proc, sys, dev, dev/pts, dev/shm, run and tmp. A failure is
/// logged; the agent goes on with what it has.
pub fn mount_base() {
    for m in BASE_MOUNTS {
        if let Err(e) = fs::create_dir_all(m.target) {
            log!("cannot create {}: {e}", m.target);
            continue;
        }
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => log!("cannot mount {} on {}: {e}", m.fstype, m.target),
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

/// The kernel command line.
pub fn cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// Whether the kernel command line holds the word `param`.
pub fn cmdline_has(cmdline: &str, param: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == param || w.split_once('=').is_some_and(|(k, _)| k == param))
}

/// The value of the last `param=value` word on the kernel command line:
/// the kernel, and Kata's agent, honour the last one.
pub fn cmdline_value<'a>(cmdline: &'a str, param: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == param)
        .map(|(_, v)| v)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_value_is_the_last_one() {
        let c = "quiet agent.use_vsock=false panic=1 agent.use_vsock=true\n";
        assert_eq!(cmdline_value(c, "agent.use_vsock"), Some("true"));
        assert_eq!(
            cmdline_value("agent.use_vsock=false", "agent.use_vsock"),
            Some("false")
        );
        assert_eq!(
            cmdline_value("xagent.use_vsock=true", "agent.use_vsock"),
            None
        );
        assert_eq!(cmdline_value("agent.use_vsock", "agent.use_vsock"), None);
    }

    #[test]
    fn cmdline_words() {
        let c = "console=ttyS0 quiet sandvisor.debug_console panic=1\n";
        assert!(cmdline_has(c, "sandvisor.debug_console"));
        assert!(cmdline_has(
            "sandvisor.debug_console=1",
            "sandvisor.debug_console"
        ));
        assert!(!cmdline_has(
            "xsandvisor.debug_console",
            "sandvisor.debug_console"
        ));
        assert!(!cmdline_has(c, "debug"));
    }
}
