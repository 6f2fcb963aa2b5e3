//! Writing Maglev tables through a memory mapping of the `maglev` array (created
//! `BPF_F_MMAPABLE`, lb-common's map table): a table is a copy into the kernel's own pages
//! instead of a `BPF_MAP_UPDATE_BATCH`, in which the kernel copies and checks every slot
//! separately (10 million slots at 10,000 services of 10 backends: most of a cold start's
//! map writes).
//!
//! The mapping is made for the tables of one apply and undone after it: a mapped page counts
//! in the agent's resident set (the memory is the map's, charged once, but a memory limit
//! and `VmRSS` would show it twice), so windows of at most [`WINDOW`] bytes are mapped at a
//! time. Maps pinned by an earlier version without the flag refuse the mapping; the
//! writer then goes on with batch updates ([`Mapping::open`] says which).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    ptr::NonNull,
};

use aya::maps::MapData;

/// Bytes between two elements in a BPF array's memory: the kernel rounds every value up to
/// 8 bytes (`round_up(value_size, 8)`, kernel/bpf/arraymap.c); a `u32` slot is the first
/// four of its eight.
pub const ARRAY_STRIDE: usize = 8;

const _: () = assert!(ARRAY_STRIDE == size_of::<u64>());

/// The most bytes mapped at a time.
pub const WINDOW: usize = 1 << 20;

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the process.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// The page-aligned byte range `[start, end)` to map for slots `[first, first + len)` of an
/// array of `entries` slots: from the page holding `first`, at least [`WINDOW`] bytes when
/// the array has them, never past its last page.
pub fn window(first: usize, len: usize, entries: usize, page: usize) -> (usize, usize) {
    let total = (entries * ARRAY_STRIDE).div_ceil(page) * page;
    let start = first * ARRAY_STRIDE / page * page;
    let need = (first + len) * ARRAY_STRIDE;
    // `need` is within `total`: the slots are the array's.
    let end = need.max(start + WINDOW).div_ceil(page) * page;
    (start, end.min(total))
}

/// A writable window on the `maglev` array.
struct Window {
    ptr: NonNull<libc::c_void>,
    /// Byte offset of the window in the array's value area.
    start: usize,
    len: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and was asked for, and
        // nothing refers to the window once it is dropped.
        if unsafe { libc::munmap(self.ptr.as_ptr(), self.len) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of the maglev window failed");
        }
    }
}

/// Writes slots of a memory-mappable `maglev` array; keeps one window mapped between
/// writes that fall in it (consecutive tables, as a diff writes them).
pub struct Mapping {
    fd: RawFd,
    entries: usize,
    page: usize,
    window: Option<Window>,
}

impl Mapping {
    /// A writer for `map` (an array of `entries` `u32` slots), or `None` when the map was
    /// not created memory-mappable (maps pinned by an earlier version).
    pub fn open(map: &MapData, entries: u32) -> io::Result<Option<Self>> {
        let flags = map.info().map_err(io::Error::other)?.map_flags();
        if flags & lb_common::maps::BPF_F_MMAPABLE == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            fd: map.fd().as_fd().as_raw_fd(),
            entries: entries as usize,
            page: page_size(),
            window: None,
        }))
    }

    /// `map[first + i] = ids[i]` for the `len` first `ids`.
    pub fn write(
        &mut self,
        first: u32,
        len: usize,
        ids: impl IntoIterator<Item = u32>,
    ) -> io::Result<()> {
        let first = first as usize;
        if first + len > self.entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "slots {first}..{} beyond the array's {}",
                    first + len,
                    self.entries
                ),
            ));
        }
        let from = first * ARRAY_STRIDE;
        let to = (first + len) * ARRAY_STRIDE;
        let covered = self
            .window
            .as_ref()
            .is_some_and(|w| w.start <= from && to <= w.start + w.len);
        if !covered {
            self.window = None;
            self.window = Some(self.map(first, len)?);
        }
        let Some(w) = &self.window else {
            return Err(io::Error::other("no maglev window"));
        };
        // Elements are 8-byte aligned: the window starts at a page, an element every 8 bytes.
        let base = w.ptr.as_ptr().cast::<u64>();
        let skip = (from - w.start) / ARRAY_STRIDE;
        for (i, id) in ids.into_iter().take(len).enumerate() {
            // SAFETY: element `skip + i` ends at `to - w.start <= w.len`, inside the mapping,
            // which is writable and shared with the kernel's array; a `u32` value is the
            // element's first four bytes. Packets read only slots of tables a service entry
            // names, and a diff writes a table before any entry names it.
            unsafe { base.add(skip + i).cast::<u32>().write_volatile(id) };
        }
        Ok(())
    }

    fn map(&self, first: usize, len: usize) -> io::Result<Window> {
        let (start, end) = window(first, len, self.entries, self.page);
        let offset = libc::off_t::try_from(start)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new shared mapping of the map's fd over a range the kernel checks against
        // the array's size; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Window {
            ptr,
            start,
            len: end - start,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A window is page-aligned, covers the slots asked for, and stays inside the
        /// array's pages.
        #[test]
        fn windows_cover_the_slots_within_the_array(
            entries in 1usize..5_000_000,
            at in 0.0f64..1.0,
            len in 1usize..70_000,
        ) {
            let page = 4096;
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "a position in the array")]
            let first = ((entries - 1) as f64 * at) as usize;
            let len = len.min(entries - first);
            let (start, end) = window(first, len, entries, page);
            prop_assert_eq!(start % page, 0);
            prop_assert_eq!(end % page, 0);
            prop_assert!(start <= first * ARRAY_STRIDE);
            prop_assert!((first + len) * ARRAY_STRIDE <= end);
            prop_assert!(end <= (entries * ARRAY_STRIDE).div_ceil(page) * page);
            prop_assert!(end - start <= WINDOW.max(len * ARRAY_STRIDE + page) + page);
        }
    }
}
