//! `portiso bench`: portiso against the raw link, a plain OVS switch, Linux bridge + iptables
//! DNAT (the CNI portmap way) and conntrack NAT on the same OVS, side by side in one run on
//! this machine; and portiso's attach time against the CNI `bridge` plugin.
//!
//! Each system is built in namespaces of its own (see [`systems`]), measured with the same
//! generators (see [`load`]) and removed before the next one is built, so that they never
//! compete for the CPU. Every figure is also shown as a ratio to baselines of the same run
//! ([`report`]), and throughput and connection rate are plotted against the number of
//! sandboxes ([`plot`]). Ctrl-C stops the measurement and still removes everything (the
//! builders' drop guards).

pub mod attach;
pub mod load;
pub mod plot;
pub mod report;
pub mod synthetic;
pub mod systems;

use load::Rate;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use systems::{FlowUpdate, Plan, System};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds, not minutes: one sandbox, short measurements (what the test suite runs).
    #[arg(long)]
    pub quick: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench.json")]
    pub json: PathBuf,
    /// Numbers of sandboxes to measure with, comma-separated (default 1,100,1000; --quick: 1).
    /// Systems that need an address per sandbox are built with at most 240 (see the notes).
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
    /// Leave out the CNI bridge/portmap plugin attach measurement.
    #[arg(long)]
    pub no_cni_plugins: bool,
    /// CNI ADDs in parallel while portiso's sandboxes are attached (the agent makes their
    /// ports concurrently, so that ovs-vswitchd reconfigures once for several).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub attach_workers: u16,
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
    /// The number of sandboxes asked for (the row's count).
    pub sandboxes: usize,
    /// What was built for it: sandboxes and port ranges (NAT rule sets).
    pub plan: Plan,
    /// How the build differs from the count asked for, e.g. "measured at 240, 1000 rule sets".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// TCP throughput peer→sandbox.
    pub tcp_throughput_gbps: f64,
    /// TCP throughput sandbox→peer.
    pub tcp_throughput_out_gbps: f64,
    pub tcp_connections: Rate,
    pub udp_request_response: Rate,
    pub setup_seconds: f64,
    /// CNI ADD while building (portiso; `attach_workers` at a time, see `systems::portiso`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_ms_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_ms_max: Option<f64>,
    /// How many of those ADDs ran at a time (`--attach-workers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_workers: Option<usize>,
    /// CNI ADD of one more sandbox with all of them present, one at a time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next_attach_ms: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attach_ms_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_update: Option<FlowUpdate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_rss_mib: Option<f64>,
    /// The `datapath:` value the agent ran with (portiso rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_datapath: Option<String>,
}

impl Measurement {
    /// The rates compared across systems, by name.
    pub fn metrics(&self) -> [(&'static str, f64); 4] {
        [
            ("tcp_throughput_gbps", self.tcp_throughput_gbps),
            ("tcp_throughput_out_gbps", self.tcp_throughput_out_gbps),
            ("tcp_connections_per_s", self.tcp_connections.per_second),
            ("udp_rr_per_s", self.udp_request_response.per_second),
        ]
    }
}

/// portiso's CNI ADD against the bridge plugin's, each for the next sandbox with many present.
#[derive(Debug, Clone, Serialize)]
pub struct AttachComparison {
    pub bridge_plugin: attach::BridgePlugin,
    /// Sandboxes present at portiso's measured ADDs (its largest build).
    pub portiso_present: usize,
    pub portiso_next_add_ms_p50: f64,
    /// portiso ÷ bridge plugin, of the medians.
    pub ratio: f64,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachComparison>,
    /// Why the attach comparison is missing, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_error: Option<String>,
    pub targets: Vec<Target>,
    /// The SVG plot written beside the JSON.
    pub plot: PathBuf,
    pub total_seconds: f64,
}

fn progress(phase: &str, done: usize, total: usize) {
    let step = if total > 200 { 100 } else { 10 };
    if total >= 10 && (done.is_multiple_of(step) || done == total) {
        eprintln!("    {phase} {done}/{total}");
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    catch_signals();
    let started = Instant::now();
    let counts = args.sandboxes.clone().unwrap_or(if args.quick {
        vec![1]
    } else {
        vec![1, 100, 1000]
    });
    let secs = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    let dur = Duration::from_secs_f64(secs);
    let systems = args.systems.clone().unwrap_or(System::DEFAULT.to_vec());
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
        attach_workers: usize::from(args.attach_workers),
        progress,
        interrupted: &INTERRUPTED,
    };
    let steps = counts.len() * systems.len();
    let mut results = Vec::new();
    for &n in &counts {
        // The node of the row before, when this row can run on it (see `shares_node_with`).
        let mut kept: Option<(System, systems::Built)> = None;
        for &system in &systems {
            check_interrupted()?;
            let built = match kept.take() {
                Some((before, mut built)) if before.shares_node_with(system) => {
                    eprintln!(
                        "[{}/{steps}] {} with {n} sandbox(es): the {} node, agent restarted with {}",
                        results.len() + 1,
                        system.label(),
                        before.label(),
                        system.portiso_datapath().unwrap_or_default()
                    );
                    systems::switch_to(&mut built, system)?;
                    built
                }
                earlier => {
                    drop(earlier);
                    eprintln!(
                        "[{}/{steps}] {} with {n} sandbox(es): building",
                        results.len() + 1,
                        system.label()
                    );
                    systems::build(
                        system,
                        &systems::BuildOptions {
                            sandboxes: n,
                            ..opts.clone()
                        },
                    )?
                }
            };
            let m = measure(system, n, &built, dur, args.streams)?;
            eprintln!(
                "    {:.2} Gbit/s in, {:.2} out, {:.0} conn/s (p50 {:.0} µs, p99 {:.0} µs), {:.0} UDP rr/s (p50 {:.0} µs); built in {:.1} s",
                m.tcp_throughput_gbps,
                m.tcp_throughput_out_gbps,
                m.tcp_connections.per_second,
                m.tcp_connections.p50_us,
                m.tcp_connections.p99_us,
                m.udp_request_response.per_second,
                m.udp_request_response.p50_us,
                m.setup_seconds
            );
            kept = Some((system, built));
            results.push(m);
        }
    }
    let (attach, attach_error) = if args.no_cni_plugins {
        (None, Some("left out (--no-cni-plugins)".to_string()))
    } else {
        match compare_attach(&results, args.quick) {
            Ok(a) => (a, None),
            Err(e) => {
                check_interrupted()?;
                eprintln!("CNI bridge plugin not measured: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    };
    eprintln!("control plane: timing compile / overlap / arbitrate in-process ...");
    let control_plane = control_plane(if args.quick { 1 } else { 5 });
    let ratios = report::ratios(&results, &counts);
    let targets = report::targets(&results, &counts, &control_plane, attach.as_ref());
    let plot = args.json.with_extension("svg");
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
        attach,
        attach_error,
        targets,
        plot: plot.clone(),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    print!("{}", report::render(&report));
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&plot, plot::svg(&report))?;
    eprintln!(
        "results written to {} and {} ({:.0} s in all)",
        args.json.display(),
        plot.display(),
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
    let peer_sink = load::Servers::start(&[(built.peer_ns.clone(), built.peer_at.port())])?;
    load::warm_up(&built.peer_ns, &built.targets, Duration::from_secs(10))?;
    check_interrupted()?;
    let peer = &built.peer_ns;
    // Stream j to (or from) range j·N/streams: spread over the sandboxes.
    let streams = streams.max(1);
    let picks: Vec<usize> = (0..streams)
        .map(|j| j * built.targets.len() / streams)
        .collect();
    let inbound: Vec<_> = picks
        .iter()
        .map(|&k| (peer.clone(), built.targets[k]))
        .collect();
    let tcp_throughput_gbps = load::throughput(&inbound, dur, &INTERRUPTED)?;
    check_interrupted()?;
    let outbound: Vec<_> = picks
        .iter()
        .map(|&k| (built.servers_at[k].0.clone(), built.peer_at))
        .collect();
    let tcp_throughput_out_gbps = load::throughput(&outbound, dur, &INTERRUPTED)?;
    check_interrupted()?;
    let tcp_connections = load::connection_rate(peer, &built.targets, dur, &INTERRUPTED)?;
    check_interrupted()?;
    let udp_request_response = load::udp_rate(peer, &built.targets, dur, &INTERRUPTED)?;
    check_interrupted()?;
    drop(servers);
    drop(peer_sink);
    let mut attach = built.attach_ms.clone();
    attach.sort_by(f64::total_cmp);
    Ok(Measurement {
        system,
        sandboxes: n,
        plan: built.plan,
        note: built.plan.note(),
        tcp_throughput_gbps,
        tcp_throughput_out_gbps,
        tcp_connections,
        udp_request_response,
        setup_seconds: built.setup.as_secs_f64(),
        attach_ms_p50: attach.get(attach.len() / 2).copied(),
        attach_ms_max: attach.last().copied(),
        attach_workers: (!attach.is_empty()).then_some(built.attach_workers),
        next_attach_ms_p50: (!built.next_attach_ms.is_empty())
            .then(|| attach::median(&built.next_attach_ms)),
        next_attach_ms: built.next_attach_ms.clone(),
        flow_update: built.flow_update,
        agent_rss_mib: built.agent_rss_kib.map(|k| k as f64 / 1024.0),
        agent_datapath: built.agent_datapath.clone(),
    })
}

/// The bridge plugin's ADD with its /24 full (or as many present as portiso's largest build,
/// if fewer), next to portiso's ADD with its largest build present. `None` without a portiso
/// row.
fn compare_attach(
    results: &[Measurement],
    quick: bool,
) -> anyhow::Result<Option<AttachComparison>> {
    let Some(p) = results
        .iter()
        .filter(|m| m.system == System::Portiso && m.next_attach_ms_p50.is_some())
        .max_by_key(|m| m.plan.sandboxes)
    else {
        return Ok(None);
    };
    let present = p.plan.sandboxes.min(attach::BRIDGE_MAX_PRESENT);
    eprintln!(
        "CNI bridge plugin: ADD of the next sandbox with {present} present{} ...",
        if quick {
            ""
        } else {
            ", and portmap with 100 ports"
        }
    );
    let bridge = attach::bridge_plugin(present, !quick, progress, &INTERRUPTED)?;
    let portiso = p.next_attach_ms_p50.unwrap_or_default();
    Ok(Some(AttachComparison {
        ratio: portiso / bridge.next_add_ms_p50,
        portiso_present: p.plan.sandboxes,
        portiso_next_add_ms_p50: portiso,
        bridge_plugin: bridge,
    }))
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
