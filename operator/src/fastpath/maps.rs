//! What the fast path's BPF maps must hold, compiled from the same bridge state the flow
//! compiler turns into OpenFlow. Pure; the layouts mirror operator/bpf/fastpath.c.

use crate::flows::BridgeState;
use crate::model::ports::cover;
use crate::model::Protocol;
use std::collections::{BTreeMap, BTreeSet};

/// `struct endpoint`: an uplink or a sandbox's host-side interface (key: its ifindex).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The shared address, network order.
    pub ip: u32,
    pub mac: [u8; 6],
    pub pad: u16,
    /// For a sandbox: the uplink it sends to. For an uplink: its own ifindex.
    pub uplink_ifindex: u32,
    pub pad2: u32,
}

/// The data part of `struct port_key` (the prefix length travels beside it).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// Network order, so that the interface is the first 32 bits of the prefix.
    pub ifindex_be: u32,
    pub proto: u8,
    /// Network order.
    pub port: [u8; 2],
    pub pad: u8,
}

// SAFETY: plain old data with no padding the kernel could read uninitialised (pads are fields).
unsafe impl aya::Pod for Endpoint {}
// SAFETY: as above.
unsafe impl aya::Pod for PortKey {}

/// The bits of a key before the port: ifindex and protocol.
pub const KEY_HEAD_BITS: u32 = 32 + 8;

impl PortKey {
    pub fn new(ifindex: u32, protocol: Protocol, port: u16) -> Self {
        PortKey {
            ifindex_be: ifindex.to_be(),
            proto: match protocol {
                Protocol::Tcp => 6,
                Protocol::Udp => 17,
            },
            port: port.to_be_bytes(),
            pad: 0,
        }
    }

    pub fn ifindex(&self) -> u32 {
        u32::from_be(self.ifindex_be)
    }
}

/// One port block as an LPM entry: (prefix length, key).
pub type PortPrefix = (u32, PortKey);

/// Everything the maps hold for one uplink bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastPathMaps {
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// Inbound: (uplink, protocol, destination port block) → sandbox host-side ifindex.
    pub inbound: BTreeMap<PortPrefix, u32>,
    /// Egress: (sandbox host-side ifindex, protocol, source port block) it owns.
    pub egress: BTreeSet<PortPrefix>,
    /// Interfaces the programs may redirect to.
    pub targets: BTreeSet<u32>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Compiles one bridge. `ifindex_of_ofport` maps each sandbox's OVS port to its host-side
/// interface; a sandbox missing there (its interface is gone) is left to OVS.
pub fn compile(
    s: &BridgeState,
    uplink_ifindex: u32,
    ifindex_of_ofport: &BTreeMap<u32, u32>,
) -> FastPathMaps {
    let mut m = FastPathMaps::default();
    let Some(mac) = parse_mac(&s.shared_mac) else {
        return m;
    };
    let endpoint = Endpoint {
        ip: u32::from(s.shared_ip).to_be(),
        mac,
        pad: 0,
        uplink_ifindex,
        pad2: 0,
    };
    m.endpoints.insert(uplink_ifindex, endpoint);
    m.targets.insert(uplink_ifindex);
    for sb in &s.sandboxes {
        let Some(&ifindex) = ifindex_of_ofport.get(&sb.ofport) else {
            continue;
        };
        m.endpoints.insert(ifindex, endpoint);
        m.targets.insert(ifindex);
        for &(protocol, start, end) in &sb.ports {
            for block in cover(start, end) {
                let bits = KEY_HEAD_BITS + block.mask.leading_ones();
                m.inbound.insert(
                    (bits, PortKey::new(uplink_ifindex, protocol, block.value)),
                    ifindex,
                );
                // A metered sandbox sends through OVS, where its meter is (where there is none,
                // nothing holds it, in OVS or here).
                if s.egress_meter().is_none() {
                    m.egress
                        .insert((bits, PortKey::new(ifindex, protocol, block.value)));
                }
            }
        }
    }
    m
}

/// Longest-prefix lookup over compiled entries, as the kernel's LPM trie does it; for tests
/// that check the maps say the same as the flows.
pub fn lookup<V: Copy>(
    entries: impl IntoIterator<Item = (PortPrefix, V)>,
    key: PortKey,
) -> Option<V> {
    let bits = |k: &PortKey| -> u64 {
        (u64::from(u32::from_be(k.ifindex_be)) << 24)
            | (u64::from(k.proto) << 16)
            | u64::from(u16::from_be_bytes(k.port))
    };
    let want = bits(&key);
    entries
        .into_iter()
        .filter(|((len, k), _)| {
            let shift = 56 - len;
            (bits(k) >> shift) == (want >> shift)
        })
        .max_by_key(|((len, _), _)| *len)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::SandboxPorts;
    use std::net::Ipv4Addr;

    fn state() -> BridgeState {
        BridgeState {
            egress_limit: None,
            meters_available: true,
            datapath: crate::flows::Datapath::Netdev,
            uplink_ofport: 1,
            shared_ip: Ipv4Addr::new(198, 51, 100, 1),
            shared_mac: "02:00:00:00:00:01".into(),
            sandboxes: vec![
                SandboxPorts {
                    sandbox: "default/a".into(),
                    ofport: 2,
                    ports: vec![(Protocol::Tcp, 10000, 10099)],
                },
                SandboxPorts {
                    sandbox: "default/b".into(),
                    ofport: 3,
                    ports: vec![(Protocol::Udp, 10100, 10163), (Protocol::Tcp, 20000, 20000)],
                },
                SandboxPorts {
                    sandbox: "default/gone".into(),
                    ofport: 4,
                    ports: vec![(Protocol::Tcp, 30000, 30099)],
                },
            ],
        }
    }

    #[test]
    fn every_port_goes_where_the_flows_send_it() {
        let m = compile(&state(), 10, &BTreeMap::from([(2, 20), (3, 30)]));
        let inbound = |p, port| {
            lookup(
                m.inbound.iter().map(|(k, v)| (*k, *v)),
                PortKey::new(10, p, port),
            )
        };
        for port in 0..=u16::MAX {
            let want = match port {
                10000..=10099 => Some(20),
                20000 => Some(30),
                _ => None,
            };
            assert_eq!(inbound(Protocol::Tcp, port), want, "tcp {port}");
            let want = (10100..=10163).contains(&port).then_some(30);
            assert_eq!(inbound(Protocol::Udp, port), want, "udp {port}");
        }
        // A sandbox's egress entries hold exactly its own ports.
        let owns = |ifindex, p, port| {
            lookup(
                m.egress.iter().map(|k| (*k, ())),
                PortKey::new(ifindex, p, port),
            )
            .is_some()
        };
        assert!(owns(20, Protocol::Tcp, 10050));
        assert!(!owns(20, Protocol::Tcp, 20000));
        assert!(!owns(20, Protocol::Udp, 10050));
        assert!(owns(30, Protocol::Udp, 10163) && !owns(30, Protocol::Udp, 10164));
        // A sandbox without an interface is OVS's alone.
        assert!(inbound(Protocol::Tcp, 30000).is_none());
        assert_eq!(m.targets, BTreeSet::from([10, 20, 30]));
        assert_eq!(m.endpoints[&20].uplink_ifindex, 10);
        assert_eq!(
            m.endpoints[&20].ip,
            u32::from(Ipv4Addr::new(198, 51, 100, 1)).to_be()
        );
        assert_eq!(m.endpoints[&10].mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Endpoint>(), 20);
        assert_eq!(std::mem::size_of::<PortKey>(), 8);
        assert_eq!(parse_mac("02:00:00:00:00:0g"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
