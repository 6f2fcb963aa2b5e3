//! ICMP echo to a VIP is answered from XDP (so `ping VIP` works whichever
//! backends exist). ICMP errors (destination unreachable, time exceeded,
//! parameter problem) go to `icmp_error`, which forwards those about a flow
//! to its backend. Other ICMP to a VIP is dropped.
//!
//! The reply's checksum is the request's, updated incrementally, so a request
//! with a wrong checksum would get a reply with a wrong one: the checksum is
//! verified over the whole message first (`bad_icmp_checksum`), a loop over
//! at most `MAX_SUMMED` bytes — more than any frame this program sees.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, DatapathConfig, DropReason};

use crate::{
    csum::{self, Delta},
    icmp_error,
    parse::{Cursor, EthHdr, IcmpHdr, Ipv4Hdr},
    verdict::Outcome,
};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const REPLY_TTL: u8 = 64;

/// `ip` is validated (no options, whole datagram, checksum right); `l4_len`
/// is how many bytes the IP header says follow it.
#[inline(always)]
pub fn handle(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    cfg: &DatapathConfig,
    l4_len: usize,
) -> Outcome {
    if l4_len < core::mem::size_of::<IcmpHdr>() {
        return Outcome::Drop(DropReason::Truncated);
    }
    let Some(icmp) = cur.take::<IcmpHdr>() else {
        return Outcome::Drop(DropReason::Truncated);
    };
    if icmp_error::is_error(icmp.ty) {
        return Outcome::Counted(icmp_error::to_backend(ctx.ctx, cfg));
    }
    if icmp.ty != ECHO_REQUEST || icmp.code != 0 {
        return Outcome::Drop(DropReason::UnsupportedProtocol);
    }
    let header = u32::from(u16::from_be_bytes([icmp.ty, icmp.code]))
        + u32::from(u16::from_be_bytes(icmp.check))
        + u32::from(u16::from_be_bytes([icmp.rest[0], icmp.rest[1]]))
        + u32::from(u16::from_be_bytes([icmp.rest[2], icmp.rest[3]]));
    let Some(data) = cur.sum_ahead(l4_len - core::mem::size_of::<IcmpHdr>()) else {
        return Outcome::Drop(DropReason::BadIcmpChecksum);
    };
    if !csum::sums_to_ones(header + data) {
        return Outcome::Drop(DropReason::BadIcmpChecksum);
    }
    let mut d = Delta::default();
    d.word(
        u16::from_be_bytes([ECHO_REQUEST, 0]),
        u16::from_be_bytes([ECHO_REPLY, 0]),
    );
    icmp.ty = ECHO_REPLY;
    icmp.check = d.apply(u16::from_be_bytes(icmp.check)).to_be_bytes();

    // Swapping the addresses leaves the IP checksum unchanged; the TTL does not.
    core::mem::swap(&mut ip.src, &mut ip.dst);
    let mut d = Delta::default();
    let old = ip.ttl_proto_word();
    ip.ttl = REPLY_TTL;
    d.word(old, ip.ttl_proto_word());
    ip.set_check(d.apply(ip.check()));

    core::mem::swap(&mut eth.src, &mut eth.dst);
    Outcome::Tx(Counter::IcmpEchoReply)
}
