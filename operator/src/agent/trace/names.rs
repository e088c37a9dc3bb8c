//! Plain words for ports, port blocks and the flows the compiler makes.

use super::*;

/// The OpenFlow ports of one bridge, by who is behind them.
pub(super) struct Ports<'a> {
    pub(super) uplink: &'a UplinkRuntime,
    pub(super) sandboxes: BTreeMap<u32, &'a Attachment>,
}

impl<'a> Ports<'a> {
    pub(super) fn new(uplink: &'a UplinkRuntime, attachments: &'a [Attachment]) -> Self {
        Ports {
            uplink,
            sandboxes: attachments
                .iter()
                .filter(|a| a.uplink == uplink.config.name)
                .map(|a| (a.ofport, a))
                .collect(),
        }
    }

    pub(super) fn receiver(&self, out: Output) -> TraceReceiver {
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
    pub(super) fn name(&self, port: &str) -> String {
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
pub(super) fn short_text(r: &TraceReceiver) -> String {
    match r.kind {
        ReceiverKind::Host => "the host".into(),
        ReceiverKind::Agent => "the portiso agent".into(),
        ReceiverKind::Uplink => format!("the uplink {}", r.name),
        ReceiverKind::Other => format!("{}, which portiso does not know", r.name),
        ReceiverKind::Sandbox => format!("sandbox {}", r.name),
    }
}

/// A receiver with where to find it: "sandbox default/web1 (pi-1234, OpenFlow port 2)".
pub(super) fn receiver_text(r: &TraceReceiver) -> String {
    match (&r.host_if, r.ofport) {
        (Some(host_if), Some(p)) => format!("{} ({host_if}, OpenFlow port {p})", short_text(r)),
        _ => short_text(r),
    }
}

/// The value of `key=` in a match.
pub(super) fn field<'m>(matches: &'m str, key: &str) -> Option<&'m str> {
    matches
        .split(',')
        .find_map(|m| m.strip_prefix(key)?.strip_prefix('='))
}

/// A port block as the flows write it ("10000", "0x2710/0xfff0") as people do ("10000-10015").
pub(super) fn block_text(block: &str) -> String {
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
pub(super) fn effect(actions: &str, ports: &Ports) -> String {
    if actions == "drop" {
        return "dropped".into();
    }
    if let Some(t) = actions.strip_prefix("goto_table:") {
        return format!("on to table {t}");
    }
    if let Some(t) = actions
        .strip_prefix("resubmit(,")
        .and_then(|t| t.strip_suffix(')'))
    {
        return format!("back through table {t}");
    }
    if let Some(metered) = actions.strip_prefix("meter:") {
        let (id, rest) = metered.split_once(',').unwrap_or((metered, ""));
        return format!("{} (through meter {id})", effect(rest, ports));
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
pub(super) fn meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    match f.table {
        table::CLASSIFY => Some(classify_meaning(f)),
        table::FROM_UPLINK => inbound_meaning(f, ports),
        table::ECHO_REPLY => echo_reply_meaning(f, ports),
        table::FROM_SANDBOX => egress_meaning(f, ports),
        _ => other_meaning(f, ports),
    }
}

pub(super) fn classify_meaning(f: FlowRef) -> String {
    match field(f.matches, "in_port") {
        None => "anything from a sandbox's port goes to the egress checks",
        Some("LOCAL") => "the host's own packets go straight out the uplink",
        Some(_) => "packets from the uplink go to the inbound table",
    }
    .into()
}

/// Whether a match is on frames with an 802.1Q tag ("tag present" bit).
pub(super) fn vlan_tagged(matches: &str) -> bool {
    field(matches, "vlan_tci").is_some_and(|v| v.starts_with("0x1000/0x1000"))
}

/// The first field of a match, as people write protocols: "UDP", "ARP".
pub(super) fn protocol_of(matches: &str) -> String {
    matches.split(',').next().unwrap_or("").to_uppercase()
}

pub(super) fn inbound_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
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
        _ if f.actions.contains("controller") => format!(
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

pub(super) fn echo_reply_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
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

pub(super) fn egress_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
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
pub(super) fn other_meaning(f: FlowRef, ports: &Ports) -> Option<String> {
    let m = f.matches;
    let to = effect(f.actions, ports);
    let from = || {
        field(m, "in_port")
            .map(|p| ports.name(p))
            .unwrap_or_default()
    };
    Some(match (field(m, "ct_tp_dst"), field(m, "ct_tp_src")) {
        _ if m.is_empty() => format!("nothing more specific matched: {to}"),
        _ if field(m, "ct_state") == Some("-inv+trk") && field(m, "nw_frag") == Some("no") => format!(
            "a UDP datagram conntrack reassembled without fault, handed on whole (the kernel datapath does): {to}, where its ports decide as for any datagram"
        ),
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
