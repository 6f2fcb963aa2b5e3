//! Draining and filling the flow maps through the raw `bpf(2)` syscall
//! (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`, `BPF_MAP_UPDATE_BATCH`; aya 0.14 wraps
//! neither): before every new-flow run up to ~130,000 entries go (a full
//! table's 524,288 come), one call per 8,192.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, Result};
use aya::Pod;
use lb_userspace::dataplane::batch::{self, BatchAttr};

/// Entries per drain call; far above any hash bucket's length.
const DRAIN_CHUNK: usize = 8192;

fn raw_fd(fd: BorrowedFd<'_>) -> Result<u32> {
    u32::try_from(fd.as_raw_fd()).context("negative map fd")
}

/// Deletes every entry of a (LRU) hash map; returns how many there were.
pub fn drain<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Result<usize> {
    let map_fd = raw_fd(fd)?;
    let mut keys = vec![0u8; DRAIN_CHUNK * size_of::<K>()];
    let mut values = vec![0u8; DRAIN_CHUNK * size_of::<V>()];
    // The batch token of a hash map is a bucket index (u32).
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    let mut first = true;
    let mut total = 0usize;
    loop {
        let mut a = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(DRAIN_CHUNK).context("drain chunk")?,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `DRAIN_CHUNK` keys and values of the
        // map's sizes, the tokens one bucket index each; all outlive the call.
        let r = unsafe { batch::call(batch::LOOKUP_AND_DELETE, &mut a) };
        total += a.count as usize;
        match r {
            Ok(()) => {
                token_in = token_out;
                first = false;
            }
            // ENOENT: no bucket left (the last call may still have returned some).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_AND_DELETE_BATCH"),
        }
    }
}

/// Inserts `entries` into a hash map, a chunk per call.
pub fn fill<K: Pod, V: Pod>(fd: BorrowedFd<'_>, entries: &[(K, V)]) -> Result<()> {
    let map_fd = raw_fd(fd)?;
    for chunk in entries.chunks(DRAIN_CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut a = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(chunk.len()).context("fill chunk")?,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` keys and values of the map's
        // sizes and outlive the call; the kernel only reads them.
        unsafe { batch::call(batch::UPDATE, &mut a) }.context("BPF_MAP_UPDATE_BATCH")?;
        anyhow::ensure!(
            a.count as usize == chunk.len(),
            "BPF_MAP_UPDATE_BATCH wrote {} of {}",
            a.count,
            chunk.len()
        );
    }
    Ok(())
}
