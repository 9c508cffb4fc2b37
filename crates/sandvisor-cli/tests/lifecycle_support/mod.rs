//! Drives the `sandvisor` binary against a private runtime directory, and
//! leaves no supervisor or VMM behind, pass or fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A runtime directory of its own and the binary to run in it.
pub struct Env {
    dir: tempfile::TempDir,
    extra: Vec<(String, String)>,
}

/// What one command did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        &self.stdout
    }

    /// Asserts failure with `needle` in stderr.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) {
        assert_ne!(self.code, Some(0), "command succeeded: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Env {
    /// A fresh runtime directory under /tmp: short, so socket paths fit.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("svl")
            .tempdir_in("/tmp")
            .expect("temp dir");
        Env {
            dir,
            extra: Vec::new(),
        }
    }

    /// Sets an environment variable for every command.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandvisor"));
        cmd.env("SANDVISOR_RUNTIME_DIR", self.dir.path())
            .env_remove("SANDVISOR_LOG")
            .env_remove("SANDVISOR_LOCK_TIMEOUT");
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `sandvisor ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command()
            .args(args)
            .output()
            .expect("sandvisor runs")
            .into()
    }

    /// `state --json` of `id`.
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        let out = self.run(&["state", id, "--json"]);
        serde_json::from_str(out.ok()).expect("state is JSON")
    }

    /// Waits up to `timeout` for `state` of `id` to have `status`.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(id);
            if state["status"] == status {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox {id} did not become {status}: {state:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ids of every sandbox with a record.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.ids() {
            // Kill whatever a failed test left running.
            let path = self.sandbox_dir(&id).join("state.json");
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(state) = serde_json::from_str::<Value>(&text) {
                    for key in ["vmm", "supervisor"] {
                        if let Some(pid) = state[key]["pid"].as_u64() {
                            kill(pid as u32, "KILL");
                        }
                    }
                }
            }
            let _ = self.run(&["delete", "--force", &id]);
        }
    }
}

/// Sends `signal` (a name such as `KILL`) to `pid`, with the shell's
/// builtin `kill`.
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .output();
}

/// Whether `pid` runs (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `pid` to end.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The pid in `state[key]["pid"]`.
#[track_caller]
pub fn pid(state: &Value, key: &str) -> u32 {
    state[key]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no {key} pid in {state:#}"))
}
