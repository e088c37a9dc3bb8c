//! The OpenFlow meters a bridge needs: pure, like the flows that name them.
//!
//! Three kinds. A sandbox's egress meter (id = its OpenFlow port) holds what it sends to the
//! agent config's `sandboxEgressLimit`, when there is one. Slow-path meters (id =
//! `SLOW_PATH_METER_BASE` + the port) are always there: every UDP fragment the bridge hands
//! the agent passes the meter of the port it came in on: before conntrack on the userspace
//! datapath (a flood must not reach its reassembly), after it, right before `controller`, on
//! the kernel's (which hands on whole datagrams, never to be capped at the slow path's rate;
//! see `flows::Datapath`). Inbound ICMP errors have meters of their own (id =
//! `ICMP_ERROR_METER_BASE` + the uplink's port), so that a peer sending tiny fragments cannot
//! starve the node's path-MTU errors. The agent can pass on a few thousand packets per second
//! at most; without a meter per in-port, one sandbox sending fragmented datagrams from its own
//! ports (or a peer flooding the uplink with them) would fill OVS's queue to the agent and
//! starve every other sandbox's fragments and ICMP errors.
//!
//! A datapath without meters (`meter-features` reports `max_meter:0`, as some kernel
//! datapaths do) gets none of them: `BridgeState::meters_available` is false, the flows name
//! no meter (OVS refuses a flow naming a meter that does not exist) and the agent's own
//! per-in-port budget (`agent::slow_path`) is the only bound on the slow path.

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

/// ICMP error meter ids start above every slow-path meter id.
pub const ICMP_ERROR_METER_BASE: u32 = 0x2_0000;

/// What may come up from the uplink as ICMP errors (fragmentation needed, unreachable, time
/// exceeded, parameter problem) for the whole node, apart from fragments.
pub const UPLINK_ICMP_ERRORS: MeterRate = MeterRate {
    packets_per_second: 400,
    burst: 400,
};

/// The slow-path meter of the packets that come in on OpenFlow port `ofport`.
pub fn slow_path_meter(ofport: u32) -> u32 {
    SLOW_PATH_METER_BASE + ofport
}

/// The meter of the ICMP errors that come in on OpenFlow port `ofport` (the uplink's).
pub fn icmp_error_meter(ofport: u32) -> u32 {
    ICMP_ERROR_METER_BASE + ofport
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

/// Every meter the bridge's flows name, by id: none where the datapath has no meters.
pub fn bridge_meters(s: &BridgeState) -> Vec<Meter> {
    if !s.meters_available {
        return Vec::new();
    }
    let mut meters = vec![
        Meter {
            id: slow_path_meter(s.uplink_ofport),
            rate: UPLINK_SLOW_PATH,
        },
        Meter {
            id: icmp_error_meter(s.uplink_ofport),
            rate: UPLINK_ICMP_ERRORS,
        },
    ];
    for sb in &s.sandboxes {
        meters.push(Meter {
            id: slow_path_meter(sb.ofport),
            rate: SANDBOX_SLOW_PATH,
        });
        if let Some(rate) = s.egress_meter() {
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
            meters_available: true,
            datapath: crate::flows::Datapath::Netdev,
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
        assert_eq!(
            metered
                .iter()
                .find(|m| m.id == icmp_error_meter(1))
                .map(|m| m.rate),
            Some(UPLINK_ICMP_ERRORS)
        );
        // Without a limit, only the slow path's: the uplink's two and one per sandbox.
        assert_eq!(bridge_meters(&state(None)).len(), 4);
    }

    #[test]
    fn a_datapath_without_meters_gets_none_and_no_flow_names_one() {
        let limit = MeterRate {
            packets_per_second: 5000,
            burst: 500,
        };
        for mut s in [state(None), state(Some(limit))] {
            s.meters_available = false;
            assert_eq!(bridge_meters(&s), []);
            assert_eq!(named(&s), BTreeSet::new());
            assert!(compile_bridge(&s)
                .flows
                .iter()
                .all(|f| !f.actions.contains("meter")));
        }
    }

    #[test]
    fn slow_path_meters_never_take_a_port_number() {
        assert!(slow_path_meter(0) > 0xff00);
        assert!(icmp_error_meter(0) > slow_path_meter(0xff00));
        assert_eq!(slow_path_rate(1, 1), UPLINK_SLOW_PATH);
        assert_eq!(slow_path_rate(7, 1), SANDBOX_SLOW_PATH);
    }
}
