//! ICMP echo to a VIP is answered from XDP (so `ping VIP` works whichever
//! backends exist). ICMP errors (destination unreachable, time exceeded,
//! parameter problem) go to `icmp_error`, which forwards those about a flow
//! to its backend. Other ICMP to a VIP is dropped.
//!
//! The reply's checksum is the request's, updated incrementally, so a request
//! with a wrong checksum would get a reply with a wrong one: the checksum is
//! verified over the whole message first (`bad_icmp_checksum`), a loop over
//! at most `MAX_SUMMED` bytes — more than any frame this program sees.

use aya_ebpf::bindings::xdp_md;
use lb_common::{Counter, DropReason};

use crate::{
    csum::{self, Delta},
    icmp_error,
    parse::{Cursor, EthHdr, IPV4_LEN, IcmpHdr, Ipv4Hdr},
    verdict::Outcome,
};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const REPLY_TTL: u8 = 64;

/// Whether an ICMP message to a VIP is an error (`icmp_error`'s to forward)
/// rather than one to answer here, after checking that its header is
/// there; `l4_len` is how many bytes the IP header says follow it.
#[inline(always)]
pub fn is_error(cur: &mut Cursor<'_>, l4_len: usize) -> Result<bool, DropReason> {
    if l4_len < core::mem::size_of::<IcmpHdr>() {
        return Err(DropReason::Truncated);
    }
    let icmp = cur.take::<IcmpHdr>().ok_or(DropReason::Truncated)?;
    Ok(icmp_error::is_error(icmp.ty))
}

/// ICMP to a VIP that is not an error (see [`is_error`]), its IPv4 header
/// validated by the caller (no options, whole datagram, checksum right,
/// source not martian): answers an echo request; returns the XDP action,
/// the outcome counted.
///
/// A *global* BPF function (exported by lb-ebpf's build script, as
/// `partial::onehop_finish_checksum`), taking only the context: the
/// verifier checks it once, on its own. Inlined into the service path, the
/// echo checksum's loop was walked again for every way the packet path
/// reaches it. A leaf: a call chain through it stays within the stack.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn onehop_icmp_echo(ctx: *mut xdp_md) -> u32 {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: the only cursor over the packet while this runs: the caller
    // holds none it uses after the call.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    let out = match (cur.take::<EthHdr>(), cur.take::<Ipv4Hdr>()) {
        (Some(eth), Some(ip)) => {
            // The caller checked the total length against the frame and
            // the header length (20); `take` checks every byte read again.
            let l4_len = usize::from(ip.tot_len()).wrapping_sub(IPV4_LEN);
            echo(&mut cur, eth, ip, l4_len)
        }
        _ => Outcome::Drop(DropReason::Truncated),
    };
    out.finish()
}

/// `ip` is validated (no options, whole datagram, checksum right); `l4_len`
/// is how many bytes the IP header says follow it.
#[inline(always)]
fn echo(cur: &mut Cursor<'_>, eth: &mut EthHdr, ip: &mut Ipv4Hdr, l4_len: usize) -> Outcome {
    if l4_len < core::mem::size_of::<IcmpHdr>() {
        return Outcome::Drop(DropReason::Truncated);
    }
    let Some(icmp) = cur.take::<IcmpHdr>() else {
        return Outcome::Drop(DropReason::Truncated);
    };
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
