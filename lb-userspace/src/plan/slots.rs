//! Allocator of contiguous regions of the `maglev` array: every service's
//! lookup table lives at `[maglev_offset, maglev_offset + maglev_len)`.
//!
//! First fit over a free list that coalesces neighbours on free. After a
//! restart the agent rebuilds it from the regions the pinned `services`
//! map still points at.

use std::collections::BTreeMap;

/// `[offset, offset + len)` in the `maglev` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region {
    pub offset: u32,
    pub len: u32,
}

impl Region {
    pub const fn new(offset: u32, len: u32) -> Self {
        Self { offset, len }
    }

    /// One past the last slot (u64: `offset + len` may not fit a u32 when
    /// read back from corrupt maps).
    pub const fn end(self) -> u64 {
        self.offset as u64 + self.len as u64
    }

    pub const fn overlaps(self, other: Region) -> bool {
        self.len > 0
            && other.len > 0
            && (self.offset as u64) < other.end()
            && (other.offset as u64) < self.end()
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.offset, self.end())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error(
        "no free region of {requested} slots in the maglev array \
         ({free} of {capacity} slots free, largest free region {largest_free})"
    )]
    Full {
        requested: u32,
        free: u32,
        largest_free: u32,
        capacity: u32,
    },
    #[error("empty region requested")]
    ZeroLength,
    #[error("region {region} is empty or does not fit the maglev array of {capacity} slots")]
    OutOfBounds { region: Region, capacity: u32 },
    #[error("regions {a} and {b} overlap")]
    Overlap { a: Region, b: Region },
    #[error("region {region} is not allocated")]
    NotAllocated { region: Region },
}

/// Region allocator over `capacity` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAllocator {
    capacity: u32,
    /// offset -> len of free regions; never two adjacent ones (coalesced).
    free: BTreeMap<u32, u32>,
    /// offset -> len of allocated regions.
    used: BTreeMap<u32, u32>,
}

impl SlotAllocator {
    /// All `capacity` slots free.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            capacity,
            free,
            used: BTreeMap::new(),
        }
    }

    /// Adopts regions in use (read back from the maps). Rejects empty,
    /// out-of-bounds and overlapping regions.
    pub fn rebuild(
        capacity: u32,
        used: impl IntoIterator<Item = Region>,
    ) -> Result<Self, SlotError> {
        let mut sorted: Vec<Region> = used.into_iter().collect();
        sorted.sort_unstable();
        let mut used = BTreeMap::new();
        let mut free = BTreeMap::new();
        let mut cursor: u32 = 0;
        let mut prev: Option<Region> = None;
        for region in sorted {
            if region.len == 0 || region.end() > u64::from(capacity) {
                return Err(SlotError::OutOfBounds { region, capacity });
            }
            if let Some(p) = prev
                && p.overlaps(region)
            {
                return Err(SlotError::Overlap { a: p, b: region });
            }
            if region.offset > cursor {
                free.insert(cursor, region.offset - cursor);
            }
            used.insert(region.offset, region.len);
            // end() <= capacity was checked above, so it fits a u32.
            cursor = region.offset + region.len;
            prev = Some(region);
        }
        if cursor < capacity {
            free.insert(cursor, capacity - cursor);
        }
        Ok(Self {
            capacity,
            free,
            used,
        })
    }

    /// First fit: the lowest-offset free region of at least `len` slots.
    pub fn allocate(&mut self, len: u32) -> Result<Region, SlotError> {
        if len == 0 {
            return Err(SlotError::ZeroLength);
        }
        let Some((&offset, &free_len)) = self.free.iter().find(|&(_, &l)| l >= len) else {
            return Err(SlotError::Full {
                requested: len,
                free: self.free_slots(),
                largest_free: self.free.values().copied().max().unwrap_or(0),
                capacity: self.capacity,
            });
        };
        self.free.remove(&offset);
        if free_len > len {
            self.free.insert(offset + len, free_len - len);
        }
        self.used.insert(offset, len);
        Ok(Region::new(offset, len))
    }

    /// Frees exactly a region returned by [`Self::allocate`] or adopted by
    /// [`Self::rebuild`], merging it with free neighbours.
    pub fn free(&mut self, region: Region) -> Result<(), SlotError> {
        if self.used.get(&region.offset) != Some(&region.len) {
            return Err(SlotError::NotAllocated { region });
        }
        self.used.remove(&region.offset);
        let mut offset = region.offset;
        let mut len = region.len;
        if let Some((&prev_off, &prev_len)) = self.free.range(..offset).next_back()
            && prev_off + prev_len == offset
        {
            self.free.remove(&prev_off);
            offset = prev_off;
            len += prev_len;
        }
        if let Some(next_len) = self.free.remove(&(offset + len)) {
            len += next_len;
        }
        self.free.insert(offset, len);
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots in no allocated region.
    pub fn free_slots(&self) -> u32 {
        self.free.values().sum()
    }

    /// Slots in allocated regions.
    pub fn used_slots(&self) -> u32 {
        self.used.values().sum()
    }

    /// Allocated regions, by offset.
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        self.used.iter().map(|(&o, &l)| Region::new(o, l))
    }

    /// Free regions, by offset (coalesced: never two adjacent).
    pub fn free_regions(&self) -> impl Iterator<Item = Region> + '_ {
        self.free.iter().map(|(&o, &l)| Region::new(o, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(offset: u32, len: u32) -> Region {
        Region::new(offset, len)
    }

    #[test]
    fn first_fit_and_coalescing() {
        let mut s = SlotAllocator::new(100);
        assert_eq!(s.allocate(10), Ok(r(0, 10)));
        assert_eq!(s.allocate(20), Ok(r(10, 20)));
        assert_eq!(s.allocate(30), Ok(r(30, 30)));
        s.free(r(10, 20)).unwrap();
        // First fit: 5 goes into the hole at 10, 50 does not fit it.
        assert_eq!(s.allocate(5), Ok(r(10, 5)));
        assert_eq!(s.allocate(40), Ok(r(60, 40)));
        assert_eq!(s.free_regions().collect::<Vec<_>>(), vec![r(15, 15)]);
        s.free(r(0, 10)).unwrap();
        s.free(r(30, 30)).unwrap();
        s.free(r(10, 5)).unwrap();
        // 0..60 merged from both sides.
        assert_eq!(s.free_regions().collect::<Vec<_>>(), vec![r(0, 60)]);
        s.free(r(60, 40)).unwrap();
        assert_eq!(s, SlotAllocator::new(100));
    }

    #[test]
    fn full_reports_fragmentation() {
        let mut s = SlotAllocator::new(30);
        let a = s.allocate(10).unwrap();
        s.allocate(10).unwrap();
        s.free(a).unwrap();
        assert_eq!(
            s.allocate(15),
            Err(SlotError::Full {
                requested: 15,
                free: 20,
                largest_free: 10,
                capacity: 30
            })
        );
        assert_eq!(s.allocate(0), Err(SlotError::ZeroLength));
        assert!(SlotAllocator::new(0).allocate(1).is_err());
        let msg = s.allocate(15).unwrap_err().to_string();
        assert!(msg.contains("largest free region 10"), "{msg}");
    }

    #[test]
    fn free_rejects_unknown_regions() {
        let mut s = SlotAllocator::new(30);
        s.allocate(10).unwrap();
        assert_eq!(
            s.free(r(0, 5)),
            Err(SlotError::NotAllocated { region: r(0, 5) })
        );
        assert_eq!(
            s.free(r(10, 5)),
            Err(SlotError::NotAllocated { region: r(10, 5) })
        );
        s.free(r(0, 10)).unwrap();
        assert!(s.free(r(0, 10)).is_err(), "double free");
    }

    #[test]
    fn rebuild_adopts_and_validates() {
        let s = SlotAllocator::rebuild(100, [r(50, 10), r(0, 10), r(10, 5)]).unwrap();
        assert_eq!(
            s.regions().collect::<Vec<_>>(),
            vec![r(0, 10), r(10, 5), r(50, 10)]
        );
        assert_eq!(
            s.free_regions().collect::<Vec<_>>(),
            vec![r(15, 35), r(60, 40)]
        );
        assert_eq!(
            SlotAllocator::rebuild(100, [r(0, 10), r(9, 5)]),
            Err(SlotError::Overlap {
                a: r(0, 10),
                b: r(9, 5)
            })
        );
        assert_eq!(
            SlotAllocator::rebuild(100, [r(5, 10), r(5, 10)]),
            Err(SlotError::Overlap {
                a: r(5, 10),
                b: r(5, 10)
            })
        );
        assert_eq!(
            SlotAllocator::rebuild(100, [r(95, 10)]),
            Err(SlotError::OutOfBounds {
                region: r(95, 10),
                capacity: 100
            })
        );
        assert_eq!(
            SlotAllocator::rebuild(100, [r(3, 0)]),
            Err(SlotError::OutOfBounds {
                region: r(3, 0),
                capacity: 100
            })
        );
        assert!(SlotAllocator::rebuild(u32::MAX, [r(u32::MAX - 1, 2)]).is_err());
        let full = SlotAllocator::rebuild(10, [r(0, 10)]).unwrap();
        assert_eq!(full.free_slots(), 0);
    }

    #[test]
    fn overlaps_is_symmetric_and_exact() {
        assert!(r(0, 10).overlaps(r(9, 1)));
        assert!(!r(0, 10).overlaps(r(10, 1)));
        assert!(!r(10, 1).overlaps(r(0, 10)));
        assert!(r(5, 1).overlaps(r(0, 10)));
        assert!(!r(5, 0).overlaps(r(0, 10)));
    }

    fn check_invariants(s: &SlotAllocator) -> Result<(), TestCaseError> {
        let mut all: Vec<(Region, bool)> = s
            .regions()
            .map(|r| (r, true))
            .chain(s.free_regions().map(|r| (r, false)))
            .collect();
        all.sort_unstable();
        // Regions tile [0, capacity) exactly: no overlap, no gap.
        let mut cursor = 0u64;
        let mut prev_free = false;
        for (region, used) in all {
            prop_assert!(region.len > 0);
            prop_assert_eq!(u64::from(region.offset), cursor);
            prop_assert!(used || !prev_free, "adjacent free regions not coalesced");
            prev_free = !used;
            cursor = region.end();
        }
        prop_assert_eq!(cursor, u64::from(s.capacity()));
        prop_assert_eq!(s.free_slots() + s.used_slots(), s.capacity());
        Ok(())
    }

    proptest! {
        #[test]
        fn regions_never_overlap(ops in proptest::collection::vec((any::<bool>(), 1u32..40, any::<usize>()), 0..150)) {
            let mut s = SlotAllocator::new(500);
            let mut live: Vec<Region> = Vec::new();
            for (alloc, len, pick) in ops {
                if alloc || live.is_empty() {
                    let largest = s.free_regions().map(|r| r.len).max().unwrap_or(0);
                    match s.allocate(len) {
                        Ok(region) => {
                            prop_assert!(len <= largest);
                            prop_assert_eq!(region.len, len);
                            // Never overlaps a live region.
                            prop_assert!(live.iter().all(|l| !l.overlaps(region)));
                            live.push(region);
                        }
                        Err(SlotError::Full { .. }) => prop_assert!(len > largest),
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                } else {
                    let region = live.swap_remove(pick % live.len());
                    s.free(region).unwrap();
                }
                check_invariants(&s)?;
                let rebuilt = SlotAllocator::rebuild(500, live.iter().copied()).unwrap();
                prop_assert_eq!(&rebuilt, &s);
            }
        }

        #[test]
        fn first_fit_picks_lowest_offset(holes in proptest::collection::vec(1u32..20, 1..10), len in 1u32..20) {
            // Alternate used/free regions, then check the choice.
            let mut s = SlotAllocator::new(1000);
            let mut to_free = Vec::new();
            for h in &holes {
                to_free.push(s.allocate(*h).unwrap());
                s.allocate(1).unwrap();
            }
            for region in to_free {
                s.free(region).unwrap();
            }
            let expected = s.free_regions().find(|r| r.len >= len).map(|r| r.offset);
            prop_assert_eq!(s.allocate(len).ok().map(|r| r.offset), expected);
        }
    }
}
