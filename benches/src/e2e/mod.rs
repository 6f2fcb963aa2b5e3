//! `bench-e2e`: onehop against kube-proxy's iptables and nftables data paths and plain
//! routing, on one namespace topology (see benches/README.md).

pub mod control;
pub mod control_k8s;
pub mod http;
pub mod kubeproxy;
pub mod load;
pub mod paths;
pub mod pinned;
pub mod plot;
pub mod report;
pub mod tcp;
pub mod xdpgen;
pub mod xdpstats;
