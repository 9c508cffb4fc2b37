//! `sandvisor run` with volumes and a user-mode network, end to end: a
//! real VM from the default assets under QEMU.
//!
//! Every test here boots a Linux guest (the volume and network assertions
//! need the guest's virtio-fs, mounts, NIC and busybox); they run one at a
//! time. Volumes need root (host bind mounts, QEMU's virtiofsd). Network
//! traffic goes only between the host's loopback and the guest.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

fn spawn(runtime: &Path, args: &[&str]) -> Child {
    require_assets();
    Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .arg("run")
        .args(args)
        .env("SANDVISOR_RUNTIME_DIR", runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sandvisor runs")
}

/// Nothing left in the runtime directory: no VM, no shared root.
fn assert_nothing_left(runtime: &Path) {
    for sub in ["vm", "volumes"] {
        let left: Vec<_> = std::fs::read_dir(runtime.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
}

fn run(args: &[&str]) -> Output {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tempfile::tempdir().expect("tempdir");
    let out = spawn(runtime.path(), args)
        .wait_with_output()
        .expect("sandvisor ends");
    assert_nothing_left(runtime.path());
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn host_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.path().join("f"), b"from the host\n").expect("write");
    d
}

#[test]
fn vm_volume_is_read_and_written_through() {
    let d = host_dir();
    let spec = format!("{}:/mnt/x", d.path().display());
    let out = run(&[
        "-v",
        &spec,
        "--",
        "sh",
        "-c",
        "cat /mnt/x/f && echo from the guest > /mnt/x/g",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_eq!(
        std::fs::read_to_string(d.path().join("g")).expect("the guest's file is on the host"),
        "from the guest\n"
    );
}

#[test]
fn vm_read_only_volume_refuses_writes() {
    let d = host_dir();
    let spec = format!("{}:/mnt/x:ro", d.path().display());
    let out = run(&[
        "-v",
        &spec,
        "--",
        "sh",
        "-c",
        "cat /mnt/x/f; echo no > /mnt/x/g",
    ]);
    assert_ne!(out.status.code(), Some(0), "the write must fail");
    assert_eq!(text(&out.stdout), "from the host\n");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert!(!d.path().join("g").exists(), "nothing appears on the host");
}

/// The pid of the virtiofsd serving a run under `runtime`.
fn virtiofsd_under(runtime: &Path) -> Option<u32> {
    let needle = runtime.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let program = cmd.split(' ').next()?;
        (program.ends_with("virtiofsd") && cmd.contains(&needle)).then_some(pid)
    })
}

#[test]
fn vm_a_killed_virtiofsd_fails_the_run_naming_it() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let d = host_dir();
    let runtime = tempfile::tempdir().expect("tempdir");
    let spec = format!("{}:/mnt/x", d.path().display());
    let mut child = spawn(
        runtime.path(),
        &["-v", &spec, "--", "sh", "-c", "cat /mnt/x/f; sleep 600"],
    );
    let mut stdout = child.stdout.take().expect("piped");
    let mut first = [0u8; 14];
    let read = stdout.read_exact(&mut first);
    let Some(pid) = virtiofsd_under(runtime.path()).filter(|_| read.is_ok()) else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("sandvisor ends");
        panic!("no volume or no virtiofsd: {}", text(&out.stderr));
    };
    assert_eq!(&first, b"from the host\n");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    // Without the watch the guest's next virtio-fs request would hang; the
    // run ends by itself (nextest's timeout is the hang check).
    let out = child.wait_with_output().expect("sandvisor ends");
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("virtiofsd (pid {pid})")) && stderr.contains("torn down"),
        "{stderr}"
    );
    assert_nothing_left(runtime.path());
}

/// A free loopback port: bound, read, released.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// GET `path` from 127.0.0.1:`port`; the body, or why not.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!("bad reply {reply:?}"))),
    }
}

#[test]
fn vm_published_port_reaches_a_server_in_the_guest() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let d = host_dir();
    let runtime = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let volume = format!("{}:/srv", d.path().display());
    let mut child = spawn(
        runtime.path(),
        &[
            "--net",
            "user",
            "-p",
            &publish,
            "-v",
            &volume,
            "--",
            "sh",
            "-c",
            "busybox httpd -f -p 80 -h /srv",
        ],
    );
    // Until the guest's server answers through the forward; slirp accepts
    // the connection before the guest is up, so a reset or an empty reply
    // is retried too.
    let deadline = Instant::now() + Duration::from_secs(90);
    let body = loop {
        match http_get(port, "/f") {
            Ok(body) => break Ok(body),
            Err(e) if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("sandvisor exited early ({status}): {e}"));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    // Stop the run: SIGTERM to our own child, by its pid.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().expect("sandvisor ends");
    assert_nothing_left(runtime.path());
    assert_eq!(
        body.unwrap_or_else(|e| panic!("{e}; stderr: {}", text(&out.stderr))),
        "from the host\n"
    );
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the forward is gone with the sandbox"
    );
}

/// A throwaway user, removed (with its runtime directory) on drop.
struct TempUser {
    name: String,
    uid: u32,
}

impl TempUser {
    fn new() -> TempUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "making a test user needs root"
        );
        let name = format!("svtest{}", std::process::id());
        let ok = Command::new("useradd")
            .args(["-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", &name])
            .status()
            .expect("useradd runs");
        assert!(ok.success(), "useradd {name}");
        let uid = nix::unistd::User::from_name(&name)
            .expect("passwd lookup")
            .expect("the new user")
            .uid
            .as_raw();
        TempUser { name, uid }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("sandvisor-{}", self.uid)));
    }
}

/// Needs a booted guest, root's assets in the system directory, and root
/// (to make the user).
#[test]
fn vm_a_fresh_user_with_no_environment_runs_a_command() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    assert!(
        Path::new(sandvisor::paths::SYSTEM_ASSET_DIR)
            .join(sandvisor::paths::INITRD_FILE)
            .is_file(),
        "the system's assets are missing: run sandvisor image build as root"
    );
    let user = TempUser::new();
    let out = Command::new("runuser")
        .args(["-u", &user.name, "--", "env", "-i", "PATH=/usr/bin:/bin"])
        .args([
            env!("CARGO_BIN_EXE_sandvisor"),
            "run",
            "--",
            "echo",
            "as-user",
        ])
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("runuser runs");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "as-user\n");
    let runtime = std::env::temp_dir().join(format!("sandvisor-{}", user.uid));
    let meta = std::fs::metadata(&runtime).expect("a private runtime directory was made");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user.uid, 0o700));
    assert_nothing_left(&runtime);
}
