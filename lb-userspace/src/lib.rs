//! onehop's userspace: a pure core (services file → desired map contents →
//! diff) and the edges that touch the kernel (loader, map writer, ARP
//! sender) and the outside world (file watcher, CLI).

pub mod bpfmaps;
pub mod ebpf;
pub mod garp;
pub mod loader;
pub mod neigh;
pub mod netdev;
pub mod peer;
pub mod status;
