//! The OpenFlow meters a bridge needs: pure, like the flows that name them.
//!
//! Two kinds. A sandbox's egress meter (id = its OpenFlow port) holds what it sends to the
//! agent config's `sandboxEgressLimit`, when there is one. Slow-path meters (id =
//! `SLOW_PATH_METER_BASE` + the port) are always there: everything the bridge hands the agent
//! (UDP fragments, inbound ICMP errors) passes the meter of the port it came in on first.
//! The agent passes each such packet on with a process of its own, so a few hundred per
//! second is all it can do; without a meter per in-port, one sandbox sending fragmented
//! datagrams from its own ports (or a peer flooding the uplink with them) would fill OVS's
//! queue to the agent and starve every other sandbox's fragments and ICMP errors.

use super::BridgeState;

/// A meter's rate: packets per second, and how many may pass at once after a quiet moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterRate {
    pub packets_per_second: u32,
    /// Packets that may pass at once above the rate after a quiet moment.
    pub burst: u32,
}

/// One OpenFlow meter with a single drop band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    pub id: u32,
    pub rate: MeterRate,
}

/// Slow-path meter ids start above every OpenFlow port number (at most 0xff00), so they
/// never meet a sandbox's egress meter, whose id is its port number.
pub const SLOW_PATH_METER_BASE: u32 = 0x1_0000;

/// What one sandbox may hand the agent: its fragmented UDP datagrams (a 4000-byte datagram
/// is three fragments, so about 30 such datagrams a second).
pub const SANDBOX_SLOW_PATH: MeterRate = MeterRate {
    packets_per_second: 100,
    burst: 100,
};

/// What may come up from the uplink: inbound fragments and ICMP errors for everyone.
pub const UPLINK_SLOW_PATH: MeterRate = MeterRate {
    packets_per_second: 400,
    burst: 400,
};

/// The slow-path meter of the packets that come in on OpenFlow port `ofport`.
pub fn slow_path_meter(ofport: u32) -> u32 {
    SLOW_PATH_METER_BASE + ofport
}

/// The rate of the slow-path meter of packets from `in_port` on a bridge whose uplink is
/// `uplink_ofport`.
pub fn slow_path_rate(in_port: u32, uplink_ofport: u32) -> MeterRate {
    if in_port == uplink_ofport {
        UPLINK_SLOW_PATH
    } else {
        SANDBOX_SLOW_PATH
    }
}

/// Every meter the bridge's flows name, by id.
pub fn bridge_meters(s: &BridgeState) -> Vec<Meter> {
    let mut meters = vec![Meter {
        id: slow_path_meter(s.uplink_ofport),
        rate: UPLINK_SLOW_PATH,
    }];
    for sb in &s.sandboxes {
        meters.push(Meter {
            id: slow_path_meter(sb.ofport),
            rate: SANDBOX_SLOW_PATH,
        });
        if let Some(rate) = s.egress_limit {
            meters.push(Meter {
                id: sb.ofport,
                rate,
            });
        }
    }
    meters.sort_by_key(|m| m.id);
    meters.dedup_by_key(|m| m.id);
    meters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{compile_bridge, SandboxPorts};
    use crate::model::Protocol;
    use std::collections::BTreeSet;

    fn state(egress_limit: Option<MeterRate>) -> BridgeState {
        BridgeState {
            uplink_ofport: 1,
            shared_ip: "198.51.100.1".parse().unwrap(),
            shared_mac: "02:00:00:00:00:01".into(),
            sandboxes: [2, 3]
                .into_iter()
                .map(|ofport| SandboxPorts {
                    sandbox: format!("default/web{ofport}"),
                    ofport,
                    ports: vec![(Protocol::Udp, 10000 + 100 * ofport as u16, 10099)],
                })
                .collect(),
            egress_limit,
        }
    }

    /// The ids after `meter:` in the flows' actions.
    fn named(s: &BridgeState) -> BTreeSet<u32> {
        compile_bridge(s)
            .flows
            .iter()
            .filter_map(|f| f.actions.strip_prefix("meter:"))
            .map(|a| a.split(',').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn the_bridge_has_exactly_the_meters_its_flows_name() {
        let limit = MeterRate {
            packets_per_second: 5000,
            burst: 500,
        };
        for s in [state(None), state(Some(limit))] {
            let ids: BTreeSet<u32> = bridge_meters(&s).iter().map(|m| m.id).collect();
            assert_eq!(ids, named(&s), "{s:?}");
        }
        let metered = bridge_meters(&state(Some(limit)));
        assert_eq!(
            metered.iter().find(|m| m.id == 3).map(|m| m.rate),
            Some(limit)
        );
        assert_eq!(
            metered
                .iter()
                .find(|m| m.id == slow_path_meter(1))
                .map(|m| m.rate),
            Some(UPLINK_SLOW_PATH)
        );
        // Without a limit, only the slow path's: the uplink's and one per sandbox.
        assert_eq!(bridge_meters(&state(None)).len(), 3);
    }

    #[test]
    fn slow_path_meters_never_take_a_port_number() {
        assert!(slow_path_meter(0) > 0xff00);
        assert_eq!(slow_path_rate(1, 1), UPLINK_SLOW_PATH);
        assert_eq!(slow_path_rate(7, 1), SANDBOX_SLOW_PATH);
    }
}
