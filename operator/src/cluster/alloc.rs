//! Aligned power-of-two port blocks from a pool: an aligned block of 2^k ports is exactly one
//! value/mask match, so an allocated span costs one flow per direction.

use crate::config::parse_port_span;

/// The ports the operator may hand out (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub start: u16,
    pub end: u16,
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (start, end) = parse_port_span(s)?;
        if start == 0 {
            return Err(format!(
                "{s:?} includes port 0: start the pool at 1 or above"
            ));
        }
        Ok(Pool { start, end })
    }
}

/// The lowest aligned block of `size` ports (a power of two) inside `pool` that shares no port
/// with `taken` (inclusive spans). `None` if the pool has no such block left.
pub fn allocate(size: u32, pool: Pool, taken: &[(u16, u16)]) -> Option<(u16, u16)> {
    if !size.is_power_of_two() || size > 32768 {
        return None;
    }
    let mut taken: Vec<(u32, u32)> = taken.iter().map(|&(a, b)| (a as u32, b as u32)).collect();
    taken.sort();
    // First aligned start at or after the pool's start.
    let mut start = (pool.start as u32).div_ceil(size) * size;
    while start + size - 1 <= pool.end as u32 {
        let end = start + size - 1;
        match taken.iter().find(|&&(a, b)| a <= end && start <= b) {
            None => return Some((start as u16, end as u16)),
            // Skip past the clash to the next aligned start.
            Some(&(_, b)) => start = (b + 1).div_ceil(size) * size,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POOL: Pool = Pool {
        start: 20000,
        end: 29999,
    };

    #[test]
    fn blocks_are_aligned_and_skip_taken_ports() {
        assert_eq!(allocate(64, POOL, &[]), Some((20032, 20095)));
        assert_eq!(allocate(64, POOL, &[(20032, 20040)]), Some((20096, 20159)));
        assert_eq!(allocate(1, POOL, &[(20000, 20000)]), Some((20001, 20001)));
        assert_eq!(
            allocate(16384, POOL, &[]),
            None,
            "no aligned 16384 block fits in 20000-29999"
        );
        assert_eq!(allocate(3, POOL, &[]), None, "not a power of two");
        assert_eq!(allocate(8, Pool { start: 1, end: 7 }, &[]), None);
    }

    proptest! {
        #[test]
        fn an_allocation_is_aligned_in_the_pool_and_free_and_the_lowest(
            k in 0u32..12,
            taken in proptest::collection::vec((20000u16..30000, 0u16..300), 0..20),
        ) {
            let size = 1u32 << k;
            let taken: Vec<(u16, u16)> = taken.iter().map(|&(a, l)| (a, a.saturating_add(l))).collect();
            let free = |s: u32| (s..s + size).all(|p| !taken.iter().any(|&(a, b)| a as u32 <= p && p <= b as u32));
            let brute = (POOL.start as u32..=POOL.end as u32)
                .filter(|s| s % size == 0 && s + size - 1 <= POOL.end as u32)
                .find(|&s| free(s));
            let got = allocate(size, POOL, &taken).map(|(s, e)| {
                prop_assert_eq!(e as u32 - s as u32 + 1, size);
                Ok(s as u32)
            }).transpose()?;
            prop_assert_eq!(got, brute);
        }
    }
}
