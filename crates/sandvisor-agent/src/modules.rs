//! Kernel modules: the agent channel's drivers before the agent serves,
//! then drivers for the devices the guest has, as a device manager would.
//!
//! `image build` puts depmod's `modules.dep` and `modules.alias` in
//! `/lib/modules/<release>`. After the early list ([`MODULES_EARLY`]: the
//! virtio transports and the virtio-serial console), a background thread
//! loads the driver of every device without one, by its `modalias`, and
//! repeats while that makes new devices appear (a virtio-pci function
//! shows its virtio device only once `virtio_pci` is bound). It then
//! listens for kernel uevents and loads drivers for hot-plugged devices.
//!
//! A guest thus loads what its devices need and nothing else: the default
//! sandbox loads 10 modules of the 28 in the image. Requests that run guest
//! code or touch devices wait for the first pass ([`wait_loaded`]); hello,
//! health checks and guest details do not.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, Once};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::log;

/// Modules the agent channel needs, one absolute path a line,
/// dependencies first. Written by `sandvisor image build`.
pub const MODULES_EARLY: &str = "/etc/sandvisor/modules.early";

/// How long a request waits for the first pass before going on without it.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Rounds of loading drivers for devices that lack one.
const COLDPLUG_PASSES: usize = 4;

/// Whether the first pass is still running.
static LOADING: Mutex<bool> = Mutex::new(false);
static LOADED: Condvar = Condvar::new();

/// Names of the modules loaded so far.
static LOADED_NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A module's name from its file name: `virtio-rng.ko` gives `virtio_rng`.
pub fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split(".ko").next()?;
    Some(stem.replace('-', "_"))
}

/// Loads one module file; one already loaded counts as loaded.
fn load_file(path: &Path) -> Result<(), String> {
    let file =
        File::open(path).map_err(|e| format!("cannot open module {}: {e}", path.display()))?;
    match finit_module(&file, &CString::default(), ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => {
            if let Some(name) = module_name(path) {
                LOADED_NAMES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name);
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot load module {}: {e}", path.display())),
    }
}

/// Loads the modules listed in `list`, in order. A module that fails is
/// logged and skipped. A missing list is an empty one.
///
/// Returns how many were loaded and how many failed.
pub fn load_list(list: &str) -> (usize, usize) {
    let text = match fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (0, 0),
        Err(e) => {
            log!("cannot read {list}: {e}");
            return (0, 0);
        }
    };
    let (mut loaded, mut failed) = (0, 0);
    for path in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match load_file(Path::new(path)) {
            Ok(()) => loaded += 1,
            Err(e) => {
                log!("{e}");
                failed += 1;
            }
        }
    }
    (loaded, failed)
}

/// What depmod's files say: where each module is, what it needs, and
/// which device aliases it serves.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Module name to file.
    paths: BTreeMap<String, PathBuf>,
    /// Module name to its dependencies, in load order.
    deps: BTreeMap<String, Vec<String>>,
    /// `(pattern, module)` pairs.
    aliases: Vec<(glob::Pattern, String)>,
}

impl Catalog {
    /// Parses `modules.dep` and `modules.alias` text; paths are relative
    /// to `root`.
    pub fn parse(root: &Path, dep: &str, alias: &str) -> Catalog {
        let mut cat = Catalog::default();
        for line in dep.lines() {
            let Some((module, needs)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = module_name(Path::new(module.trim())) else {
                continue;
            };
            // modprobe loads the list from the right.
            let needs = needs
                .split_whitespace()
                .rev()
                .filter_map(|d| module_name(Path::new(d)))
                .collect();
            cat.paths.insert(name.clone(), root.join(module.trim()));
            cat.deps.insert(name, needs);
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if let Ok(p) = glob::Pattern::new(pattern) {
                    cat.aliases.push((p, module.replace('-', "_")));
                }
            }
        }
        cat
    }

    /// Reads depmod's files of the running kernel; `None` without them.
    pub fn read() -> Option<Catalog> {
        let release = nix::sys::utsname::uname().ok()?;
        let root = Path::new("/lib/modules").join(release.release());
        let dep = fs::read_to_string(root.join("modules.dep")).ok()?;
        let alias = fs::read_to_string(root.join("modules.alias")).unwrap_or_default();
        Some(Catalog::parse(&root, &dep, &alias))
    }

    /// Modules whose aliases match `modalias`.
    pub fn matching(&self, modalias: &str) -> BTreeSet<&str> {
        self.aliases
            .iter()
            .filter(|(p, _)| p.matches(modalias))
            .map(|(_, m)| m.as_str())
            .filter(|m| self.paths.contains_key(*m))
            .collect()
    }

    /// `name` and its dependencies, in load order.
    pub fn with_deps<'a>(&'a self, name: &'a str) -> Vec<&'a str> {
        let mut order: Vec<&str> = self
            .deps
            .get(name)
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default();
        order.push(name);
        order
    }

    /// Loads `name` with its dependencies unless loaded; returns whether
    /// anything new was loaded.
    fn load(&self, name: &str) -> bool {
        let mut new = false;
        for m in self.with_deps(name) {
            let already = LOADED_NAMES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(m);
            if already {
                continue;
            }
            let Some(path) = self.paths.get(m) else {
                continue;
            };
            match load_file(path) {
                Ok(()) => new = true,
                Err(e) => {
                    log!("{e}");
                    // Do not try again on every pass and uevent.
                    LOADED_NAMES
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(m.to_string());
                }
            }
        }
        new
    }

    /// Loads drivers for `modalias`; returns whether anything new loaded.
    fn load_for(&self, modalias: &str) -> bool {
        let names: Vec<String> = self
            .matching(modalias)
            .into_iter()
            .map(str::to_string)
            .collect();
        names.iter().fold(false, |new, m| self.load(m) | new)
    }
}

/// The modaliases of devices no driver is bound to.
fn unbound_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devices) = fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.flatten() {
            let dev = dev.path();
            if dev.join("driver").exists() {
                continue;
            }
            if let Ok(alias) = fs::read_to_string(dev.join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.push(alias.to_string());
                }
            }
        }
    }
    out
}

/// Whether the machine has virtio-mmio devices (microvm): announced by
/// ACPI as `LNRO0005`, or on the command line, where only the module itself
/// can make them.
fn has_virtio_mmio() -> bool {
    if crate::init::cmdline().contains("virtio_mmio.device=") {
        return true;
    }
    ["/sys/bus/acpi/devices", "/sys/bus/platform/devices"]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .any(|e| e.file_name().to_string_lossy().starts_with("LNRO0005"))
}

/// Where the kernel lists the virtio-mmio platform driver once it is
/// registered: at boot for a kernel with it built in (the sandbox kernel,
/// `CONFIG_VIRTIO_MMIO=y`), or once the module is loaded.
const VIRTIO_MMIO_DRIVER: &str = "/sys/bus/platform/drivers/virtio-mmio";

/// Whether the `virtio_mmio` module must be loaded: the machine has
/// virtio-mmio devices and the kernel has no driver for them yet.
pub fn needs_virtio_mmio_module(has_devices: bool, driver_registered: bool) -> bool {
    has_devices && !driver_registered
}

/// Loads what the agent channel needs: `virtio_mmio` on a machine with
/// virtio-mmio devices whose kernel lacks the driver, then
/// [`MODULES_EARLY`]. A kernel with everything built in loads nothing.
///
/// Returns how many modules were loaded and how many failed.
pub fn load_early() -> (usize, usize) {
    let (mut loaded, mut failed) = (0, 0);
    if needs_virtio_mmio_module(has_virtio_mmio(), Path::new(VIRTIO_MMIO_DRIVER).is_dir()) {
        match Catalog::read() {
            Some(cat) if cat.load("virtio_mmio") => loaded += 1,
            _ => {
                log!("virtio-mmio devices but no virtio_mmio module loaded");
                failed += 1;
            }
        }
    }
    let (l, f) = load_list(MODULES_EARLY);
    (loaded + l, failed + f)
}

/// Loads drivers for the devices present, until a pass loads nothing new.
fn coldplug(cat: &Catalog) {
    if needs_virtio_mmio_module(has_virtio_mmio(), Path::new(VIRTIO_MMIO_DRIVER).is_dir()) {
        cat.load("virtio_mmio");
    }
    for _ in 0..COLDPLUG_PASSES {
        let mut new = false;
        for alias in unbound_modaliases() {
            new |= cat.load_for(&alias);
        }
        if !new {
            break;
        }
    }
}

/// The kernel's uevent multicast socket.
fn uevent_socket() -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, 1),
    )?;
    Ok(fd)
}

/// The `MODALIAS` of an `add` uevent, whose fields are NUL-separated
/// `KEY=value` strings after an `action@devpath` header.
pub fn added_modalias(event: &[u8]) -> Option<&str> {
    let mut add = false;
    let mut alias = None;
    for field in event.split(|b| *b == 0) {
        let field = std::str::from_utf8(field).ok()?;
        if field == "ACTION=add" {
            add = true;
        } else if let Some(a) = field.strip_prefix("MODALIAS=") {
            alias = Some(a);
        }
    }
    alias.filter(|_| add)
}

fn set_loading(loading: bool) {
    *LOADING.lock().unwrap_or_else(|p| p.into_inner()) = loading;
    if !loading {
        LOADED.notify_all();
    }
}

/// Starts the device-driven loading in a background thread: drivers for
/// the devices present first ([`wait_loaded`] waits for that), then for
/// hot-plugged ones as their uevents arrive.
pub fn start_device_drivers() {
    let Some(cat) = Catalog::read() else {
        log!("no modules.dep for this kernel: loading no drivers by device");
        return;
    };
    // Subscribed before the first pass, so no device falls between.
    let events = uevent_socket();
    if let Err(e) = &events {
        log!("cannot listen for uevents ({e}): hot-plugged devices get no drivers loaded");
    }
    set_loading(true);
    let spawned = thread::Builder::new()
        .name("devices".into())
        .spawn(move || {
            coldplug(&cat);
            let count = LOADED_NAMES.lock().map_or(0, |n| n.len());
            log!("drivers loaded for the devices present ({count} modules in all)");
            set_loading(false);
            let Ok(fd) = events else { return };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut buf,
                    MsgFlags::empty(),
                ) {
                    Ok(n) => {
                        if let Some(alias) = added_modalias(&buf[..n]) {
                            cat.load_for(alias);
                        }
                    }
                    Err(Errno::EINTR | Errno::ENOBUFS) => {
                        // Events were dropped: catch up by scanning.
                        coldplug(&cat);
                    }
                    Err(e) => {
                        log!("uevent socket failed ({e}); no more drivers for hot-plugged devices");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log!("cannot start the device thread: {e}");
        set_loading(false);
    }
}

/// Waits until drivers for the devices present at boot are loaded (at
/// once when no loading runs).
pub fn wait_loaded() {
    let guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, timeout) = LOADED
        .wait_timeout_while(guard, WAIT_LIMIT, |loading| *loading)
        .unwrap_or_else(|p| p.into_inner());
    if timeout.timed_out() && *guard {
        log!(
            "drivers still loading after {}s; going on without them",
            WAIT_LIMIT.as_secs()
        );
    }
}

/// The SCSI layer's scan mode, a parameter it lets change at run time.
const SCSI_SCAN_PARAM: &str = "/sys/module/scsi_mod/parameters/scan";

/// With `scsi_mod.scan=none` (Kata's default parameter) a SCSI layer built
/// into the kernel skips the boot-time scan, which saves time, but also
/// ignores the event with which a controller announces a hot-plugged
/// disk (`scsi_scan_target` returns at once). The boot-time scan is over
/// once init runs, so from here on the layer scans on events again. A
/// modular SCSI layer that the agent loads gets no parameters: it scans.
pub fn follow_scsi_hotplug() {
    if let Err(e) = follow_scsi_hotplug_in(Path::new(SCSI_SCAN_PARAM)) {
        log!("cannot set {SCSI_SCAN_PARAM} to sync: {e}; hot-plugged SCSI disks need a scan");
    }
}

fn follow_scsi_hotplug_in(param: &Path) -> std::io::Result<()> {
    match fs::read_to_string(param) {
        Ok(mode) if mode.trim() == "none" => fs::write(param, "sync"),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits for the boot-time drivers, then, once, asks every SCSI host to
/// scan its bus: with `scsi_mod.scan=none` (Kata's default, which saves
/// the boot-time scan) disks present at boot are found only this way.
/// Hot-plugged SCSI disks are added by their controller's event (see
/// [`follow_scsi_hotplug`]).
pub fn storage_ready() {
    static SCAN: Once = Once::new();
    wait_loaded();
    SCAN.call_once(|| {
        let Ok(hosts) = fs::read_dir("/sys/class/scsi_host") else {
            return;
        };
        for host in hosts.flatten() {
            if let Err(e) = fs::write(host.path().join("scan"), "- - -") {
                log!("cannot scan {}: {e}", host.path().display());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_mode_of_none_becomes_sync_and_others_stay() {
        let dir = std::env::temp_dir().join(format!("sv-agent-scan-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let param = dir.join("scan");
        fs::write(&param, "none\n").expect("write");
        follow_scsi_hotplug_in(&param).expect("switch");
        assert_eq!(fs::read_to_string(&param).expect("read"), "sync");
        fs::write(&param, "async\n").expect("write");
        follow_scsi_hotplug_in(&param).expect("keep");
        assert_eq!(fs::read_to_string(&param).expect("read"), "async\n");
        // A kernel without a SCSI layer (or with it not loaded yet).
        let absent = follow_scsi_hotplug_in(&dir.join("absent"));
        fs::remove_dir_all(&dir).expect("clean up");
        absent.expect("nothing to do");
    }

    const DEP: &str = "kernel/drivers/virtio/virtio.ko:\n\
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n";
    const ALIAS: &str = "alias virtio:d00000002v* virtio_blk\n\
alias virtio:d00000004v* virtio_rng\n\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n";

    #[test]
    fn aliases_pick_the_driver_and_deps_come_first() {
        let cat = Catalog::parse(Path::new("/lib/modules/r"), DEP, ALIAS);
        let m: Vec<_> = cat
            .matching("virtio:d00000002v00001AF4")
            .into_iter()
            .collect();
        assert_eq!(m, ["virtio_blk"]);
        assert_eq!(
            cat.with_deps("virtio_blk"),
            ["virtio", "virtio_ring", "virtio_blk"]
        );
        assert_eq!(
            cat.paths["virtio_rng"],
            Path::new("/lib/modules/r/kernel/drivers/char/hw_random/virtio-rng.ko")
        );
        assert!(cat.matching("virtio:d00000001v00001AF4").is_empty());
        // An alias naming a module the image lacks is no match.
        assert!(cat
            .matching("pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00")
            .is_empty());
    }

    #[test]
    fn uevents_give_the_modalias_of_additions_only() {
        let add = b"add@/devices/pci0000:00/0000:00:03.0/virtio2\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000002v00001AF4\0SEQNUM=1\0";
        assert_eq!(added_modalias(add), Some("virtio:d00000002v00001AF4"));
        let remove = b"remove@/devices/x\0ACTION=remove\0MODALIAS=virtio:d00000002v00001AF4\0";
        assert_eq!(added_modalias(remove), None);
        let bind = b"add@/devices/x\0ACTION=add\0SUBSYSTEM=block\0";
        assert_eq!(added_modalias(bind), None);
    }

    #[test]
    fn module_names_follow_modprobe() {
        assert_eq!(
            module_name(Path::new("/x/virtio-rng.ko")).as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(
            module_name(Path::new("a/b/ext4.ko.xz")).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn waiting_without_loading_returns_at_once() {
        wait_loaded();
    }

    #[test]
    fn a_waiter_is_released_when_loading_ends() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        set_loading(true);
        // Set just before loading ends: a waiter that returns while it is
        // still false was released too early, however the threads run.
        let ended = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&ended);
        let waiter = thread::spawn(move || {
            wait_loaded();
            seen.load(Ordering::SeqCst)
        });
        thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "must wait while loading");
        ended.store(true, Ordering::SeqCst);
        set_loading(false);
        assert!(
            waiter.join().expect("waiter"),
            "released before loading ended"
        );
    }

    #[test]
    fn virtio_mmio_is_loaded_only_when_devices_lack_a_driver() {
        assert!(needs_virtio_mmio_module(true, false));
        // Built in (or loaded already): nothing to load, nothing failed.
        assert!(!needs_virtio_mmio_module(true, true));
        assert!(!needs_virtio_mmio_module(false, false));
        assert!(!needs_virtio_mmio_module(false, true));
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        assert_eq!(load_list("/nonexistent/modules.early"), (0, 0));
    }
}
