//! ARP responder for the VIPs this node owns.
//!
//! Only Ethernet/IPv4 requests are considered. A request is answered in
//! place (the frame becomes the reply, `XDP_TX`) when the target is a VIP
//! with the ANNOUNCE flag. A request for a SERVICE VIP without ANNOUNCE is
//! dropped: another node owns it, and a local kernel that happens to have the
//! address on some device must not answer too. Gratuitous ARP (sender ==
//! target) is never answered. Everything else goes to the kernel.

use lb_common::{Counter, DatapathConfig, DropReason, Ipv4Key, vip_flags};

use crate::{
    maps::VIPS,
    parse::{ArpHdr, Cursor, EthHdr},
    verdict::Outcome,
};

const HTYPE_ETHERNET: [u8; 2] = [0, 1];
const PTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const OPER_REQUEST: [u8; 2] = [0, 1];
const OPER_REPLY: [u8; 2] = [0, 2];

#[inline(always)]
pub fn handle(cur: &mut Cursor<'_>, eth: &mut EthHdr, cfg: &DatapathConfig) -> Outcome {
    let Some(arp) = cur.take::<ArpHdr>() else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    if arp.htype != HTYPE_ETHERNET || arp.ptype != PTYPE_IPV4 || arp.hlen != 6 || arp.plen != 4 {
        // Well-formed ARP of another kind (not Ethernet/IPv4): not ours.
        return Outcome::Pass(Counter::ArpPass);
    }
    if arp.oper != OPER_REQUEST || arp.spa == arp.tpa {
        return Outcome::Pass(Counter::ArpPass);
    }
    let vip = arp.tpa;
    let Some(v) = VIPS.get_ptr(Ipv4Key { addr: vip }) else {
        return Outcome::Pass(Counter::ArpPass);
    };
    // SAFETY: a value pointer the map just returned; read once, by value.
    let flags = unsafe { (*v).flags };
    if flags & vip_flags::ANNOUNCE != 0 {
        arp.oper = OPER_REPLY;
        arp.tha = arp.sha;
        arp.tpa = arp.spa;
        arp.sha = cfg.mac;
        arp.spa = vip;
        eth.dst = arp.tha;
        eth.src = cfg.mac;
        Outcome::Tx(Counter::ArpReply)
    } else if flags & vip_flags::SERVICE != 0 {
        Outcome::Drop(DropReason::ArpNotOwned)
    } else {
        Outcome::Pass(Counter::ArpPass)
    }
}
