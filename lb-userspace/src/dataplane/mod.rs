//! The BPF edge: the embedded object, loading and pinning programs, maps and
//! links, writing and reading the maps, and the status snapshot built from
//! them.

pub mod batch;
pub mod flows;
pub mod loader;
pub mod mapped;
pub mod maps;
pub mod memory;
pub mod object;
pub mod peer;
pub mod reader;
pub mod status;
pub mod sweep;
pub mod uninstall;
pub mod writer;
