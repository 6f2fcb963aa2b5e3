//! ARP responder for the VIPs this node owns.
//!
//! Only Ethernet/IPv4 requests are considered. A request is answered in
//! place (the frame becomes the reply, `XDP_TX`) when the target is a VIP
//! with the ANNOUNCE flag. A request for a SERVICE VIP without ANNOUNCE is
//! dropped: another node owns it, and a local kernel that happens to have the
//! address on some device must not answer too. Gratuitous ARP (sender ==
//! target) is never answered. Everything else goes to the kernel.
//!
//! Ownership is only claimed while the agent's heartbeat in the `announce`
//! map is current: a killed agent leaves the program attached (its links
//! are pinned), and once its Lease lapses a peer announces the address too.
//! Past the hold time, requests for owned VIPs are dropped (`arp_stale`);
//! traffic to the VIP keeps flowing, so clients that still send here lose
//! nothing while their caches move to the new owner.
//!
//! Every request for a VIP is counted in its `arp_stats` entry (requests,
//! and replies when answered), if the agent made one: one copy for every
//! CPU, added to atomically (ARP is rare next to packets).
//!
//! The sender of a request we answer is remembered in `learned_macs`: the
//! kernel never sees these requests, so it never learns the clients (or
//! their router) as neighbours, and a reply for them would otherwise go to
//! the kernel, where netfilter may drop it (see `forward::learned_hop`).
//! Learned only from requests we answer (so only while we own the VIP),
//! never from probes (sender 0.0.0.0); a spoofed request can mislead it as
//! it would mislead the kernel's own ARP table, and the kernel's neighbour
//! entry, when there is one, always wins.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{
    Counter, DatapathConfig, DropReason, HostKey, Ipv4Key, LearnedMac, flow::NS_PER_SEC, vip_flags,
};

use crate::{
    maps::{ANNOUNCE, ARP_STATS, LEARNED_MACS, VIPS},
    parse::{ArpHdr, Cursor, EthHdr},
    verdict::Outcome,
};

const HTYPE_ETHERNET: [u8; 2] = [0, 1];
const PTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const OPER_REQUEST: [u8; 2] = [0, 1];
const OPER_REPLY: [u8; 2] = [0, 2];

#[inline(always)]
pub fn handle(
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    cfg: &DatapathConfig,
    ifindex: u32,
) -> Outcome {
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
    let stats = ARP_STATS.get_ptr_mut(Ipv4Key { addr: vip });
    if let Some(s) = stats {
        // SAFETY: a live map value (it stays valid for the whole run, even
        // if the agent deletes the entry meanwhile); every CPU changes it
        // only atomically. A plain atomic add, which every BPF target has.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*s).requests, 1) };
    }
    if flags & vip_flags::ANNOUNCE != 0 {
        if !heartbeat_current() {
            return Outcome::Drop(DropReason::ArpStale);
        }
        if let Some(s) = stats {
            // SAFETY: as above.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*s).replies, 1)
            };
        }
        if arp.spa != [0; 4] {
            let mut mac = [0u8; 8];
            mac[..6].copy_from_slice(&arp.sha);
            learn(
                u32::from_ne_bytes(arp.spa),
                u64::from_le_bytes(mac),
                ifindex,
            );
        }
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

/// Remembers that `ip` is at `mac` on `ifindex`: a new or changed entry is
/// written, an unchanged one has its timestamp refreshed at most once a
/// second (a busy client's requests cost no map write each). Out of line,
/// with scalar arguments: its key and value would otherwise take frame
/// space on the packet path (512 bytes of stack for the whole call chain);
/// `mac` is the address in the low six bytes, little-endian.
#[inline(never)]
fn learn(ip: u32, mac: u64, ifindex: u32) {
    let b = mac.to_le_bytes();
    remember(
        HostKey::v4(ip.to_ne_bytes()),
        [b[0], b[1], b[2], b[3], b[4], b[5]],
        ifindex,
    );
}

/// [`learn`]'s work for any address family (`ndp` learns IPv6 hosts from
/// the solicitations it answers).
#[inline(always)]
pub fn remember(key: HostKey, mac: [u8; 6], ifindex: u32) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = LEARNED_MACS.get_ptr_mut(key) {
        // SAFETY: a value pointer the map just returned; a racing writer
        // can only store another request's values.
        let (known, on, last) = unsafe { ((*v).mac, (*v).ifindex, (*v).last_seen_ns) };
        if known == mac && on == ifindex {
            if now.wrapping_sub(last) >= NS_PER_SEC {
                // SAFETY: as above.
                unsafe { (*v).last_seen_ns = now };
            }
            return;
        }
    }
    let _ = LEARNED_MACS.insert(key, LearnedMac::new(mac, ifindex, now), u64::from(BPF_ANY));
}

/// Whether the agent's heartbeat allows answering now (ARP and NDP).
#[inline(always)]
pub fn heartbeat_current() -> bool {
    let Some(a) = ANNOUNCE.get_ptr(0) else {
        return false;
    };
    // SAFETY: a value pointer the map just returned; copied out. The agent
    // rewrites it whole; a torn read of one field only errs for one packet.
    let a = unsafe { *a };
    // SAFETY: plain helper call.
    a.current(unsafe { bpf_ktime_get_ns() })
}
