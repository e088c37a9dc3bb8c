//! The only place that touches Open vSwitch: `ovs-vsctl`, `ovs-ofctl` and `ovs-appctl` run as child
//! processes behind the small `OvsExec` trait, which unit tests fake.
//!
//! Both tools find a private OVS instance through OVS_RUNDIR in the environment, which is how
//! the tests and the demo run one OVS per throwaway node.

pub mod bridge;
mod cli;
#[cfg(test)]
pub mod fake;
pub mod monitor;

pub use bridge::{ensure_bridge, list_sandbox_ports, port_ofport, OvsPort};
pub use cli::OvsCli;

use crate::flows::{FlowDiff, Meter, MeterRate};

pub type OvsError = crate::exec::ExecError;

/// What the agent needs from OVS.
pub trait OvsExec: Send + Sync {
    /// Runs `ovs-vsctl ARGS...` and returns its stdout.
    fn vsctl(&self, args: &[&str]) -> Result<String, OvsError>;
    /// The cookies of every flow on the bridge.
    fn installed_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError>;
    /// Applies the diff as one atomic OpenFlow bundle.
    fn apply(&self, bridge: &str, diff: &FlowDiff) -> Result<(), OvsError>;
    /// Every flow on the bridge as (cookie, packets it matched), for `portiso status`.
    fn flow_stats(&self, bridge: &str) -> Result<Vec<(u64, u64)>, OvsError>;
    /// How many flows the bridge has: one small OpenFlow reply however many there are, so
    /// the agent's periodic check that OVS still holds its flows stays cheap.
    fn flow_count(&self, bridge: &str) -> Result<usize, OvsError>;
    /// Runs `ovs-appctl ofproto/trace BRIDGE FLOW` (`portiso trace`) and returns its output.
    fn trace(&self, bridge: &str, flow: &str) -> Result<String, OvsError>;
    /// The bridge's meters, with the rate of their (first) drop band.
    fn meters(&self, bridge: &str) -> Result<Vec<Meter>, OvsError>;
    /// Adds the meter, or changes the rate of the one with its id (`modify`).
    fn set_meter(&self, bridge: &str, meter: &Meter, modify: bool) -> Result<(), OvsError>;
    fn del_meter(&self, bridge: &str, id: u32) -> Result<(), OvsError>;
    /// How many meters the bridge's datapath supports (`meter-features`' `max_meter`): 0
    /// where it has none, as some kernel datapaths.
    fn max_meters(&self, bridge: &str) -> Result<u32, OvsError>;
}

/// Shared handles work too (tests keep one to inspect what the agent did).
impl<T: OvsExec + Sync> OvsExec for std::sync::Arc<T> {
    fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        (**self).vsctl(args)
    }
    fn installed_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError> {
        (**self).installed_cookies(bridge)
    }
    fn apply(&self, bridge: &str, diff: &FlowDiff) -> Result<(), OvsError> {
        (**self).apply(bridge, diff)
    }
    fn flow_stats(&self, bridge: &str) -> Result<Vec<(u64, u64)>, OvsError> {
        (**self).flow_stats(bridge)
    }
    fn flow_count(&self, bridge: &str) -> Result<usize, OvsError> {
        (**self).flow_count(bridge)
    }
    fn trace(&self, bridge: &str, flow: &str) -> Result<String, OvsError> {
        (**self).trace(bridge, flow)
    }
    fn meters(&self, bridge: &str) -> Result<Vec<Meter>, OvsError> {
        (**self).meters(bridge)
    }
    fn set_meter(&self, bridge: &str, meter: &Meter, modify: bool) -> Result<(), OvsError> {
        (**self).set_meter(bridge, meter, modify)
    }
    fn del_meter(&self, bridge: &str, id: u32) -> Result<(), OvsError> {
        (**self).del_meter(bridge, id)
    }
    fn max_meters(&self, bridge: &str) -> Result<u32, OvsError> {
        (**self).max_meters(bridge)
    }
}

/// Extracts the cookies from `ovs-ofctl dump-flows` output.
pub fn parse_cookies(dump: &str) -> Vec<u64> {
    dump.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("cookie=0x")?;
            let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect()
}

/// Extracts (cookie, n_packets) of every flow from `ovs-ofctl dump-flows` output.
pub fn parse_flow_stats(dump: &str) -> Vec<(u64, u64)> {
    dump.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("cookie=0x")?;
            let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            let cookie = u64::from_str_radix(&hex, 16).ok()?;
            let packets = l
                .split(", ")
                .find_map(|f| f.trim().strip_prefix("n_packets="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Some((cookie, packets))
        })
        .collect()
}

/// Reads the meters from `ovs-ofctl dump-meters` output: `meter=2 pktps burst stats bands=`
/// then `type=drop rate=1000 burst_size=100` (the rate of the first band). A meter without a
/// readable rate reads as rate 0, so that the agent sets it again.
pub fn parse_meters(dump: &str) -> Vec<Meter> {
    let mut meters: Vec<Meter> = Vec::new();
    for word in dump.split_whitespace() {
        let number = |prefix: &str| word.strip_prefix(prefix)?.parse::<u32>().ok();
        if let Some(id) = number("meter=") {
            meters.push(Meter {
                id,
                rate: MeterRate {
                    packets_per_second: 0,
                    burst: 0,
                },
            });
        } else if let Some(m) = meters.last_mut() {
            if let Some(rate) = number("rate=") {
                if m.rate.packets_per_second == 0 {
                    m.rate.packets_per_second = rate;
                }
            } else if let Some(burst) = number("burst_size=") {
                if m.rate.burst == 0 {
                    m.rate.burst = burst;
                }
            }
        }
    }
    meters
}

/// Reads `max_meter:N` from `ovs-ofctl meter-features` output (`OFPST_METER_FEATURES reply`
/// then `max_meter:200000 max_bands:1 max_color:0`, band types and capabilities).
pub fn parse_max_meters(reply: &str) -> Option<u32> {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix("max_meter:"))
        .and_then(|n| n.parse().ok())
}

/// Reads `flow_count=N` from `ovs-ofctl dump-aggregate` output.
pub fn parse_flow_count(reply: &str) -> Option<usize> {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use crate::flows::{Meter, MeterRate};

    #[test]
    fn parses_meters_from_a_dump() {
        let dump = "OFPST_METER_CONFIG reply (OF1.4) (xid=0x2):\nmeter=2 pktps burst stats bands=\ntype=drop rate=1000 burst_size=100\n\nmeter=65537 pktps burst stats bands=\ntype=drop rate=400 burst_size=40\n\nmeter=9 pktps stats bands=\n";
        let meter = |id, packets_per_second, burst| Meter {
            id,
            rate: MeterRate {
                packets_per_second,
                burst,
            },
        };
        assert_eq!(
            super::parse_meters(dump),
            vec![meter(2, 1000, 100), meter(65537, 400, 40), meter(9, 0, 0)]
        );
    }

    #[test]
    fn parses_the_meter_features_reply() {
        let with = "OFPST_METER_FEATURES reply (OF1.3) (xid=0x2):\nmax_meter:200000 max_bands:1 max_color:0\nband_types: drop\ncapabilities: kbps pktps burst stats\n";
        assert_eq!(super::parse_max_meters(with), Some(200000));
        let without = "OFPST_METER_FEATURES reply (OF1.3) (xid=0x2):\nmax_meter:0 max_bands:0 max_color:0\nband_types: 0\ncapabilities: 0\n";
        assert_eq!(super::parse_max_meters(without), Some(0));
        assert_eq!(super::parse_max_meters("garbage"), None);
    }

    #[test]
    fn parses_the_flow_count_of_an_aggregate_reply() {
        let reply = "OFPST_AGGREGATE reply (OF1.4) (xid=0x2): packet_count=0 byte_count=0 flow_count=10000\n";
        assert_eq!(super::parse_flow_count(reply), Some(10000));
        assert_eq!(super::parse_flow_count("garbage"), None);
    }

    #[test]
    fn parses_packet_counts_from_a_dump() {
        let dump = "NXST_FLOW reply (xid=0x4):\n cookie=0x7012, duration=1.5s, table=20, n_packets=7, n_bytes=420, priority=10,in_port=2 actions=drop\n cookie=0x0, duration=2s, table=0, n_packets=0, n_bytes=0, actions=LOCAL\n";
        assert_eq!(super::parse_flow_stats(dump), vec![(0x7012, 7), (0, 0)]);
    }

    #[test]
    fn parses_cookies_from_a_dump() {
        let dump = "NXST_FLOW reply (xid=0x4):\n cookie=0x7012, duration=1s, table=0, priority=0 actions=drop\n cookie=0x0, table=0 actions=LOCAL\n";
        assert_eq!(super::parse_cookies(dump), vec![0x7012, 0]);
    }
}
