//! onehop's userspace: a pure core (services file → desired map contents →
//! diff) and the edges that touch the kernel (loader, map writer, ARP
//! sender) and the outside world (file watcher, CLI).
//!
//! Pure core: [`config`], [`maglev`], [`slots`], [`ids`], [`state`], [`diff`].
//! Edges: [`loader`], [`bpfmaps`], [`writer`], [`reader`], [`neigh`],
//! [`garp`], [`netdev`], [`peer`]. Glue: [`agent`], [`status`].

pub mod agent;
pub mod bpfmaps;
pub mod config;
pub mod diff;
pub mod ebpf;
pub mod filewatch;
pub mod garp;
pub mod ids;
pub mod k8s;
pub mod loader;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod netdev;
pub mod peer;
pub mod reader;
pub mod slots;
pub mod state;
pub mod status;
pub mod writer;
