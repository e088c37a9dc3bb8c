//! The bridge's OpenFlow meters brought in line with `flows::bridge_meters`: added, or their
//! rate changed, before the flows that name them; removed after the flows that named them
//! are gone (OVS would delete a meter's flows with it).
//!
//! Whether a bridge's datapath has meters at all is asked once per bridge
//! (`meters_available`); where it has none, the compiler names none and none are installed.

use super::Agent;
use crate::flows::{bridge_meters, BridgeState, Meter};
use crate::ovs::OvsError;

impl Agent {
    /// Before the flows: adds the meters the bridge lacks and changes those whose rate
    /// differs (a changed `sandboxEgressLimit`). Returns the meters to remove after the flows.
    pub(super) fn meters_before_flows(
        &self,
        s: &BridgeState,
        bridge: &str,
    ) -> Result<Vec<Meter>, OvsError> {
        // Taken out while OVS changes: if anything below fails, the next reconcile re-reads.
        let known = self.meter_cache().remove(bridge);
        let present = match known.filter(|_| self.installed_cookies(bridge).is_some()) {
            Some(known) => known,
            None => self.ovs.meters(bridge)?,
        };
        let desired = bridge_meters(s);
        for m in &desired {
            match present.iter().find(|p| p.id == m.id) {
                None => self.ensure_meter(bridge, m, false)?,
                Some(p) if p.rate != m.rate => {
                    tracing::info!(%bridge, meter = m.id, old = ?p.rate, new = ?m.rate, "meter's rate changed");
                    self.ensure_meter(bridge, m, true)?
                }
                Some(_) => {}
            }
        }
        Ok(present
            .into_iter()
            .filter(|p| !desired.iter().any(|d| d.id == p.id))
            .collect())
    }

    /// After the flows: removes the meters no flow names any more. One that cannot be removed
    /// now harms nothing (no flow uses it); it is counted as a reconcile error and tried again
    /// at the next reconcile.
    pub(super) fn meters_after_flows(&self, s: &BridgeState, bridge: &str, stale: Vec<Meter>) {
        let mut now = bridge_meters(s);
        for m in stale {
            if let Err(e) = self.ovs.del_meter(bridge, m.id) {
                tracing::warn!(%bridge, meter = m.id, error = %e, "could not remove a meter no flow uses; trying again at the next reconcile");
                self.metrics.reconcile_errors.inc();
                now.push(m);
            }
        }
        self.meter_cache().insert(bridge.to_string(), now);
    }

    /// Adds the meter (or changes it, `exists`); if OVS says the opposite of what the agent
    /// knew (another agent of this node, still stopping, got there first), does the other.
    /// When both fail, the error tells both.
    fn ensure_meter(&self, bridge: &str, m: &Meter, exists: bool) -> Result<(), OvsError> {
        let first = match self.ovs.set_meter(bridge, m, exists) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        self.ovs
            .set_meter(bridge, m, !exists)
            .map_err(|second| both_failed(&first, second))
    }

    /// Whether `bridge`'s datapath has OpenFlow meters: asked once per bridge (OVS's answer
    /// depends on the datapath, which a bridge keeps), logged when it has none. If OVS cannot
    /// be asked, meters are assumed (as before the question existed) and it is asked again
    /// next time.
    pub(super) fn meters_available(&self, bridge: &str) -> bool {
        let mut known = self.meter_support.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&available) = known.get(bridge) {
            return available;
        }
        let max = match self.ovs.max_meters(bridge) {
            Ok(max) => max,
            Err(e) => {
                tracing::warn!(%bridge, error = %e, "could not ask OVS whether the datapath has meters; assuming it has");
                return true;
            }
        };
        let available = max > 0;
        if !available {
            tracing::warn!(%bridge, datapath = %self.datapath_type, "the bridge's datapath has no OpenFlow meters (meter-features: max_meter 0): the slow path (fragments, ICMP errors) is held only by the agent's own per-in-port budget");
            if let Some(limit) = self.config.sandbox_egress_limit {
                tracing::warn!(%bridge, ?limit, "sandboxEgressLimit is configured but cannot be honoured on this bridge: its datapath has no meters, so sandboxes send unlimited");
            }
        }
        known.insert(bridge.to_string(), available);
        available
    }

    fn meter_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Vec<Meter>>> {
        self.meters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One error telling both attempts of `ensure_meter`.
fn both_failed(first: &OvsError, second: OvsError) -> OvsError {
    OvsError {
        argv: format!("{} (then) {}", first.argv, second.argv),
        status: second.status,
        stderr: format!(
            "{} (first attempt failed too: {}: {})",
            second.stderr.trim(),
            first.status,
            first.stderr.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::agent;
    use crate::flows::MeterRate;
    use crate::ovs::fake::FakeOvs;
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;

    #[test]
    fn a_datapath_without_meters_gets_its_flows_without_any_meter() {
        let ovs = Arc::new(FakeOvs::default());
        ovs.no_meters.store(true, SeqCst);
        let mut a = agent(ovs.clone());
        // Configured, but it cannot be honoured: warned about, not fatal.
        a.config.sandbox_egress_limit = Some(MeterRate {
            packets_per_second: 1000,
            burst: 100,
        });
        a.reconcile_all().unwrap();
        a.reconcile_all().unwrap();
        let applied = ovs.applied.lock().unwrap();
        let first = &applied[0].1;
        assert!(first.add.len() > 10);
        assert!(
            first.add.iter().all(|f| !f.actions.contains("meter")),
            "{:?}",
            first.add
        );
        // The fragments and ICMP errors still go to the agent, unmetered.
        assert!(first
            .add
            .iter()
            .any(|f| f.actions == "controller(max_len=65535)"));
        assert!(ovs
            .meter_table
            .lock()
            .unwrap()
            .values()
            .all(|m| m.is_empty()));
        // Asked once for the bridge, not at every reconcile.
        assert_eq!(ovs.meter_probes.load(SeqCst), 1);
        assert!(!a.bridge_state(&a.uplinks[0]).meters_available);
    }

    #[test]
    fn a_datapath_with_meters_is_asked_once_and_gets_them() {
        let ovs = Arc::new(FakeOvs::default());
        let a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        a.reconcile_all().unwrap();
        assert_eq!(ovs.meter_probes.load(SeqCst), 1);
        assert_eq!(ovs.meter_table.lock().unwrap()["br-eth1"].len(), 4);
    }

    #[test]
    fn when_adding_and_changing_a_meter_both_fail_the_error_tells_both() {
        let ovs = Arc::new(FakeOvs::default());
        ovs.refuse_set_meter.store(true, SeqCst);
        let a = agent(ovs.clone());
        let e = a.reconcile_all().unwrap_err().to_string();
        assert!(
            e.contains("modify: false") && e.contains("modify: true"),
            "{e}"
        );
        assert!(e.contains("first attempt failed too"), "{e}");
        // No flow went in without its meter.
        assert!(ovs.applied.lock().unwrap().is_empty());
    }
}
