//! Whole Ethernet frames the agent sends itself (gratuitous ARP, unsolicited
//! Neighbor Advertisements): an `AF_PACKET` socket that only sends, on one
//! interface.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

/// An `AF_PACKET` socket that sends frames out of one interface.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl FrameSender {
    /// Opens the socket (needs `CAP_NET_RAW`). It binds no protocol, so it
    /// receives nothing.
    pub fn new(ifindex: u32) -> Result<Self> {
        // SAFETY: plain socket(2); ownership taken right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("opening an AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: fd is fresh and owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            ifindex,
        })
    }

    /// Sends `frame` (Ethernet header included: its destination MAC is the
    /// first six bytes, its ethertype bytes 12 and 13) as it is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: sockaddr_ll is plain data; zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        // AF_PACKET (17) fits; the field is the kernel's `unsigned short`.
        addr.sll_family = u16::try_from(libc::AF_PACKET)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        addr.sll_ifindex = i32::try_from(self.ifindex)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the sizes given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(u32::MAX),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
