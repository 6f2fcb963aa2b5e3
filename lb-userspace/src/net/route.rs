//! The gateways this node routes through, which must never become VIPs.
//!
//! A VIP equal to the LAN's router would make the announcing node answer ARP for the router
//! (taking over the LAN's traffic to it), and every other node drop the ARP requests for it
//! (cutting itself off from its own gateway). The controller cannot see the nodes' routes,
//! so each agent reads its own (`/proc/net/route` of its network namespace: the host's, for
//! the agent's host-network pod) and withholds such an address, with a `GatewayAddress`
//! warning (an Event on the Service with the Kubernetes source, a log line with a file).
//! IPv6 routes (`/proc/net/ipv6_route`) count as well: an IPv6 VIP equal to a router's
//! address would have Neighbor Solicitations for the router answered by the announcer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};

/// `RTF_UP` and `RTF_GATEWAY` of the route flags.
const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// The gateways of this namespace's IPv4 routes, each with what it is the gateway of.
pub fn gateways() -> Result<BTreeMap<Ipv4Addr, String>> {
    let text = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    Ok(parse(&text))
}

/// `/proc/net/route`: a header line, then one route a line, tab-separated: interface,
/// destination, gateway, flags (hex), refcnt, use, metric, mask, ... Addresses are the
/// kernel's `__be32` printed as a host-order hex number, so on a little-endian machine
/// `010200C0` is 192.0.2.1.
pub fn parse(text: &str) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dst), Some(gw), Some(flags), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(3), f.get(7))
        else {
            continue;
        };
        let (Some(dst), Some(gw), Some(flags), Some(mask)) =
            (addr(dst), addr(gw), hex(flags), addr(mask))
        else {
            continue;
        };
        if flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY || gw.is_unspecified() {
            continue;
        }
        let what = if mask.is_unspecified() {
            format!("the gateway of this node's default route (via {iface})")
        } else {
            let len = u32::from(mask).leading_ones();
            format!("a gateway of this node's route to {dst}/{len} (via {iface})")
        };
        // The default route's description wins over a more specific one through the same
        // router: it is the one an operator recognises.
        out.entry(gw)
            .and_modify(|w: &mut String| {
                if mask.is_unspecified() {
                    w.clone_from(&what);
                }
            })
            .or_insert(what);
    }
    out
}

/// The gateways of this namespace's IPv4 and IPv6 routes, each with what it is the
/// gateway of (IPv6 routes unreadable, as where IPv6 is off: the IPv4 ones alone).
pub fn all_gateways() -> Result<BTreeMap<IpAddr, String>> {
    let mut out: BTreeMap<IpAddr, String> = gateways()?
        .into_iter()
        .map(|(ip, what)| (IpAddr::V4(ip), what))
        .collect();
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse6(&text).into_iter().map(|(ip, w)| (IpAddr::V6(ip), w)));
    }
    Ok(out)
}

/// `/proc/net/ipv6_route`: one route a line, space-separated, no header: destination
/// (32 hex digits, network order), its prefix length (hex), source and its length, next
/// hop, metric, refcnt, use, flags (hex), interface.
pub fn parse6(text: &str) -> BTreeMap<Ipv6Addr, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dst, dst_len, _, _, gw, _, _, _, flags, iface] = f[..] else {
            continue;
        };
        let (Some(dst), Some(len), Some(gw), Some(flags)) =
            (addr6(dst), hex(dst_len), addr6(gw), hex(flags))
        else {
            continue;
        };
        if flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY || gw.is_unspecified() {
            continue;
        }
        let what = if len == 0 {
            format!("the gateway of this node's default IPv6 route (via {iface})")
        } else {
            format!("a gateway of this node's route to {dst}/{len} (via {iface})")
        };
        out.entry(gw)
            .and_modify(|w: &mut String| {
                if len == 0 {
                    w.clone_from(&what);
                }
            })
            .or_insert(what);
    }
    out
}

fn addr6(s: &str) -> Option<Ipv6Addr> {
    (s.len() == 32)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .map(Ipv6Addr::from)
}

fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok()
}

fn addr(s: &str) -> Option<Ipv4Addr> {
    // Printed from the network-order bytes read as a native integer.
    hex(s).map(|n| Ipv4Addr::from(n.to_ne_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_default_and_specific_gateways() {
        let text = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000050000000000000000000000001 00000400 00000001 00000000 00000003     eth0
fd000099000000000000000000000000 40 00000000000000000000000000000000 00 fd000050000000000000000000000002 00000400 00000001 00000000 00000003     eth0
fd000050000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
garbage
";
        let g = parse6(text);
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            g,
            BTreeMap::from([
                (
                    ip("fd00:50::1"),
                    "the gateway of this node's default IPv6 route (via eth0)".to_owned()
                ),
                (
                    ip("fd00:50::2"),
                    "a gateway of this node's route to fd00:99::/64 (via eth0)".to_owned()
                ),
            ])
        );
    }

    /// Network-order bytes as `/proc/net/route` prints them on this machine.
    fn h(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    #[test]
    fn default_and_specific_gateways_with_what_they_serve() {
        let text = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t{z}\t{gw}\t0003\t0\t0\t0\t{z}\t0\t0\t0\n\
             eth0\t{lan}\t{z}\t0001\t0\t0\t0\t{m24}\t0\t0\t0\n\
             eth1\t{ten}\t{gw2}\t0003\t0\t0\t0\t{m8}\t0\t0\t0\n\
             eth1\t{ten}\t{gw3}\t0002\t0\t0\t0\t{m8}\t0\t0\t0\n\
             garbage line\n",
            z = h([0, 0, 0, 0]),
            gw = h([192, 168, 50, 1]),
            lan = h([192, 168, 50, 0]),
            m24 = h([255, 255, 255, 0]),
            ten = h([10, 0, 0, 0]),
            gw2 = h([192, 168, 60, 254]),
            gw3 = h([192, 168, 60, 253]),
            m8 = h([255, 0, 0, 0]),
        );
        let g = parse(&text);
        assert_eq!(
            g.keys().copied().collect::<Vec<_>>(),
            [
                Ipv4Addr::new(192, 168, 50, 1),
                Ipv4Addr::new(192, 168, 60, 254)
            ],
            "down routes and on-link routes have no gateway to protect: {g:?}"
        );
        assert_eq!(
            g[&Ipv4Addr::new(192, 168, 50, 1)],
            "the gateway of this node's default route (via eth0)"
        );
        assert_eq!(
            g[&Ipv4Addr::new(192, 168, 60, 254)],
            "a gateway of this node's route to 10.0.0.0/8 (via eth1)"
        );
    }

    #[test]
    fn the_default_route_names_a_shared_gateway() {
        let text = format!(
            "header\n\
             eth0\t{ten}\t{gw}\t0003\t0\t0\t0\t{m8}\n\
             eth0\t{z}\t{gw}\t0003\t0\t0\t0\t{z}\n",
            z = h([0, 0, 0, 0]),
            gw = h([192, 168, 50, 1]),
            ten = h([10, 0, 0, 0]),
            m8 = h([255, 0, 0, 0]),
        );
        assert!(parse(&text)[&Ipv4Addr::new(192, 168, 50, 1)].contains("default route"));
    }

    #[test]
    fn this_machine_reads() {
        // Whatever the routes are, the file parses (a namespace may have none).
        gateways().expect("/proc/net/route");
    }
}
