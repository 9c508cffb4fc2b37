//! The simple requests: guest details, onlining CPUs and memory, block
//! devices, mounts, the clock.

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use sandvisor_proto::{
    AgentError, BlockDevice, GuestDetails, MountRequest, OnlineCpuMemRequest, OnlineCpuMemResult,
    ReseedRngRequest, SetTimeRequest,
};

const CPU_DIR: &str = "/sys/devices/system/cpu";
const MEMORY_DIR: &str = "/sys/devices/system/memory";
const BLOCK_DIR: &str = "/sys/block";

/// An [`AgentError::Failed`] from an I/O error.
pub fn failed(op: impl Into<String>, e: &io::Error) -> AgentError {
    AgentError::Failed {
        op: op.into(),
        message: e.to_string(),
        errno: e.raw_os_error(),
    }
}

fn nix_failed(op: impl Into<String>, e: nix::Error) -> AgentError {
    AgentError::Failed {
        op: op.into(),
        message: e.desc().to_string(),
        errno: Some(e as i32),
    }
}

/// Parses a CPU list such as `0-3,5`, as in `/sys/devices/system/cpu/online`.
pub fn count_cpu_list(list: &str) -> u32 {
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(part.parse::<u32>().is_ok()),
        })
        .sum()
}

/// `MemTotal` in KiB from the text of `/proc/meminfo`.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn cpus_online() -> u32 {
    fs::read_to_string(Path::new(CPU_DIR).join("online"))
        .map(|s| count_cpu_list(&s))
        .unwrap_or(0)
}

/// Kernel release, CPUs online, memory.
///
/// # Errors
/// When `/proc` cannot be read.
pub fn guest_details() -> Result<GuestDetails, AgentError> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| failed("read /proc/sys/kernel/osrelease", &e))?;
    let meminfo =
        fs::read_to_string("/proc/meminfo").map_err(|e| failed("read /proc/meminfo", &e))?;
    Ok(GuestDetails {
        kernel_release: release.trim().to_string(),
        cpus_online: cpus_online(),
        mem_total_kib: parse_mem_total(&meminfo).unwrap_or(0),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Entries `<prefix>N` of `dir`, by N.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, std::path::PathBuf)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

/// Onlines up to `max` offline CPUs (all when `max` is 0). Returns how many.
fn online_cpus(max: u32) -> Result<u32, AgentError> {
    let mut onlined = 0;
    for (_, dir) in numbered_entries(Path::new(CPU_DIR), "cpu") {
        if max != 0 && onlined >= max {
            break;
        }
        let online = dir.join("online");
        let Ok(state) = fs::read_to_string(&online) else {
            // cpu0 often has no `online` file: it cannot go offline.
            continue;
        };
        if state.trim() == "0" {
            fs::write(&online, "1").map_err(|e| failed(format!("online {}", dir.display()), &e))?;
            onlined += 1;
        }
    }
    Ok(onlined)
}

fn online_memory() -> Result<u32, AgentError> {
    let mut onlined = 0;
    for (_, dir) in numbered_entries(Path::new(MEMORY_DIR), "memory") {
        let state = dir.join("state");
        let Ok(s) = fs::read_to_string(&state) else {
            continue;
        };
        if s.trim() == "offline" {
            fs::write(&state, "online")
                .map_err(|e| failed(format!("online {}", dir.display()), &e))?;
            onlined += 1;
        }
    }
    Ok(onlined)
}

/// The size of a memory block, from `block_size_bytes` (hex); 128 MiB, the
/// x86_64 default, when it cannot be read.
fn memory_block_bytes() -> u64 {
    fs::read_to_string(Path::new(MEMORY_DIR).join("block_size_bytes"))
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .filter(|b| *b > 0)
        .unwrap_or(128 << 20)
}

/// Onlines offline memory blocks until enough for `mib` MiB were onlined,
/// waiting for them until `deadline`; with `mib` 0, onlines what is offline
/// now. Returns the blocks onlined.
fn online_memory_waiting(mib: u32, deadline: Instant) -> Result<u32, AgentError> {
    let want = (u64::from(mib) << 20).div_ceil(memory_block_bytes());
    let mut onlined = online_memory()?;
    while u64::from(onlined) < want {
        if Instant::now() >= deadline {
            return Err(AgentError::Failed {
                op: "online memory".into(),
                message: format!(
                    "onlined {onlined} of {want} memory blocks ({mib} MiB) before the wait ended"
                ),
                errno: None,
            });
        }
        thread::sleep(Duration::from_millis(20));
        onlined += online_memory()?;
    }
    Ok(onlined)
}

/// Kata's `OnlineCPUMem`: probe memory at the given addresses, online
/// offline memory blocks, then online CPUs, waiting up to `wait_ms` for
/// `memory_mib` of memory and `nb_cpus` CPUs to appear (ACPI hot-plug is
/// asynchronous).
///
/// # Errors
/// When sysfs refuses a write, or fewer than `nb_cpus` CPUs could be
/// onlined before the wait ended.
pub fn online_cpu_mem(req: &OnlineCpuMemRequest) -> Result<OnlineCpuMemResult, AgentError> {
    let mut result = OnlineCpuMemResult::default();
    let deadline = Instant::now() + Duration::from_millis(req.wait_ms);
    if !req.cpu_only {
        let probe = Path::new(MEMORY_DIR).join("probe");
        for addr in &req.probe_addresses {
            fs::write(&probe, format!("{addr:#x}"))
                .map_err(|e| failed(format!("probe memory at {addr:#x}"), &e))?;
        }
        result.memory_blocks_onlined = online_memory_waiting(req.memory_mib, deadline)?;
    }
    loop {
        let want = if req.nb_cpus == 0 {
            0
        } else {
            req.nb_cpus - result.cpus_onlined
        };
        result.cpus_onlined += online_cpus(want)?;
        if req.nb_cpus == 0 || result.cpus_onlined >= req.nb_cpus {
            break;
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Failed {
                op: "online cpus".into(),
                message: format!(
                    "onlined {} of {} cpus before the wait of {} ms ended",
                    result.cpus_onlined, req.nb_cpus, req.wait_ms
                ),
                errno: None,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
    result.cpus_online = cpus_online();
    Ok(result)
}

/// The block devices of `/sys/block`.
///
/// # Errors
/// When `/sys/block` cannot be read.
pub fn list_block_devices() -> Result<Vec<BlockDevice>, AgentError> {
    let entries = fs::read_dir(BLOCK_DIR).map_err(|e| failed("read /sys/block", &e))?;
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let Some((major, minor)) = read("dev")
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let sectors: u64 = read("size").trim().parse().unwrap_or(0);
        devices.push(BlockDevice {
            name,
            size_bytes: sectors * 512,
            major,
            minor,
            read_only: read("ro").trim() == "1",
        });
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

/// Splits mount options into flags and file-system data.
pub fn parse_mount_options(options: &[String]) -> (MsFlags, Option<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        match opt {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "remount" => flags |= MsFlags::MS_REMOUNT,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    let data = (!data.is_empty()).then(|| data.join(","));
    (flags, data)
}

/// Mounts `req.source` on `req.target`, creating the target.
///
/// # Errors
/// When the target cannot be made or the mount fails.
pub fn mount_fs(req: &MountRequest) -> Result<(), AgentError> {
    if req.source.is_empty() || req.target.is_empty() {
        return Err(AgentError::InvalidRequest {
            reason: "mount needs a source and a target".into(),
        });
    }
    if !req.target.starts_with('/') {
        return Err(AgentError::InvalidRequest {
            reason: format!("mount target {:?} is not absolute", req.target),
        });
    }
    fs::create_dir_all(&req.target).map_err(|e| failed(format!("create {}", req.target), &e))?;
    let (flags, data) = parse_mount_options(&req.options);
    let fstype = (!req.fstype.is_empty()).then_some(req.fstype.as_str());
    mount(
        Some(req.source.as_str()),
        req.target.as_str(),
        fstype,
        flags,
        data.as_deref(),
    )
    .map_err(|e| {
        nix_failed(
            format!("mount {} ({}) on {}", req.source, req.fstype, req.target),
            e,
        )
    })
}

/// Sets the realtime clock.
///
/// # Errors
/// When the nanoseconds are out of range or the kernel refuses.
pub fn set_time(req: &SetTimeRequest) -> Result<(), AgentError> {
    if req.nanos >= 1_000_000_000 {
        return Err(AgentError::InvalidRequest {
            reason: format!("nanos {} is not below one second", req.nanos),
        });
    }
    let ts = TimeSpec::new(req.secs, i64::from(req.nanos));
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| nix_failed("set the clock", e))
}

/// Adds the host's entropy to the guest's pool and reseeds the CRNG, as
/// Kata's agent does for a VM from a template.
///
/// # Errors
/// [`AgentError::InvalidRequest`] for no bytes or too many; the ioctl's
/// failure otherwise.
pub fn reseed_rng(req: &ReseedRngRequest) -> Result<(), AgentError> {
    if req.data.is_empty() || req.data.len() > sandvisor_proto::MAX_RESEED_BYTES {
        return Err(AgentError::InvalidRequest {
            reason: format!(
                "{} bytes of entropy: send 1 to {}",
                req.data.len(),
                sandvisor_proto::MAX_RESEED_BYTES
            ),
        });
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| failed("open /dev/random", &e))?;
    crate::sys::add_entropy(&random, &req.data)
        .map_err(|e| nix_failed("add entropy (RNDADDENTROPY)", e))?;
    crate::sys::reseed_crng(&random).map_err(|e| nix_failed("reseed the CRNG (RNDRESEEDCRNG)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        for (list, n) in [("0", 1), ("0-3\n", 4), ("0-1,3,5-6", 5), ("", 0), ("x", 0)] {
            assert_eq!(count_cpu_list(list), n, "{list:?}");
        }
    }

    #[test]
    fn mem_total() {
        let m = "MemTotal:         497172 kB\nMemFree:          400000 kB\n";
        assert_eq!(parse_mem_total(m), Some(497172));
        assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
    }

    #[test]
    fn mount_options() {
        let (flags, data) = parse_mount_options(&[
            "ro,nosuid".to_string(),
            "trans=virtio".to_string(),
            "version=9p2000.L".to_string(),
        ]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data.as_deref(), Some("trans=virtio,version=9p2000.L"));
        let (flags, data) = parse_mount_options(&[]);
        assert!(flags.is_empty());
        assert_eq!(data, None);
    }

    #[test]
    fn relative_mount_target_is_refused() {
        let err = mount_fs(&MountRequest {
            source: "/dev/vdb".into(),
            target: "mnt".into(),
            fstype: "ext4".into(),
            options: vec![],
        })
        .expect_err("relative target");
        assert!(matches!(err, AgentError::InvalidRequest { .. }));
    }

    #[test]
    fn nanos_out_of_range_is_refused() {
        let err = set_time(&SetTimeRequest {
            secs: 0,
            nanos: 1_000_000_000,
        })
        .expect_err("bad nanos");
        assert!(matches!(err, AgentError::InvalidRequest { .. }));
    }
}
