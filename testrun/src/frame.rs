//! The one frame builder of the packet tests and `bench xdp`: Ethernet/IPv4
//! (TCP, UDP, ICMP echo, any other protocol) and ARP frames, described
//! field by field so a test can damage any of them. Checksums come from the
//! builder's own one's complement sum; the tests re-check the data path's
//! output with etherparse, an independent implementation, and this crate's
//! tests check the builder against it too.

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;

/// One's complement sum of `data` folded to 16 bits (not complemented).
pub fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).expect("folded to 16 bits")
}

pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(len).expect("L4 length").to_be_bytes());
    u32::from(ones_sum(&p, 0))
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `zero_csum`: send without a checksum (allowed for UDP over IPv4).
    Udp {
        zero_csum: bool,
    },
    IcmpEcho {
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
    },
    Other(u8),
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An Ethernet/IPv4 frame, described field by field.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub id: u16,
    /// Flags (DF/MF) and fragment offset, as on the wire.
    pub frag: u16,
    /// IPv4 options (padded by the caller to a multiple of 4).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            sport,
            dst,
            dport,
            L4::Tcp {
                flags,
                seq: 1000,
                ack: if flags & ACK != 0 { 77 } else { 0 },
            },
        )
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_csum: false })
    }

    pub fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self::new(
            src,
            0,
            dst,
            0,
            L4::IcmpEcho {
                ty: 8,
                code: 0,
                id: 0x1234,
                seq: 7,
            },
        )
    }

    fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, l4: L4) -> Self {
        Self {
            eth_src: [0x02, 0, 0, 0, 0, 0x50],
            eth_dst: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            sport,
            dport,
            ttl: 64,
            id: 0x4242,
            frag: 0x4000, // DF
            options: Vec::new(),
            l4,
            payload: b"onehop test payload".to_vec(),
        }
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } => 1,
            L4::Other(p) => p,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                l4.extend_from_slice(&self.payload);
                let s = ones_sum(&l4, pseudo_sum(self.src, self.dst, 6, l4.len()));
                l4[16..18].copy_from_slice(&(!s).to_be_bytes());
            }
            L4::Udp { zero_csum } => {
                let len = u16::try_from(8 + self.payload.len()).expect("udp len");
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                if !zero_csum {
                    let s = !ones_sum(&l4, pseudo_sum(self.src, self.dst, 17, l4.len()));
                    let s = if s == 0 { 0xffff } else { s };
                    l4[6..8].copy_from_slice(&s.to_be_bytes());
                }
            }
            L4::IcmpEcho { ty, code, id, seq } => {
                l4.extend_from_slice(&[ty, code, 0, 0]);
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&self.payload);
                let s = !ones_sum(&l4, 0);
                l4[2..4].copy_from_slice(&s.to_be_bytes());
            }
            L4::Other(_) => l4.extend_from_slice(&self.payload),
        }
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 5 + self.options.len() / 4;
        let tot = u16::try_from(ihl * 4 + l4.len()).expect("tot_len");
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&ETH_IPV4.to_be_bytes());
        let ip_start = f.len();
        f.push(0x40 | u8::try_from(ihl).expect("ihl"));
        f.push(0);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(self.ttl);
        f.push(self.proto());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.options);
        let c = !ones_sum(&f[ip_start..], 0);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }
}

/// Recomputes the IPv4 header checksum of a frame in place (after a test
/// changed a header field on purpose).
pub fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24] = 0;
    f[25] = 0;
    let c = !ones_sum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[derive(Clone, Debug)]
pub struct Arp {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

impl Arp {
    pub fn request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Self {
        Self {
            eth_src: sha,
            eth_dst: [0xff; 6],
            htype: 1,
            ptype: 0x0800,
            hlen: 6,
            plen: 4,
            oper: 1,
            sha,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&ETH_ARP.to_be_bytes());
        f.extend_from_slice(&self.htype.to_be_bytes());
        f.extend_from_slice(&self.ptype.to_be_bytes());
        f.push(self.hlen);
        f.push(self.plen);
        f.extend_from_slice(&self.oper.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa);
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa);
        f
    }
}

/// `frame` padded with zeros to `len` bytes (the Ethernet minimum is 60
/// without the FCS), as a frame arrives from a wire.
pub fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    if frame.len() < len {
        frame.resize(len, 0);
    }
    frame
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv4Header, IpNumber, Ipv4Header, TcpHeader, UdpHeader};

    use super::*;

    /// The builder's checksums are the ones etherparse computes.
    #[test]
    fn checksums_agree_with_etherparse() {
        let (src, dst) = ([10, 0, 0, 1], [192, 0, 2, 10]);
        let mut options = Pkt::tcp(src, 4000, dst, 80, SYN);
        options.options = vec![1, 1, 1, 0];
        for p in [
            Pkt::tcp(src, 4000, dst, 80, SYN),
            Pkt::tcp(src, 4000, dst, 80, ACK | PSH),
            options,
            Pkt::udp(src, 5353, dst, 53),
            Pkt::icmp_echo(src, dst),
        ] {
            let frame = p.build();
            let (ip, rest) = Ipv4Header::from_slice(&frame[14..]).expect("ipv4");
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{p:?}");
            let l4 = &rest[..usize::from(ip.total_len) - ip.header_len()];
            let ok = match ip.protocol {
                IpNumber::TCP => {
                    let (t, d) = TcpHeader::from_slice(l4).expect("tcp");
                    t.checksum == t.calc_checksum_ipv4(&ip, d).expect("tcp checksum")
                }
                IpNumber::UDP => {
                    let (u, d) = UdpHeader::from_slice(l4).expect("udp");
                    u.checksum == u.calc_checksum_ipv4(&ip, d).expect("udp checksum")
                }
                _ => {
                    let (h, d) = Icmpv4Header::from_slice(l4).expect("icmp");
                    h.checksum == h.icmp_type.calc_checksum(d)
                }
            };
            assert!(ok, "L4 checksum of {p:?}");
        }
    }

    #[test]
    fn padding_only_lengthens() {
        let arp = Arp::request([2, 0, 0, 0, 0, 1], [10, 0, 0, 1], [10, 0, 0, 2]).build();
        assert_eq!(arp.len(), 42);
        let p = padded(arp.clone(), 60);
        assert_eq!(
            (p.len(), &p[..42], &p[42..]),
            (60, &arp[..], &[0u8; 18][..])
        );
        assert_eq!(padded(p.clone(), 20), p);
    }
}
