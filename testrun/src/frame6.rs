//! Ethernet/IPv6 frames for the packet tests and `bench xdp`, field by
//! field so a test can damage any of them (version, payload length,
//! extension headers), and the transport segments they carry with their
//! checksums (RFC 8200 8.1), from [`ones_sum`] as the IPv4 builder's.

use crate::frame::ones_sum;

pub const ETH_IPV6: u16 = 0x86dd;
/// Bytes before an IPv6 frame's transport header (no extension header).
pub const L4_AT: usize = 14 + 40;

/// The pseudo-header's sum for `len` bytes of `next` from `src` to `dst`.
pub fn pseudo_sum6(src: &[u8; 16], dst: &[u8; 16], next: u8, len: usize) -> u32 {
    let len = u32::try_from(len).expect("L4 length");
    u32::from(ones_sum(src, 0))
        + u32::from(ones_sum(dst, 0))
        + (len >> 16)
        + (len & 0xffff)
        + u32::from(next)
}

/// The checksum for `l4` (its checksum field zero).
pub fn l4_checksum6(src: &[u8; 16], dst: &[u8; 16], next: u8, l4: &[u8]) -> u16 {
    !ones_sum(l4, pseudo_sum6(src, dst, next, l4.len()))
}

/// Whether `l4`, checksum included, verifies (TCP, UDP and ICMPv6 alike).
pub fn l4_verifies6(src: &[u8; 16], dst: &[u8; 16], next: u8, l4: &[u8]) -> bool {
    ones_sum(l4, pseudo_sum6(src, dst, next, l4.len())) == 0xffff
}

/// An Ethernet + IPv6 frame: `ext` (whole extension headers) then `l4`,
/// the first header's type `next`.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
    pub next: u8,
    pub ext: Vec<u8>,
    pub l4: Vec<u8>,
    /// Overrides the payload length field.
    pub payload_len: Option<u16>,
    pub version: u8,
}

impl Frame6 {
    pub fn new(
        (eth_src, eth_dst): ([u8; 6], [u8; 6]),
        src: [u8; 16],
        dst: [u8; 16],
        next: u8,
        l4: Vec<u8>,
    ) -> Self {
        Self {
            eth_dst,
            eth_src,
            src,
            dst,
            hop_limit: 64,
            next,
            ext: Vec::new(),
            l4,
            payload_len: None,
            version: 6,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(L4_AT + self.ext.len() + self.l4.len());
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&ETH_IPV6.to_be_bytes());
        f.extend_from_slice(&[self.version << 4, 0, 0, 0]);
        let len = self
            .payload_len
            .unwrap_or_else(|| u16::try_from(self.ext.len() + self.l4.len()).expect("length"));
        f.extend_from_slice(&len.to_be_bytes());
        f.push(self.next);
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.ext);
        f.extend_from_slice(&self.l4);
        f
    }
}

/// A TCP segment with `flags` and `data`, its checksum right.
pub fn tcp6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = vec![0; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t.extend_from_slice(data);
    let c = l4_checksum6(&src, &dst, lb_common::proto::TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram with `data`, its checksum right (mandatory over IPv6).
pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&u16::try_from(8 + data.len()).expect("length").to_be_bytes());
    u.extend_from_slice(data);
    let c = l4_checksum6(&src, &dst, lb_common::proto::UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMPv6 message of type `ty`, code `code` with its checksum.
pub fn icmp6(src: &[u8; 16], dst: &[u8; 16], ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    let c = l4_checksum6(src, dst, lb_common::proto::ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder against etherparse, an independent implementation.
    #[test]
    fn segments_and_frames_parse_and_verify_elsewhere() {
        let (src, dst) = (
            [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50],
            [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
        );
        let macs = ([2, 0, 0, 0, 0, 0x50], [2, 0, 0, 0, 0, 1]);
        for (next, l4) in [
            (
                lb_common::proto::TCP,
                tcp6(src, 40000, dst, 80, 0x12, b"hello"),
            ),
            (lb_common::proto::UDP, udp6(src, 5353, dst, 53, b"odd")),
        ] {
            let f = Frame6::new(macs, src, dst, next, l4.clone()).build();
            let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
                panic!("not IPv6");
            };
            assert_eq!(
                (ip.header().source(), ip.header().destination()),
                (src, dst)
            );
            let ok = match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    t.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                        == Ok(t.checksum())
                }
                Some(etherparse::TransportSlice::Udp(u)) => {
                    u.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                        == Ok(u.checksum())
                }
                _ => false,
            };
            assert!(ok, "etherparse verifies the {next} checksum");
            assert!(l4_verifies6(&src, &dst, next, &l4));
            let mut bad = l4;
            bad[4] ^= 1;
            assert!(!l4_verifies6(&src, &dst, next, &bad));
        }
    }
}
