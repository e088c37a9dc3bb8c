//! Deciding which `PortRange`s a node honours when they claim the same ports: first come,
//! first served, so that creating a new range can never take ports from one already in use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::overlap::{expand_entries, overlapping_pairs, reserved_hits};
use super::portrange::{ObjectKey, PortRange};
use super::validate::{describe, validate};

/// Whether a node honours a `PortRange`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Refused whole; `reason` says why and what to change, on one line.
    Refused {
        reason: String,
    },
}

/// The verdict on one input range, with the range's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeVerdict {
    pub key: ObjectKey,
    pub verdict: Verdict,
}

impl fmt::Display for RangeVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Accepted => write!(f, "{}: accepted", self.key),
            Verdict::Refused { reason } => write!(f, "{}: refused: {reason}", self.key),
        }
    }
}

/// How many conflicts a refusal spells out before summarising the rest.
const MAX_LISTED_CONFLICTS: usize = 5;

/// One verdict per range of `ranges`, in the same order.
///
/// A range is refused if it fails [`validate`], if another input range has the same
/// `namespace/name` (all of them are refused: none can be told apart), if any span touches a
/// `reserved` host span (which holds for both protocols and every uplink), or if it shares a
/// port on an uplink and protocol with a range accepted before it. Ranges are considered
/// oldest first by `metadata.creationTimestamp` (ranges without one, e.g. read from a file,
/// after all that have one), then by `namespace/name`. Uplinks are resolved as in
/// [`expand_entries`]. The verdicts depend only on the ranges, not on their order in the slice.
pub fn arbitrate(
    ranges: &[PortRange],
    node_uplinks: &[String],
    reserved: &[(u16, u16)],
) -> Vec<RangeVerdict> {
    let keys: Vec<ObjectKey> = ranges.iter().map(ObjectKey::of).collect();
    let mut key_counts: BTreeMap<&ObjectKey, usize> = BTreeMap::new();
    for key in &keys {
        *key_counts.entry(key).or_default() += 1;
    }

    let mut refusals: Vec<Option<String>> = ranges
        .iter()
        .zip(&keys)
        .map(|(range, key)| match key_counts[key] {
            1 => validate(range).err().map(|error| error.to_string()),
            count => Some(format!(
                "{count} PortRanges in the input are named {key}: keep one, or rename the others"
            )),
        })
        .collect();

    let entries = expand_entries(ranges, node_uplinks);
    // For each range: (own entry, other entry) for every conflicting pair.
    let mut conflicts_of: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ranges.len()];
    for (a, b) in overlapping_pairs(&entries) {
        conflicts_of[entries[a].owner].push((a, b));
        conflicts_of[entries[b].owner].push((b, a));
    }
    // For each range: the (span index, reserved index) pairs that touch, once per span.
    let mut reserved_of: Vec<BTreeSet<(usize, usize)>> = vec![BTreeSet::new(); ranges.len()];
    for (entry, reserved_index) in reserved_hits(&entries, reserved) {
        reserved_of[entries[entry].owner].insert((entries[entry].span, reserved_index));
    }

    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by(|&a, &b| {
        let created = |i: usize| {
            let timestamp = ranges[i].metadata.creation_timestamp.as_ref();
            (timestamp.is_none(), timestamp)
        };
        (created(a), &keys[a]).cmp(&(created(b), &keys[b]))
    });

    let mut accepted = vec![false; ranges.len()];
    for index in order {
        if refusals[index].is_some() {
            continue;
        }
        let range = &ranges[index];
        let mut reasons = Vec::new();
        for &(span, reserved_index) in &reserved_of[index] {
            let (first, last) = reserved[reserved_index];
            reasons.push(format!(
                "spec.ports[{span}] ({}) touches the host's reserved {}: use ports outside them",
                describe(&range.spec.ports[span]),
                port_list(first.min(last), first.max(last)),
            ));
        }
        // Conflicts grouped so that one clash seen on several uplinks is told once.
        let mut clashes: BTreeMap<(usize, &ObjectKey, usize, String, String), BTreeSet<&str>> =
            BTreeMap::new();
        for &(own, other) in &conflicts_of[index] {
            let (own, other) = (&entries[own], &entries[other]);
            if !accepted[other.owner] {
                continue;
            }
            let shared = format!(
                "{} {}",
                own.protocol,
                port_list(own.start.max(other.start), own.end.min(other.end))
            );
            clashes
                .entry((
                    own.span,
                    &keys[other.owner],
                    other.span,
                    describe(&ranges[other.owner].spec.ports[other.span]),
                    shared,
                ))
                .or_default()
                .insert(&own.uplink);
        }
        let clash_count = clashes.len();
        for ((span, other_key, other_span, other_ports, shared), uplinks) in
            clashes.into_iter().take(MAX_LISTED_CONFLICTS)
        {
            let uplinks: Vec<&str> = uplinks.into_iter().collect();
            reasons.push(format!(
                "spec.ports[{span}] ({}) overlaps {other_key} spec.ports[{other_span}] ({}) on {} {}: \
                 {other_key}, accepted earlier, already owns {shared}; pick other ports",
                describe(&range.spec.ports[span]),
                other_ports,
                if uplinks.len() == 1 { "uplink" } else { "uplinks" },
                uplinks.join(", "),
            ));
        }
        if clash_count > MAX_LISTED_CONFLICTS {
            reasons.push(format!(
                "and {} more overlaps",
                clash_count - MAX_LISTED_CONFLICTS
            ));
        }
        if reasons.is_empty() {
            accepted[index] = true;
        } else {
            refusals[index] = Some(reasons.join("; "));
        }
    }

    keys.into_iter()
        .zip(refusals)
        .map(|(key, refusal)| RangeVerdict {
            key,
            verdict: match refusal {
                None => Verdict::Accepted,
                Some(reason) => Verdict::Refused { reason },
            },
        })
        .collect()
}

/// `ports 80` or `ports 10010-10015`.
fn port_list(first: u16, last: u16) -> String {
    if first == last {
        format!("port {first}")
    } else {
        format!("ports {first}-{last}")
    }
}
