//! Gratuitous ARP: when this node starts announcing a VIP, tell the LAN at
//! once (switches and neighbours update their tables) instead of waiting
//! for caches to expire. Sent as ARP requests with sender = target = VIP,
//! the form every stack accepts for updating an existing entry.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use crate::net::raw::FrameSender;

const ETH_P_ARP: u16 = 0x0806;

/// The 42-byte frame announcing `ip` at `mac` (pure, unit-tested).
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends gratuitous ARP out of one interface.
pub struct ArpSender(FrameSender);

impl ArpSender {
    pub fn new(ifindex: u32) -> Result<Self> {
        FrameSender::new(ifindex).map(Self)
    }

    pub fn announce(&self, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
        self.0
            .send(&frame(mac, ip))
            .with_context(|| format!("sending gratuitous ARP for {ip}"))
    }
}

/// When to (re)send gratuitous ARP after a VIP starts being announced:
/// at once, then 1, 2 and 4 seconds later (late listeners, lost frames).
pub const BURST_OFFSETS_MS: [u64; 4] = [0, 1000, 2000, 4000];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_gratuitous_arp_request() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = frame(mac, Ipv4Addr::new(192, 168, 50, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[192, 168, 50, 100]);
        assert_eq!(&f[38..42], &[192, 168, 50, 100]);
    }

    #[test]
    fn frame_matches_etherparse() {
        use etherparse::{
            ArpHardwareId, ArpOperation, ArpPacket, EtherType, LinkSlice, NetSlice, PacketBuilder,
            SlicedPacket,
        };
        let mac = [0x02, 0x5e, 0x11, 0xa0, 0x00, 0x07];
        let vip = Ipv4Addr::new(10, 20, 30, 40);
        let f = frame(mac, vip);

        // The same announcement built by an independent encoder.
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &mac,
            &vip.octets(),
            &[0; 6],
            &vip.octets(),
        )
        .expect("valid ARP packet");
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(mac, [0xff; 6])
            .arp(arp)
            .write(&mut expected)
            .expect("serialise");
        assert_eq!(f[..], expected[..], "differs from etherparse's encoding");

        // And every field as an independent decoder reads it.
        let p = SlicedPacket::from_ethernet(&f).expect("parses as Ethernet");
        let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("no Ethernet II header: {:?}", p.link);
        };
        assert_eq!(eth.destination(), [0xff; 6], "broadcast");
        assert_eq!(eth.source(), mac);
        assert_eq!(eth.ether_type(), EtherType::ARP);
        let Some(NetSlice::Arp(a)) = &p.net else {
            panic!("no ARP payload: {:?}", p.net);
        };
        assert_eq!(a.hw_addr_type(), ArpHardwareId::ETHERNET);
        assert_eq!(a.proto_addr_type(), EtherType::IPV4);
        assert_eq!((a.hw_addr_size(), a.proto_addr_size()), (6, 4));
        assert_eq!(a.operation(), ArpOperation::REQUEST);
        assert_eq!(a.sender_hw_addr(), mac);
        assert_eq!(a.sender_protocol_addr(), vip.octets());
        assert_eq!(a.target_hw_addr(), [0; 6]);
        assert_eq!(
            a.target_protocol_addr(),
            vip.octets(),
            "gratuitous: target = sender"
        );
        assert!(p.transport.is_none());
        assert_eq!(a.slice().len(), f.len() - 14, "no trailing bytes");
    }
}
