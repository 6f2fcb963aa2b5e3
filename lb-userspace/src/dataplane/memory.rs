//! How much kernel memory the maps take, as a function of their sizes and of the number of
//! possible CPUs, and how big the per-CPU counters may be.
//!
//! Since Linux 5.11 map memory is charged to the memory cgroup of the process that creates
//! the maps: the agent's container, on its first start on a node (a restart adopts the
//! pinned maps and is charged nothing). A per-CPU array holds one copy of every element
//! per *possible* CPU, so the two traffic-counter arrays are what grows with the machine:
//! at full size (every service id and every backend id) they alone would take 6 MiB per
//! CPU, 768 MiB on a 128-CPU server. They are therefore created with as many entries as fit
//! a fixed budget ([`STATS_BUDGET`]): every id on small machines, the lowest ids on big
//! ones (ids are allocated lowest first, so these are the services and backends that exist
//! the longest; the others are served but not counted, and `onehop status` says so).
//!
//! The figures follow the kernel's own accounting (`map_mem_usage`, shown as `memlock` in
//! `/proc/<pid>/fdinfo/<map fd>`), which a privileged test compares with a real load.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use lb_common::maps::{self, MapKind, MapSpec, TABLE};

use crate::dataplane::{loader::Sizes, maps::PinDir};

/// Bytes the two per-CPU traffic-counter arrays may take together, over all possible CPUs.
pub const STATS_BUDGET: u64 = 64 << 20;

/// Bytes of one traffic counter (`TrafficCounter`: packets and bytes).
const COUNTER_BYTES: u64 = 16;

/// The fixed part of one map (`struct bpf_array` / `struct bpf_htab` / `struct lpm_trie`
/// with the `struct bpf_map` it embeds). Only a few hundred bytes; the exact value differs
/// between kernel builds, so this is an upper bound.
const MAP_HEADER: u64 = 1024;
/// The kernel's page size on the machines the figures are for.
const PAGE: u64 = 4096;
/// `struct htab_elem` before the key: list node, free-list or LRU node, hash.
const HTAB_ELEM: u64 = 48;
/// `struct bucket`: list head and lock.
const HTAB_BUCKET: u64 = 16;
/// `HASHTAB_MAP_LOCK_COUNT` (8) `int`s per possible CPU.
const HTAB_LOCKS_PER_CPU: u64 = 32;
/// `struct lpm_trie_node` before the prefix data: RCU head, two children, prefix length, flags.
const LPM_NODE: u64 = 40;

const fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Bytes the kernel charges for a map of `spec`'s kind and key/value sizes with
/// `entries` entries on a machine with `cpus` possible CPUs, once it is full (hash maps
/// and arrays are allocated in full when created; an LPM trie and the hashes created
/// without preallocation grow with their entries).
pub fn map_bytes(spec: &MapSpec, entries: u32, cpus: u32) -> u64 {
    let n = u64::from(entries);
    let cpus = u64::from(cpus);
    let key = round8(u64::from(spec.key_size));
    let value = round8(u64::from(spec.value_size));
    MAP_HEADER
        + match spec.kind {
            // A memory-mappable array keeps its values in whole pages, after a page of its
            // own (kernel/bpf/arraymap.c); 4 KiB pages assumed.
            MapKind::Array if spec.flags & maps::BPF_F_MMAPABLE != 0 => {
                PAGE + (n * value).div_ceil(PAGE) * PAGE
            }
            MapKind::Array => n * value,
            // A pointer per element to its per-CPU block, then one copy per CPU.
            MapKind::PerCpuArray => n * 8 + n * value * cpus,
            MapKind::Hash | MapKind::LruHash => {
                let lru = spec.kind == MapKind::LruHash;
                let buckets = n.next_power_of_two().max(1);
                let elem = HTAB_ELEM + key + value;
                // A preallocated plain hash keeps one spare element per CPU (and a pointer
                // to it) for updates that replace an entry; an LRU hash does not, nor does
                // one that allocates its elements as they are inserted (`arp_stats`).
                let prealloc = spec.flags & maps::BPF_F_NO_PREALLOC == 0;
                let spare = if lru || !prealloc {
                    0
                } else {
                    cpus * (elem + 8)
                };
                HTAB_BUCKET * buckets + HTAB_LOCKS_PER_CPU * cpus + elem * n + spare
            }
            // Allocated per element (no preallocation): the element, a pointer to its
            // per-CPU block, and one value per CPU.
            MapKind::PerCpuHash => {
                let buckets = n.next_power_of_two().max(1);
                HTAB_BUCKET * buckets
                    + HTAB_LOCKS_PER_CPU * cpus
                    + n * (HTAB_ELEM + key + 8 + value * cpus)
            }
            // The kernel's key is the 4-byte prefix length plus the data.
            MapKind::LpmTrie => {
                (LPM_NODE + u64::from(spec.key_size) - 4 + u64::from(spec.value_size)) * n
            }
            // `struct bpf_dtab_netdev` per slot (not in the product table today).
            MapKind::DevMap => n * (8 + 64),
            // A program pointer per slot (the programs are charged on their own).
            MapKind::ProgArray => n * 8,
        }
}

/// Entries a map of the product table is created with, given the loader's sizes.
pub fn entries(spec: &MapSpec, sizes: &Sizes) -> u32 {
    match spec.name {
        maps::MAGLEV => sizes.maglev_slots,
        maps::CONNTRACK => lb_common::flow::table::sets_for(sizes.conntrack),
        maps::REV_NAT => sizes.rev_nat,
        maps::AFFINITY => sizes.affinity,
        maps::SERVICE_STATS => sizes.service_stats,
        maps::BACKEND_STATS => sizes.backend_stats,
        _ => spec.max_entries,
    }
}

/// Every map of the product table with its bytes, full, on `cpus` possible CPUs.
pub fn footprint(sizes: &Sizes, cpus: u32) -> Vec<(&'static str, u64)> {
    TABLE
        .iter()
        .map(|s| (s.name, map_bytes(s, entries(s, sizes), cpus)))
        .collect()
}

/// All maps together, full, on `cpus` possible CPUs.
pub fn total(sizes: &Sizes, cpus: u32) -> u64 {
    footprint(sizes, cpus).iter().map(|(_, b)| b).sum()
}

/// Entries of `service_stats` and `backend_stats` for `cpus` possible CPUs within `budget`
/// bytes: every id when it fits, else the budget split in the proportion of the id spaces
/// (one service id to two backend ids), never fewer than 1,024 and 2,048.
pub fn stats_entries(cpus: u32, budget: u64) -> (u32, u32) {
    let full_services = u64::from(maps::MAX_SERVICES);
    let full_backends = u64::from(maps::MAX_BACKENDS);
    // Per entry: its pointer plus a counter per CPU.
    let per_entry = 8 + COUNTER_BYTES * u64::from(cpus.max(1));
    let fits = budget / per_entry;
    let want = full_services + full_backends;
    if fits >= want {
        return (maps::MAX_SERVICES, maps::MAX_BACKENDS);
    }
    let services = (fits * full_services / want).max(1024);
    let backends = (fits * full_backends / want).max(2048);
    (
        u32::try_from(services).unwrap_or(maps::MAX_SERVICES),
        u32::try_from(backends).unwrap_or(maps::MAX_BACKENDS),
    )
}

/// The sizes the maps pinned in `pins` were created with (a restart keeps them, whatever
/// the flags say now).
pub fn pinned_sizes(pins: &PinDir) -> Result<Sizes> {
    let entries = |name: &str| -> Result<u32> {
        let path = pins.entry(name);
        Ok(MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("inspecting pinned map {}", path.display()))?
            .max_entries())
    };
    Ok(Sizes {
        maglev_slots: entries(maps::MAGLEV)?,
        // The flow table's entries are sets of `WAYS` flows.
        conntrack: entries(maps::CONNTRACK)?
            .saturating_mul(u32::try_from(lb_common::flow::table::WAYS).unwrap_or(u32::MAX)),
        rev_nat: entries(maps::REV_NAT)?,
        affinity: entries(maps::AFFINITY)?,
        service_stats: entries(maps::SERVICE_STATS)?,
        backend_stats: entries(maps::BACKEND_STATS)?,
    })
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`), what per-CPU maps are
/// sized by; 1 if it cannot be read (the caller logs the figure it used).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

/// `n` bytes in MiB, one decimal.
pub fn mib(n: u64) -> String {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a figure for people, to one decimal"
    )]
    let m = n as f64 / f64::from(1 << 20);
    format!("{m:.1} MiB")
}

/// The README's table: for each CPU count, the counters' entries and the map memory with
/// the default sizes, the counters, and the trie full.
pub fn table(cpu_counts: &[u32]) -> String {
    let mut out = String::from(
        "| possible CPUs | counted services | counted backends | counters | all maps |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    for &cpus in cpu_counts {
        let (service_stats, backend_stats) = stats_entries(cpus, STATS_BUDGET);
        let sizes = Sizes {
            service_stats,
            backend_stats,
            ..Sizes::default()
        };
        let counters: u64 = footprint(&sizes, cpus)
            .iter()
            .filter(|(n, _)| [maps::SERVICE_STATS, maps::BACKEND_STATS].contains(n))
            .map(|(_, b)| b)
            .sum();
        let _ = writeln!(
            out,
            "| {cpus} | {service_stats} | {backend_stats} | {} | {} |",
            mib(counters),
            mib(total(&sizes, cpus))
        );
    }
    out
}

/// The CPU counts the README's table lists.
pub const TABLE_CPUS: [u32; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes_for(cpus: u32) -> Sizes {
        let (service_stats, backend_stats) = stats_entries(cpus, STATS_BUDGET);
        Sizes {
            service_stats,
            backend_stats,
            ..Sizes::default()
        }
    }

    fn stats_bytes(cpus: u32) -> u64 {
        footprint(&sizes_for(cpus), cpus)
            .iter()
            .filter(|(n, _)| [maps::SERVICE_STATS, maps::BACKEND_STATS].contains(n))
            .map(|(_, b)| b)
            .sum()
    }

    #[test]
    fn the_readme_table_is_current() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let want = table(&TABLE_CPUS);
        assert!(
            readme.contains(&want),
            "README's map-memory table is out of date; put this under \"Memory\":\n{want}"
        );
    }

    #[test]
    fn small_machines_count_every_id() {
        for cpus in [1, 2, 4] {
            assert_eq!(
                stats_entries(cpus, STATS_BUDGET),
                (maps::MAX_SERVICES, maps::MAX_BACKENDS),
                "{cpus} CPUs"
            );
        }
    }

    #[test]
    fn the_counters_stay_within_the_budget_at_any_cpu_count() {
        for cpus in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
            let b = stats_bytes(cpus);
            assert!(
                b <= STATS_BUDGET + 2 * MAP_HEADER,
                "{cpus} CPUs: {} of counters",
                mib(b)
            );
        }
        // Far beyond any budget (4,096 CPUs), the floor keeps some counters.
        assert_eq!(stats_entries(4096, STATS_BUDGET), (1024, 2048));
    }

    #[test]
    fn only_the_per_cpu_maps_grow_with_cpus() {
        let one = footprint(&Sizes::default(), 1);
        let many = footprint(&Sizes::default(), 128);
        for ((name, a), (_, b)) in one.iter().zip(&many) {
            let kind = MapSpec::find(&TABLE, name).map(|s| s.kind);
            let grows = b - a;
            if matches!(kind, Some(MapKind::PerCpuArray | MapKind::PerCpuHash)) {
                assert!(grows > 0, "{name}");
            } else {
                // Locks and spare elements only: a few KiB per CPU at most.
                assert!(grows < 127 * 1024, "{name} grows by {grows} bytes");
            }
        }
        // Unbudgeted, the counters would take 6 MiB per CPU: the issue this module solves.
        let full = Sizes::default();
        let per_cpu = (total(&full, 2) - total(&full, 1)) >> 20;
        assert!((6..7).contains(&per_cpu), "{per_cpu} MiB per CPU");
    }

    #[test]
    fn a_128_cpu_node_fits_in_the_budget_plus_the_fixed_maps() {
        let small = total(&sizes_for(1), 1);
        let big = total(&sizes_for(128), 128);
        assert!(
            big <= small + STATS_BUDGET,
            "{} vs {}",
            mib(big),
            mib(small)
        );
    }
}
