//! Synthetic control-plane inputs, shared by `portiso bench` (a quick timing) and the criterion
//! benches in `operator/benches/` (the careful one). Deterministic: same sizes, same data.

use crate::flows::{BridgeState, SandboxPorts};
use crate::model::{PortEntry, PortRange, PortRangeSpec, PortSpan, Protocol};
use std::net::Ipv4Addr;

/// A small deterministic generator (xorshift64*), so that the inputs need no crate.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A bridge with `ranges` port ranges: `ranges / 10` sandboxes, each owning 5 TCP and 5 UDP
/// spans of 12 ports that start off any power-of-two boundary (so each needs several
/// value/mask blocks, as real ranges do).
pub fn bridge_state(ranges: usize) -> BridgeState {
    let per_sandbox = 10;
    let sandboxes = ranges.div_ceil(per_sandbox);
    let mut next = [1030u32, 1030u32];
    let mut out = Vec::with_capacity(sandboxes);
    let mut left = ranges;
    for s in 0..sandboxes {
        let mut ports = Vec::new();
        for j in 0..per_sandbox.min(left) {
            let (p, k) = if j % 2 == 0 {
                (Protocol::Tcp, 0)
            } else {
                (Protocol::Udp, 1)
            };
            let start = next[k];
            next[k] += 12;
            assert!(next[k] <= 65535, "too many ranges for one bridge");
            ports.push((p, start as u16, (start + 11) as u16));
        }
        left -= ports.len();
        out.push(SandboxPorts {
            sandbox: format!("bench/s{s}"),
            ofport: 10 + s as u32,
            ports,
        });
    }
    BridgeState {
        egress_limit: None,
        meters_available: true,
        datapath: crate::flows::Datapath::Netdev,
        uplink_ofport: 1,
        shared_ip: Ipv4Addr::new(198, 51, 100, 1),
        shared_mac: "02:00:00:00:00:01".into(),
        sandboxes: out,
    }
}

const UPLINKS: [&str; 8] = ["up1", "up2", "up3", "up4", "up5", "up6", "up7", "up8"];

/// `n` overlap-index entries over 8 uplinks and both protocols: random spans of 1-16 ports
/// anywhere in 1024-65535, so a realistic share of them overlap.
pub fn port_entries(n: usize) -> Vec<PortEntry> {
    let mut r = Lcg::new(0x5eed);
    (0..n)
        .map(|i| {
            let start = 1024 + r.below(64000) as u16;
            let len = 1 + r.below(16) as u16;
            PortEntry {
                owner: i,
                span: 0,
                uplink: UPLINKS[r.below(8) as usize].into(),
                protocol: if r.below(2) == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                start,
                end: start.saturating_add(len - 1),
            }
        })
        .collect()
}

/// The uplink names the synthetic ranges use.
pub fn uplinks() -> Vec<String> {
    UPLINKS.iter().map(|u| u.to_string()).collect()
}

/// `n` PortRanges of one span each on one of 8 uplinks; every 100th overlaps its neighbour,
/// the rest are disjoint (a full, mostly healthy cluster).
pub fn port_ranges(n: usize) -> Vec<PortRange> {
    let groups = UPLINKS.len() * 2;
    let per_group = n.div_ceil(groups).max(1);
    let width = (64000 / per_group).clamp(1, 1024) as u32;
    (0..n)
        .map(|i| {
            let (g, k) = (i % groups, (i / groups) as u32);
            let start = 1024 + k * width;
            let end = start + width - 1 + u32::from(i % 100 == 99);
            let protocol = if g % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let mut r = PortRange::new(
                &format!("r{i}"),
                PortRangeSpec {
                    selector: Default::default(),
                    ports: vec![PortSpan::ports(protocol, start, end.min(65535))],
                    uplinks: vec![UPLINKS[g / 2].to_string()],
                },
            );
            r.metadata.namespace = Some("bench".into());
            r
        })
        .collect()
}
