//! What the agent needs to know about its interface: index, MAC, IPv4
//! and IPv6 addresses, link state. Read with plain ioctls/getifaddrs in the calling
//! thread's network namespace.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};

/// The interface the programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// First IPv4 address on the interface, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// Its prefix length (the interface's subnet).
    pub ipv4_prefix_len: Option<u8>,
    /// First global IPv6 address on the interface (not link-local), if any:
    /// the node's IPv6 address unless the services file sets `node.ip6`.
    pub ipv6: Option<Ipv6Addr>,
    /// Its prefix length (the interface's IPv6 subnet).
    pub ipv6_prefix_len: Option<u8>,
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self> {
        let c_name = CString::new(name).context("interface name contains a NUL byte")?;
        if name.len() >= libc::IFNAMSIZ {
            bail!(
                "interface name {name:?} is longer than {} bytes",
                libc::IFNAMSIZ - 1
            );
        }
        // SAFETY: c_name is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("no interface {name:?}"));
        }
        let (addr, addr6) =
            first_addresses(name).with_context(|| format!("reading the addresses of {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            index,
            mac: hw_addr(name).with_context(|| format!("reading the MAC of {name}"))?,
            ipv4: addr.map(|(ip, _)| ip),
            ipv4_prefix_len: addr.map(|(_, len)| len),
            ipv6: addr6.map(|(ip, _)| ip),
            ipv6_prefix_len: addr6.map(|(_, len)| len),
        })
    }
}

/// Whether `name` can carry traffic: administratively up (`IFF_UP`) and
/// with carrier (`IFF_RUNNING`, the kernel's "operationally up"). A NIC
/// whose cable is out, or a veth whose peer is down, is up but not running.
pub fn usable(name: &str) -> Result<bool> {
    let flags = if_flags(name).with_context(|| format!("reading the link state of {name}"))?;
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(i32::from(flags) & want == want)
}

/// The `SIOCGIFFLAGS` flags of `name`.
fn if_flags(name: &str) -> Result<libc::c_short> {
    let fd = ioctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: req is a properly initialised ifreq with a NUL-terminated name.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFFLAGS,
            &raw mut req,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("SIOCGIFFLAGS");
    }
    // SAFETY: SIOCGIFFLAGS filled the ifru_flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// An `AF_INET` datagram socket, the handle interface ioctls go through.
fn ioctl_socket() -> Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for interface ioctls");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// An `ifreq` naming `name`, the rest zero.
fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("bad interface name {name:?}");
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    Ok(req)
}

fn hw_addr(name: &str) -> Result<[u8; 6]> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: req is a properly initialised ifreq with a NUL-terminated name
    // (the name is shorter than IFNAMSIZ and the rest is zero).
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &raw mut req,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("SIOCGIFHWADDR");
    }
    // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = (*src).cast_unsigned();
    }
    Ok(mac)
}

/// An interface's first IPv4 address and its first global IPv6 address,
/// each with its prefix length.
type Addresses = (Option<(Ipv4Addr, u8)>, Option<(Ipv6Addr, u8)>);

/// The first IPv4 address of `name` and its first global IPv6 address
/// (link-local ones name no node beyond the link), each with its prefix
/// length.
fn first_addresses(name: &str) -> Result<Addresses> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: head is a valid out-pointer; freed with freeifaddrs below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut found6 = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, still alive.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifa_name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if ifa_name.to_bytes() != name.as_bytes() {
            continue;
        }
        if family == libc::AF_INET6 && found6.is_none() {
            // SAFETY: the family says this sockaddr is a sockaddr_in6; read
            // unaligned because sockaddr only promises 2-byte alignment.
            let sin6 = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if !ip.is_unicast_link_local() && !ip.is_loopback() && !ip.is_multicast() {
                let len = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: a non-null netmask of an AF_INET6 entry is a
                    // sockaddr_in6 too; read unaligned as above.
                    let m = unsafe {
                        ifa.ifa_netmask
                            .cast::<libc::sockaddr_in6>()
                            .read_unaligned()
                    };
                    #[expect(
                        clippy::cast_possible_truncation,
                        reason = "a u128 has at most 128 leading ones"
                    )]
                    let len = u128::from_be_bytes(m.sin6_addr.s6_addr).leading_ones() as u8;
                    len
                };
                found6 = Some((ip, len));
            }
        }
        if family == libc::AF_INET && found.is_none() {
            // SAFETY: the family says this sockaddr is a sockaddr_in; read it
            // unaligned because sockaddr only promises 2-byte alignment.
            let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
            let mask = if ifa.ifa_netmask.is_null() {
                u32::MAX
            } else {
                // SAFETY: a non-null netmask of an AF_INET entry is a
                // sockaddr_in too; read unaligned as above.
                let m = unsafe { ifa.ifa_netmask.cast::<libc::sockaddr_in>().read_unaligned() };
                u32::from_be(m.sin_addr.s_addr)
            };
            #[expect(
                clippy::cast_possible_truncation,
                reason = "a u32 has at most 32 leading ones"
            )]
            let len = mask.leading_ones() as u8;
            found = Some((Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), len));
        }
    }
    // SAFETY: head came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok((found, found6))
}

/// Formats a MAC address the usual way.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_127_0_0_1() {
        let lo = Interface::lookup("lo").expect("lo exists in every namespace");
        assert!(lo.index > 0);
        assert_eq!(lo.mac, [0; 6]);
        assert_eq!(lo.ipv4, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(lo.ipv4_prefix_len, Some(8), "127.0.0.1/8");
    }

    #[test]
    fn unknown_interface_is_an_error_naming_it() {
        let err = Interface::lookup("nosuchif0").expect_err("must not exist");
        assert!(format!("{err:#}").contains("nosuchif0"), "{err:#}");
    }

    #[test]
    fn loopback_is_usable_and_a_missing_interface_is_an_error() {
        assert!(
            usable("lo").expect("lo"),
            "lo is up where it has 127.0.0.1 (as above)"
        );
        let err = usable("nosuchif0").expect_err("must not exist");
        assert!(format!("{err:#}").contains("nosuchif0"), "{err:#}");
    }

    #[test]
    fn mac_format() {
        assert_eq!(fmt_mac([0x02, 0, 0xab, 1, 2, 0xff]), "02:00:ab:01:02:ff");
    }
}
