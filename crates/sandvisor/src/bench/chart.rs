//! The report as an SVG bar chart: one panel per unit, a bar per figure at
//! its median, a whisker from the smallest to the largest sample, and a
//! red mark at the target.
//!
//! Written by hand rather than with a plotting crate: a bar chart is a few
//! rectangles and lines, and SVG text needs no font files, which the
//! plotting crates' raster backends do.

use std::fmt::Write as _;

use super::report::{Figure, Report, Unit};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 380.0;
const PLOT_W: f64 = 460.0;
const ROW_H: f64 = 26.0;
const PANEL_GAP: f64 = 34.0;

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panel_title(section: &str, unit: Unit) -> String {
    let unit = match unit {
        Unit::Seconds => "seconds",
        Unit::Millis => "milliseconds",
        Unit::Mib => "MiB",
        Unit::Ratio => "ratio",
        Unit::Count => "count",
    };
    format!("{section} ({unit})")
}

/// The scale's upper end: the largest sample or target, with room.
fn scale_max(figures: &[&Figure]) -> f64 {
    let top = figures
        .iter()
        .flat_map(|f| [f.summary.max, f.target.map_or(0.0, |t| t.max)])
        .fold(0.0, f64::max);
    if top <= 0.0 {
        1.0
    } else {
        top * 1.12
    }
}

/// Renders `report` as an SVG document.
pub fn render(report: &Report) -> String {
    // One panel per section and unit, in the report's order.
    let mut panels: Vec<(&str, Unit)> = Vec::new();
    for f in &report.figures {
        if !panels.contains(&(f.section.as_str(), f.unit)) {
            panels.push((f.section.as_str(), f.unit));
        }
    }
    let rows: usize = report.figures.len();
    let height = 70.0 + rows as f64 * ROW_H + panels.len() as f64 * (PANEL_GAP + 20.0) + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="24" font-size="16" font-weight="bold">sandvisor bench — {}</text>"#,
        esc(&report.started)
    );
    let _ = writeln!(
        s,
        r##"<text x="12" y="44" fill="#555">{} · {} CPUs · {} MiB · {} · accel {}</text>"##,
        esc(&report.machine.cpu_model),
        report.machine.cpus,
        report.machine.memory_mib,
        esc(&report.machine.qemu),
        // The reason in parentheses is in the JSON.
        esc(report.machine.accel.split(" (").next().unwrap_or(""))
    );
    let mut y = 70.0;
    for (section, unit) in panels {
        let figures: Vec<&Figure> = report
            .figures
            .iter()
            .filter(|f| f.unit == unit && f.section == section)
            .collect();
        let max = scale_max(&figures);
        let x = |v: f64| LABEL_W + v / max * PLOT_W;
        let _ = writeln!(
            s,
            r#"<text x="12" y="{}" font-weight="bold">{}</text>"#,
            y + 4.0,
            esc(&panel_title(section, unit))
        );
        y += 14.0;
        let top = y;
        for f in &figures {
            let mid = y + ROW_H / 2.0;
            let colour = match f.meets_target() {
                Some(false) => "#d9822b",
                _ => "#4c78a8",
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL_W - 8.0,
                mid + 4.0,
                esc(&f.label)
            );
            let _ = writeln!(
                s,
                r#"<rect class="bar" x="{LABEL_W}" y="{}" width="{:.1}" height="{}" fill="{colour}"><title>{}: median {}</title></rect>"#,
                y + 5.0,
                x(f.summary.median) - LABEL_W,
                ROW_H - 10.0,
                esc(&f.key),
                f.summary.median
            );
            let (x0, x1) = (x(f.summary.min), x(f.summary.max));
            let _ = writeln!(
                s,
                r##"<path class="whisker" d="M{x0:.1},{mid} H{x1:.1} M{x0:.1},{} V{} M{x1:.1},{} V{}" stroke="#222" fill="none"/>"##,
                mid - 5.0,
                mid + 5.0,
                mid - 5.0,
                mid + 5.0
            );
            if let Some(t) = f.target {
                let xt = x(t.max);
                let _ = writeln!(
                    s,
                    r##"<path class="target" d="M{xt:.1},{} V{}" stroke="#c00" stroke-width="2" stroke-dasharray="3,2"/>"##,
                    y + 2.0,
                    y + ROW_H - 2.0
                );
            }
            let d = if unit == Unit::Seconds || unit == Unit::Ratio {
                3
            } else {
                1
            };
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" fill="#333">{:.d$} {} (n={})</text>"##,
                x(f.summary.max.max(f.target.map_or(0.0, |t| t.max))) + 8.0,
                mid + 4.0,
                f.summary.median,
                unit.label(),
                f.summary.n
            );
            y += ROW_H;
        }
        let _ = writeln!(
            s,
            r##"<path d="M{LABEL_W},{top} V{y}" stroke="#999"/><text x="{LABEL_W}" y="{}" fill="#777" font-size="10">0</text><text x="{}" y="{}" fill="#777" font-size="10" text-anchor="end">{:.3}</text>"##,
            y + 12.0,
            LABEL_W + PLOT_W,
            y + 12.0,
            max
        );
        y += PANEL_GAP;
    }
    let _ = writeln!(
        s,
        r##"<text x="12" y="{}" fill="#555" font-size="11">bar: median · whisker: min–max · red dash: target (orange bar: missed)</text>"##,
        y - 6.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::{figure, report};
    use super::*;

    #[test]
    fn one_bar_and_whisker_per_figure_and_a_mark_per_target() {
        let r = report();
        let svg = render(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="bar""#).count(), r.figures.len());
        assert_eq!(svg.matches(r#"class="whisker""#).count(), r.figures.len());
        assert_eq!(svg.matches(r#"class="target""#).count(), 2);
        for label in ["cold start sandvisor", "cold start raw", "pause"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        assert!(svg.contains("cold (seconds)"));
        assert!(svg.contains("lifecycle (milliseconds)"));
    }

    #[test]
    fn bars_scale_with_their_medians() {
        let mut r = report();
        r.figures = vec![
            figure("x", "a", Unit::Millis, &[10.0], None),
            figure("x", "b", Unit::Millis, &[20.0], None),
        ];
        let svg = render(&r);
        let widths: Vec<f64> = svg
            .match_indices(r#"class="bar""#)
            .map(|(i, _)| {
                let rest = &svg[i..];
                let w = rest
                    .split("width=\"")
                    .nth(1)
                    .and_then(|t| t.split('"').next());
                w.and_then(|w| w.parse().ok()).expect("width")
            })
            .collect();
        assert_eq!(widths.len(), 2);
        assert!((widths[1] / widths[0] - 2.0).abs() < 0.01, "{widths:?}");
    }

    #[test]
    fn labels_are_escaped() {
        let mut r = report();
        r.figures[0].label = "a <b> & c".into();
        let svg = render(&r);
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
    }
}
