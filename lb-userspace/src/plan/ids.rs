//! Stable small-integer ids (backend ids index the `backends` array, service
//! ids index `service_stats` and key `affinity`/`src_ranges`).
//!
//! Allocation always returns the lowest free id so the arrays stay dense.
//! The allocator is rebuilt from the ids found in the pinned maps after a
//! restart, so ids survive agent restarts.

use std::collections::BTreeSet;

/// Why an id could not be allocated, adopted or freed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("all {max} ids are in use")]
    Exhausted { max: u32 },
    #[error("id {id} is out of range (ids are < {max})")]
    OutOfRange { id: u32, max: u32 },
    #[error("id {id} is listed twice")]
    Duplicate { id: u32 },
    #[error("id {id} is not allocated")]
    NotAllocated { id: u32 },
}

/// Allocator of ids in `0..max`, lowest free id first.
///
/// Ids at or above `high` are all free; `holes` are the free ids below it.
/// Both operations are `O(log n)` instead of a linear scan, which matters
/// for a first plan of ~260k backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdAllocator {
    max: u32,
    high: u32,
    holes: BTreeSet<u32>,
}

impl IdAllocator {
    /// An allocator with every id in `0..max` free.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            high: 0,
            holes: BTreeSet::new(),
        }
    }

    /// Adopts the ids in use (e.g. read back from the maps after a restart).
    pub fn rebuild(max: u32, used: impl IntoIterator<Item = u32>) -> Result<Self, IdError> {
        let mut used_set = BTreeSet::new();
        for id in used {
            if id >= max {
                return Err(IdError::OutOfRange { id, max });
            }
            if !used_set.insert(id) {
                return Err(IdError::Duplicate { id });
            }
        }
        let high = used_set.last().map_or(0, |&last| last + 1);
        let holes = (0..high).filter(|id| !used_set.contains(id)).collect();
        Ok(Self { max, high, holes })
    }

    /// Takes the lowest free id.
    pub fn allocate(&mut self) -> Result<u32, IdError> {
        if let Some(id) = self.holes.pop_first() {
            return Ok(id);
        }
        if self.high >= self.max {
            return Err(IdError::Exhausted { max: self.max });
        }
        self.high += 1;
        Ok(self.high - 1)
    }

    /// Marks a specific id as used (adopting one id at a time).
    pub fn reserve(&mut self, id: u32) -> Result<(), IdError> {
        if id >= self.max {
            return Err(IdError::OutOfRange { id, max: self.max });
        }
        if id >= self.high {
            self.holes.extend(self.high..id);
            self.high = id + 1;
            Ok(())
        } else if self.holes.remove(&id) {
            Ok(())
        } else {
            Err(IdError::Duplicate { id })
        }
    }

    /// Returns an id to the pool.
    pub fn free(&mut self, id: u32) -> Result<(), IdError> {
        if !self.contains(id) {
            return Err(IdError::NotAllocated { id });
        }
        self.holes.insert(id);
        // Keep `high` tight so `holes` only holds ids below the highest in use.
        while self.high > 0 && self.holes.remove(&(self.high - 1)) {
            self.high -= 1;
        }
        Ok(())
    }

    /// Whether `id` is allocated.
    pub fn contains(&self, id: u32) -> bool {
        id < self.high && !self.holes.contains(&id)
    }

    /// Number of ids in use.
    pub fn len(&self) -> usize {
        // `holes` only holds ids below `high`, so this cannot underflow.
        self.high as usize - self.holes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exclusive upper bound of ids.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The ids in use, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.high).filter(|id| !self.holes.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocates_lowest_free_first() {
        let mut ids = IdAllocator::new(10);
        assert_eq!(ids.allocate(), Ok(0));
        assert_eq!(ids.allocate(), Ok(1));
        assert_eq!(ids.allocate(), Ok(2));
        ids.free(1).unwrap();
        assert_eq!(ids.allocate(), Ok(1));
        assert_eq!(ids.allocate(), Ok(3));
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn exhausts_at_max() {
        let mut ids = IdAllocator::new(2);
        assert_eq!(ids.allocate(), Ok(0));
        assert_eq!(ids.allocate(), Ok(1));
        assert_eq!(ids.allocate(), Err(IdError::Exhausted { max: 2 }));
        ids.free(0).unwrap();
        assert_eq!(ids.allocate(), Ok(0));
        assert_eq!(
            IdAllocator::new(0).allocate(),
            Err(IdError::Exhausted { max: 0 })
        );
    }

    #[test]
    fn rebuild_fills_holes_first() {
        let mut ids = IdAllocator::rebuild(100, [5, 2, 9]).unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![2, 5, 9]);
        let got: Vec<u32> = (0..8).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 3, 4, 6, 7, 8, 10]);
    }

    #[test]
    fn rebuild_rejects_bad_input() {
        assert_eq!(
            IdAllocator::rebuild(10, [1, 10]),
            Err(IdError::OutOfRange { id: 10, max: 10 })
        );
        assert_eq!(
            IdAllocator::rebuild(10, [3, 1, 3]),
            Err(IdError::Duplicate { id: 3 })
        );
        assert!(IdAllocator::rebuild(10, []).unwrap().is_empty());
    }

    #[test]
    fn free_and_reserve_errors() {
        let mut ids = IdAllocator::new(10);
        assert_eq!(ids.free(0), Err(IdError::NotAllocated { id: 0 }));
        ids.reserve(4).unwrap();
        assert_eq!(ids.reserve(4), Err(IdError::Duplicate { id: 4 }));
        assert_eq!(
            ids.reserve(10),
            Err(IdError::OutOfRange { id: 10, max: 10 })
        );
        assert_eq!(ids.free(3), Err(IdError::NotAllocated { id: 3 }));
        assert_eq!(ids.allocate(), Ok(0));
        ids.free(4).unwrap();
        ids.free(0).unwrap();
        assert!(ids.is_empty());
        assert_eq!(
            ids,
            IdAllocator::new(10),
            "freeing everything restores the initial state"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        Free(usize),
        Reserve(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Allocate),
            2 => any::<usize>().prop_map(Op::Free),
            1 => (0u32..70).prop_map(Op::Reserve),
        ]
    }

    proptest! {
        /// Against a plain set model: allocate returns the lowest free id,
        /// the allocator and the model agree after every operation, and a
        /// rebuild from the ids in use gives back an equivalent allocator.
        #[test]
        fn matches_set_model(ops in proptest::collection::vec(op(), 0..200)) {
            const MAX: u32 = 64;
            let mut ids = IdAllocator::new(MAX);
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Allocate => {
                        let expected = (0..MAX).find(|id| !model.contains(id));
                        match ids.allocate() {
                            Ok(id) => {
                                prop_assert_eq!(Some(id), expected);
                                model.insert(id);
                            }
                            Err(e) => {
                                prop_assert_eq!(expected, None);
                                prop_assert_eq!(e, IdError::Exhausted { max: MAX });
                            }
                        }
                    }
                    Op::Free(i) => {
                        if model.is_empty() {
                            continue;
                        }
                        let id = *model.iter().nth(i % model.len()).unwrap();
                        ids.free(id).unwrap();
                        model.remove(&id);
                    }
                    Op::Reserve(id) => {
                        let r = ids.reserve(id);
                        if id >= MAX {
                            prop_assert!(r.is_err());
                        } else if model.insert(id) {
                            prop_assert_eq!(r, Ok(()));
                        } else {
                            prop_assert_eq!(r, Err(IdError::Duplicate { id }));
                        }
                    }
                }
                prop_assert_eq!(ids.iter().collect::<BTreeSet<_>>(), model.clone());
                prop_assert_eq!(ids.len(), model.len());
                for id in 0..MAX {
                    prop_assert_eq!(ids.contains(id), model.contains(&id));
                }
                let rebuilt = IdAllocator::rebuild(MAX, model.iter().copied()).unwrap();
                prop_assert_eq!(&rebuilt, &ids);
            }
        }
    }
}
