//! The network-stack edge: neighbour entries for next hops, gratuitous ARP
//! and unsolicited Neighbor Advertisements (sent as whole frames, `raw`),
//! what the agent needs to know about its interface, and its gateways, and
//! the one setting it changes on the interface (RX VLAN offload, `ethtool`).

pub mod ethtool;
pub mod garp;
pub mod ndp;
pub mod neigh;
pub mod netdev;
pub mod raw;
pub mod route;
