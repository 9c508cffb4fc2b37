//! What a bench run found: figures with their samples and summaries, the
//! machine they were measured on, as JSON and as a table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// How far apart (slowest over fastest, less one) the host-steadiness
/// probe may be before the report warns that the host's speed moved.
pub const HOST_VARIATION_WARN: f64 = 0.15;

/// Version of the JSON layout.
pub const REPORT_VERSION: u32 = 1;

/// The unit of a figure's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// MiB.
    Mib,
    /// A ratio.
    Ratio,
    /// A count.
    Count,
}

impl Unit {
    /// How the table and the chart write it.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Millis => "ms",
            Unit::Mib => "MiB",
            Unit::Ratio => "x",
            Unit::Count => "",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Unit::Seconds | Unit::Ratio => 3,
            Unit::Millis | Unit::Mib => 1,
            Unit::Count => 0,
        }
    }
}

/// A figure's goal: its median must be at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The largest acceptable median.
    pub max: f64,
}

/// One measured quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The section: `cold`, `lifecycle`, `hotplug`, `memory`, `cpu`,
    /// `density`.
    pub section: String,
    /// A short key, such as `cold_start_sandvisor`.
    pub key: String,
    /// What it measures, for people.
    pub label: String,
    /// The samples' unit.
    pub unit: Unit,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
    /// Their summary.
    pub summary: Summary,
    /// The goal, when the figure has one.
    pub target: Option<Target>,
}

impl Figure {
    /// Whether the median meets the target; `None` without one.
    pub fn meets_target(&self) -> Option<bool> {
        self.target.map(|t| self.summary.median <= t.max)
    }
}

/// The machine a run measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: u32,
    /// MemTotal in MiB.
    pub memory_mib: u64,
    /// The host kernel release.
    pub kernel: String,
    /// The first line of `qemu-system-x86_64 --version`.
    pub qemu: String,
    /// The accelerator the guests ran on, and why.
    pub accel: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// sandvisor's version.
    pub sandvisor: String,
    /// When the run started, RFC 3339 in UTC.
    pub started: String,
    /// The command that made it.
    pub command: String,
    /// Where.
    pub machine: Machine,
    /// What the guest was: kernel, initrd and the QEMU argv of the raw
    /// baseline.
    pub setup: Vec<String>,
    /// The figures, in section order.
    pub figures: Vec<Figure>,
    /// Sections that could not be measured, and why.
    pub failures: Vec<String>,
}

impl Report {
    /// The figure with `key`.
    pub fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// Whether every figure with a target meets it, and nothing failed.
    pub fn all_targets_met(&self) -> bool {
        self.failures.is_empty() && self.figures.iter().all(|f| f.meets_target() != Some(false))
    }

    /// How much the host's speed moved during the run: the slowest
    /// host-steadiness probe over the fastest, less one (0.4 means the
    /// same work took 40% longer at worst). `None` when the cold section
    /// did not run.
    pub fn host_variation(&self) -> Option<f64> {
        let f = self.figure(super::HOST_PROBE_KEY)?;
        (f.summary.min > 0.0).then(|| f.summary.max / f.summary.min - 1.0)
    }

    /// A warning for people reading the figures, when the host's speed
    /// moved by more than [`HOST_VARIATION_WARN`] during the run.
    pub fn steadiness_note(&self) -> Option<String> {
        let v = self.host_variation()?;
        let f = self.figure(super::HOST_PROBE_KEY)?;
        (v > HOST_VARIATION_WARN).then(|| {
            format!(
                "note: this host was not steady during the run: the same memory-bound work \
                 took {:.1}-{:.1} ms ({:.0}% apart). TCG boot times move with the host; \
                 the side-by-side ratio against raw QEMU is the figure to compare, or \
                 re-run on a quieter host for absolute times.",
                f.summary.min,
                f.summary.max,
                v * 100.0
            )
        })
    }

    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 9]> = vec![[
            "section".into(),
            "figure".into(),
            "n".into(),
            "median".into(),
            "min".into(),
            "p90".into(),
            "max".into(),
            "target".into(),
            "".into(),
        ]];
        for f in &self.figures {
            let d = f.unit.decimals();
            let u = f.unit.label();
            let v = |x: f64| format!("{x:.d$}{u}");
            rows.push([
                f.section.clone(),
                f.label.clone(),
                f.summary.n.to_string(),
                v(f.summary.median),
                v(f.summary.min),
                v(f.summary.p90),
                v(f.summary.max),
                f.target
                    .map_or_else(String::new, |t| format!("<= {}", v(t.max))),
                match f.meets_target() {
                    Some(true) => "ok".into(),
                    Some(false) => "MISSED".into(),
                    None => String::new(),
                },
            ]);
        }
        let mut widths = [0usize; 9];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let mut line = String::new();
            for (c, (cell, w)) in row.iter().zip(widths).enumerate() {
                // Text left, numbers right.
                if c < 2 || c == 8 {
                    let _ = write!(line, "{cell:<w$}  ");
                } else {
                    let _ = write!(line, "{cell:>w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        for f in &self.failures {
            let _ = writeln!(out, "not measured: {f}");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn figure(
        section: &str,
        key: &str,
        unit: Unit,
        samples: &[f64],
        max: Option<f64>,
    ) -> Figure {
        Figure {
            section: section.into(),
            key: key.into(),
            label: key.replace('_', " "),
            unit,
            samples: samples.to_vec(),
            summary: Summary::of(samples).expect("samples"),
            target: max.map(|max| Target { max }),
        }
    }

    pub(crate) fn report() -> Report {
        Report {
            version: REPORT_VERSION,
            sandvisor: "0.1.0".into(),
            started: "2026-11-24T00:00:00Z".into(),
            command: "sandvisor bench".into(),
            machine: Machine {
                cpu_model: "Test CPU".into(),
                cpus: 2,
                memory_mib: 24000,
                kernel: "6.1".into(),
                qemu: "QEMU emulator version 7.2".into(),
                accel: "tcg".into(),
            },
            setup: vec!["kernel /k".into()],
            figures: vec![
                figure(
                    "cold",
                    "cold_start_sandvisor",
                    Unit::Seconds,
                    &[1.9, 2.1, 1.95],
                    Some(2.0),
                ),
                figure(
                    "cold",
                    "cold_start_raw",
                    Unit::Seconds,
                    &[1.9, 1.92, 1.93],
                    None,
                ),
                figure(
                    "lifecycle",
                    "pause",
                    Unit::Millis,
                    &[1.0, 2.0, 30.0],
                    Some(10.0),
                ),
            ],
            failures: vec![],
        }
    }

    #[test]
    fn targets_are_judged_on_the_median() {
        let r = report();
        assert_eq!(
            r.figure("cold_start_sandvisor")
                .and_then(Figure::meets_target),
            Some(true)
        );
        assert_eq!(
            r.figure("pause").and_then(Figure::meets_target),
            Some(true),
            "an outlier does not fail it"
        );
        assert_eq!(
            r.figure("cold_start_raw").and_then(Figure::meets_target),
            None
        );
        assert!(r.all_targets_met());
        let mut missed = r.clone();
        missed.figures[2] = figure(
            "lifecycle",
            "pause",
            Unit::Millis,
            &[11.0, 12.0],
            Some(10.0),
        );
        assert!(!missed.all_targets_met());
        let mut failed = r;
        failed.failures.push("density: no QEMU".into());
        assert!(!failed.all_targets_met());
    }

    #[test]
    fn the_table_shows_medians_targets_and_verdicts() {
        let mut r = report();
        r.figures[2] = figure(
            "lifecycle",
            "pause",
            Unit::Millis,
            &[11.0, 12.0],
            Some(10.0),
        );
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("section"), "{t}");
        assert!(lines[1].starts_with("----"), "{t}");
        let cold = lines
            .iter()
            .find(|l| l.contains("cold start sandvisor"))
            .expect("row");
        assert!(
            cold.contains("1.950s") && cold.contains("<= 2.000s") && cold.ends_with("ok"),
            "{cold}"
        );
        let pause = lines.iter().find(|l| l.contains("pause")).expect("row");
        assert!(
            pause.contains("11.5ms") && pause.ends_with("MISSED"),
            "{pause}"
        );
    }

    #[test]
    fn a_host_whose_speed_moved_is_called_out() {
        let mut r = report();
        assert_eq!(r.host_variation(), None, "no probe, no verdict");
        assert_eq!(r.steadiness_note(), None);
        r.figures.push(figure(
            "cold",
            crate::bench::HOST_PROBE_KEY,
            Unit::Millis,
            &[40.0, 42.0, 41.0],
            None,
        ));
        let v = r.host_variation().expect("variation");
        assert!((v - 0.05).abs() < 1e-9, "{v}");
        assert_eq!(r.steadiness_note(), None, "5% is steady");
        r.figures.last_mut().expect("probe").summary =
            Summary::of(&[40.0, 58.0, 44.0]).expect("summary");
        let note = r.steadiness_note().expect("45% is not steady");
        assert!(
            note.contains("40.0-58.0 ms") && note.contains("45% apart"),
            "{note}"
        );
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let text = serde_json::to_string_pretty(&r).expect("json");
        let back: Report = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).expect("value");
        assert_eq!(v["figures"][0]["summary"]["median"], 1.95);
        assert_eq!(v["figures"][0]["unit"], "seconds");
        assert_eq!(v["figures"][0]["target"]["max"], 2.0);
    }
}
