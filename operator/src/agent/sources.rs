//! Where the agent learns PortRanges and sandbox labels: files in rangesDir (standalone), or
//! the Kubernetes API (cluster mode, in `k8s::agent`). The agent polls its source and
//! recomputes only when something changed.

use super::ranges::RangeFiles;
use super::state::SANDBOX_LABEL;
use crate::model::PortRange;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub trait Sources: Send {
    /// The PortRanges to consider, if they changed since the last call (always on the first).
    fn changed_ranges(&mut self) -> Option<Vec<PortRange>>;
    /// A sandbox's labels, which PortRange selectors match; `None` if the sandbox is unknown.
    fn labels(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// Whether the sandbox is known to be gone (its resources may then be collected); `uid`
    /// tells it from a newer sandbox of the same name.
    fn gone(&self, _namespace: &str, _name: &str, _uid: Option<&str>) -> bool {
        false
    }
    /// Reports, per PortRange (`namespace/name`), how many sandboxes on this node it is
    /// programmed for (cluster mode publishes it for the operator's `Programmed` condition).
    fn report(&self, _programmed: BTreeMap<String, u32>) {}
    /// Whether an ADD that no PortRange selects yet should wait for one to appear.
    fn wait_for_ranges(&self) -> bool {
        false
    }
}

/// Standalone: PortRange YAML files, and one label per sandbox, `portiso.io/sandbox: <name>`.
pub struct FileSources {
    dir: PathBuf,
    files: RangeFiles,
    first: bool,
}

impl FileSources {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: RangeFiles::default(),
            first: true,
        }
    }
}

impl Sources for FileSources {
    fn changed_ranges(&mut self) -> Option<Vec<PortRange>> {
        let changed = self.files.reload(&self.dir);
        if changed || std::mem::take(&mut self.first) {
            Some(self.files.ranges())
        } else {
            None
        }
    }

    fn labels(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([(
            SANDBOX_LABEL.to_string(),
            name.to_string(),
        )]))
    }
}

/// Fixed ranges and labels, for unit tests.
#[cfg(test)]
pub struct StaticSources {
    pub ranges: Option<Vec<PortRange>>,
}

#[cfg(test)]
impl Sources for StaticSources {
    fn changed_ranges(&mut self) -> Option<Vec<PortRange>> {
        self.ranges.take()
    }
    fn labels(&self, _namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([(
            SANDBOX_LABEL.to_string(),
            name.to_string(),
        )]))
    }
}
