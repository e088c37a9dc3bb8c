//! `portiso bench`: portiso against the raw link, a plain OVS switch and Linux bridge + iptables
//! DNAT (the CNI portmap way), side by side in one run on this machine.
//!
//! Each system is built in namespaces of its own (see [`systems`]), measured with the same
//! generators (see [`load`]) and removed before the next one is built, so that they never
//! compete for the CPU. Every figure is also shown as a ratio to baselines of the same run.
//! Ctrl-C stops the measurement and still removes everything (the builders' drop guards).

pub mod load;
pub mod synthetic;
pub mod systems;

use load::Rate;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use systems::System;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds, not minutes: one sandbox, short measurements (what the test suite runs).
    #[arg(long)]
    pub quick: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench.json")]
    pub json: PathBuf,
    /// Numbers of sandboxes to measure with, comma-separated (default 1,100; --quick: 1).
    #[arg(long, value_delimiter = ',')]
    pub sandboxes: Option<Vec<usize>>,
    /// Seconds per measurement (default 3; --quick: 0.5).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Parallel TCP streams of the throughput test, spread over the sandboxes.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Which systems to measure, comma-separated (default all).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub systems: Option<Vec<System>>,
    /// Turn TX checksum offload off on every veth, also where the kernel alone forwards (raw
    /// veth, Linux DNAT); by default only where OVS's userspace datapath needs it.
    #[arg(long)]
    pub offloads_off_everywhere: bool,
}

/// Set by SIGINT/SIGTERM: measurements end early and the run unwinds through the guards.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(s, &action) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    anyhow::ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted: everything built so far has been removed"
    );
    Ok(())
}

/// The figures of one system with one number of sandboxes.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub system: System,
    pub sandboxes: usize,
    pub tcp_throughput_gbps: f64,
    pub tcp_connections: Rate,
    pub udp_request_response: Rate,
    pub setup_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_ms_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_ms_max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_rss_mib: Option<f64>,
}

impl Measurement {
    /// The rates compared across systems, by name.
    fn metrics(&self) -> [(&'static str, f64); 3] {
        [
            ("tcp_throughput_gbps", self.tcp_throughput_gbps),
            ("tcp_connections_per_s", self.tcp_connections.per_second),
            ("udp_rr_per_s", self.udp_request_response.per_second),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub sandboxes: usize,
    pub what: String,
    pub metric: String,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    /// Median of a few runs, in this binary's build profile (see `profile`).
    pub compile_10k_ranges_ms: f64,
    pub overlap_100k_entries_ms: f64,
    pub arbitrate_100k_ranges_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    /// "met", "not met" or "not measured".
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub load_average_at_start: String,
    pub ovs_datapath: String,
    pub profile: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub seconds_per_measurement: f64,
    pub throughput_streams: usize,
    pub offloads_off_everywhere: bool,
    pub systems: Vec<System>,
    pub sandbox_counts: Vec<usize>,
    pub results: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    pub control_plane: ControlPlane,
    pub targets: Vec<Target>,
    pub total_seconds: f64,
}

fn progress(phase: &str, done: usize, total: usize) {
    if total >= 10 && (done.is_multiple_of(10) || done == total) {
        eprintln!("    {phase} {done}/{total}");
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    catch_signals();
    let started = Instant::now();
    let counts = args
        .sandboxes
        .clone()
        .unwrap_or(if args.quick { vec![1] } else { vec![1, 100] });
    let secs = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    let dur = Duration::from_secs_f64(secs);
    let systems = args.systems.clone().unwrap_or(System::ALL.to_vec());
    let machine = machine();
    eprintln!(
        "portiso bench: {} on {} ({} CPUs, load {}), OVS datapath {}, {secs} s per measurement",
        systems
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", "),
        machine.kernel,
        machine.cpus,
        machine.load_average_at_start,
        machine.ovs_datapath
    );
    let opts = systems::BuildOptions {
        sandboxes: 1,
        offloads_off_everywhere: args.offloads_off_everywhere,
        portiso_bin: std::env::current_exe()?,
        progress,
    };
    let steps = counts.len() * systems.len();
    let mut results = Vec::new();
    for &n in &counts {
        for &system in &systems {
            check_interrupted()?;
            eprintln!(
                "[{}/{steps}] {} with {n} sandbox(es): building",
                results.len() + 1,
                system.label()
            );
            let built = systems::build(
                system,
                &systems::BuildOptions {
                    sandboxes: n,
                    ..opts.clone()
                },
            )?;
            let m = measure(system, n, &built, dur, args.streams)?;
            eprintln!(
                "    {:.2} Gbit/s, {:.0} conn/s (p50 {:.0} µs, p99 {:.0} µs), {:.0} UDP rr/s (p50 {:.0} µs); built in {:.1} s",
                m.tcp_throughput_gbps,
                m.tcp_connections.per_second,
                m.tcp_connections.p50_us,
                m.tcp_connections.p99_us,
                m.udp_request_response.per_second,
                m.udp_request_response.p50_us,
                m.setup_seconds
            );
            drop(built);
            results.push(m);
        }
    }
    eprintln!("control plane: timing compile / overlap / arbitrate in-process ...");
    let control_plane = control_plane(if args.quick { 1 } else { 5 });
    let ratios = ratios(&results, &counts);
    let targets = targets(&results, &counts, &control_plane);
    let report = Report {
        machine,
        quick: args.quick,
        seconds_per_measurement: secs,
        throughput_streams: args.streams,
        offloads_off_everywhere: args.offloads_off_everywhere,
        systems,
        sandbox_counts: counts,
        results,
        ratios,
        control_plane,
        targets,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    print!("{}", render(&report));
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!(
        "results written to {} ({:.0} s in all)",
        args.json.display(),
        report.total_seconds
    );
    Ok(())
}

fn measure(
    system: System,
    n: usize,
    built: &systems::Built,
    dur: Duration,
    streams: usize,
) -> anyhow::Result<Measurement> {
    let servers = load::Servers::start(&built.servers_at)?;
    load::warm_up(&built.peer_ns, &built.targets, Duration::from_secs(10))?;
    check_interrupted()?;
    let peer = &built.peer_ns;
    let tcp_throughput_gbps = load::throughput(peer, &built.targets, streams, dur, &INTERRUPTED)?;
    check_interrupted()?;
    let tcp_connections = load::connection_rate(peer, &built.targets, dur, &INTERRUPTED)?;
    check_interrupted()?;
    let udp_request_response = load::udp_rate(peer, &built.targets, dur, &INTERRUPTED)?;
    check_interrupted()?;
    drop(servers);
    let mut attach = built.attach_ms.clone();
    attach.sort_by(f64::total_cmp);
    Ok(Measurement {
        system,
        sandboxes: n,
        tcp_throughput_gbps,
        tcp_connections,
        udp_request_response,
        setup_seconds: built.setup.as_secs_f64(),
        attach_ms_p50: attach.get(attach.len() / 2).copied(),
        attach_ms_max: attach.last().copied(),
        agent_rss_mib: built.agent_rss_kib.map(|k| k as f64 / 1024.0),
    })
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string(),
        load_average_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        ovs_datapath: systems::ovs_datapath().to_string(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    }
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Quick in-process timings of the control plane's hot functions (criterion does it properly:
/// `cargo bench -p portiso`).
pub fn control_plane(runs: usize) -> ControlPlane {
    let state = synthetic::bridge_state(10_000);
    let entries = synthetic::port_entries(100_000);
    let ranges = synthetic::port_ranges(100_000);
    let uplinks = synthetic::uplinks();
    ControlPlane {
        compile_10k_ranges_ms: median_ms(runs, || {
            std::hint::black_box(crate::flows::compile_bridge(&state));
        }),
        overlap_100k_entries_ms: median_ms(runs, || {
            std::hint::black_box(crate::model::overlapping_pairs(&entries));
        }),
        arbitrate_100k_ranges_ms: median_ms(runs, || {
            std::hint::black_box(crate::model::arbitrate(&ranges, &uplinks, &[]));
        }),
    }
}

fn find(results: &[Measurement], system: System, n: usize) -> Option<&Measurement> {
    results
        .iter()
        .find(|m| m.system == system && m.sandboxes == n)
}

/// portiso ÷ plain OVS, portiso ÷ Linux DNAT, and every system ÷ raw veth, per metric and count.
fn ratios(results: &[Measurement], counts: &[usize]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &n in counts {
        let mut pairs = vec![
            (System::Portiso, System::PlainOvs),
            (System::Portiso, System::LinuxNat),
        ];
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

/// The targets, reported (never asserted).
fn targets(results: &[Measurement], counts: &[usize], cp: &ControlPlane) -> Vec<Target> {
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
                        "{:.2} / {:.2} Gbit/s = {r:.2}x",
                        p.tcp_throughput_gbps, o.tcp_throughput_gbps
                    ),
                });
            }
            _ => t.push(not_measured(&name, "portiso or plain OVS not in this run")),
        }
    }
    let name = format!("connection rate >= 3x Linux DNAT at 1000 sandboxes (measured at {max_n})");
    match (
        find(results, System::Portiso, max_n),
        find(results, System::LinuxNat, max_n),
    ) {
        (Some(p), Some(nat)) => {
            let r = p.tcp_connections.per_second / nat.tcp_connections.per_second;
            t.push(Target {
                target: name,
                status: verdict(r >= 3.0),
                detail: format!(
                    "{:.0} / {:.0} conn/s = {r:.2}x",
                    p.tcp_connections.per_second, nat.tcp_connections.per_second
                ),
            });
        }
        _ => t.push(not_measured(&name, "portiso or Linux DNAT not in this run")),
    }
    t.push(not_measured(
        "connection rate >= 3x OVS ct(nat) at 1000 sandboxes",
        "OVS ct(nat) is not built by this version of portiso bench",
    ));
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
    t.push(not_measured(
        "attach <= 1.2x the bridge plugin",
        &match find(results, System::Portiso, max_n).and_then(|m| m.attach_ms_p50) {
            Some(p50) => format!(
                "bridge plugin not measured by this version; portiso CNI ADD p50 {p50:.0} ms while attaching {max_n}"
            ),
            None => "portiso not in this run".into(),
        },
    ));
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

/// The terminal (and docs) table: one block per sandbox count.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for &n in &r.sandbox_counts {
        let raw = find(&r.results, System::RawVeth, n);
        s += &format!(
            "\n{n} sandbox(es), {} s per measurement\n\n",
            r.seconds_per_measurement
        );
        s += "| system | TCP Gbit/s | × veth | conn/s | × veth | conn p50 µs | conn p99 µs | UDP rr/s | × veth | UDP p50 µs | UDP p99 µs |\n";
        s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for m in r.results.iter().filter(|m| m.sandboxes == n) {
            let x = |v: f64, base: Option<f64>| match base {
                Some(b) if b > 0.0 => format!("{:.2}", v / b),
                _ => "–".into(),
            };
            s += &format!(
                "| {} | {:.2} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} |\n",
                m.system.label(),
                m.tcp_throughput_gbps,
                x(m.tcp_throughput_gbps, raw.map(|r| r.tcp_throughput_gbps)),
                m.tcp_connections.per_second,
                x(
                    m.tcp_connections.per_second,
                    raw.map(|r| r.tcp_connections.per_second)
                ),
                m.tcp_connections.p50_us,
                m.tcp_connections.p99_us,
                m.udp_request_response.per_second,
                x(
                    m.udp_request_response.per_second,
                    raw.map(|r| r.udp_request_response.per_second)
                ),
                m.udp_request_response.p50_us,
                m.udp_request_response.p99_us,
            );
        }
        s += "\n";
        for what in ["portiso / plain-ovs", "portiso / linux-nat"] {
            let rs: Vec<_> = r
                .ratios
                .iter()
                .filter(|x| x.sandboxes == n && x.what == what)
                .collect();
            if rs.len() == 3 {
                s += &format!(
                    "{what}: throughput {:.2}x, connections {:.2}x, UDP rr {:.2}x\n",
                    rs[0].ratio, rs[1].ratio, rs[2].ratio
                );
            }
        }
        if let Some(p) = find(&r.results, System::Portiso, n) {
            if let (Some(a), Some(rss)) = (p.attach_ms_p50, p.agent_rss_mib) {
                s += &format!(
                    "portiso: CNI ADD p50 {a:.0} ms (max {:.0} ms), agent RSS {rss:.1} MiB\n",
                    p.attach_ms_max.unwrap_or(0.0)
                );
            }
        }
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
