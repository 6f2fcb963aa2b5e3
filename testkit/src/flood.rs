//! A flood of forged TCP segments from a namespace: Ethernet frames with full IPv4 and TCP
//! checksums (as from a wire), each from another source address and port, written straight
//! to an interface on an `AF_PACKET` socket — the kernel's own stack would neither forge
//! sources nor send segments without a socket. For flood-resistance tests: SYNs as a SYN
//! flood sends them (`hping3 --rand-source`), or segments of no connection.
//!
//! Bounded by count; the sources are drawn from 100.64.0.0/10 (shared address space, never
//! a test address) by a seeded generator, so a run is reproducible.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    capture::FrameSender,
    netns::{NsName, in_netns},
    topology::MacAddr,
};

/// TCP header flags.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;

/// What to send: `count` segments with `flags` to `dst:dport`, framed from `src_mac` to
/// `dst_mac` (the node that owns `dst`).
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub flags: u8,
    pub count: u64,
    /// Seeds the sources: two floods with the same seed send the same segments.
    pub seed: u64,
}

/// How a flood went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub frames: u64,
    pub elapsed: Duration,
}

const FRAME_LEN: usize = 14 + 20 + 20;
/// Most `ENOBUFS` retries of one frame (the interface's queue full) before giving up.
const MAX_RETRIES: u32 = 1000;

/// Sends `f` out of `ifname` in `ns`.
pub fn flood<N: NsName + ?Sized>(ns: &N, ifname: &str, f: Flood) -> Result<Sent> {
    in_netns(ns, || flood_here(ifname, f))?
        .with_context(|| format!("flood from {ifname} in netns {}", ns.ns_name()))
}

fn flood_here(ifname: &str, f: Flood) -> Result<Sent> {
    let mut out = FrameSender::open(ifname)?;
    let mut rng = f.seed | 1;
    let start = Instant::now();
    for i in 0..f.count {
        let frame = segment(&f, next(&mut rng));
        let mut tries = 0;
        while let Err(e) = out.send(&frame) {
            ensure!(
                e.raw_os_error() == Some(libc::ENOBUFS) && tries < MAX_RETRIES,
                "frame {i}: {e}"
            );
            tries += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(Sent {
        frames: f.count,
        elapsed: start.elapsed(),
    })
}

/// xorshift64: cheap, seeded, good enough to scatter sources.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One segment from a source drawn from `r`.
fn segment(f: &Flood, r: u64) -> [u8; FRAME_LEN] {
    let r = r.to_be_bytes();
    // 100.64.0.0/10: 22 random bits; never the network or broadcast address.
    let host = (u32::from_be_bytes([0, r[0] & 0x3f, r[1], r[2]])).clamp(1, (1 << 22) - 2);
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | host).octets();
    let sport = 1024 + u16::from_be_bytes([r[3], r[4]]) % (65535 - 1024);
    let seq = [r[5], r[6], r[7], r[0]];
    let dst = f.dst.octets();

    let mut b = [0u8; FRAME_LEN];
    b[0..6].copy_from_slice(&f.dst_mac.0);
    b[6..12].copy_from_slice(&f.src_mac.0);
    b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut b[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut b[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&f.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq);
    if f.flags & ACK != 0 {
        tcp[8..12].copy_from_slice(&seq);
    }
    tcp[12] = 5 << 4;
    tcp[13] = f.flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = checksum(sum(0, &pseudo), tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    b
}

fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for w in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

/// The Internet checksum of `bytes` on top of the partial sum `acc`.
fn checksum(acc: u32, bytes: &[u8]) -> u16 {
    let mut s = sum(acc, bytes);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let s = s as u16;
    !s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(flags: u8) -> Flood {
        Flood {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst: Ipv4Addr::new(192, 168, 50, 200),
            dport: 80,
            flags,
            count: 1,
            seed: 7,
        }
    }

    #[test]
    fn segments_carry_full_checksums_and_forged_sources() {
        let mut rng = 7;
        let mut sources = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let b = segment(&f(SYN), next(&mut rng));
            assert_eq!(checksum(0, &b[14..34]), 0, "IPv4 header checksum");
            let mut pseudo = [0u8; 12];
            pseudo[0..8].copy_from_slice(&b[26..34]);
            pseudo[9] = 6;
            pseudo[11] = 20;
            assert_eq!(checksum(sum(0, &pseudo), &b[34..54]), 0, "TCP checksum");
            let src = Ipv4Addr::new(b[26], b[27], b[28], b[29]);
            assert!(
                src.octets()[0] == 100 && (64..128).contains(&src.octets()[1]),
                "{src} outside 100.64.0.0/10"
            );
            assert_eq!(b[47], SYN);
            sources.insert(src);
        }
        assert!(sources.len() > 990, "sources repeat: {}", sources.len());
    }
}
