//! The cold section: a sandbox from nothing to its agent answering and its
//! first exec, against raw QEMU and against `sandvisor run` as a process;
//! `sandvisor run -- true` against a naive QEMU boot of the same kernel to
//! power-off ([`super::naive`]); and, with
//! [`BenchOptions::compare_assets`], the same for a second kernel, in the
//! same run, interleaved with the first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cli::cli_run_true;
use super::host::{HostProbe, HOST_PROBE_KEY};
use super::naive::Naive;
use super::raw::raw_boot;
use super::report::Unit;
use super::{
    guest_sh, guest_true, ms, resolve_assets, targets, BenchError, BenchOptions, Recorder, Section,
};
use crate::backends::new_hypervisor;
use crate::sandbox::{new_sandbox_id, Sandbox};

/// Memory the guest uses, in MiB: `MemTotal - MemAvailable` of
/// `/proc/meminfo`.
pub fn guest_memory_used_mib(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    Some((field("MemTotal")? - field("MemAvailable")?) / 1024.0)
}

/// One kernel the cold section measures.
#[derive(Debug, Clone)]
pub(super) struct KernelUnderTest {
    /// Its asset directory; `None`: the default assets.
    pub assets: Option<PathBuf>,
    /// Appended to the figures' keys: empty for the default assets.
    pub key_suffix: String,
    /// Its kernel release, for the labels.
    pub release: String,
}

impl KernelUnderTest {
    fn key(&self, key: &str) -> String {
        format!("{key}{}", self.key_suffix)
    }

    fn label(&self, label: &str, compared: bool) -> String {
        if compared {
            format!("[{}] {label}", self.release)
        } else {
            label.to_string()
        }
    }
}

/// The kernel release an asset directory's manifest records, else the
/// directory's path.
fn release_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(crate::image::MANIFEST_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<crate::image::Manifest>(&t).ok())
        .and_then(|m| m.kernel_release)
        .unwrap_or_else(|| dir.display().to_string())
}

/// The default assets, then the compared ones.
pub(super) fn kernels(opts: &BenchOptions) -> Vec<KernelUnderTest> {
    let mut out = vec![KernelUnderTest {
        assets: None,
        key_suffix: String::new(),
        release: release_of(&crate::paths::asset_dir()),
    }];
    if let Some(dir) = &opts.compare_assets {
        out.push(KernelUnderTest {
            assets: Some(dir.clone()),
            key_suffix: "@compared".into(),
            release: release_of(dir),
        });
    }
    out
}

/// What one in-process boot measured.
struct Boot {
    up: Duration,
    first_exec: Duration,
    memory_mib: Option<f64>,
}

/// One `sandvisor run`'s worth of work, in process: returns the time to
/// the agent answering and to the first exec's exit, and the guest's
/// memory use after it.
async fn sandvisor_boot(opts: &BenchOptions, assets: Option<&Path>) -> Result<Boot, BenchError> {
    let started = Instant::now();
    let (kind, config) = resolve_assets(opts, assets)?;
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
    let memory = match first {
        Ok(()) => guest_sh(sandbox.agent(), "cat /proc/meminfo").await,
        Err(e) => Err(e),
    };
    match memory {
        Ok(meminfo) => {
            sandbox.shutdown().await?;
            Ok(Boot {
                up,
                first_exec,
                memory_mib: guest_memory_used_mib(&meminfo),
            })
        }
        Err(e) => {
            sandbox.kill().await;
            Err(e)
        }
    }
}

pub(super) async fn cold(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let kernels = kernels(opts);
    let compared = kernels.len() > 1;
    progress("cold: warm-up boots (not counted)");
    for k in &kernels {
        sandvisor_boot(opts, k.assets.as_deref()).await?;
    }
    raw_boot(opts).await?;
    let probe = HostProbe::new();
    let mut probes = Vec::with_capacity(2 * opts.boots);
    for i in 0..opts.boots {
        // Alternate which goes first, so that what one leaves behind (a
        // VMM's memory being freed, caches) weighs on both equally.
        let (boot, raw) = if i % 2 == 0 {
            probes.push(probe.time());
            let s = sandvisor_boot(opts, None).await?;
            probes.push(probe.time());
            (s, raw_boot(opts).await?)
        } else {
            probes.push(probe.time());
            let r = raw_boot(opts).await?;
            probes.push(probe.time());
            (sandvisor_boot(opts, None).await?, r)
        };
        let (up, first) = (boot.up, boot.first_exec);
        progress(&format!(
            "cold {}/{}: sandvisor {:.3}s, raw QEMU {:.3}s, first exec {:.3}s",
            i + 1,
            opts.boots,
            up.as_secs_f64(),
            raw.as_secs_f64(),
            first.as_secs_f64()
        ));
        record_boot(rec, &kernels[0], compared, &boot);
        // The compared kernel, between this pair and the next.
        for k in kernels.iter().skip(1) {
            let b = sandvisor_boot(opts, k.assets.as_deref()).await?;
            progress(&format!(
                "cold {}/{} [{}]: sandvisor {:.3}s, first exec {:.3}s",
                i + 1,
                opts.boots,
                k.release,
                b.up.as_secs_f64(),
                b.first_exec.as_secs_f64()
            ));
            record_boot(rec, k, compared, &b);
        }
        let c = Section::Cold;
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
    let mut naive = Vec::with_capacity(kernels.len());
    for k in &kernels {
        let (_, config) = resolve_assets(opts, k.assets.as_deref())?;
        let (Some(qemu), Some(kernel)) = (&config.hypervisor_path, &config.kernel_path) else {
            return Err(BenchError::Raw(
                "the config names no QEMU binary or kernel for the naive boot".into(),
            ));
        };
        naive.push(Naive::new(
            qemu,
            kernel,
            config.num_vcpus,
            config.memory_size,
        )?);
    }
    for n in &naive {
        n.boot(opts.boot_timeout).await?;
    }
    for i in 0..opts.boots {
        for (k, n) in kernels.iter().zip(&naive) {
            // Alternate which goes first, as above.
            let (wall, plain) = if i % 2 == 0 {
                let w = cli_run_true(opts, k.assets.as_deref())?;
                (w, n.boot(opts.boot_timeout).await?)
            } else {
                let p = n.boot(opts.boot_timeout).await?;
                (cli_run_true(opts, k.assets.as_deref())?, p)
            };
            progress(&format!(
                "cold: `sandvisor run -- true` {}/{} [{}]: {:.3}s, naive boot to power-off {:.3}s",
                i + 1,
                opts.boots,
                k.release,
                wall.as_secs_f64(),
                plain.as_secs_f64()
            ));
            rec.add(
                Section::Cold,
                &k.key("run_true_wall"),
                &k.label("`sandvisor run -- true`, whole process", compared),
                Unit::Seconds,
                None,
                wall.as_secs_f64(),
            );
            rec.add(
                Section::Cold,
                &k.key("naive_boot_poweroff"),
                &k.label("naive QEMU boot, busybox initrd, to power-off", compared),
                Unit::Seconds,
                None,
                plain.as_secs_f64(),
            );
            rec.add(
                Section::Cold,
                &k.key("run_true_over_naive"),
                &k.label("`run -- true` / naive boot, per pair", compared),
                Unit::Ratio,
                Some(targets::RUN_TRUE_OVER_NAIVE),
                wall.as_secs_f64() / plain.as_secs_f64(),
            );
        }
    }
    Ok(())
}

/// Records one in-process boot of kernel `k`.
fn record_boot(rec: &mut Recorder, k: &KernelUnderTest, compared: bool, b: &Boot) {
    let c = Section::Cold;
    rec.add(
        c,
        &k.key("cold_start_sandvisor"),
        &k.label(
            "cold start: sandvisor run's start to agent answering",
            compared,
        ),
        Unit::Seconds,
        Some(targets::COLD_START_S),
        b.up.as_secs_f64(),
    );
    rec.add(
        c,
        &k.key("first_exec"),
        &k.label("first exec result: run's start to exit status", compared),
        Unit::Seconds,
        None,
        b.first_exec.as_secs_f64(),
    );
    if let Some(mib) = b.memory_mib {
        rec.add(
            c,
            &k.key("guest_memory_used"),
            &k.label(
                "guest memory used after the first exec (MemTotal - MemAvailable)",
                compared,
            ),
            Unit::Mib,
            None,
            mib,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memory_is_total_less_available() {
        let meminfo = "MemTotal:        2000000 kB\nMemFree:         1900000 kB\nMemAvailable:    1897600 kB\n";
        assert_eq!(guest_memory_used_mib(meminfo), Some(100.0));
        assert_eq!(guest_memory_used_mib("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn the_compared_kernel_has_its_own_keys_and_labels() {
        let k = KernelUnderTest {
            assets: Some("/a".into()),
            key_suffix: "@compared".into(),
            release: "6.1.192-sandvisor".into(),
        };
        assert_eq!(k.key("run_true_wall"), "run_true_wall@compared");
        assert_eq!(
            k.label("cold start", true),
            "[6.1.192-sandvisor] cold start"
        );
        assert_eq!(k.label("cold start", false), "cold start");
    }
}
