//! The memory section: the VMM's and the supervisor's RSS and PSS per
//! sandbox made by the CLI, and the CPU time sandvisor's own processes
//! spend on each step of a lifecycle.

use std::time::Duration;

use super::cli::cli;
use super::report::Unit;
use super::{io_err, ms, BenchError, BenchOptions, Recorder, Section, CLI_ID_PREFIX};
use crate::sandbox::new_sandbox_id;

/// `Rss` and `Pss` of a process, in MiB, from `smaps_rollup`.
pub fn rss_pss_mib(pid: u32) -> Result<(f64, f64), BenchError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("read {path}")))?;
    Ok(parse_rss_pss(&text))
}

/// `Rss` and `Pss` from `smaps_rollup` text, in MiB.
pub fn parse_rss_pss(text: &str) -> (f64, f64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("Rss:"), field("Pss:"))
}

/// A process's own CPU time, children excluded: the sum over its threads
/// of the nanoseconds the scheduler ran them (`/proc/<pid>/task/*/schedstat`),
/// which, unlike `stat`'s clock ticks, resolves a few milliseconds.
pub fn process_cpu(pid: u32) -> Result<Duration, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(io_err(format!("read {dir}")))?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += parse_schedstat(&text).unwrap_or_default();
        }
    }
    Ok(total)
}

/// The time on CPU in a `schedstat` line: its first field, nanoseconds.
pub fn parse_schedstat(text: &str) -> Option<Duration> {
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// CPU time of this process's waited-for children so far.
fn children_cpu() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// The pid in `record[key].pid` of `sandvisor state --json` output.
fn state_pid(state: &serde_json::Value, key: &str) -> Option<u32> {
    state[key]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

pub(super) async fn memory_and_cpu(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let m = Section::Memory;
    for i in 0..opts.lifecycles {
        let id = format!("{CLI_ID_PREFIX}{}", &new_sandbox_id()[3..]);
        let cli_before = children_cpu();
        let outcome = async {
            cli(opts, &["create", "--id", &id])?;
            cli(opts, &["start", &id])?;
            cli(opts, &["exec", &id, "--", "true"])?;
            let state: serde_json::Value =
                serde_json::from_str(&cli(opts, &["state", &id, "--json"])?)
                    .map_err(|e| BenchError::Raw(format!("sandvisor state --json: {e}")))?;
            let sup = state_pid(&state, "supervisor")
                .ok_or_else(|| BenchError::Raw("no supervisor pid in state".into()))?;
            let vmm = state_pid(&state, "vmm")
                .ok_or_else(|| BenchError::Raw("no VMM pid in state".into()))?;
            // Let the guest settle after the exec before reading memory.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (vmm_rss, vmm_pss) = rss_pss_mib(vmm)?;
            let (sup_rss, sup_pss) = rss_pss_mib(sup)?;
            let mut sup_cpu = process_cpu(sup)?;
            cli(opts, &["stop", &id])?;
            // The supervisor's work for stop counts too, while it lives.
            if let Ok(after) = process_cpu(sup) {
                sup_cpu = after;
            }
            cli(opts, &["delete", &id])?;
            Ok::<_, BenchError>((vmm_rss, vmm_pss, sup_rss, sup_pss, sup_cpu))
        }
        .await;
        let (vmm_rss, vmm_pss, sup_rss, sup_pss, sup_cpu) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let _ = cli(opts, &["delete", "--force", &id]);
                return Err(e);
            }
        };
        let cli_cpu = children_cpu().saturating_sub(cli_before);
        progress(&format!(
            "memory {}/{}: VMM RSS {vmm_rss:.0} MiB PSS {vmm_pss:.0} MiB; supervisor RSS {sup_rss:.1} MiB; sandvisor CPU {:.0} ms",
            i + 1,
            opts.lifecycles,
            ms(sup_cpu + cli_cpu)
        ));
        rec.add(
            m,
            "vmm_rss",
            "VMM (QEMU) RSS per idle sandbox",
            Unit::Mib,
            None,
            vmm_rss,
        );
        rec.add(
            m,
            "vmm_pss",
            "VMM (QEMU) PSS per idle sandbox",
            Unit::Mib,
            None,
            vmm_pss,
        );
        rec.add(
            m,
            "supervisor_rss",
            "supervisor RSS per sandbox",
            Unit::Mib,
            None,
            sup_rss,
        );
        rec.add(
            m,
            "supervisor_pss",
            "supervisor PSS per sandbox",
            Unit::Mib,
            None,
            sup_pss,
        );
        rec.add(
            m,
            "cpu_supervisor",
            "CPU per lifecycle: supervisor",
            Unit::Millis,
            None,
            ms(sup_cpu),
        );
        rec.add(
            m,
            "cpu_cli",
            "CPU per lifecycle: CLI calls (create..delete)",
            Unit::Millis,
            None,
            ms(cli_cpu),
        );
        rec.add(
            m,
            "cpu_sandvisor_total",
            "CPU per lifecycle: all sandvisor processes",
            Unit::Millis,
            None,
            ms(sup_cpu + cli_cpu),
        );
    }
    Ok(())
}
