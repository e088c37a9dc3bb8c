//! How the slow path shares itself out: what the bridge hands the agent waits in a queue per
//! in-port and kind (UDP fragments, ICMP errors), served in turn, so that a port with a
//! backlog (a sandbox sending fragmented datagrams as fast as it can) delays only itself, and
//! fragments from the uplink never crowd out the ICMP errors that come in beside them
//! (fragmentation needed, for path-MTU discovery). Pure; `icmp_relay` runs it.

use crate::flows::meters::{slow_path_rate, MeterRate, UPLINK_ICMP_ERRORS};
use crate::ovs::monitor::PacketIn;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most this many fragments are taken per bridge and second, whatever port they came in
/// on. ICMP errors have a bound of their own (`UPLINK_ICMP_ERRORS`), outside this one.
pub const BRIDGE_MAX_PER_SECOND: u32 = 2000;

/// What a packet handed up is: each kind has its own budget and queue per in-port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Fragment,
    IcmpError,
}

impl Kind {
    /// The bridge hands up UDP fragments and ICMP errors only: what is not a fragment is
    /// taken for an error (the relay checks it before steering).
    pub fn of(p: &PacketIn) -> Kind {
        if super::fragments::is_udp_fragment(&p.data) {
            Kind::Fragment
        } else {
            Kind::IcmpError
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Fragment => "fragment",
            Kind::IcmpError => "icmp_error",
        }
    }
}

/// Whose budget and queue a packet takes: its in-port and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub in_port: u32,
    pub kind: Kind,
}

impl Key {
    /// Per second (plus a burst) that the agent takes of this key: the rate of the OVS meter
    /// the same packets pass.
    fn rate(self, uplink_ofport: u32) -> MeterRate {
        match self.kind {
            Kind::Fragment => slow_path_rate(self.in_port, uplink_ofport),
            Kind::IcmpError => UPLINK_ICMP_ERRORS,
        }
    }
}

/// At most this many packets wait per in-port; more are dropped on arrival.
pub const QUEUE_PER_PORT: usize = 256;

/// How many packets the agent takes per second, per in-port and per bridge; the rest are
/// dropped on arrival. OVS's slow-path meters (`flows::meters`) hold each in-port to the same
/// rate before packets reach the agent; this second line bounds the agent's work even where
/// a meter is missing.
pub struct Budget {
    window: Instant,
    used: HashMap<Key, u32>,
    /// Fragments taken in this window, from all ports.
    total: u32,
    /// ICMP errors taken in this window, from all ports.
    errors: u32,
    /// Dropped in the current window, for the log.
    pub dropped: u32,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Budget {
            window: now,
            used: HashMap::new(),
            total: 0,
            errors: 0,
            dropped: 0,
        }
    }

    /// Whether a packet of `key` may be taken now. Returns, once a second, how many the
    /// window before dropped.
    pub fn allow(&mut self, key: Key, uplink_ofport: u32, now: Instant) -> (bool, u32) {
        let mut dropped_before = 0;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            dropped_before = self.dropped;
            *self = Budget::new(now);
        }
        let rate = key.rate(uplink_ofport);
        let (all, bound) = match key.kind {
            Kind::Fragment => (&mut self.total, BRIDGE_MAX_PER_SECOND),
            Kind::IcmpError => (
                &mut self.errors,
                UPLINK_ICMP_ERRORS.packets_per_second + UPLINK_ICMP_ERRORS.burst,
            ),
        };
        let used = self.used.entry(key).or_default();
        if *used >= rate.packets_per_second + rate.burst || *all >= bound {
            self.dropped += 1;
            return (false, dropped_before);
        }
        *used += 1;
        *all += 1;
        (true, dropped_before)
    }
}

/// Packets waiting for the agent, a queue per in-port and kind, taken from each in turn.
#[derive(Default)]
pub struct FairQueue {
    queues: HashMap<Key, VecDeque<PacketIn>>,
    /// Keys with packets waiting, in the order they are served.
    turn: VecDeque<Key>,
}

impl FairQueue {
    /// Adds a packet of `key`; false (and the packet dropped) if its queue is full.
    pub fn push(&mut self, key: Key, p: PacketIn) -> bool {
        let q = self.queues.entry(key).or_default();
        if q.len() >= QUEUE_PER_PORT {
            return false;
        }
        if q.is_empty() {
            self.turn.push_back(key);
        }
        q.push_back(p);
        true
    }

    /// The next packet: the oldest of the port whose turn it is.
    pub fn pop(&mut self) -> Option<PacketIn> {
        let port = self.turn.pop_front()?;
        let q = self.queues.get_mut(&port)?;
        let p = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&port);
        } else {
            self.turn.push_back(port);
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }
}

/// What the slow path did with the packets of one in-port and kind, since the agent started:
/// taken (queued for the agent), dropped over its budget, dropped with its queue full.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub taken: u64,
    pub over_budget: u64,
    pub queue_full: u64,
}

/// The counts of every bridge, in-port and kind, for the agent's metrics.
pub type Stats = std::collections::BTreeMap<(String, Key), Counts>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::meters::{SANDBOX_SLOW_PATH, UPLINK_SLOW_PATH};

    fn packet(in_port: u32, n: u8) -> PacketIn {
        PacketIn {
            in_port: Some(in_port),
            total_len: 1,
            data: vec![n],
        }
    }

    fn fragment(in_port: u32) -> Key {
        Key {
            in_port,
            kind: Kind::Fragment,
        }
    }

    fn error(in_port: u32) -> Key {
        Key {
            in_port,
            kind: Kind::IcmpError,
        }
    }

    #[test]
    fn one_in_port_cannot_spend_the_budget_of_another() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let per_sandbox = SANDBOX_SLOW_PATH.packets_per_second + SANDBOX_SLOW_PATH.burst;
        let passed = (0..10 * per_sandbox)
            .filter(|_| b.allow(fragment(2), 1, now).0)
            .count();
        assert_eq!(passed as u32, per_sandbox);
        // Its neighbour and the uplink still have all of theirs.
        assert!(b.allow(fragment(3), 1, now).0);
        let per_uplink = UPLINK_SLOW_PATH.packets_per_second + UPLINK_SLOW_PATH.burst;
        assert_eq!(
            (0..2 * per_uplink)
                .filter(|_| b.allow(fragment(1), 1, now).0)
                .count() as u32,
            per_uplink
        );
        // A second later, the flooder's budget is back, and the drops are told.
        let (allowed, dropped) = b.allow(fragment(2), 1, now + Duration::from_secs(1));
        assert!(allowed);
        assert_eq!(dropped, 9 * per_sandbox + per_uplink);
    }

    #[test]
    fn fragments_from_the_uplink_cannot_spend_the_budget_of_its_icmp_errors() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        // A peer floods the uplink with tiny fragments: its fragment budget is spent...
        let per_uplink = UPLINK_SLOW_PATH.packets_per_second + UPLINK_SLOW_PATH.burst;
        let passed = (0..10 * per_uplink)
            .filter(|_| b.allow(fragment(1), 1, now).0)
            .count() as u32;
        assert_eq!(passed, per_uplink);
        assert!(!b.allow(fragment(1), 1, now).0);
        // ...and the ICMP errors that come in beside them still have all of theirs.
        let errors = UPLINK_ICMP_ERRORS.packets_per_second + UPLINK_ICMP_ERRORS.burst;
        let passed = (0..2 * errors)
            .filter(|_| b.allow(error(1), 1, now).0)
            .count() as u32;
        assert_eq!(passed, errors);
    }

    #[test]
    fn the_bridge_as_a_whole_is_bounded_too_but_not_at_the_cost_of_icmp_errors() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let passed = (2..5000u32)
            .filter(|&p| b.allow(fragment(p), 1, now).0)
            .count();
        assert_eq!(passed as u32, BRIDGE_MAX_PER_SECOND);
        // Every sandbox flooding fragments spends the bridge's fragment bound, not the errors'.
        assert!(b.allow(error(1), 1, now).0);
        // Errors have a bridge-wide bound of their own, whatever port they claim.
        let errors = UPLINK_ICMP_ERRORS.packets_per_second + UPLINK_ICMP_ERRORS.burst;
        let passed = (2..5000u32)
            .filter(|&p| b.allow(error(p), 1, now).0)
            .count() as u32;
        assert_eq!(passed, errors - 1);
    }

    #[test]
    fn ports_are_served_in_turn_each_in_its_own_order() {
        let mut q = FairQueue::default();
        for n in 0..5 {
            assert!(q.push(fragment(2), packet(2, n)));
        }
        q.push(fragment(3), packet(3, 100));
        q.push(fragment(3), packet(3, 101));
        let order: Vec<(Option<u32>, u8)> = std::iter::from_fn(|| q.pop())
            .map(|p| (p.in_port, p.data[0]))
            .collect();
        assert_eq!(
            order,
            [
                (Some(2), 0),
                (Some(3), 100),
                (Some(2), 1),
                (Some(3), 101),
                (Some(2), 2),
                (Some(2), 3),
                (Some(2), 4)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_port_drops_its_own_packets_only() {
        let mut q = FairQueue::default();
        let taken = (0..2 * QUEUE_PER_PORT)
            .filter(|&n| q.push(fragment(2), packet(2, n as u8)))
            .count();
        assert_eq!(taken, QUEUE_PER_PORT);
        assert!(q.push(fragment(3), packet(3, 1)));
        // Port 3's packet comes second, not after port 2's backlog.
        q.pop();
        assert_eq!(q.pop().unwrap().in_port, Some(3));
    }

    #[test]
    fn an_icmp_error_waits_behind_no_backlog_of_uplink_fragments() {
        let mut q = FairQueue::default();
        let taken = (0..2 * QUEUE_PER_PORT)
            .filter(|&n| q.push(fragment(1), packet(1, n as u8)))
            .count();
        assert_eq!(taken, QUEUE_PER_PORT);
        // Same in-port, its own queue: taken, and served second.
        assert!(q.push(error(1), packet(1, 200)));
        q.pop();
        assert_eq!(q.pop().unwrap().data, [200]);
    }

    #[test]
    fn what_is_not_a_udp_fragment_is_an_icmp_error() {
        assert_eq!(Kind::of(&packet(1, 0)), Kind::IcmpError);
        // An IPv4 UDP first fragment (MF set) in an Ethernet frame.
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[14 + 6] = 0x20;
        frame[14 + 9] = 17;
        let p = PacketIn {
            in_port: Some(1),
            total_len: frame.len(),
            data: frame,
        };
        assert_eq!(Kind::of(&p), Kind::Fragment);
    }
}
