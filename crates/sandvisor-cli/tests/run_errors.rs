//! How a failed `sandvisor run` reports: the error chain once on stderr,
//! no log lines unless `--log` asks for them. No guest boots here; one test
//! starts QEMU on an empty kernel file, which QEMU refuses at once.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");

fn run(assets: &Path, runtime: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(extra)
        .args(["run", "--timeout", "20", "--", "true"])
        .env("SANDVISOR_ASSET_DIR", assets)
        .env("SANDVISOR_RUNTIME_DIR", runtime)
        .env_remove("SANDVISOR_LOG")
        .output()
        .expect("sandvisor runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tracing line: `<timestamp>  WARN target: ...`.
fn is_log_line(l: &str) -> bool {
    [" TRACE ", " DEBUG ", " INFO ", " WARN ", " ERROR "]
        .iter()
        .any(|lvl| l.contains(lvl))
}

#[test]
fn missing_assets_are_two_lines_at_most_naming_image_build() {
    let d = tempfile::tempdir().expect("tempdir");
    let out = run(&d.path().join("none"), &d.path().join("run"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!((1..=2).contains(&lines.len()), "{stderr}");
    assert!(!lines.iter().any(|l| is_log_line(l)), "{stderr}");
    assert!(stderr.contains("sandvisor image build"), "{stderr}");
}

#[test]
fn a_failed_start_says_its_error_once_and_logs_only_with_log() {
    let d = tempfile::tempdir().expect("tempdir");
    let assets = d.path().join("assets");
    std::fs::create_dir(&assets).expect("mkdir");
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        std::fs::write(assets.join(f), b"").expect("write");
    }
    let runtime = d.path().join("run");
    let out = run(&assets, &runtime, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("sandvisor: error:").count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sandvisor: error: cannot start sandbox"),
        "{stderr}"
    );
    assert!(!stderr.lines().any(is_log_line), "{stderr}");
    let log = std::fs::read_to_string(runtime.join("sandvisor.log")).expect("the log file");
    assert!(
        log.lines().any(is_log_line),
        "the library's lines are in the log: {log}"
    );

    let out = run(&assets, &runtime, &["--log", "warn"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.lines().any(is_log_line),
        "--log shows them: {stderr}"
    );
    assert_eq!(stderr.matches("sandvisor: error:").count(), 1, "{stderr}");
}
