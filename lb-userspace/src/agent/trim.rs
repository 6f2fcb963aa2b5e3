//! What the agent's caches keep of each watched object: only the fields the
//! translation, the election and the Events read. Every agent caches every Service,
//! `EndpointSlice` and Node of the cluster; on a real cluster most of an object's bytes
//! are fields it never reads (a Node's image list, `last-applied-configuration`
//! annotations, each endpoint's `targetRef`), multiplied by tens of thousands.
//!
//! A field read by the agent must not be dropped here: the tests translate a full and a
//! trimmed copy of the same cluster and compare.

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::api::ObjectMeta;

/// Prefix of every annotation onehop reads from objects other agents and the controller
/// write.
const OUR_ANNOTATIONS: &str = "onehop.io/";

/// Keeps name, namespace, uid, resourceVersion, labels and our own annotations (what
/// Events, selectors and the announcer annotation need).
fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    if let Some(a) = &mut m.annotations {
        a.retain(|k, _| k.starts_with(OUR_ANNOTATIONS));
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// Services: the whole spec and status (small; the translation reads most of them).
pub fn service(s: &mut Service) {
    meta(&mut s.metadata);
}

/// `EndpointSlices`: per endpoint its addresses, conditions and node.
pub fn endpoint_slice(s: &mut EndpointSlice) {
    meta(&mut s.metadata);
    for ep in &mut s.endpoints {
        ep.target_ref = None;
        ep.hints = None;
        ep.deprecated_topology = None;
        ep.hostname = None;
        ep.zone = None;
    }
}

/// Nodes: labels, addresses and conditions; not their images, volumes, capacity or
/// system information.
pub fn node(n: &mut Node) {
    meta(&mut n.metadata);
    n.spec = None;
    if let Some(st) = &mut n.status {
        st.images = None;
        st.volumes_attached = None;
        st.volumes_in_use = None;
        st.node_info = None;
        st.allocatable = None;
        st.capacity = None;
        st.daemon_endpoints = None;
        st.config = None;
        st.features = None;
        st.runtime_handlers = None;
        for c in st.conditions.iter_mut().flatten() {
            c.message = None;
            c.reason = None;
        }
    }
}

/// The per-node Leases: small, kept whole but for the bookkeeping fields.
pub fn lease(l: &mut Lease) {
    meta(&mut l.metadata);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus};
    use k8s_openapi::api::{
        core::v1::{
            ContainerImage, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo,
            ObjectReference, ServicePort, ServiceSpec, ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, ForZone},
    };
    use kube::ResourceExt as _;

    use super::*;
    use crate::k8s::translate::{self, ClassFilter, Inputs, SliceIndex};
    use crate::plan::model::{FlowTimeouts, NatPorts};

    fn meta(name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("7".into()),
            labels: Some(BTreeMap::from([("app".into(), name.into())])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    fn cluster() -> (Vec<Service>, Vec<EndpointSlice>, Vec<Node>) {
        let svc = Service {
            metadata: meta(
                "web",
                &[
                    (
                        "kubectl.kubernetes.io/last-applied-configuration",
                        "{\"a\":1}",
                    ),
                    (crate::agent::announcer::ANNOTATION, "n1"),
                ],
            ),
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                session_affinity: Some("ClientIP".into()),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.0.2.10".into()),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                ..ServiceStatus::default()
            }),
        };
        let ep = |ip: &str, node: &str, ready: bool| Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(true),
                terminating: Some(!ready),
            }),
            node_name: Some(node.into()),
            hostname: Some("pod".into()),
            zone: Some("z1".into()),
            hints: Some(EndpointHints {
                for_zones: Some(vec![ForZone { name: "z1".into() }]),
                ..EndpointHints::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some("web-1".into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        let mut slice_meta = meta("web-abc", &[("endpoints.kubernetes.io/x", "y")]);
        slice_meta.labels = Some(BTreeMap::from([(
            translate::SERVICE_NAME_LABEL.into(),
            "web".into(),
        )]));
        let slice = EndpointSlice {
            metadata: slice_meta,
            address_type: "IPv4".into(),
            endpoints: vec![
                ep("10.42.0.5", "n1", true),
                ep("10.42.1.5", "n2", true),
                ep("10.42.1.6", "n2", false),
            ],
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        };
        let node = |name: &str, ip: &str| Node {
            metadata: meta(name, &[("node.alpha.kubernetes.io/ttl", "0")]),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    message: Some("kubelet is posting ready status".into()),
                    ..NodeCondition::default()
                }]),
                images: Some(vec![ContainerImage {
                    names: Some(vec!["registry/image:tag".into()]),
                    size_bytes: Some(1 << 30),
                }]),
                node_info: Some(NodeSystemInfo::default()),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        (
            vec![svc],
            vec![slice],
            vec![node("n1", "192.168.1.11"), node("n2", "192.168.1.12")],
        )
    }

    fn translated(
        services: &[Service],
        slices: &[EndpointSlice],
        nodes: &[Node],
    ) -> translate::Translation {
        let index = SliceIndex::new(slices.iter());
        let class = ClassFilter {
            class: "onehop.io/l2".into(),
            unclassed: true,
        };
        let announce = BTreeSet::from(["192.0.2.10".parse().expect("an address")]);
        let services: Vec<std::sync::Arc<Service>> =
            services.iter().cloned().map(std::sync::Arc::new).collect();
        translate::translate(&Inputs {
            services: &services,
            slices: &index,
            nodes,
            node_name: "n1",
            class: &class,
            announce: &announce,
            nat_ports: NatPorts::default(),
            flow_timeouts: FlowTimeouts::default(),
            maglev_table_size: crate::plan::model::MaglevSize::DEFAULT,
            gateways: &BTreeMap::new(),
        })
    }

    #[test]
    fn trimming_changes_nothing_the_agent_reads() {
        let (services, slices, nodes) = cluster();
        let full = translated(&services, &slices, &nodes);
        assert!(
            !full.file.services.is_empty(),
            "the fixture must translate to something"
        );
        let (mut ts, mut tsl, mut tn) = (services.clone(), slices.clone(), nodes.clone());
        ts.iter_mut().for_each(service);
        tsl.iter_mut().for_each(endpoint_slice);
        tn.iter_mut().for_each(node);
        assert_eq!(translated(&ts, &tsl, &tn), full);
        assert_eq!(
            ts[0].annotations().get(crate::agent::announcer::ANNOTATION),
            Some(&"n1".to_owned()),
            "the announcer annotation is read by the agent"
        );
        for (t, f) in tn.iter().zip(&nodes) {
            assert_eq!(t.labels(), f.labels(), "node selectors read the labels");
            assert_eq!(translate::node_ready(t), translate::node_ready(f));
        }
        assert_eq!(ts[0].uid(), services[0].uid(), "Events need the uid");
    }

    #[test]
    fn trimming_drops_what_nobody_reads() {
        let (mut services, mut slices, mut nodes) = cluster();
        service(&mut services[0]);
        endpoint_slice(&mut slices[0]);
        node(&mut nodes[0]);
        assert_eq!(
            services[0].annotations().len(),
            1,
            "only onehop's annotations stay"
        );
        assert!(slices[0].metadata.annotations.is_none());
        assert!(
            slices[0]
                .endpoints
                .iter()
                .all(|e| e.target_ref.is_none() && e.hints.is_none() && e.hostname.is_none())
        );
        let st = nodes[0].status.as_ref().expect("status kept");
        assert!(st.images.is_none() && st.node_info.is_none());
        assert!(st.addresses.is_some() && st.conditions.is_some());
    }
}
