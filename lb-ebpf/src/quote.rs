//! The packet an ICMP or ICMPv6 error quotes, parsed and re-checksummed
//! once for both families: `icmp_error` and `icmp6_error` differ in the
//! outer header and in which addresses they rewrite, not in how a quote is
//! read or how its transport checksum follows a change (see those modules
//! for the policy).

use crate::{
    csum::Delta,
    parse::{Cursor, Header, IPV4_LEN, IPV6_LEN, IcmpHdr, Ipv4Hdr, Ipv6Hdr, L4Head, TcpTail},
};

pub const ICMP_LEN: usize = core::mem::size_of::<IcmpHdr>();

/// The IP header at the start of a quote.
pub trait QuotedIp: Header {
    /// Its fixed length.
    const LEN: usize;
    /// The shortest quote we can match: this header and the ports.
    const MIN_QUOTE: usize = Self::LEN + core::mem::size_of::<L4Head>();
    /// A quote that holds a TCP header's checksum (bytes 16 and 17).
    const TCP_CHECK_QUOTE: usize = Self::MIN_QUOTE + core::mem::size_of::<TcpTail>();

    /// A header of this family at all: otherwise the quote is malformed.
    fn well_formed(&self) -> bool;
    /// The transport protocol when its ports follow this header at once;
    /// `None` when anything moves them (IPv4 options, a fragment that is
    /// not the first, IPv6 extension headers), which our flows' packets
    /// never carry.
    fn transport(&self) -> Option<u8>;
}

impl QuotedIp for Ipv4Hdr {
    const LEN: usize = IPV4_LEN;

    #[inline(always)]
    fn well_formed(&self) -> bool {
        self.version() == 4 && self.ihl() >= 5
    }

    #[inline(always)]
    fn transport(&self) -> Option<u8> {
        (self.ihl() == 5 && !self.is_later_fragment()).then_some(self.proto)
    }
}

impl QuotedIp for Ipv6Hdr {
    const LEN: usize = IPV6_LEN;

    #[inline(always)]
    fn well_formed(&self) -> bool {
        self.version() == 6
    }

    #[inline(always)]
    fn transport(&self) -> Option<u8> {
        // Any extension header (a fragment header too) is another `next`.
        Some(self.next)
    }
}

/// The quoted packet of an error, as far as we may rewrite it.
pub struct Quote<'a, H> {
    pub ip: &'a mut H,
    pub sport: &'a mut [u8; 2],
    pub dport: &'a mut [u8; 2],
    /// The quoted transport checksum, if the quote holds it.
    pub check: Option<&'a mut [u8; 2]>,
    pub udp: bool,
}

impl<H> Quote<'_, H> {
    #[inline(always)]
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes(*self.sport)
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(*self.dport)
    }
}

pub enum Parsed<T> {
    /// A quote of a TCP or UDP packet that may be one of ours.
    Quote(T),
    /// Too short for a quoted IP header and eight bytes, or no header of
    /// the family.
    Malformed,
    /// Well formed, but quoting nothing a flow of ours could have sent.
    NoFlow,
}

impl<T> Parsed<T> {
    /// The same verdict for another quote (`Quote`: `f` of it).
    #[inline(always)]
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Parsed<U> {
        match self {
            Parsed::Quote(t) => Parsed::Quote(f(t)),
            Parsed::Malformed => Parsed::Malformed,
            Parsed::NoFlow => Parsed::NoFlow,
        }
    }
}

/// Parses an error message right after the outer header; `l4_len` is what
/// that header says follows it, `is_error` which ICMP types of the family
/// quote a packet.
#[inline(always)]
pub fn parse<'a, H: QuotedIp>(
    cur: &mut Cursor<'a>,
    l4_len: usize,
    is_error: impl FnOnce(u8) -> bool,
) -> Parsed<(&'a mut IcmpHdr, Quote<'a, H>)> {
    if l4_len < ICMP_LEN + H::MIN_QUOTE {
        return Parsed::Malformed;
    }
    let Some(icmp) = cur.take::<IcmpHdr>() else {
        return Parsed::Malformed;
    };
    if !is_error(icmp.ty) {
        return Parsed::NoFlow;
    }
    let Some(ip) = cur.take::<H>() else {
        return Parsed::Malformed;
    };
    if !ip.well_formed() {
        return Parsed::Malformed;
    }
    let udp = match ip.transport() {
        Some(lb_common::proto::UDP) => true,
        Some(lb_common::proto::TCP) => false,
        _ => return Parsed::NoFlow,
    };
    let Some(head) = cur.take::<L4Head>() else {
        return Parsed::Malformed;
    };
    let L4Head {
        sport, dport, w3, ..
    } = head;
    let check = if udp {
        Some(w3)
    } else if l4_len >= ICMP_LEN + H::TCP_CHECK_QUOTE {
        cur.take::<TcpTail>().map(|t| &mut t.check)
    } else {
        None
    };
    Parsed::Quote((
        icmp,
        Quote {
            ip,
            sport,
            dport,
            check,
            udp,
        },
    ))
}

/// Moves the quoted transport checksum (if quoted) by `transport`, the
/// change of what it covers, and adds its own change to `icmp`, the ICMP
/// checksum's delta. A zero UDP checksum (none computed; invalid over IPv6,
/// where we do not vouch for what we did not check) stays zero, and a
/// computed one never becomes zero.
#[inline(always)]
pub fn follow_transport(
    check: Option<&mut [u8; 2]>,
    udp: bool,
    transport: Delta,
    icmp: &mut Delta,
) {
    if let Some(c) = check {
        let old = u16::from_be_bytes(*c);
        if !(udp && old == 0) {
            let mut new = transport.apply(old);
            if udp && new == 0 {
                new = 0xffff;
            }
            *c = new.to_be_bytes();
            icmp.word(old, new);
        }
    }
}
