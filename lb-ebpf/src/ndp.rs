//! Neighbor Discovery for the IPv6 VIPs this node owns: `lb_ingress6`
//! answers Neighbor Solicitations for them as `arp` answers ARP requests.
//!
//! A solicitation names the address it asks about in its target field; it
//! is sent to the target's solicited-node multicast group (address
//! resolution, duplicate address detection) or to the target itself
//! (reachability confirmation). So the target, looked up in `vips6`, says
//! whether it is ours:
//! - a VIP with ANNOUNCE, while the agent's heartbeat is current: answered
//!   in place (`ndp_advert`), if it passes RFC 4861's checks (7.1.1; else
//!   `ndp_invalid`): IP version 6, hop limit 255, code 0, at least 24
//!   bytes, a right ICMPv6 checksum, options of non-zero length, and from
//!   the unspecified address (duplicate address detection) only to the
//!   solicited-node group and without a source link-layer address;
//! - a VIP with ANNOUNCE and a stale heartbeat: dropped (`ndp_stale`), as
//!   ARP is (`arp_stale`);
//! - a SERVICE VIP without ANNOUNCE: another node owns it, dropped
//!   (`ndp_not_owned`);
//! - anything else (the node's own addresses, other hosts'): the kernel's
//!   (`ndp_pass`).
//!
//! The advertisement (7.2.4) comes from the target, to the soliciting
//! address (to all nodes, `ff02::1`, for duplicate address detection),
//! with hop limit 255, the Solicited flag (not for duplicate address
//! detection) and the Override flag — the owner's answer replaces whatever
//! a neighbour cached, as after a failover — and a target link-layer
//! address option with the interface's MAC. The frame is resized to the
//! advertisement's 86 bytes (a solicitation without options is shorter,
//! one with several longer).
//!
//! Every solicitation for a VIP is counted in its `ndp_stats` entry, and
//! the source link-layer address of one we answer is remembered in
//! `learned_macs`, as `arp` does.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{xdp_action::XDP_PASS, xdp_md},
    helpers::generated::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use lb_common::{
    ArpStats, Counter, DatapathConfig, DropReason, HostKey, Ipv6Key, flow::same_addr, proto,
    vip_flags,
};

use crate::{
    arp, csum, forward,
    maps::{CONFIG, NDP_STATS, VIPS6},
    parse::{Addr16, Cursor, ETH_LEN, EthHdr, IPV6_LEN, IcmpHdr, Ipv6Hdr, NdLlOpt},
    verdict::Outcome,
};

/// ICMPv6 types (RFC 4861 4.3, 4.4).
pub const SOLICITATION: u8 = 135;
const ADVERTISEMENT: u8 = 136;
/// Option types (4.6.1).
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// The hop limit every Neighbor Discovery message carries (a router would
/// have decremented it: the sender is on the link).
const ND_HOP_LIMIT: u8 = 255;
/// Advertisement flags (first byte of the flags word).
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;
/// Bytes of the fixed part of a solicitation or advertisement.
const ND_LEN: usize = 24;
/// Longest solicitation whose checksum is verified (and so answered):
/// room for its fixed part and a few dozen options, where a real one has
/// one (the source link-layer address) or two (a nonce).
const MAX_SOLICITATION: usize = 512;
/// Options looked at for the source link-layer address.
const MAX_OPTIONS: usize = 8;
/// The advertisement's frame: Ethernet, IPv6, the fixed part, one option.
const ADVERT_FRAME: usize = ETH_LEN + IPV6_LEN + ND_LEN + 8;
#[expect(
    clippy::cast_possible_truncation,
    reason = "32 bytes: the advertisement's ICMPv6 length"
)]
const ADVERT_LEN: u16 = (ND_LEN + 8) as u16;
/// `ff02::1` (all nodes), in two halves.
const ALL_NODES_HIGH: u64 = 0xff02_0000_0000_0000;
const ALL_NODES_LOW: u64 = 1;
/// `33:33:00:00:00:01` (all nodes' multicast MAC), two bytes and four.
const ALL_NODES_MAC_HIGH: u16 = 0x3333;
const ALL_NODES_MAC_LOW: u32 = 1;

/// Whether `a` is the solicited-node multicast address of `target`
/// (`ff02::1:ff00:0/104` and its last three bytes, RFC 4291 2.7.1).
#[inline(always)]
fn solicited_node_of(a: &[u8; 16], target: &[u8; 16]) -> bool {
    // As integers: comparing slices is a `bcmp` call in BPF.
    let mut group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    group[13] = target[13];
    group[14] = target[14];
    group[15] = target[15];
    u128::from_ne_bytes(*a) == u128::from_ne_bytes(group)
}

#[inline(always)]
fn unspecified(a: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*a) == 0
}

/// The unfolded one's-complement sum of a 16-byte address.
#[inline(always)]
pub fn sum16(a: &[u8; 16]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < 16 {
        s += u32::from(u16::from_be_bytes([a[i], a[i + 1]]));
        i += 2;
    }
    s
}

/// The IPv6 pseudo-header's sum (RFC 8200 8.1) for an upper-layer packet
/// of `len` bytes.
#[inline(always)]
pub fn pseudo_sum(src: &[u8; 16], dst: &[u8; 16], next: u8, len: usize) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the two halves of a 32-bit length, as the checksum sums them"
    )]
    let (hi, lo) = ((len >> 16) as u32 & 0xffff, len as u32 & 0xffff);
    sum16(src) + sum16(dst) + hi + lo + u32::from(next)
}

/// Adds one to the `requests` (or, with `reply`, `replies`) count of an
/// `ndp_stats` entry.
#[inline(always)]
fn add(s: *mut ArpStats, reply: bool) {
    // SAFETY: a live map value (valid for the whole run, even if the agent
    // deletes the entry meanwhile); every CPU changes it only atomically,
    // as `arp` does.
    unsafe {
        let counter = if reply {
            &raw mut (*s).replies
        } else {
            &raw mut (*s).requests
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1);
    }
}

/// A Neighbor Solicitation: an IPv6 frame whose next header is ICMPv6
/// (no extension headers) of type [`SOLICITATION`]. See the module docs.
/// Returns the XDP action, the outcome counted.
///
/// A *global* BPF function (exported by lb-ebpf's build script) taking only
/// the context, as `icmp::onehop_icmp_echo`: its checksum and option loops
/// are verified once, on their own, not on every path of `lb_ingress6`
/// (which took the program past the verifier's million instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn onehop_ndp_solicitation(ctx: *mut xdp_md) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let ctx = XdpContext::new(ctx);
    // SAFETY: the only cursor over the packet while this runs: the caller
    // holds none it uses after the call.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let out = match (
        cur.take::<EthHdr>(),
        cur.take::<Ipv6Hdr>(),
        cur.take::<IcmpHdr>(),
    ) {
        (Some(eth), Some(ip), Some(icmp)) => solicitation(&ctx, &mut cur, eth, ip, icmp, cfg),
        _ => Outcome::Pass(Counter::NdpPass),
    };
    out.finish()
}

/// [`onehop_ndp_solicitation`]'s work, `icmp` the message's first eight
/// bytes and `cur` just past them.
#[inline(always)]
fn solicitation(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &EthHdr,
    ip: &Ipv6Hdr,
    icmp: &IcmpHdr,
    cfg: &DatapathConfig,
) -> Outcome {
    let Some(t) = cur.take::<Addr16>() else {
        return Outcome::Pass(Counter::NdpPass);
    };
    let target = t.addr;
    let Some(v) = VIPS6.get_ptr(Ipv6Key { addr: target }) else {
        return Outcome::Pass(Counter::NdpPass);
    };
    // SAFETY: a value pointer the map just returned; read once, by value.
    let flags = unsafe { (*v).flags };
    if flags & (vip_flags::SERVICE | vip_flags::ANNOUNCE) == 0 {
        return Outcome::Pass(Counter::NdpPass);
    }
    // A unicast frame for another host's MAC (see `ingress`): not ours.
    if eth.dst[0] & 1 == 0 && eth.dst != cfg.mac {
        return Outcome::Pass(Counter::PassOtherHost);
    }
    let stats = NDP_STATS.get_ptr_mut(Ipv6Key { addr: target });
    if let Some(s) = stats {
        add(s, false);
    }
    if flags & vip_flags::ANNOUNCE == 0 {
        return Outcome::Drop(DropReason::NdpNotOwned);
    }
    let Some(source_ll) = valid(ctx.ctx, cur, ip, icmp, &target) else {
        return Outcome::Drop(DropReason::NdpInvalid);
    };
    if !arp::heartbeat_current() {
        return Outcome::Drop(DropReason::NdpStale);
    }
    if let Some(s) = stats {
        add(s, true);
    }
    let ifindex = forward::ingress_ifindex(ctx);
    if let Some(mac) = source_ll {
        arp::remember(HostKey::v6(ip.src), mac, ifindex);
    }
    advertise(ctx, cfg, unspecified(&ip.src))
}

/// RFC 4861 7.1.1's checks of a solicitation for `target` (the cursor just
/// past its fixed part): `None` when it fails them, else its source
/// link-layer address, if it has one.
#[expect(
    clippy::option_option,
    reason = "invalid, or valid with or without the option"
)]
#[inline(always)]
fn valid(
    ctx: *mut xdp_md,
    cur: &mut Cursor<'_>,
    ip: &Ipv6Hdr,
    icmp: &IcmpHdr,
    target: &[u8; 16],
) -> Option<Option<[u8; 6]>> {
    let len = usize::from(ip.payload_len());
    if ip.version() != 6
        || ip.hop_limit != ND_HOP_LIMIT
        || icmp.code != 0
        || !(ND_LEN..=MAX_SOLICITATION).contains(&len)
        || target[0] == 0xff
    {
        return None;
    }
    let options = len - ND_LEN;
    // The call first: values live across it are spilled to the stack, and
    // the addresses' words would take hundreds of bytes there.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "at most MAX_SOLICITATION bytes"
    )]
    let rest = csum::onehop_nd_options_sum(ctx, options as u32);
    if rest == csum::SUM_OUT_OF_FRAME {
        return None;
    }
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    let header = w([icmp.ty, icmp.code])
        + w(icmp.check)
        + w([icmp.rest[0], icmp.rest[1]])
        + w([icmp.rest[2], icmp.rest[3]])
        + sum16(target);
    if !csum::sums_to_ones(pseudo_sum(&ip.src, &ip.dst, proto::ICMPV6, len) + header + rest) {
        return None;
    }
    let dad = unspecified(&ip.src);
    if !solicited_node_of(&ip.dst, target) && (dad || !same_addr(&ip.dst, target)) {
        return None;
    }
    let mut source_ll = None;
    let mut left = options;
    let mut i = 0;
    while i < MAX_OPTIONS && left > 0 {
        let o = cur.take::<NdLlOpt>()?;
        let bytes = usize::from(o.len) * 8;
        if bytes == 0 || bytes > left {
            return None;
        }
        if o.ty == OPT_SOURCE_LL && o.len == 1 {
            source_ll = Some(o.mac);
        }
        cur.skip(bytes - 8)?;
        left -= bytes;
        i += 1;
    }
    if dad && source_ll.is_some() {
        return None;
    }
    Some(source_ll)
}

/// Turns the frame (a solicitation that passed [`valid`]) into the
/// advertisement of its target: to the soliciting address, or to all nodes
/// for duplicate address detection (`dad`), from this node (see the module
/// docs).
///
/// Resizing the frame keeps its first bytes where they are (only the tail
/// moves), so the solicitation's addresses and target are read from the
/// frame itself after it: nothing is carried across the helper call (the
/// call chain has 512 bytes of stack in all).
#[inline(always)]
fn advertise(ctx: &XdpContext, cfg: &DatapathConfig, dad: bool) -> Outcome {
    let len = ctx.data_end() - ctx.data();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "frames are at most a page; the difference fits an i32"
    )]
    let delta = ADVERT_FRAME as i32 - len as i32;
    // SAFETY: plain helper call on this program's context; every packet
    // pointer is taken again below.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast::<xdp_md>(), delta) } != 0 {
        return Outcome::Drop(DropReason::NdpNoRoom);
    }
    // SAFETY: the only cursor over the resized packet; the caller's
    // references into the old one are not used after this call.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let (Some(eth), Some(ip), Some(icmp), Some(t), Some(o)) = (
        cur.take::<EthHdr>(),
        cur.take::<Ipv6Hdr>(),
        cur.take::<IcmpHdr>(),
        cur.take::<Addr16>(),
        cur.take::<NdLlOpt>(),
    ) else {
        return Outcome::Drop(DropReason::NdpNoRoom);
    };
    let flags = if dad {
        // Word by word: a 16-byte constant would be a `.rodata` map.
        eth.dst[..2].copy_from_slice(&ALL_NODES_MAC_HIGH.to_be_bytes());
        eth.dst[2..].copy_from_slice(&ALL_NODES_MAC_LOW.to_be_bytes());
        ip.dst[..8].copy_from_slice(&ALL_NODES_HIGH.to_be_bytes());
        ip.dst[8..].copy_from_slice(&ALL_NODES_LOW.to_be_bytes());
        FLAG_OVERRIDE
    } else {
        eth.dst = eth.src;
        ip.dst = ip.src;
        FLAG_SOLICITED | FLAG_OVERRIDE
    };
    eth.src = cfg.mac;
    ip.vtcfl = [0x60, 0, 0, 0];
    ip.payload_len = ADVERT_LEN.to_be_bytes();
    ip.next = proto::ICMPV6;
    ip.hop_limit = ND_HOP_LIMIT;
    ip.src = t.addr;
    icmp.ty = ADVERTISEMENT;
    icmp.code = 0;
    icmp.rest = [flags, 0, 0, 0];
    o.ty = OPT_TARGET_LL;
    o.len = 1;
    o.mac = cfg.mac;
    let w = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
    let m = cfg.mac;
    let sum = pseudo_sum(&ip.src, &ip.dst, proto::ICMPV6, usize::from(ADVERT_LEN))
        + w(ADVERTISEMENT, 0)
        + w(flags, 0)
        + sum16(&t.addr)
        + w(OPT_TARGET_LL, 1)
        + w(m[0], m[1])
        + w(m[2], m[3])
        + w(m[4], m[5]);
    icmp.check = (!csum::fold(sum)).to_be_bytes();
    Outcome::Tx(Counter::NdpAdvert)
}
