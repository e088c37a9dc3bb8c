//! How the slow path shares itself out: what the bridge hands the agent waits in a queue per
//! in-port, served in turn, so that a port with a backlog (a sandbox sending fragmented
//! datagrams as fast as it can) delays only itself. Pure; `icmp_relay` runs it.

use crate::flows::meters::slow_path_rate;
use crate::ovs::monitor::PacketIn;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most this many packets (errors and fragments) are taken per bridge and second,
/// whatever port they came in on.
pub const BRIDGE_MAX_PER_SECOND: u32 = 2000;

/// At most this many packets wait per in-port; more are dropped on arrival.
pub const QUEUE_PER_PORT: usize = 256;

/// How many packets the agent takes per second, per in-port and per bridge; the rest are
/// dropped on arrival. OVS's slow-path meters (`flows::meters`) hold each in-port to the same
/// rate before packets reach the agent; this second line bounds the agent's work even where
/// a meter is missing.
pub struct Budget {
    window: Instant,
    used: HashMap<u32, u32>,
    total: u32,
    /// Dropped in the current window, for the log.
    pub dropped: u32,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Budget {
            window: now,
            used: HashMap::new(),
            total: 0,
            dropped: 0,
        }
    }

    /// Whether a packet that came in on `in_port` may be taken now. Returns, once a second,
    /// how many the window before dropped.
    pub fn allow(&mut self, in_port: u32, uplink_ofport: u32, now: Instant) -> (bool, u32) {
        let mut dropped_before = 0;
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            dropped_before = self.dropped;
            *self = Budget::new(now);
        }
        let rate = slow_path_rate(in_port, uplink_ofport);
        let used = self.used.entry(in_port).or_default();
        if *used >= rate.packets_per_second + rate.burst || self.total >= BRIDGE_MAX_PER_SECOND {
            self.dropped += 1;
            return (false, dropped_before);
        }
        *used += 1;
        self.total += 1;
        (true, dropped_before)
    }
}

/// Packets waiting for the agent, a queue per in-port, taken from each port in turn.
#[derive(Default)]
pub struct FairQueue {
    queues: HashMap<u32, VecDeque<PacketIn>>,
    /// In-ports with packets waiting, in the order they are served.
    turn: VecDeque<u32>,
}

impl FairQueue {
    /// Adds a packet from `in_port`; false (and the packet dropped) if its queue is full.
    pub fn push(&mut self, in_port: u32, p: PacketIn) -> bool {
        let q = self.queues.entry(in_port).or_default();
        if q.len() >= QUEUE_PER_PORT {
            return false;
        }
        if q.is_empty() {
            self.turn.push_back(in_port);
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

    #[test]
    fn one_in_port_cannot_spend_the_budget_of_another() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let per_sandbox = SANDBOX_SLOW_PATH.packets_per_second + SANDBOX_SLOW_PATH.burst;
        let passed = (0..10 * per_sandbox)
            .filter(|_| b.allow(2, 1, now).0)
            .count();
        assert_eq!(passed as u32, per_sandbox);
        // Its neighbour and the uplink still have all of theirs.
        assert!(b.allow(3, 1, now).0);
        let per_uplink = UPLINK_SLOW_PATH.packets_per_second + UPLINK_SLOW_PATH.burst;
        assert_eq!(
            (0..2 * per_uplink).filter(|_| b.allow(1, 1, now).0).count() as u32,
            per_uplink
        );
        // A second later, the flooder's budget is back, and the drops are told.
        let (allowed, dropped) = b.allow(2, 1, now + Duration::from_secs(1));
        assert!(allowed);
        assert_eq!(dropped, 9 * per_sandbox + per_uplink);
    }

    #[test]
    fn the_bridge_as_a_whole_is_bounded_too() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let passed = (2..5000u32).filter(|&p| b.allow(p, 1, now).0).count();
        assert_eq!(passed as u32, BRIDGE_MAX_PER_SECOND);
    }

    #[test]
    fn ports_are_served_in_turn_each_in_its_own_order() {
        let mut q = FairQueue::default();
        for n in 0..5 {
            assert!(q.push(2, packet(2, n)));
        }
        q.push(3, packet(3, 100));
        q.push(3, packet(3, 101));
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
            .filter(|&n| q.push(2, packet(2, n as u8)))
            .count();
        assert_eq!(taken, QUEUE_PER_PORT);
        assert!(q.push(3, packet(3, 1)));
        // Port 3's packet comes second, not after port 2's backlog.
        q.pop();
        assert_eq!(q.pop().unwrap().in_port, Some(3));
    }
}
