//! Decoding of built-in kinds as a real API server decodes them into its Go types: a field
//! the type does not have is dropped (and reported, for `fieldValidation`), a value of the
//! wrong JSON type is refused. The types are k8s-openapi's, which mirror the Go ones; a body
//! is decoded, encoded again, and what did not survive the round trip is what the type lacks.

use k8s_openapi::{
    api::{
        apps::v1 as apps, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, rbac::v1 as rbac,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Removes from `obj` the fields its kind does not have and returns their paths
/// (`spec.ports[0].bogus`); an error says why the body cannot be decoded at all. A kind
/// this server has no type for is left as it is.
pub(crate) fn unknown_fields(
    group: &str,
    kind: &str,
    obj: &mut Value,
) -> Result<Vec<String>, String> {
    match (group, kind) {
        ("", "Namespace") => round_trip::<core::Namespace>(obj),
        ("", "Node") => round_trip::<core::Node>(obj),
        ("", "Service") => round_trip::<core::Service>(obj),
        ("", "Endpoints") => round_trip::<core::Endpoints>(obj),
        ("", "Pod") => round_trip::<core::Pod>(obj),
        ("", "ConfigMap") => round_trip::<core::ConfigMap>(obj),
        ("", "Secret") => round_trip::<core::Secret>(obj),
        ("", "Event") => round_trip::<core::Event>(obj),
        ("", "ServiceAccount") => round_trip::<core::ServiceAccount>(obj),
        ("discovery.k8s.io", "EndpointSlice") => round_trip::<discovery::EndpointSlice>(obj),
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::Lease>(obj),
        ("events.k8s.io", "Event") => round_trip::<events::Event>(obj),
        ("apps", "Deployment") => round_trip::<apps::Deployment>(obj),
        ("apps", "DaemonSet") => round_trip::<apps::DaemonSet>(obj),
        ("rbac.authorization.k8s.io", "Role") => round_trip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => round_trip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => round_trip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            round_trip::<rbac::ClusterRoleBinding>(obj)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            round_trip::<apiextensions::CustomResourceDefinition>(obj)
        }
        _ => Ok(Vec::new()),
    }
}

/// The defaults the API server fills into a Service and an EndpointSlice (the kinds onehop
/// reads ports and policies from) when a write leaves them out. Not done: a Service's
/// cluster IP, node ports and IP families, which a real server allocates.
pub(crate) fn apply_defaults(group: &str, kind: &str, obj: &mut Value) {
    let set = |m: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
        m.entry(k.to_owned()).or_insert(v);
    };
    match (group, kind) {
        ("", "Service") => {
            let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            set(spec, "type", "ClusterIP".into());
            set(spec, "sessionAffinity", "None".into());
            set(spec, "internalTrafficPolicy", "Cluster".into());
            if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer")) {
                set(spec, "externalTrafficPolicy", "Cluster".into());
            }
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                set(p, "protocol", "TCP".into());
                if let Some(port) = p.get("port").cloned() {
                    set(p, "targetPort", port);
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in obj
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                set(p, "protocol", "TCP".into());
            }
        }
        _ => {}
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: &mut Value) -> Result<Vec<String>, String> {
    let typed: T = match serde_json::from_value(obj.clone()) {
        Ok(t) => t,
        // k8s-openapi requires fields Go's decoder lets default (the server's validation
        // then judges them); such a body is not refused here, only left unpruned.
        Err(e) if e.to_string().starts_with("missing field") => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let back = serde_json::to_value(&typed).map_err(|e| format!("encoding: {e}"))?;
    let mut unknown = Vec::new();
    drop_missing(obj, &back, "", &mut unknown);
    Ok(unknown)
}

/// Removes from `orig` what `back` (its round trip) lacks; `null`s and empty values are not
/// fields the type lacks (an unset optional field encodes as nothing).
fn drop_missing(orig: &mut Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(&k) {
                    Some(bv) => {
                        if let Some(ov) = o.get_mut(&k) {
                            drop_missing(ov, bv, &p, out);
                        }
                    }
                    None if o.get(&k).is_some_and(is_empty) => {}
                    None => {
                        o.remove(&k);
                        out.push(p);
                    }
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter_mut().zip(b).enumerate() {
                drop_missing(ov, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn drops_and_reports_fields_the_kind_lacks() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "creationTimestamp": null, "bogus": 1},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "prot": "TCP"}]},
        });
        let mut unknown = unknown_fields("", "Service", &mut svc).unwrap();
        unknown.sort();
        assert_eq!(unknown, ["metadata.bogus", "spec.ports[0].prot"]);
        assert_eq!(svc["spec"]["ports"], json!([{"port": 80}]));
        assert!(svc["metadata"].get("creationTimestamp").is_some());
    }

    #[test]
    fn refuses_wrong_types() {
        let mut svc = json!({"spec": {"ports": [{"port": "eighty"}]}});
        assert!(unknown_fields("", "Service", &mut svc).is_err());
        let mut other = json!({"anything": 1});
        assert_eq!(
            unknown_fields("x", "Y", &mut other).unwrap(),
            Vec::<String>::new()
        );
    }
}
