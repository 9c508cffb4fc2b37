//! The process side of `sandvisor run` and `exec`, end to end with QEMU
//! guests from the asset directory: environment, working directory and
//! user; stdin streamed with `-i`; a terminal with `-t`, driven in tmux;
//! exit codes; signals passed on.
//!
//! Every test here boots a Linux guest: each assertion on the command's
//! output or exit code needs the guest agent running the command. The
//! exceptions are named where they are. Fails, not skips, when the assets
//! (or tmux, which `scripts/setup.sh` installs) are missing. The tests
//! take turns: each boots its own VM.

mod lifecycle_support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lifecycle_support::Env;

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_assets() {
    let dir = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            dir.join(f).is_file(),
            "guest asset {} is missing: run sandvisor image build",
            dir.join(f).display()
        );
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sandvisor run ARGS` in the private runtime directory of `env`, with
/// `stdin`; `None` is /dev/null.
fn run(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = env
        .command()
        .arg("run")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        // On a thread: the command's output must be read meanwhile.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("sandvisor ends");
    assert_no_vm_left(env.runtime_dir());
    out
}

/// Nothing of a `run` is left: no VM directory, no QEMU naming the
/// runtime directory (no guest needed for this check).
#[track_caller]
fn assert_no_vm_left(runtime: &Path) {
    let vm_dir = runtime.join("vm");
    let left: Vec<_> = std::fs::read_dir(&vm_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM files left behind: {left:?}");
    let needle = runtime.to_string_lossy().into_owned();
    let qemus: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| text(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&needle))
        .collect();
    assert!(qemus.is_empty(), "QEMU left running: {qemus:?}");
}

#[test]
fn vm_run_sets_environment_workdir_and_user() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let env_file = env.runtime_dir().join("vars.env");
    std::fs::write(&env_file, "# from a file\nFROM_FILE=f\nA=overridden\n").expect("env file");
    let out = run(
        &env,
        &[
            "--env-file",
            env_file.to_str().expect("utf-8 path"),
            "-e",
            "A=b",
            "--",
            "sh",
            "-c",
            "echo $A $FROM_FILE",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "b f\n");

    let out = run(&env, &["-w", "/tmp", "--", "pwd"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/tmp\n");

    let out = run(&env, &["-u", "1000:1000", "--", "id"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("uid=1000 gid=1000"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn vm_run_streams_stdin_with_dash_i() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let lines: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    let out = run(&env, &["-i", "--", "wc", "-l"], Some(lines.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "20000");

    // Many windows' worth of bytes arrive whole and in order.
    let data: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let host_sum = {
        let mut md5 = Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("md5sum");
        md5.stdin
            .take()
            .expect("piped")
            .write_all(&data)
            .expect("written");
        text(&md5.wait_with_output().expect("md5sum ends").stdout)
    };
    let out = run(&env, &["-i", "--", "md5sum"], Some(&data));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), host_sum);
}

#[test]
fn vm_run_exits_as_the_shell_does() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let out = run(&env, &["--", "/no/such/cmd"], None);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/no/such/cmd"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&env, &["--", "/etc/passwd"], None);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let out = run(&env, &["--", "sh", "-c", "kill -TERM $$"], None);
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
}

/// Starts `run -- sh -c SCRIPT` (which prints `started` first), waits for
/// that line, sends SIGINT to `run`, and returns how `run` ended, with the
/// stdout after that line.
fn interrupt_run(env: &Env, script: &str) -> Output {
    let mut child = env
        .command()
        .args(["run", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line");
    assert_eq!(line, "started\n");
    lifecycle_support::kill(child.id(), "INT");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).expect("the rest of stdout");
    let mut out = child.wait_with_output().expect("sandvisor ends");
    out.stdout = rest;
    assert_no_vm_left(env.runtime_dir());
    out
}

#[test]
fn vm_run_passes_sigint_on_then_tears_down() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    // The guest's sleep ends by the signal: 128 + SIGINT.
    let out = interrupt_run(&env, "echo started; exec sleep 100");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    // The guest command sees the signal and ends as it chooses.
    let out = interrupt_run(
        &env,
        "trap 'echo got-int; exit 7' INT; echo started; while :; do sleep 1; done",
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got-int\n");
    // A command that ignores it is torn down with its sandbox after the
    // grace; `run` says so.
    let out = interrupt_run(&env, "trap '' INT; echo started; sleep 100");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
}

/// A tmux server of its own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cols: u16, rows: u16, env: &Env) -> Tmux {
        let socket = format!("sv-test-{}", std::process::id());
        let tmux = Tmux { socket };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "t", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .args(["sh", "-c"])
            .arg(format!(
                "cd {} && exec env -i PATH=/usr/bin:/bin TERM=xterm SANDVISOR_RUNTIME_DIR={} {} sh",
                env.runtime_dir().display(),
                env.runtime_dir().display(),
                asset_env(),
            ))
            .status()
            .expect("tmux at /usr/bin/tmux: run scripts/setup.sh");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn type_line(&self, line: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", "-l", line])
            .status()
            .expect("tmux");
        assert!(ok.success());
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t", "Enter"])
            .status()
            .expect("tmux");
        assert!(ok.success());
    }

    fn screen(&self) -> String {
        text(
            &self
                .cmd()
                .args(["capture-pane", "-p", "-t", "t"])
                .output()
                .expect("tmux")
                .stdout,
        )
    }

    /// Waits up to `timeout` for the screen to show `needle`.
    #[track_caller]
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_until(needle, timeout, |screen| screen.contains(needle))
    }

    /// Waits up to `timeout` for a line of the screen to be `line` (tmux
    /// drops the spaces that end a line).
    #[track_caller]
    fn wait_for_line(&self, line: &str, timeout: Duration) -> String {
        self.wait_until(line, timeout, |screen| {
            screen.lines().any(|l| l.trim_end() == line)
        })
    }

    #[track_caller]
    fn wait_until(&self, needle: &str, timeout: Duration, seen: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if seen(&screen) {
                // Shown when a later step fails.
                eprintln!("screen with {needle:?}:\n{screen}");
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The asset directory for a shell started with an empty environment.
fn asset_env() -> String {
    format!(
        "SANDVISOR_ASSET_DIR={}",
        sandvisor::paths::asset_dir().display()
    )
}

#[test]
fn vm_run_dash_t_gives_a_terminal_and_puts_the_host_one_back() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let tmux = Tmux::start(120, 30, &env);
    let bin = env!("CARGO_BIN_EXE_sandvisor");
    // $WHERE tells the guest's shell from the host's, whose terminal is a
    // /dev/pts of the same size too.
    tmux.type_line(&format!(
        "{bin} run -t -e WHERE=guest -- sh; echo run-exit=$?"
    ));
    // The guest's shell prompt.
    tmux.wait_for_line("/ #", Duration::from_secs(120));
    tmux.type_line("echo in-$WHERE $(tty) $(stty size)");
    let screen = tmux.wait_for("in-guest /dev/pts/", Duration::from_secs(30));
    assert!(screen.contains(" 30 120"), "{screen}");
    // Ctrl-C goes to the guest's foreground process, not to run.
    tmux.type_line("sleep 60");
    std::thread::sleep(Duration::from_secs(1));
    let ok = tmux
        .cmd()
        .args(["send-keys", "-t", "t", "C-c"])
        .status()
        .expect("tmux");
    assert!(ok.success());
    tmux.type_line("echo $WHERE-sleep-ended=$?");
    tmux.wait_for("guest-sleep-ended=130", Duration::from_secs(30));
    // A new window size reaches the guest.
    let ok = tmux
        .cmd()
        .args(["resize-window", "-t", "t", "-x", "100", "-y", "40"])
        .status()
        .expect("tmux");
    assert!(ok.success());
    std::thread::sleep(Duration::from_millis(500));
    tmux.type_line("echo $WHERE-size $(stty size)");
    tmux.wait_for("guest-size 40 100", Duration::from_secs(30));
    tmux.type_line("exit");
    tmux.wait_for("run-exit=0", Duration::from_secs(60));
    // A command that a signal ends puts the terminal back too.
    tmux.type_line(&format!(
        "{bin} run -t -- sh -c 'kill -KILL $$'; echo second-exit=$?"
    ));
    tmux.wait_for("second-exit=137", Duration::from_secs(120));
    // The host's terminal is cooked again (no guest needed for this).
    tmux.type_line("stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | tr '\\n' ,; echo");
    tmux.wait_for("icanon,echo,", Duration::from_secs(10));
    assert_no_vm_left(env.runtime_dir());
}

#[test]
fn vm_exec_takes_environment_stdin_and_exits_as_the_shell_does() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let id = "io";
    assert_eq!(
        env.run(&["create", "--hypervisor", "qemu", "--id", id])
            .ok()
            .trim(),
        id
    );
    env.run(&["start", id, "--timeout", "120"]).ok();

    let out = env.run(&[
        "exec",
        id,
        "-e",
        "A=b",
        "-w",
        "/tmp",
        "-u",
        "1000",
        "--",
        "sh",
        "-c",
        "echo $A; pwd; id -u",
    ]);
    assert_eq!(out.ok(), "b\n/tmp\n1000\n");

    let lines: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    let mut child = env
        .command()
        .args(["exec", id, "-i", "--", "wc", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs");
    let mut pipe = child.stdin.take().expect("piped");
    std::thread::spawn(move || {
        let _ = pipe.write_all(lines.as_bytes());
    });
    let out = child.wait_with_output().expect("exec ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "20000");

    assert_eq!(env.run(&["exec", id, "--", "/no/such/cmd"]).code, Some(127));
    assert_eq!(env.run(&["exec", id, "--", "/etc/passwd"]).code, Some(126));
    assert_eq!(
        env.run(&["exec", id, "--", "sh", "-c", "kill -TERM $$"])
            .code,
        Some(143)
    );

    // SIGTERM to exec reaches the guest process, which ends by it.
    let mut child = env
        .command()
        .args(["exec", id, "--", "sh", "-c", "echo started; exec sleep 100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line");
    assert_eq!(line, "started\n");
    lifecycle_support::kill(child.id(), "TERM");
    let out = child.wait_with_output().expect("exec ends");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    // The sandbox runs on.
    assert_eq!(env.run(&["exec", id, "--", "true"]).code, Some(0));
    env.run(&["delete", "--force", id]).ok();
}
