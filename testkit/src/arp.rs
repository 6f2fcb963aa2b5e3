//! ARP from a namespace: send one request out of an interface on an `AF_PACKET` socket and
//! report who answered. Used to check that the right node (and only it) answers for a VIP.
//!
//! Raw sockets, not the kernel's neighbour table: the table would hide *who* answered, cache
//! across checks, and retry on its own schedule.

use std::{
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    netns::{NsName, in_netns},
    topology::MacAddr,
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
/// Length of an Ethernet + ARP (IPv4 over Ethernet) frame, without padding/FCS.
pub const ARP_FRAME_LEN: usize = 42;
/// Most frames a probe inspects before giving up, whatever its timeout.
const MAX_FRAMES: usize = 10_000;

/// ARP operation codes.
pub const ARP_REQUEST: u16 = 1;
/// ARP reply operation code.
pub const ARP_REPLY: u16 = 2;

/// An IPv4-over-Ethernet ARP packet with its Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// [`ARP_REQUEST`] or [`ARP_REPLY`].
    pub op: u16,
    /// Sender hardware address.
    pub sha: MacAddr,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: MacAddr,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl ArpFrame {
    /// A broadcast who-has `target` from `mac`/`ip`.
    pub fn request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Self {
        Self {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ARP_REQUEST,
            sha: mac,
            spa: ip,
            tha: MacAddr::default(),
            tpa: target,
        }
    }

    /// The 42 wire bytes (the kernel pads to the Ethernet minimum on veth as needed).
    pub fn to_bytes(&self) -> [u8; ARP_FRAME_LEN] {
        let mut f = [0u8; ARP_FRAME_LEN];
        f[0..6].copy_from_slice(&self.eth_dst.0);
        f[6..12].copy_from_slice(&self.eth_src.0);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
        f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes()); // ptype: IPv4
        f[18] = 6; // hlen
        f[19] = 4; // plen
        f[20..22].copy_from_slice(&self.op.to_be_bytes());
        f[22..28].copy_from_slice(&self.sha.0);
        f[28..32].copy_from_slice(&self.spa.octets());
        f[32..38].copy_from_slice(&self.tha.0);
        f[38..42].copy_from_slice(&self.tpa.octets());
        f
    }

    /// Parses an Ethernet frame; `None` unless it is an IPv4-over-Ethernet ARP packet.
    /// Trailing bytes (padding) are ignored.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let f = frame.get(..ARP_FRAME_LEN)?;
        let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
        let mac = |i: usize| MacAddr([f[i], f[i + 1], f[i + 2], f[i + 3], f[i + 4], f[i + 5]]);
        let ip = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
        if be16(12) != ETH_P_ARP
            || be16(14) != 1
            || be16(16) != ETH_P_IP
            || f[18] != 6
            || f[19] != 4
        {
            return None;
        }
        Some(Self {
            eth_dst: mac(0),
            eth_src: mac(6),
            op: be16(20),
            sha: mac(22),
            spa: ip(28),
            tha: mac(32),
            tpa: ip(38),
        })
    }
}

/// What answered an ARP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpReply {
    /// The ARP sender hardware address: the MAC the target ip resolves to.
    pub sender_mac: MacAddr,
    /// The Ethernet source of the reply frame (normally the same; differs for proxies).
    pub eth_src: MacAddr,
    /// The full reply.
    pub frame: ArpFrame,
}

/// From `ns`, sends one ARP request for `target` out of `ifname` (sender = the interface's
/// MAC and first IPv4 address) and waits up to `timeout` for a reply from `target`.
/// `Ok(None)` when nobody answered in time.
pub fn arp_probe<N: NsName + ?Sized>(
    ns: &N,
    ifname: &str,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<ArpReply>> {
    arp_probe_from(ns, ifname, None, target, timeout)
}

/// Like [`arp_probe`], with an explicit sender ip (`Some(0.0.0.0)` makes an RFC 5227 probe).
pub fn arp_probe_from<N: NsName + ?Sized>(
    ns: &N,
    ifname: &str,
    sender_ip: Option<Ipv4Addr>,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<ArpReply>> {
    // Everything, including the ifindex lookup, must happen in the namespace.
    in_netns(ns, || probe_here(ifname, sender_ip, target, timeout))?
        .with_context(|| format!("ARP for {target} on {ifname} in netns {}", ns.ns_name()))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An `ifreq` naming `ifname`.
fn ifreq(ifname: &str) -> Result<libc::ifreq> {
    let bytes = ifname.as_bytes();
    ensure!(
        !bytes.is_empty() && bytes.len() < libc::IFNAMSIZ,
        "bad interface name {ifname:?}"
    );
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (d, &s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    Ok(req)
}

/// The interface's MAC and first IPv4 address (`None` if it has none), by ioctl on `fd`.
fn iface_addrs(fd: i32, ifname: &str) -> Result<(MacAddr, Option<Ipv4Addr>)> {
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
    cvt(unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &raw mut req) })
        .with_context(|| format!("SIOCGIFHWADDR {ifname}"))?;
    // SAFETY: the kernel just wrote ifr_hwaddr.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data) {
        *d = s.to_ne_bytes()[0];
    }
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFADDR fills ifr_addr of a valid ifreq.
    let ip = match cvt(unsafe { libc::ioctl(fd, libc::SIOCGIFADDR, &raw mut req) }) {
        Ok(_) => {
            // SAFETY: for AF_INET the kernel wrote a sockaddr_in into ifr_addr.
            let sin: libc::sockaddr_in = unsafe { mem::transmute_copy(&req.ifr_ifru.ifru_addr) };
            Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => None,
        Err(e) => return Err(e).with_context(|| format!("SIOCGIFADDR {ifname}")),
    };
    Ok((MacAddr(mac), ip))
}

fn probe_here(
    ifname: &str,
    sender_ip: Option<Ipv4Addr>,
    target: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<ArpReply>> {
    let ifindex = crate::netns::ifindex(ifname)?;
    let proto_be = ETH_P_ARP.to_be();
    // Protocol 0 receives nothing until bind() names protocol and interface together.
    // SAFETY: plain socket(2) calls; the fds are owned right away.
    let sock = unsafe {
        OwnedFd::from_raw_fd(
            cvt(libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                0,
            ))
            .context("AF_PACKET socket")?,
        )
    };
    // SAFETY: as above; an AF_INET socket only for the address ioctls.
    let ctl = unsafe {
        OwnedFd::from_raw_fd(
            cvt(libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
            ))
            .context("ioctl socket")?,
        )
    };
    let (mac, own_ip) = iface_addrs(ctl.as_raw_fd(), ifname)?;
    let spa = sender_ip.or(own_ip).unwrap_or(Ipv4Addr::UNSPECIFIED);

    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).context("AF_PACKET")?;
    sll.sll_protocol = proto_be;
    sll.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&MacAddr::BROADCAST.0);
    let sll_len = u32::try_from(mem::size_of::<libc::sockaddr_ll>()).context("sockaddr_ll size")?;
    // Bind first so only this interface's ARP frames are queued to us.
    // SAFETY: sll is a valid sockaddr_ll of sll_len bytes.
    cvt(unsafe { libc::bind(sock.as_raw_fd(), (&raw const sll).cast(), sll_len) })
        .context("bind AF_PACKET")?;

    let frame = ArpFrame::request(mac, spa, target).to_bytes();
    // SAFETY: frame and sll are valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sll).cast(),
            sll_len,
        )
    };
    ensure!(
        usize::try_from(sent).ok() == Some(frame.len()),
        "sending ARP request: {}",
        io::Error::last_os_error()
    );

    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    for _ in 0..MAX_FRAMES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(left.subsec_micros()).max(1),
        };
        let tv_len = u32::try_from(mem::size_of::<libc::timeval>()).context("timeval size")?;
        // SAFETY: tv is a valid timeval.
        cvt(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                tv_len,
            )
        })
        .context("SO_RCVTIMEO")?;
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e).context("recv AF_PACKET");
        }
        let n = usize::try_from(n).context("recv length")?;
        if let Some(f) = ArpFrame::parse(&buf[..n])
            && f.op == ARP_REPLY
            && f.spa == target
        {
            return Ok(Some(ArpReply {
                sender_mac: f.sha,
                eth_src: f.eth_src,
                frame: f,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_and_parse_round_trip() {
        let mac = MacAddr([2, 0, 192, 168, 50, 2]);
        let req = ArpFrame::request(
            mac,
            Ipv4Addr::new(192, 168, 50, 2),
            Ipv4Addr::new(192, 168, 50, 11),
        );
        let b = req.to_bytes();
        assert_eq!(&b[..6], &[0xff; 6]);
        assert_eq!(&b[12..14], &[0x08, 0x06]);
        assert_eq!(&b[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&b[38..42], &[192, 168, 50, 11]);
        assert_eq!(ArpFrame::parse(&b), Some(req));
        // Padding to the 60-byte minimum is ignored.
        let mut padded = b.to_vec();
        padded.resize(60, 0);
        assert_eq!(ArpFrame::parse(&padded), Some(req));
    }

    #[test]
    fn non_arp_and_short_frames_are_rejected() {
        let mut b = ArpFrame::request(
            MacAddr::default(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
        )
        .to_bytes();
        assert!(ArpFrame::parse(&b[..41]).is_none());
        b[12] = 0x08;
        b[13] = 0x00;
        assert!(ArpFrame::parse(&b).is_none());
    }
}
