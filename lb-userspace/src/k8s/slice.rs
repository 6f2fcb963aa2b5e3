//! What the translation reads of an `EndpointSlice`, and nothing else. Every agent caches
//! every slice of the cluster: 100,000 endpoints as k8s-openapi objects are ~35 MiB
//! (each `Endpoint` a struct of mostly-`None` options, every address and node name its own
//! string), the same endpoints as [`Slice`]s about a tenth of that.
//!
//! The reading rules live here once, applied when a slice is cached: the slice's family
//! (`IPv4` or `IPv6`; `FQDN` slices are left out), its Service (the `kubernetes.io/service-name` label), the first address of
//! each endpoint, its conditions with the API's defaults, and the numbers of the slice's
//! named ports.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::translate::{SERVICE_NAME_LABEL, ServiceRef};

/// How an endpoint is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Ready and not terminating: takes new flows.
    Ready,
    /// Serving while terminating: takes new flows only when no endpoint
    /// (of the set the choice is made over) is ready; drains otherwise.
    Fallback,
    /// Terminating and not serving, or not ready: keeps its flows only.
    Drain,
}

impl Use {
    /// From an endpoint's conditions with the API's defaults: `ready` and `serving` default
    /// to true (`serving` to `ready`), `terminating` to false.
    fn of(ep: &Endpoint) -> Self {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        if ready && !terminating {
            Self::Ready
        } else if serving && terminating {
            Self::Fallback
        } else {
            Self::Drain
        }
    }
}

/// One endpoint with an address of its slice's family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its first address (an endpoint whose first address is not of the
    /// slice's family is left out).
    pub ip: IpAddr,
    /// `nodeName`, shared between the endpoints of a slice on the same node.
    pub node: Option<Arc<str>>,
    pub use_: Use,
}

/// An IPv4 or IPv6 `EndpointSlice` of a Service, as the translation reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub service: ServiceRef,
    /// (port name, number) of the slice's ports that carry a usable number (1–65535), in
    /// the slice's order; an unnamed port has the name "".
    pub ports: Box<[(Box<str>, u16)]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

impl Slice {
    /// The slice as the translation reads it; `None` for one it ignores (another address
    /// family, or no namespace or Service label).
    pub fn read(s: &EndpointSlice) -> Option<Self> {
        let v6 = match s.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => return None,
        };
        let namespace = s.metadata.namespace.as_ref()?;
        let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let n = p.port.and_then(|n| u16::try_from(n).ok())?;
                (n > 0).then(|| (Box::from(p.name.as_deref().unwrap_or("")), n))
            })
            .collect();
        let mut nodes: Vec<Arc<str>> = Vec::new();
        let endpoints = s
            .endpoints
            .iter()
            .filter_map(|ep| {
                let ip = ep
                    .addresses
                    .first()?
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|ip| ip.is_ipv6() == v6)?;
                let node = ep.node_name.as_deref().map(|n| {
                    if let Some(known) = nodes.iter().find(|k| &***k == n) {
                        Arc::clone(known)
                    } else {
                        let new: Arc<str> = Arc::from(n);
                        nodes.push(Arc::clone(&new));
                        new
                    }
                });
                Some(SliceEndpoint {
                    ip,
                    node,
                    use_: Use::of(ep),
                })
            })
            .collect();
        Some(Self {
            service: ServiceRef {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            ports,
            endpoints,
        })
    }

    /// The number this slice gives for the Service port `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use k8s_openapi::api::{
        core::v1::{Node, ObjectReference, Service},
        discovery::v1::{EndpointConditions, EndpointPort},
    };
    use kube::{api::ObjectMeta, runtime::watcher::Event};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::k8s::{
        translate::{self, ClassFilter, Inputs, SliceIndex, Translation},
        watch::Contents,
    };
    use crate::plan::model::{FlowTimeouts, NatPorts};

    fn conditions(c: Option<(Option<bool>, Option<bool>, Option<bool>)>) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.1".into()],
            conditions: c.map(|(ready, serving, terminating)| EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Endpoint::default()
        }
    }

    #[test]
    fn conditions_take_the_apis_defaults() {
        let t = Some(true);
        let f = Some(false);
        for (c, want) in [
            (None, Use::Ready),
            (Some((None, None, None)), Use::Ready),
            (Some((f, None, None)), Use::Drain),
            // `serving` defaults to `ready`.
            (Some((f, None, t)), Use::Drain),
            (Some((t, None, t)), Use::Fallback),
            (Some((None, None, t)), Use::Fallback),
            (Some((f, t, t)), Use::Fallback),
            (Some((f, f, t)), Use::Drain),
            (Some((t, f, f)), Use::Ready),
            (Some((f, t, f)), Use::Drain),
        ] {
            let ep = conditions(c);
            assert_eq!(Use::of(&ep), want, "{:?}", ep.conditions);
        }
    }

    fn full_slice(namespace: &str, name: &str, svc: Option<&str>, family: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: svc.map(|s| {
                    BTreeMap::from([(translate::SERVICE_NAME_LABEL.to_owned(), s.to_owned())])
                }),
                ..ObjectMeta::default()
            },
            address_type: family.into(),
            ..EndpointSlice::default()
        }
    }

    /// An IPv6 slice gives the endpoints whose first address is IPv6; FQDN
    /// slices are ignored.
    #[test]
    fn reads_ipv6_slices_and_ignores_fqdn_ones() {
        assert!(Slice::read(&full_slice("ns", "a", Some("web"), "FQDN")).is_none());
        let mut s = full_slice("ns", "a", Some("web"), "IPv6");
        s.endpoints = ["fd00:42::5", "10.0.0.1", "fd00:42::zz", "fd00:42::6"]
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).into()],
                node_name: Some("n1".into()),
                ..Endpoint::default()
            })
            .collect();
        let got = Slice::read(&s).expect("an IPv6 slice of a service");
        let ips: Vec<IpAddr> = got.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(
            ips,
            [
                "fd00:42::5".parse::<IpAddr>().unwrap(),
                "fd00:42::6".parse().unwrap()
            ],
            "only addresses of the slice's family"
        );
    }

    #[test]
    fn reads_slices_of_a_service_and_their_first_addresses() {
        assert!(Slice::read(&full_slice("ns", "a", None, "IPv4")).is_none());
        let mut s = full_slice("ns", "a", Some("web"), "IPv4");
        s.endpoints = ["10.0.0.1", "fd00::1", "10.0.0.300", "10.0.0.2"]
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).into(), "10.9.9.9".into()],
                node_name: Some("n1".into()),
                ..Endpoint::default()
            })
            .chain([Endpoint::default()])
            .collect();
        s.ports = Some(vec![
            EndpointPort {
                name: Some("http".into()),
                port: None,
                ..EndpointPort::default()
            },
            EndpointPort {
                name: Some("http".into()),
                port: Some(0),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: None,
                port: Some(70_000),
                ..EndpointPort::default()
            },
            EndpointPort {
                name: None,
                port: Some(53),
                ..EndpointPort::default()
            },
        ]);
        let got = Slice::read(&s).expect("an IPv4 slice of a service");
        assert_eq!(
            got.service,
            ServiceRef {
                namespace: "ns".into(),
                name: "web".into()
            }
        );
        let ips: Vec<IpAddr> = got.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(
            ips,
            [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])],
            "an endpoint counts by its first address, and only if that is IPv4"
        );
        assert_eq!(got.port("http"), Some(8080), "the first usable number");
        assert_eq!(got.port(""), Some(53));
        assert_eq!(got.port("dns"), None);
        assert!(
            Arc::ptr_eq(
                got.endpoints[0].node.as_ref().expect("node"),
                got.endpoints[1].node.as_ref().expect("node")
            ),
            "endpoints on one node share its name"
        );
    }

    // Random clusters: two namespaces, two Services each (one `Local`), slices with every
    // field the translation reads varied and some it does not.

    const NAMESPACES: [&str; 2] = ["default", "other"];
    const SERVICES: [&str; 2] = ["web", "api"];

    fn service(namespace: &str, name: &str, vip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": { "namespace": namespace, "name": name, "uid": format!("{namespace}-{name}") },
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": if name == "api" { "Local" } else { "Cluster" },
                "ports": [
                    { "name": "http", "port": 80, "protocol": "TCP", "targetPort": "http" },
                    { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353 },
                    { "port": 9000, "protocol": "UDP" }
                ]
            },
            "status": { "loadBalancer": { "ingress": [{ "ip": vip }] } }
        }))
        .expect("a valid Service")
    }

    fn services() -> Vec<Service> {
        let mut out = Vec::new();
        let mut vip = 200;
        for ns in NAMESPACES {
            for name in SERVICES {
                out.push(service(ns, name, &format!("192.168.50.{vip}")));
                vip += 1;
            }
        }
        out
    }

    fn nodes() -> Vec<Node> {
        ["n1", "n2"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::from_value(json!({
                    "metadata": { "name": n },
                    "status": {
                        "addresses": [{ "type": "InternalIP", "address": format!("192.168.50.{}", 11 + i) }],
                        "conditions": [{ "type": "Ready", "status": "True" }]
                    }
                }))
                .expect("a valid Node")
            })
            .collect()
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        let address = prop::sample::select(vec![
            "10.42.0.1",
            "10.42.0.2",
            "10.42.0.3",
            "10.42.0.4",
            "fd00::1",
            "not an address",
        ]);
        let flag = prop::option::of(any::<bool>());
        (
            prop::collection::vec(address, 0..3),
            prop::option::of(prop::sample::select(vec!["n1", "n2", "n3"])),
            prop::option::of((flag.clone(), flag.clone(), flag)),
            any::<bool>(),
        )
            .prop_map(|(addresses, node, c, noise)| Endpoint {
                addresses: addresses.into_iter().map(str::to_owned).collect(),
                node_name: node.map(str::to_owned),
                conditions: c.map(|(ready, serving, terminating)| EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
                // Fields nobody reads.
                hostname: noise.then(|| "pod-0".to_owned()),
                target_ref: noise.then(|| ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some("pod-0".into()),
                    ..ObjectReference::default()
                }),
                zone: noise.then(|| "zone-a".to_owned()),
                ..Endpoint::default()
            })
    }

    fn port() -> impl Strategy<Value = EndpointPort> {
        (
            prop::option::of(prop::sample::select(vec!["http", "dns", ""])),
            prop::option::of(prop::sample::select(vec![0, 8080, 8081, 5353, 70_000])),
        )
            .prop_map(|(name, port)| EndpointPort {
                name: name.map(str::to_owned),
                port,
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            })
    }

    /// A slice named `s<0..6>` in one of the namespaces, of one of the Services (or none).
    fn slice() -> impl Strategy<Value = EndpointSlice> {
        (
            prop::sample::select(NAMESPACES.to_vec()),
            0..6u8,
            prop::option::weighted(0.9, prop::sample::select(SERVICES.to_vec())),
            prop::sample::select(vec!["IPv4", "IPv4", "IPv4", "IPv6"]),
            prop::option::of(prop::collection::vec(port(), 0..3)),
            prop::collection::vec(endpoint(), 0..5),
        )
            .prop_map(|(ns, i, svc, family, ports, endpoints)| {
                let mut s = full_slice(ns, &format!("s{i}"), svc, family);
                s.ports = ports;
                s.endpoints = endpoints;
                s
            })
    }

    /// A watch event after the first list: a new or changed slice, or a deletion.
    fn change() -> impl Strategy<Value = (bool, EndpointSlice)> {
        (prop::bool::weighted(0.7), slice())
    }

    fn translated(index: &SliceIndex, node: &str) -> Translation {
        let class = ClassFilter {
            class: "onehop.io/l2".into(),
            unclassed: true,
        };
        let (services, nodes) = (services(), nodes());
        let services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        let announce = BTreeSet::new();
        translate::translate(&Inputs {
            services: &services,
            slices: index,
            nodes: &nodes,
            node_name: node,
            class: &class,
            announce: &announce,
            nat_ports: NatPorts::default(),
            flow_timeouts: FlowTimeouts::default(),
            maglev_table_size: crate::plan::model::MaglevSize::DEFAULT,
            gateways: &BTreeMap::new(),
        })
    }

    fn key(s: &EndpointSlice) -> (String, String) {
        (
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        )
    }

    proptest! {
        /// The agent's cache of [`Slice`]s, fed the watch events of a cluster's slices
        /// (a first list, changes and deletions, a re-list), translates to exactly what
        /// the full objects it ends up with translate to, on either node.
        #[test]
        fn the_cache_of_read_slices_translates_like_the_full_objects(
            listed in prop::collection::vec(slice(), 0..8),
            changes in prop::collection::vec(change(), 0..12),
            relist in prop::option::of(prop::collection::vec(slice(), 0..8)),
        ) {
            let mut cache = Contents::default();
            let mut objects: BTreeMap<(String, String), EndpointSlice> = BTreeMap::new();
            let mut events = vec![Event::Init];
            for s in listed {
                objects.insert(key(&s), s.clone());
                events.push(Event::InitApply(s));
            }
            events.push(Event::InitDone);
            for (apply, s) in changes {
                if apply {
                    objects.insert(key(&s), s.clone());
                    events.push(Event::Apply(s));
                } else {
                    objects.remove(&key(&s));
                    events.push(Event::Delete(s));
                }
            }
            if let Some(all) = relist {
                objects.clear();
                events.push(Event::Init);
                for s in all {
                    objects.insert(key(&s), s.clone());
                    events.push(Event::InitApply(s));
                }
                events.push(Event::InitDone);
            }
            for ev in &events {
                cache.apply(ev, Slice::read);
            }
            let from_cache = SliceIndex::from_slices(cache.values());
            let from_objects = SliceIndex::new(objects.values());
            for node in ["n1", "n2"] {
                prop_assert_eq!(translated(&from_cache, node), translated(&from_objects, node));
            }
        }
    }
}
