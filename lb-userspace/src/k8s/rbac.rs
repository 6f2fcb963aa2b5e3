//! Every kind of Kubernetes API request the components make, in one place.
//! The RBAC manifests must grant exactly these (tests/manifests.rs checks
//! both directions: nothing missing, nothing extra). Add a line here in the
//! same change that adds a call.

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// API group (`""` for core).
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    /// `Some(ns)`: only in the component's own namespace; `None`: cluster-wide.
    pub own_namespace: bool,
}

const fn call(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    own_namespace: bool,
) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
        own_namespace,
    }
}

/// The node agent (`onehop agent --kubernetes`, `k8s::agent`).
pub const AGENT: &[ApiCall] = &[
    // Reflectors over the cluster state.
    call("", "services", "list", false),
    call("", "services", "watch", false),
    call("", "nodes", "list", false),
    call("", "nodes", "watch", false),
    // The announcing node's annotation on Services (agent::announcer).
    call("", "services", "patch", false),
    call("discovery.k8s.io", "endpointslices", "list", false),
    call("discovery.k8s.io", "endpointslices", "watch", false),
    // Per-node Leases: watched for liveness, this node's renewed.
    call("coordination.k8s.io", "leases", "list", true),
    call("coordination.k8s.io", "leases", "watch", true),
    call("coordination.k8s.io", "leases", "create", true),
    call("coordination.k8s.io", "leases", "patch", true),
    // Pools and L2Advertisements decide which addresses are announced where.
    call("onehop.io", "ipaddresspools", "list", true),
    call("onehop.io", "ipaddresspools", "watch", true),
    call("onehop.io", "l2advertisements", "list", true),
    call("onehop.io", "l2advertisements", "watch", true),
    // Events on Services (`k8s::events::Recorder` creates, then patches a series).
    call("events.k8s.io", "events", "create", false),
    call("events.k8s.io", "events", "patch", false),
];
