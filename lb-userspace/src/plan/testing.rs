//! Fixtures the planner's unit tests share.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    model::{Limits, NodeServices},
    services_file,
    state::Node,
};

/// The node every planner test plans for.
pub const NODE: Node = Node {
    ip: Ipv4Addr::new(192, 168, 50, 10),
    ip6: Some(Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10)),
    ifindex: 7,
    mac: [2, 0, 0, 0, 0, 1],
    hash_seed: 0x5eed_0001,
    segment: None,
    segment6: None,
};

/// Default limits with a Maglev array small enough to fill in a test.
pub fn limits() -> Limits {
    Limits {
        maglev_slots: 1 << 16,
        ..Limits::default()
    }
}

/// A services file that must be valid.
pub fn parse(text: &str) -> NodeServices {
    services_file::parse(text, &limits()).unwrap_or_else(|e| panic!("{e}"))
}
