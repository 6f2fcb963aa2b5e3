//! What differs between IPv4 and IPv6 on the service path, behind one
//! trait, so that backend choice (`service`) and local replies (`local`)
//! are written once: where a family's backends, source ranges and
//! affinity entries are, and how its addresses sit in the 16-byte fields
//! of the flow types. `lb_ingress` instantiates them with [`V4`] (the code
//! it ran before, inlined the same way), `lb_service6` and `lb_egress6`
//! with [`V6`].

use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{
    AffinityKey, BackendValue, BackendValue6, FlowKey, LocalEndpointKey, SourceRangeData,
    SourceRangeData6, backend_flags,
    flow::{ADDRS_WORD_ALIGNED, addr_v4, family, v4_of},
    hash::{client_hash, client_hash6, flow_hash, flow_hash6_words, flow_tag6_words},
};

use crate::maps::{BACKENDS, BACKENDS6, SRC_RANGES, SRC_RANGES6};

pub trait Family: Copy {
    /// An address as the packet carries it.
    type Addr: Copy;
    /// The family's entry in its backends map.
    type Backend: Copy;
    /// [`lb_common::flow::family`] of its flows.
    const FAMILY: u8;

    /// A valid backend of this family with id `id`.
    fn backend(id: u32) -> Option<Self::Backend>;
    fn flags(b: &Self::Backend) -> u16;
    fn port(b: &Self::Backend) -> u16;
    fn addr(b: &Self::Backend) -> Self::Addr;
    /// A flow entry's record of its pod address, as kept across the
    /// backend's lookup: IPv4's as the value (one 4-byte load, one
    /// register), IPv6's as the pointer to the field (its 16 bytes would
    /// be spilled to the stack across the call, in four slots).
    type Saved: Copy;
    /// The record of the 16-byte field at `a` (a flow entry's `backend_ip`,
    /// 4-aligned in its value, valid for the run).
    fn save(a: *const [u8; 16]) -> Self::Saved;
    /// Whether `b`'s pod address is the one recorded.
    fn is(b: &Self::Backend, a: &Self::Saved) -> bool;
    /// The 16-byte form of an address (flow entries store it).
    fn wide(a: &Self::Addr) -> [u8; 16];
    /// The address in a 16-byte field of this family.
    fn narrow(a: &[u8; 16]) -> Self::Addr;
    /// Whether the service `id`'s source ranges let `client` in (the
    /// service has [`lb_common::service_flags::SOURCE_RANGES`]).
    fn source_allowed(id: u32, client: &Self::Addr) -> bool;
    fn affinity_key(id: u32, client: &Self::Addr) -> AffinityKey;
    fn client_hash(seed: u32, client: &Self::Addr) -> u32;
    fn flow_key(src: &Self::Addr, dst: &Self::Addr, sport: u16, dport: u16, proto: u8) -> FlowKey;
    fn endpoint_key(pod: &Self::Addr, port: u16, proto: u8) -> LocalEndpointKey;
    /// The target port of the backend slot `id`, valid or not (a reply
    /// proves its flow by the port its pod answers from).
    fn port_of(id: u32) -> Option<u16>;
    /// `lb_common::flow::table::key_hash` of a key of this family, without
    /// its test of the family (the other family's hash would take
    /// registers, and stack, on paths that never meet its keys).
    fn key_hash(seed: u32, k: &FlowKey) -> u32;
    /// `lb_common::flow::table::maglev_hash` of a key of this family
    /// whose [`Self::key_hash`] is `tag`.
    fn maglev_hash(seed: u32, k: &FlowKey, tag: u32) -> u32;
    /// Whether a slot of this family may carry the tag of an earlier
    /// version, its Maglev hash (`lb_common::flow::table::legacy_tag`), in
    /// a table adopted at an upgrade (`config_flags::LEGACY_TAGS6`).
    const LEGACY_TAGS: bool;
}

#[derive(Clone, Copy)]
pub struct V4;
#[derive(Clone, Copy)]
pub struct V6;

/// The IPv4 address in a 16-byte address field of a map value, read as
/// one 4-byte load (byte by byte, its four bytes spill separately across
/// the backend's lookup). The fields it reads are 4-aligned in their
/// values (`ConntrackValue`, `AffinityValue`).
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the fields read are 4-aligned in their values (see above)"
)]
#[inline(always)]
fn addr_word(a: *const [u8; 16]) -> [u8; 4] {
    let () = ADDRS_WORD_ALIGNED;
    // SAFETY: the caller's field pointer, valid for this run and 4-aligned
    // (`ADDRS_WORD_ALIGNED`).
    unsafe { a.cast::<u32>().read() }.to_ne_bytes()
}

/// The four 4-byte words of an address, read in native byte order where
/// it lies: one load each, not sixteen byte loads (which is all a `[u8; 16]`
/// promises LLVM).
///
/// # Safety
/// `a` is 4-aligned: one of the fields `ADDRS_WORD_ALIGNED` names, in a map
/// value or the scratch slot, never the packet's.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the caller promises a 4-aligned field (see above)"
)]
#[inline(always)]
pub unsafe fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = a.as_ptr().cast::<u32>();
    // SAFETY: four words within the 16 bytes, 4-aligned (the caller's).
    unsafe { [w.read(), w.add(1).read(), w.add(2).read(), w.add(3).read()] }
}

/// Writes the four 4-byte words `w` over an address, one store each.
///
/// # Safety
/// `to` is 4-aligned, valid and ours for the run: one of the fields
/// `ADDRS_WORD_ALIGNED` names, in a map value or the scratch slot.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the caller promises a 4-aligned field (see above)"
)]
#[inline(always)]
pub unsafe fn put_words(to: *mut [u8; 16], w: [u32; 4]) {
    let p = to.cast::<u32>();
    // SAFETY: four words within the 16 bytes, 4-aligned (the caller's).
    unsafe {
        p.write(w[0]);
        p.add(1).write(w[1]);
        p.add(2).write(w[2]);
        p.add(3).write(w[3]);
    }
}

impl Family for V4 {
    type Addr = [u8; 4];
    type Backend = BackendValue;
    const FAMILY: u8 = family::V4;

    #[inline(always)]
    fn backend(id: u32) -> Option<BackendValue> {
        let b = BACKENDS.get_ptr(id)?;
        // SAFETY: array value pointer from the map; copied out by value.
        let b = unsafe { *b };
        (b.flags & backend_flags::VALID != 0).then_some(b)
    }
    #[inline(always)]
    fn flags(b: &BackendValue) -> u16 {
        b.flags
    }
    #[inline(always)]
    fn port(b: &BackendValue) -> u16 {
        b.port
    }
    #[inline(always)]
    fn addr(b: &BackendValue) -> [u8; 4] {
        b.ip
    }
    type Saved = [u8; 4];
    #[inline(always)]
    fn save(a: *const [u8; 16]) -> [u8; 4] {
        addr_word(a)
    }
    #[inline(always)]
    fn is(b: &BackendValue, a: &[u8; 4]) -> bool {
        b.ip == *a
    }
    #[inline(always)]
    fn wide(a: &[u8; 4]) -> [u8; 16] {
        addr_v4(*a)
    }
    #[inline(always)]
    fn narrow(a: &[u8; 16]) -> [u8; 4] {
        v4_of(a)
    }
    #[inline(always)]
    fn source_allowed(id: u32, client: &[u8; 4]) -> bool {
        let k = Key::new(
            64,
            SourceRangeData {
                service_id: id.to_be_bytes(),
                addr: *client,
            },
        );
        SRC_RANGES.get(&k).is_some()
    }
    #[inline(always)]
    fn affinity_key(id: u32, client: &[u8; 4]) -> AffinityKey {
        AffinityKey::v4(id, *client)
    }
    #[inline(always)]
    fn client_hash(seed: u32, client: &[u8; 4]) -> u32 {
        client_hash(seed, *client)
    }
    #[inline(always)]
    fn flow_key(src: &[u8; 4], dst: &[u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey::v4(*src, *dst, sport, dport, proto)
    }
    #[inline(always)]
    fn endpoint_key(pod: &[u8; 4], port: u16, proto: u8) -> LocalEndpointKey {
        LocalEndpointKey::v4(*pod, port, proto)
    }
    #[inline(always)]
    fn key_hash(seed: u32, k: &FlowKey) -> u32 {
        flow_hash(
            seed,
            v4_of(&k.src),
            v4_of(&k.dst),
            k.sport,
            k.dport,
            k.proto,
        )
    }
    #[inline(always)]
    fn maglev_hash(_: u32, _: &FlowKey, tag: u32) -> u32 {
        tag
    }
    const LEGACY_TAGS: bool = false;
    #[inline(always)]
    fn port_of(id: u32) -> Option<u16> {
        // SAFETY: array value pointer; read by value.
        BACKENDS.get_ptr(id).map(|b| unsafe { (*b).port })
    }
}

/// An IPv6 backend: its entry in `backends6`, in place, because a copy of
/// its 40 bytes would take stack the IPv6 path has little of. The agent
/// writes an array's value in place, but no more than a copy would: a copy
/// is several loads too, the agent changes only the flags of a backend in
/// use, and gives its id to another pod only once its flows are over.
#[derive(Clone, Copy)]
pub struct Backend6(*const BackendValue6);

impl Backend6 {
    #[inline(always)]
    pub fn ip(&self) -> &[u8; 16] {
        // SAFETY: a value pointer `backends6` returned in this run.
        unsafe { &(*self.0).ip }
    }

    /// The entry itself, in place.
    #[inline(always)]
    pub fn value(&self) -> &BackendValue6 {
        // SAFETY: a value pointer `backends6` returned in this run.
        unsafe { &*self.0 }
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type Backend = Backend6;
    const FAMILY: u8 = family::V6;

    #[inline(always)]
    fn backend(id: u32) -> Option<Backend6> {
        let b = BACKENDS6.get_ptr(id)?;
        // SAFETY: array value pointer from the map, valid for this run.
        (unsafe { (*b).flags } & backend_flags::VALID != 0).then_some(Backend6(b))
    }
    #[inline(always)]
    fn flags(b: &Backend6) -> u16 {
        // SAFETY: as in `Backend6::ip`.
        unsafe { (*b.0).flags }
    }
    #[inline(always)]
    fn port(b: &Backend6) -> u16 {
        // SAFETY: as in `Backend6::ip`.
        unsafe { (*b.0).port }
    }
    #[inline(always)]
    fn addr(b: &Backend6) -> [u8; 16] {
        *b.ip()
    }
    type Saved = *const [u8; 16];
    #[inline(always)]
    fn save(a: *const [u8; 16]) -> *const [u8; 16] {
        a
    }
    #[inline(always)]
    fn is(b: &Backend6, a: &*const [u8; 16]) -> bool {
        let () = ADDRS_WORD_ALIGNED;
        // SAFETY: 4-aligned fields of map values (`ADDRS_WORD_ALIGNED`),
        // valid for this run: the backend's address and a flow entry's
        // record (see `save`).
        unsafe { words(b.ip()) == words(&**a) }
    }
    #[inline(always)]
    fn wide(a: &[u8; 16]) -> [u8; 16] {
        *a
    }
    #[inline(always)]
    fn narrow(a: &[u8; 16]) -> [u8; 16] {
        *a
    }
    #[inline(always)]
    fn source_allowed(id: u32, client: &[u8; 16]) -> bool {
        let k = Key::new(
            160,
            SourceRangeData6 {
                service_id: id.to_be_bytes(),
                addr: *client,
            },
        );
        SRC_RANGES6.get(&k).is_some()
    }
    #[inline(always)]
    fn affinity_key(id: u32, client: &[u8; 16]) -> AffinityKey {
        AffinityKey::v6(id, *client)
    }
    #[inline(always)]
    fn client_hash(seed: u32, client: &[u8; 16]) -> u32 {
        client_hash6(seed, client)
    }
    #[inline(always)]
    fn flow_key(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey::v6(*src, *dst, sport, dport, proto)
    }
    #[inline(always)]
    fn endpoint_key(pod: &[u8; 16], port: u16, proto: u8) -> LocalEndpointKey {
        LocalEndpointKey::v6(*pod, port, proto)
    }
    #[inline(always)]
    fn key_hash(seed: u32, k: &FlowKey) -> u32 {
        let () = ADDRS_WORD_ALIGNED;
        // SAFETY: a key's addresses are 4-aligned (`ADDRS_WORD_ALIGNED`).
        let (src, dst) = unsafe { (words(&k.src), words(&k.dst)) };
        flow_tag6_words(
            seed,
            &src.map(u32::from_le),
            &dst.map(u32::from_le),
            k.sport,
            k.dport,
            k.proto,
        )
    }
    #[inline(always)]
    fn maglev_hash(seed: u32, k: &FlowKey, _: u32) -> u32 {
        maglev_hash6(seed, k)
    }
    const LEGACY_TAGS: bool = true;
    #[inline(always)]
    fn port_of(id: u32) -> Option<u16> {
        // SAFETY: array value pointer; read by value.
        BACKENDS6.get_ptr(id).map(|b| unsafe { (*b).port })
    }
}

/// `V6::maglev_hash`, out of line: only a flow the table does not hold
/// needs it, and inlined, its nine rounds' values took their own slots of
/// `lb_service6`'s frame.
#[inline(never)]
fn maglev_hash6(seed: u32, k: &FlowKey) -> u32 {
    let () = ADDRS_WORD_ALIGNED;
    // SAFETY: a key's addresses are 4-aligned (`ADDRS_WORD_ALIGNED`).
    let (src, dst) = unsafe { (words(&k.src), words(&k.dst)) };
    flow_hash6_words(
        seed,
        &src.map(u32::from_be),
        &dst.map(u32::from_be),
        k.sport,
        k.dport,
        k.proto,
    )
}
