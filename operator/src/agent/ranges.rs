//! Standalone mode's source of PortRanges: the YAML files in `rangesDir`, re-read when they
//! change. A file that stops parsing keeps its last good contents (and the error is logged),
//! so a typo never tears down the traffic of sandboxes that were fine.

use crate::model::{parse_portranges_yaml, PortRange};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct RangeFiles {
    /// Per file: its last text read, and the ranges of its last text that parsed.
    files: BTreeMap<PathBuf, (String, Vec<PortRange>)>,
    /// The current error of each file that does not parse.
    pub errors: BTreeMap<PathBuf, String>,
}

impl RangeFiles {
    /// Re-reads the directory. Returns whether the set of ranges changed.
    pub fn reload(&mut self, dir: &Path) -> bool {
        let mut seen = Vec::new();
        let mut changed = false;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read rangesDir");
                return false;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
            .collect();
        paths.sort();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            seen.push(path.clone());
            if self.files.get(&path).is_some_and(|(t, _)| *t == text) {
                continue;
            }
            match parse_portranges_yaml(&text, &path.display().to_string()) {
                Ok(ranges) => {
                    tracing::info!(file = %path.display(), count = ranges.len(), "PortRanges loaded");
                    self.errors.remove(&path);
                    self.files.insert(path, (text, ranges));
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "PortRange file refused; keeping its last good contents");
                    self.errors.insert(path.clone(), e.to_string());
                    // Remember the text so the same broken file is not re-reported every poll.
                    let last_good = self.files.remove(&path).map(|(_, r)| r).unwrap_or_default();
                    self.files.insert(path, (text, last_good));
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        self.errors.retain(|p, _| seen.contains(p));
        changed || before != self.files.len()
    }

    pub fn ranges(&self) -> Vec<PortRange> {
        self.files
            .values()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }
}
