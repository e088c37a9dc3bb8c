//! The slow path for what OpenFlow cannot steer: per bridge, a thread runs `ovs-ofctl
//! monitor`, reads what the bridge hands to the controller (inbound ICMP errors, and UDP
//! fragments in both directions) and queues it per in-port and kind (`slow_path`); a second thread
//! takes the queues in turn, asks `icmp_errors::steer` or `fragments::Fragments::steer` where
//! each packet goes and sends it back into the bridge towards that sandbox, the uplink or the
//! host, over the monitor's own OpenFlow connection. The reader never waits for the sender,
//! so OVS's queue to the monitor never fills because one port has a backlog.
//!
//! The port maps are shared with the agent, which replaces a bridge's map whenever it has
//! brought that bridge's flows in line (attach, detach, PortRange change). A monitor that
//! ends is restarted after a pause that doubles up to `MAX_BACKOFF` and starts over once a
//! monitor has run for `STABLE`.

use super::fragments::{is_udp_fragment, Fragments};
use super::icmp_errors::{steer, PortMap};
use super::slow_path::{Budget, Counts, FairQueue, Key, Kind, Stats};
use crate::ovs::monitor::{Monitor, PacketIn, PacketInParser, PacketSender, Parsed};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A monitor that ran this long was healthy: the next restart starts from `MIN_BACKOFF`.
const STABLE: Duration = Duration::from_secs(30);

/// What the reader hands the sender.
#[derive(Default)]
struct Backlog {
    queue: FairQueue,
    /// The monitor's output ended: the sender stops once the queue is empty.
    closed: bool,
}

type SharedBacklog = Arc<(Mutex<Backlog>, Condvar)>;

/// The port maps of every bridge, by bridge name.
#[derive(Clone, Default)]
pub struct IcmpRelay {
    maps: Arc<RwLock<BTreeMap<String, PortMap>>>,
    /// What the readers did with each bridge's packets, per in-port and kind.
    stats: Arc<Mutex<Stats>>,
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

    /// The slow path's counts so far, for the agent's metrics.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn count(&self, bridge: &str, key: Key, what: impl FnOnce(&mut Counts)) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        what(stats.entry((bridge.to_string(), key)).or_default());
    }

    fn map(&self, bridge: &str) -> Option<PortMap> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.get(bridge).cloned()
    }

    fn uplink_ofport(&self, bridge: &str) -> Option<u32> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.get(bridge).map(|m| m.uplink_ofport)
    }

    /// Starts the supervised monitor of `bridge`, for the life of the process, with its
    /// control socket in `control_dir` (see `monitor::control_dir`), made 0700 first.
    pub fn start(&self, bridge: &str, control_dir: &std::path::Path) -> std::io::Result<()> {
        crate::ovs::monitor::ensure_private_dir(control_dir)?;
        let relay = self.clone();
        let bridge = bridge.to_string();
        let control_dir = control_dir.to_path_buf();
        std::thread::Builder::new()
            .name(format!("icmp-{bridge}"))
            .spawn(move || relay.supervise(&bridge, &control_dir))
            .map(|_| ())
    }

    fn supervise(&self, bridge: &str, control_dir: &std::path::Path) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let why = self.run_monitor(bridge, control_dir);
            if started.elapsed() >= STABLE {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(%bridge, reason = %why, retry_in = ?backoff, "ICMP error monitor ended; restarting");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs one monitor until its output ends; returns why it ended.
    fn run_monitor(&self, bridge: &str, control_dir: &std::path::Path) -> String {
        let (monitor, stderr) = match Monitor::start(bridge, control_dir) {
            Ok(m) => m,
            Err(e) => return format!("ovs-ofctl monitor did not start: {e}"),
        };
        tracing::info!(%bridge, pid = monitor.pid(), "ICMP error monitor started");
        let backlog: SharedBacklog = Arc::default();
        let sender = {
            let (relay, backlog, mut out) = (self.clone(), backlog.clone(), monitor.sender());
            let bridge = bridge.to_string();
            std::thread::Builder::new()
                .name(format!("slow-{bridge}"))
                .spawn(move || relay.serve(&bridge, &backlog, &mut out))
        };
        let why = match sender {
            Ok(sender) => {
                let why = self.read(bridge, stderr, &backlog);
                let (lock, wake) = &*backlog;
                lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
                wake.notify_all();
                let _ = sender.join();
                why
            }
            Err(e) => format!("could not start the sending thread: {e}"),
        };
        format!("ovs-ofctl monitor exited ({}): {why}", monitor.finish())
    }

    /// Reads the monitor's output until it ends, queueing each packet within its in-port's
    /// budget; returns the last lines it read, which say why it ended.
    fn read(
        &self,
        bridge: &str,
        stderr: std::process::ChildStderr,
        backlog: &SharedBacklog,
    ) -> String {
        let mut parser = PacketInParser::default();
        let mut budget = Budget::new(Instant::now());
        let mut last_lines: Vec<String> = Vec::new();
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
                Parsed::Packet(p) => {
                    let uplink = self.uplink_ofport(bridge).unwrap_or(0);
                    let key = Key {
                        in_port: p.in_port.unwrap_or(uplink),
                        kind: Kind::of(&p),
                    };
                    let (allowed, dropped) = budget.allow(key, uplink, Instant::now());
                    if dropped > 0 {
                        tracing::warn!(%bridge, dropped, "too many ICMP errors and fragments in a second; dropped the excess");
                    }
                    if !allowed {
                        self.count(bridge, key, |c| c.over_budget += 1);
                        continue;
                    }
                    let (lock, wake) = &**backlog;
                    let queued = lock
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .queue
                        .push(key, p);
                    if queued {
                        self.count(bridge, key, |c| c.taken += 1);
                        wake.notify_one();
                    } else {
                        self.count(bridge, key, |c| c.queue_full += 1);
                        tracing::debug!(%bridge, in_port = key.in_port, kind = key.kind.label(), "slow-path queue of the port full; dropped");
                    }
                }
            }
        }
        last_lines.join(" | ")
    }

    /// Sends what the reader queued, each port in turn, until the reader is done.
    fn serve(&self, bridge: &str, backlog: &SharedBacklog, out: &mut PacketSender) {
        let mut fragments = Fragments::default();
        let (lock, wake) = &**backlog;
        loop {
            let next = {
                let mut b = lock.lock().unwrap_or_else(|p| p.into_inner());
                while b.queue.is_empty() && !b.closed {
                    b = wake.wait(b).unwrap_or_else(|p| p.into_inner());
                }
                // The monitor and its connection are gone: what is queued could not be sent
                // anyway, and the next monitor should start at once.
                if b.closed {
                    return;
                }
                b.queue.pop()
            };
            match next {
                Some(p) => self.relay(bridge, &p, &mut fragments, out),
                None => return,
            }
        }
    }

    fn relay(&self, bridge: &str, p: &PacketIn, fragments: &mut Fragments, out: &mut PacketSender) {
        let Some(map) = self.map(bridge) else {
            tracing::warn!(%bridge, "packet handed up on a bridge without a port map; dropped");
            return;
        };
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
                if let Err(e) = out.send(in_port, &p.data, &action) {
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
        if let Err(e) = out.send(map.uplink_ofport, &p.data, &s.to.action()) {
            tracing::warn!(%bridge, error = %e, "could not pass an ICMP error on");
        }
    }
}
