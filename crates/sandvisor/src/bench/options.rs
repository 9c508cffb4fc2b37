//! What `sandvisor bench` measures and how often: its sections and
//! options.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Cold start against raw QEMU, first exec, `run -- true`.
    Cold,
    /// Exec round trip, pause, resume.
    Lifecycle,
    /// CPU, memory and disk hot-plug.
    Hotplug,
    /// Memory per sandbox and CPU time per lifecycle.
    Memory,
    /// Sandboxes started together.
    Density,
    /// The Firecracker backend with the tiny guest: API boot, pause and
    /// resume, snapshot, restore, hot-plug ack. Not run by default.
    Firecracker,
    /// The Cloud Hypervisor backend with the tiny guest: create+boot,
    /// pause and resume, hot-plug ack. Not run by default.
    Clh,
    /// VMs from a template against cold boots: `run -- true`, agent
    /// answering, PSS of 10 clones. Not run by default (it mounts a tmpfs,
    /// so it needs root).
    Factory,
}

impl Section {
    /// Every section run by default, in running order.
    pub const ALL: [Section; 5] = [
        Section::Cold,
        Section::Lifecycle,
        Section::Hotplug,
        Section::Memory,
        Section::Density,
    ];

    /// Sections run only when asked for (`--only`).
    pub const OPTIONAL: [Section; 3] = [Section::Firecracker, Section::Clh, Section::Factory];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Cold => "cold",
            Section::Lifecycle => "lifecycle",
            Section::Hotplug => "hotplug",
            Section::Memory => "memory",
            Section::Density => "density",
            Section::Firecracker => "firecracker",
            Section::Clh => "clh",
            Section::Factory => "factory",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Section {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .chain(Section::OPTIONAL)
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown section {s:?}: expected cold, lifecycle, hotplug, memory, density, firecracker, clh or factory"
                )
            })
    }
}

/// What to measure, how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Counted boots per boot figure (cold start, raw QEMU, `run`).
    pub boots: usize,
    /// Samples of cheap operations (exec, pause, resume).
    pub ops: usize,
    /// Hot-plugs of each kind (memory is bounded by the DIMM slots).
    pub hotplugs: usize,
    /// CLI lifecycles for memory and CPU time.
    pub lifecycles: usize,
    /// Sandboxes started together in the density section.
    pub density: usize,
    /// Sections to run.
    pub sections: BTreeSet<Section>,
    /// The `sandvisor` binary, for the sections that use the CLI.
    pub cli: PathBuf,
    /// How long one VM may take to answer.
    pub boot_timeout: Duration,
    /// How the run was invoked, for the report.
    pub command: String,
    /// A second asset directory (another kernel and its initrd) whose cold
    /// start the cold section measures in the same run, interleaved with
    /// the default assets'; its figures' keys end in `@compared`.
    pub compare_assets: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            boots: 9,
            ops: 20,
            hotplugs: 5,
            lifecycles: 3,
            density: 4,
            sections: Section::ALL.into_iter().collect(),
            cli: PathBuf::from("sandvisor"),
            boot_timeout: Duration::from_secs(60),
            command: "sandvisor bench".into(),
            compare_assets: None,
        }
    }
}
