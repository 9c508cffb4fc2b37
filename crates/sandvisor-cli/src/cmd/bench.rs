//! `sandvisor bench`: the measurements are [`sandvisor::bench`]; this file
//! maps flags to options and writes the table, the JSON and the chart.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sandvisor::bench::{self, BenchOptions, Section};

use super::CmdResult;

/// Arguments of `sandvisor bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Counted boots per boot figure (sandvisor, raw QEMU, `run`); one
    /// uncounted warm-up of each comes first.
    #[arg(long, default_value_t = BenchOptions::default().boots)]
    pub runs: usize,
    /// Samples of cheap operations: exec round trip, pause, resume.
    #[arg(long, default_value_t = BenchOptions::default().ops)]
    pub ops: usize,
    /// Hot-plugs of each kind: vCPU, 128 MiB DIMM, disk.
    #[arg(long, default_value_t = BenchOptions::default().hotplugs)]
    pub hotplugs: usize,
    /// Sandbox lifecycles through the CLI, for memory and CPU time.
    #[arg(long, default_value_t = BenchOptions::default().lifecycles)]
    pub lifecycles: usize,
    /// Sandboxes started together.
    #[arg(long, default_value_t = BenchOptions::default().density)]
    pub density: usize,
    /// Only these sections (comma-separated): cold, lifecycle, hotplug,
    /// memory, density; and firecracker, clh and factory, run only when
    /// named.
    #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
    pub only: Vec<Section>,
    /// Where `bench.json` and `bench.svg` go.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub out: PathBuf,
    /// Seconds one VM may take to answer.
    #[arg(long, default_value_t = BenchOptions::default().boot_timeout.as_secs())]
    pub timeout: u64,
    /// A second asset directory (such as the cloud kernel's,
    /// `<asset dir>/cloud-kernel`) measured beside the default assets in
    /// the cold section.
    #[arg(long, value_name = "DIR")]
    pub compare_assets: Option<PathBuf>,
}

/// Runs `sandvisor bench`.
pub fn run(args: BenchArgs) -> CmdResult {
    if args.runs == 0 || args.ops == 0 || args.lifecycles == 0 || args.density == 0 {
        return Err("--runs, --ops, --lifecycles and --density must be at least 1".into());
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create output directory {}: {e}", args.out.display()))?;
    let opts = BenchOptions {
        boots: args.runs,
        ops: args.ops,
        hotplugs: args.hotplugs,
        lifecycles: args.lifecycles,
        density: args.density,
        sections: if args.only.is_empty() {
            Section::ALL.into_iter().collect()
        } else {
            args.only.iter().copied().collect()
        },
        cli: std::env::current_exe()?,
        boot_timeout: Duration::from_secs(args.timeout),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        compare_assets: args.compare_assets,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut progress = |line: &str| eprintln!("bench: {line}");
    let report = runtime.block_on(async {
        tokio::select! {
            r = bench::run(&opts, &mut progress) => Ok(r),
            () = super::run::interrupted() => Err(()),
        }
    });
    let report = match report {
        Ok(r) => r?,
        Err(()) => {
            // Dropping the run killed the VMs it owned and removed their
            // directories; sandboxes made through the CLI have their own
            // supervisors.
            let deleted = bench::delete_cli_sandboxes(&opts.cli);
            eprintln!(
                "sandvisor: bench interrupted; every VM it started is stopped{}",
                if deleted.is_empty() {
                    String::new()
                } else {
                    format!(" (deleted {})", deleted.join(", "))
                }
            );
            return Ok(ExitCode::from(130));
        }
    };
    let json = args.out.join("bench.json");
    let svg = args.out.join("bench.svg");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    std::fs::write(&svg, bench::chart::render(&report))
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    println!(
        "sandvisor bench on {} ({} CPUs, {} MiB, {}, accel {})\n",
        report.machine.cpu_model,
        report.machine.cpus,
        report.machine.memory_mib,
        report.machine.qemu,
        report.machine.accel
    );
    print!("{}", report.table());
    if let Some(note) = report.steadiness_note() {
        println!("\n{note}");
    }
    println!("\nwrote {} and {}", json.display(), svg.display());
    let missed: Vec<&str> = report
        .figures
        .iter()
        .filter(|f| f.meets_target() == Some(false))
        .map(|f| f.key.as_str())
        .collect();
    if missed.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets missed: {}", missed.join(", "));
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
