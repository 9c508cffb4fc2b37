//! The VM cache's rows of the `factory` section: a cache server of
//! [`CACHED`] VMs against cold boots of the same config, in the same run.
//!
//! The server is `sandvisor factory init` on a Kata file that is the
//! section's cold file plus `vm_cache_number` and a private
//! `vm_cache_endpoint`, run as a child of the bench and stopped with
//! `factory destroy` (and killed, with what its ledger holds, on every
//! other path). Figures, each run after the cache is full again, so that
//! a cold boot never competes with a refill and every handout finds a VM
//! ready (the steady state a cache is for):
//!
//! - `sandvisor run -- true` as a whole process, cold and through the
//!   cache, one uncounted run of each, then [`RUNS`] of each alternating;
//!   their ratio of medians (target ≤ [`targets::RUN_RATIO`]);
//! - in the library, a cache handout to its first exec result (take,
//!   resume, agent, finish, `true`) against a cold boot to its first exec
//!   result (target ≤ [`targets::EXEC_RATIO`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandvisor_proto::ExecRequest;

use super::{io_err, ms, BenchError, BenchOptions, Recorder, Section};
use crate::bench::report::Unit;
use crate::factory::cache::{self, ledger, CacheClient};
use crate::factory::{self as vm_factory, FactoryVm};

/// Targets of the cache rows.
pub mod targets {
    /// `run -- true` through the cache over a cold one.
    pub const RUN_RATIO: f64 = 0.15;
    /// Handout to first exec result over a cold boot to it.
    pub const EXEC_RATIO: f64 = 0.10;
}

/// VMs the bench's cache keeps.
pub const CACHED: u32 = 2;
/// Counted runs of each kind.
const RUNS: usize = 3;
/// How long the cache may take to fill up.
const FILL_TIMEOUT: Duration = Duration::from_secs(180);

/// The cache server, destroyed with what it holds when dropped.
struct Server {
    cli: PathBuf,
    config: PathBuf,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(&self.cli)
            .args(["factory", "destroy", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the cache's Kata file: `cold_file` with `vm_cache_number` and
/// `vm_cache_endpoint` in its `[factory]` table.
fn write_cache_config(cold_file: &Path, path: &Path, endpoint: &Path) -> Result<(), BenchError> {
    let bad = |e: String| BenchError::Unexpected(format!("the cold config: {e}"));
    let text = std::fs::read_to_string(cold_file)
        .map_err(io_err(format!("read {}", cold_file.display())))?;
    let mut file: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let factory = file
        .entry("factory")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(factory) = factory else {
        return Err(bad("[factory] is not a table".into()));
    };
    factory.insert("enable_template".into(), toml::Value::Boolean(false));
    factory.insert(
        "vm_cache_number".into(),
        toml::Value::Integer(i64::from(CACHED)),
    );
    factory.insert(
        "vm_cache_endpoint".into(),
        toml::Value::String(endpoint.to_string_lossy().into_owned()),
    );
    let out = toml::to_string(&file).map_err(|e| bad(e.to_string()))?;
    std::fs::write(path, out).map_err(io_err(format!("write {}", path.display())))
}

/// Waits until the cache on `endpoint` holds [`CACHED`] VMs ready.
async fn wait_full(endpoint: &Path, server: &mut Server) -> Result<(), BenchError> {
    let deadline = Instant::now() + FILL_TIMEOUT;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(BenchError::Unexpected(format!(
                "the VM cache server exited: {status}"
            )));
        }
        if let Ok(mut c) = CacheClient::connect(endpoint, Duration::from_millis(500)).await {
            if c.status()
                .await
                .is_ok_and(|s| s.ready.len() >= CACHED as usize)
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Unexpected(format!(
                "the VM cache did not fill up within {FILL_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the cache rows; `cold_file` is the section's cold config, `dir`
/// its temporary directory.
pub(super) async fn rows(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    cold_file: &Path,
    dir: &Path,
) -> Result<(), BenchError> {
    let endpoint = dir.join("cache.sock");
    let cache_file = dir.join("cache.toml");
    write_cache_config(cold_file, &cache_file, &endpoint)?;
    let child = Command::new(&opts.cli)
        .args(["factory", "init", "--config"])
        .arg(&cache_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err(format!("run {} factory init", opts.cli.display())))?;
    let mut server = Server {
        cli: opts.cli.clone(),
        config: cache_file.clone(),
        child,
    };
    wait_full(&endpoint, &mut server).await?;
    progress(&format!("factory: VM cache of {CACHED} ready"));
    run_true(
        opts,
        rec,
        progress,
        cold_file,
        &cache_file,
        &endpoint,
        &mut server,
    )
    .await?;
    first_exec(opts, rec, progress, &cache_file, &endpoint, &mut server).await?;
    drop(server);
    // What the server recorded is gone with it.
    let left =
        ledger::Ledger::new(ledger::default_dir(&crate::paths::runtime_dir(), &endpoint)).vms();
    if !left.is_empty() {
        return Err(BenchError::Unexpected(format!(
            "{} cached VM(s) left after destroy",
            left.len()
        )));
    }
    Ok(())
}

/// `run -- true` as a process, cold against the cache.
async fn run_true(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    cold_file: &Path,
    cache_file: &Path,
    endpoint: &Path,
    server: &mut Server,
) -> Result<(), BenchError> {
    let time = |file: &Path| -> Result<Duration, BenchError> {
        let f = file.to_string_lossy();
        let started = Instant::now();
        super::cli::cli(opts, &["run", "--config", &f, "--", "true"])?;
        Ok(started.elapsed())
    };
    // One uncounted run of each.
    time(cold_file)?;
    wait_full(endpoint, server).await?;
    time(cache_file)?;
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        for is_cold in [i % 2 == 0, i % 2 != 0] {
            wait_full(endpoint, server).await?;
            let d = time(if is_cold { cold_file } else { cache_file })?;
            progress(&format!(
                "factory: run -- true {} {:.0} ms",
                if is_cold { "cold" } else { "via the cache" },
                ms(d)
            ));
            let (key, label, v) = if is_cold {
                (
                    "cache_run_true_cold",
                    "run -- true, cold (cache rows)",
                    &mut cold,
                )
            } else {
                (
                    "cache_run_true_cache",
                    "run -- true, through the VM cache",
                    &mut cached,
                )
            };
            v.push(ms(d));
            rec.add(Section::Factory, key, label, Unit::Millis, None, ms(d));
        }
    }
    let ratio = median(&cached) / median(&cold);
    progress(&format!("factory: run -- true cache/cold = {ratio:.3}"));
    rec.add(
        Section::Factory,
        "cache_run_true_ratio",
        "run -- true, VM cache over cold (medians)",
        Unit::Ratio,
        Some(targets::RUN_RATIO),
        ratio,
    );
    Ok(())
}

/// Runs `true` in `vm`; how long after `started` its result came. The VM
/// is discarded after.
async fn exec_true(vm: FactoryVm, started: Instant) -> Result<Duration, BenchError> {
    let req = ExecRequest {
        argv: vec!["true".into()],
        ..ExecRequest::default()
    };
    let ran = vm.agent.exec(req, |_| {}, |_| {}).await;
    let elapsed = started.elapsed();
    vm.discard().await;
    match ran {
        Ok(o) if o.status.shell_code() == 0 => Ok(elapsed),
        Ok(o) => Err(BenchError::Unexpected(format!(
            "true ended with {:?}",
            o.status
        ))),
        Err(e) => Err(BenchError::Unexpected(format!("exec true: {e}"))),
    }
}

/// A handout to its first exec result against a cold boot to it.
async fn first_exec(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    cache_file: &Path,
    endpoint: &Path,
    server: &mut Server,
) -> Result<(), BenchError> {
    let mut rc = crate::config::kata::load_config(Some(cache_file), None)
        .map_err(|e| BenchError::Unexpected(e.to_string()))?;
    rc.validate()
        .map_err(|e| BenchError::Unexpected(e.to_string()))?;
    let (kind, config) = (rc.hypervisor, rc.config.clone());
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        for is_cold in [i % 2 == 0, i % 2 != 0] {
            wait_full(endpoint, server).await?;
            let started = Instant::now();
            let vm = if is_cold {
                let id = crate::sandbox::new_sandbox_id();
                vm_factory::boot_direct(&id, kind, &config, opts.boot_timeout).await?
            } else {
                cache::take(endpoint, kind, &config, opts.boot_timeout)
                    .await
                    .map_err(|e| BenchError::Unexpected(cache::server::error_chain(&e)))?
            };
            let d = exec_true(vm, started).await?;
            let (key, label, v) = if is_cold {
                (
                    "cache_first_exec_cold",
                    "cold boot to first exec result",
                    &mut cold,
                )
            } else {
                (
                    "cache_first_exec_cache",
                    "VM cache handout to first exec result",
                    &mut cached,
                )
            };
            v.push(ms(d));
            rec.add(Section::Factory, key, label, Unit::Millis, None, ms(d));
        }
    }
    let ratio = median(&cached) / median(&cold);
    progress(&format!("factory: first exec cache/cold = {ratio:.3}"));
    rec.add(
        Section::Factory,
        "cache_first_exec_ratio",
        "first exec result, VM cache handout over cold boot (medians)",
        Unit::Ratio,
        Some(targets::EXEC_RATIO),
        ratio,
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
