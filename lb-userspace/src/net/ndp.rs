//! IPv6 neighbour discovery for announced VIPs, what [`super::garp`] is for
//! IPv4:
//! - unsolicited Neighbor Advertisements (RFC 4861 7.2.6) when this node
//!   starts announcing an IPv6 VIP, so neighbours and switches learn the new
//!   owner at once instead of waiting for their caches to expire;
//! - the interface's membership of each announced VIP's solicited-node
//!   multicast group (RFC 4291 2.7.1), whose Neighbor Solicitations the NIC
//!   would otherwise filter out before XDP sees them. The VIPs are on no
//!   interface, so the kernel never joins these groups itself.
//!
//! Membership is a link-layer address added with `SIOCADDMULTI`, which the
//! kernel records as a *global* use of the address (`dev_mc_add_global`):
//! adding one twice is one membership, and deleting it (`SIOCDELMULTI`)
//! leaves any use of the kernel's own (the node's own addresses' groups)
//! in place. The global uses survive the agent, so a restarted agent reads
//! them back from `/proc/net/dev_mcast` and reconciles against what it wants.

use std::{
    collections::BTreeSet,
    io,
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

use crate::net::raw::FrameSender;

const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6 Neighbor Advertisement.
const NA_TYPE: u8 = 136;
/// Neighbor Advertisement flags (first byte of the reserved word): Router,
/// Solicited, Override.
const NA_OVERRIDE: u8 = 0x20;
/// Option type Target Link-Layer Address.
const OPT_TARGET_LL: u8 = 2;
/// All-nodes link-local multicast, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Length of an unsolicited advertisement frame: Ethernet (14), IPv6 (40),
/// ICMPv6 Neighbor Advertisement (24), Target Link-Layer Address option (8).
pub const NA_FRAME_LEN: usize = 86;
/// Prefix of every solicited-node group's multicast MAC (`33:33:ff`).
const SOLICITED_MAC_PREFIX: [u8; 3] = [0x33, 0x33, 0xff];

/// The solicited-node multicast group of `ip`: `ff02::1:ffXX:XXXX`, the
/// low 24 bits of `ip` appended.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address of an IPv6 multicast group: `33:33` and the
/// group's low 32 bits (RFC 2464 7).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The MAC of `ip`'s solicited-node group, which the interface must receive
/// for Neighbor Solicitations of `ip` to reach XDP.
pub fn solicited_node_mac(ip: Ipv6Addr) -> [u8; 6] {
    multicast_mac(solicited_node(ip))
}

/// The ICMPv6 checksum of `icmp` (checksum field zero) sent from `src` to
/// `dst`: the one's complement sum over the IPv6 pseudo-header (RFC 8200
/// 8.1: source, destination, upper-layer length, next header 58) and the
/// message.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u64::from);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    let len = u32::try_from(icmp.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, lb_common::proto::ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The fold above leaves at most 16 bits.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// The unsolicited Neighbor Advertisement of `vip` at `mac` (pure,
/// unit-tested): to all nodes (`ff02::1`, `33:33:00:00:00:01`), from the
/// VIP, hop limit 255 (receivers drop neighbour discovery that crossed a
/// router), Override set so that caches replace the old owner's MAC,
/// Solicited and Router clear, and the MAC in a Target Link-Layer Address
/// option.
pub fn na_frame(mac: [u8; 6], vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&multicast_mac(ALL_NODES));
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60; // version 6, traffic class and flow label 0
    ip[4..6].copy_from_slice(&32u16.to_be_bytes()); // payload: NA + option
    ip[6] = lb_common::proto::ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&vip.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut f[54..86];
    icmp[0] = NA_TYPE;
    icmp[1] = 0;
    icmp[4] = NA_OVERRIDE;
    icmp[8..24].copy_from_slice(&vip.octets());
    icmp[24] = OPT_TARGET_LL;
    icmp[25] = 1; // in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(vip, ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Sends unsolicited Neighbor Advertisements out of one interface.
pub struct NdpSender(FrameSender);

impl NdpSender {
    pub fn new(ifindex: u32) -> Result<Self> {
        FrameSender::new(ifindex).map(Self)
    }

    /// Sends one unsolicited Neighbor Advertisement of `vip` at `mac`.
    pub fn advertise(&self, mac: [u8; 6], vip: Ipv6Addr) -> Result<()> {
        self.0
            .send(&na_frame(mac, vip))
            .with_context(|| format!("sending an unsolicited Neighbor Advertisement for {vip}"))
    }
}

/// `SIOCADDMULTI` or `SIOCDELMULTI` of the link-layer address `mac` on `ifname`.
fn multi_ioctl(ifname: &str, mac: [u8; 6], request: libc::c_ulong) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src.cast_signed();
    }
    // The kernel takes the address from ifr_hwaddr.sa_data; the family
    // must be AF_UNSPEC (dev_ifsioc).
    let family = libc::sa_family_t::try_from(libc::AF_UNSPEC)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: writing the sockaddr member of the union, which this request reads.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = family;
        for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *dst = src.cast_signed();
        }
    }
    // SAFETY: req is an initialised ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `ifname` receive frames to `mac` (idempotent: the kernel records
/// one global use, however often it is added).
pub fn join(ifname: &str, mac: [u8; 6]) -> Result<()> {
    multi_ioctl(ifname, mac, libc::SIOCADDMULTI)
        .with_context(|| format!("SIOCADDMULTI {} on {ifname}", super::netdev::fmt_mac(mac)))
}

/// Drops the global use of `mac` on `ifname` that [`join`] made; the
/// kernel's own uses of it (the node's own addresses) stay. Not joined:
/// nothing to do.
pub fn leave(ifname: &str, mac: [u8; 6]) -> Result<()> {
    match multi_ioctl(ifname, mac, libc::SIOCDELMULTI) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.with_context(|| format!("SIOCDELMULTI {} on {ifname}", super::netdev::fmt_mac(mac))),
    }
}

/// The calling thread's `/proc/net/dev_mcast` (`/proc/net` is that of the
/// process's first thread, which may be in another network namespace).
const DEV_MCAST: &str = "/proc/thread-self/net/dev_mcast";

/// The solicited-node MACs `ifname` holds with a global use
/// (`dev_mcast`): the ones this agent (or a previous one) joined.
pub fn joined(ifname: &str) -> Result<BTreeSet<[u8; 6]>> {
    let text =
        std::fs::read_to_string(DEV_MCAST).with_context(|| format!("reading {DEV_MCAST}"))?;
    parse_dev_mcast(&text, ifname)
}

/// The global solicited-node entries of `ifname` in a `/proc/net/dev_mcast`
/// text: lines of `ifindex name users global hex-address`.
fn parse_dev_mcast(text: &str, ifname: &str) -> Result<BTreeSet<[u8; 6]>> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, name, _, global, addr] = f[..] else {
            bail!("unexpected line in /proc/net/dev_mcast: {line:?}");
        };
        if name != ifname || global == "0" || addr.len() != 12 {
            continue;
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&addr[2 * i..2 * i + 2], 16)
                .with_context(|| format!("bad address in /proc/net/dev_mcast: {line:?}"))?;
        }
        if mac[..3] == SOLICITED_MAC_PREFIX {
            out.insert(mac);
        }
    }
    Ok(out)
}

/// Keeps `ifname`'s global solicited-node memberships equal to those of
/// `vips`: joins what is missing, leaves what is no longer wanted (among
/// the global `33:33:ff` entries, which only `SIOCADDMULTI` makes). Reads
/// the interface's memberships each time, so a restart neither leaks nor
/// loses any. Returns the memberships it could not change, with why.
pub fn reconcile(ifname: &str, vips: &BTreeSet<Ipv6Addr>) -> Result<Vec<String>> {
    let wanted: BTreeSet<[u8; 6]> = vips.iter().map(|v| solicited_node_mac(*v)).collect();
    let have = joined(ifname)?;
    let mut failed = Vec::new();
    for mac in wanted.difference(&have) {
        if let Err(e) = join(ifname, *mac) {
            failed.push(format!("{e:#}"));
        }
    }
    for mac in have.difference(&wanted) {
        if let Err(e) = leave(ifname, *mac) {
            failed.push(format!("{e:#}"));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solicited_node_groups_and_their_macs() {
        let vip: Ipv6Addr = "fd00:60::12:3456".parse().unwrap();
        assert_eq!(
            solicited_node(vip),
            "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            solicited_node_mac(vip),
            [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]
        );
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }

    /// RFC 1071's worked example, as a sanity check of the folding.
    #[test]
    fn checksum_folds_carries() {
        let src = Ipv6Addr::UNSPECIFIED;
        let dst = Ipv6Addr::UNSPECIFIED;
        // Pseudo-header of zero addresses adds the length and 58.
        let msg = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let sum = icmpv6_checksum(src, dst, &msg);
        // 0x0001 + 0xf203 + 0xf4f5 + 0xf6f7 = 0x2ddf0 -> 0xddf2, + 8 + 58.
        let expected = !(0xddf2u16 + 8 + 58);
        assert_eq!(sum, expected);
    }

    #[test]
    fn na_frame_has_every_field() {
        let mac = [0x02, 0x5e, 0x11, 0xa0, 0x00, 0x07];
        let vip: Ipv6Addr = "fd00:60::1".parse().unwrap();
        let f = na_frame(mac, vip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(&f[18..20], &[0, 32], "payload length");
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &vip.octets());
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        assert_eq!((f[54], f[55]), (136, 0));
        assert_eq!(&f[58..62], &[0x20, 0, 0, 0], "Override only");
        assert_eq!(&f[62..78], &vip.octets(), "target");
        assert_eq!(&f[78..80], &[2, 1], "Target Link-Layer Address, 8 bytes");
        assert_eq!(&f[80..86], &mac);
        // The checksum verifies: summing with it in place gives zero.
        assert_eq!(icmpv6_checksum(vip, ALL_NODES, &f[54..86]), 0);
    }

    #[test]
    fn na_frame_matches_etherparse() {
        use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let f = na_frame(mac, vip);
        let p = SlicedPacket::from_ethernet(&f).expect("parses as Ethernet");
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("no IPv6 header: {:?}", p.net);
        };
        let h = ip.header();
        assert_eq!(h.source_addr(), vip);
        assert_eq!(h.destination_addr(), ALL_NODES);
        assert_eq!(h.hop_limit(), 255);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("no ICMPv6: {:?}", p.transport);
        };
        assert!(
            matches!(icmp.icmp_type(), Icmpv6Type::NeighborAdvertisement(_)),
            "{:?}",
            icmp.icmp_type()
        );
        // etherparse computes the checksum on its own.
        let expected = icmp
            .icmp_type()
            .calc_checksum(vip.octets(), ALL_NODES.octets(), icmp.payload())
            .expect("checksum");
        assert_eq!(icmp.checksum(), expected);
    }

    #[test]
    fn dev_mcast_lists_global_solicited_node_entries() {
        let text = "\
2    eth0            1     0     333300000001
2    eth0            2     1     3333ff123456
2    eth0            1     0     3333ffabcdef
3    eth1            1     1     3333ff000001
2    eth0            1     1     01005e000001
";
        assert_eq!(
            parse_dev_mcast(text, "eth0").unwrap(),
            BTreeSet::from([[0x33, 0x33, 0xff, 0x12, 0x34, 0x56]])
        );
        assert!(parse_dev_mcast("garbage\n", "eth0").is_err());
    }
}
