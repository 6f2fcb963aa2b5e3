//! Internet checksums. Rewrites update checksums incrementally (RFC 1624,
//! eqn. 3: `HC' = ~(~HC + ~m + m')`), so a packet whose checksum was right
//! stays right and one whose checksum was wrong stays wrong — we never vouch
//! for bytes we did not read. The IPv4 header checksum is verified (20
//! bytes, cheap), and an ICMP echo request's before we answer it (the
//! reply is ours); TCP/UDP checksums are left to the receiver.

use aya_ebpf::bindings::xdp_md;

use crate::{
    family::words,
    parse::{Addr16, Cursor, EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
};

/// Folds an unfolded one's-complement sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "two folds leave at most 0xffff"
    )]
    let folded = s as u16;
    folded
}

/// Accumulated change of 16-bit words covered by one checksum.
#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        // At most a few dozen words per packet: far from overflowing u32.
        self.0 += u32::from(!old) + u32::from(new);
    }

    #[inline(always)]
    pub fn bytes2(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.word(u16::from_be_bytes(old), u16::from_be_bytes(new));
    }

    #[inline(always)]
    pub fn addr(&mut self, old: [u8; 4], new: [u8; 4]) {
        self.bytes2([old[0], old[1]], [new[0], new[1]]);
        self.bytes2([old[2], old[3]], [new[2], new[3]]);
    }

    /// An IPv4 address change, both given as `u32::from_ne_bytes` of the
    /// address bytes (so a value that sits in a register need not be
    /// written out as bytes first).
    #[inline(always)]
    pub fn addr32(&mut self, old: u32, new: u32) {
        self.addr(old.to_ne_bytes(), new.to_ne_bytes());
    }

    /// An IPv6 address change, both addresses read where they lie in
    /// 4-byte words (native byte order, the sum turned around once at the
    /// end: RFC 1071 2(B)), not byte by byte.
    ///
    /// # Safety
    /// `old` and `new` are 4-aligned: fields of map values or of the scratch
    /// slot (see the callers' assertions), never of the packet, whose
    /// alignment nothing promises.
    #[inline(always)]
    pub unsafe fn addr6(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let sum = |a: &[u8; 16]| {
            // SAFETY: 4-aligned (the caller's promise).
            unsafe { words(a) }.map(u64::from).iter().sum::<u64>()
        };
        // Each complemented word is 0xffff_ffff less the word.
        let s = 4 * 0xffff_ffff - sum(old) + sum(new);
        let s = (s & 0xffff_ffff) + (s >> 32);
        let s = (s & 0xffff_ffff) + (s >> 32);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "two folds leave at most 0xffff_ffff"
        )]
        let native = fold(s as u32);
        self.0 += u32::from(if cfg!(target_endian = "little") {
            native.swap_bytes()
        } else {
            native
        });
    }

    /// A change already summed (one's-complement, unfolded, below 2^31).
    #[inline(always)]
    pub fn from_sum(s: u32) -> Delta {
        Delta(s)
    }

    /// Both changes together (each at most a dozen words).
    #[must_use]
    #[inline(always)]
    pub fn plus(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// The checksum field after the change.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + u32::from(fold(self.0)))
    }
}

/// True when an unfolded one's-complement sum over data that includes its
/// checksum field says the checksum is right.
#[inline(always)]
pub fn sums_to_ones(s: u32) -> bool {
    fold(s) == 0xffff
}

/// True when the 20-byte header's checksum is right (the one's-complement
/// sum over the header, checksum included, is all ones).
#[inline(always)]
pub fn ipv4_header_ok(ip: &Ipv4Hdr) -> bool {
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    let s = u32::from(u16::from_be_bytes([ip.vihl, ip.tos]))
        + w(ip.tot_len)
        + w(ip.id)
        + w(ip.frag)
        + u32::from(ip.ttl_proto_word())
        + w(ip.check)
        + w([ip.src[0], ip.src[1]])
        + w([ip.src[2], ip.src[3]])
        + w([ip.dst[0], ip.dst[1]])
        + w([ip.dst[2], ip.dst[3]]);
    fold(s) == 0xffff
}

/// What [`onehop_nd_options_sum`] returns when the frame does not hold the
/// bytes.
pub const SUM_OUT_OF_FRAME: u32 = u32::MAX;

/// The unfolded one's-complement sum of the `len` bytes after a Neighbor
/// Discovery message's fixed part (its options), in a frame of Ethernet,
/// IPv6 and the message, or [`SUM_OUT_OF_FRAME`].
///
/// A *global* BPF function (exported by lb-ebpf's build script): the
/// verifier walks its loop once, and the caller goes on from one state
/// whatever the length — inlined, every way out of the loop was a state of
/// its own, and what follows was verified again for each.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_nd_options_sum(ctx: *mut xdp_md, len: u32) -> u32 {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: reads only; the caller holds no reference it writes through
    // while this runs.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    if cur.take::<EthHdr>().is_none()
        || cur.take::<Ipv6Hdr>().is_none()
        || cur.take::<IcmpHdr>().is_none()
        || cur.take::<Addr16>().is_none()
    {
        return SUM_OUT_OF_FRAME;
    }
    cur.sum_ahead(len as usize).unwrap_or(SUM_OUT_OF_FRAME)
}
