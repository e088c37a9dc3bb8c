//! Who an inbound ICMP error is for. Pure.
//!
//! An ICMP error (destination unreachable, fragmentation needed, time exceeded, parameter
//! problem) quotes the IP header and the first 8 bytes of the packet that caused it. When that
//! packet left from the shared address, its TCP/UDP source port names the sandbox that sent
//! it, exactly as a destination port names the receiver of inbound traffic. OpenFlow cannot
//! match the quoted header, so the bridge hands these errors to the agent, which decides here.

use crate::flows::BridgeState;
use crate::model::Protocol;
use std::net::Ipv4Addr;

/// ICMP types that quote an offending packet and that the bridge hands to the agent.
pub const ERROR_TYPES: [u8; 3] = [3, 11, 12];

/// One span of ports a sandbox owns on a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub ofport: u32,
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

/// Who owns which ports on one bridge: what the steering needs of the compiler's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub uplink_ofport: u32,
    pub shared_ip: Ipv4Addr,
    pub spans: Vec<Span>,
}

impl From<&BridgeState> for PortMap {
    fn from(s: &BridgeState) -> Self {
        PortMap {
            uplink_ofport: s.uplink_ofport,
            shared_ip: s.shared_ip,
            spans: s
                .sandboxes
                .iter()
                .flat_map(|sb| {
                    sb.ports.iter().map(|&(protocol, start, end)| Span {
                        ofport: sb.ofport,
                        protocol,
                        start,
                        end,
                    })
                })
                .collect(),
        }
    }
}

/// Where an ICMP error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The sandbox on this OpenFlow port sent the offending packet.
    Sandbox(u32),
    /// The host: its own traffic, or anything that cannot be attributed to a sandbox.
    Host,
}

impl Output {
    /// The packet-out action.
    pub fn action(self) -> String {
        match self {
            Output::Sandbox(p) => format!("output:{p}"),
            Output::Host => "LOCAL".into(),
        }
    }
}

/// The decision and, for the log, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steer {
    pub to: Output,
    pub why: &'static str,
}

fn host(why: &'static str) -> Steer {
    Steer {
        to: Output::Host,
        why,
    }
}

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ICMP_HLEN: usize = 8;

/// An IPv4 header at the start of `b`: (header length, protocol, source, destination,
/// whether it is the first (or only) fragment). None when it is not a whole IPv4 header.
fn ipv4(b: &[u8]) -> Option<(usize, u8, Ipv4Addr, Ipv4Addr, bool)> {
    let first = *b.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || b.len() < ihl {
        return None;
    }
    let frag_offset = u16::from_be_bytes([b[6], b[7]]) & 0x1fff;
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    Some((ihl, b[9], src, dst, frag_offset == 0))
}

/// Decides who gets the ICMP error in `frame` (Ethernet, no VLAN tag, as the bridge got it
/// from the uplink): the sandbox whose port span holds the quoted packet's source port, when
/// that packet left from the shared address by TCP or UDP; otherwise the host. Anything that
/// does not parse goes to the host too, which is where it went before the agent looked.
pub fn steer(frame: &[u8], map: &PortMap) -> Steer {
    if frame.len() < ETH_HLEN || frame[12..14] != ETHERTYPE_IPV4 {
        return host("not an IPv4 frame");
    }
    let outer = &frame[ETH_HLEN..];
    let Some((ihl, proto, _, dst, first_fragment)) = ipv4(outer) else {
        return host("outer IPv4 header cut short or malformed");
    };
    if proto != IPPROTO_ICMP || !first_fragment {
        return host("not an unfragmented ICMP message");
    }
    if dst != map.shared_ip {
        return host("not addressed to the shared address");
    }
    let icmp = &outer[ihl..];
    if icmp.len() < ICMP_HLEN || !ERROR_TYPES.contains(&icmp[0]) {
        return host("not an ICMP error");
    }
    let inner = &icmp[ICMP_HLEN..];
    let Some((inner_ihl, inner_proto, inner_src, _, inner_first)) = ipv4(inner) else {
        return host("quoted IPv4 header cut short or malformed");
    };
    if inner_src != map.shared_ip {
        return host("quoted packet did not leave from the shared address");
    }
    let protocol = match inner_proto {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        // An error about a ping (or anything else without ports) stays with the host.
        _ => return host("quoted packet is neither TCP nor UDP"),
    };
    if !inner_first {
        return host("quoted packet is a later fragment, without ports");
    }
    let Some(ports) = inner.get(inner_ihl..inner_ihl + 2) else {
        return host("quoted packet cut short before its source port");
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    match map
        .spans
        .iter()
        .find(|s| s.protocol == protocol && (s.start..=s.end).contains(&sport))
    {
        Some(s) => Steer {
            to: Output::Sandbox(s.ofport),
            why: "quoted source port is in the sandbox's span",
        },
        None => host("quoted source port belongs to no sandbox"),
    }
}

/// A bridge for unit tests: web1 (port 2) owns UDP 10000-10099; web2 (port 3) owns UDP
/// 10100-10199 and TCP 10000-10099; the uplink is port 1 and the shared address 198.51.100.1.
#[cfg(test)]
pub(super) fn example_map() -> PortMap {
    PortMap {
        uplink_ofport: 1,
        shared_ip: Ipv4Addr::new(198, 51, 100, 1),
        spans: vec![
            Span {
                ofport: 2,
                protocol: Protocol::Udp,
                start: 10000,
                end: 10099,
            },
            Span {
                ofport: 3,
                protocol: Protocol::Udp,
                start: 10100,
                end: 10199,
            },
            Span {
                ofport: 3,
                protocol: Protocol::Tcp,
                start: 10000,
                end: 10099,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: [u8; 4] = [198, 51, 100, 1];
    const PEER: [u8; 4] = [198, 51, 100, 7];

    /// An IPv4 header (checksum left 0: the steering never looks at it) with `options` bytes
    /// of options (a multiple of 4).
    fn ip_header(proto: u8, src: [u8; 4], dst: [u8; 4], payload: usize, options: usize) -> Vec<u8> {
        let ihl = 20 + options;
        let total = (ihl + payload) as u16;
        let mut h = vec![
            0x40 | (ihl / 4) as u8, // version 4, IHL in 32-bit words
            0x00,                   // DSCP/ECN
        ];
        h.extend(total.to_be_bytes()); // total length
        h.extend([0x12, 0x34]); // identification
        h.extend([0x00, 0x00]); // flags + fragment offset: not fragmented
        h.push(64); // TTL
        h.push(proto); // protocol
        h.extend([0x00, 0x00]); // header checksum
        h.extend(src); // source address
        h.extend(dst); // destination address
        h.extend(std::iter::repeat_n(0x01, options)); // NOP options
        h
    }

    /// The peer's ICMP error of `icmp_type` to the shared address, quoting a packet of
    /// `proto` from `inner_src`:`sport` to the peer's port 9 (`inner_options` bytes of IP
    /// options in the quoted header, `outer_options` in the outer one).
    fn error(
        icmp_type: u8,
        proto: u8,
        inner_src: [u8; 4],
        sport: u16,
        inner_options: usize,
        outer_options: usize,
    ) -> Vec<u8> {
        // Quoted: the offending packet's IP header and its first 8 bytes (UDP header here).
        let mut quoted = ip_header(proto, inner_src, PEER, 8, inner_options);
        quoted.extend(sport.to_be_bytes()); // source port
        quoted.extend(9u16.to_be_bytes()); // destination port
        quoted.extend([0x00, 0x08, 0x00, 0x00]); // length, checksum
        let mut icmp = vec![
            icmp_type, // type
            3,         // code (port unreachable for type 3)
            0x00, 0x00, // checksum
            0x00, 0x00, 0x00, 0x00, // unused (next-hop MTU for fragmentation needed)
        ];
        icmp.extend(quoted);
        let mut f = vec![
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // destination MAC: the shared MAC
            0x02, 0x00, 0x00, 0x00, 0x00, 0x07, // source MAC: the peer
            0x08, 0x00, // ethertype IPv4
        ];
        f.extend(ip_header(1, PEER, SHARED, icmp.len(), outer_options));
        f.extend(icmp);
        f
    }

    fn to(frame: &[u8]) -> Output {
        steer(frame, &example_map()).to
    }

    #[test]
    fn an_error_about_a_sandboxs_datagram_goes_to_that_sandbox() {
        for t in ERROR_TYPES {
            assert_eq!(to(&error(t, 17, SHARED, 10005, 0, 0)), Output::Sandbox(2));
            assert_eq!(to(&error(t, 17, SHARED, 10099, 0, 0)), Output::Sandbox(2));
            assert_eq!(to(&error(t, 17, SHARED, 10100, 0, 0)), Output::Sandbox(3));
        }
        // The protocol counts: TCP 10005 is port 3's.
        assert_eq!(to(&error(3, 6, SHARED, 10005, 0, 0)), Output::Sandbox(3));
        assert_eq!(to(&error(3, 6, SHARED, 10150, 0, 0)), Output::Host);
    }

    #[test]
    fn ip_options_in_either_header_are_skipped() {
        assert_eq!(to(&error(11, 17, SHARED, 10150, 8, 0)), Output::Sandbox(3));
        assert_eq!(to(&error(11, 17, SHARED, 10150, 0, 12)), Output::Sandbox(3));
        assert_eq!(
            to(&error(11, 17, SHARED, 10150, 40, 40)),
            Output::Sandbox(3)
        );
    }

    #[test]
    fn the_hosts_own_traffic_and_unowned_ports_go_to_the_host() {
        assert_eq!(to(&error(3, 17, SHARED, 5000, 0, 0)), Output::Host);
        assert_eq!(to(&error(3, 17, SHARED, 10200, 0, 0)), Output::Host);
        // Quoted packet from another address (e.g. a forwarded one): not a sandbox's.
        assert_eq!(to(&error(3, 17, [10, 0, 0, 1], 10005, 0, 0)), Output::Host);
        // An error about a ping (quoted ICMP): the host.
        assert_eq!(to(&error(3, 1, SHARED, 10005, 0, 0)), Output::Host);
        // Not an error type.
        assert_eq!(to(&error(0, 17, SHARED, 10005, 0, 0)), Output::Host);
        assert_eq!(to(&error(8, 17, SHARED, 10005, 0, 0)), Output::Host);
    }

    #[test]
    fn short_and_malformed_frames_go_to_the_host() {
        let good = error(3, 17, SHARED, 10005, 0, 0);
        // Every truncation before the end of the quoted source port.
        let sport_end = 14 + 20 + 8 + 20 + 2;
        for n in 0..sport_end {
            assert_eq!(to(&good[..n]), Output::Host, "cut at {n}");
        }
        assert_eq!(to(&good[..sport_end]), Output::Sandbox(2));

        let mut f = good.clone();
        f[12] = 0x86; // ethertype IPv6
        f[13] = 0xdd;
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14] = 0x44; // outer IHL 4 words: less than a header
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14] = 0x4f; // outer IHL 60 bytes: the "options" eat the ICMP header
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14 + 20 + 8] = 0x65; // quoted header says IPv6, IHL 5
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14 + 20 + 8] = 0x4f; // quoted IHL 60 bytes: longer than what is quoted
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14 + 16..14 + 20].copy_from_slice(&[203, 0, 113, 1]); // outer destination not ours
        assert_eq!(to(&f), Output::Host);
        let mut f = good.clone();
        f[14 + 6] = 0x00; // outer fragment offset 8: a later fragment
        f[14 + 7] = 0x01;
        assert_eq!(to(&f), Output::Host);
        let mut f = good;
        f[14 + 20 + 8 + 7] = 0x01; // quoted packet is a later fragment: no ports in it
        assert_eq!(to(&f), Output::Host);
    }

    #[test]
    fn the_port_map_follows_the_compilers_input() {
        let s = BridgeState {
            egress_limit: None,
            meters_available: true,
            datapath: crate::flows::Datapath::Netdev,
            uplink_ofport: 1,
            shared_ip: Ipv4Addr::from(SHARED),
            shared_mac: "02:00:00:00:00:01".into(),
            sandboxes: vec![
                crate::flows::SandboxPorts {
                    sandbox: "default/web1".into(),
                    ofport: 2,
                    ports: vec![(Protocol::Udp, 10000, 10099)],
                },
                crate::flows::SandboxPorts {
                    sandbox: "default/web2".into(),
                    ofport: 3,
                    ports: vec![(Protocol::Tcp, 10000, 10099), (Protocol::Udp, 10100, 10199)],
                },
            ],
        };
        let mut m = PortMap::from(&s);
        m.spans.sort_by_key(|s| (s.ofport, s.protocol, s.start));
        let mut want = example_map();
        want.spans.sort_by_key(|s| (s.ofport, s.protocol, s.start));
        assert_eq!(m, want);
        assert_eq!(Output::Sandbox(3).action(), "output:3");
        assert_eq!(Output::Host.action(), "LOCAL");
    }
}
