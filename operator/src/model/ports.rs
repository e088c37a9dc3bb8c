//! Port spans as OpenFlow matches: OVS matches `tp_dst` by value and bit mask, so a span of
//! ports becomes a set of aligned power-of-two blocks ("prefix blocks").

use std::fmt;

/// The ports `p` with `p & mask == value`, where `mask` is a run of leading one bits and
/// `value` has no bits outside `mask`: an aligned block of `2^(16 - mask.count_ones())` ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBlock {
    pub value: u16,
    pub mask: u16,
}

impl PortBlock {
    /// Whether `port` falls in this block.
    pub fn contains(&self, port: u16) -> bool {
        port & self.mask == self.value
    }

    /// Lowest port of the block.
    pub fn first(&self) -> u16 {
        self.value
    }

    /// Highest port of the block.
    pub fn last(&self) -> u16 {
        self.value | !self.mask
    }

    /// Number of ports in the block (1 to 65536).
    pub fn port_count(&self) -> u32 {
        u32::from(!self.mask) + 1
    }
}

/// Written as `ovs-ofctl` takes it after `tp_dst=` (and as `dump-flows` prints it back): a
/// single port (full mask) as plain decimal, `10000`; any other block as hex value/mask,
/// `0x2710/0xfff0`.
impl fmt::Display for PortBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u16::MAX {
            write!(f, "{}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// The fewest prefix blocks whose union is exactly `start..=end`, in ascending port order;
/// empty when `start > end`. Never more than 30 blocks (the worst case is `1..=65534`).
///
/// Greedy from the low end, taking at each port the largest block aligned there that still
/// fits, is optimal: prefix blocks nest or are disjoint, so any cover contains a block starting
/// at the current port, and no block starting there can be larger than the greedy one.
pub fn cover(start: u16, end: u16) -> Vec<PortBlock> {
    cover_iter(start, end).collect()
}

/// The blocks of `cover`, one at a time: for callers that walk many spans and need no `Vec`
/// of each (the flow compiler).
pub fn cover_iter(start: u16, end: u16) -> impl Iterator<Item = PortBlock> {
    // u32 so that stepping past 65535 ends the walk instead of wrapping.
    let end = u32::from(end);
    let mut next = u32::from(start);
    std::iter::from_fn(move || {
        if next > end {
            return None;
        }
        // Largest block aligned at `next` (2^trailing_zeros, all 65536 ports at 0)...
        let aligned = if next == 0 {
            1 << 16
        } else {
            1u32 << next.trailing_zeros()
        };
        // ...shrunk until it ends within the span.
        let mut size = aligned;
        while next + size - 1 > end {
            size >>= 1;
        }
        // size <= 65536 and next < 65536, so both fit in u16 after the subtraction/mask.
        let mask = (!(size - 1) & 0xffff) as u16;
        let block = PortBlock {
            value: next as u16,
            mask,
        };
        next += size;
        Some(block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The optimum by dynamic programming over ports, independent of the greedy argument:
    /// `fewest[i]` is the fewest blocks that exactly tile `start..start+i` with aligned
    /// power-of-two blocks inside the span (a cover that overlaps itself never helps, since
    /// prefix blocks nest: dropping the inner block keeps the union).
    fn optimum_by_dp(start: u16, end: u16) -> usize {
        let start = u32::from(start);
        let len = (u32::from(end) - start + 1) as usize;
        let mut fewest = vec![usize::MAX; len + 1];
        fewest[0] = 0;
        for i in 0..len {
            if fewest[i] == usize::MAX {
                continue;
            }
            let port = start + i as u32;
            for bits in 0..=16u32 {
                let size = 1usize << bits;
                if !port.is_multiple_of(size as u32) || i + size > len {
                    continue;
                }
                fewest[i + size] = fewest[i + size].min(fewest[i] + 1);
            }
        }
        fewest[len]
    }

    fn assert_exact_cover(start: u16, end: u16, blocks: &[PortBlock]) {
        for block in blocks {
            assert_eq!(
                block.value & !block.mask,
                0,
                "value has bits outside the mask: {block:?}"
            );
            assert_eq!(
                block.mask.leading_ones() + block.mask.trailing_zeros(),
                16,
                "mask is not a prefix: {block:?}"
            );
        }
        for port in 0..=u16::MAX {
            let hits = blocks.iter().filter(|b| b.contains(port)).count();
            let expected = usize::from((start..=end).contains(&port));
            assert_eq!(
                hits, expected,
                "port {port} matched by {hits} blocks for {start}-{end}: {blocks:?}"
            );
        }
    }

    #[test]
    fn display_is_what_ovs_ofctl_takes() {
        assert_eq!(
            PortBlock {
                value: 0x2710,
                mask: 0xfff0
            }
            .to_string(),
            "0x2710/0xfff0"
        );
        assert_eq!(
            PortBlock {
                value: 10000,
                mask: 0xffff
            }
            .to_string(),
            "10000"
        );
        assert_eq!(PortBlock { value: 0, mask: 0 }.to_string(), "0x0/0x0");
    }

    #[test]
    fn known_covers() {
        assert_eq!(
            cover(10000, 10015),
            vec![PortBlock {
                value: 10000,
                mask: 0xfff0
            }]
        );
        assert_eq!(
            cover(80, 80),
            vec![PortBlock {
                value: 80,
                mask: 0xffff
            }]
        );
        let text: Vec<String> = cover(1000, 1999).iter().map(|b| b.to_string()).collect();
        assert_eq!(
            text,
            [
                "0x3e8/0xfff8",
                "0x3f0/0xfff0",
                "0x400/0xfe00",
                "0x600/0xff00",
                "0x700/0xff80",
                "0x780/0xffc0",
                "0x7c0/0xfff0"
            ]
        );
        assert_eq!(cover(0, u16::MAX), vec![PortBlock { value: 0, mask: 0 }]);
        assert_eq!(cover(2, 1), vec![]);
    }

    #[test]
    fn worst_case_is_thirty_blocks() {
        let blocks = cover(1, 65534);
        assert_eq!(blocks.len(), 30);
        assert_eq!(optimum_by_dp(1, 65534), 30);
        assert_exact_cover(1, 65534, &blocks);
    }

    #[test]
    fn block_bounds() {
        let block = PortBlock {
            value: 0x2710,
            mask: 0xfff0,
        };
        assert_eq!(
            (block.first(), block.last(), block.port_count()),
            (10000, 10015, 16)
        );
        assert_eq!(PortBlock { value: 0, mask: 0 }.port_count(), 65536);
    }

    fn span() -> impl Strategy<Value = (u16, u16)> {
        prop_oneof![
            any::<(u16, u16)>().prop_map(|(a, b)| (a.min(b), a.max(b))),
            (any::<u16>(), 0u16..300).prop_map(|(a, len)| (a, a.saturating_add(len))),
        ]
    }

    proptest! {
        #[test]
        fn cover_is_exact_minimal_and_bounded((start, end) in span()) {
            let blocks = cover(start, end);
            assert_exact_cover(start, end, &blocks);
            prop_assert!(blocks.len() <= 30);
            prop_assert_eq!(blocks.len(), optimum_by_dp(start, end));
            prop_assert!(blocks.windows(2).all(|w| w[0].last() < w[1].first()), "not ascending");
        }
    }
}
