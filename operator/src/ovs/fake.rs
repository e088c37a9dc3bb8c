//! A recording `OvsExec` for unit tests.

use super::{OvsError, OvsExec};
use crate::flows::{FlowDiff, Meter, MeterRate};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What the fake answers for `Open_vSwitch.iface_types`: Debian's OVS 3.1 with AF_XDP.
pub const FAKE_IFACE_TYPES: &str =
    "[afxdp, afxdp-nonpmd, bareudp, erspan, geneve, gre, internal, system, tap, vxlan]\n";

/// A bridge's meters: id -> rate.
pub type Meters = BTreeMap<u32, MeterRate>;

#[derive(Default)]
pub struct FakeOvs {
    pub vsctl_calls: Mutex<Vec<Vec<String>>>,
    /// Installed cookies per bridge, kept in line with applied diffs.
    pub cookies: Mutex<BTreeMap<String, Vec<u64>>>,
    pub applied: Mutex<Vec<(String, FlowDiff)>>,
    /// Packets each flow (by cookie) has matched, as `flow_stats` reports them; 0 if absent.
    pub packets: Mutex<BTreeMap<u64, u64>>,
    /// What `trace` answers, and the (bridge, flow) of every call.
    pub trace_output: Mutex<String>,
    pub traces: Mutex<Vec<(String, String)>>,
    /// Meters per bridge.
    pub meter_table: Mutex<BTreeMap<String, Meters>>,
    /// Whether `del_meter` fails, as OVS might.
    pub refuse_del_meter: std::sync::atomic::AtomicBool,
    /// A datapath without meters: `max_meters` says 0 and adding one fails.
    pub no_meters: std::sync::atomic::AtomicBool,
    /// How many times `max_meters` was asked.
    pub meter_probes: std::sync::atomic::AtomicUsize,
    /// Whether `set_meter` fails whatever it is asked, as OVS might.
    pub refuse_set_meter: std::sync::atomic::AtomicBool,
}

impl OvsExec for FakeOvs {
    fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let mut calls = self.vsctl_calls.lock().expect("lock");
        calls.push(args.iter().map(|s| s.to_string()).collect());
        if args == ["get", "Open_vSwitch", ".", "iface_types"] {
            return Ok(FAKE_IFACE_TYPES.into());
        }
        if args.contains(&"find") && args.contains(&"--format=json") {
            return Ok(
                r#"{"data":[],"headings":["name","ofport","type","external_ids","error"]}"#.into(),
            );
        }
        Ok(String::new())
    }

    fn installed_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError> {
        let cookies = self.cookies.lock().expect("lock");
        Ok(cookies.get(bridge).cloned().unwrap_or_default())
    }

    fn flow_stats(&self, bridge: &str) -> Result<Vec<(u64, u64)>, OvsError> {
        let packets = self.packets.lock().expect("lock");
        Ok(self
            .installed_cookies(bridge)?
            .into_iter()
            .map(|c| (c, packets.get(&c).copied().unwrap_or(0)))
            .collect())
    }

    fn flow_count(&self, bridge: &str) -> Result<usize, OvsError> {
        Ok(self.installed_cookies(bridge)?.len())
    }

    fn trace(&self, bridge: &str, flow: &str) -> Result<String, OvsError> {
        self.traces
            .lock()
            .expect("lock")
            .push((bridge.to_string(), flow.to_string()));
        Ok(self.trace_output.lock().expect("lock").clone())
    }

    fn meters(&self, bridge: &str) -> Result<Vec<Meter>, OvsError> {
        let meters = self.meter_table.lock().expect("lock");
        Ok(meters
            .get(bridge)
            .map(|m| m.iter().map(|(&id, &rate)| Meter { id, rate }).collect())
            .unwrap_or_default())
    }

    fn set_meter(&self, bridge: &str, meter: &Meter, modify: bool) -> Result<(), OvsError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.no_meters.load(SeqCst) || self.refuse_set_meter.load(SeqCst) {
            return Err(OvsError {
                argv: format!("ovs-ofctl set meter {} (modify: {modify})", meter.id),
                status: "exit status: 1".into(),
                stderr: format!("refused (test; modify: {modify})"),
            });
        }
        let mut meters = self.meter_table.lock().expect("lock");
        let bridge_meters = meters.entry(bridge.to_string()).or_default();
        // As OVS: adding an existing meter or changing a missing one fails.
        if bridge_meters.contains_key(&meter.id) != modify {
            return Err(OvsError {
                argv: format!("ovs-ofctl set meter {} (modify: {modify})", meter.id),
                status: "exit status: 1".into(),
                stderr: "OFPMMFC_METER_EXISTS or OFPMMFC_UNKNOWN_METER".into(),
            });
        }
        bridge_meters.insert(meter.id, meter.rate);
        Ok(())
    }

    fn del_meter(&self, bridge: &str, id: u32) -> Result<(), OvsError> {
        if self
            .refuse_del_meter
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(OvsError {
                argv: format!("ovs-ofctl del-meter {bridge} meter={id}"),
                status: "exit status: 1".into(),
                stderr: "refused (test)".into(),
            });
        }
        let mut meters = self.meter_table.lock().expect("lock");
        meters.entry(bridge.to_string()).or_default().remove(&id);
        Ok(())
    }

    fn max_meters(&self, _bridge: &str) -> Result<u32, OvsError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.meter_probes.fetch_add(1, SeqCst);
        Ok(if self.no_meters.load(SeqCst) {
            0
        } else {
            200_000
        })
    }

    fn apply(&self, bridge: &str, diff: &FlowDiff) -> Result<(), OvsError> {
        // As OVS: a bundle with a flow that names a missing meter fails whole.
        let meters = self.meter_table.lock().expect("lock");
        for f in &diff.add {
            if let Some(named) = f.actions.strip_prefix("meter:") {
                let id: u32 = named.split(',').next().unwrap_or("").parse().unwrap_or(0);
                if !meters.get(bridge).is_some_and(|m| m.contains_key(&id)) {
                    return Err(OvsError {
                        argv: format!("ovs-ofctl --bundle add-flows {bridge} -"),
                        status: "exit status: 1".into(),
                        stderr: format!("OFPMMFC_INVALID_METER: meter {id} ({f})"),
                    });
                }
            }
        }
        drop(meters);
        let mut cookies = self.cookies.lock().expect("lock");
        let installed = cookies.entry(bridge.to_string()).or_default();
        installed.retain(|c| !diff.delete.contains(c));
        installed.extend(diff.add.iter().map(|f| f.cookie()));
        self.applied
            .lock()
            .expect("lock")
            .push((bridge.to_string(), diff.clone()));
        Ok(())
    }
}
