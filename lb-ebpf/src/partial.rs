//! Partial transport checksums in the frames XDP sees.
//!
//! A local socket's TCP/UDP checksum is usually left for the NIC to finish
//! (`CHECKSUM_PARTIAL`): the stack stores only the pseudo-header sum in the
//! field and records in the skb where the sum starts. A veth carries such a
//! frame as it is, so on a node whose uplink is a veth (kind, k3d, any
//! container-on-a-bridge setup) XDP sees the pods' replies (forwarded by
//! their node's kernel, which leaves the checksum partial for its own
//! "NIC") and local clients' requests that way. A real NIC never delivers
//! one.
//!
//! XDP has no way to read the skb's checksum state (no RX-metadata kfunc
//! for it), so a partial checksum is recognised by its value: the field
//! equals the pseudo-header sum of the packet ([`pseudo_header`]).
//!
//! What we do with it depends on where the frame goes next:
//! - `XDP_TX` / `XDP_REDIRECT` (remote flows, both ways): the frame leaves
//!   as bytes, the skb that knew the checksum was partial is gone, and
//!   nothing finishes it. So we finish it first — one pass over the
//!   segment, [`onehop_finish_checksum`], counted as `partial_checksum_completed` — and
//!   then translate it as any packet. (RFC 1624 updates a full checksum; a
//!   partial field would move the wrong way.) A full checksum that happens
//!   to equal the pseudo-header sum (one segment in 65,535) is finished to
//!   the same value, so this never changes a correct checksum.
//! - `XDP_PASS` (local flows, a reply handed to the kernel): left as any
//!   packet. The skb stays `CHECKSUM_PARTIAL`, which the receiving socket
//!   takes as verified, so local pods are served; a field rewritten as a
//!   partial one would instead break the one wire frame in 65,535 whose full
//!   checksum equals its pseudo-header sum. Only an skb the kernel itself
//!   finishes later (sent on out of a device without checksum offload) would
//!   carry a wrong checksum: a node with a veth uplink has none such on
//!   these paths.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::Counter;

use crate::{
    csum,
    nat::L4,
    parse::{Cursor, EthHdr, IPV4_LEN, Ipv4Hdr},
    stats,
};

/// [`IPV4_LEN`] as the header's length field counts it.
const IPV4_HDR: u16 = 20;
const _: () = assert!(IPV4_HDR as usize == IPV4_LEN);

/// Before a translated frame leaves by `XDP_TX` or `XDP_REDIRECT`: finishes
/// its transport checksum if it is partial. False when it is partial and
/// cannot be finished (drop it: sent on, it would carry a wrong checksum).
/// Call it before anything in the frame is written.
#[inline(always)]
pub fn finish_before_tx(ctx: &XdpContext, ip: &Ipv4Hdr, l4: &mut L4<'_>) -> bool {
    if l4.check() != pseudo_header(ip) {
        return true;
    }
    complete(l4, onehop_finish_checksum(ctx.ctx))
}

/// Stores what a finishing function (`onehop_finish_checksum` or its IPv6
/// twin) returned for `l4`'s partial checksum: false when it could not
/// finish it.
#[inline(always)]
pub fn complete(l4: &mut L4<'_>, full: u32) -> bool {
    match full {
        0 => false,
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the checksum is the low 16 bits; bit 16 only says there is one"
        )]
        full => {
            let full = full as u16;
            // A full checksum that only looked partial (one segment in
            // 65,535) comes back unchanged: nothing was finished.
            if full != l4.check() {
                stats::count(Counter::PartialChecksumCompleted);
                l4.set_full_check(full);
            }
            true
        }
    }
}

/// The pseudo-header sum (RFC 793, RFC 768) of the segment `ip` carries,
/// folded, not complemented: what the transport checksum field holds while
/// it is partial. `ip` has no options (IHL 5) and its total length is
/// checked.
#[inline(always)]
pub fn pseudo_header(ip: &Ipv4Hdr) -> u16 {
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    let l4_len = ip.tot_len().wrapping_sub(IPV4_HDR);
    csum::fold(
        w([ip.src[0], ip.src[1]])
            + w([ip.src[2], ip.src[3]])
            + w([ip.dst[0], ip.dst[1]])
            + w([ip.dst[2], ip.dst[3]])
            + u32::from(ip.proto)
            + u32::from(l4_len),
    )
}

/// Finishes the partial transport checksum of the IPv4 packet (no options,
/// total length checked) in the frame: returns the full checksum with bit
/// 16 set, or 0 when the segment is longer than the frame or than the
/// checksum loop covers (`parse::MAX_SUMMED`). Only reads the frame; the
/// caller stores the result.
///
/// With the field holding the pseudo-header sum, the sum of the segment as
/// it is equals pseudo-header + segment with a zero field: its complement is
/// the checksum. Called only for partial checksums: the loop costs the
/// other packets nothing.
///
/// A *global* BPF function (exported by lb-ebpf's build script, as
/// `conntrack::onehop_flow_create`): the verifier checks it once, on its
/// own, with the context as its one argument (the argument type global
/// functions have taken since they exist, 5.6). Inlined, or as a static
/// function, its loop of up to 2,048 steps was walked again for every way
/// the packet path reaches its two callers: past the verifier's million
/// instructions.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn onehop_finish_checksum(ctx: *mut xdp_md) -> u32 {
    // Volatile loads, as in `fragment::to_node`: keeps the context itself
    // the argument (the verifier rejects a packet pointer where BTF says
    // "context").
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: the only cursor this function makes; it only reads, and the
    // caller writes nothing to the frame before this returns.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    let (Some(_), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv4Hdr>()) else {
        return 0;
    };
    let l4_len = usize::from(ip.tot_len()).wrapping_sub(IPV4_LEN);
    let Some(sum) = cur.sum_ahead(l4_len) else {
        return 0;
    };
    u32::from(!csum::fold(sum)) | 0x1_0000
}
