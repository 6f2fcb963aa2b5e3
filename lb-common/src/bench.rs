//! The benchmark ABI: programs and maps of the bench object (lb-ebpf's
//! `lb-ebpf-bench` binary), which the agent never loads. `bench-xdp` runs
//! `lb_ingress_bench`, `bench_restore_only` and `bench_flow_floor`;
//! bench-e2e's XDP frame generator is `bench_xdpgen`.
//! The bench object also carries the product's programs and maps (the
//! wrappers run the real ingress logic), declared by
//! [`product_maps!`](crate::product_maps).

/// Program names of the bench object besides the product's.
pub mod programs {
    /// `lb_ingress` wrapped so every `BPF_PROG_TEST_RUN` iteration sees the
    /// original frame (see lb-ebpf's `lb-ebpf-bench`).
    pub const INGRESS: &str = "lb_ingress_bench";
    /// The wrapper's save and restore alone: its cost, subtracted.
    pub const RESTORE_ONLY: &str = "bench_restore_only";
    /// bench-e2e's XDP frame generator, run with `BPF_PROG_TEST_RUN` in
    /// live-frames mode. Every frame is rewritten from a template and
    /// redirected to the port (a veth) its target sits behind.
    pub const XDPGEN: &str = "bench_xdpgen";
    /// One new flow's entry written into `conntrack` and nothing else:
    /// the memory cost under every new flow, reported beside them.
    pub const FLOW_FLOOR: &str = "bench_flow_floor";
    /// Every program of the bench object: the product's XDP programs
    /// (measured as they are: the floor and the direct cases), then these.
    pub const ALL: [&str; 9] = [
        crate::maps::programs::PASS,
        crate::maps::programs::INGRESS,
        crate::maps::programs::INGRESS6,
        crate::maps::programs::SERVICE6,
        crate::maps::programs::NAT6,
        INGRESS,
        RESTORE_ONLY,
        XDPGEN,
        FLOW_FLOOR,
    ];
}

/// The bench object's own maps, after the product's. Same row format as
/// [`product_maps!`](crate::product_maps).
#[macro_export]
macro_rules! bench_maps {
    ($then:path) => {
        $then! {
            /// Per-CPU array of one 128-byte buffer: the frame's first bytes,
            /// saved before the ingress logic runs and restored after it.
            SCRATCH = "bench_scratch": PerCpuArray<[u8; $crate::bench::SCRATCH_LEN]>[1];
            /// Array of one `u32`: [`NEW_FLOW`] bit and friends, set by the bench.
            CONFIG = "bench_config": Array<u32>[1];
            /// Per-CPU array of one `u32`: the source-port sequence.
            SEQ = "bench_seq": PerCpuArray<u32>[1];
            /// Target index → frame template (array of [`XDPGEN_SLOT`]-byte
            /// values): the frame's [`XDPGEN_FRAME_LEN`] bytes, then the `u32`
            /// (native order) key of its port in [`XDPGEN_PORTS`].
            XDPGEN_FRAMES = "xdpgen_frames":
                Array<[u8; $crate::bench::XDPGEN_SLOT]>[$crate::bench::XDPGEN_MAX_TARGETS];
            /// Port key → interface (devmap), filled from the namespace that
            /// owns the interfaces.
            XDPGEN_PORTS = "xdpgen_ports": DevMap<>[$crate::bench::XDPGEN_MAX_PORTS];
            /// Generator state, `u64` slots (array): [`XDPGEN_NEXT`],
            /// [`XDPGEN_TARGETS`], [`XDPGEN_FLAGS`].
            XDPGEN_STATE = "xdpgen_state": Array<u64>[$crate::bench::XDPGEN_STATE_LEN];
        }
    };
}

crate::bench_maps!(crate::map_specs);

/// Bytes saved and restored per iteration (at most).
pub const SCRATCH_LEN: usize = 128;
/// `bench_config` bit: give every iteration a new TCP/UDP source port,
/// so each one is a new flow (conntrack miss, Maglev pick, NAT port).
pub const NEW_FLOW: u32 = 1 << 0;
/// `bench_config` bit: put the frame in `bench_scratch` back *before* each
/// iteration instead of after it. An IPv6 packet leaves `lb_ingress_bench`
/// by a tail call (to `lb_service6`, and on to `lb_nat6`) and never returns to it, so
/// the next iteration undoes what the last one did; the bench writes the
/// frame into `bench_scratch` before the run, and the run's output is the
/// last iteration's. The work per iteration is the same (one save, one
/// restore), so `bench_restore_only` stays the overhead.
pub const RESTORE_FIRST: u32 = 1 << 1;

/// State slot: number of the next frame (the program increments it;
/// frame `k` goes to target `k % targets` and, with
/// [`XDPGEN_NEW_FLOWS`], is flow `k`). One generator thread at a time.
pub const XDPGEN_NEXT: u32 = 0;
/// State slot: number of templates in use (1..=[`XDPGEN_MAX_TARGETS`]).
pub const XDPGEN_TARGETS: u32 = 1;
/// State slot: flag bits ([`XDPGEN_NEW_FLOWS`]).
pub const XDPGEN_FLAGS: u32 = 2;
/// Slots of [`XDPGEN_STATE`].
pub const XDPGEN_STATE_LEN: u32 = 4;
/// [`XDPGEN_FLAGS`] bit: frame `k` gets source port
/// `XDPGEN_PORT_BASE + k % XDPGEN_PORTS_PER_IP` and source address
/// `XDPGEN_SRC_BASE + (k / XDPGEN_PORTS_PER_IP) % XDPGEN_SRC_COUNT`.
pub const XDPGEN_NEW_FLOWS: u64 = 1 << 0;
/// Templates (targets) at most.
pub const XDPGEN_MAX_TARGETS: u32 = 16;
/// Port keys at most.
pub const XDPGEN_MAX_PORTS: u32 = 16;
/// Bytes of one frame (Ethernet/IPv4/UDP, the Ethernet minimum).
pub const XDPGEN_FRAME_LEN: usize = 60;
/// Bytes of one template slot.
pub const XDPGEN_SLOT: usize = 64;
/// First source port of the new-flow sequence.
pub const XDPGEN_PORT_BASE: u64 = 1024;
/// Source ports per source address.
pub const XDPGEN_PORTS_PER_IP: u64 = 60_000;
/// First source address of the new-flow sequence: 198.18.0.0/15, RFC
/// 2544's benchmarking range.
pub const XDPGEN_SRC_BASE: [u8; 4] = [198, 18, 0, 0];
/// Source addresses of the new-flow sequence.
pub const XDPGEN_SRC_COUNT: u64 = 131_072;
