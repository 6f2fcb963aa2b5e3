//! The four PATCH flavours, reduced to what a test API server needs.
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch, exact.
//! - `application/json-patch+json`: RFC 6902 JSON patch, exact.
//! - `application/strategic-merge-patch+json` on built-in kinds: a merge patch whose lists
//!   merge by their patch merge key where the Kubernetes types declare one (Service ports by
//!   `port`, conditions by `type`, containers by `name`, `finalizers` as a set, ...; see
//!   [`list_strategy`]), with the `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//!   `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` directives. Lists the
//!   types declare atomic are replaced. Custom resources refuse it (415), as in Kubernetes.
//! - `application/apply-patch+yaml` (server-side apply): see [`apply`].

use serde_json::{Map, Value};

/// A PATCH body's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// From a `Content-Type` header value (parameters such as `charset` are ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies a merge, strategic or JSON patch to `doc`, an object of the kind `type_kind` of
/// the API group `group` (which says how a strategic patch merges lists).
pub fn patch(
    kind: PatchKind,
    doc: &mut Value,
    body: &[u8],
    group: &str,
    type_kind: &str,
) -> Result<(), String> {
    match kind {
        PatchKind::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| format!("invalid strategic merge patch: {e}"))?;
            if !p.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            strategic_merge(
                doc,
                &p,
                &Kinded {
                    group,
                    kind: type_kind,
                },
                &mut Vec::new(),
            )
        }
        PatchKind::Merge => {
            let p: Value =
                serde_json::from_slice(body).map_err(|e| format!("invalid merge patch: {e}"))?;
            if !p.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(doc, &p);
            Ok(())
        }
        PatchKind::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(body).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(doc, &p).map_err(|e| format!("JSON patch failed: {e}"))
        }
        PatchKind::Apply => Err("apply patches go through `apply`".into()),
    }
}

/// How a strategic merge patch treats a list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (atomic lists, and every list the types say nothing about).
    Replace,
    /// Maps merged by this key: an entry with the same key is patched, others appended.
    MergeByKey(&'static str),
    /// Primitive values merged as a set.
    MergeSet,
}

struct Kinded<'a> {
    group: &'a str,
    kind: &'a str,
}

/// Where a pod spec sits in objects of a kind that has one.
fn pod_spec_prefix(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("apps", "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet") => {
            Some(&["spec", "template", "spec"])
        }
        _ => None,
    }
}

/// The strategy of the list at `path` (field names, no indices) in an object of `kind`
/// of `group`: the `patchStrategy`/`patchMergeKey` tags of the Kubernetes Go types, for
/// the kinds onehop and its install manifests use.
pub fn list_strategy(group: &str, kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, MergeSet, Replace};
    match path {
        ["metadata", "finalizers"] => return MergeSet,
        ["metadata", "ownerReferences"] => return MergeByKey("uid"),
        ["status", "conditions"] => return MergeByKey("type"),
        _ => {}
    }
    if let Some(prefix) = pod_spec_prefix(group, kind)
        && let Some(rest) = path.strip_prefix(prefix)
    {
        const CONTAINERS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
        return match rest {
            [list]
                if CONTAINERS.contains(list) || ["volumes", "imagePullSecrets"].contains(list) =>
            {
                MergeByKey("name")
            }
            [list, field] if CONTAINERS.contains(list) => match *field {
                "env" => MergeByKey("name"),
                "ports" => MergeByKey("containerPort"),
                "volumeMounts" => MergeByKey("mountPath"),
                "volumeDevices" => MergeByKey("devicePath"),
                _ => Replace,
            },
            ["hostAliases"] => MergeByKey("ip"),
            _ => Replace,
        };
    }
    match (group, kind, path) {
        ("", "Service", ["spec", "ports"]) => MergeByKey("port"),
        ("", "Node", ["status", "addresses"]) => MergeByKey("type"),
        ("", "Node", ["spec", "podCIDRs"]) => MergeSet,
        ("", "Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        _ => Replace,
    }
}

/// A strategic merge patch `patch` onto `doc` at `path` (field names from the root).
fn strategic_merge(
    doc: &mut Value,
    change: &Value,
    k: &Kinded<'_>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    let Some(pm) = change.as_object() else {
        *doc = change.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            *doc = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(dm) = doc.as_object_mut() else {
        return Ok(());
    };
    // Lists' element orders, applied after their merges.
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (key, pv) in pm {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            if let Some(order) = pv.as_array() {
                orders.push((field.to_owned(), order));
            }
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = dm.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            dm.remove(key);
            continue;
        }
        path.push(key.clone());
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let strategy = list_strategy(k.group, k.kind, &names);
        match (pv, dm.get_mut(key)) {
            (Value::Array(items), Some(Value::Array(live))) => {
                merge_list(live, items, strategy, k, path)?;
            }
            (Value::Array(items), _) => {
                let mut fresh = Vec::new();
                merge_list(&mut fresh, items, strategy, k, path)?;
                dm.insert(key.clone(), Value::Array(fresh));
            }
            (Value::Object(_), Some(live)) if live.is_object() => {
                strategic_merge(live, pv, k, path)?;
                if live.is_null() {
                    dm.remove(key);
                }
            }
            (Value::Object(_), _) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, pv, k, path)?;
                if !fresh.is_null() {
                    dm.insert(key.clone(), fresh);
                }
            }
            (v, _) => {
                dm.insert(key.clone(), v.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field.clone());
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let strategy = list_strategy(k.group, k.kind, &names);
        path.pop();
        if let Some(Value::Array(list)) = dm.get_mut(&field) {
            reorder(list, order, strategy);
        }
    }
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        dm.retain(|key, _| keep.iter().any(|r| r.as_str() == Some(key)));
    }
    Ok(())
}

/// The merge key's value of a list element, if it is a map that has one.
fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    live: &mut Vec<Value>,
    items: &[Value],
    strategy: ListStrategy,
    k: &Kinded<'_>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match strategy {
        ListStrategy::Replace => {
            *live = items.to_vec();
        }
        ListStrategy::MergeSet => {
            for v in items {
                if !live.contains(v) {
                    live.push(v.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            if items
                .iter()
                .any(|i| key_of(i, "$patch").and_then(Value::as_str) == Some("replace"))
            {
                *live = items
                    .iter()
                    .filter(|i| key_of(i, "$patch").is_none())
                    .cloned()
                    .collect();
                return Ok(());
            }
            for item in items {
                let Some(id) = key_of(item, key) else {
                    return Err(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    ));
                };
                let at = live.iter().position(|l| key_of(l, key) == Some(id));
                if key_of(item, "$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = at {
                        live.remove(i);
                    }
                    continue;
                }
                if let Some(i) = at {
                    strategic_merge(&mut live[i], item, k, path)?;
                } else {
                    let mut fresh = Value::Object(Map::new());
                    strategic_merge(&mut fresh, item, k, path)?;
                    live.push(fresh);
                }
            }
        }
    }
    Ok(())
}

/// Orders `list` as `order` lists its elements (by merge key, or by value for sets);
/// elements `order` does not name keep their relative order, after the named ones.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let id = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(key) => key_of(v, key).cloned(),
            ListStrategy::MergeSet => Some(v.clone()),
            ListStrategy::Replace => None,
        }
    };
    if strategy == ListStrategy::Replace {
        return;
    }
    let wanted: Vec<Value> = order.iter().filter_map(id).collect();
    let rank = |v: &Value| {
        id(v)
            .and_then(|i| wanted.iter().position(|w| *w == i))
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

/// Parses a server-side apply body: YAML, of which JSON is a subset.
pub fn parse_apply(body: &[u8]) -> Result<Value, String> {
    let v: Value = if let Ok(v) = serde_json::from_slice(body) {
        v
    } else {
        let s = std::str::from_utf8(body).map_err(|e| format!("apply body: {e}"))?;
        serde_saphyr::from_str(s).map_err(|e| format!("invalid apply YAML: {e}"))?
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err("an apply configuration must be an object".into())
    }
}

/// Server-side apply of `config` by one field manager onto `live`.
///
/// What is implemented is a three-way merge per manager, like client-side `kubectl apply`:
/// fields this manager set in its previous configuration (`previous`) and left out of this
/// one are removed from the object, then `config` is merged in (maps recursively, `null`
/// removes a field). What a real API server does beyond that is not: there is no
/// `managedFields` bookkeeping, so no conflicts between managers (`force` is accepted and
/// changes nothing) and a field set by two managers is removed when either one drops it;
/// every list is atomic (replaced whole) — no `listType=map`/`set` merging, so two managers
/// applying different entries of one list overwrite each other.
pub fn apply(live: &mut Value, previous: Option<&Value>, config: &Value) {
    if let Some(prev) = previous {
        remove_dropped(live, prev, config);
    }
    json_patch::merge(live, config);
}

/// Removes from `live` the map keys present in `prev` and absent from `new`, recursively
/// through maps present in both.
fn remove_dropped(live: &mut Value, prev: &Value, new: &Value) {
    let (Some(live), Some(prev)) = (live.as_object_mut(), prev.as_object()) else {
        return;
    };
    let empty = Map::new();
    let new = new.as_object().unwrap_or(&empty);
    for (k, pv) in prev {
        match new.get(k) {
            None => {
                live.remove(k);
            }
            Some(nv) if pv.is_object() && nv.is_object() => {
                if let Some(lv) = live.get_mut(k) {
                    remove_dropped(lv, pv, nv);
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_and_json_patch() {
        let mut d = json!({"a": 1, "b": {"c": 2, "d": [1, 2]}});
        patch(
            PatchKind::Merge,
            &mut d,
            br#"{"a": null, "b": {"d": [3]}}"#,
            "",
            "X",
        )
        .unwrap();
        assert_eq!(d, json!({"b": {"c": 2, "d": [3]}}));
        patch(
            PatchKind::Json,
            &mut d,
            br#"[{"op": "add", "path": "/b/d/-", "value": 4}]"#,
            "",
            "X",
        )
        .unwrap();
        assert_eq!(d, json!({"b": {"c": 2, "d": [3, 4]}}));
        assert!(
            patch(
                PatchKind::Json,
                &mut d,
                br#"[{"op": "test", "path": "/b/c", "value": 9}]"#,
                "",
                "X"
            )
            .is_err()
        );
        assert!(patch(PatchKind::Merge, &mut d, b"[1]", "", "X").is_err());
    }

    fn smp(doc: &mut Value, kind: &str, p: &Value) {
        patch(
            PatchKind::Strategic,
            doc,
            p.to_string().as_bytes(),
            "",
            kind,
        )
        .unwrap();
    }

    #[test]
    fn strategic_merge_merges_lists_by_key() {
        let mut svc = json!({
            "metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
            "spec": {"ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53}],
                     "ipFamilies": ["IPv4"]},
        });
        // What `kubectl apply` sends after a port changed and one was added.
        smp(
            &mut svc,
            "Service",
            &json!({
                "metadata": {"finalizers": ["b"], "labels": {"x": null, "y": "2"}},
                "spec": {
                    "$setElementOrder/ports": [{"port": 443}, {"port": 80}, {"port": 53}],
                    "ports": [{"port": 80, "targetPort": 8080}, {"name": "https", "port": 443}],
                    "ipFamilies": ["IPv6"],
                },
            }),
        );
        assert_eq!(
            svc["metadata"],
            json!({"finalizers": ["a", "b"], "labels": {"y": "2"}})
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "https", "port": 443},
                   {"name": "http", "port": 80, "targetPort": 8080},
                   {"name": "dns", "port": 53}])
        );
        assert_eq!(
            svc["spec"]["ipFamilies"],
            json!(["IPv6"]),
            "atomic lists are replaced"
        );
        smp(
            &mut svc,
            "Service",
            &json!({
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
                "spec": {"ports": [{"$patch": "delete", "port": 53}]},
            }),
        );
        assert_eq!(svc["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 2);
        smp(
            &mut svc,
            "Service",
            &json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}}),
        );
        assert_eq!(svc["spec"]["ports"], json!([{"port": 1}]));
        smp(
            &mut svc,
            "Service",
            &json!({"spec": {"$retainKeys": ["ports"], "ipFamilies": null}}),
        );
        assert_eq!(svc["spec"], json!({"ports": [{"port": 1}]}));
        let e = patch(
            PatchKind::Strategic,
            &mut svc,
            br#"{"spec": {"ports": [{"name": "x"}]}}"#,
            "",
            "Service",
        );
        assert!(e.is_err(), "an entry without its merge key is refused");
    }

    #[test]
    fn strategic_merge_of_node_conditions_and_pod_templates() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]}});
        smp(
            &mut node,
            "Node",
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(node["status"]["conditions"][0]["status"], "False");
        assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
        let mut ds = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "image": "a:1", "env": [{"name": "A", "value": "1"}]}]}}}});
        patch(
            PatchKind::Strategic,
            &mut ds,
            br#"{"spec": {"template": {"spec": {"containers": [
                {"name": "agent", "env": [{"name": "B", "value": "2"}]}]}}}}"#,
            "apps",
            "DaemonSet",
        )
        .unwrap();
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "a:1");
        assert_eq!(c["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn apply_removes_what_the_manager_dropped() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}});
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let second = json!({"metadata": {"labels": {"a": "3"}}});
        apply(&mut live, Some(&first), &second);
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"a": "3", "other": "x"}}})
        );
    }

    #[test]
    fn apply_body_may_be_yaml() {
        let v = parse_apply(b"apiVersion: v1\nkind: ConfigMap\ndata:\n  k: v\n").unwrap();
        assert_eq!(v["data"]["k"], "v");
        assert!(parse_apply(b"- 1").is_err());
    }
}
