//! The bench's plot: TCP throughput and connection rate against the number of sandboxes, one
//! line per system, as a self-contained SVG (log scales on both axes) written beside the JSON.
//! Points sit at the number of sandboxes actually built; hollow ones were built with fewer than
//! asked for (the address plan), see the notes in the table.

use super::systems::System;
use super::{Measurement, Report};
use std::fmt::Write;

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 44.0;
const GAP: f64 = 40.0;
const LEGEND_H: f64 = 76.0;

fn colour(s: System) -> &'static str {
    match s {
        System::RawVeth => "#7f7f7f",
        System::PlainOvs => "#1f77b4",
        System::LinuxNat => "#ff7f0e",
        System::OvsCtNat => "#9467bd",
        System::Portiso => "#d62728",
        System::PortisoFastpath => "#2ca02c",
        System::PortisoAfxdpNonpmd => "#e377c2",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A log10 axis over whole decades covering `lo..=hi` (both > 0).
struct LogAxis {
    lo: i32,
    hi: i32,
}

impl LogAxis {
    fn covering(values: impl Iterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return LogAxis { lo: 0, hi: 1 };
        }
        let lo = lo.log10().floor() as i32;
        let hi = (hi.log10().ceil() as i32).max(lo + 1);
        LogAxis { lo, hi }
    }

    /// Position of `v` in 0..=1.
    fn at(&self, v: f64) -> f64 {
        (v.max(1e-12).log10() - f64::from(self.lo)) / f64::from(self.hi - self.lo)
    }

    fn decades(&self) -> impl Iterator<Item = (f64, String)> {
        (self.lo..=self.hi).map(|d| {
            let v = 10f64.powi(d);
            let label = if d >= 0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            };
            (v, label)
        })
    }
}

type Metric = fn(&Measurement) -> f64;

/// The SVG document.
pub fn svg(r: &Report) -> String {
    let panels: [(&str, Metric); 2] = [
        ("TCP throughput peer→sandbox, Gbit/s", |m| {
            m.tcp_throughput_gbps
        }),
        ("TCP connections/s (concurrency 1)", |m| {
            m.tcp_connections.per_second
        }),
    ];
    let systems: Vec<System> = System::ALL
        .into_iter()
        .filter(|s| r.results.iter().any(|m| m.system == *s))
        .collect();
    let width = 2.0 * (MARGIN_L + PANEL_W) + GAP + 20.0;
    let height = MARGIN_T + PANEL_H + MARGIN_B + LEGEND_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let xaxis = LogAxis::covering(r.results.iter().map(|m| m.plan.sandboxes as f64));
    for (p, (title, metric)) in panels.iter().enumerate() {
        let x0 = MARGIN_L + p as f64 * (MARGIN_L + PANEL_W + GAP);
        let y0 = MARGIN_T;
        let yaxis = LogAxis::covering(r.results.iter().map(metric));
        let px = |v: f64| x0 + xaxis.at(v) * PANEL_W;
        let py = |v: f64| y0 + PANEL_H - yaxis.at(v) * PANEL_H;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + PANEL_W / 2.0,
            y0 - 14.0,
            esc(title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#333"/>"##
        );
        for (v, label) in yaxis.decades() {
            let y = py(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                x0 + PANEL_W,
                x0 - 6.0,
                y + 4.0
            );
        }
        for (v, label) in xaxis.decades() {
            let x = px(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
                y0 + PANEL_H,
                y0 + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">sandboxes (log scale)</text>"#,
            x0 + PANEL_W / 2.0,
            y0 + PANEL_H + 34.0
        );
        for &s in &systems {
            let mut pts: Vec<&Measurement> = r.results.iter().filter(|m| m.system == s).collect();
            pts.sort_by_key(|m| m.sandboxes);
            let c = colour(s);
            let width = if s.is_portiso() { 3 } else { 2 };
            let line: Vec<String> = pts
                .iter()
                .map(|m| format!("{:.1},{:.1}", px(m.plan.sandboxes as f64), py(metric(m))))
                .collect();
            if line.len() > 1 {
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="{width}"/>"#,
                    line.join(" ")
                );
            }
            for m in pts {
                let fill = if m.note.is_some() { "white" } else { c };
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{c}" stroke-width="2"><title>{}: {} sandboxes{}: {:.3}</title></circle>"#,
                    px(m.plan.sandboxes as f64),
                    py(metric(m)),
                    esc(s.label()),
                    m.sandboxes,
                    m.note
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    metric(m)
                );
            }
        }
    }
    let ly = MARGIN_T + PANEL_H + MARGIN_B + 18.0;
    for (i, &s) in systems.iter().enumerate() {
        let x = MARGIN_L + i as f64 * 170.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            colour(s),
            x + 30.0,
            ly + 4.0,
            esc(s.label())
        );
    }
    let notes = [
        format!(
            "Hollow points: built with fewer sandboxes than asked for (one address each, at most {} in a /24);",
            super::systems::MAX_ADDRESSES
        ),
        format!(
            "the NAT systems still hold a rule set per requested sandbox. Kernel {}, {} s per measurement.",
            r.machine.kernel, r.seconds_per_measurement
        ),
    ];
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="{MARGIN_L}" y="{}" fill="#444">{}</text>"##,
            ly + 26.0 + 16.0 * i as f64,
            esc(note)
        );
    }
    out += "</svg>\n";
    out
}

#[cfg(test)]
mod tests {
    use super::LogAxis;

    #[test]
    fn log_axes_cover_whole_decades() {
        let a = LogAxis::covering([0.4, 35.0].into_iter());
        assert_eq!((a.lo, a.hi), (-1, 2));
        assert!((a.at(1.0) - 1.0 / 3.0).abs() < 1e-9);
        let one = LogAxis::covering([1.0].into_iter());
        assert_eq!((one.lo, one.hi), (0, 1));
        let labels: Vec<String> = a.decades().map(|(_, l)| l).collect();
        assert_eq!(labels, ["0.1", "1", "10", "100"]);
    }
}
