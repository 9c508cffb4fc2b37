//! The cold section: a sandbox from nothing to its agent answering and its
//! first exec, against raw QEMU and against `sandvisor run` as a process.

use std::time::{Duration, Instant};

use super::cli::cli_run_true;
use super::host::{HostProbe, HOST_PROBE_KEY};
use super::raw::raw_boot;
use super::report::Unit;
use super::{guest_true, ms, resolve, targets, BenchError, BenchOptions, Recorder, Section};
use crate::backends::new_hypervisor;
use crate::sandbox::{new_sandbox_id, Sandbox};

/// One `sandvisor run`'s worth of work, in process: returns the time to
/// the agent answering and to the first exec's exit.
async fn sandvisor_boot(opts: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let started = Instant::now();
    let (kind, config) = resolve(opts)?;
    let sandbox = Sandbox::launch(
        new_sandbox_id(),
        new_hypervisor(kind),
        &config,
        opts.boot_timeout,
    )
    .await?;
    let up = started.elapsed();
    let first = guest_true(sandbox.agent()).await;
    let first_exec = started.elapsed();
    match first {
        Ok(()) => sandbox.shutdown().await?,
        Err(e) => {
            sandbox.kill().await;
            return Err(e);
        }
    }
    Ok((up, first_exec))
}

pub(super) async fn cold(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    progress("cold: warm-up boots (not counted)");
    sandvisor_boot(opts).await?;
    raw_boot(opts).await?;
    let probe = HostProbe::new();
    let mut probes = Vec::with_capacity(2 * opts.boots);
    for i in 0..opts.boots {
        // Alternate which goes first, so that what one leaves behind (a
        // VMM's memory being freed, caches) weighs on both equally.
        let ((up, first), raw) = if i % 2 == 0 {
            probes.push(probe.time());
            let s = sandvisor_boot(opts).await?;
            probes.push(probe.time());
            (s, raw_boot(opts).await?)
        } else {
            probes.push(probe.time());
            let r = raw_boot(opts).await?;
            probes.push(probe.time());
            (sandvisor_boot(opts).await?, r)
        };
        progress(&format!(
            "cold {}/{}: sandvisor {:.3}s, raw QEMU {:.3}s, first exec {:.3}s",
            i + 1,
            opts.boots,
            up.as_secs_f64(),
            raw.as_secs_f64(),
            first.as_secs_f64()
        ));
        let c = Section::Cold;
        rec.add(
            c,
            "cold_start_sandvisor",
            "cold start: sandvisor run's start to agent answering",
            Unit::Seconds,
            Some(targets::COLD_START_S),
            up.as_secs_f64(),
        );
        rec.add(
            c,
            "cold_start_raw_qemu",
            "cold start: raw QEMU, same argv, to agent answering",
            Unit::Seconds,
            None,
            raw.as_secs_f64(),
        );
        rec.add(
            c,
            "first_exec",
            "first exec result: run's start to exit status",
            Unit::Seconds,
            None,
            first.as_secs_f64(),
        );
        rec.add(
            c,
            "overhead_ratio",
            "overhead: sandvisor / raw QEMU, per pair",
            Unit::Ratio,
            Some(targets::OVERHEAD_RATIO),
            up.as_secs_f64() / raw.as_secs_f64(),
        );
    }
    for p in probes {
        rec.add(
            Section::Cold,
            HOST_PROBE_KEY,
            "host steadiness: fixed memory-bound work before each boot",
            Unit::Millis,
            None,
            ms(p),
        );
    }
    for i in 0..opts.boots {
        let wall = cli_run_true(opts)?;
        progress(&format!(
            "cold: `sandvisor run -- true` {}/{}: {:.3}s",
            i + 1,
            opts.boots,
            wall.as_secs_f64()
        ));
        rec.add(
            Section::Cold,
            "run_true_wall",
            "`sandvisor run -- true`, whole process",
            Unit::Seconds,
            None,
            wall.as_secs_f64(),
        );
    }
    Ok(())
}
