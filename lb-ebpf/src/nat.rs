//! Header rewrites with incremental checksum updates (see `csum`).
//!
//! UDP: a zero checksum means "none" and stays zero; an updated checksum that
//! comes out as zero is sent as `0xffff` (RFC 768), which the receiver reads
//! as the same value.

use crate::{
    csum::Delta,
    parse::{Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr},
};

/// The transport header's ports and checksum, whatever the protocol.
pub struct L4<'a> {
    pub sport: &'a mut [u8; 2],
    pub dport: &'a mut [u8; 2],
    check: &'a mut [u8; 2],
    udp: bool,
}

impl<'a> L4<'a> {
    #[inline(always)]
    pub fn tcp(h: &'a mut TcpHdr) -> Self {
        Self {
            sport: &mut h.sport,
            dport: &mut h.dport,
            check: &mut h.check,
            udp: false,
        }
    }

    #[inline(always)]
    pub fn udp(h: &'a mut UdpHdr) -> Self {
        Self {
            sport: &mut h.sport,
            dport: &mut h.dport,
            check: &mut h.check,
            udp: true,
        }
    }

    #[inline(always)]
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes(*self.sport)
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(*self.dport)
    }

    /// The checksum field, host order.
    #[inline(always)]
    pub fn check(&self) -> u16 {
        u16::from_be_bytes(*self.check)
    }

    /// Stores a checksum computed over the whole segment (UDP sends a zero
    /// result as `0xffff`, RFC 768).
    #[inline(always)]
    pub fn set_full_check(&mut self, c: u16) {
        let c = if self.udp && c == 0 { 0xffff } else { c };
        *self.check = c.to_be_bytes();
    }

    #[inline(always)]
    fn apply(&mut self, d: Delta) {
        let old = u16::from_be_bytes(*self.check);
        if self.udp && old == 0 {
            return;
        }
        let mut new = d.apply(old);
        if self.udp && new == 0 {
            new = 0xffff;
        }
        *self.check = new.to_be_bytes();
    }
}

#[derive(Clone, Copy)]
pub struct Endpoint {
    pub addr: [u8; 4],
    /// Host order.
    pub port: u16,
}

/// Rewrites the source and/or destination endpoint and optionally
/// decrements the TTL (when we forward instead of the kernel), keeping both
/// checksums consistent.
#[inline(always)]
pub fn rewrite(
    ip: &mut Ipv4Hdr,
    l4: &mut L4<'_>,
    src: Option<Endpoint>,
    dst: Option<Endpoint>,
    dec_ttl: bool,
) {
    let mut l3 = Delta::default();
    let mut tp = Delta::default();
    if let Some(s) = src {
        l3.addr(ip.src, s.addr);
        tp.addr(ip.src, s.addr);
        tp.bytes2(*l4.sport, s.port.to_be_bytes());
        ip.src = s.addr;
        *l4.sport = s.port.to_be_bytes();
    }
    if let Some(d) = dst {
        l3.addr(ip.dst, d.addr);
        tp.addr(ip.dst, d.addr);
        tp.bytes2(*l4.dport, d.port.to_be_bytes());
        ip.dst = d.addr;
        *l4.dport = d.port.to_be_bytes();
    }
    if dec_ttl {
        let old = ip.ttl_proto_word();
        ip.ttl -= 1;
        l3.word(old, ip.ttl_proto_word());
    }
    ip.set_check(l3.apply(ip.check()));
    l4.apply(tp);
}

/// One end of an IPv6 packet rewritten: `old` is the packet's address as
/// the caller copied it (the flow's key, or a reply's), `new` and `port`
/// (host order) what it becomes.
#[derive(Clone, Copy)]
pub struct Change6<'a> {
    pub old: &'a [u8; 16],
    pub new: &'a [u8; 16],
    pub port: u16,
}

/// Rewrites an IPv6 packet's source and/or destination, keeping the
/// transport checksum consistent. The change is summed from the copies of
/// the old addresses and from the new ones in words ([`Delta::addr6`]),
/// not from the packet byte by byte. The hop limit is the caller's: IPv6
/// has no header checksum to keep.
///
/// # Safety
/// Every address of `src` and `dst` is a 4-aligned field of a map value or
/// of the scratch slot (see [`Delta::addr6`]).
#[inline(always)]
pub unsafe fn rewrite6(
    ip: &mut Ipv6Hdr,
    l4: &mut L4<'_>,
    src: Option<Change6<'_>>,
    dst: Option<Change6<'_>>,
) {
    let mut d = Delta::default();
    if let Some(c) = src {
        // SAFETY: the caller's promise.
        unsafe { change6(&mut d, &mut ip.src, l4.sport, c) };
    }
    if let Some(c) = dst {
        // SAFETY: the caller's promise.
        unsafe { change6(&mut d, &mut ip.dst, l4.dport, c) };
    }
    l4.apply(d);
}

/// One end of [`rewrite6`]: `c` written over the packet's address `addr`
/// and port `port`, the checksum change added to `d`.
///
/// # Safety
/// As [`rewrite6`]'s: `c`'s addresses are 4-aligned fields of a map value
/// or of the scratch slot, so `c.new` is distinct from the packet.
#[inline(always)]
unsafe fn change6(d: &mut Delta, addr: &mut [u8; 16], port: &mut [u8; 2], c: Change6<'_>) {
    // SAFETY: the caller's promise.
    unsafe {
        d.addr6(c.old, c.new);
        core::ptr::copy_nonoverlapping(c.new, addr, 1);
    }
    d.word(u16::from_be_bytes(*port), c.port);
    *port = c.port.to_be_bytes();
}
