//! portiso: the testbed (pbp-*), i.e. the real `portiso agent` on a private OVS and sandboxes
//! attached by the real `portiso-cni`, each owning TCP and UDP [`range_span`]`(i)` and sharing
//! 198.51.100.1 and the node's MAC. The agent runs with the testbed's config and the row's
//! `datapath:` value (see [`System::portiso_datapath`](super::System::portiso_datapath)).
//!
//! Besides the traffic it measures the control plane on the built node: the CNI ADD of one
//! more sandbox with all of them present, a PortRange change for one sandbox until traffic
//! reaches it, and the agent's memory.

use super::{range_span, rss_kib, BuildOptions, Built, FlowUpdate, Guard, Plan, UPDATE_PORT};
use crate::testbed::{netns, Testbed};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

/// CNI ADD (and DEL) cycles of the next sandbox.
const NEXT_ATTACHES: usize = 3;

/// Sandbox `i`'s name; its PortRange selects it by that name.
fn name(i: usize) -> String {
    format!("s{i}")
}

/// PortRanges of sandboxes `0..count`; sandbox 0 gets the extra flow-update span if `extra`.
fn ranges_yaml(count: usize, extra: bool) -> String {
    let mut y = String::new();
    for i in 0..count {
        let (lo, hi) = range_span(i);
        y += &format!(
            "---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: {n}}}\nspec:\n  selector: {{matchLabels: {{portiso.io/sandbox: {n}}}}}\n  ports:\n    - {{protocol: TCP, start: {lo}, end: {hi}}}\n    - {{protocol: UDP, start: {lo}, end: {hi}}}\n",
            n = name(i)
        );
        if extra && i == 0 {
            y += &format!(
                "    - {{protocol: TCP, start: {UPDATE_PORT}, end: {}}}\n",
                UPDATE_PORT + super::RANGE_PORTS - 1
            );
        }
        y += "  uplinks: [up1]\n";
    }
    y
}

pub(super) fn build(o: &BuildOptions, plan: Plan, datapath: Option<&str>) -> anyhow::Result<Built> {
    let mut tb = Testbed::new("pbp", &o.portiso_bin)?;
    if let Some(d) = datapath {
        tb.datapath = Some(d.into());
    }
    let n = plan.sandboxes;
    // Every sandbox's PortRange and the next one's, so that no ADD waits for a range.
    tb.write_ranges("bench.yaml", &ranges_yaml(n + 1, false))?;
    tb.start_agent()?;
    for i in 0..n {
        o.check()?;
        tb.create_sandbox(&name(i))?;
        (o.progress)("namespaces", i + 1, n);
    }
    let attach_ms = attach_all(&tb, o, n)?;
    let rss = std::fs::read_to_string(tb.dir.join("agent.pid"))
        .ok()
        .and_then(|p| rss_kib(p.trim()));
    let next_attach_ms = next_attaches(&mut tb, n)?;
    o.check()?;
    let flow_update = flow_update(&tb, n)?;
    let datapath = tb.datapath.clone();
    let peer = tb.outside.clone();
    let shared = tb.uplinks[0].shared;
    let sandboxes: Vec<String> = (0..n).map(|i| tb.sandbox_ns(&name(i))).collect();
    let mut b = Built::new(plan, peer, Guard::Testbed(Box::new(tb)));
    for (i, ns) in sandboxes.into_iter().enumerate() {
        b.push_range(ns, SocketAddr::from((shared, super::range_port(i))), i);
    }
    b.attach_ms = attach_ms;
    b.attach_workers = o.attach_workers;
    b.next_attach_ms = next_attach_ms;
    b.flow_update = Some(flow_update);
    b.agent_rss_kib = rss;
    b.agent_datapath = datapath;
    Ok(b)
}

/// Turns a built portiso node into the node of another portiso row on the same kind of
/// port (see [`System::shares_node_with`](super::System::shares_node_with)): the agent is
/// restarted with `datapath` over the same sandboxes, as an operator turning the fast path on
/// would, and the control plane is measured again. Building 1000 sandboxes a second time would
/// take a third of a full run. The ADD times of the build are the earlier row's, so they are
/// left out here; the next sandbox's ADDs are this row's own.
pub(super) fn switch_datapath(b: &mut Built, datapath: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let Guard::Testbed(tb) = &mut b.guard else {
        anyhow::bail!("not a portiso node");
    };
    let n = b.plan.sandboxes;
    tb.kill_agent();
    tb.datapath = Some(datapath.into());
    tb.start_agent()?;
    // Take back the earlier row's flow update, so that this row's changes something again.
    tb.write_ranges("bench.yaml", &ranges_yaml(n + 1, false))?;
    let to = tb.uplinks[0].at(UPDATE_PORT);
    let servers = update_port_server(tb)?;
    let taken_back = netns::run_in(&tb.outside, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })?;
    drop(servers);
    anyhow::ensure!(
        taken_back,
        "sandbox 0 kept port {UPDATE_PORT} 10 s after its PortRange lost it; agent log:\n{}",
        tb.agent_log()
    );
    b.attach_ms.clear();
    b.next_attach_ms = next_attaches(tb, n)?;
    b.flow_update = Some(flow_update(tb, n)?);
    b.agent_rss_kib = std::fs::read_to_string(tb.dir.join("agent.pid"))
        .ok()
        .and_then(|p| rss_kib(p.trim()));
    b.agent_datapath = tb.datapath.clone();
    b.setup = start.elapsed();
    Ok(())
}

/// CNI ADD of sandboxes `0..n` (namespaces already created) from `o.attach_workers` threads;
/// the wall time of each (the sequential ADDs are [`NEXT_ATTACHES`]).
fn attach_all(tb: &Testbed, o: &BuildOptions, n: usize) -> anyhow::Result<Vec<f64>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    // One worker's failure stops the others at their next sandbox.
    let failed = AtomicBool::new(false);
    let results: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..o.attach_workers.clamp(1, n.max(1)))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<f64>> {
                    let mut times = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= n || failed.load(Relaxed) {
                            return Ok(times);
                        }
                        let t0 = Instant::now();
                        if let Err(e) = o.check().and_then(|()| cni_add(tb, &name(i))) {
                            failed.store(true, Relaxed);
                            return Err(e);
                        }
                        times.push(t0.elapsed().as_secs_f64() * 1e3);
                        let d = done.fetch_add(1, Relaxed) + 1;
                        (o.progress)("attaching", d, n);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("attach thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

/// One CNI ADD through the plugin, failing with its message and the agent's log.
fn cni_add(tb: &Testbed, sandbox: &str) -> anyhow::Result<()> {
    let (ok, out) = tb.cni("ADD", sandbox, "eth0", "up1", "1.0.0")?;
    anyhow::ensure!(
        ok,
        "CNI ADD of {sandbox}: {out}\nagent log:\n{}",
        tb.agent_log()
    );
    Ok(())
}

/// ADD and DEL of sandbox `n` with `0..n` attached, [`NEXT_ATTACHES`] times, one at a time;
/// the ADD wall times.
fn next_attaches(tb: &mut Testbed, n: usize) -> anyhow::Result<Vec<f64>> {
    let s = name(n);
    if !tb.has_sandbox(&s) {
        tb.create_sandbox(&s)?;
    }
    let mut times = Vec::new();
    for _ in 0..NEXT_ATTACHES {
        let t0 = Instant::now();
        cni_add(tb, &s)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        let (ok, out) = tb.cni("DEL", &s, "eth0", "up1", "1.0.0")?;
        anyhow::ensure!(ok, "CNI DEL of {s}: {out}");
    }
    Ok(times)
}

/// A server on [`UPDATE_PORT`] in sandbox 0. Once sandbox 0 owned that range, the agent may
/// have put its ephemeral ports there (`ip_local_port_range`), so a connection of the last
/// measurement may still hold the port while it closes: binding is tried again until then.
fn update_port_server(tb: &Testbed) -> anyhow::Result<crate::bench::load::Servers> {
    let at = [(tb.sandbox_ns(&name(0)), UPDATE_PORT)];
    // Longer than the kernel keeps a closing connection (tcp_fin_timeout, 60 s).
    let deadline = Instant::now() + Duration::from_secs(70);
    loop {
        match crate::bench::load::Servers::start(&at) {
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            result => return result,
        }
    }
}

/// Gives sandbox 0 one more TCP range ([`UPDATE_PORT`]) by rewriting the PortRange file, and
/// times it until a connection from the peer to the new port reaches the sandbox (before,
/// the node's own stack refuses it).
fn flow_update(tb: &Testbed, n: usize) -> anyhow::Result<FlowUpdate> {
    let servers = update_port_server(tb)?;
    let to = tb.uplinks[0].at(UPDATE_PORT);
    let file = tb.dir.join("ranges").join("bench.yaml");
    let t0 = Instant::now();
    let written = SystemTime::now();
    tb.write_ranges("bench.yaml", &ranges_yaml(n + 1, true))?;
    let reached = netns::run_in(&tb.outside, move || -> std::io::Result<Option<Instant>> {
        let deadline = t0 + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
                return Ok(Some(Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(None)
    })??;
    drop(servers);
    let Some(reached) = reached else {
        anyhow::bail!(
            "sandbox 0 did not get port {UPDATE_PORT} within 10 s of its PortRange change; agent log:\n{}",
            tb.agent_log()
        );
    };
    let total = reached - t0;
    // The agent's read of the new file sets its access time (relatime: the first read after a
    // write always does), which tells the poll's wait apart from the agent's own work.
    // An access time not after the modification time means no read was recorded (noatime).
    let read_at = std::fs::metadata(&file)
        .ok()
        .and_then(|m| Some((m.accessed().ok()?, m.modified().ok()?)))
        .and_then(|(a, m)| (a > m).then_some(a));
    let after_read = read_at
        .and_then(|r| r.duration_since(written).ok())
        .filter(|d| *d <= total)
        .map(|d| (total - d).as_secs_f64() * 1e3);
    Ok(FlowUpdate {
        total_ms: total.as_secs_f64() * 1e3,
        after_read_ms: after_read,
    })
}
