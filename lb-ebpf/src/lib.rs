//! onehop's data path as a library: one module per concern, shared by the
//! crate's two objects (one binary each), the product object
//! (`src/bin/lb-ebpf.rs`: exactly what the agent loads) and the bench object
//! (`src/bin/lb-ebpf-bench/`: the benchmark wrappers and frame generator,
//! with the product's XDP programs they measure). The product's maps are
//! declared once, in [`maps`], from lb-common's table.
//!
//! Public are the entry points' logic ([`ingress`], [`egress`]), the packet
//! cursor and headers ([`parse`]), checksum deltas ([`csum`]) and the maps:
//! what the bench object builds on. The rest stays inside the crate.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "BPF-to-BPF calls cost instructions and the verifier follows packet \
              pointers poorly across them: every step of the packet path is inlined on purpose"
)]

mod arp;
mod conntrack;
pub mod csum;
pub mod egress;
mod forward;
mod icmp;
pub mod ingress;
pub mod maps;
mod nat;
pub mod parse;
mod service;
mod stats;
mod verdict;
