//! Which `PortRange`s claim the same ports: each range expands to one entry per (uplink, span),
//! and a sweep over entries sorted by start finds every overlapping pair in
//! O(n log n + k) for n entries and k reported pairs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::portrange::{PortRange, PortSpan, Protocol};

/// One span of one `PortRange` on one uplink.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortEntry {
    /// Index of the `PortRange` in the slice the entries were expanded from.
    pub owner: usize,
    /// Index of the span in that range's `spec.ports`.
    pub span: usize,
    pub uplink: String,
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

/// The span's explicit ports, or `None` if it has none (a `size` span), or they are out of
/// 1-65535 or reversed.
pub fn valid_ports(span: &PortSpan) -> Option<(u16, u16)> {
    let start = u16::try_from(span.start?).ok().filter(|&p| p != 0)?;
    let end = u16::try_from(span.end?).ok().filter(|&p| p != 0)?;
    (start <= end).then_some((start, end))
}

/// The ports a range owns, span by span: explicit ones, and `size` spans as the operator
/// allocated them in the status (a size span without an allocation owns nothing yet).
/// Returns `(index in spec.ports, protocol, start, end)`.
pub fn owned_spans(range: &PortRange) -> Vec<(usize, Protocol, u16, u16)> {
    let allocations = range
        .status
        .as_ref()
        .map(|s| &s.allocations[..])
        .unwrap_or(&[]);
    range
        .spec
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, span)| {
            let (start, end) = match valid_ports(span) {
                Some(p) => p,
                None if span.size.is_some() => {
                    let a = allocations.iter().find(|a| a.index as usize == i)?;
                    let start = u16::try_from(a.start).ok().filter(|&p| p != 0)?;
                    let end = u16::try_from(a.end).ok()?;
                    (start <= end).then_some((start, end))?
                }
                None => return None,
            };
            Some((i, span.protocol, start, end))
        })
        .collect()
}

/// Entries of `ranges`: a range with no `uplinks` claims its spans on every one of
/// `node_uplinks`; one that names uplinks claims them there (named uplinks that the node lacks
/// are kept, so that two ranges naming the same absent uplink still conflict — the verdict
/// must not depend on which node computes it more than necessary). Invalid spans
/// (see [`valid_ports`]) are skipped: `validate` refuses their range anyway.
pub fn expand_entries(ranges: &[PortRange], node_uplinks: &[String]) -> Vec<PortEntry> {
    let mut entries = Vec::new();
    for (owner, range) in ranges.iter().enumerate() {
        let uplinks = if range.spec.uplinks.is_empty() {
            node_uplinks
        } else {
            &range.spec.uplinks[..]
        };
        for (span_index, protocol, start, end) in owned_spans(range) {
            for uplink in uplinks {
                entries.push(PortEntry {
                    owner,
                    span: span_index,
                    uplink: uplink.clone(),
                    protocol,
                    start,
                    end,
                });
            }
        }
    }
    entries
}

/// Every pair `(i, j)`, `i < j`, of indices into `intervals` (inclusive `(start, end)`) that
/// share at least one port, in no particular order.
pub fn overlapping_interval_pairs(intervals: &[(u16, u16)]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by_key(|&i| intervals[i]);
    let mut pairs = Vec::new();
    // Intervals begun so far that may still overlap what comes; min-heap by end.
    let mut active: BinaryHeap<Reverse<(u16, usize)>> = BinaryHeap::new();
    for index in order {
        let (start, end) = intervals[index];
        while active
            .peek()
            .is_some_and(|Reverse((active_end, _))| *active_end < start)
        {
            active.pop();
        }
        // Every interval left began no later than `start` and ends at or after it.
        pairs.extend(
            active
                .iter()
                .map(|&Reverse((_, other))| (other.min(index), other.max(index))),
        );
        active.push(Reverse((end, index)));
    }
    pairs
}

/// Every pair `(i, j)` of indices into `left` and `right` whose intervals share a port.
pub fn overlapping_interval_pairs_between(
    left: &[(u16, u16)],
    right: &[(u16, u16)],
) -> Vec<(usize, usize)> {
    // Sweep both lists merged by start; a pair is reported when its later-starting member
    // arrives, against the other list's active intervals. On equal starts `right` goes first,
    // so each pair is seen exactly once.
    let mut events: Vec<(u16, bool, usize)> = left
        .iter()
        .enumerate()
        .map(|(i, &(start, _))| (start, true, i))
        .chain(
            right
                .iter()
                .enumerate()
                .map(|(j, &(start, _))| (start, false, j)),
        )
        .collect();
    events.sort_unstable();
    let mut active_left: BinaryHeap<Reverse<(u16, usize)>> = BinaryHeap::new();
    let mut active_right: BinaryHeap<Reverse<(u16, usize)>> = BinaryHeap::new();
    let mut pairs = Vec::new();
    for (start, is_left, index) in events {
        let (own_end, others, own_active) = if is_left {
            (left[index].1, &mut active_right, &mut active_left)
        } else {
            (right[index].1, &mut active_left, &mut active_right)
        };
        while others.peek().is_some_and(|Reverse((end, _))| *end < start) {
            others.pop();
        }
        pairs.extend(others.iter().map(|Reverse((_, other))| {
            if is_left {
                (index, *other)
            } else {
                (*other, index)
            }
        }));
        own_active.push(Reverse((own_end, index)));
    }
    pairs
}

/// Every pair `(i, j)`, `i < j`, of indices into `entries` whose entries belong to different
/// ranges, sit on the same uplink and protocol, and share a port.
pub fn overlapping_pairs(entries: &[PortEntry]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        (&a.uplink, a.protocol).cmp(&(&b.uplink, b.protocol))
    });
    let mut pairs = Vec::new();
    for group in order.chunk_by(|&a, &b| {
        entries[a].uplink == entries[b].uplink && entries[a].protocol == entries[b].protocol
    }) {
        let intervals: Vec<(u16, u16)> = group
            .iter()
            .map(|&i| (entries[i].start, entries[i].end))
            .collect();
        for (a, b) in overlapping_interval_pairs(&intervals) {
            let (a, b) = (group[a], group[b]);
            if entries[a].owner != entries[b].owner {
                pairs.push((a.min(b), a.max(b)));
            }
        }
    }
    pairs
}

/// Every pair `(entry index, reserved index)` where the entry shares a port with a reserved
/// host span; reserved spans apply to every uplink and both protocols.
pub fn reserved_hits(entries: &[PortEntry], reserved: &[(u16, u16)]) -> Vec<(usize, usize)> {
    let intervals: Vec<(u16, u16)> = entries.iter().map(|e| (e.start, e.end)).collect();
    // A reversed reserved span would reserve nothing; treat it as written in either order.
    let reserved: Vec<(u16, u16)> = reserved
        .iter()
        .map(|&(a, b)| (a.min(b), a.max(b)))
        .collect();
    overlapping_interval_pairs_between(&intervals, &reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn shares_port(a: (u16, u16), b: (u16, u16)) -> bool {
        a.0 <= b.1 && b.0 <= a.1
    }

    fn interval() -> impl Strategy<Value = (u16, u16)> {
        // Small port space so that overlaps are common.
        (0u16..200, 0u16..40).prop_map(|(start, len)| (start, start + len))
    }

    fn entry() -> impl Strategy<Value = PortEntry> {
        (0usize..5, interval(), prop::bool::ANY, 0usize..3).prop_map(
            |(owner, (start, end), tcp, uplink)| PortEntry {
                owner,
                span: 0,
                uplink: format!("eth{uplink}"),
                protocol: if tcp { Protocol::Tcp } else { Protocol::Udp },
                start,
                end,
            },
        )
    }

    #[test]
    fn touching_ends_overlap_and_adjacent_spans_do_not() {
        let pairs = overlapping_interval_pairs(&[(10, 20), (20, 30), (31, 40)]);
        assert_eq!(pairs, vec![(0, 1)]);
    }

    #[test]
    fn entries_of_one_owner_or_different_uplink_or_protocol_never_pair() {
        let base = PortEntry {
            owner: 0,
            span: 0,
            uplink: "eth0".into(),
            protocol: Protocol::Tcp,
            start: 10,
            end: 20,
        };
        let same_owner = PortEntry {
            span: 1,
            ..base.clone()
        };
        let other_uplink = PortEntry {
            owner: 1,
            uplink: "eth1".into(),
            ..base.clone()
        };
        let other_protocol = PortEntry {
            owner: 2,
            protocol: Protocol::Udp,
            ..base.clone()
        };
        let conflicting = PortEntry {
            owner: 3,
            start: 20,
            end: 25,
            ..base.clone()
        };
        let pairs =
            overlapping_pairs(&[base, same_owner, other_uplink, other_protocol, conflicting]);
        let pairs: BTreeSet<_> = pairs.into_iter().collect();
        assert_eq!(pairs, BTreeSet::from([(0, 4), (1, 4)]));
    }

    proptest! {
        #[test]
        fn interval_pairs_match_brute_force(intervals in prop::collection::vec(interval(), 0..40)) {
            let found: Vec<_> = overlapping_interval_pairs(&intervals);
            let unique: BTreeSet<_> = found.iter().copied().collect();
            prop_assert_eq!(unique.len(), found.len(), "a pair was reported twice");
            let mut brute = BTreeSet::new();
            for i in 0..intervals.len() {
                for j in i + 1..intervals.len() {
                    if shares_port(intervals[i], intervals[j]) {
                        brute.insert((i, j));
                    }
                }
            }
            prop_assert_eq!(unique, brute);
        }

        #[test]
        fn entry_pairs_match_brute_force(entries in prop::collection::vec(entry(), 0..40)) {
            let found = overlapping_pairs(&entries);
            let unique: BTreeSet<_> = found.iter().copied().collect();
            prop_assert_eq!(unique.len(), found.len(), "a pair was reported twice");
            let mut brute = BTreeSet::new();
            for i in 0..entries.len() {
                for j in i + 1..entries.len() {
                    let (a, b) = (&entries[i], &entries[j]);
                    if a.owner != b.owner && a.uplink == b.uplink && a.protocol == b.protocol
                        && shares_port((a.start, a.end), (b.start, b.end))
                    {
                        brute.insert((i, j));
                    }
                }
            }
            prop_assert_eq!(unique, brute);
        }

        #[test]
        fn reserved_hits_match_brute_force(
            entries in prop::collection::vec(entry(), 0..30),
            reserved in prop::collection::vec(any::<(u8, u8)>(), 0..6),
        ) {
            let reserved: Vec<(u16, u16)> = reserved.into_iter().map(|(a, b)| (u16::from(a), u16::from(b))).collect();
            let found = reserved_hits(&entries, &reserved);
            let unique: BTreeSet<_> = found.iter().copied().collect();
            prop_assert_eq!(unique.len(), found.len(), "a pair was reported twice");
            let mut brute = BTreeSet::new();
            for (i, e) in entries.iter().enumerate() {
                for (j, &(a, b)) in reserved.iter().enumerate() {
                    if shares_port((e.start, e.end), (a.min(b), a.max(b))) {
                        brute.insert((i, j));
                    }
                }
            }
            prop_assert_eq!(unique, brute);
        }
    }
}
