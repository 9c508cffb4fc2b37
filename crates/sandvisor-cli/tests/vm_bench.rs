//! `sandvisor bench` end to end with the fewest samples: every section
//! measures, the JSON and the chart are written, and nothing is left
//! behind. Speed targets are the bench's business, not this test's.

use std::path::Path;
use std::process::Command;

fn tmp_entries(prefix: &str) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn qemus_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("qemu-system") && c.contains(&needle))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn vm_bench_measures_every_section_and_leaves_nothing() {
    let runtime = tempfile::tempdir().expect("runtime dir");
    let out = tempfile::tempdir().expect("output dir");
    let raw_before = tmp_entries("sandvisor-bench-");
    let result = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args([
            "bench",
            "--runs",
            "1",
            "--ops",
            "2",
            "--hotplugs",
            "1",
            "--lifecycles",
            "1",
            "--density",
            "2",
            "--out",
        ])
        .arg(out.path())
        .env("SANDVISOR_RUNTIME_DIR", runtime.path())
        .output()
        .expect("sandvisor bench runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // The table names the figures and their targets.
    for row in [
        "cold start: sandvisor",
        "raw QEMU",
        "pause",
        "hot-plug disk",
        "supervisor RSS",
        "started together",
    ] {
        assert!(stdout.contains(row), "table lacks {row:?}:\n{stdout}");
    }

    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json parses");
    assert!(
        json["failures"].as_array().is_some_and(Vec::is_empty),
        "{json:#}"
    );
    assert!(json["machine"]["qemu"]
        .as_str()
        .is_some_and(|q| q.contains("QEMU")));
    let figures = json["figures"].as_array().expect("figures");
    let figure = |key: &str| {
        figures
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("no figure {key} in {json:#}"))
    };
    for key in [
        "cold_start_sandvisor",
        "cold_start_raw_qemu",
        "overhead_ratio",
        "first_exec",
        "run_true_wall",
        "host_memory_probe",
        "exec_rtt",
        "pause",
        "resume",
        "hotplug_cpu_ack",
        "hotplug_cpu_seen",
        "hotplug_memory_ack",
        "hotplug_memory_seen",
        "hotplug_disk_ack",
        "hotplug_disk_seen",
        "vmm_rss",
        "vmm_pss",
        "supervisor_rss",
        "cpu_sandvisor_total",
        "density_all_ready",
        "density_each_ready",
        "guest_memory_used",
        "naive_boot_poweroff",
        "run_true_over_naive",
    ] {
        let f = figure(key);
        assert!(f["summary"]["n"].as_u64() >= Some(1), "{key}: {f:#}");
        assert!(f["summary"]["median"].as_f64() > Some(0.0), "{key}: {f:#}");
    }
    assert_eq!(figure("density_each_ready")["summary"]["n"], 2);
    assert_eq!(figure("density_failures")["summary"]["median"], 0.0);
    // The first exec comes after the agent answers; the guest's MemTotal
    // of an idle VMM is well below its 2 GiB.
    let median = |key: &str| figure(key)["summary"]["median"].as_f64().unwrap_or(0.0);
    assert!(median("first_exec") > median("cold_start_sandvisor"));
    assert!(median("vmm_rss") < 2048.0 && median("vmm_pss") <= median("vmm_rss") + 1.0);
    // The baseline ran the same QEMU command line.
    let setup = json["setup"].as_array().expect("setup");
    assert!(setup.iter().any(|l| l
        .as_str()
        .is_some_and(|l| l.starts_with("qemu ") && l.contains("-kernel"))));

    let svg = std::fs::read_to_string(out.path().join("bench.svg")).expect("bench.svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("cold start: sandvisor") && svg.contains("hotplug (milliseconds)"));

    // Nothing left: no VM directory, no QEMU, no raw-baseline directory.
    let vms: Vec<_> = std::fs::read_dir(runtime.path().join("vm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(vms.is_empty(), "VM directories left: {vms:?}");
    let sandboxes: Vec<_> = std::fs::read_dir(runtime.path())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The CLI's own log is not a sandbox's.
                .filter(|n| n != "vm" && n != "sandvisor.log")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        sandboxes.is_empty(),
        "sandbox directories left: {sandboxes:?}"
    );
    assert!(qemus_under(runtime.path()).is_empty());
    let raw_after: Vec<_> = tmp_entries("sandvisor-bench-")
        .into_iter()
        .filter(|n| !raw_before.contains(n))
        .collect();
    assert!(
        raw_after.is_empty(),
        "temporary directories left: {raw_after:?}"
    );
}
