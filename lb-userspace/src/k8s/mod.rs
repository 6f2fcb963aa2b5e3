//! What the agent and the controller share about Kubernetes: the pure
//! translation of cluster objects into the services model, the custom
//! resources, label selectors and the RBAC list both programs are granted.

pub mod bundle;
pub mod client;
pub mod crd;
pub mod events;
pub mod hash_secret;
pub mod lease;
pub mod pool;
pub mod rbac;
pub mod selector;
pub mod slice;
pub mod translate;
pub mod watch;
