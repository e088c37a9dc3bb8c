//! `portiso trace`, the agent's side: builds the packet, lets OVS trace it through the
//! uplink's bridge (`ovs-appctl ofproto/trace`), and explains OVS's answer in portiso's terms:
//! who receives it, which PortRange gave that port to that sandbox, which flow decided and what
//! the compiler meant by it, and what the eBPF fast path would do with it.
//!
//! The verdict is always OVS's own; the agent's state only names and explains it.

use super::state::{Attachment, Owners};
use super::{Agent, UplinkRuntime};
use crate::fastpath::{self, maps, FastPath};
use crate::flows::{compile_bridge, table, FlowRef};
use crate::model::ports::PortBlock;
use crate::model::{ObjectKey, PortRange, Protocol};
use portiso_agent_api::{
    code, AgentError, ReceiverKind, TraceFlow, TraceFrom, TraceProtocol, TraceReceiver,
    TraceReport, TraceRequest,
};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// The MAC a traced packet gets for the far end (the peer) when none is given: locally
/// administered, so it is no real machine's.
pub const PEER_MAC: &str = "02:00:00:00:00:fe";
const BROADCAST_MAC: &str = "ff:ff:ff:ff:ff:ff";
/// The port a traced TCP/UDP packet gets on the far end when none is given: the first
/// ephemeral port (IANA), no one's in particular. The node's side must be given: it decides.
pub const PEER_PORT: u16 = 49152;

mod names;
mod ovs_output;
mod packet;

use names::*;
use ovs_output::*;
use packet::*;

// --- The agent's answer ---------------------------------------------------------------------

impl Agent {
    /// Traces one packet through an uplink's bridge and explains OVS's verdict.
    pub(super) fn trace(&self, r: &TraceRequest) -> Result<TraceReport, AgentError> {
        let (u, entry) = self.trace_entry(r)?;
        let packet = Packet::new(r, u, entry)?;
        let in_port = match entry {
            Entry::Uplink => u.uplink_ofport.to_string(),
            Entry::Host => "LOCAL".into(),
            Entry::Sandbox(a) => a.ofport.to_string(),
        };
        let flow = packet.flow(&in_port);
        let bridge = &u.config.bridge;
        let ovs_trace = self.ovs.trace(bridge, &flow).map_err(|e| {
            AgentError::new(
                code::INTERNAL,
                format!("OVS could not trace the packet on bridge {bridge}: {e}"),
            )
        })?;
        Ok(self.report(u, entry, &packet, flow, ovs_trace))
    }

    /// OVS's trace of `packet`, explained.
    fn report(
        &self,
        u: &UplinkRuntime,
        entry: Entry,
        packet: &Packet,
        flow: String,
        ovs_trace: String,
    ) -> TraceReport {
        let trace = parse_trace(&ovs_trace);
        let bridge_state = self.bridge_state(u);
        let compiled = compile_bridge(&bridge_state);
        let by_cookie: HashMap<u64, FlowRef> =
            compiled.flows.iter().map(|f| (f.cookie(), f)).collect();
        let ports = Ports::new(u, &self.attachments);
        let flows: Vec<TraceFlow> = trace
            .hops
            .iter()
            .map(|h| trace_flow(h, &by_cookie, &ports))
            .collect();
        let receivers: Vec<TraceReceiver> = trace
            .outputs()
            .into_iter()
            .map(|o| ports.receiver(o))
            .collect();
        let final_actions = trace.final_datapath_actions().to_string();
        let dropped = receivers.is_empty();

        let owners = Owners::new(&self.accepted, &self.attachments);
        let why = Explain {
            u,
            entry,
            packet,
            owners: &owners,
            ports: &ports,
        };
        let (mut reasons, port_range) = why.ports_reasons(&receivers);
        if let Some(deciding) = flows.last() {
            reasons.push(deciding_flow_text(deciding));
        }
        if trace.assumed_ct_state {
            reasons.push("conntrack: ofproto/trace cannot see conntrack's real state and traces as if it were a new connection (ct_state trk|new); an echo reply to a sandbox's own request goes to that sandbox".into());
        }
        let fast_path = self.fast_path_decision(&why, &bridge_state, &receivers);
        let to = if dropped {
            "is dropped".to_string()
        } else {
            let names: Vec<String> = receivers.iter().map(receiver_text).collect();
            format!("goes to {}", names.join(" and "))
        };
        TraceReport {
            uplink: u.config.name.clone(),
            bridge: u.config.bridge.clone(),
            flow,
            verdict: format!("{} {} {to}", packet.describe(), entry_text(entry, u)),
            receivers,
            dropped,
            reasons,
            port_range,
            flows,
            datapath_actions: final_actions,
            fast_path,
            ovs_trace,
        }
    }

    /// The uplink to trace on and where the packet enters it.
    fn trace_entry(&self, r: &TraceRequest) -> Result<(&UplinkRuntime, Entry<'_>), AgentError> {
        if let TraceFrom::Sandbox(name) = &r.from {
            let a = self.traced_sandbox(name, r.uplink.as_deref())?;
            let u = self
                .uplink(&a.uplink)
                .expect("attachments only exist on known uplinks");
            return Ok((u, Entry::Sandbox(a)));
        }
        let entry = match r.from {
            TraceFrom::Host => Entry::Host,
            _ => Entry::Uplink,
        };
        let listed = || {
            self.uplinks
                .iter()
                .map(|u| format!("{} ({})", u.config.name, u.config.address))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(name) = &r.uplink {
            let u = self.uplink(name).ok_or_else(|| {
                bad_request(format!(
                    "uplink {name:?} is not served by this node's portiso agent: give --uplink one of {}",
                    listed()
                ))
            })?;
            return Ok((u, entry));
        }
        // The node's own address on the packet names the uplink.
        let shared = if entry.inbound() { r.dst_ip } else { r.src_ip };
        let by_address = shared.and_then(|ip| self.uplinks.iter().find(|u| u.config.address == ip));
        match (by_address, &self.uplinks[..]) {
            (Some(u), _) | (None, [u]) => Ok((u, entry)),
            _ => Err(bad_request(format!(
                "which uplink? this node has {}: give --uplink NAME, or the packet's shared address",
                listed()
            ))),
        }
    }

    /// The attachment of sandbox `namespace/name` (on `uplink`, if given).
    fn traced_sandbox(&self, name: &str, uplink: Option<&str>) -> Result<&Attachment, AgentError> {
        let found: Vec<&Attachment> = self
            .attachments
            .iter()
            .filter(|a| a.sandbox() == name && uplink.is_none_or(|u| a.uplink == u))
            .collect();
        match found[..] {
            [a] => Ok(a),
            [] => {
                let mut known: Vec<String> = self
                    .attachments
                    .iter()
                    .map(|a| format!("{} (uplink {})", a.sandbox(), a.uplink))
                    .collect();
                known.sort();
                let on = uplink
                    .map(|u| format!(" on uplink {u}"))
                    .unwrap_or_default();
                Err(bad_request(if known.is_empty() {
                    format!(
                        "no sandbox {name} is attached{on}: no sandbox is attached on this node"
                    )
                } else {
                    format!(
                        "no sandbox {name} is attached{on}: give --from one of {}",
                        known.join(", ")
                    )
                }))
            }
            _ => {
                let uplinks: Vec<&str> = found.iter().map(|a| a.uplink.as_str()).collect();
                Err(bad_request(format!(
                    "sandbox {name} is attached to uplinks {}: choose one with --uplink",
                    uplinks.join(", ")
                )))
            }
        }
    }

    /// What the eBPF fast path does with the packet, in words; computed on the maps compiled
    /// from the same state the flows are (`fastpath::maps`), as the XDP programs look them up.
    fn fast_path_decision(
        &self,
        why: &Explain,
        bridge_state: &crate::flows::BridgeState,
        receivers: &[TraceReceiver],
    ) -> String {
        let running = self
            .fast_path
            .as_ref()
            .is_some_and(|l| l.lock().unwrap_or_else(|p| p.into_inner()).is_on());
        if !running {
            return format!("{}; OVS carries every packet", self.fast_path_status());
        }
        let host_ifs: BTreeMap<u32, String> = why
            .ports
            .sandboxes
            .iter()
            .map(|(ofport, a)| (*ofport, a.host_if.clone()))
            .collect();
        let fast = FastPath::compile(bridge_state, why.u.ifindex, &host_ifs);
        match why.entry {
            Entry::Host => "not on its way: it sits on the uplink and the sandboxes' ports, and OVS carries the host's own packets".into(),
            Entry::Uplink => why.fast_inbound(&fast, receivers),
            Entry::Sandbox(a) => why.fast_egress(a, &fast, receivers),
        }
    }
}

fn pass_to_ovs(why: &str) -> String {
    format!("passes it to OVS: {why}")
}

const NOT_TCP_UDP: &str = "only IPv4 TCP and UDP take the fast path";

impl Explain<'_> {
    /// What `xdp_uplink` does with the packet (operator/bpf/fastpath.c).
    fn fast_inbound(&self, fast: &maps::FastPathMaps, receivers: &[TraceReceiver]) -> String {
        let (u, p) = (self.u, self.packet);
        let Some((protocol, port)) = p.deciding_port(self.entry) else {
            return pass_to_ovs(NOT_TCP_UDP);
        };
        if maps::parse_mac(&p.dst_mac) != maps::parse_mac(&u.mac) || p.dst_ip != u.config.address {
            return pass_to_ovs("it is not to the shared MAC and address");
        }
        let key = maps::PortKey::new(u.ifindex, protocol, port);
        let Some(ifindex) = maps::lookup(fast.inbound.iter().map(|(k, v)| (*k, *v)), key) else {
            return pass_to_ovs(&format!("{protocol} {port} is in no sandbox's range"));
        };
        let to = self
            .ports
            .sandboxes
            .values()
            .find(|a| fastpath::ifindex(&a.host_if) == Some(ifindex));
        let (to_text, agrees) = match to {
            Some(a) => (
                format!("{} (sandbox {})", a.host_if, a.sandbox()),
                receivers.iter().any(|r| r.name == a.sandbox()),
            ),
            None => (format!("interface {ifindex}"), false),
        };
        agreement(
            format!(
                "redirects it straight to {to_text} with XDP on the uplink {}, past OVS",
                u.config.name
            ),
            agrees,
        )
    }

    /// What `xdp_sandbox` on sandbox `a`'s port does with the packet.
    fn fast_egress(
        &self,
        a: &Attachment,
        fast: &maps::FastPathMaps,
        receivers: &[TraceReceiver],
    ) -> String {
        let (u, p) = (self.u, self.packet);
        let Some((protocol, port)) = p.deciding_port(self.entry) else {
            return pass_to_ovs(NOT_TCP_UDP);
        };
        let Some(ifindex) = fastpath::ifindex(&a.host_if) else {
            return pass_to_ovs(&format!(
                "{}'s interface {} is gone",
                a.sandbox(),
                a.host_if
            ));
        };
        if maps::parse_mac(&p.src_mac) != maps::parse_mac(&u.mac) || p.src_ip != u.config.address {
            return pass_to_ovs("it is not from the shared MAC and address");
        }
        let key = maps::PortKey::new(ifindex, protocol, port);
        if maps::lookup(fast.egress.iter().map(|k| (*k, ())), key).is_none() {
            return pass_to_ovs(&format!(
                "source port {protocol} {port} is not {}'s",
                a.sandbox()
            ));
        }
        agreement(
            format!(
                "sends it straight out the uplink {} with XDP on {}, past OVS",
                u.config.name, a.host_if
            ),
            receivers.iter().any(|r| r.kind == ReceiverKind::Uplink),
        )
    }
}

/// The fast path's decision, with a warning when OVS decides otherwise: the fast path must
/// only ever take what the flows would send to the same place.
fn agreement(decision: String, agrees: bool) -> String {
    if agrees {
        decision
    } else {
        format!("{decision}; OVS would send it elsewhere: the two disagree, which is a bug (please report it)")
    }
}

/// One hop of the trace, named by the flow the agent compiled under its cookie.
fn trace_flow(h: &Hop, by_cookie: &HashMap<u64, FlowRef>, ports: &Ports) -> TraceFlow {
    let Some(rule) = &h.rule else {
        return TraceFlow {
            table: h.table,
            priority: None,
            matches: String::new(),
            actions: h.actions.join(","),
            cookie: None,
            meaning: "no flow matched (a table miss): dropped".into(),
        };
    };
    let cookie = Some(format!("{:#x}", rule.cookie));
    match by_cookie.get(&rule.cookie) {
        Some(f) => TraceFlow {
            table: f.table,
            priority: Some(f.priority),
            matches: f.matches.to_string(),
            actions: f.actions.to_string(),
            cookie,
            meaning: meaning(*f, ports).unwrap_or_else(|| {
                format!("a flow of table {}: {}", f.table, effect(f.actions, ports))
            }),
        },
        None => TraceFlow {
            table: h.table,
            priority: Some(rule.priority),
            matches: rule.matches.clone(),
            actions: h
                .actions
                .iter()
                .filter(|a| !a.starts_with(['-', '>']))
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            cookie,
            meaning: "not a flow of portiso's current state (left over, or added by hand)".into(),
        },
    }
}

/// "flow table=10 priority=200 udp,… (cookie 0x70…): what it is for".
fn deciding_flow_text(f: &TraceFlow) -> String {
    let priority = f
        .priority
        .map(|p| format!(" priority={p}"))
        .unwrap_or_default();
    let matches = if f.matches.is_empty() {
        String::new()
    } else {
        format!(" {}", f.matches)
    };
    let cookie = f
        .cookie
        .as_ref()
        .map(|c| format!(" (cookie {c})"))
        .unwrap_or_default();
    format!(
        "flow table={}{priority}{matches}{cookie} decided: {}",
        f.table, f.meaning
    )
}

/// What the agent's state says about a traced packet.
struct Explain<'a> {
    u: &'a UplinkRuntime,
    entry: Entry<'a>,
    packet: &'a Packet,
    owners: &'a Owners<'a>,
    ports: &'a Ports<'a>,
}

impl Explain<'_> {
    /// The sandbox on this uplink whose PortRange gives it `protocol port`, with that range
    /// and the span in it.
    fn owner(
        &self,
        protocol: Protocol,
        port: u16,
    ) -> Option<(&Attachment, &PortRange, (u16, u16))> {
        self.ports.sandboxes.values().find_map(|a| {
            let (r, s, e) = self.held_span(a, protocol, port)?;
            Some((*a, r, (s, e)))
        })
    }

    fn held_span(
        &self,
        a: &Attachment,
        protocol: Protocol,
        port: u16,
    ) -> Option<(&PortRange, u16, u16)> {
        self.owners.held_by(a).find_map(|r| {
            crate::model::overlap::owned_spans(r)
                .into_iter()
                .find(|&(_, p, s, e)| p == protocol && (s..=e).contains(&port))
                .map(|(_, _, s, e)| (r, s, e))
        })
    }

    /// Why the packet went where it did, as far as the ports and addresses say, and the
    /// PortRange that decided if one did.
    fn ports_reasons(&self, receivers: &[TraceReceiver]) -> (Vec<String>, Option<String>) {
        let (mut reasons, range) = match self.entry {
            Entry::Uplink => self.inbound_reasons(),
            Entry::Host => (Vec::new(), None),
            Entry::Sandbox(a) => self.egress_reasons(a),
        };
        if let (true, true, Entry::Sandbox(a)) =
            (receivers.is_empty(), reasons.is_empty(), self.entry)
        {
            reasons.push(format!("{} may send only TCP and UDP from its own ports, ARP requests, and ICMP echo requests and errors, all from the shared MAC and address", a.sandbox()));
        }
        (reasons, range)
    }

    /// "PortRange default/web1 gives UDP 10000-10099 to sandbox default/web1 on uplink up1".
    fn gives(
        &self,
        r: &PortRange,
        protocol: Protocol,
        (s, e): (u16, u16),
        a: &Attachment,
    ) -> String {
        format!(
            "PortRange {} gives {} to sandbox {} on uplink {}",
            ObjectKey::of(r),
            super::status::span_text(protocol, s, e),
            a.sandbox(),
            self.u.config.name
        )
    }

    /// Inbound TCP/UDP to the shared address goes by its destination port.
    fn inbound_reasons(&self) -> (Vec<String>, Option<String>) {
        let (u, p) = (self.u, self.packet);
        let Some((protocol, port)) = p.deciding_port(self.entry) else {
            return (Vec::new(), None);
        };
        if p.dst_ip != u.config.address {
            let why = format!("{} is not the shared address {} of uplink {}: only packets to it are steered by port", p.dst_ip, u.config.address, u.config.name);
            return (vec![why], None);
        }
        match self.owner(protocol, port) {
            Some((a, r, span)) => (vec![self.gives(r, protocol, span, a)], Some(ObjectKey::of(r).to_string())),
            None => (vec![format!("no PortRange gives {protocol} {port} to a sandbox on uplink {}: ports no sandbox holds are the host's", u.config.name)], None),
        }
    }

    /// A sandbox may send only with the shared MAC and address, and TCP/UDP only from its
    /// own ports.
    fn egress_reasons(&self, a: &Attachment) -> (Vec<String>, Option<String>) {
        let (u, p) = (self.u, self.packet);
        let mut reasons = Vec::new();
        if maps::parse_mac(&p.src_mac) != maps::parse_mac(&u.mac) {
            reasons.push(format!("its source MAC {} is not the shared MAC {}: a sandbox may not pose as another machine", p.src_mac, u.mac));
        }
        if p.src_ip != u.config.address {
            reasons.push(format!("its source address {} is not the shared address {}: a sandbox may not pose as another machine", p.src_ip, u.config.address));
        }
        let Some((protocol, port)) = p.deciding_port(self.entry) else {
            return (reasons, None);
        };
        match self.held_span(a, protocol, port) {
            Some((r, s, e)) => {
                reasons.push(format!(
                    "{}: it may send from them",
                    self.gives(r, protocol, (s, e), a)
                ));
                (reasons, Some(ObjectKey::of(r).to_string()))
            }
            None => {
                reasons.push(self.not_owned(a, protocol, port));
                (reasons, None)
            }
        }
    }

    /// Why sandbox `a` may not send from `protocol port`, naming whoever may.
    fn not_owned(&self, a: &Attachment, protocol: Protocol, port: u16) -> String {
        let held: Vec<String> = self
            .owners
            .ports_of(a)
            .into_iter()
            .map(|(p, s, e)| super::status::span_text(p, s, e))
            .collect();
        let holds = if held.is_empty() {
            "it holds no ports".to_string()
        } else {
            format!("it holds {}", held.join(", "))
        };
        let whose = match self.owner(protocol, port) {
            Some((b, r, _)) => format!(
                "; {protocol} {port} is sandbox {}'s (PortRange {})",
                b.sandbox(),
                ObjectKey::of(r)
            ),
            None => String::new(),
        };
        format!("egress check: source port {protocol} {port} is not in a PortRange sandbox {} holds on uplink {} ({holds}){whose}", a.sandbox(), self.u.config.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::agent;
    use crate::ovs::fake::FakeOvs;
    use std::sync::Arc;

    // Captured from `ovs-appctl ofproto/trace` on OVS 3.1 (Debian) with the flows of
    // tests/golden/two-sandboxes.flows (web1 on OpenFlow port 2, web2 on 3, the uplink on 1).
    const TO_SANDBOX: &str = r#"Flow: udp,in_port=1,vlan_tci=0x0000,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,nw_src=198.51.100.7,nw_dst=198.51.100.1,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=5000,tp_dst=10005

bridge("br-up1")
----------------
 0. in_port=1, priority 100, cookie 0x70b5d3cd65ea04ac
    goto_table:10
10. udp,nw_dst=198.51.100.1,tp_dst=0x2710/0xfff0, priority 200, cookie 0x70ebaaff05522dfa
    output:2

Final flow: unchanged
Megaflow: recirc_id=0,eth,udp,in_port=1,nw_dst=198.51.100.1,nw_frag=no,tp_dst=0x2710/0xfff0
Datapath actions: 3
"#;

    const EGRESS_DROP: &str = r#"Flow: udp,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:fe,nw_src=198.51.100.1,nw_dst=198.51.100.7,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=10150,tp_dst=53

bridge("br-up1")
----------------
 0. priority 0, cookie 0x706b935112424b31
    goto_table:20
20. in_port=2, priority 10, cookie 0x709775ae6b401251
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,udp,in_port=2,dl_src=02:00:00:00:00:01,nw_src=198.51.100.1,nw_frag=no,tp_src=0x2780/0xffc0
Datapath actions: drop
"#;

    const ECHO_REPLY: &str = r#"Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,nw_src=198.51.100.7,nw_dst=198.51.100.1,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=0,icmp_code=0

bridge("br-up1")
----------------
 0. in_port=1, priority 100, cookie 0x70b5d3cd65ea04ac
    goto_table:10
10. icmp,nw_dst=198.51.100.1,icmp_type=0, priority 150, cookie 0x70635aadc6adbaeb
    ct(table=11,zone=29008)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 11.
     -> Sets the packet to an untracked state, and clears all the conntrack fields.

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=1,nw_dst=198.51.100.1,nw_frag=no,icmp_type=0x0/0xff
Datapath actions: ct(zone=29008),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x1,ct_state=new|trk,ct_zone=29008,eth,icmp,in_port=1,vlan_tci=0x0000,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,nw_src=198.51.100.7,nw_dst=198.51.100.1,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=0,icmp_code=0

bridge("br-up1")
----------------
    thaw
        Resuming from table 11
11. priority 0, cookie 0x70a9cf211b4a1fd8
    LOCAL

Final flow: unchanged
Megaflow: recirc_id=0x1,ct_state=-est+trk,ct_mark=0,eth,ip,in_port=1,nw_frag=no
Datapath actions: 1
"#;

    const ICMP_ERROR: &str = r#"Flow: icmp,in_port=1,vlan_tci=0x0000,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,nw_src=198.51.100.7,nw_dst=198.51.100.1,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=3,icmp_code=3

bridge("br-up1")
----------------
 0. in_port=1, priority 100, cookie 0x70b5d3cd65ea04ac
    goto_table:10
10. icmp,nw_dst=198.51.100.1,icmp_type=3, priority 160, cookie 0x7006693450462730
    CONTROLLER:65535

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=1,nw_dst=198.51.100.1,nw_frag=no,icmp_type=0x3/0xff
Datapath actions: userspace(pid=0,controller(reason=1,dont_send=1,continuation=0,recirc_id=2,rule_cookie=0x7006693450462730,controller_id=0,max_len=65535))
"#;

    const ARP_REPLY_FLOOD: &str = r#"Flow: arp,in_port=1,vlan_tci=0x0000,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,arp_spa=198.51.100.7,arp_tpa=198.51.100.1,arp_op=2,arp_sha=02:00:00:00:00:fe,arp_tha=02:00:00:00:00:01

bridge("br-up1")
----------------
 0. in_port=1, priority 100, cookie 0x70b5d3cd65ea04ac
    goto_table:10
10. arp,arp_op=2, priority 300, cookie 0x70db15a4a74693ae
    LOCAL
    output:2
    output:3

Final flow: unchanged
Megaflow: recirc_id=0,eth,arp,in_port=1,arp_op=2
Datapath actions: 1,3,4
"#;

    const ECHO_REQUEST_OUT: &str = r#"Flow: icmp,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:fe,nw_src=198.51.100.1,nw_dst=198.51.100.7,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0

bridge("br-up1")
----------------
 0. priority 0, cookie 0x706b935112424b31
    goto_table:20
20. icmp,in_port=2,dl_src=02:00:00:00:00:01,nw_src=198.51.100.1,icmp_type=8, priority 150, cookie 0x7027e706b0362715
    ct(commit,zone=29008,exec(set_field:0x2->ct_mark))
    set_field:0x2->ct_mark
     -> Sets the packet to an untracked state, and clears all the conntrack fields.
    output:1

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=2,dl_src=02:00:00:00:00:01,nw_src=198.51.100.1,nw_frag=no,icmp_type=0x8/0xff
Datapath actions: ct(commit,zone=29008,mark=0x2/0xffffffff),2
"#;

    fn rule(matches: &str, priority: u16, cookie: u64) -> Option<Rule> {
        Some(Rule {
            matches: matches.into(),
            priority,
            cookie,
        })
    }

    #[test]
    fn parses_a_trace_to_a_sandbox() {
        let t = parse_trace(TO_SANDBOX);
        assert_eq!(
            t.hops,
            [
                Hop {
                    table: 0,
                    rule: rule("in_port=1", 100, 0x70b5d3cd65ea04ac),
                    actions: vec!["goto_table:10".into()],
                },
                Hop {
                    table: 10,
                    rule: rule(
                        "udp,nw_dst=198.51.100.1,tp_dst=0x2710/0xfff0",
                        200,
                        0x70ebaaff05522dfa
                    ),
                    actions: vec!["output:2".into()],
                },
            ]
        );
        assert_eq!(t.outputs(), [Output::Port(2)]);
        assert_eq!(t.final_datapath_actions(), "3");
        assert!(!t.assumed_ct_state);
    }

    #[test]
    fn parses_a_drop_and_a_flow_that_matches_anything() {
        let t = parse_trace(EGRESS_DROP);
        assert_eq!(t.hops[0].rule, rule("", 0, 0x706b935112424b31));
        assert_eq!(t.hops[1].rule, rule("in_port=2", 10, 0x709775ae6b401251));
        assert_eq!(t.hops[1].actions, ["drop"]);
        assert!(t.outputs().is_empty());
        assert_eq!(t.final_datapath_actions(), "drop");
    }

    #[test]
    fn follows_a_recirculation_through_conntrack() {
        let t = parse_trace(ECHO_REPLY);
        let tables: Vec<u8> = t.hops.iter().map(|h| h.table).collect();
        assert_eq!(tables, [0, 10, 11]);
        assert_eq!(t.hops[1].actions[0], "ct(table=11,zone=29008)");
        assert!(t.hops[1]
            .actions
            .iter()
            .any(|a| a.starts_with("-> A clone")));
        assert_eq!(t.hops[2].rule, rule("", 0, 0x70a9cf211b4a1fd8));
        assert_eq!(t.outputs(), [Output::Local]);
        assert_eq!(t.datapath_actions, ["ct(zone=29008),recirc(0x1)", "1"]);
        assert!(t.assumed_ct_state);
    }

    #[test]
    fn reads_controller_flood_and_conntrack_outputs() {
        assert_eq!(parse_trace(ICMP_ERROR).outputs(), [Output::Controller]);
        assert_eq!(
            parse_trace(ARP_REPLY_FLOOD).outputs(),
            [Output::Local, Output::Port(2), Output::Port(3)]
        );
        // ct() and set_field are no outputs.
        assert_eq!(parse_trace(ECHO_REQUEST_OUT).outputs(), [Output::Port(1)]);
        // Nor is an output OVS skips.
        let skipped = TO_SANDBOX.replace(
            "    output:2\n",
            "    output:2\n     >> skipping output to input port\n",
        );
        assert!(parse_trace(&skipped).outputs().is_empty());
        assert_eq!(parse_trace("garbage\n"), OvsTrace::default());
    }

    fn request(from: TraceFrom, protocol: TraceProtocol) -> TraceRequest {
        TraceRequest {
            from,
            uplink: None,
            protocol,
            src_ip: None,
            dst_ip: None,
            src_port: None,
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
            arp_op: None,
            src_mac: None,
            dst_mac: None,
        }
    }

    fn compiled(a: &Agent) -> crate::flows::FlowTable {
        let u = &a.uplinks[0];
        compile_bridge(&a.bridge_state(u))
    }

    /// What ovs-appctl prints for a packet that meets `flows` (as OVS 3.1 lays it out).
    fn ovs_trace_through(flows: &[FlowRef], datapath_actions: &str) -> String {
        let mut t = String::from("Flow: (the packet)\n\nbridge(\"br-eth1\")\n--------------\n");
        for f in flows {
            let m = if f.matches.is_empty() {
                String::new()
            } else {
                format!("{}, ", f.matches)
            };
            t += &format!(
                "{:2}. {m}priority {}, cookie {:#x}\n",
                f.table,
                f.priority,
                f.cookie()
            );
            for action in f.actions.split(',') {
                t += &format!("    {action}\n");
            }
        }
        t + &format!(
            "\nFinal flow: unchanged\nMegaflow: recirc_id=0,eth\nDatapath actions: {datapath_actions}\n"
        )
    }

    /// Traces `r` on the test agent, whose fake OVS answers that the packet met the compiled
    /// flows `path` picks (by table, priority and a piece of the match).
    fn trace_with(
        r: TraceRequest,
        path: &[(u8, u16, &str)],
        datapath: &str,
    ) -> (TraceReport, Arc<FakeOvs>) {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs.clone());
        let table = compiled(&a);
        let flows: Vec<FlowRef> = path
            .iter()
            .map(|&(t, p, m)| {
                table
                    .flows
                    .iter()
                    .find(|f| f.table == t && f.priority == p && f.matches.contains(m))
                    .unwrap_or_else(|| panic!("no flow {t}/{p}/{m} in {}", table.render()))
            })
            .collect();
        *ovs.trace_output.lock().unwrap() = ovs_trace_through(&flows, datapath);
        (a.trace(&r).unwrap(), ovs)
    }

    #[test]
    fn a_port_in_a_range_goes_to_its_sandbox_named_with_its_portrange() {
        let mut r = request(TraceFrom::Uplink, TraceProtocol::Tcp);
        r.dst_port = Some(10005);
        let (t, ovs) = trace_with(
            r,
            &[(0, 100, "in_port=1"), (10, 200, "tp_dst=0x2710/0xfff0")],
            "2",
        );
        let traced = ovs.traces.lock().unwrap().clone();
        assert_eq!(
            traced,
            [(
                "br-eth1".to_string(),
                "in_port=1,tcp,dl_src=02:00:00:00:00:fe,dl_dst=02:00:00:00:00:01,nw_src=0.0.0.0,nw_dst=198.51.100.1,nw_ttl=64,tcp_src=49152,tcp_dst=10005".to_string()
            )]
        );
        assert_eq!(t.flow, traced[0].1);
        assert_eq!(t.receivers.len(), 1);
        let to = &t.receivers[0];
        assert_eq!(
            (to.kind, to.name.as_str(), to.ofport),
            (ReceiverKind::Sandbox, "default/a", Some(2))
        );
        assert_eq!(to.host_if.as_deref(), Some("pi-a"));
        assert!(!t.dropped);
        assert_eq!(t.port_range.as_deref(), Some("default/a"));
        assert_eq!(
            t.verdict,
            "TCP 0.0.0.0:49152 -> 198.51.100.1:10005 from the uplink eth1 goes to sandbox default/a (pi-a, OpenFlow port 2)"
        );
        assert_eq!(
            t.reasons[0],
            "PortRange default/a gives TCP 10000-10099 to sandbox default/a on uplink eth1"
        );
        assert!(t.reasons[1].starts_with("flow table=10 priority=200 tcp,nw_dst=198.51.100.1,tp_dst=0x2710/0xfff0 (cookie 0x70"), "{:?}", t.reasons);
        assert!(
            t.reasons[1].ends_with(
                "decided: TCP to ports 10000-10015 goes to sandbox default/a, which holds them"
            ),
            "{:?}",
            t.reasons
        );
        assert_eq!(t.flows.len(), 2);
        assert_eq!(
            t.flows[0].meaning,
            "packets from the uplink go to the inbound table"
        );
        assert_eq!(t.fast_path, "off: test; OVS carries every packet");
        assert_eq!(t.datapath_actions, "2");
    }

    #[test]
    fn a_port_in_no_range_is_the_hosts() {
        let mut r = request(TraceFrom::Uplink, TraceProtocol::Udp);
        r.dst_port = Some(10005);
        r.src_ip = Some(Ipv4Addr::new(203, 0, 113, 7));
        let (t, _) = trace_with(r, &[(0, 100, "in_port=1"), (10, 0, "")], "100");
        assert_eq!(t.receivers[0].kind, ReceiverKind::Host);
        assert_eq!(t.port_range, None);
        assert!(
            t.verdict
                .starts_with("UDP 203.0.113.7:49152 -> 198.51.100.1:10005"),
            "{}",
            t.verdict
        );
        assert!(t.verdict.ends_with("goes to the host"), "{}", t.verdict);
        assert_eq!(t.reasons[0], "no PortRange gives UDP 10005 to a sandbox on uplink eth1: ports no sandbox holds are the host's");
    }

    #[test]
    fn a_foreign_source_port_is_explained_by_whose_it_is() {
        let mut r = request(TraceFrom::Sandbox("default/a".into()), TraceProtocol::Udp);
        r.src_port = Some(10100);
        let (t, ovs) = trace_with(r, &[(0, 0, ""), (20, 10, "in_port=2")], "drop");
        assert!(ovs.traces.lock().unwrap()[0].1.starts_with(
            "in_port=2,udp,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:fe,nw_src=198.51.100.1,"
        ));
        assert!(t.dropped && t.receivers.is_empty());
        assert!(
            t.verdict.ends_with("from sandbox default/a is dropped"),
            "{}",
            t.verdict
        );
        assert_eq!(
            t.reasons[0],
            "egress check: source port UDP 10100 is not in a PortRange sandbox default/a holds on uplink eth1 (it holds TCP 10000-10099); UDP 10100 is sandbox default/b's (PortRange default/b)"
        );
        assert!(
            t.reasons[1].contains("default/a may not send it"),
            "{:?}",
            t.reasons
        );
        assert_eq!(
            t.flows[0].meaning,
            "anything from a sandbox's port goes to the egress checks"
        );
    }

    #[test]
    fn the_host_and_arp_take_their_own_flows() {
        let (t, _) = trace_with(
            request(TraceFrom::Host, TraceProtocol::Tcp),
            &[(0, 100, "in_port=LOCAL")],
            "1",
        );
        assert_eq!(t.receivers[0].kind, ReceiverKind::Uplink);
        assert_eq!(t.receivers[0].name, "eth1");
        assert!(t.flow.starts_with("in_port=LOCAL,tcp,"), "{}", t.flow);
        let (t, ovs) = trace_with(
            request(TraceFrom::Uplink, TraceProtocol::Arp),
            &[(0, 100, "in_port=1"), (10, 290, "arp")],
            "100",
        );
        assert_eq!(t.receivers[0].kind, ReceiverKind::Host);
        assert!(
            t.verdict
                .starts_with("ARP request for 198.51.100.1 from 0.0.0.0"),
            "{}",
            t.verdict
        );
        assert_eq!(
            ovs.traces.lock().unwrap()[0].1,
            "in_port=1,arp,dl_src=02:00:00:00:00:fe,dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=0.0.0.0,arp_tpa=198.51.100.1,arp_sha=02:00:00:00:00:fe,arp_tha=00:00:00:00:00:00"
        );
        assert!(
            t.flows[1]
                .meaning
                .starts_with("ARP requests are the host's"),
            "{:?}",
            t.flows
        );
    }

    #[test]
    fn requests_that_cannot_be_traced_say_what_to_change() {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs.clone());
        let err = |r: TraceRequest| a.trace(&r).unwrap_err().msg;
        let e = err(request(
            TraceFrom::Sandbox("default/zz".into()),
            TraceProtocol::Icmp,
        ));
        assert_eq!(e, "no sandbox default/zz is attached: give --from one of default/a (uplink eth1), default/b (uplink eth1)");
        let e = err(request(TraceFrom::Uplink, TraceProtocol::Udp));
        assert!(
            e.contains("needs its destination port") && e.contains("--dst [IP:]PORT"),
            "{e}"
        );
        let e = err(request(
            TraceFrom::Sandbox("default/b".into()),
            TraceProtocol::Tcp,
        ));
        assert!(
            e.contains("needs its source port") && e.contains("--src"),
            "{e}"
        );
        let mut r = request(TraceFrom::Uplink, TraceProtocol::Icmp);
        r.uplink = Some("eth7".into());
        let e = err(r);
        assert!(
            e.contains("\"eth7\"") && e.contains("eth1 (198.51.100.1)"),
            "{e}"
        );
        let mut r = request(TraceFrom::Uplink, TraceProtocol::Icmp);
        r.src_mac = Some("02:00".into());
        assert!(err(r).contains("--src-mac \"02:00\" is not a MAC address"));
        let mut r = request(TraceFrom::Uplink, TraceProtocol::Arp);
        r.arp_op = Some(3);
        assert!(err(r).contains("ARP operation 3"));
        assert!(ovs.traces.lock().unwrap().is_empty(), "nothing was traced");
    }

    #[test]
    fn every_flow_the_compiler_makes_has_a_meaning() {
        let a = agent(Arc::new(FakeOvs::default()));
        let ports = Ports::new(&a.uplinks[0], &a.attachments);
        for f in compiled(&a).flows.iter() {
            assert!(meaning(f, &ports).is_some(), "no meaning for {f}");
        }
    }

    #[test]
    fn port_blocks_read_as_spans() {
        assert_eq!(block_text("0x2710/0xfff0"), "10000-10015");
        assert_eq!(block_text("10100"), "10100");
        assert_eq!(block_text("0x2774/0xfffc"), "10100-10103");
        assert_eq!(block_text("junk"), "junk");
    }
}
