//! How each VMM is sandboxed, read from the code that starts it: QEMU's
//! `-sandbox` and `-runas` from the command line the backend would build,
//! Firecracker's jailer and uid from the config, Cloud Hypervisor's seccomp
//! from its command line. Information for `check`, never a blocker.

use std::path::Path;

use super::CheckItem;
use crate::assets::AssetType;
use crate::backends::qemu::cmdline::{self, Accelerator, LaunchSpec, VmPaths};
use crate::config::kata::{default_config, RuntimeConfig};
use crate::config::HypervisorConfig;
use crate::hypervisor_type::HypervisorType;

/// The config of `kind`: the loaded one when it is for `kind`, else the
/// built-in default (validated, so the command line can be built).
fn config_for(kind: HypervisorType, loaded: Option<&RuntimeConfig>) -> HypervisorConfig {
    let mut config = match loaded.filter(|rc| rc.hypervisor == kind) {
        Some(rc) => rc.config.clone(),
        None => default_config(kind).config,
    };
    let _ = config.validate();
    config
}

/// The value after `flag` in `args`.
fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// QEMU: the `-sandbox` flags and the user it runs as.
pub fn qemu(config: &HypervisorConfig) -> Vec<CheckItem> {
    let paths = VmPaths::new(Path::new("/run/sandvisor/vm"), "posture");
    let spec = LaunchSpec {
        config,
        id: "posture",
        uuid: "00000000-0000-0000-0000-000000000000",
        accel: Accelerator::Tcg,
        host_memory_mib: u64::from(config.memory_size).max(1024) * 4,
        paths: &paths,
        devices: &[],
        image_size: None,
        vhost_net: false,
        vm_dir_fd: config
            .rootless
            .then_some(crate::backends::qemu::rootless::VM_DIR_FD),
    };
    let args = match cmdline::build(&spec) {
        Ok(cmd) => cmd.args,
        Err(e) => {
            return vec![CheckItem::no(
                "qemu sandbox",
                false,
                format!("cannot build the command line: {e}"),
                None,
            )]
        }
    };
    let sandbox = match value_of(&args, "-sandbox") {
        Some(flags) => {
            let spawn = if flags.contains("spawn=deny") {
                "may not spawn processes"
            } else {
                "may spawn processes (spawn is not denied)"
            };
            CheckItem::ok("qemu sandbox", false, format!("-sandbox {flags}: {spawn}"))
        }
        None => CheckItem::no(
            "qemu sandbox",
            false,
            "no -sandbox: QEMU runs without a seccomp filter",
            None,
        ),
    };
    let user = qemu_user(config, &args);
    vec![sandbox, user]
}

/// Who QEMU runs as: a uid of its own per sandbox with `rootless = true`
/// (spawned so, its files named through the descriptor of its VM
/// directory), else this process's user; a `-runas` in
/// `hypervisor_params` is reported too.
fn qemu_user(config: &HypervisorConfig, args: &[String]) -> CheckItem {
    use crate::backends::qemu::rootless::{UID_BASE, UID_COUNT};
    if let Some(u) = value_of(args, "-runas") {
        return CheckItem::ok("qemu user", false, format!("runs as {u} (-runas)"));
    }
    if config.rootless {
        return CheckItem::ok(
            "qemu user",
            false,
            format!(
                "rootless: each sandbox's QEMU runs as a uid of its own, {UID_BASE}..{}, no user created",
                UID_BASE + UID_COUNT - 1
            ),
        );
    }
    let uid = nix::unistd::geteuid();
    let detail = if uid.is_root() {
        "runs as root (uid 0); set rootless = true under [hypervisor.qemu] for an unprivileged uid"
            .to_string()
    } else {
        format!("runs as this user (uid {uid})")
    };
    CheckItem::no("qemu user", false, detail, None)
}

/// Firecracker: through the jailer (the default when one is found), and
/// as which uid.
pub fn firecracker(config: &HypervisorConfig) -> CheckItem {
    firecracker_with(config, || {
        crate::backends::vmm::lookup::find(&crate::backends::vmm::lookup::Binary::JAILER, None)
            .map(|f| f.path)
    })
}

/// [`firecracker`] with the jailer lookup given as `find`.
fn firecracker_with(
    config: &HypervisorConfig,
    find: impl FnOnce() -> Result<std::path::PathBuf, crate::backends::vmm::lookup::LookupError>,
) -> CheckItem {
    use crate::backends::firecracker::{jailer::DEFAULT_JAIL_ID, resolve_jailer};
    let mut c = config.clone();
    if let Err(e) = resolve_jailer(&mut c, find) {
        return CheckItem::no("fc jailer", false, e.to_string(), None);
    }
    match c.asset_path(AssetType::Jailer) {
        Some(j) => {
            let uid = c.jailer_uid.unwrap_or(DEFAULT_JAIL_ID);
            let gid = c.jailer_gid.unwrap_or(DEFAULT_JAIL_ID);
            let who = if uid == 0 {
                "root"
            } else {
                "an unprivileged uid"
            };
            CheckItem::ok(
                "fc jailer",
                false,
                format!(
                    "jailed as {uid}:{gid} ({who}), chrooted, through {}",
                    j.display()
                ),
            )
        }
        None => CheckItem::no(
            "fc jailer",
            false,
            format!(
                "unjailed (jailer_path = \"\"): Firecracker runs as this user (uid {}); remove the empty jailer_path to jail it",
                nix::unistd::geteuid()
            ),
            None,
        ),
    }
}

/// Cloud Hypervisor: its seccomp filters, on unless the command line
/// turns them off.
pub fn clh(config: &HypervisorConfig) -> CheckItem {
    let args =
        crate::backends::clh::command_args(Path::new("/run/sandvisor/vm/x/api.sock"), config.debug);
    match value_of(&args, "--seccomp") {
        Some(v) if v != "true" => {
            CheckItem::no("clh seccomp", false, format!("--seccomp {v}"), None)
        }
        _ => CheckItem::ok(
            "clh seccomp",
            false,
            "on (Cloud Hypervisor's default; no --seccomp false)",
        ),
    }
}

/// The posture of QEMU, Firecracker and Cloud Hypervisor, each with the
/// loaded config when it is for that backend, else the default.
pub fn items(loaded: Option<&RuntimeConfig>) -> Vec<CheckItem> {
    let mut items = qemu(&config_for(HypervisorType::Qemu, loaded));
    items.push(firecracker(&config_for(
        HypervisorType::Firecracker,
        loaded,
    )));
    items.push(clh(&config_for(HypervisorType::Clh, loaded)));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_posture_is_read_from_the_command_lines() {
        let items = items(None);
        let find = |name: &str| {
            items
                .iter()
                .find(|i| i.name == name)
                .unwrap_or_else(|| panic!("no {name} in {items:?}"))
        };
        let sandbox = find("qemu sandbox");
        assert!(sandbox.detail.starts_with("-sandbox on,"), "{sandbox:?}");
        assert!(
            sandbox.detail.contains("elevateprivileges=deny"),
            "{sandbox:?}"
        );
        assert!(find("clh seccomp").ok);
        assert!(!find("fc jailer").detail.is_empty());
        assert!(items.iter().all(|i| !i.required), "posture never blocks");
    }

    #[test]
    fn rootless_qemu_is_reported_with_its_uid_range() {
        let mut c = default_config(HypervisorType::Qemu).config;
        let _ = c.validate();
        let user = |c: &HypervisorConfig| {
            qemu(c)
                .into_iter()
                .find(|i| i.name == "qemu user")
                .expect("a qemu user item")
        };
        let root = user(&c);
        if nix::unistd::geteuid().is_root() {
            assert!(
                !root.ok && root.detail.contains("rootless = true"),
                "{root:?}"
            );
        }
        c.rootless = true;
        let rootless = user(&c);
        assert!(rootless.ok, "{rootless:?}");
        assert!(
            rootless
                .detail
                .contains(&crate::backends::qemu::rootless::UID_BASE.to_string()),
            "{rootless:?}"
        );
    }

    #[test]
    fn a_configured_jailer_is_reported_with_its_uid() {
        let mut c = default_config(HypervisorType::Firecracker).config;
        c.jailer_path = Some("/usr/bin/jailer".into());
        c.jailer_uid = Some(1234);
        let item = firecracker(&c);
        assert!(item.ok);
        assert!(item.detail.starts_with("jailed as 1234:65534"), "{item:?}");
    }

    #[test]
    fn firecracker_is_jailed_as_nobody_by_default_and_unjailed_only_when_asked() {
        use crate::backends::vmm::lookup::LookupError;
        let c = default_config(HypervisorType::Firecracker).config;
        let item = firecracker_with(&c, || Ok("/found/jailer".into()));
        assert!(item.ok, "{item:?}");
        assert!(
            item.detail
                .starts_with("jailed as 65534:65534 (an unprivileged uid)"),
            "{item:?}"
        );
        assert!(item.detail.ends_with("/found/jailer"), "{item:?}");
        let missing = firecracker_with(&c, || {
            Err(LookupError::NotFound {
                name: "jailer",
                looked: Vec::new(),
            })
        });
        assert!(
            !missing.ok && missing.detail.contains("`jailer_path`"),
            "{missing:?}"
        );
        let mut off = c.clone();
        off.unjailed = true;
        let item = firecracker_with(&off, || Ok("/found/jailer".into()));
        assert!(!item.ok && item.detail.starts_with("unjailed"), "{item:?}");
    }

    #[test]
    fn clh_seccomp_stays_on_by_default_and_debug_does_not_turn_it_off() {
        for debug in [false, true] {
            let mut c = default_config(HypervisorType::Clh).config;
            c.debug = debug;
            let args = crate::backends::clh::command_args(
                Path::new("/run/sandvisor/vm/x/api.sock"),
                c.debug,
            );
            assert!(
                !args.iter().any(|a| a == "--seccomp"),
                "no --seccomp flag, so Cloud Hypervisor's default (true): {args:?}"
            );
            let item = clh(&c);
            assert!(item.ok && item.detail.starts_with("on "), "{item:?}");
        }
    }
}
