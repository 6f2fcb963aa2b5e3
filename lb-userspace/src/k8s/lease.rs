//! The Lease pieces both programs write: the agent's per-node liveness
//! Lease and the controller's leader-election Lease.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};

/// Annotation on a node's Lease: the gateways of the node's routes, comma separated, as
/// its agent reads them (`net::route`). The controller refuses pools that contain one; it
/// cannot read the nodes' routes itself.
pub const GATEWAYS_ANNOTATION: &str = "onehop.io/gateways";

/// The value of [`GATEWAYS_ANNOTATION`] for `gateways`.
pub fn format_gateways<'a>(gateways: impl IntoIterator<Item = &'a Ipv4Addr>) -> String {
    gateways
        .into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Gateway → the nodes that route through it, from the per-node Leases' holder and
/// [`GATEWAYS_ANNOTATION`]. An entry that is not an IPv4 address is skipped.
pub fn node_gateways<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
) -> BTreeMap<Ipv4Addr, Vec<String>> {
    let mut out: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for l in leases {
        let Some(node) = l.spec.as_ref().and_then(|s| s.holder_identity.as_ref()) else {
            continue;
        };
        let Some(value) = l
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GATEWAYS_ANNOTATION))
        else {
            continue;
        };
        for ip in value.split(',').filter_map(|v| v.trim().parse().ok()) {
            let nodes = out.entry(ip).or_default();
            if !nodes.contains(node) {
                nodes.push(node.clone());
                nodes.sort();
            }
        }
    }
    out
}

/// `leaseDurationSeconds` for a duration: whole seconds, at least one.
pub fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// A new Lease `name`, acquired by `holder` at `now` for `duration`.
pub fn acquired(
    name: &str,
    holder: &str,
    duration: Duration,
    now: &MicroTime,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Lease {
    let nonempty = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: nonempty(labels),
            annotations: nonempty(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds(duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// The HTTP status of an API error (404, 409...), `None` for other errors.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_lease(node: &str, gateways: Option<&str>) -> Lease {
        let mut annotations = BTreeMap::new();
        if let Some(g) = gateways {
            annotations.insert(GATEWAYS_ANNOTATION.to_owned(), g.to_owned());
        }
        acquired(
            &format!("onehop-node-{node}"),
            node,
            Duration::from_secs(1),
            &MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            BTreeMap::new(),
            annotations,
        )
    }

    #[test]
    fn gateways_round_trip_through_the_lease_annotation() {
        let gw: Vec<Ipv4Addr> = vec!["192.168.1.1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        let leases = [
            node_lease("n2", Some(&format_gateways(&gw))),
            node_lease("n1", Some("192.168.1.1, not-an-address")),
            node_lease("n3", None),
        ];
        let got = node_gateways(&leases);
        assert_eq!(
            got,
            BTreeMap::from([
                (gw[1], vec!["n2".to_owned()]),
                (gw[0], vec!["n1".to_owned(), "n2".to_owned()]),
            ]),
            "a Lease without the annotation (an older agent) reports nothing"
        );
        assert_eq!(format_gateways(&[]), "");
    }
}
