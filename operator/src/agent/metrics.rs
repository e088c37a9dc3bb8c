//! The agent's Prometheus metrics (`metricsAddress`): timings and counts taken where they
//! happen, lock-free; and, on each scrape, what `portiso status` reads — the agent's state, OVS's
//! per-flow packet counters (one dump per bridge) and the fast path's counters — taken under the
//! agent's lock and rendered after it is released.

use super::Agent;
use crate::metrics::{Counter, Exposition, Histogram, Kind};
use portiso_agent_api::{FastPathCounters, NodeStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the agent counts as it works.
#[derive(Debug)]
pub struct AgentMetrics {
    attach_ok: Histogram,
    attach_error: Histogram,
    /// Sandboxes detached: by DEL, GC, or because their pod is gone.
    pub detached: Counter,
    /// Failed attempts to bring a bridge's flows (and fast path) in line.
    pub reconcile_errors: Counter,
    /// Each poll's pass: rangesDir and sources re-read, gone sandboxes collected, OVS checked.
    pub resync: Histogram,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            attach_ok: Histogram::seconds(),
            attach_error: Histogram::seconds(),
            detached: Counter::default(),
            reconcile_errors: Counter::default(),
            resync: Histogram::seconds(),
        }
    }
}

impl AgentMetrics {
    /// Records one CNI ADD: its wall time in the agent and whether the sandbox got attached.
    pub fn attach_done(&self, took: Duration, ok: bool) {
        if ok {
            self.attach_ok.observe(took)
        } else {
            self.attach_error.observe(took)
        }
    }
}

/// What one scrape reads from the agent.
pub struct Snapshot {
    node: NodeStatus,
    accepted: usize,
    /// Per bridge, the flows the agent installed there; None while it does not trust what it
    /// knows (after a failed bundle, until the next full resync).
    installed_flows: Vec<(String, Option<usize>)>,
    /// What the slow path did with the packets each bridge handed up, per in-port and kind.
    slow_path: super::slow_path::Stats,
}

impl Agent {
    /// Reads everything a scrape shows. Runs under the agent's lock: its cost is that of
    /// `portiso status` (one flow dump per bridge), not more.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let installed = self.installed_cache();
        let installed_flows = self
            .uplinks
            .iter()
            .map(|u| {
                let bridge = u.config.bridge.clone();
                let n = installed.get(&bridge).map(Vec::len);
                (bridge, n)
            })
            .collect();
        drop(installed);
        Snapshot {
            node: self.describe(),
            accepted: self.accepted.len(),
            installed_flows,
            slow_path: self.icmp_relay.stats(),
        }
    }
}

/// A label value made of a reason people read ("egress not allowed" → "egress_not_allowed").
pub fn reason_label(reason: &str) -> String {
    let mut out = String::new();
    for word in reason
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    out
}

/// The whole page.
pub fn render(m: &AgentMetrics, s: &Snapshot) -> String {
    let mut page = Exposition::default();
    page.family(
        "portiso_agent_attach_seconds",
        Kind::Histogram,
        "Wall time of CNI ADD in the agent, from request to answer.",
    )
    .histogram(&[("result", "ok")], &m.attach_ok)
    .histogram(&[("result", "error")], &m.attach_error);
    page.family(
        "portiso_agent_detach_total",
        Kind::Counter,
        "Sandboxes detached (DEL, GC, or their pod gone).",
    )
    .sample(&[], m.detached.get());
    page.family(
        "portiso_agent_reconcile_errors_total",
        Kind::Counter,
        "Failed attempts to bring a bridge's flows in line with the agent's state.",
    )
    .sample(&[], m.reconcile_errors.get());
    page.family(
        "portiso_agent_resync_seconds",
        Kind::Histogram,
        "Duration of each poll's pass: sources re-read, gone sandboxes removed, OVS checked or repaired.",
    )
    .histogram(&[], &m.resync);

    let node = &s.node;
    let mut sandboxes = page.family(
        "portiso_agent_sandboxes",
        Kind::Gauge,
        "Sandboxes attached, per uplink.",
    );
    for u in &node.uplinks {
        let n = node
            .sandboxes
            .iter()
            .filter(|sb| sb.uplink == u.name)
            .count();
        sandboxes.sample(&[("uplink", u.name.as_str())], n);
    }
    let mut flows = page.family(
        "portiso_agent_flows",
        Kind::Gauge,
        "OpenFlow flows the agent installed, per bridge (absent while it re-reads OVS).",
    );
    for (bridge, n) in &s.installed_flows {
        if let Some(n) = n {
            flows.sample(&[("bridge", bridge.as_str())], n);
        }
    }
    page.family(
        "portiso_agent_portranges",
        Kind::Gauge,
        "PortRanges this agent accepted or refused.",
    )
    .sample(&[("state", "accepted")], s.accepted)
    .sample(&[("state", "refused")], node.refused.len());

    let names: Vec<String> = node
        .sandboxes
        .iter()
        .map(|sb| format!("{}/{}", sb.namespace, sb.name))
        .collect();
    let mut dropped = page.family(
        "portiso_agent_dropped_packets_total",
        Kind::Counter,
        "Packets OVS dropped, per sandbox and reason (absent when OVS's counters cannot be read).",
    );
    for (sb, name) in node.sandboxes.iter().zip(&names) {
        for d in &sb.drops {
            let reason = reason_label(&d.reason);
            dropped.sample(
                &[
                    ("uplink", sb.uplink.as_str()),
                    ("sandbox", name.as_str()),
                    ("reason", reason.as_str()),
                ],
                d.packets,
            );
        }
    }

    // Frames the fast path saw arrive: from the network on an uplink, from a sandbox on its
    // host-side interface.
    let fast: Vec<(Vec<(&str, &str)>, &FastPathCounters)> = node
        .uplinks
        .iter()
        .filter_map(|u| {
            let c = u.fast_path.as_ref()?;
            Some((
                vec![("uplink", u.name.as_str()), ("direction", "ingress")],
                c,
            ))
        })
        .chain(node.sandboxes.iter().zip(&names).filter_map(|(sb, name)| {
            let c = sb.fast_path.as_ref()?;
            let labels = vec![
                ("uplink", sb.uplink.as_str()),
                ("sandbox", name.as_str()),
                ("direction", "egress"),
            ];
            Some((labels, c))
        }))
        .collect();
    if !fast.is_empty() {
        let mut carried = page.family(
            "portiso_agent_fast_path_packets_total",
            Kind::Counter,
            "Frames the eBPF fast path carried itself.",
        );
        for (labels, c) in &fast {
            carried.sample(labels, c.fast_packets);
        }
        let mut slow = page.family(
            "portiso_agent_fast_path_slow_packets_total",
            Kind::Counter,
            "Frames the eBPF fast path left to OVS, by reason.",
        );
        for (labels, c) in &fast {
            for (why, n) in c.slow() {
                let reason = reason_label(why);
                let mut labels = labels.clone();
                labels.push(("reason", reason.as_str()));
                slow.sample(&labels, n);
            }
        }
    }
    if !s.slow_path.is_empty() {
        let mut slow_path = page.family(
            "portiso_agent_slow_path_packets_total",
            Kind::Counter,
            "Packets the bridge handed the agent (UDP fragments, ICMP errors), per in-port and kind: taken, or dropped over the in-port's budget or with its queue full.",
        );
        for ((bridge, key), c) in &s.slow_path {
            let in_port = key.in_port.to_string();
            for (result, n) in [
                ("taken", c.taken),
                ("over_budget", c.over_budget),
                ("queue_full", c.queue_full),
            ] {
                slow_path.sample(
                    &[
                        ("bridge", bridge.as_str()),
                        ("in_port", in_port.as_str()),
                        ("kind", key.kind.label()),
                        ("result", result),
                    ],
                    n,
                );
            }
        }
    }
    for w in &node.warnings {
        tracing::debug!(warning = %w, "metrics scrape incomplete");
    }
    page.finish()
}

/// Serves the agent's metrics on `addr`. A scrape locks the agent only to take its snapshot.
pub async fn serve(
    addr: std::net::SocketAddr,
    agent: Arc<Mutex<Agent>>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    crate::metrics::serve(addr, move || {
        let snapshot = super::server::lock(&agent).metrics_snapshot();
        render(&metrics, &snapshot)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::egress_drop_flow;
    use crate::agent::tests::agent;
    use crate::ovs::fake::FakeOvs;

    #[test]
    fn reasons_become_label_values() {
        assert_eq!(reason_label("egress not allowed"), "egress_not_allowed");
        assert_eq!(reason_label("not IPv4 TCP/UDP"), "not_ipv4_tcp_udp");
    }

    #[test]
    fn the_page_shows_counts_state_and_drops() {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        ovs.packets
            .lock()
            .unwrap()
            .insert(egress_drop_flow(2).cookie(), 7);
        a.metrics.attach_done(Duration::from_millis(3), true);
        a.metrics.attach_done(Duration::from_millis(30), true);
        a.metrics.attach_done(Duration::from_secs(20), false);
        a.metrics.detached.inc();
        let page = render(&a.metrics, &a.metrics_snapshot());
        let installed = ovs.cookies.lock().unwrap()["br-eth1"].len();
        for line in [
            "portiso_agent_attach_seconds_bucket{result=\"ok\",le=\"0.0025\"} 0\n".to_string(),
            "portiso_agent_attach_seconds_bucket{result=\"ok\",le=\"0.005\"} 1\n".into(),
            "portiso_agent_attach_seconds_count{result=\"ok\"} 2\n".into(),
            "portiso_agent_attach_seconds_bucket{result=\"error\",le=\"10\"} 0\n".into(),
            "portiso_agent_attach_seconds_bucket{result=\"error\",le=\"+Inf\"} 1\n".into(),
            "# TYPE portiso_agent_detach_total counter\nportiso_agent_detach_total 1\n".into(),
            "portiso_agent_reconcile_errors_total 0\n".into(),
            "portiso_agent_resync_seconds_count 0\n".into(),
            "# TYPE portiso_agent_sandboxes gauge\nportiso_agent_sandboxes{uplink=\"eth1\"} 2\n"
                .into(),
            format!("portiso_agent_flows{{bridge=\"br-eth1\"}} {installed}\n"),
            "portiso_agent_portranges{state=\"accepted\"} 2\n".into(),
            "portiso_agent_portranges{state=\"refused\"} 0\n".into(),
            "portiso_agent_dropped_packets_total{uplink=\"eth1\",sandbox=\"default/a\",reason=\"egress_not_allowed\"} 7\n".into(),
            "portiso_agent_dropped_packets_total{uplink=\"eth1\",sandbox=\"default/b\",reason=\"egress_not_allowed\"} 0\n".into(),
        ] {
            assert!(page.contains(&line), "{line:?} in:\n{page}");
        }
        assert!(installed > 10);
        // No fast path here: no fast-path series.
        assert!(!page.contains("fast_path"), "{page}");
    }

    #[test]
    fn flows_are_left_out_while_the_agent_does_not_know_them() {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs);
        // Nothing installed yet: the agent has no count to give.
        let page = render(&a.metrics, &a.metrics_snapshot());
        assert!(
            page.contains("# TYPE portiso_agent_flows gauge\n"),
            "{page}"
        );
        assert!(!page.contains("portiso_agent_flows{"), "{page}");
    }

    #[test]
    fn the_slow_path_is_counted_per_in_port_and_kind() {
        use crate::agent::slow_path::{Key, Kind};
        let a = agent(Arc::new(FakeOvs::default()));
        let page = render(&a.metrics, &a.metrics_snapshot());
        assert!(!page.contains("slow_path"), "{page}");
        let web2 = Key {
            in_port: 3,
            kind: Kind::Fragment,
        };
        a.icmp_relay.count("br-eth1", web2, |c| c.taken += 2);
        a.icmp_relay.count("br-eth1", web2, |c| c.over_budget += 5);
        let page = render(&a.metrics, &a.metrics_snapshot());
        for line in [
            "portiso_agent_slow_path_packets_total{bridge=\"br-eth1\",in_port=\"3\",kind=\"fragment\",result=\"taken\"} 2\n",
            "portiso_agent_slow_path_packets_total{bridge=\"br-eth1\",in_port=\"3\",kind=\"fragment\",result=\"over_budget\"} 5\n",
            "portiso_agent_slow_path_packets_total{bridge=\"br-eth1\",in_port=\"3\",kind=\"fragment\",result=\"queue_full\"} 0\n",
        ] {
            assert!(page.contains(line), "{line:?} in:\n{page}");
        }
    }
}
