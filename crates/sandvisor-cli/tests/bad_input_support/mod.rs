//! The bad-input table's runner: one case is a command, perhaps with a
//! config file written for it, that must fail with a message naming what is
//! wrong and what to do, without a panic, before a generous timeout.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one case may take before it is killed and reported: far above
/// what any case needs, so it only catches a hang.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// One bad input.
pub struct Case {
    /// What the case is about.
    pub name: &'static str,
    /// A config file to write; `{cfg}` in `args` names it.
    pub config: Option<&'static str>,
    /// The `sandvisor` arguments; `{cfg}` is the config file, `{dir}` a
    /// scratch directory, `{assets}` the guest asset directory.
    pub args: &'static [&'static str],
    /// Substrings the output (stderr and stdout) must contain.
    pub needles: &'static [&'static str],
}

/// What one case did.
pub struct Outcome {
    pub code: Option<i32>,
    pub output: String,
}

fn expand(s: &str, cfg: &Path, dir: &Path) -> String {
    s.replace("{cfg}", &cfg.display().to_string())
        .replace("{dir}", &dir.display().to_string())
        .replace(
            "{assets}",
            &sandvisor::paths::asset_dir().display().to_string(),
        )
}

/// Runs `args` with `envs`, killing it after [`CASE_TIMEOUT`].
pub fn run(args: &[String], envs: &[(&str, &Path)], stdin_null: bool) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandvisor"));
    cmd.args(args)
        .env_remove("SANDVISOR_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin_null {
        cmd.stdin(Stdio::null());
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("sandvisor starts");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    );
    let deadline = Instant::now() + CASE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = readers.0.join().expect("stdout reader");
    let stderr = readers.1.join().expect("stderr reader");
    let output = format!("{stderr}{stdout}");
    match status {
        None => Outcome {
            code: None,
            output: format!("killed after {CASE_TIMEOUT:?}\n{output}"),
        },
        Some(s) => Outcome {
            code: s.code(),
            output,
        },
    }
}

/// Runs every case with its own scratch directory, runtime directory
/// `runtime`, and `check` after each one; returns the failures, one
/// paragraph each.
pub fn run_table(
    cases: &[Case],
    runtime: &Path,
    mut after: impl FnMut(&Case) -> Option<String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let cfg = scratch.path().join("configuration.toml");
        if let Some(text) = case.config {
            std::fs::write(&cfg, expand(text, &cfg, scratch.path())).expect("config written");
        }
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| expand(a, &cfg, scratch.path()))
            .collect();
        let got = run(&args, &[("SANDVISOR_RUNTIME_DIR", runtime)], true);
        let mut why = Vec::new();
        match got.code {
            None => why.push("did not answer in time".to_string()),
            Some(0) => why.push("exited 0".to_string()),
            Some(101) => why.push("panicked (exit 101)".to_string()),
            Some(_) => {}
        }
        if got.output.contains("panicked") {
            why.push("output mentions a panic".to_string());
        }
        for needle in case.needles {
            if !got.output.contains(needle) {
                why.push(format!("output lacks {needle:?}"));
            }
        }
        if let Some(more) = after(case) {
            why.push(more);
        }
        if !why.is_empty() {
            failures.push(format!(
                "case {:?}: {}\n  sandvisor {}\n  {}",
                case.name,
                why.join("; "),
                args.join(" "),
                got.output.trim().replace('\n', "\n  ")
            ));
        }
    }
    failures
}
