//! The four PATCH flavours, reduced to what a test API server needs.
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch, exact.
//! - `application/json-patch+json`: RFC 6902 JSON patch, exact.
//! - `application/strategic-merge-patch+json`: treated as a JSON merge patch. A real API server
//!   merges lists of objects by their patch merge key (containers by `name`, ports by `port`)
//!   and honours `$patch`/`$retainKeys` directives; here every list in the patch replaces the
//!   list in the object, and directives are ordinary keys.
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

/// Applies a merge, strategic (as merge) or JSON patch to `doc`.
pub fn patch(kind: PatchKind, doc: &mut Value, body: &[u8]) -> Result<(), String> {
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
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
        patch(PatchKind::Merge, &mut d, br#"{"a": null, "b": {"d": [3]}}"#).unwrap();
        assert_eq!(d, json!({"b": {"c": 2, "d": [3]}}));
        patch(
            PatchKind::Json,
            &mut d,
            br#"[{"op": "add", "path": "/b/d/-", "value": 4}]"#,
        )
        .unwrap();
        assert_eq!(d, json!({"b": {"c": 2, "d": [3, 4]}}));
        assert!(
            patch(
                PatchKind::Json,
                &mut d,
                br#"[{"op": "test", "path": "/b/c", "value": 9}]"#
            )
            .is_err()
        );
        assert!(patch(PatchKind::Merge, &mut d, b"[1]").is_err());
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
