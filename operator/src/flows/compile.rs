//! The flow compiler: one bridge's desired state in, its whole OpenFlow table out.
//!
//! The host and every sandbox share one IPv4 address and one MAC. Inbound, the destination
//! port decides who gets a TCP/UDP packet; ARP requests and everything unclaimed go to the
//! host; ARP replies go to everyone (any of them may have asked); echo replies go to the
//! sandbox whose request conntrack remembers; ICMP errors go to the agent, which reads whose
//! packet they quote and passes each on (see `agent::icmp_errors`). Outbound, a sandbox may only send what carries
//! the shared MAC and IP and, for TCP/UDP, a source port it owns — so it can never answer for,
//! or pose as, the host or a neighbour. TCP and UDP never touch conntrack: the port decides.

use super::flow::{Flow, FlowTable};
use super::table;
use crate::model::ports::cover;
use crate::model::Protocol;
use std::net::Ipv4Addr;

/// The conntrack zone that holds sandboxes' ICMP echo requests (and nothing else).
pub const CT_ZONE: u16 = 0x7150;

/// A sandbox interface attached to the bridge and the ports it owns on this uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPorts {
    /// `namespace/name`, for people reading flows.
    pub sandbox: String,
    /// Its OVS port number; also the ct_mark of its echo requests.
    pub ofport: u32,
    /// Inclusive port spans it owns, by protocol.
    pub ports: Vec<(Protocol, u16, u16)>,
}

/// Everything the compiler needs to know about one uplink bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    pub uplink_ofport: u32,
    pub shared_ip: Ipv4Addr,
    pub shared_mac: String,
    pub sandboxes: Vec<SandboxPorts>,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// ICMP error types (destination unreachable including fragmentation needed, time exceeded,
/// parameter problem). A sandbox may send them about traffic it received; inbound ones about
/// the shared address go to the agent, which steers each to whoever sent the offending packet.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];

/// How much of an inbound ICMP error the switch hands the agent: 65535 means all of it.
const ICMP_ERROR_PUNT_LEN: u16 = 65535;

/// Compiles the bridge's whole flow table. Pure: same state, same flows, same cookies.
pub fn compile_bridge(s: &BridgeState) -> FlowTable {
    let up = s.uplink_ofport;
    let ip = s.shared_ip;
    let mac = &s.shared_mac;
    let mut f = vec![
        // Classification by ingress port. Anything from a sandbox port goes to the egress
        // checks; the host's own traffic is the host's business.
        Flow::new(
            table::CLASSIFY,
            100,
            format!("in_port={up}"),
            format!("goto_table:{}", table::FROM_UPLINK),
        ),
        Flow::new(
            table::CLASSIFY,
            100,
            "in_port=LOCAL",
            format!("output:{up}"),
        ),
        Flow::new(
            table::CLASSIFY,
            0,
            "",
            format!("goto_table:{}", table::FROM_SANDBOX),
        ),
        // Inbound: the host answers ARP requests for the shared address (the peer must learn
        // one MAC for it, and it is the same MAC everywhere anyway).
        Flow::new(table::FROM_UPLINK, 290, "arp", "LOCAL"),
        // Echo replies: conntrack knows which sandbox (ct_mark = its ofport) sent the request.
        Flow::new(
            table::FROM_UPLINK,
            150,
            format!("icmp,nw_dst={ip},icmp_type=0"),
            format!("ct(zone={CT_ZONE},table={})", table::ECHO_REPLY),
        ),
        // Everything no sandbox claims is the host's.
        Flow::new(table::FROM_UPLINK, 0, "", "LOCAL"),
        Flow::new(table::ECHO_REPLY, 0, "", "LOCAL"),
        // Egress: whatever no rule below allows is dropped (and counted by this flow).
        Flow::new(table::FROM_SANDBOX, 0, "", "drop"),
    ];

    // ICMP errors about traffic of the shared address: whose traffic it was is written in the
    // quoted inner header, which OpenFlow cannot match. The agent reads it (agent::icmp_errors)
    // and sends each error on to the sandbox that owns the inner packet's source port, or to
    // the host. The whole packet goes up (max_len=65535 is "no truncation"): the agent
    // re-injects what it gets, and Linux quotes up to 576 bytes of the offending datagram.
    for t in ICMP_ERRORS {
        f.push(Flow::new(
            table::FROM_UPLINK,
            160,
            format!("icmp,nw_dst={ip},icmp_type={t}"),
            format!("controller(max_len={ICMP_ERROR_PUNT_LEN})"),
        ));
    }

    // ARP replies may answer a request of the host or of any sandbox: all of them get it.
    let mut arp_reply_to = vec!["LOCAL".to_string()];
    arp_reply_to.extend(s.sandboxes.iter().map(|sb| format!("output:{}", sb.ofport)));
    f.push(Flow::new(
        table::FROM_UPLINK,
        300,
        "arp,arp_op=2",
        arp_reply_to.join(","),
    ));

    for sb in &s.sandboxes {
        let p = sb.ofport;
        // Inbound by destination port.
        for &(protocol, start, end) in &sb.ports {
            for block in cover(start, end) {
                f.push(Flow::new(
                    table::FROM_UPLINK,
                    200,
                    format!("{},nw_dst={ip},tp_dst={block}", proto(protocol)),
                    format!("output:{p}"),
                ));
                // Outbound: only from its own ports, with the shared addresses.
                f.push(Flow::new(
                    table::FROM_SANDBOX,
                    200,
                    format!(
                        "{},in_port={p},dl_src={mac},nw_src={ip},tp_src={block}",
                        proto(protocol)
                    ),
                    format!("output:{up}"),
                ));
            }
        }
        f.push(Flow::new(
            table::ECHO_REPLY,
            100,
            format!("ct_state=+trk+est,ct_mark={p},icmp"),
            format!("output:{p}"),
        ));
        f.push(Flow::new(
            table::FROM_SANDBOX,
            150,
            format!("icmp,in_port={p},dl_src={mac},nw_src={ip},icmp_type=8"),
            format!("ct(commit,zone={CT_ZONE},exec(set_field:{p}->ct_mark)),output:{up}"),
        ));
        for t in ICMP_ERRORS {
            f.push(Flow::new(
                table::FROM_SANDBOX,
                150,
                format!("icmp,in_port={p},dl_src={mac},nw_src={ip},icmp_type={t}"),
                format!("output:{up}"),
            ));
        }
        // A sandbox may ask (never answer) ARP, and only as the shared address.
        f.push(Flow::new(
            table::FROM_SANDBOX,
            150,
            format!("arp,in_port={p},dl_src={mac},arp_op=1,arp_spa={ip},arp_sha={mac}"),
            format!("output:{up}"),
        ));
        // Its own drop rule, so drops are counted per sandbox.
        f.push(Flow::new(
            table::FROM_SANDBOX,
            10,
            format!("in_port={p}"),
            "drop",
        ));
    }
    FlowTable::new(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BridgeState {
        BridgeState {
            uplink_ofport: 1,
            shared_ip: Ipv4Addr::new(198, 51, 100, 1),
            shared_mac: "02:00:00:00:00:01".into(),
            sandboxes: vec![SandboxPorts {
                sandbox: "default/web1".into(),
                ofport: 2,
                ports: vec![(Protocol::Udp, 10000, 10099)],
            }],
        }
    }

    #[test]
    fn inbound_icmp_errors_for_the_shared_address_go_to_the_agent() {
        let t = compile_bridge(&state());
        for ty in ICMP_ERRORS {
            let punt: Vec<&Flow> = t
                .flows
                .iter()
                .filter(|f| {
                    f.table == table::FROM_UPLINK
                        && f.matches == format!("icmp,nw_dst=198.51.100.1,icmp_type={ty}")
                })
                .collect();
            assert_eq!(punt.len(), 1, "type {ty}: {}", t.render());
            assert_eq!(punt[0].actions, "controller(max_len=65535)");
            // Above the catch-all to the host and the echo replies; TCP/UDP never match it.
            assert!(punt[0].priority > 150);
        }
        // Echo replies keep their own path.
        assert!(t
            .flows
            .iter()
            .all(|f| !(f.actions.starts_with("controller") && f.matches.contains("icmp_type=0"))));
    }

    #[test]
    fn icmp_error_flows_do_not_depend_on_the_sandboxes() {
        let mut empty = state();
        empty.sandboxes.clear();
        let punted = |s: &BridgeState| -> Vec<Flow> {
            compile_bridge(s)
                .flows
                .into_iter()
                .filter(|f| f.actions.starts_with("controller"))
                .collect()
        };
        assert_eq!(punted(&state()), punted(&empty));
        assert_eq!(punted(&empty).len(), ICMP_ERRORS.len());
        // The agent steers exactly the types the bridge hands it.
        assert_eq!(ICMP_ERRORS, crate::agent::icmp_errors::ERROR_TYPES);
    }
}
