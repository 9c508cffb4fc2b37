//! The density section: N sandboxes launched at once, timed until all
//! answer, with the failures counted.

use std::time::Instant;

use tokio::task::JoinSet;

use super::report::Unit;
use super::{resolve, BenchError, BenchOptions, Recorder, Section};
use crate::backends::new_hypervisor;
use crate::sandbox::{new_sandbox_id, Sandbox};

pub(super) async fn density(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let (kind, config) = resolve(opts)?;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..opts.density {
        let config = config.clone();
        let timeout = opts.boot_timeout;
        set.spawn(async move {
            let t = Instant::now();
            let r = Sandbox::launch(new_sandbox_id(), new_hypervisor(kind), &config, timeout).await;
            (t.elapsed(), r)
        });
    }
    let mut sandboxes = Vec::new();
    let mut failures = 0u32;
    let mut each = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((took, Ok(sb))) => {
                each.push(took);
                sandboxes.push(sb);
            }
            Ok((_, Err(e))) => {
                failures += 1;
                tracing::warn!(error = %e, "a density sandbox failed to start");
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "a density task failed");
            }
        }
    }
    let all = started.elapsed();
    for sb in sandboxes {
        if let Err(e) = sb.shutdown().await {
            tracing::warn!(error = %e, "shutting down a density sandbox failed");
        }
    }
    let n = opts.density;
    progress(&format!(
        "density: {n} sandboxes, all ready in {:.3}s, {failures} failed",
        all.as_secs_f64()
    ));
    let d = Section::Density;
    rec.add(
        d,
        "density_all_ready",
        &format!("{n} sandboxes started together: all answering"),
        Unit::Seconds,
        None,
        all.as_secs_f64(),
    );
    for t in each {
        rec.add(
            d,
            "density_each_ready",
            &format!("{n} together: each sandbox answering"),
            Unit::Seconds,
            None,
            t.as_secs_f64(),
        );
    }
    rec.add(
        d,
        "density_failures",
        &format!("{n} together: failures"),
        Unit::Count,
        None,
        f64::from(failures),
    );
    Ok(())
}
