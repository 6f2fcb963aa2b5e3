//! The network-stack edge: neighbour entries for next hops, gratuitous ARP,
//! and what the agent needs to know about its interface.

pub mod garp;
pub mod neigh;
pub mod netdev;
