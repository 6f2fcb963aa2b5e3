//! One service's Maglev table as the agent keeps it between plans: the backend id of
//! every slot, stored as an index into the table's few distinct ids.
//!
//! A table has ~100 slots per backend, so 10,000 services of 10 backends are 10 million
//! slots: 40 MiB as `u32` ids, 10 MiB as one-byte indices. Shared (`Arc`), not copied,
//! between a plan, the next plan that keeps it and the diff that writes it.

use std::{fmt, sync::Arc};

/// Slot → index into `ids`, in the narrowest width that holds every index.
#[derive(Clone, PartialEq, Eq)]
enum Slots {
    U8(Arc<[u8]>),
    U16(Arc<[u16]>),
    U32(Arc<[u32]>),
}

/// A Maglev table: backend ids, slot by slot.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    /// The distinct backend ids of the table, sorted.
    ids: Arc<[u32]>,
    slots: Slots,
}

impl Table {
    /// Number of slots.
    pub fn len(&self) -> usize {
        match &self.slots {
            Slots::U8(s) => s.len(),
            Slots::U16(s) => s.len(),
            Slots::U32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend id of every slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let at = |i: usize| self.ids[i];
        let (a, b, c) = match &self.slots {
            Slots::U8(s) => (Some(s.iter().map(move |&i| at(usize::from(i)))), None, None),
            Slots::U16(s) => (None, Some(s.iter().map(move |&i| at(usize::from(i)))), None),
            Slots::U32(s) => (None, None, Some(s.iter().map(move |&i| at(i as usize)))),
        };
        a.into_iter()
            .flatten()
            .chain(b.into_iter().flatten())
            .chain(c.into_iter().flatten())
    }

    /// The distinct backend ids the table names, sorted.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The slots as ids (what the map holds).
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

impl From<Vec<u32>> for Table {
    fn from(slots: Vec<u32>) -> Self {
        let mut ids = slots.clone();
        ids.sort_unstable();
        ids.dedup();
        // Every slot's id is in `ids`: the searches cannot miss.
        let index = |id: &u32| ids.binary_search(id).unwrap_or_default();
        let slots = if ids.len() <= 1 << 8 {
            Slots::U8(
                slots
                    .iter()
                    .map(|id| u8::try_from(index(id)).unwrap_or_default())
                    .collect(),
            )
        } else if ids.len() <= 1 << 16 {
            Slots::U16(
                slots
                    .iter()
                    .map(|id| u16::try_from(index(id)).unwrap_or_default())
                    .collect(),
            )
        } else {
            Slots::U32(
                slots
                    .iter()
                    .map(|id| u32::try_from(index(id)).unwrap_or_default())
                    .collect(),
            )
        };
        Self {
            ids: ids.into(),
            slots,
        }
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn each_width_gives_back_the_slots() {
        for distinct in [1u32, 2, 256, 257, 65_536, 65_537] {
            let slots: Vec<u32> = (0..70_000u32)
                .map(|i| (i * 7919 % distinct) * 3 + 5)
                .collect();
            let t = Table::from(slots.clone());
            assert_eq!(t.to_vec(), slots, "{distinct} distinct ids");
            assert_eq!(t.len(), slots.len());
            assert_eq!(t.ids().len(), distinct as usize);
            let width = match t.slots {
                Slots::U8(_) => 8,
                Slots::U16(_) => 16,
                Slots::U32(_) => 32,
            };
            let want = if distinct <= 256 {
                8
            } else if distinct <= 65_536 {
                16
            } else {
                32
            };
            assert_eq!(width, want, "{distinct} distinct ids");
        }
        assert!(Table::from(Vec::new()).is_empty());
    }

    proptest! {
        #[test]
        fn equal_tables_are_equal_slots(a in proptest::collection::vec(0u32..40, 0..300),
                                        b in proptest::collection::vec(0u32..40, 0..300)) {
            prop_assert_eq!(Table::from(a.clone()) == Table::from(b.clone()), a == b);
            prop_assert_eq!(Table::from(a.clone()).to_vec(), a);
        }
    }
}
