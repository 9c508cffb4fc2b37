//! `sandvisor completions` and `sandvisor man` come from the CLI definition:
//! the flags `run` takes show up in each, and the pages are valid roff.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sandvisor");

fn stdout(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("sandvisor runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completions_know_run_and_its_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&["completions", shell]);
        for word in ["run", "volume", "publish", "exec"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let bash = stdout(&["completions", "bash"]);
    let check = Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .expect("bash runs");
    assert!(check.success(), "the bash script parses");
    assert!(!Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("runs")
        .status
        .success());
}

#[test]
fn man_pages_cover_each_command_and_hide_the_supervisor() {
    let page = stdout(&["man"]);
    assert!(page.contains(".TH sandvisor 1"), "{page}");
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("man1");
    stdout(&["man", "--dir", &dir.display().to_string()]);
    let run = std::fs::read_to_string(dir.join("sandvisor-run.1")).expect("a page for run");
    assert!(run.contains("volume") && run.contains("publish"), "{run}");
    assert!(dir.join("sandvisor-image-build.1").is_file());
    assert!(!dir.join("sandvisor-supervise.1").exists());
}
