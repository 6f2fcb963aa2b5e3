//! Output checks with etherparse (an independent parser and checksum
//! implementation), plus a one's-complement "does it verify" used by the
//! random-frame test, where both encodings of zero must count as valid.

use etherparse::{Ethernet2Header, Icmpv4Header, IpNumber, Ipv4Header, TcpHeader, UdpHeader};

use super::packet::{ones_sum, pseudo_sum};

/// The fields of a frame the data path may rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ip: Ipv4Header,
    pub sport: u16,
    pub dport: u16,
    pub l4_check: u16,
    /// Bytes after the transport header (up to the IP total length).
    pub payload: Vec<u8>,
}

#[track_caller]
pub fn view(frame: &[u8]) -> View {
    let (eth, rest) = Ethernet2Header::from_slice(frame).expect("ethernet header");
    let (ip, rest) = Ipv4Header::from_slice(rest).expect("ipv4 header");
    let l4_len = usize::from(ip.total_len) - ip.header_len();
    let l4 = &rest[..l4_len];
    let (sport, dport, l4_check, payload) = match ip.protocol {
        IpNumber::TCP => {
            let (t, p) = TcpHeader::from_slice(l4).expect("tcp header");
            (t.source_port, t.destination_port, t.checksum, p.to_vec())
        }
        IpNumber::UDP => {
            let (u, p) = UdpHeader::from_slice(l4).expect("udp header");
            (u.source_port, u.destination_port, u.checksum, p.to_vec())
        }
        IpNumber::ICMP => {
            let (h, p) = Icmpv4Header::from_slice(l4).expect("icmp header");
            (0, 0, h.checksum, p.to_vec())
        }
        other => panic!("unexpected protocol {other:?}"),
    };
    View {
        eth_dst: eth.destination,
        eth_src: eth.source,
        ip,
        sport,
        dport,
        l4_check,
        payload,
    }
}

/// Both checksums of `frame` equal what etherparse computes from scratch
/// (a UDP checksum of 0 means "none" and is accepted as such).
#[track_caller]
pub fn assert_checksums(frame: &[u8]) {
    let (_, rest) = Ethernet2Header::from_slice(frame).expect("ethernet header");
    let (ip, rest) = Ipv4Header::from_slice(rest).expect("ipv4 header");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let l4 = &rest[..usize::from(ip.total_len) - ip.header_len()];
    match ip.protocol {
        IpNumber::TCP => {
            let (t, p) = TcpHeader::from_slice(l4).expect("tcp");
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(&ip, p).expect("tcp csum"),
                "TCP checksum"
            );
        }
        IpNumber::UDP => {
            let (u, p) = UdpHeader::from_slice(l4).expect("udp");
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(&ip, p).expect("udp csum"),
                    "UDP checksum"
                );
            }
        }
        IpNumber::ICMP => {
            let (h, p) = Icmpv4Header::from_slice(l4).expect("icmp");
            assert_eq!(h.checksum, h.icmp_type.calc_checksum(p), "ICMP checksum");
        }
        other => panic!("unexpected protocol {other:?}"),
    }
}

/// IPv4 header checksum verifies (frame holds an Ethernet + IPv4 header).
pub fn ip_verifies(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame.len() >= 14 + ihl && ones_sum(&frame[14..14 + ihl], 0) == 0xffff
}

/// TCP/UDP checksum verifies over the L4 bytes the IP header claims; `None`
/// when the frame has no complete TCP/UDP header to check.
pub fn l4_verifies(frame: &[u8]) -> Option<bool> {
    if frame.len() < 34 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    if ihl < 20 || tot < ihl || frame.len() < 14 + tot {
        return None;
    }
    let proto = frame[23];
    let l4 = &frame[14 + ihl..14 + tot];
    let src: [u8; 4] = frame[26..30].try_into().ok()?;
    let dst: [u8; 4] = frame[30..34].try_into().ok()?;
    match proto {
        6 if l4.len() >= 20 => Some(ones_sum(l4, pseudo_sum(src, dst, 6, l4.len())) == 0xffff),
        17 if l4.len() >= 8 => {
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            Some(c == 0 || ones_sum(l4, pseudo_sum(src, dst, 17, l4.len())) == 0xffff)
        }
        _ => None,
    }
}
