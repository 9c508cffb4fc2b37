//! The lifecycle section, on the sandbox it shares with hot-plug: exec
//! round trips, pause and resume.

use std::time::Instant;

use super::report::Unit;
use super::{
    guest_true, hv_err, ms, resolve, targets, BenchError, BenchOptions, Recorder, Section,
};
use crate::backends::new_hypervisor;
use crate::config::HypervisorConfig;
use crate::sandbox::{new_sandbox_id, Sandbox};

/// Boots the sandbox the lifecycle and hot-plug sections share, with room
/// for `extra_cpus` more vCPUs.
pub(super) async fn shared_sandbox(
    opts: &BenchOptions,
    extra_cpus: u32,
) -> Result<(Sandbox, HypervisorConfig), BenchError> {
    let (kind, mut config) = resolve(opts)?;
    config.default_max_vcpus = config.default_max_vcpus.max(config.num_vcpus + extra_cpus);
    let sandbox = Sandbox::launch(
        new_sandbox_id(),
        new_hypervisor(kind),
        &config,
        opts.boot_timeout,
    )
    .await?;
    Ok((sandbox, config))
}

pub(super) async fn lifecycle(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    // The first exec waits for the boot-time drivers; not a round trip.
    guest_true(sandbox.agent()).await?;
    for _ in 0..opts.ops {
        let t = Instant::now();
        guest_true(sandbox.agent()).await?;
        rec.add(
            Section::Lifecycle,
            "exec_rtt",
            "exec round trip (`true`) in a running sandbox",
            Unit::Millis,
            None,
            ms(t.elapsed()),
        );
    }
    for _ in 0..opts.ops {
        let t = Instant::now();
        sandbox
            .hypervisor()
            .pause_sandbox()
            .await
            .map_err(hv_err("pause"))?;
        let paused = t.elapsed();
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resume_sandbox()
            .await
            .map_err(hv_err("resume"))?;
        let resumed = t.elapsed();
        rec.add(
            Section::Lifecycle,
            "pause",
            "pause (QMP stop, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(paused),
        );
        rec.add(
            Section::Lifecycle,
            "resume",
            "resume (QMP cont, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(resumed),
        );
    }
    // A paused guest would not answer this.
    guest_true(sandbox.agent()).await?;
    progress(&format!(
        "lifecycle: {} exec round trips, {} pause/resume pairs",
        opts.ops, opts.ops
    ));
    Ok(())
}
