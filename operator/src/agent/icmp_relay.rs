//! The slow path for what OpenFlow cannot steer: per bridge, a thread runs `ovs-ofctl
//! monitor`, reads what the bridge hands to the controller (inbound ICMP errors, and UDP
//! fragments in both directions), asks `icmp_errors::steer` or `fragments::Fragments::steer`
//! where each goes and sends it back into the bridge towards that sandbox, the uplink or the
//! host.
//!
//! The port maps are shared with the agent, which replaces a bridge's map whenever it has
//! brought that bridge's flows in line (attach, detach, PortRange change). A monitor that
//! ends is restarted after a pause that doubles up to `MAX_BACKOFF` and starts over once a
//! monitor has run for `STABLE`.

use super::fragments::{is_udp_fragment, Fragments};
use super::icmp_errors::{steer, PortMap};
use crate::flows::meters::slow_path_rate;
use crate::ovs::monitor::{packet_out, Monitor, PacketInParser, Parsed};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A monitor that ran this long was healthy: the next restart starts from `MIN_BACKOFF`.
const STABLE: Duration = Duration::from_secs(30);
/// At most this many packets (errors and fragments) are passed on per bridge and second,
/// whatever port they came in on: each costs a process.
const BRIDGE_MAX_PER_SECOND: u32 = 2000;

/// How many packets the agent passes on per second, per in-port and per bridge; the rest are
/// dropped, as a flood should not become a process flood. OVS's slow-path meters
/// (`flows::meters`) hold each in-port to the same rate before packets reach the agent, so
/// one sandbox cannot fill the queue to the agent and starve its neighbours; this second line
/// bounds the agent's work even where a meter is missing.
struct Budget {
    window: Instant,
    used: HashMap<u32, u32>,
    total: u32,
    dropped: u32,
}

impl Budget {
    fn new(now: Instant) -> Self {
        Budget {
            window: now,
            used: HashMap::new(),
            total: 0,
            dropped: 0,
        }
    }

    /// Whether a packet that came in on `in_port` may be passed on now.
    fn allow(&mut self, bridge: &str, in_port: u32, uplink_ofport: u32, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(%bridge, dropped = self.dropped, "too many ICMP errors and fragments in a second; dropped the excess");
            }
            *self = Budget::new(now);
        }
        let rate = slow_path_rate(in_port, uplink_ofport);
        let used = self.used.entry(in_port).or_default();
        if *used >= rate.packets_per_second + rate.burst || self.total >= BRIDGE_MAX_PER_SECOND {
            self.dropped += 1;
            return false;
        }
        *used += 1;
        self.total += 1;
        true
    }
}

/// The port maps of every bridge, by bridge name.
#[derive(Clone, Default)]
pub struct IcmpRelay {
    maps: Arc<RwLock<BTreeMap<String, PortMap>>>,
}

impl IcmpRelay {
    /// Replaces a bridge's port map.
    pub fn update(&self, bridge: &str, map: PortMap) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        if maps.get(bridge) != Some(&map) {
            tracing::debug!(%bridge, spans = map.spans.len(), "ICMP error port map updated");
            maps.insert(bridge.to_string(), map);
        }
    }

    fn map(&self, bridge: &str) -> Option<PortMap> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.get(bridge).cloned()
    }

    /// Starts the supervised monitor of `bridge`, for the life of the process.
    pub fn start(&self, bridge: &str) -> std::io::Result<()> {
        let relay = self.clone();
        let bridge = bridge.to_string();
        std::thread::Builder::new()
            .name(format!("icmp-{bridge}"))
            .spawn(move || relay.supervise(&bridge))
            .map(|_| ())
    }

    fn supervise(&self, bridge: &str) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let why = self.run_monitor(bridge);
            if started.elapsed() >= STABLE {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(%bridge, reason = %why, retry_in = ?backoff, "ICMP error monitor ended; restarting");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs one monitor until its output ends; returns why it ended.
    fn run_monitor(&self, bridge: &str) -> String {
        let (monitor, stderr) = match Monitor::start(bridge) {
            Ok(m) => m,
            Err(e) => return format!("ovs-ofctl monitor did not start: {e}"),
        };
        tracing::info!(%bridge, pid = monitor.pid(), "ICMP error monitor started");
        let mut parser = PacketInParser::default();
        let mut fragments = Fragments::default();
        let mut last_lines: Vec<String> = Vec::new();
        let mut budget = Budget::new(Instant::now());
        for line in BufReader::new(stderr).lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    last_lines.push(format!("read error: {e}"));
                    break;
                }
            };
            match parser.feed(&line) {
                Parsed::Nothing => {
                    // Keep the last few lines: if the monitor dies, they say why.
                    if last_lines.len() == 4 {
                        last_lines.remove(0);
                    }
                    last_lines.push(line);
                }
                Parsed::Garbled(why) => {
                    tracing::warn!(%bridge, %why, "unreadable packet-in from ovs-ofctl monitor")
                }
                Parsed::Packet(p) => self.relay(bridge, &p, &mut fragments, &mut budget),
            }
        }
        let status = monitor.finish();
        format!(
            "ovs-ofctl monitor exited ({status}): {}",
            last_lines.join(" | ")
        )
    }

    fn relay(
        &self,
        bridge: &str,
        p: &crate::ovs::monitor::PacketIn,
        fragments: &mut Fragments,
        budget: &mut Budget,
    ) {
        let Some(map) = self.map(bridge) else {
            tracing::warn!(%bridge, "packet handed up on a bridge without a port map; dropped");
            return;
        };
        let in_port = p.in_port.unwrap_or(map.uplink_ofport);
        if !budget.allow(bridge, in_port, map.uplink_ofport, Instant::now()) {
            return;
        }
        if p.truncated() {
            tracing::warn!(%bridge, got = p.data.len(), total = p.total_len, "packet handed up cut short; dropped");
            return;
        }
        if is_udp_fragment(&p.data) {
            let Some(in_port) = p.in_port else {
                tracing::warn!(%bridge, "UDP fragment handed up without its in-port; dropped");
                return;
            };
            let s = fragments.steer(&p.data, in_port, &map, Instant::now());
            tracing::debug!(%bridge, in_port, to = ?s.to, why = s.why, len = p.data.len(), "steering a UDP fragment");
            if let Some(action) = s.to.action() {
                if let Err(e) = packet_out(bridge, in_port, &p.data, &action) {
                    tracing::warn!(%bridge, error = %e, "could not pass a UDP fragment on");
                }
            }
            return;
        }
        if p.in_port.is_some_and(|i| i != map.uplink_ofport) {
            tracing::warn!(%bridge, in_port = ?p.in_port, "ICMP error handed up from a port other than the uplink; dropped");
            return;
        }
        let s = steer(&p.data, &map);
        tracing::debug!(%bridge, to = ?s.to, why = s.why, len = p.data.len(), "steering ICMP error");
        if let Err(e) = packet_out(bridge, map.uplink_ofport, &p.data, &s.to.action()) {
            tracing::warn!(%bridge, error = %e, "could not pass an ICMP error on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::meters::{SANDBOX_SLOW_PATH, UPLINK_SLOW_PATH};

    #[test]
    fn one_in_port_cannot_spend_the_budget_of_another() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let per_sandbox = SANDBOX_SLOW_PATH.packets_per_second + SANDBOX_SLOW_PATH.burst;
        let passed = (0..10 * per_sandbox)
            .filter(|_| b.allow("br", 2, 1, now))
            .count();
        assert_eq!(passed as u32, per_sandbox);
        // Its neighbour and the uplink still have all of theirs.
        assert!(b.allow("br", 3, 1, now));
        let per_uplink = UPLINK_SLOW_PATH.packets_per_second + UPLINK_SLOW_PATH.burst;
        assert_eq!(
            (0..2 * per_uplink)
                .filter(|_| b.allow("br", 1, 1, now))
                .count() as u32,
            per_uplink
        );
        // A second later, the flooder's budget is back.
        assert!(b.allow("br", 2, 1, now + Duration::from_secs(1)));
    }

    #[test]
    fn the_bridge_as_a_whole_is_bounded_too() {
        let now = Instant::now();
        let mut b = Budget::new(now);
        let passed = (2..5000u32).filter(|&p| b.allow("br", p, 1, now)).count();
        assert_eq!(passed as u32, BRIDGE_MAX_PER_SECOND);
    }
}
