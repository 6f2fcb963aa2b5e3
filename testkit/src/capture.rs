//! Frame capture on one interface of a namespace (`AF_PACKET`, all protocols), for tests
//! that must see exactly what went over a veth: what an XDP program sent back (capture on
//! the LAN-side peer), a gratuitous ARP, whether checksums are complete.
//!
//! Open the capture *before* causing the traffic: frames are queued on the socket from the
//! moment it is bound, and only then. [`inject`] sends frames as they are (what scapy's
//! `sendp` does), for frames no socket of the namespace would build: VLAN-tagged ones on a
//! kernel without 802.1Q interfaces, for instance.

use std::{
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::netns::{NsName, in_netns};

const ETH_P_ALL: u16 = 0x0003;
/// Most frames one `next_matching` call inspects, whatever its timeout.
pub const MAX_FRAMES: usize = 100_000;

/// A captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The Ethernet frame as seen on the interface.
    pub data: Vec<u8>,
    /// Sent by this interface (rather than received on it).
    pub outgoing: bool,
}

/// An `AF_PACKET` socket bound to one interface in one namespace.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    what: String,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Capture {
    /// Starts capturing every frame on `ifname` in `ns`.
    pub fn open<N: NsName + ?Sized>(ns: &N, ifname: &str) -> Result<Self> {
        let what = format!("{ifname} in netns {}", ns.ns_name());
        let fd =
            in_netns(ns, || open_here(ifname))?.with_context(|| format!("capturing on {what}"))?;
        Ok(Self { fd, what })
    }

    /// The next frame for which `pred` holds, waiting at most `timeout` (and inspecting at
    /// most [`MAX_FRAMES`]). `Ok(None)` if none came.
    pub fn next_matching(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        for _ in 0..MAX_FRAMES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain old data.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len =
                u32::try_from(mem::size_of::<libc::sockaddr_ll>()).context("sockaddr_ll size")?;
            // SAFETY: buf, sll and len are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut sll).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e).with_context(|| format!("recv on {}", self.what));
            }
            let n = usize::try_from(n).context("recv length")?;
            let frame = Frame {
                data: buf[..n].to_vec(),
                outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
            };
            if pred(&frame) {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }
}

fn open_here(ifname: &str) -> Result<OwnedFd> {
    let ifindex = crate::netns::ifindex(ifname)?;
    let proto = ETH_P_ALL.to_be();
    // Protocol 0 receives nothing until bind() names protocol and interface together, so no
    // frame from another interface slips in between.
    let fd = packet_socket()?;
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).context("AF_PACKET")?;
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    let len = u32::try_from(mem::size_of::<libc::sockaddr_ll>()).context("sockaddr_ll size")?;
    // SAFETY: sll is a valid sockaddr_ll of len bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) })
        .context("bind AF_PACKET")?;
    Ok(fd)
}

/// Sends each of `frames` (whole Ethernet frames) out of `ifname` in `ns`, byte for byte.
pub fn inject<N: NsName + ?Sized>(ns: &N, ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    in_netns(ns, || inject_here(ifname, frames))?
        .with_context(|| format!("sending frames out of {ifname} in netns {}", ns.ns_name()))
}

fn inject_here(ifname: &str, frames: &[Vec<u8>]) -> Result<()> {
    let mut out = FrameSender::open(ifname)?;
    for f in frames {
        out.send(f).context("sendto AF_PACKET")?;
    }
    Ok(())
}

/// A raw `AF_PACKET` socket of protocol 0: it receives nothing until bound.
fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
        .context("AF_PACKET socket")?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `AF_PACKET` socket that sends whole Ethernet frames, byte for byte, out of one
/// interface of the calling thread's namespace (protocol 0: it receives nothing).
pub(crate) struct FrameSender {
    fd: OwnedFd,
    sll: libc::sockaddr_ll,
    len: u32,
}

impl FrameSender {
    pub(crate) fn open(ifname: &str) -> Result<Self> {
        let ifindex = crate::netns::ifindex(ifname)?;
        let fd = packet_socket()?;
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).context("AF_PACKET")?;
        sll.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
        sll.sll_halen = 6;
        let len = u32::try_from(mem::size_of::<libc::sockaddr_ll>()).context("sockaddr_ll size")?;
        Ok(Self { fd, sll, len })
    }

    /// Sends `f`, an Ethernet frame (its first six bytes name the destination).
    pub(crate) fn send(&mut self, f: &[u8]) -> io::Result<()> {
        if f.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes", f.len()),
            ));
        }
        self.sll.sll_addr[..6].copy_from_slice(&f[..6]);
        // SAFETY: f and sll are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const self.sll).cast(),
                self.len,
            )
        };
        if usize::try_from(sent).ok() == Some(f.len()) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
