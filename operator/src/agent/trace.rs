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

// --- What `ofproto/trace` printed ---------------------------------------------------------

/// The parts of `ovs-appctl ofproto/trace` output that portiso explains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OvsTrace {
    /// Every table the packet visited, in order (after a recirculation, those of the resumed
    /// pipeline follow).
    pub hops: Vec<Hop>,
    /// Every "Datapath actions:" line, in order: one per pass through the pipeline.
    pub datapath_actions: Vec<String>,
    /// Whether OVS assumed a conntrack state it cannot know (it traces with `trk|new`).
    pub assumed_ct_state: bool,
}

/// One table lookup of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub table: u8,
    /// The flow that matched; None on a table miss.
    pub rule: Option<Rule>,
    /// The lines under it: its actions one per line, and OVS's notes about them.
    pub actions: Vec<String>,
}

/// A matched flow as OVS printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: String,
    pub priority: u16,
    pub cookie: u64,
}

/// Where a packet went out of the bridge, by OpenFlow action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    Port(u32),
    Local,
    Controller,
}

impl OvsTrace {
    /// The outputs of every action the trace executed, in order, without those OVS did not
    /// carry out (an output to the port the packet came in on, or to no port at all).
    pub fn outputs(&self) -> Vec<Output> {
        let mut out: Vec<Output> = Vec::new();
        for line in self.hops.iter().flat_map(|h| &h.actions) {
            if line.starts_with(">>")
                && (line.contains("skipping output to input port")
                    || line.contains("Nonexistent output port"))
            {
                out.pop();
            } else if let Some(o) = output_of(line) {
                out.push(o);
            }
        }
        let mut seen = Vec::new();
        out.retain(|o| {
            let new = !seen.contains(o);
            seen.push(*o);
            new
        });
        out
    }

    /// The last "Datapath actions:" line: what the datapath finally does with the packet.
    pub fn final_datapath_actions(&self) -> &str {
        self.datapath_actions.last().map_or("", String::as_str)
    }
}

/// The output of one action line ("output:2", "LOCAL", "CONTROLLER:65535").
fn output_of(action: &str) -> Option<Output> {
    if action == "LOCAL" || action == "output:LOCAL" {
        return Some(Output::Local);
    }
    // OVS prints a plain controller action as "CONTROLLER:65535".
    if action.to_ascii_lowercase().starts_with("controller") {
        return Some(Output::Controller);
    }
    action
        .strip_prefix("output:")
        .and_then(|p| p.parse().ok())
        .map(Output::Port)
}

/// Reads `ovs-appctl ofproto/trace` output (OVS 2.8 and later; captured from 3.1 in the
/// tests). Lines it does not know are skipped.
pub fn parse_trace(text: &str) -> OvsTrace {
    let mut t = OvsTrace::default();
    // Whether the lines that follow still belong to the last hop.
    let mut in_hop = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(actions) = l.strip_prefix("Datapath actions:") {
            t.datapath_actions.push(actions.trim().to_string());
            in_hop = false;
        } else if let Some(hop) = parse_hop(l) {
            t.hops.push(hop);
            in_hop = true;
        } else if l.is_empty() || l.starts_with("Final flow:") || l.starts_with("Megaflow:") {
            in_hop = false;
        } else if l.contains("resume conntrack with default ct_state") {
            t.assumed_ct_state = true;
        } else if in_hop {
            if let Some(hop) = t.hops.last_mut() {
                hop.actions.push(l.to_string());
            }
        }
    }
    t
}

/// " 0. in_port=1, priority 100, cookie 0x70b5…", "10. No match.": a table lookup.
fn parse_hop(line: &str) -> Option<Hop> {
    let (number, rest) = line.split_once(". ")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let table = number.parse().ok()?;
    let rule = rest.rfind("priority ").and_then(|at| {
        let matches = rest[..at].trim_end().trim_end_matches(',').to_string();
        let mut fields = rest[at + "priority ".len()..].split(", ");
        let priority = fields.next()?.trim().parse().ok()?;
        let cookie = fields
            .find_map(|f| f.trim().strip_prefix("cookie 0x"))
            .and_then(|c| u64::from_str_radix(c, 16).ok())
            .unwrap_or(0);
        Some(Rule {
            matches,
            priority,
            cookie,
        })
    });
    Some(Hop {
        table,
        rule,
        actions: Vec::new(),
    })
}

// --- The packet -----------------------------------------------------------------------------

/// A traced packet with every field decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub protocol: TraceProtocol,
    pub src_mac: String,
    pub dst_mac: String,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// TCP/UDP only.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP only.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// ARP only.
    pub arp_op: u16,
}

/// Where the packet enters the bridge.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    Uplink,
    Host,
    Sandbox(&'a Attachment),
}

impl Entry<'_> {
    /// Whether the packet comes from outside the node (and the shared address is its
    /// destination) rather than from the node (where it is the source).
    fn inbound(&self) -> bool {
        matches!(self, Entry::Uplink)
    }
}

fn bad_request(msg: String) -> AgentError {
    AgentError::new(code::INVALID_NETWORK_CONFIG, msg)
}

impl Packet {
    /// The request's packet with what it leaves out filled in: the shared address and MAC on
    /// the node's side, the uplink's gateway (else 0.0.0.0) and [`PEER_MAC`] on the other.
    pub fn new(r: &TraceRequest, u: &UplinkRuntime, entry: Entry) -> Result<Self, AgentError> {
        let (shared, node_mac) = (u.config.address, u.mac.as_str());
        let peer = u.config.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let arp_op = r.arp_op.unwrap_or(1);
        if !matches!(arp_op, 1 | 2) {
            return Err(bad_request(format!(
                "ARP operation {arp_op} cannot be traced: use 1 (request) or 2 (reply)"
            )));
        }
        // An ARP request goes to everyone; anything else to one MAC.
        let broadcast = r.protocol == TraceProtocol::Arp && arp_op == 1;
        let to_mac = |unicast: &str| {
            if broadcast {
                BROADCAST_MAC.to_string()
            } else {
                unicast.to_string()
            }
        };
        let (src_mac, dst_mac, src_ip, dst_ip) = if entry.inbound() {
            (PEER_MAC.to_string(), to_mac(node_mac), peer, shared)
        } else {
            (node_mac.to_string(), to_mac(PEER_MAC), shared, peer)
        };
        // The port on the node's side decides who gets it: it must be given.
        let tcp_udp = matches!(r.protocol, TraceProtocol::Tcp | TraceProtocol::Udp);
        let missing = match entry {
            Entry::Uplink if r.dst_port.is_none() => Some(("destination", "--dst")),
            Entry::Sandbox(_) if r.src_port.is_none() => Some(("source", "--src")),
            _ => None,
        };
        if let (true, Some((which, arg))) = (tcp_udp, missing) {
            return Err(bad_request(format!(
                "a {} packet {} needs its {which} port, which decides who gets it: give {arg} [IP:]PORT",
                protocol_name(r.protocol),
                entry_text(entry, u),
            )));
        }
        for (mac, arg) in [(&r.src_mac, "--src-mac"), (&r.dst_mac, "--dst-mac")] {
            if let Some(m) = mac {
                if maps::parse_mac(m).is_none() {
                    return Err(bad_request(format!(
                        "{arg} {m:?} is not a MAC address: write it as 02:00:00:00:00:01"
                    )));
                }
            }
        }
        Ok(Packet {
            protocol: r.protocol,
            src_mac: r.src_mac.clone().unwrap_or(src_mac),
            dst_mac: r.dst_mac.clone().unwrap_or(dst_mac),
            src_ip: r.src_ip.unwrap_or(src_ip),
            dst_ip: r.dst_ip.unwrap_or(dst_ip),
            src_port: r.src_port.unwrap_or(PEER_PORT),
            dst_port: r.dst_port.unwrap_or(PEER_PORT),
            icmp_type: r.icmp_type.unwrap_or(8),
            icmp_code: r.icmp_code.unwrap_or(0),
            arp_op,
        })
    }

    /// The packet as `ofproto/trace` takes it, entering at `in_port`.
    pub fn flow(&self, in_port: &str) -> String {
        let p = self;
        let proto = protocol_name(p.protocol).to_lowercase();
        let head = format!(
            "in_port={in_port},{proto},dl_src={},dl_dst={}",
            p.src_mac, p.dst_mac
        );
        let ip = format!("nw_src={},nw_dst={},nw_ttl=64", p.src_ip, p.dst_ip);
        match p.protocol {
            // Not `tp_src`/`tp_dst`: OVS takes those aliases in flows, but the trace's packet
            // parser reads them as TCP's fields and refuses them for UDP.
            TraceProtocol::Tcp | TraceProtocol::Udp => format!(
                "{head},{ip},{proto}_src={},{proto}_dst={}",
                p.src_port, p.dst_port
            ),
            TraceProtocol::Icmp => format!(
                "{head},{ip},icmp_type={},icmp_code={}",
                p.icmp_type, p.icmp_code
            ),
            TraceProtocol::Arp => {
                // A request asks for the target's MAC: it does not know it yet.
                let tha = if p.arp_op == 1 {
                    "00:00:00:00:00:00"
                } else {
                    p.dst_mac.as_str()
                };
                format!(
                    "{head},arp_op={},arp_spa={},arp_tpa={},arp_sha={},arp_tha={tha}",
                    p.arp_op, p.src_ip, p.dst_ip, p.src_mac
                )
            }
        }
    }

    /// The TCP/UDP protocol and the port that decides who gets it, if it has ports.
    fn deciding_port(&self, entry: Entry) -> Option<(Protocol, u16)> {
        let protocol = match self.protocol {
            TraceProtocol::Tcp => Protocol::Tcp,
            TraceProtocol::Udp => Protocol::Udp,
            _ => return None,
        };
        Some((
            protocol,
            if entry.inbound() {
                self.dst_port
            } else {
                self.src_port
            },
        ))
    }

    /// The packet for people: "UDP 198.51.100.7:49152 -> 198.51.100.1:10005".
    fn describe(&self) -> String {
        let p = self;
        match p.protocol {
            TraceProtocol::Tcp | TraceProtocol::Udp => format!(
                "{} {}:{} -> {}:{}",
                protocol_name(p.protocol),
                p.src_ip,
                p.src_port,
                p.dst_ip,
                p.dst_port
            ),
            TraceProtocol::Icmp => format!(
                "ICMP {} {} -> {}",
                icmp_type_text(p.icmp_type, p.icmp_code),
                p.src_ip,
                p.dst_ip
            ),
            TraceProtocol::Arp if p.arp_op == 1 => {
                format!("ARP request for {} from {}", p.dst_ip, p.src_ip)
            }
            TraceProtocol::Arp => format!(
                "ARP reply ({} is at {}) to {}",
                p.src_ip, p.src_mac, p.dst_ip
            ),
        }
    }
}

fn protocol_name(p: TraceProtocol) -> &'static str {
    match p {
        TraceProtocol::Tcp => "TCP",
        TraceProtocol::Udp => "UDP",
        TraceProtocol::Icmp => "ICMP",
        TraceProtocol::Arp => "ARP",
    }
}

fn icmp_type_text(t: u8, code: u8) -> String {
    let name = match t {
        0 => "echo reply",
        3 => "destination unreachable",
        8 => "echo request",
        11 => "time exceeded",
        12 => "parameter problem",
        _ => "",
    };
    if name.is_empty() {
        format!("type {t} code {code}")
    } else {
        format!("{name} (type {t} code {code})")
    }
}

fn entry_text(entry: Entry, u: &UplinkRuntime) -> String {
    match entry {
        Entry::Uplink => format!("from the uplink {}", u.config.name),
        Entry::Host => "from the host".into(),
        Entry::Sandbox(a) => format!("from sandbox {}", a.sandbox()),
    }
}

// --- Names of ports and flows ---------------------------------------------------------------

/// The OpenFlow ports of one bridge, by who is behind them.
struct Ports<'a> {
    uplink: &'a UplinkRuntime,
    sandboxes: BTreeMap<u32, &'a Attachment>,
}

impl<'a> Ports<'a> {
    fn new(uplink: &'a UplinkRuntime, attachments: &'a [Attachment]) -> Self {
        Ports {
            uplink,
            sandboxes: attachments
                .iter()
                .filter(|a| a.uplink == uplink.config.name)
                .map(|a| (a.ofport, a))
                .collect(),
        }
    }

    fn receiver(&self, out: Output) -> TraceReceiver {
        let (kind, name, ofport, host_if) = match out {
            Output::Local => (ReceiverKind::Host, "host".to_string(), None, None),
            Output::Controller => (ReceiverKind::Agent, "agent".to_string(), None, None),
            Output::Port(p) if p == self.uplink.uplink_ofport => (
                ReceiverKind::Uplink,
                self.uplink.config.name.clone(),
                Some(p),
                None,
            ),
            Output::Port(p) => match self.sandboxes.get(&p) {
                Some(a) => (
                    ReceiverKind::Sandbox,
                    a.sandbox(),
                    Some(p),
                    Some(a.host_if.clone()),
                ),
                None => (ReceiverKind::Other, format!("port {p}"), Some(p), None),
            },
        };
        TraceReceiver {
            kind,
            name,
            ofport,
            host_if,
        }
    }

    /// Who is behind an OpenFlow port, as a phrase: "sandbox default/web1", "the host".
    fn name(&self, port: &str) -> String {
        let out = match port {
            "LOCAL" => Output::Local,
            p => match p.parse() {
                Ok(n) => Output::Port(n),
                Err(_) => return format!("port {p}"),
            },
        };
        short_text(&self.receiver(out))
    }
}

/// A receiver as a short phrase: "sandbox default/web1", "the host".
fn short_text(r: &TraceReceiver) -> String {
    match r.kind {
        ReceiverKind::Host => "the host".into(),
        ReceiverKind::Agent => "the portiso agent".into(),
        ReceiverKind::Uplink => format!("the uplink {}", r.name),
        ReceiverKind::Other => format!("{}, which portiso does not know", r.name),
        ReceiverKind::Sandbox => format!("sandbox {}", r.name),
    }
}

/// A receiver with where to find it: "sandbox default/web1 (pi-1234, OpenFlow port 2)".
fn receiver_text(r: &TraceReceiver) -> String {
    match (&r.host_if, r.ofport) {
        (Some(host_if), Some(p)) => format!("{} ({host_if}, OpenFlow port {p})", short_text(r)),
        _ => short_text(r),
    }
}

/// The value of `key=` in a match.
fn field<'m>(matches: &'m str, key: &str) -> Option<&'m str> {
    matches
        .split(',')
        .find_map(|m| m.strip_prefix(key)?.strip_prefix('='))
}

/// A port block as the flows write it ("10000", "0x2710/0xfff0") as people do ("10000-10015").
fn block_text(block: &str) -> String {
    let parse = |s: &str| match s.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    let b = match block.split_once('/') {
        Some((v, m)) => parse(v)
            .zip(parse(m))
            .map(|(value, mask)| PortBlock { value, mask }),
        None => parse(block).map(|value| PortBlock {
            value,
            mask: u16::MAX,
        }),
    };
    match b {
        Some(b) if b.first() == b.last() => b.first().to_string(),
        Some(b) => format!("{}-{}", b.first(), b.last()),
        None => block.to_string(),
    }
}

/// What a flow's actions do, as a phrase: "to sandbox default/web1 (…)", "dropped".
fn effect(actions: &str, ports: &Ports) -> String {
    if actions == "drop" {
        return "dropped".into();
    }
    if let Some(t) = actions.strip_prefix("goto_table:") {
        return format!("on to table {t}");
    }
    if actions.starts_with("controller") {
        return "to the portiso agent".into();
    }
    let outs: Vec<String> = actions
        .split(',')
        .filter_map(|a| match a {
            "LOCAL" => Some(ports.name("LOCAL")),
            a => a.strip_prefix("output:").map(|p| ports.name(p)),
        })
        .collect();
    if outs.is_empty() {
        format!("actions {actions}")
    } else {
        format!("to {}", outs.join(" and "))
    }
}

/// What the compiler means by one of its flows (see `flows::compile`), in words. None for a
/// flow it does not make.
fn meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    match f.table {
        table::CLASSIFY => Some(classify_meaning(f)),
        table::FROM_UPLINK => inbound_meaning(f, ports),
        table::ECHO_REPLY => echo_reply_meaning(f, ports),
        table::FROM_SANDBOX => egress_meaning(f, ports),
        _ => other_meaning(f, ports),
    }
}

fn classify_meaning(f: FlowRef) -> String {
    match field(f.matches, "in_port") {
        None => "anything from a sandbox's port goes to the egress checks",
        Some("LOCAL") => "the host's own packets go straight out the uplink",
        Some(_) => "packets from the uplink go to the inbound table",
    }
    .into()
}

/// Whether a match is on frames with an 802.1Q tag ("tag present" bit).
fn vlan_tagged(matches: &str) -> bool {
    field(matches, "vlan_tci").is_some_and(|v| v.starts_with("0x1000/0x1000"))
}

/// The first field of a match, as people write protocols: "UDP", "ARP".
fn protocol_of(matches: &str) -> String {
    matches.split(',').next().unwrap_or("").to_uppercase()
}

fn inbound_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    let m = f.matches;
    let to = effect(f.actions, ports);
    let icmp_type = field(m, "icmp_type");
    Some(match (field(m, "tp_dst"), field(m, "arp_op")) {
        _ if f.priority == 0 => format!("inbound that no sandbox claims is the host's: {to}"),
        _ if vlan_tagged(m) => format!(
            "a VLAN-tagged frame belongs to another network than the shared address's: {to}"
        ),
        _ if icmp_type == Some("0") => {
            "an echo reply: conntrack finds which sandbox sent the request".into()
        }
        _ if f.actions.starts_with("controller") => format!(
            "an ICMP error (type {}) to the shared address: to the portiso agent, which passes it on to whoever sent the packet it quotes",
            icmp_type.unwrap_or("?")
        ),
        _ if m.contains("nw_frag=yes") => "a UDP fragment: conntrack reassembles its datagram first, so that the datagram's port decides".into(),
        (Some(b), _) => format!(
            "{} to ports {} goes {to}, which holds them",
            protocol_of(m),
            block_text(b)
        ),
        (None, Some("2")) => format!("an ARP reply may answer the host or any sandbox: {to}"),
        _ if m == "arp" => {
            format!("ARP requests are the host's, which answers for the shared address: {to}")
        }
        _ => return None,
    })
}

fn echo_reply_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    let to = effect(f.actions, ports);
    Some(match field(f.matches, "ct_mark") {
        _ if f.priority == 0 => {
            format!("an echo reply that answers no sandbox's request is the host's: {to}")
        }
        Some(port) => format!(
            "an echo reply to a request conntrack saw from {}: {to}",
            ports.name(port)
        ),
        None => return None,
    })
}

fn egress_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    let m = f.matches;
    let to = effect(f.actions, ports);
    let from = field(m, "in_port")
        .map(|p| ports.name(p))
        .unwrap_or_default();
    let protocol = protocol_of(m);
    let icmp_type = field(m, "icmp_type");
    Some(match f.priority {
        0 => "egress from a port no sandbox holds: dropped".into(),
        _ if vlan_tagged(m) => format!(
            "a sandbox sends untagged frames only (a tag would put them on another network): {to}"
        ),
        _ if f.actions == "drop" && !from.is_empty() => format!(
            "{from} may not send it (a spoofed MAC or address, or a port or kind of packet it may not send): dropped, and counted as its drop"
        ),
        _ if m.contains("nw_frag=yes") => format!(
            "a UDP fragment from {from}: conntrack reassembles its datagram first, so that the datagram's source port decides"
        ),
        _ if protocol == "ARP" => format!("{from} may ask ARP as the shared address: {to}"),
        _ if icmp_type == Some("8") => format!(
            "{from}'s echo request from the shared address: {to}, remembered by conntrack for the reply"
        ),
        _ if protocol == "ICMP" => format!(
            "{from} may send ICMP errors (type {}) from the shared address: {to}",
            icmp_type.unwrap_or("?")
        ),
        _ => format!(
            "{protocol} from ports {}, {from}'s own, with the shared MAC and address: {to}",
            block_text(field(m, "tp_src")?)
        ),
    })
}

/// Tables past the main ones (e.g. reassembled fragments), by what their flows match.
fn other_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    let m = f.matches;
    let to = effect(f.actions, ports);
    let from = || {
        field(m, "in_port")
            .map(|p| ports.name(p))
            .unwrap_or_default()
    };
    Some(match (field(m, "ct_tp_dst"), field(m, "ct_tp_src")) {
        _ if m.is_empty() => format!("nothing more specific matched: {to}"),
        _ if field(m, "ct_state") == Some("-inv+trk") => format!(
            "fragments of a UDP datagram conntrack reassembled without fault: {to}, which steers them by the datagram's ports"
        ),
        (Some(b), _) => format!("a reassembled datagram to ports {}: {to}", block_text(b)),
        (None, Some(b)) => format!(
            "a reassembled datagram from ports {}, {}'s own: {to}",
            block_text(b),
            from()
        ),
        _ => return None,
    })
}

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
