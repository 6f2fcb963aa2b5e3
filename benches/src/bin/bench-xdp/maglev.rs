//! Maglev lookup tables (Eisenbud et al., NSDI 2016, §3.4): each backend
//! walks its own permutation of the slots, backends take turns claiming
//! their next free slot until the table is full. Sizes follow the project's
//! rule (`MAGLEV_TABLE_SIZES`: a prime with at least 100 slots per backend).

use lb_common::{hash::flow_hash, maps::MAGLEV_TABLE_SIZES};

/// A backend as the table sees it: its id and what its permutation is
/// derived from (pod address and port).
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub id: u32,
    pub ip: [u8; 4],
    pub port: u16,
}

/// The smallest table size with at least 100 slots per backend.
pub fn table_size(backends: usize) -> u32 {
    MAGLEV_TABLE_SIZES
        .into_iter()
        .find(|&s| s as usize / 100 >= backends)
        .unwrap_or(MAGLEV_TABLE_SIZES[MAGLEV_TABLE_SIZES.len() - 1])
}

/// The table (`size` slots of backend ids) for a non-empty backend set.
pub fn populate(members: &[Member], size: u32) -> Vec<u32> {
    assert!(
        !members.is_empty() && size > 1,
        "Maglev needs backends and a prime size"
    );
    // Each backend's permutation: slot = (offset + k * skip) % size, walked
    // one step at a time (pos + skip < 2 * size fits in u32).
    let skips: Vec<u32> = members
        .iter()
        .map(|m| flow_hash(m.ip, [0; 4], m.port, 0, 2) % (size - 1) + 1)
        .collect();
    let mut pos: Vec<u32> = members
        .iter()
        .map(|m| flow_hash(m.ip, [0; 4], m.port, 0, 1) % size)
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (i, m) in members.iter().enumerate() {
            while table[pos[i] as usize] != u32::MAX {
                pos[i] = (pos[i] + skips[i]) % size;
            }
            table[pos[i] as usize] = m.id;
            pos[i] = (pos[i] + skips[i]) % size;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}
