//! Managed neighbour entries (Linux >= 5.16, `NTF_EXT_MANAGED`): the kernel
//! resolves them by itself and keeps them reachable. The XDP program gets
//! next-hop MACs for backend nodes from `bpf_fib_lookup`, which fails until
//! the neighbour is resolved — and a full-NAT packet cannot be handed to the
//! kernel to trigger resolution (its source is our own address). So the
//! agent asks the kernel to keep every backend node resolved, by its IPv4
//! or IPv6 address (IPv6 next hops are resolved by neighbour discovery).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1 << 0;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const NLMSG_ERROR: u16 = 2;
// Netlink header flags (linux/netlink.h), as the u16 the header carries.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Builds one `RTM_NEWNEIGH`/`RTM_DELNEIGH` request (pure, unit-tested).
fn request(kind: u16, ifindex: u32, ip: IpAddr, seq: u32) -> Vec<u8> {
    let flags = match kind {
        RTM_NEWNEIGH => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        _ => NLM_F_REQUEST | NLM_F_ACK,
    };
    let mut msg = Vec::with_capacity(48);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // struct ndmsg { family u8, pad u8, pad u16, ifindex i32, state u16, flags u8, type u8 }
    let (family, addr): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    msg.push(family);
    msg.extend_from_slice(&[0, 0, 0]);
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // NUD_NONE: let the kernel resolve it
    msg.push(0);
    msg.push(0);
    // NDA_DST: the attribute header, then the address (4 or 16 bytes, both
    // already 4-aligned).
    let dst_len = u16::try_from(4 + addr.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&dst_len.to_ne_bytes());
    msg.extend_from_slice(&NDA_DST.to_ne_bytes());
    msg.extend_from_slice(&addr);
    if kind == RTM_NEWNEIGH {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&NDA_FLAGS_EXT.to_ne_bytes());
        msg.extend_from_slice(&NTF_EXT_MANAGED.to_ne_bytes());
    }
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

fn talk(msg: &[u8]) -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a netlink socket");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: msg is a valid buffer of msg.len() bytes.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending the netlink request");
    }
    let mut buf = [0u8; 512];
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n)
        .map_err(|_| io::Error::last_os_error())
        .context("reading the netlink ack")?;
    parse_ack(&buf[..n])
}

/// Reads the kernel's `NLMSG_ERROR` answer: error 0 is the ACK.
fn parse_ack(buf: &[u8]) -> Result<()> {
    if buf.len() < 20 {
        bail!("short netlink answer ({} bytes)", buf.len());
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != NLMSG_ERROR {
        bail!("unexpected netlink answer type {kind}");
    }
    let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if errno == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-errno).into())
    }
}

/// Creates (or turns into) a managed entry for `ip` on `ifindex`.
pub fn ensure_managed(ifindex: u32, ip: impl Into<IpAddr>) -> Result<()> {
    let ip = ip.into();
    talk(&request(RTM_NEWNEIGH, ifindex, ip, 1))
        .with_context(|| format!("adding managed neighbour {ip} (needs Linux >= 5.16)"))
}

/// Removes the entry for `ip` (a missing entry is not an error).
pub fn remove(ifindex: u32, ip: impl Into<IpAddr>) -> Result<()> {
    let ip = ip.into();
    match talk(&request(RTM_DELNEIGH, ifindex, ip, 2)) {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r.with_context(|| format!("removing neighbour {ip}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn new_neigh_request_layout_ipv6() {
        let ip = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x12);
        let m = request(RTM_NEWNEIGH, 7, ip.into(), 9);
        assert_eq!(m.len(), 16 + 12 + 20 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(m[16], AF_INET6);
        assert_eq!(
            u16::from_ne_bytes([m[28], m[29]]),
            20,
            "NDA_DST of 16 bytes"
        );
        assert_eq!(&m[32..48], &ip.octets());
        assert_eq!(u16::from_ne_bytes([m[50], m[51]]), NDA_FLAGS_EXT);
    }

    #[test]
    fn new_neigh_request_layout() {
        let m = request(RTM_NEWNEIGH, 7, Ipv4Addr::new(192, 168, 50, 12).into(), 9);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWNEIGH);
        assert_eq!(m[16], AF_INET);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(&m[32..36], &[192, 168, 50, 12]);
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), NDA_FLAGS_EXT);
        assert_eq!(
            u32::from_ne_bytes(m[40..44].try_into().unwrap()),
            NTF_EXT_MANAGED
        );
    }

    #[test]
    fn ack_parsing() {
        let mut ok = vec![0u8; 36];
        ok[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(parse_ack(&ok).is_ok());
        let mut err = ok.clone();
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_ack(&err).is_err());
        assert!(parse_ack(&ok[..10]).is_err());
    }
}
