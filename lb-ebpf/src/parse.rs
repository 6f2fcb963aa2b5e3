//! All packet pointer arithmetic lives here. A [`Cursor`] walks a frame
//! front to back and hands out each header as a reference exactly once, after
//! checking that the whole header lies before `data_end`; nothing else in the
//! crate computes a packet address.
//!
//! Header types are `#[repr(C)]` structs of bytes and byte arrays: alignment
//! 1 (frames sit at any offset) and every bit pattern valid, so a reference to
//! checked packet bytes is a valid reference. Multi-byte fields stay in wire
//! order; the accessors convert.

use core::{marker::PhantomData, mem::size_of};

/// Marker for wire headers.
///
/// # Safety
/// Implementors are `#[repr(C)]`, built only from `u8` and `[u8; N]` (so
/// alignment 1, no padding, every bit pattern valid).
pub unsafe trait Header {}

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_LEN: usize = 40;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn proto(&self) -> u16 {
        u16::from_be_bytes(self.proto)
    }
}

#[repr(C)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vihl >> 4
    }
    #[inline(always)]
    pub fn ihl(&self) -> u8 {
        self.vihl & 0x0f
    }
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }
    /// More-fragments set or a non-zero offset: not a whole datagram.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag) & 0x3fff != 0
    }
    /// A fragment with a non-zero offset: no transport header in it.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag) & 0x1fff != 0
    }
    /// The 16-bit word holding TTL and protocol, as the checksum sees it.
    #[inline(always)]
    pub fn ttl_proto_word(&self) -> u16 {
        u16::from_be_bytes([self.ttl, self.proto])
    }
    #[inline(always)]
    pub fn check(&self) -> u16 {
        u16::from_be_bytes(self.check)
    }
    #[inline(always)]
    pub fn set_check(&mut self, v: u16) {
        self.check = v.to_be_bytes();
    }
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (high nibble), traffic class and flow label.
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtcfl[0] >> 4
    }
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(self.payload_len)
    }
}

/// The first eight bytes of an IPv6 extension header (hop-by-hop,
/// routing, destination options, fragment): the next header, the length
/// in 8-byte units after the first eight (except the fragment header,
/// which is always eight), and six bytes of its own.
#[repr(C)]
pub struct Ipv6Ext {
    pub next: u8,
    pub len: u8,
    /// Routing header: routing type, then segments left.
    pub data: [u8; 6],
}

/// A 16-byte address in a message (a Neighbor Discovery target).
#[repr(C)]
pub struct Addr16 {
    pub addr: [u8; 16],
}

/// A link-layer address option (RFC 4861 4.6.1) for Ethernet: type 1
/// (source) or 2 (target), length 1 (eight bytes).
#[repr(C)]
pub struct NdLlOpt {
    pub ty: u8,
    pub len: u8,
    pub mac: [u8; 6],
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

/// The first eight bytes of a TCP or UDP header: all an ICMP error must
/// quote of it (RFC 792), and all a first fragment is sure to hold.
#[repr(C)]
pub struct L4Head {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// UDP: length. TCP: the sequence number's high half.
    pub w2: [u8; 2],
    /// UDP: checksum. TCP: the sequence number's low half.
    pub w3: [u8; 2],
}

/// TCP header bytes 8 to 17, after [`L4Head`]: up to and including the
/// checksum.
#[repr(C)]
pub struct TcpTail {
    pub ack: [u8; 4],
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
}

// SAFETY: all of these are #[repr(C)] structs of u8 and [u8; N] only.
unsafe impl Header for EthHdr {}
// SAFETY: as above.
unsafe impl Header for ArpHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Header for TcpHdr {}
// SAFETY: as above.
unsafe impl Header for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Header for Ipv6Ext {}
// SAFETY: as above.
unsafe impl Header for Addr16 {}
// SAFETY: as above.
unsafe impl Header for NdLlOpt {}
// SAFETY: as above.
unsafe impl Header for UdpHdr {}
// SAFETY: as above.
unsafe impl Header for IcmpHdr {}
// SAFETY: as above.
unsafe impl Header for L4Head {}
// SAFETY: as above.
unsafe impl Header for TcpTail {}

const _: () = assert!(size_of::<EthHdr>() == ETH_LEN);
const _: () = assert!(size_of::<ArpHdr>() == 28);
const _: () = assert!(size_of::<Ipv4Hdr>() == IPV4_LEN);
const _: () = assert!(size_of::<TcpHdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == IPV6_LEN);
const _: () = assert!(size_of::<Ipv6Ext>() == 8);
const _: () = assert!(size_of::<Addr16>() == 16);
const _: () = assert!(size_of::<NdLlOpt>() == 8);
const _: () = assert!(size_of::<UdpHdr>() == 8);
const _: () = assert!(size_of::<IcmpHdr>() == 8);
const _: () = assert!(size_of::<L4Head>() == 8);
const _: () = assert!(size_of::<TcpTail>() == 10);

/// Walks a frame front to back. Every byte is handed out at most once, so
/// the `&mut` references it returns never alias.
pub struct Cursor<'a> {
    pos: usize,
    end: usize,
    _frame: PhantomData<&'a mut [u8]>,
}

impl<'a> Cursor<'a> {
    /// # Safety
    /// `[data, data_end)` is the program's packet, and no other cursor or
    /// reference into it exists while this one (or anything it returned)
    /// lives.
    #[inline(always)]
    pub unsafe fn new(data: usize, data_end: usize) -> Self {
        Self {
            pos: data,
            end: data_end,
            _frame: PhantomData,
        }
    }

    /// The next `T`, if the frame holds all of it.
    #[inline(always)]
    pub fn take<T: Header>(&mut self) -> Option<&'a mut T> {
        let start = self.pos;
        let next = start + size_of::<T>();
        if next > self.end {
            return None;
        }
        self.pos = next;
        // SAFETY: [start, next) lies inside the packet (checked just above)
        // and was never handed out before (pos only moves forward); T is a
        // Header, so alignment 1 and any bit pattern is valid.
        Some(unsafe { &mut *(start as *mut T) })
    }

    /// Steps over the next `len` bytes (an extension header's rest), if
    /// the frame holds them; `len` is at most [`MAX_SKIP`].
    #[inline(always)]
    pub fn skip(&mut self, len: usize) -> Option<()> {
        if len > MAX_SKIP {
            return None;
        }
        let next = self.pos + len;
        if next > self.end {
            return None;
        }
        self.pos = next;
        Some(())
    }

    /// Bytes from the cursor to the end of the frame.
    #[inline(always)]
    pub fn left(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// The one's-complement sum, unfolded, of the next `len` bytes as
    /// big-endian 16-bit words (an odd last byte padded with zero), without
    /// handing them out. `None` when the frame holds fewer than `len` bytes
    /// or `len` exceeds [`MAX_SUMMED`].
    #[inline(always)]
    pub fn sum_ahead(&self, len: usize) -> Option<u32> {
        if len > MAX_SUMMED {
            return None;
        }
        let mut sum = 0u32;
        let mut off = 0usize;
        // The verifier needs a constant trip count; `len` ends it early. Each
        // access is checked against `end` itself (not against `pos + len`):
        // that is the comparison the verifier learns packet bounds from.
        for _ in 0..MAX_SUMMED.div_ceil(2) {
            let p = self.pos + off;
            if off + 2 <= len {
                if p + 2 > self.end {
                    return None;
                }
                // SAFETY: [p, p + 2) lies inside the packet (checked above);
                // read by value, no reference is kept.
                let w = unsafe { *(p as *const [u8; 2]) };
                sum += u32::from(u16::from_be_bytes(w));
                off += 2;
            } else {
                if off < len {
                    if p + 1 > self.end {
                        return None;
                    }
                    // SAFETY: as above, one byte.
                    let b = unsafe { *(p as *const u8) };
                    sum += u32::from(b) << 8;
                }
                break;
            }
        }
        Some(sum)
    }
}

/// Longest run [`Cursor::sum_ahead`] covers. An XDP program without
/// multi-buffer support only sees frames that fit one page (about 3.5 KiB
/// after headroom and the shared info), so 4 KiB covers any frame it gets;
/// it keeps the verifier's walk through the loop short. The sum cannot
/// overflow: 2048 words of at most 0xffff.
pub const MAX_SUMMED: usize = 4096;

/// Longest step [`Cursor::skip`] takes: an IPv6 extension header's length
/// byte counts at most 255 units of eight bytes after its first eight.
pub const MAX_SKIP: usize = 2040;
