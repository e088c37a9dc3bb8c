//! Who a UDP fragment is for. Pure, apart from the memory of recent datagrams.
//!
//! Only the first fragment of a datagram carries its ports; OpenFlow cannot tie the later
//! ones to it (OVS's userspace datapath does not lend them the ports of the datagram that
//! conntrack reassembled). So the bridge lets conntrack reassemble every fragmented UDP
//! datagram, which drops overlapping, too small and incomplete sets and releases a complete
//! datagram's fragments in order, the first first, and hands them to the agent. Here the first
//! fragment is steered by its ports exactly as the flows steer a whole datagram, and each later
//! fragment the same way as the first of its datagram (same source, destination, IP id and
//! in-port). See `flows::compile` for the flows.

use super::icmp_errors::PortMap;
use crate::model::Protocol;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long the decision for a datagram is remembered for its later fragments: conntrack
/// releases them together, so this only needs to cover the agent's own backlog.
const REMEMBER: Duration = Duration::from_secs(10);
/// At most this many datagrams are remembered; a flood of first fragments pushes out the
/// oldest, whose later fragments are then dropped rather than misdelivered.
const MAX_REMEMBERED: usize = 4096;

const ETH_HLEN: usize = 14;
const IPPROTO_UDP: u8 = 17;

/// Where a fragment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Out of this OpenFlow port (a sandbox's, or the uplink).
    Port(u32),
    /// The host (the bridge's LOCAL port): a datagram to a port no sandbox owns.
    Host,
    Drop,
}

impl Destination {
    /// The packet-out action, if the fragment goes anywhere.
    pub fn action(self) -> Option<String> {
        match self {
            Destination::Port(p) => Some(format!("output:{p}")),
            Destination::Host => Some("LOCAL".into()),
            Destination::Drop => None,
        }
    }
}

/// The decision and, for the log, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentSteer {
    pub to: Destination,
    pub why: &'static str,
}

fn drop(why: &'static str) -> FragmentSteer {
    FragmentSteer {
        to: Destination::Drop,
        why,
    }
}

/// The IPv4 header fields a fragment is known by.
struct Fragment<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    /// Offset in 8-byte units; 0 for the first fragment.
    offset: u16,
    /// What follows the IP header.
    payload: &'a [u8],
}

/// The UDP fragment in `frame` (Ethernet, no VLAN tag), if it is one.
fn udp_fragment(frame: &[u8]) -> Option<Fragment<'_>> {
    if frame.len() < ETH_HLEN + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl || ip[9] != IPPROTO_UDP {
        return None;
    }
    let flags_offset = u16::from_be_bytes([ip[6], ip[7]]);
    let (offset, more) = (flags_offset & 0x1fff, flags_offset & 0x2000 != 0);
    if offset == 0 && !more {
        return None;
    }
    // Ethernet may pad a short frame: the IP total length says where the packet ends.
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).clamp(ihl, ip.len());
    Some(Fragment {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        id: u16::from_be_bytes([ip[4], ip[5]]),
        offset,
        payload: &ip[ihl..total],
    })
}

/// Whether `frame` is a fragment of a UDP datagram (what the bridge hands up for this module).
pub fn is_udp_fragment(frame: &[u8]) -> bool {
    udp_fragment(frame).is_some()
}

/// A datagram as its fragments name it: in-port, source, destination, IP id.
type DatagramKey = (u32, Ipv4Addr, Ipv4Addr, u16);

/// The decisions for recent datagrams, for their later fragments.
#[derive(Default)]
pub struct Fragments {
    /// Each decision with when it was made.
    decided: HashMap<DatagramKey, (FragmentSteer, Instant)>,
    /// Decisions in the order they were made. A key decided again (its IP id came round)
    /// appears twice; the older entry no longer matches the time in `decided` and forgets
    /// nothing when it goes.
    order: VecDeque<(DatagramKey, Instant)>,
}

impl Fragments {
    /// Decides where the UDP fragment in `frame`, handed up from OpenFlow port `in_port`, goes.
    pub fn steer(
        &mut self,
        frame: &[u8],
        in_port: u32,
        map: &PortMap,
        now: Instant,
    ) -> FragmentSteer {
        self.forget_before(now.checked_sub(REMEMBER).unwrap_or(now));
        let Some(f) = udp_fragment(frame) else {
            return drop("not a UDP fragment");
        };
        let key = (in_port, f.src, f.dst, f.id);
        if f.offset > 0 {
            return self.decided.get(&key).map(|d| d.0).unwrap_or(drop(
                "later fragment of a datagram whose first was not seen",
            ));
        }
        let decision = first_fragment(&f, in_port, map);
        self.decided.insert(key, (decision, now));
        self.order.push_back((key, now));
        while self.order.len() > MAX_REMEMBERED {
            self.forget_oldest();
        }
        decision
    }

    fn forget_before(&mut self, cutoff: Instant) {
        while self.order.front().is_some_and(|&(_, at)| at < cutoff) {
            self.forget_oldest();
        }
    }

    /// Drops the oldest entry of `order`, and its decision unless the key was decided again.
    fn forget_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front() {
            if self.decided.get(&key).is_some_and(|d| d.1 == at) {
                self.decided.remove(&key);
            }
        }
    }
}

/// The first fragment decides for its datagram, by its UDP ports, as the flows would for a
/// whole datagram.
fn first_fragment(f: &Fragment, in_port: u32, map: &PortMap) -> FragmentSteer {
    let Some(ports) = f.payload.get(..4) else {
        return drop("first fragment cut short before its ports");
    };
    let (sport, dport) = (
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    let owner = |port: u16| {
        map.spans
            .iter()
            .find(|s| s.protocol == Protocol::Udp && (s.start..=s.end).contains(&port))
            .map(|s| s.ofport)
    };
    if in_port == map.uplink_ofport {
        if f.dst != map.shared_ip {
            return drop("inbound, not to the shared address");
        }
        return match owner(dport) {
            Some(p) => FragmentSteer {
                to: Destination::Port(p),
                why: "destination port is in the sandbox's span",
            },
            None => FragmentSteer {
                to: Destination::Host,
                why: "destination port belongs to no sandbox",
            },
        };
    }
    // From a sandbox: the flows let only the shared addresses through to conntrack.
    if f.src != map.shared_ip {
        return drop("outbound, not from the shared address");
    }
    match owner(sport) {
        Some(p) if p == in_port => FragmentSteer {
            to: Destination::Port(map.uplink_ofport),
            why: "source port is the sending sandbox's own",
        },
        _ => drop("source port is not the sending sandbox's"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::icmp_errors::example_map;

    const SHARED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    /// An Ethernet frame with an IPv4 fragment: `offset` in 8-byte units, then `payload`.
    fn fragment(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
        offset: u16,
        more: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let flags = (u16::from(more) << 13) | offset;
        let total = (20 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&[64, 17, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(payload);
        f
    }

    fn udp_head(sport: u16, dport: u16) -> Vec<u8> {
        [sport.to_be_bytes(), dport.to_be_bytes(), [0, 100], [0, 0]].concat()
    }

    #[test]
    fn inbound_fragments_follow_their_first_to_the_owner_of_its_port() {
        let (mut s, now) = (Fragments::default(), Instant::now());
        let first = fragment(PEER, SHARED, 7, 0, true, &udp_head(4000, 10150));
        assert_eq!(
            s.steer(&first, 1, &example_map(), now).to,
            Destination::Port(3)
        );
        let later = fragment(PEER, SHARED, 7, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 1, &example_map(), now).to,
            Destination::Port(3)
        );
        // Another datagram (other id) to a port nobody owns: the host's, all of it.
        let first = fragment(PEER, SHARED, 8, 0, true, &udp_head(4000, 5000));
        assert_eq!(
            s.steer(&first, 1, &example_map(), now).to,
            Destination::Host
        );
        let later = fragment(PEER, SHARED, 8, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 1, &example_map(), now).to,
            Destination::Host
        );
        // web2's TCP span on the same numbers does not own a UDP port: web1's UDP span does.
        let first = fragment(PEER, SHARED, 9, 0, true, &udp_head(4000, 10000));
        assert_eq!(
            s.steer(&first, 1, &example_map(), now).to,
            Destination::Port(2)
        );
    }

    #[test]
    fn a_later_fragment_without_its_first_goes_nowhere() {
        let (mut s, now) = (Fragments::default(), Instant::now());
        let later = fragment(PEER, SHARED, 7, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 1, &example_map(), now).to,
            Destination::Drop
        );
        // The first of another datagram with the same id from another in-port does not adopt it.
        let first = fragment(SHARED, PEER, 7, 0, true, &udp_head(10010, 8080));
        assert_eq!(
            s.steer(&first, 2, &example_map(), now).to,
            Destination::Port(1)
        );
        assert_eq!(
            s.steer(&later, 1, &example_map(), now).to,
            Destination::Drop
        );
    }

    #[test]
    fn outbound_fragments_leave_only_from_the_senders_own_ports() {
        let (mut s, now) = (Fragments::default(), Instant::now());
        let own = fragment(SHARED, PEER, 1, 0, true, &udp_head(10010, 8080));
        assert_eq!(
            s.steer(&own, 2, &example_map(), now).to,
            Destination::Port(1)
        );
        let later = fragment(SHARED, PEER, 1, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 2, &example_map(), now).to,
            Destination::Port(1)
        );
        // From the neighbour's port, and its later fragment: dropped.
        let foreign = fragment(SHARED, PEER, 2, 0, true, &udp_head(10150, 8080));
        assert_eq!(
            s.steer(&foreign, 2, &example_map(), now).to,
            Destination::Drop
        );
        let later = fragment(SHARED, PEER, 2, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 2, &example_map(), now).to,
            Destination::Drop
        );
        // From the host's port, or cut short before the ports: dropped.
        let host = fragment(SHARED, PEER, 3, 0, true, &udp_head(5000, 8080));
        assert_eq!(s.steer(&host, 2, &example_map(), now).to, Destination::Drop);
        let short = fragment(SHARED, PEER, 4, 0, true, &[0x27, 0x1a]);
        assert_eq!(
            s.steer(&short, 2, &example_map(), now).to,
            Destination::Drop
        );
    }

    #[test]
    fn decisions_are_forgotten_after_a_while_and_beyond_a_bound() {
        let (mut s, now) = (Fragments::default(), Instant::now());
        let first = fragment(PEER, SHARED, 7, 0, true, &udp_head(4000, 10010));
        s.steer(&first, 1, &example_map(), now);
        let later = fragment(PEER, SHARED, 7, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(
                &later,
                1,
                &example_map(),
                now + REMEMBER + Duration::from_secs(1)
            )
            .to,
            Destination::Drop
        );
        for id in 0..(MAX_REMEMBERED as u16 + 10) {
            let first = fragment(PEER, SHARED, id, 0, true, &udp_head(4000, 10010));
            s.steer(&first, 1, &example_map(), now);
        }
        assert!(s.decided.len() <= MAX_REMEMBERED && s.order.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn a_datagram_decided_again_is_remembered_from_its_new_decision() {
        let (mut s, now) = (Fragments::default(), Instant::now());
        let first = fragment(PEER, SHARED, 7, 0, true, &udp_head(4000, 10010));
        s.steer(&first, 1, &example_map(), now);
        // The same IP id comes round 8 s later, for web2's port.
        let again = fragment(PEER, SHARED, 7, 0, true, &udp_head(4000, 10150));
        let later_on = now + Duration::from_secs(8);
        assert_eq!(
            s.steer(&again, 1, &example_map(), later_on).to,
            Destination::Port(3)
        );
        // 11 s after the first decision, 3 s after the second: the second still holds.
        let later = fragment(PEER, SHARED, 7, 185, false, &[0; 64]);
        assert_eq!(
            s.steer(&later, 1, &example_map(), now + Duration::from_secs(11))
                .to,
            Destination::Port(3)
        );
    }

    #[test]
    fn only_udp_fragments_are_taken() {
        let whole = fragment(PEER, SHARED, 7, 0, false, &udp_head(4000, 10010));
        assert!(!is_udp_fragment(&whole));
        assert!(is_udp_fragment(&fragment(
            PEER,
            SHARED,
            7,
            0,
            true,
            &udp_head(1, 2)
        )));
        let mut tcp = fragment(PEER, SHARED, 7, 0, true, &udp_head(1, 2));
        tcp[23] = 6;
        assert!(!is_udp_fragment(&tcp));
        assert!(!is_udp_fragment(&[0; 20]));
    }
}
