//! The bridge's OpenFlow meters brought in line with `flows::bridge_meters`: added, or their
//! rate changed, before the flows that name them; removed after the flows that named them
//! are gone (OVS would delete a meter's flows with it).

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
    fn ensure_meter(&self, bridge: &str, m: &Meter, exists: bool) -> Result<(), OvsError> {
        self.ovs
            .set_meter(bridge, m, exists)
            .or_else(|_| self.ovs.set_meter(bridge, m, !exists))
    }

    fn meter_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Vec<Meter>>> {
        self.meters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
