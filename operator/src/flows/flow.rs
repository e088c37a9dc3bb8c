//! A flow as a value, its cookie, and the diff between two sets of flows.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::Hasher;

/// Marks a cookie as portiso's: the top byte. The rest is a hash of the flow itself, so a
/// flow's cookie names it exactly: after a restart the agent recomputes the same cookies and
/// finds nothing to change, and one flow can be deleted by its cookie alone.
const COOKIE_TAG: u64 = 0x70 << 56;
const COOKIE_HASH_BITS: u64 = (1 << 56) - 1;

/// One OpenFlow entry, written as `ovs-ofctl` reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    /// Match fields, comma-separated, as ovs-ofctl takes them (may be empty: match all).
    pub matches: String,
    pub actions: String,
}

impl Flow {
    pub fn new(
        table: u8,
        priority: u16,
        matches: impl Into<String>,
        actions: impl Into<String>,
    ) -> Self {
        Self {
            table,
            priority,
            matches: matches.into(),
            actions: actions.into(),
        }
    }

    /// A stable 64-bit cookie derived from the whole flow (FNV-1a: stable across builds,
    /// unlike std's hasher).
    pub fn cookie(&self) -> u64 {
        let mut h = fnv::FnvHasher::default();
        h.write(self.to_string().as_bytes());
        COOKIE_TAG | (h.finish() & COOKIE_HASH_BITS)
    }
}

impl fmt::Display for Flow {
    /// The flow as an `ovs-ofctl add-flow` argument, cookie included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table={},priority={}", self.table, self.priority)?;
        if !self.matches.is_empty() {
            write!(f, ",{}", self.matches)?;
        }
        write!(f, " actions={}", self.actions)
    }
}

/// The complete desired flow table of one bridge, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowTable {
    pub flows: Vec<Flow>,
}

impl FlowTable {
    pub fn new(mut flows: Vec<Flow>) -> Self {
        flows.sort();
        flows.dedup();
        Self { flows }
    }

    /// One flow per line with its cookie: the golden-file format, and what a person reads.
    pub fn render(&self) -> String {
        self.flows
            .iter()
            .map(|f| format!("cookie={:#018x},{f}\n", f.cookie()))
            .collect()
    }
}

/// What must change in OVS to get from the installed flows to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowDiff {
    /// Cookies of installed flows that are not desired.
    pub delete: Vec<u64>,
    pub add: Vec<Flow>,
}

impl FlowDiff {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }

    /// The diff as an `ovs-ofctl --bundle add-flows` file: deletes first, so that a flow
    /// re-added with the same match but new actions is not deleted after it was added.
    pub fn to_bundle(&self) -> String {
        let mut out = String::new();
        for c in &self.delete {
            out.push_str(&format!("delete cookie={c:#x}/-1\n"));
        }
        for f in &self.add {
            out.push_str(&format!("add cookie={:#x},{f}\n", f.cookie()));
        }
        out
    }
}

/// Compares desired flows with the cookies installed on the bridge. Flows are identified by
/// cookie only, which is a hash of the whole flow, so unchanged flows are never touched.
pub fn diff(desired: &FlowTable, installed: &[u64]) -> FlowDiff {
    let installed: BTreeSet<u64> = installed.iter().copied().collect();
    let wanted: BTreeSet<u64> = desired.flows.iter().map(Flow::cookie).collect();
    FlowDiff {
        delete: installed.difference(&wanted).copied().collect(),
        add: desired
            .flows
            .iter()
            .filter(|f| !installed.contains(&f.cookie()))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_tagged_and_changes_with_the_flow() {
        let a = Flow::new(0, 10, "in_port=1", "LOCAL");
        let b = Flow::new(0, 10, "in_port=1", "output:2");
        assert_eq!(a.cookie() >> 56, 0x70);
        assert_eq!(a.cookie(), a.clone().cookie());
        assert_ne!(a.cookie(), b.cookie());
    }

    #[test]
    fn diff_adds_missing_and_deletes_stale_only() {
        let keep = Flow::new(0, 10, "in_port=1", "LOCAL");
        let new = Flow::new(0, 20, "in_port=2", "drop");
        let stale = Flow::new(0, 20, "in_port=3", "drop");
        let desired = FlowTable::new(vec![keep.clone(), new.clone()]);
        let d = diff(&desired, &[keep.cookie(), stale.cookie(), 0]);
        assert_eq!(d.add, vec![new.clone()]);
        let mut del = vec![stale.cookie(), 0];
        del.sort();
        assert_eq!(d.delete, del);
        let bundle = d.to_bundle();
        let first_add = bundle.find("add ").unwrap();
        assert!(bundle.rfind("delete ").unwrap() < first_add, "{bundle}");
        assert!(diff(&desired, &[keep.cookie(), new.cookie()]).is_empty());
    }
}
