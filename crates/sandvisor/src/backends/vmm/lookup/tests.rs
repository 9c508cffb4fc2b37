//! Tests of the VMM lookup.
use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;

/// Writes an executable shell script `name` in `dir` running `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn plain_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, "not a program\n").expect("write file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

fn env(vmm_dir: Option<&Path>, path: &[&Path]) -> SearchEnv {
    SearchEnv {
        vmm_dir: vmm_dir.map(|d| d.as_os_str().to_owned()),
        path: Some(std::env::join_paths(path).expect("joinable PATH")),
        cargo_bin: None,
    }
}

const NAME: &str = "fake-vmm";

fn kata_defaults(paths: impl IntoIterator<Item = PathBuf>) -> Vec<(PathBuf, Source)> {
    paths
        .into_iter()
        .map(|p| (p, Source::KataDefault))
        .collect()
}

#[test]
fn cargo_bin_is_cargo_home_then_home() {
    let s = |v: &str| Some(std::ffi::OsString::from(v));
    let cases = [
        (s("/c"), s("/h"), Some(PathBuf::from("/c/bin"))),
        (None, s("/h"), Some(PathBuf::from("/h/.cargo/bin"))),
        (s(""), s("/h"), Some(PathBuf::from("/h/.cargo/bin"))),
        (None, None, None),
        (None, s(""), None),
    ];
    for (cargo_home, home, want) in cases {
        assert_eq!(
            cargo_bin(cargo_home.as_deref(), home.as_deref()),
            want,
            "{cargo_home:?} {home:?}"
        );
    }
}

#[test]
fn cargo_bin_is_searched_last_and_only_for_cargo_installed_binaries() {
    let path_dir = tempfile::tempdir().expect("tempdir");
    let cargo = tempfile::tempdir().expect("tempdir");
    let name = "sandvisor-test-cargo-tool";
    let in_cargo = script(cargo.path(), name, "exit 0");
    let mut env = env(None, &[path_dir.path()]);
    env.cargo_bin = Some(cargo.path().to_owned());
    let tool = Binary {
        name,
        kata_paths: &["/nonexistent/sandvisor/tool"],
        cargo_installed: true,
    };
    assert_eq!(
        find_in(&tool, None, &env),
        Ok(Found {
            path: in_cargo,
            source: Source::CargoBin
        })
    );
    // PATH wins over cargo's directory.
    let on_path = script(path_dir.path(), name, "exit 0");
    assert_eq!(
        find_in(&tool, None, &env),
        Ok(Found {
            path: on_path.clone(),
            source: Source::Path
        })
    );
    fs::remove_file(&on_path).expect("rm");
    // A binary not installed by cargo is not looked for there.
    let vmm = Binary {
        cargo_installed: false,
        ..tool
    };
    let err = find_in(&vmm, None, &env).expect_err("not in cargo's bin for a VMM");
    let LookupError::NotFound { looked, .. } = err else {
        panic!("expected NotFound, got {err:?}");
    };
    assert!(
        looked.iter().all(|l| l.source != Source::CargoBin),
        "{looked:?}"
    );
    // Not found: cargo's directory is the last place listed.
    fs::remove_file(cargo.path().join(name)).expect("rm");
    let err = find_in(&tool, None, &env).expect_err("absent");
    let LookupError::NotFound { looked, .. } = err else {
        panic!("expected NotFound, got {err:?}");
    };
    let last = looked.last().expect("looked somewhere");
    assert_eq!(last.source, Source::CargoBin);
    assert_eq!(last.path, cargo.path().join(name));
}

#[test]
fn the_configured_path_wins_over_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configured = script(dir.path(), "configured", "exit 0");
    let vmm_dir = tempfile::tempdir().expect("tempdir");
    script(vmm_dir.path(), NAME, "exit 0");
    let found = search(
        NAME,
        Some(&configured),
        &env(Some(vmm_dir.path()), &[vmm_dir.path()]),
        [],
    );
    assert_eq!(
        found,
        Ok(Found {
            path: configured,
            source: Source::Config
        })
    );
}

#[test]
fn a_bad_configured_path_is_an_error_even_when_others_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    script(dir.path(), NAME, "exit 0");
    let everywhere = env(Some(dir.path()), &[dir.path()]);
    let missing = dir.path().join("missing");
    let plain = plain_file(dir.path(), "plain");
    let cases = [
        (missing.clone(), Problem::Missing),
        (plain.clone(), Problem::NotExecutable),
        (dir.path().to_owned(), Problem::NotAFile),
    ];
    for (path, problem) in cases {
        assert_eq!(
            search(NAME, Some(&path), &everywhere, []),
            Err(LookupError::Configured {
                name: NAME,
                path: path.clone(),
                problem
            }),
            "{}",
            path.display()
        );
    }
    let message = search(NAME, Some(&missing), &everywhere, [])
        .expect_err("missing")
        .to_string();
    assert_eq!(
        message,
        format!("configured fake-vmm {} does not exist", missing.display())
    );
}

#[test]
fn the_vmm_dir_comes_before_path() {
    let vmm_dir = tempfile::tempdir().expect("tempdir");
    let in_vmm_dir = script(vmm_dir.path(), NAME, "exit 0");
    let bin = tempfile::tempdir().expect("tempdir");
    script(bin.path(), NAME, "exit 0");
    let found = search(NAME, None, &env(Some(vmm_dir.path()), &[bin.path()]), []);
    assert_eq!(
        found,
        Ok(Found {
            path: in_vmm_dir,
            source: Source::VmmDir
        })
    );
}

#[test]
fn path_is_searched_in_order_past_unusable_entries() {
    let empty = tempfile::tempdir().expect("tempdir");
    let plain = tempfile::tempdir().expect("tempdir");
    plain_file(plain.path(), NAME);
    let first = tempfile::tempdir().expect("tempdir");
    let wanted = script(first.path(), NAME, "exit 0");
    let second = tempfile::tempdir().expect("tempdir");
    script(second.path(), NAME, "exit 0");
    // The VMM directory is set but lacks the binary.
    let found = search(
        NAME,
        None,
        &env(
            Some(empty.path()),
            &[empty.path(), plain.path(), first.path(), second.path()],
        ),
        [],
    );
    assert_eq!(
        found,
        Ok(Found {
            path: wanted,
            source: Source::Path
        })
    );
}

#[test]
fn relative_and_empty_path_entries_are_skipped() {
    let cwd_like = tempfile::tempdir().expect("tempdir");
    script(cwd_like.path(), NAME, "exit 0");
    let env = SearchEnv {
        vmm_dir: Some(OsString::new()),
        path: Some(OsString::from("::relative/dir:.")),
        cargo_bin: None,
    };
    assert_eq!(
        search(NAME, None, &env, []),
        Err(LookupError::NotFound {
            name: NAME,
            looked: vec![]
        })
    );
}

#[test]
fn kata_defaults_come_last() {
    let kata = tempfile::tempdir().expect("tempdir");
    let usr_bin = kata.path().join("usr-bin");
    fs::create_dir(&usr_bin).expect("mkdir");
    let opt_kata = kata.path().join("opt-kata");
    fs::create_dir(&opt_kata).expect("mkdir");
    let wanted = script(&opt_kata, NAME, "exit 0");
    let empty = tempfile::tempdir().expect("tempdir");
    let found = search(
        NAME,
        None,
        &env(None, &[empty.path()]),
        kata_defaults([usr_bin.join(NAME), wanted.clone()]),
    );
    assert_eq!(
        found,
        Ok(Found {
            path: wanted,
            source: Source::KataDefault
        })
    );
}

#[test]
fn not_found_lists_every_place_once_in_order() {
    let vmm_dir = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let plain = plain_file(bin.path(), NAME);
    let kata = vmm_dir.path().join("kata").join(NAME);
    let err = search(
        NAME,
        None,
        &env(Some(vmm_dir.path()), &[bin.path(), vmm_dir.path()]),
        // The VMM directory's path again: listed once, as the VMM dir's.
        kata_defaults([vmm_dir.path().join(NAME), kata.clone()]),
    )
    .expect_err("nothing usable");
    let in_vmm_dir = vmm_dir.path().join(NAME);
    assert_eq!(
        err,
        LookupError::NotFound {
            name: NAME,
            looked: vec![
                Looked {
                    path: in_vmm_dir.clone(),
                    source: Source::VmmDir,
                    problem: Problem::Missing
                },
                Looked {
                    path: plain.clone(),
                    source: Source::Path,
                    problem: Problem::NotExecutable
                },
                Looked {
                    path: kata.clone(),
                    source: Source::KataDefault,
                    problem: Problem::Missing
                },
            ]
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "fake-vmm not found; looked at {} ($SANDVISOR_VMM_DIR: does not exist), \
             {} (PATH: is not executable), {} (Kata's default: does not exist)",
            in_vmm_dir.display(),
            plain.display(),
            kata.display()
        )
    );
}

#[test]
fn find_in_uses_the_binarys_kata_paths() {
    let binary = Binary {
        name: "sandvisor-test-no-such-vmm",
        kata_paths: &["/nonexistent/sandvisor/a", "/nonexistent/sandvisor/b"],
        cargo_installed: false,
    };
    let err = find_in(&binary, None, &SearchEnv::default()).expect_err("absent");
    let LookupError::NotFound { name, looked } = err else {
        panic!("expected NotFound, got {err:?}");
    };
    assert_eq!(name, "sandvisor-test-no-such-vmm");
    let paths: Vec<_> = looked.iter().map(|l| l.path.clone()).collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/nonexistent/sandvisor/a"),
            PathBuf::from("/nonexistent/sandvisor/b")
        ]
    );
    assert!(looked.iter().all(|l| l.source == Source::KataDefault));
}

#[test]
fn every_kata_path_is_absolute_and_ends_in_the_name() {
    for b in [
        Binary::CLOUD_HYPERVISOR,
        Binary::CH_REMOTE,
        Binary::FIRECRACKER,
        Binary::JAILER,
        Binary::QEMU,
        Binary::ACRN_DM,
        Binary::ACRNCTL,
        Binary::VIRTIOFSD,
        Binary::VHOST_DEVICE_VSOCK,
    ] {
        for p in b.kata_paths {
            let p = Path::new(p);
            assert!(p.is_absolute(), "{}", p.display());
            assert_eq!(p.file_name(), Some(b.name.as_ref()), "{}", p.display());
        }
    }
}

#[test]
fn the_backends_binaries_are_the_named_constants() {
    assert_eq!(
        Binary::for_backend(HypervisorType::Qemu),
        Some(Binary::QEMU)
    );
    assert_eq!(
        Binary::for_backend(HypervisorType::Clh),
        Some(Binary::CLOUD_HYPERVISOR)
    );
    assert_eq!(
        Binary::for_backend(HypervisorType::Firecracker),
        Some(Binary::FIRECRACKER)
    );
    assert_eq!(
        Binary::for_backend(HypervisorType::Acrn),
        Some(Binary::ACRN_DM)
    );
    assert_eq!(Binary::for_backend(HypervisorType::Mock), None);
}

/// [`version`], retried while the script is busy: another test's child
/// may briefly hold it open for writing (ETXTBSY), which passes.
async fn version_of(path: &Path, timeout: Duration) -> Result<String, VersionError> {
    for _ in 0..50 {
        match version(path, timeout).await {
            Err(VersionError::Spawn { source, .. })
                if source.raw_os_error() == Some(nix::libc::ETXTBSY) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
    version(path, timeout).await
}

#[tokio::test]
async fn version_is_the_first_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        NAME,
        r#"[ "$1" = --version ] || exit 9; printf '\n  fake-vmm v1.2.3  \nMigration Protocol Versions: 0\n'"#,
    );
    let v = version_of(&bin, DEFAULT_VERSION_TIMEOUT).await;
    assert_eq!(v.expect("version"), "fake-vmm v1.2.3");
}

#[tokio::test]
async fn version_falls_back_to_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(dir.path(), NAME, "echo 'old-vmm 0.1' >&2");
    let v = version_of(&bin, DEFAULT_VERSION_TIMEOUT).await;
    assert_eq!(v.expect("version"), "old-vmm 0.1");
}

#[tokio::test]
async fn a_failing_binary_reports_its_status_and_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        NAME,
        "echo 'fake-vmm v1'; echo 'unknown flag' >&2; exit 3",
    );
    let err = version_of(&bin, DEFAULT_VERSION_TIMEOUT)
        .await
        .expect_err("fails");
    let VersionError::Failed {
        status, message, ..
    } = &err
    else {
        panic!("expected Failed, got {err:?}");
    };
    assert_eq!(status.code(), Some(3));
    assert_eq!(message, "unknown flag");
}

#[tokio::test]
async fn silence_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(dir.path(), NAME, "exit 0");
    let err = version_of(&bin, DEFAULT_VERSION_TIMEOUT)
        .await
        .expect_err("empty");
    assert!(matches!(err, VersionError::Empty { .. }), "{err:?}");
}

#[tokio::test]
async fn a_hanging_binary_times_out_and_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let bin = script(
        dir.path(),
        NAME,
        &format!("echo $$ > {}; exec sleep 600", pid_file.display()),
    );
    let err = version_of(&bin, Duration::from_millis(300))
        .await
        .expect_err("hangs");
    assert!(matches!(err, VersionError::Timeout { .. }), "{err:?}");
    // The child was killed and reaped: its pid names no process now
    // (or, if the pid was reused, not our sleep).
    if let Ok(pid) = fs::read_to_string(&pid_file) {
        let cmdline = fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("sleep"),
            "the hung child {} still runs",
            pid.trim()
        );
    }
}

#[tokio::test]
async fn a_missing_binary_cannot_be_spawned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = version_of(&dir.path().join("absent"), DEFAULT_VERSION_TIMEOUT)
        .await
        .expect_err("absent");
    assert!(matches!(err, VersionError::Spawn { .. }), "{err:?}");
}
