//! The kernel's batch map commands (`BPF_MAP_*_BATCH`, Linux 5.6), which
//! aya 0.14 does not wrap: one `bpf(2)` call for thousands of entries where
//! one call each would take a good part of a second on a full map.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{Array, IterableMap as _, MapData},
};

/// `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h).
pub const LOOKUP: libc::c_long = 24;
/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`.
pub const LOOKUP_AND_DELETE: libc::c_long = 25;
/// `BPF_MAP_UPDATE_BATCH`.
pub const UPDATE: libc::c_long = 26;

/// The kernel's own "not supported" (not in libc: never meant for user
/// space, yet returned).
const ENOTSUPP: i32 = 524;

/// The batch part of `union bpf_attr` (the kernel accepts a prefix).
#[repr(C)]
#[derive(Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// Runs batch command `cmd`; the kernel writes the number of entries it
/// handled back into `attr.count`.
///
/// # Safety
/// Every pointer in `attr` must point to memory the caller owns for the
/// whole call, large enough for `attr.count` keys and values of the map's
/// sizes (and `in_batch`/`out_batch` for one batch token of the map's kind).
pub unsafe fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is an initialised bpf_attr prefix of the size passed;
    // the buffers it points to are the caller's (see above).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `e` says the kernel has no batch command for this map (older
/// kernels, or a map type without one): the caller falls back to one call
/// per entry.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Calls `visit` with every index of `array` and its value:
/// `BPF_MAP_LOOKUP_BATCH` `chunk` slots at a time, or one lookup per slot
/// where the kernel has no batch command. `what` names the map in errors.
pub fn each_in_array<V: Pod + Default>(
    array: &Array<MapData, V>,
    chunk: u32,
    what: &str,
    mut visit: impl FnMut(u32, &V),
) -> Result<()> {
    let fd = u32::try_from(array.map().fd().as_fd().as_raw_fd()).context("map fd")?;
    let mut keys = vec![0u32; chunk as usize];
    let mut values: Vec<V> = std::iter::repeat_with(V::default)
        .take(chunk as usize)
        .collect();
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const token_in) as u64
            },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `chunk` keys and values of the
        // array's sizes (`V` is its value type), the tokens one index each;
        // all outlive the call.
        let r = unsafe { call(LOOKUP, &mut attr) };
        let got = (attr.count as usize).min(values.len());
        keys[..got]
            .iter()
            .zip(&values[..got])
            .for_each(|(&i, v)| visit(i, v));
        match r {
            Ok(()) => {
                token_in = token_out;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) if first && unsupported(&e) => break,
            Err(e) => return Err(e).with_context(|| format!("BPF_MAP_LOOKUP_BATCH on {what}")),
        }
    }
    for i in 0..array.len() {
        let v = array
            .get(&i, 0)
            .with_context(|| format!("reading {what}[{i}]"))?;
        visit(i, &v);
    }
    Ok(())
}
