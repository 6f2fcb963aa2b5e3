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

/// Rewrites an IPv6 packet's destination to `addr:port`, keeping the
/// transport checksum consistent (IPv6 has no header checksum; the kernel
/// decrements the hop limit when it routes the packet on). `old` is the
/// packet's destination as the caller copied it (the flow's key): the
/// change is summed from that copy and from `addr` in words
/// ([`Delta::addr6`]), not from the packet byte by byte.
///
/// # Safety
/// `old` and `addr` are 4-aligned fields of map values or of the scratch
/// slot (see [`Delta::addr6`]).
#[inline(always)]
pub unsafe fn rewrite_dst6(
    ip: &mut Ipv6Hdr,
    l4: &mut L4<'_>,
    old: &[u8; 16],
    addr: &[u8; 16],
    port: u16,
) {
    let mut d = Delta::default();
    // SAFETY: the caller's promise.
    unsafe { d.addr6(old, addr) };
    // SAFETY: distinct 16-byte arrays (a map value's, the packet's).
    unsafe { core::ptr::copy_nonoverlapping(addr, &raw mut ip.dst, 1) };
    d.word(u16::from_be_bytes(*l4.dport), port);
    *l4.dport = port.to_be_bytes();
    l4.apply(d);
}

/// Rewrites an IPv6 packet's source and/or destination to `addr:port`,
/// keeping the transport checksum consistent. The hop limit is the
/// caller's: IPv6 has no header checksum to keep.
#[inline(always)]
pub fn rewrite6(
    ip: &mut Ipv6Hdr,
    l4: &mut L4<'_>,
    src: Option<(&[u8; 16], u16)>,
    dst: Option<(&[u8; 16], u16)>,
) {
    let mut d = Delta::default();
    if let Some((addr, port)) = src {
        replace_addr(&mut d, &mut ip.src, addr);
        d.word(u16::from_be_bytes(*l4.sport), port);
        *l4.sport = port.to_be_bytes();
    }
    if let Some((addr, port)) = dst {
        replace_addr(&mut d, &mut ip.dst, addr);
        d.word(u16::from_be_bytes(*l4.dport), port);
        *l4.dport = port.to_be_bytes();
    }
    l4.apply(d);
}

/// Writes `new` over the address `field`, adding the change to `d`, two
/// bytes at a time. Every access is volatile, the running sum included, so
/// each word is summed before the next is read: left to itself LLVM reads
/// all the bytes of both addresses first, sums them at the end, and spills
/// each byte to an 8-byte stack slot meanwhile (two rewritten addresses
/// took 512 bytes, the whole BPF stack).
#[inline(always)]
fn replace_addr(d: &mut Delta, field: &mut [u8; 16], new: &[u8; 16]) {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 16 {
        // SAFETY: `i + 2 <= 16`: two bytes within each array, accessed as
        // bytes (no alignment needed); `field` and `new` are distinct
        // borrows; `sum` is a local.
        unsafe {
            let at = field.as_mut_ptr().add(i).cast::<[u8; 2]>();
            let old = u16::from_be_bytes(core::ptr::read_volatile(at));
            let w = core::ptr::read_volatile(new.as_ptr().add(i).cast::<[u8; 2]>());
            core::ptr::write_volatile(at, w);
            let change = u32::from(!old) + u32::from(u16::from_be_bytes(w));
            core::ptr::write_volatile(
                &raw mut sum,
                core::ptr::read_volatile(&raw const sum) + change,
            );
        }
        i += 2;
    }
    *d = d.plus(Delta::from_sum(sum));
}
