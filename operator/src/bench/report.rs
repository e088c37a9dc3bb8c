//! What `portiso bench` makes of its measurements: ratios between systems, the targets
//! (reported as met or not, never asserted) and the tables printed and put into
//! docs/performance.md.

use super::systems::System;
use super::{AttachComparison, ControlPlane, Measurement, Ratio, Report, Target};

pub fn find(results: &[Measurement], system: System, n: usize) -> Option<&Measurement> {
    results
        .iter()
        .find(|m| m.system == system && m.sandboxes == n)
}

/// The comparisons of every portiso row: with plain OVS (same switch), and with the two NATs.
const PORTISO_VERSUS: [System; 3] = [System::PlainOvs, System::LinuxNat, System::OvsCtNat];

/// portiso ÷ plain OVS, ÷ Linux DNAT, ÷ OVS ct(nat), and every system ÷ raw veth, per metric
/// and count.
pub fn ratios(results: &[Measurement], counts: &[usize]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &n in counts {
        let mut pairs = Vec::new();
        for p in System::ALL.iter().filter(|s| s.is_portiso()) {
            pairs.extend(PORTISO_VERSUS.iter().map(|&o| (*p, o)));
        }
        pairs.extend(System::ALL.iter().skip(1).map(|&s| (s, System::RawVeth)));
        for (a, b) in pairs {
            let (Some(ma), Some(mb)) = (find(results, a, n), find(results, b, n)) else {
                continue;
            };
            for ((metric, va), (_, vb)) in ma.metrics().into_iter().zip(mb.metrics()) {
                out.push(Ratio {
                    sandboxes: n,
                    what: format!("{} / {}", a.key(), b.key()),
                    metric: metric.into(),
                    ratio: if vb > 0.0 { va / vb } else { 0.0 },
                });
            }
        }
    }
    out
}

fn verdict(ok: bool) -> String {
    if ok { "met" } else { "not met" }.into()
}

fn not_measured(target: &str, why: &str) -> Target {
    Target {
        target: target.into(),
        status: "not measured".into(),
        detail: why.into(),
    }
}

/// " (Linux DNAT measured at 240, 1000 rule sets)" when a row was built smaller.
fn built_as(m: &Measurement) -> String {
    m.note
        .as_ref()
        .map(|n| format!(" ({} {n})", m.system.label()))
        .unwrap_or_default()
}

/// portiso's connection rate at least 3× another system's, at the largest count.
fn three_times(t: &mut Vec<Target>, results: &[Measurement], other: System, n: usize) {
    let name = format!(
        "connection rate >= 3x {} at 1000 sandboxes (measured at {n})",
        other.label()
    );
    match (find(results, System::Portiso, n), find(results, other, n)) {
        (Some(p), Some(o)) => {
            let r = p.tcp_connections.per_second / o.tcp_connections.per_second;
            t.push(Target {
                target: name,
                status: verdict(r >= 3.0),
                detail: format!(
                    "{:.0} / {:.0} conn/s = {r:.2}x{}",
                    p.tcp_connections.per_second,
                    o.tcp_connections.per_second,
                    built_as(o)
                ),
            });
        }
        _ => t.push(not_measured(
            &name,
            &format!("portiso or {} not in this run", other.label()),
        )),
    }
}

/// The targets, reported (never asserted).
pub fn targets(
    results: &[Measurement],
    counts: &[usize],
    cp: &ControlPlane,
    attach: Option<&AttachComparison>,
) -> Vec<Target> {
    let mut t = Vec::new();
    let max_n = counts.iter().copied().max().unwrap_or(1);
    let min_n = counts.iter().copied().min().unwrap_or(1);
    for &n in counts {
        let name = format!("portiso >= 0.95x plain OVS TCP throughput ({n} sandboxes)");
        match (
            find(results, System::Portiso, n),
            find(results, System::PlainOvs, n),
        ) {
            (Some(p), Some(o)) => {
                let r = p.tcp_throughput_gbps / o.tcp_throughput_gbps;
                t.push(Target {
                    target: name,
                    status: verdict(r >= 0.95),
                    detail: format!(
                        "{:.2} / {:.2} Gbit/s = {r:.2}x{}",
                        p.tcp_throughput_gbps,
                        o.tcp_throughput_gbps,
                        built_as(o)
                    ),
                });
            }
            _ => t.push(not_measured(&name, "portiso or plain OVS not in this run")),
        }
    }
    three_times(&mut t, results, System::OvsCtNat, max_n);
    three_times(&mut t, results, System::LinuxNat, max_n);
    let name = format!(
        "portiso connection rate within 10% from 1 to 1000 sandboxes (measured {min_n} to {max_n})"
    );
    match (
        find(results, System::Portiso, min_n),
        find(results, System::Portiso, max_n),
    ) {
        (Some(a), Some(b)) if max_n > min_n => {
            let r = b.tcp_connections.per_second / a.tcp_connections.per_second;
            t.push(Target {
                target: name,
                status: verdict(r >= 0.9),
                detail: format!(
                    "{:.0} conn/s at {max_n} / {:.0} at {min_n} = {r:.2}x",
                    b.tcp_connections.per_second, a.tcp_connections.per_second
                ),
            });
        }
        _ => t.push(not_measured(&name, "needs portiso at two sandbox counts")),
    }
    let profile = if cfg!(debug_assertions) {
        " (debug build: use criterion or a release build)"
    } else {
        ""
    };
    t.push(Target {
        target: "flow compile for 10k ranges < 5 ms".into(),
        status: verdict(cp.compile_10k_ranges_ms < 5.0),
        detail: format!("{:.2} ms{profile}", cp.compile_10k_ranges_ms),
    });
    t.push(Target {
        target: "overlap check of 100k < 50 ms".into(),
        status: verdict(cp.overlap_100k_entries_ms < 50.0),
        detail: format!(
            "overlapping_pairs over 100k entries {:.2} ms; arbitrate over 100k PortRanges {:.1} ms{profile}",
            cp.overlap_100k_entries_ms, cp.arbitrate_100k_ranges_ms
        ),
    });
    let name = "attach <= 1.2x the bridge plugin";
    match attach {
        Some(a) => t.push(Target {
            target: name.into(),
            status: verdict(a.ratio <= 1.2),
            detail: format!(
                "portiso-cni ADD p50 {:.0} ms with {} present / bridge+host-local ADD p50 {:.0} ms with {} present = {:.2}x",
                a.portiso_next_add_ms_p50,
                a.portiso_present,
                a.bridge_plugin.next_add_ms_p50,
                a.bridge_plugin.present,
                a.ratio
            ),
        }),
        None => t.push(not_measured(
            name,
            "the bridge plugin or portiso not measured in this run",
        )),
    }
    let name = format!("agent RSS < 30 MiB at 1000 sandboxes (measured at {max_n})");
    match find(results, System::Portiso, max_n).and_then(|m| m.agent_rss_mib) {
        Some(rss) => t.push(Target {
            target: name,
            status: verdict(rss < 30.0),
            detail: format!("{rss:.1} MiB"),
        }),
        None => t.push(not_measured(&name, "portiso not in this run")),
    }
    t
}

/// "1.23" as a ratio to a base, or "–" without one.
fn times(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}", v / b),
        _ => "–".into(),
    }
}

/// The terminal (and docs) table: one block per sandbox count.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for &n in &r.sandbox_counts {
        let raw = find(&r.results, System::RawVeth, n);
        s += &format!(
            "\n{n} sandbox(es), {} s per measurement\n\n",
            r.seconds_per_measurement
        );
        s += "| system | TCP in Gbit/s | × veth | TCP out Gbit/s | × veth | conn/s | × veth | conn p50 µs | conn p99 µs | UDP rr/s | × veth | UDP p50 µs | UDP p99 µs |\n";
        s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for m in r.results.iter().filter(|m| m.sandboxes == n) {
            let label = match &m.note {
                Some(note) => format!("{} ({note})", m.system.label()),
                None => m.system.label().to_string(),
            };
            s += &format!(
                "| {label} | {:.2} | {} | {:.2} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} |\n",
                m.tcp_throughput_gbps,
                times(m.tcp_throughput_gbps, raw.map(|r| r.tcp_throughput_gbps)),
                m.tcp_throughput_out_gbps,
                times(m.tcp_throughput_out_gbps, raw.map(|r| r.tcp_throughput_out_gbps)),
                m.tcp_connections.per_second,
                times(
                    m.tcp_connections.per_second,
                    raw.map(|r| r.tcp_connections.per_second)
                ),
                m.tcp_connections.p50_us,
                m.tcp_connections.p99_us,
                m.udp_request_response.per_second,
                times(
                    m.udp_request_response.per_second,
                    raw.map(|r| r.udp_request_response.per_second)
                ),
                m.udp_request_response.p50_us,
                m.udp_request_response.p99_us,
            );
        }
        s += "\n";
        for p in System::ALL.iter().filter(|p| p.is_portiso()) {
            for o in PORTISO_VERSUS {
                let what = format!("{} / {}", p.key(), o.key());
                let rs: Vec<_> = r
                    .ratios
                    .iter()
                    .filter(|x| x.sandboxes == n && x.what == what)
                    .collect();
                if let [tin, tout, conn, udp] = rs[..] {
                    s += &format!(
                        "{what}: throughput in {:.2}x, out {:.2}x, connections {:.2}x, UDP rr {:.2}x\n",
                        tin.ratio, tout.ratio, conn.ratio, udp.ratio
                    );
                }
            }
        }
        for p in r
            .results
            .iter()
            .filter(|m| m.sandboxes == n && m.system.is_portiso())
        {
            s += &portiso_line(p);
        }
        s += &cpu_line(r.results.iter().filter(|m| m.sandboxes == n));
        let failed: u64 = r
            .results
            .iter()
            .filter(|m| m.sandboxes == n)
            .map(|m| m.tcp_connections.failed + m.udp_request_response.failed)
            .sum();
        if failed > 0 {
            s += &format!("failed requests (timeouts, resets) in these rows: {failed}\n");
        }
    }
    s += "\n";
    match (&r.attach, &r.attach_error) {
        (Some(a), _) => {
            let b = &a.bridge_plugin;
            s += &format!(
                "attach: portiso-cni ADD of the next sandbox with {} present p50 {:.0} ms; CNI bridge+host-local with {} present p50 {:.0} ms (filling: p50 {:.0} ms); ratio {:.2}x\n",
                a.portiso_present, a.portiso_next_add_ms_p50, b.present, b.next_add_ms_p50, b.fill_add_ms_p50, a.ratio
            );
            if let (Some(ports), Some(ms)) = (b.portmap_ports, b.portmap_add_ms) {
                s += &format!(
                    "note: CNI portmap ADD for one sandbox with a {ports}-port range (one mapping per port): {ms:.0} ms\n"
                );
            }
        }
        (None, Some(e)) => s += &format!("attach: bridge plugin not measured: {e}\n"),
        (None, None) => {}
    }
    let cp = &r.control_plane;
    s += &format!(
        "\ncontrol plane ({} build, median): compile 10k ranges {:.2} ms, overlapping_pairs 100k entries {:.2} ms, arbitrate 100k PortRanges {:.1} ms\n",
        r.machine.profile, cp.compile_10k_ranges_ms, cp.overlap_100k_entries_ms, cp.arbitrate_100k_ranges_ms
    );
    s += "\n| target (issue 5) | status | measured |\n| --- | --- | --- |\n";
    for t in &r.targets {
        s += &format!("| {} | {} | {} |\n", t.target, t.status, t.detail);
    }
    s
}

/// The machine's CPU time per connection and per UDP request/response of each system.
fn cpu_line<'a>(rows: impl Iterator<Item = &'a Measurement>) -> String {
    let us = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.0}"));
    let each: Vec<String> = rows
        .map(|m| {
            format!(
                "{} {} / {}",
                m.system.key(),
                us(m.tcp_connections.cpu_us_per_op),
                us(m.udp_request_response.cpu_us_per_op)
            )
        })
        .collect();
    format!(
        "CPU µs per connection / per UDP request, whole machine: {}\n",
        each.join(", ")
    )
}

/// A portiso row's control-plane figures.
fn portiso_line(p: &Measurement) -> String {
    let mut parts = Vec::new();
    if let Some(a) = p.attach_ms_p50 {
        parts.push(format!(
            "CNI ADD while building p50 {a:.0} ms (max {:.0} ms, {} at a time)",
            p.attach_ms_max.unwrap_or(0.0),
            p.attach_workers.unwrap_or(1)
        ));
    }
    if let Some(a) = p.next_attach_ms_p50 {
        parts.push(format!(
            "next sandbox's ADD p50 {a:.0} ms with {} present",
            p.plan.sandboxes
        ));
    }
    if let Some(f) = p.flow_update {
        parts.push(match f.after_read_ms {
            Some(a) => format!(
                "flow update of one sandbox {a:.0} ms after the agent read the change ({:.0} ms with its rangesDir poll)",
                f.total_ms
            ),
            None => format!(
                "flow update of one sandbox {:.0} ms (with the agent's rangesDir poll)",
                f.total_ms
            ),
        });
    }
    if let Some(rss) = p.agent_rss_mib {
        parts.push(format!("agent RSS {rss:.1} MiB"));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("{}: {}\n", p.system.key(), parts.join(", "))
}
