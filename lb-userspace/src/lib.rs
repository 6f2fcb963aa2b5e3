//! onehop's userspace, one folder per layer:
//!
//! - [`plan`]: the pure core. The services model and its file format,
//!   Maglev, id and slot allocation, the desired map contents and the diff
//!   that gets the maps there. No I/O.
//! - [`dataplane`]: the edge that touches BPF: the embedded object, loading
//!   and pinning, the map writer and reader, the status snapshot, the veth
//!   pass-through program.
//! - [`net`]: the edge that touches the network stack: neighbour entries,
//!   gratuitous ARP, interface facts.
//! - [`k8s`]: what both programs share about Kubernetes: translation of
//!   cluster objects into the model, the custom resources, selectors, pools,
//!   the RBAC list, one watch helper and one Lease helper.
//! - [`agent`]: the node agent (`onehop agent`): the map owner, its two
//!   sources of services (file and Kubernetes), announcer election, metrics.
//! - [`controller`]: the address allocator (`onehop controller`), its
//!   leader election and metrics.
//! - [`http`]: the small HTTP server both programs expose metrics on.

pub mod agent;
pub mod controller;
pub mod dataplane;
pub mod http;
pub mod k8s;
pub mod net;
pub mod plan;
pub mod shutdown;
