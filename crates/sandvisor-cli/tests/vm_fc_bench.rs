//! `sandvisor bench --only firecracker` with the fewest samples: every
//! Firecracker figure measures (API boot, jailed boot, pause, resume,
//! snapshot, restore, hot-plug ack), the JSON is written, and no VM
//! directory, jail or Firecracker process is left. Needs
//! `$SANDVISOR_VMM_DIR/{firecracker,jailer}`. Speed is the bench's
//! business, not this test's.

use std::process::Command;

#[test]
fn vm_fc_bench_measures_every_firecracker_figure_and_leaves_nothing() {
    let vmm = std::env::var_os("SANDVISOR_VMM_DIR").unwrap_or_else(|| {
        panic!(
            "SANDVISOR_VMM_DIR is not set: point it at the folder holding firecracker and jailer"
        )
    });
    for b in ["firecracker", "jailer"] {
        let p = std::path::Path::new(&vmm).join(b);
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let runtime = tempfile::tempdir().expect("runtime dir");
    let out = tempfile::tempdir().expect("output dir");
    let result = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args([
            "bench",
            "--only",
            "firecracker",
            "--runs",
            "1",
            "--ops",
            "2",
        ])
        .args(["--hotplugs", "1", "--out"])
        .arg(out.path())
        .env("SANDVISOR_RUNTIME_DIR", runtime.path())
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
    let keys: Vec<&str> = json["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    for key in [
        "fc_boot",
        "fc_boot_jailed",
        "fc_pause",
        "fc_resume",
        "fc_snapshot",
        "fc_restore",
        "fc_hotplug_ack",
    ] {
        assert!(keys.contains(&key), "{key} measured: {keys:?}");
    }
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("svbf"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "bench folders left: {left:?}");
}
