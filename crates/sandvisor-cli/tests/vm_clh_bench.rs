//! `sandvisor bench --only clh` with the fewest samples: every Cloud
//! Hypervisor figure measures (spawn to vmm.ping, create+boot, pause,
//! resume, disk, vCPU and memory hot-plug acknowledgements), the JSON is
//! written, and no folder or CH process is left. Needs
//! `$SANDVISOR_VMM_DIR/cloud-hypervisor`. Speed is the bench's business,
//! not this test's.

use std::process::Command;

fn left_in_tmp() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("svb") && !n.starts_with("svbf"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn vm_clh_bench_measures_every_cloud_hypervisor_figure_and_leaves_nothing() {
    let vmm = std::env::var_os("SANDVISOR_VMM_DIR").unwrap_or_else(|| {
        panic!("SANDVISOR_VMM_DIR is not set: point it at the folder holding cloud-hypervisor")
    });
    let ch = std::path::Path::new(&vmm).join("cloud-hypervisor");
    assert!(ch.is_file(), "{} is missing", ch.display());
    let before = left_in_tmp();
    let out = tempfile::tempdir().expect("output dir");
    let result = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["bench", "--only", "clh", "--runs", "1", "--ops", "2"])
        .args(["--hotplugs", "1", "--out"])
        .arg(out.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sandvisor bench runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).expect("bench.json"))
            .expect("bench.json is JSON");
    assert!(
        json["failures"].as_array().is_some_and(Vec::is_empty),
        "{json:#}"
    );
    let figures = json["figures"].as_array().expect("figures");
    for key in [
        "clh_vmm_ready",
        "clh_create_boot",
        "clh_pause",
        "clh_resume",
        "clh_hotplug_disk_ack",
        "clh_hotplug_cpu_ack",
        "clh_hotplug_mem_ack",
    ] {
        let f = figures
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("no figure {key} in {json:#}"));
        assert!(f["summary"]["median"].as_f64() > Some(0.0), "{key}: {f:#}");
    }
    let left: Vec<_> = left_in_tmp()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert!(left.is_empty(), "bench folders left: {left:?}");
}
