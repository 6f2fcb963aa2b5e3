//! One store, two APIs: Kubernetes keeps Events once and serves them as `events.k8s.io/v1`
//! and as `core/v1` (what `kubectl describe` and `kubectl get events` read). This server
//! stores each Event under the API it was written through; reads (GET and LIST) of either
//! API also see the other's Events, converted as the Kubernetes conversion does. Watches
//! see only their own API's Events.

use serde_json::{Map, Value, json};

use super::store::ResourceDef;

/// Whether `rd` is the core/v1 Event resource.
pub(crate) fn is_core(rd: &ResourceDef) -> bool {
    rd.group.is_empty() && rd.plural == "events"
}

/// Whether `rd` is the events.k8s.io Event resource.
pub(crate) fn is_events_api(rd: &ResourceDef) -> bool {
    rd.group == "events.k8s.io" && rd.plural == "events"
}

fn copy(to: &mut Map<String, Value>, from: &Value, pairs: &[(&str, &str)]) {
    for (dst, src) in pairs {
        if let Some(v) = from.get(*src).filter(|v| !v.is_null()) {
            to.insert((*dst).to_owned(), v.clone());
        }
    }
}

/// An `events.k8s.io/v1` Event as `core/v1` shows it.
pub(crate) fn to_core(ev: &Value) -> Value {
    let mut m = Map::new();
    m.insert("apiVersion".into(), "v1".into());
    m.insert("kind".into(), "Event".into());
    copy(
        &mut m,
        ev,
        &[
            ("metadata", "metadata"),
            ("involvedObject", "regarding"),
            ("related", "related"),
            ("reason", "reason"),
            ("message", "note"),
            ("type", "type"),
            ("action", "action"),
            ("eventTime", "eventTime"),
            ("series", "series"),
            ("reportingComponent", "reportingController"),
            ("reportingInstance", "reportingInstance"),
            ("source", "deprecatedSource"),
            ("firstTimestamp", "deprecatedFirstTimestamp"),
            ("lastTimestamp", "deprecatedLastTimestamp"),
            ("count", "deprecatedCount"),
        ],
    );
    if !m.contains_key("involvedObject") {
        m.insert("involvedObject".into(), json!({}));
    }
    Value::Object(m)
}

/// A `core/v1` Event as `events.k8s.io/v1` shows it.
pub(crate) fn to_events_api(ev: &Value) -> Value {
    let mut m = Map::new();
    m.insert("apiVersion".into(), "events.k8s.io/v1".into());
    m.insert("kind".into(), "Event".into());
    copy(
        &mut m,
        ev,
        &[
            ("metadata", "metadata"),
            ("regarding", "involvedObject"),
            ("related", "related"),
            ("reason", "reason"),
            ("note", "message"),
            ("type", "type"),
            ("action", "action"),
            ("eventTime", "eventTime"),
            ("series", "series"),
            ("reportingController", "reportingComponent"),
            ("reportingInstance", "reportingInstance"),
            ("deprecatedSource", "source"),
            ("deprecatedFirstTimestamp", "firstTimestamp"),
            ("deprecatedLastTimestamp", "lastTimestamp"),
            ("deprecatedCount", "count"),
        ],
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_convert_both_ways() {
        let ev = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns"},
            "regarding": {"kind": "Service", "name": "web", "namespace": "ns"},
            "reason": "IPAllocated", "note": "Assigned IP", "type": "Normal",
            "action": "Allocate", "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "onehop.io/controller", "reportingInstance": "c-1",
        });
        let core = to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "Assigned IP");
        assert_eq!(core["reportingComponent"], "onehop.io/controller");
        assert_eq!(to_events_api(&core), ev);
    }
}
