//! `portiso status`, the agent's side: what it is doing, assembled from its state, the flows
//! the compiler makes of it, OVS's packet counters and the fast path's counters.

use super::state::{self, Attachment};
use super::{Agent, UplinkRuntime};
use crate::fastpath::{self, Counters};
use crate::flows::{compile_bridge, table, Flow};
use crate::model::overlap::owned_spans;
use crate::model::{ObjectKey, Protocol};
use portiso_agent_api::{
    DropCount, FastPathCounters, HeldRange, NodeStatus, RefusedRange, SandboxStatus, UplinkStatus,
};
use std::collections::BTreeMap;

/// Why a sandbox's own egress drop flow drops: a spoofed MAC or address, or a port it does not
/// own.
pub const EGRESS_NOT_ALLOWED: &str = "egress not allowed";

/// The flow the compiler gives each sandbox to drop (and count) what it may not send.
pub fn egress_drop_flow(ofport: u32) -> Flow {
    Flow::new(table::FROM_SANDBOX, 10, format!("in_port={ofport}"), "drop")
}

/// A span of ports as people write it: `TCP 10000-10099`, `UDP 5060`.
pub fn span_text(protocol: Protocol, start: u16, end: u16) -> String {
    if start == end {
        format!("{protocol} {start}")
    } else {
        format!("{protocol} {start}-{end}")
    }
}

fn counters(c: &Counters) -> FastPathCounters {
    FastPathCounters {
        fast_packets: c.fast_packets,
        fast_bytes: c.fast_bytes,
        slow_not_ipv4_tcp_udp: c.slow_not_ipv4_tcp_udp,
        slow_fragment_or_options: c.slow_fragment_or_options,
        slow_not_shared_address: c.slow_not_shared_address,
        slow_port_not_owned: c.slow_port_not_owned,
        slow_redirect_failed: c.slow_redirect_failed,
    }
}

impl Agent {
    /// Everything `portiso status` shows. Never fails: what cannot be read is left out and
    /// said in `warnings`.
    pub fn describe(&self) -> NodeStatus {
        let mut warnings = Vec::new();
        let fast_path = self.fast_path_status();
        let mut fast_path_mode = None;
        // Counters by ifindex while the fast path runs.
        let mut fast = None;
        if let Some(lock) = &self.fast_path {
            let mut fp = lock.lock().unwrap_or_else(|p| p.into_inner());
            if fp.is_on() {
                fast_path_mode = Some(fp.mode.to_string());
                match fp.counters() {
                    Ok(c) => fast = Some(c),
                    Err(e) => warnings.push(format!("cannot read the fast path's counters: {e:#}")),
                }
            }
        }
        let fast_of = |ifindex: Option<u32>| {
            let all = fast.as_ref()?;
            Some(counters(&all.get(&ifindex?).copied().unwrap_or_default()))
        };

        let owners = state::Owners::new(&self.accepted, &self.attachments);
        let mut uplinks = Vec::new();
        let mut sandboxes = Vec::new();
        for u in &self.uplinks {
            let (status, ovs_packets) = self.uplink_status(u, &mut warnings);
            uplinks.push(UplinkStatus {
                fast_path: fast_of(Some(u.ifindex).filter(|&i| i != 0)),
                ..status
            });
            let mut attached: Vec<&Attachment> = self
                .attachments
                .iter()
                .filter(|a| a.uplink == u.config.name)
                .collect();
            attached.sort_by_key(|a| a.ofport);
            for a in attached {
                let ranges = owners
                    .held_by(a)
                    .map(|r| HeldRange {
                        range: ObjectKey::of(r).to_string(),
                        ports: owned_spans(r)
                            .into_iter()
                            .map(|(_, p, s, e)| span_text(p, s, e))
                            .collect(),
                    })
                    .collect();
                let drops: Vec<DropCount> = ovs_packets
                    .as_ref()
                    .map(|packets| {
                        vec![DropCount {
                            reason: EGRESS_NOT_ALLOWED.into(),
                            packets: packets
                                .get(&egress_drop_flow(a.ofport).cookie())
                                .copied()
                                .unwrap_or(0),
                        }]
                    })
                    .unwrap_or_default();
                sandboxes.push(SandboxStatus {
                    namespace: a.sandbox_namespace.clone(),
                    name: a.sandbox_name.clone(),
                    key: a.key.clone(),
                    uplink: a.uplink.clone(),
                    host_if: a.host_if.clone(),
                    ofport: a.ofport,
                    ranges,
                    local_port_range: a.local_ports.map(|(s, e)| format!("{s}-{e}")),
                    dropped: ovs_packets
                        .as_ref()
                        .map(|_| drops.iter().map(|d| d.packets).sum()),
                    drops,
                    fast_path: fast_of(fastpath::ifindex(&a.host_if)),
                });
            }
        }
        NodeStatus {
            datapath: self.datapath_type.clone(),
            port_type: self.port_type.ovs_type().to_string(),
            port_type_reason: self.port_type_reason.clone(),
            fast_path,
            fast_path_mode,
            uplinks,
            sandboxes,
            refused: self
                .refused
                .iter()
                .map(|(k, why)| RefusedRange {
                    range: k.to_string(),
                    reason: why.clone(),
                })
                .collect(),
            warnings,
        }
    }

    /// One uplink (without fast-path counters) and the packets OVS counted per flow cookie on
    /// its bridge, if it could be asked.
    fn uplink_status(
        &self,
        u: &UplinkRuntime,
        warnings: &mut Vec<String>,
    ) -> (UplinkStatus, Option<BTreeMap<u64, u64>>) {
        let bridge_state = self.bridge_state(u);
        let flows = compile_bridge(&bridge_state).flows.len() as u64;
        let packets = match self.ovs.flow_stats(&u.config.bridge) {
            Ok(stats) => Some(stats.into_iter().collect()),
            Err(e) => {
                warnings.push(format!(
                    "bridge {}: cannot read OVS's flow counters: {e}",
                    u.config.bridge
                ));
                None
            }
        };
        let status = UplinkStatus {
            name: u.config.name.clone(),
            bridge: u.config.bridge.clone(),
            address: u.config.cidr(),
            mac: u.mac.clone(),
            ofport: u.uplink_ofport,
            flows,
            fast_path: None,
        };
        (status, packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::agent;
    use crate::ovs::fake::FakeOvs;
    use std::sync::Arc;

    #[test]
    fn the_drop_flow_is_one_the_compiler_makes() {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs);
        for u in &a.uplinks {
            let s = a.bridge_state(u);
            let compiled = compile_bridge(&s);
            for sb in &s.sandboxes {
                let c = egress_drop_flow(sb.ofport).cookie();
                assert!(
                    compiled.flows.iter().any(|f| f.cookie() == c),
                    "{} not compiled",
                    egress_drop_flow(sb.ofport)
                );
            }
        }
    }

    #[test]
    fn describes_sandboxes_their_ports_and_drops() {
        let ovs = Arc::new(FakeOvs::default());
        let mut a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        ovs.packets
            .lock()
            .unwrap()
            .insert(egress_drop_flow(2).cookie(), 5);
        let c = ObjectKey {
            namespace: "default".into(),
            name: "c".into(),
        };
        a.refused.insert(c, "overlaps default/a".into());
        let n = a.describe();
        assert_eq!(n.datapath, "netdev");
        assert_eq!(n.fast_path, "off: test");
        assert_eq!(n.fast_path_mode, None);
        assert_eq!(n.uplinks.len(), 1);
        let up = &n.uplinks[0];
        assert_eq!(
            (up.name.as_str(), up.address.as_str(), up.ofport),
            ("eth1", "198.51.100.1/24", 1)
        );
        let installed = ovs.cookies.lock().unwrap()["br-eth1"].len() as u64;
        assert_eq!(up.flows, installed);
        assert_eq!(up.fast_path, None);
        let names: Vec<&str> = n.sandboxes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let sa = &n.sandboxes[0];
        assert_eq!(sa.ranges.len(), 1);
        assert_eq!(sa.ranges[0].range, "default/a");
        assert_eq!(sa.ranges[0].ports, ["TCP 10000-10099"]);
        assert_eq!(sa.dropped, Some(5));
        assert_eq!(sa.drops[0].reason, EGRESS_NOT_ALLOWED);
        assert_eq!(n.sandboxes[1].ranges[0].ports, ["UDP 10100-10163"]);
        assert_eq!(n.sandboxes[1].dropped, Some(0));
        assert_eq!(n.refused.len(), 1);
        assert_eq!(n.refused[0].range, "default/c");
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn spans_read_as_people_write_them() {
        assert_eq!(span_text(Protocol::Tcp, 10000, 10099), "TCP 10000-10099");
        assert_eq!(span_text(Protocol::Udp, 5060, 5060), "UDP 5060");
    }
}
