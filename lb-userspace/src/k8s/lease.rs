//! The Lease pieces both programs write: the agent's per-node liveness
//! Lease and the controller's leader-election Lease.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};

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
