//! The guest agent in a real VM: raw QEMU (TCG) boots the assets of
//! `sandvisor image build`, and the library's client talks to the agent
//! over the virtio-serial port.
//!
//! These tests fail, not skip, when the assets are missing. VM tests in
//! this binary run one at a time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandvisor::agent::{AgentAddress, AgentClient, ClientError};
use sandvisor::image::{Manifest, MANIFEST_FILE};
use sandvisor::paths::{asset_dir, INITRD_FILE, KERNEL_FILE};
use sandvisor_proto::{AgentError, AgentMessage, ExecRequest, ExitStatus, MountRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// One VM at a time: two TCG guests on two cores slow each other past the
/// deadlines.
static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BOOT_WAIT: Duration = Duration::from_secs(60);

struct Assets {
    kernel: PathBuf,
    initrd: PathBuf,
    manifest: Manifest,
}

fn assets() -> Assets {
    let dir = asset_dir();
    let kernel = dir.join(KERNEL_FILE);
    let initrd = dir.join(INITRD_FILE);
    for f in [&kernel, &initrd] {
        assert!(
            f.is_file(),
            "guest asset {} is missing: run sandvisor image build",
            f.display()
        );
    }
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .expect("the asset manifest is missing: run sandvisor image build");
    let manifest = serde_json::from_str(&text).expect("manifest parses: run sandvisor image build");
    Assets {
        kernel,
        initrd,
        manifest,
    }
}

/// Reads the monitor until its next `(qemu) ` prompt, for up to 10 s.
async fn read_to_prompt(s: &mut UnixStream, seen: &mut Vec<u8>) {
    let start = seen.len();
    let read = async {
        let mut buf = [0u8; 4096];
        while !seen[start..].windows(7).any(|w| w == b"(qemu) ") {
            let n = s.read(&mut buf).await.expect("monitor read");
            assert!(n > 0, "monitor closed");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("monitor prompt");
}

struct Vm {
    qemu: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn serial_socket(&self) -> PathBuf {
        self.dir.path().join("serial.sock")
    }

    /// Sends one HMP command and returns what the monitor printed up to
    /// its next prompt.
    async fn monitor(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.dir.path().join("monitor.sock"))
            .await
            .expect("monitor socket");
        let mut seen = Vec::new();
        read_to_prompt(&mut s, &mut seen).await;
        let from = seen.len();
        s.write_all(format!("{command}\n").as_bytes())
            .await
            .expect("monitor write");
        read_to_prompt(&mut s, &mut seen).await;
        String::from_utf8_lossy(&seen[from..]).into_owned()
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
    }

    async fn connect(&self) -> AgentClient {
        let addr = AgentAddress::Unix(self.agent_socket());
        match AgentClient::connect(&addr, BOOT_WAIT).await {
            Ok(c) => {
                eprintln!(
                    "qemu start to agent handshake: {:?}",
                    self.started.elapsed()
                );
                c
            }
            Err(e) => panic!(
                "agent did not answer: {e:?}\nqemu log:\n{}",
                self.qemu_log()
            ),
        }
    }
}

/// Boots the assets with `extra_append` on the kernel command line,
/// `disk` as a virtio-blk drive and `smp` as QEMU's `-smp`.
fn boot(assets: &Assets, extra_append: &str, disk: Option<&Path>, smp: &str) -> Vm {
    let dir = tempfile::Builder::new()
        .prefix("sv-vm-")
        .tempdir()
        .expect("tempdir");
    let p = |name: &str| dir.path().join(name).display().to_string();
    let log = std::fs::File::create(dir.path().join("qemu.log")).expect("log file");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-machine", "q35", "-m", "512", "-smp", smp])
        .args(["-nodefaults", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&assets.initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=1 {extra_append}"))
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=off", p("serial.sock")))
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", p("monitor.sock")))
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=charch0,path={},server=on,wait=off",
            p("agent.sock")
        ))
        .args([
            "-device",
            "virtserialport,chardev=charch0,name=agent.channel.0,id=channel0",
        ]);
    if let Some(disk) = disk {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id=disk1,format=raw",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk1"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let qemu = cmd.spawn().expect("qemu-system-x86_64 runs");
    Vm {
        qemu,
        dir,
        started: Instant::now(),
    }
}

async fn run(
    client: &AgentClient,
    req: ExecRequest,
) -> (Vec<u8>, Vec<u8>, sandvisor::agent::ExecOutcome) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = client
        .exec(
            req,
            |d| out.extend_from_slice(d),
            |d| err.extend_from_slice(d),
        )
        .await
        .expect("exec");
    (out, err, outcome)
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..ExecRequest::default()
    }
}

#[tokio::test]
async fn vm_agent_exec_and_protocol() {
    let _one = VM_LOCK.lock().await;
    let assets = assets();
    let vm = boot(&assets, "", None, "2");
    let client = vm.connect().await;

    client.check().await.expect("check");
    let details = client.guest_details().await.expect("details");
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    assert_eq!(
        Some(&details.kernel_release),
        assets.manifest.kernel_release.as_ref()
    );
    assert_ne!(
        details.kernel_release,
        host.trim(),
        "that is the host's kernel"
    );
    assert_eq!(details.cpus_online, 2);
    assert!(details.mem_total_kib > 300 * 1024, "{details:?}");

    let (_, _, outcome) = run(&client, sh("exit 3")).await;
    assert_eq!(outcome.status, ExitStatus::Code(3));

    let (out, err, outcome) = run(&client, sh("echo to-out; echo to-err >&2")).await;
    assert_eq!(out, b"to-out\n");
    assert_eq!(err, b"to-err\n");
    assert_eq!(outcome.status, ExitStatus::Code(0));

    let (out, _, _) = run(
        &client,
        ExecRequest {
            argv: vec!["tr".into(), "a-z".into(), "A-Z".into()],
            stdin: Some(b"delivered\n".to_vec()),
            ..ExecRequest::default()
        },
    )
    .await;
    assert_eq!(out, b"DELIVERED\n");

    let (out, _, _) = run(
        &client,
        ExecRequest {
            env: vec!["GREETING=hi".into()],
            cwd: Some("/tmp".into()),
            ..sh("echo $GREETING $(pwd)")
        },
    )
    .await;
    assert_eq!(out, b"hi /tmp\n");

    let started = Instant::now();
    let (_, _, outcome) = run(
        &client,
        ExecRequest {
            timeout_ms: Some(500),
            ..sh("sleep 60")
        },
    )
    .await;
    assert!(outcome.timed_out);
    assert_eq!(outcome.status, ExitStatus::Signal(9));
    assert!(started.elapsed() < Duration::from_secs(20));

    let err = client
        .exec(
            ExecRequest {
                argv: vec!["/no/such/program".into()],
                ..ExecRequest::default()
            },
            |_| {},
            |_| {},
        )
        .await
        .expect_err("no such program");
    assert!(
        matches!(
            err.agent_error(),
            Some(AgentError::Failed { errno: Some(2), .. })
        ),
        "{err:?}"
    );

    // A malformed frame gets an error reply, by id when it shows one, and
    // the agent goes on serving.
    let reply = client
        .send_raw_frame(br#"{"id": 9999, "type": "no_such_request"}"#)
        .await
        .expect("a reply");
    assert!(
        matches!(
            reply,
            AgentMessage::Reply {
                id: Some(9999),
                result: Err(AgentError::Malformed { .. })
            }
        ),
        "{reply:?}"
    );
    let reply = client
        .send_raw_frame(b"\x00garbage")
        .await
        .expect("a reply");
    assert!(
        matches!(
            reply,
            AgentMessage::Reply {
                id: None,
                result: Err(AgentError::Malformed { .. })
            }
        ),
        "{reply:?}"
    );
    client.check().await.expect("still serving");

    client
        .set_time(std::time::SystemTime::now())
        .await
        .expect("set time");
    let (out, _, _) = run(&client, sh("date +%Y")).await;
    let year: u32 = String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .expect("a year");
    assert!(year >= 2024, "{year}");

    let r = client
        .online_cpu_mem(sandvisor_proto::OnlineCpuMemRequest::default())
        .await
        .expect("online");
    assert_eq!(r.cpus_online, 2);
    drop(vm);
}

#[tokio::test]
async fn vm_agent_mounts_an_ext4_disk() {
    let _one = VM_LOCK.lock().await;
    let assets = assets();
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("hello.txt"), "from the host\n").expect("write");
    let img = work.path().join("disk.ext4");
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M")
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 runs (apt-get install e2fsprogs)");
    assert!(status.success());

    let vm = boot(&assets, "", Some(&img), "2");
    let client = vm.connect().await;
    let devices = client.list_block_devices().await.expect("block devices");
    let disk = devices
        .iter()
        .find(|d| d.name.starts_with("vd"))
        .unwrap_or_else(|| panic!("no virtio disk in {devices:?}"));
    assert_eq!(disk.size_bytes, 16 << 20);
    assert!(!disk.read_only);
    assert_eq!(disk.major, 254, "{disk:?}");

    client
        .mount(MountRequest {
            source: format!("/dev/{}", disk.name),
            target: "/mnt/data".into(),
            fstype: "ext4".into(),
            options: vec!["ro".into()],
        })
        .await
        .expect("mount");
    let (out, err, outcome) = run(&client, sh("cat /mnt/data/hello.txt")).await;
    assert_eq!(
        outcome.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out, b"from the host\n");

    let err = client
        .mount(MountRequest {
            source: "/dev/nonexistent".into(),
            target: "/mnt/x".into(),
            fstype: "ext4".into(),
            options: vec![],
        })
        .await
        .expect_err("no such device");
    assert!(matches!(err, ClientError::Agent { .. }), "{err:?}");
    drop(vm);
}

#[tokio::test]
async fn vm_agent_debug_console_and_shutdown() {
    let _one = VM_LOCK.lock().await;
    let assets = assets();
    let mut vm = boot(&assets, "sandvisor.debug_console", None, "1");

    // The serial socket exists once QEMU is up; read the console until the
    // ready line.
    let deadline = Instant::now() + BOOT_WAIT;
    let mut serial = loop {
        match UnixStream::connect(vm.serial_socket()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no serial socket: {e}\n{}", vm.qemu_log()),
        }
    };
    let mut console = Vec::new();
    let ready = sandvisor_proto::DEBUG_CONSOLE_READY.as_bytes();
    while !console.windows(ready.len()).any(|w| w == ready) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), serial.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no ready line; console so far:\n{}",
                    String::from_utf8_lossy(&console)
                )
            })
            .expect("serial read");
        assert!(
            n > 0,
            "console closed: {}",
            String::from_utf8_lossy(&console)
        );
        console.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&console).contains("sandvisor-agent: loaded"),
        "agent log lines carry their prefix"
    );

    let client = vm.connect().await;
    client.shutdown().await.expect("shutdown acknowledged");
    let status = tokio::time::timeout(Duration::from_secs(30), vm.qemu.wait())
        .await
        .expect("qemu exits after the guest powers off")
        .expect("wait");
    assert!(status.success(), "qemu: {status}\n{}", vm.qemu_log());
    // The channel closes with the VM.
    let err = client.check().await.expect_err("vm is gone");
    assert!(
        matches!(err, ClientError::Disconnected | ClientError::Io(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn vm_agent_onlines_a_hotplugged_cpu_and_serves_a_new_connection() {
    let _one = VM_LOCK.lock().await;
    let assets = assets();
    let vm = boot(&assets, "", None, "1,maxcpus=2");
    let client = vm.connect().await;
    assert_eq!(
        client.guest_details().await.expect("details").cpus_online,
        1
    );

    let answer = vm
        .monitor("device_add qemu64-x86_64-cpu,id=cpu1,socket-id=0,core-id=1,thread-id=0")
        .await;
    assert!(!answer.contains("Error"), "device_add: {answer}");
    let r = client
        .online_cpu_mem(sandvisor_proto::OnlineCpuMemRequest {
            nb_cpus: 1,
            cpu_only: true,
            wait_ms: 10_000,
            ..Default::default()
        })
        .await
        .expect("online the new cpu");
    assert_eq!((r.cpus_onlined, r.cpus_online), (1, 2), "{r:?}");
    let (out, _, _) = run(&client, sh("nproc")).await;
    assert_eq!(out, b"2\n");

    // The host goes away and comes back: the agent serves the new
    // connection, handshake first.
    drop(client);
    let again = vm.connect().await;
    again.check().await.expect("second connection");
    drop(vm);
}
