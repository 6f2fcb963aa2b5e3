//! The pure core: what the maps should hold, computed from the services
//! model without any I/O, and the ordered writes that get them there.

pub mod diff;
pub mod ids;
pub mod maglev;
pub mod model;
pub mod services_file;
pub mod slots;
pub mod state;
pub mod table;
#[cfg(test)]
mod testing;
