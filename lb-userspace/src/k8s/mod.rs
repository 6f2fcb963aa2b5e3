//! The Kubernetes source: pure translation of cluster objects into the
//! services model, and the announcer election. The watchers that feed them
//! and the writers of Events and Leases live at the edges.

pub mod advert;
pub mod agent;
pub mod alloc;
pub mod controller;
pub mod crd;
pub mod ctlmetrics;
pub mod election;
pub mod rbac;
pub mod selector;
pub mod translate;
