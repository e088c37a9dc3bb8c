//! The traced packet: the request's fields with every default decided, as an
//! `ofproto/trace` flow.

use super::*;

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
    pub(super) fn inbound(&self) -> bool {
        matches!(self, Entry::Uplink)
    }
}

pub(super) fn bad_request(msg: String) -> AgentError {
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
    pub(super) fn deciding_port(&self, entry: Entry) -> Option<(Protocol, u16)> {
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
    pub(super) fn describe(&self) -> String {
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

pub(super) fn protocol_name(p: TraceProtocol) -> &'static str {
    match p {
        TraceProtocol::Tcp => "TCP",
        TraceProtocol::Udp => "UDP",
        TraceProtocol::Icmp => "ICMP",
        TraceProtocol::Arp => "ARP",
    }
}

pub(super) fn icmp_type_text(t: u8, code: u8) -> String {
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

pub(super) fn entry_text(entry: Entry, u: &UplinkRuntime) -> String {
    match entry {
        Entry::Uplink => format!("from the uplink {}", u.config.name),
        Entry::Host => "from the host".into(),
        Entry::Sandbox(a) => format!("from sandbox {}", a.sandbox()),
    }
}
