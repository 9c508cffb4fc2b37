//! Firecracker's vCPU threads, read from `/proc`.

use crate::device::VcpuThreadIds;

/// vCPU threads of `pid`: Firecracker names them `fc_vcpu <N>` (with a
/// space, which Kata's parser misses).
pub fn vcpu_threads(pid: u32) -> std::io::Result<VcpuThreadIds> {
    let mut ids = VcpuThreadIds::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if let Some(n) = parse_vcpu_comm(&comm) {
            ids.vcpus.insert(n, tid);
        }
    }
    Ok(ids)
}

/// The vCPU index in a thread name `fc_vcpu <N>`.
pub fn parse_vcpu_comm(comm: &str) -> Option<u32> {
    comm.trim_end()
        .strip_prefix("fc_vcpu")
        .map(str::trim_start)
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_thread_names_have_a_space() {
        assert_eq!(parse_vcpu_comm("fc_vcpu 0\n"), Some(0));
        assert_eq!(parse_vcpu_comm("fc_vcpu 11"), Some(11));
        assert_eq!(parse_vcpu_comm("fc_api"), None);
        assert_eq!(parse_vcpu_comm("firecracker"), None);
    }
}
