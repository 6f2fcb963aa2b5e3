//! Every map of the product, declared from lb-common's one table
//! ([`lb_common::product_maps!`]). BTF map definitions, so `bpftool map
//! dump` prints the key and value field names.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};

/// A hash whose entries are allocated when they are inserted, not all up
/// front for `MAX` entries.
pub type HashNoPrealloc<K, V, const MAX: usize> =
    HashMap<K, V, MAX, { BPF_F_NO_PREALLOC as usize }>;

/// An array user space may `mmap` (the agent writes Maglev tables through it).
pub type MmapArray<T, const MAX: usize> = Array<T, MAX, { BPF_F_MMAPABLE as usize }>;

/// Expands rows of an lb-common map table into BTF map statics (the bench
/// crate expands its own table with it too).
#[macro_export]
macro_rules! declare_maps {
    ($(
        $(#[$doc:meta])*
        $ident:ident = $name:literal: $kind:ident<$($ty:ty),*>[$max:expr] $($load:ident)?;
    )*) => {$(
        $(#[$doc])*
        #[aya_ebpf::macros::btf_map(name = $name)]
        pub static $ident: $kind<$($ty,)* { $crate::maps::entries($max) }> = $kind::new();
    )*};
}

/// `max_entries` as the const generic aya-ebpf's map types take.
pub const fn entries(max: u32) -> usize {
    max as usize
}

lb_common::product_maps!(crate::declare_maps);
