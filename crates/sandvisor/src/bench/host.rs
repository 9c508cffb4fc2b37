//! How steady the host is: a fixed memory-bound workload, timed, so that
//! figures from a noisy host can be told apart.

use std::fmt;
use std::time::{Duration, Instant};

/// Entries in [`HostProbe`]'s table: 32 MiB, more than a server's
/// last-level cache share, so that every step goes to memory.
const HOST_PROBE_ENTRIES: u32 = 8 << 20;

/// Steps of one [`HostProbe::time`]: tens of milliseconds at DRAM latency.
const HOST_PROBE_STEPS: u32 = 300_000;

/// Key of the host-steadiness figure.
pub const HOST_PROBE_KEY: &str = "host_memory_probe";

/// Times a fixed chain of dependent memory loads, to show how steady the
/// host was while the boots were measured.
///
/// A TCG guest's boot is the host translating and running guest code, which
/// leans on the host's caches and memory as much as on its cores. On a
/// shared host, a neighbour's memory traffic slows that down without any
/// steal time showing, while plain arithmetic stays steady. A pointer chase
/// through a table larger than the cache moves with it, so timing the same
/// chase before every boot shows whether the boot figures were measured on
/// a steady host. [`Report::host_variation`](super::report::Report::host_variation) turns the spread into a
/// warning.
pub struct HostProbe {
    next: Vec<u32>,
}

impl HostProbe {
    /// Builds the table: one random cycle through every entry (Sattolo's
    /// shuffle), so the chase neither repeats early nor can be prefetched.
    pub fn new() -> HostProbe {
        let mut next: Vec<u32> = (0..HOST_PROBE_ENTRIES).collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..next.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // The remainder is below i, an index.
            let j = (x % i as u64) as usize;
            next.swap(i, j);
        }
        HostProbe { next }
    }

    /// How long the chase took this time.
    pub fn time(&self) -> Duration {
        let start = Instant::now();
        let mut at = 0u32;
        for _ in 0..std::hint::black_box(HOST_PROBE_STEPS) {
            at = self.next[at as usize];
        }
        std::hint::black_box(at);
        start.elapsed()
    }
}

impl fmt::Debug for HostProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostProbe")
            .field("entries", &self.next.len())
            .finish()
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_probe_chases_one_cycle_through_every_entry() {
        let probe = HostProbe::new();
        let mut at = 0u32;
        let mut steps = 0u32;
        loop {
            at = probe.next[at as usize];
            steps += 1;
            if at == 0 {
                break;
            }
        }
        assert_eq!(steps, HOST_PROBE_ENTRIES, "one cycle, no short loops");
        // Folded away or cached, the chase would take microseconds.
        let took = probe.time();
        assert!(took > Duration::from_millis(1), "{took:?}");
    }
}
