//! onehop's userspace: a pure core (services file → desired map contents →
//! diff) and the edges that touch the kernel (loader, map writer, ARP
//! sender) and the outside world (file watcher, CLI).

pub mod config;
pub mod diff;
pub mod ebpf;
pub mod ids;
pub mod maglev;
pub mod slots;
pub mod state;
