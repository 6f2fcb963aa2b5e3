//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), as the
//! API server evaluates them. Used for pool `serviceSelectors` and
//! `namespaceSelectors` and advertisement `nodeSelectors`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches
/// everything; an unknown operator is an error (the object is invalid).
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(format!("unknown selector operator {other:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether any of `selectors` matches (an empty list matches everything).
pub fn any_matches(
    selectors: &[LabelSelector],
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if selectors.is_empty() {
        return Ok(true);
    }
    for s in selectors {
        if matches(s, labels)? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).expect("selector")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&sel(json!({})), &l).unwrap());
        assert!(matches(&sel(json!({ "matchLabels": { "app": "web" } })), &l).unwrap());
        assert!(!matches(&sel(json!({ "matchLabels": { "app": "db" } })), &l).unwrap());
        let expr = |op: &str, values: serde_json::Value| {
            sel(
                json!({ "matchExpressions": [{ "key": "tier", "operator": op, "values": values }] }),
            )
        };
        assert!(matches(&expr("In", json!(["front", "x"])), &l).unwrap());
        assert!(!matches(&expr("In", json!(["back"])), &l).unwrap());
        assert!(matches(&expr("NotIn", json!(["back"])), &l).unwrap());
        assert!(!matches(&expr("NotIn", json!(["front"])), &l).unwrap());
        assert!(matches(&expr("Exists", json!(null)), &l).unwrap());
        assert!(!matches(&expr("DoesNotExist", json!(null)), &l).unwrap());
        assert!(
            matches(&expr("NotIn", json!(["a"])), &labels(&[])).unwrap(),
            "NotIn matches a missing key"
        );
        assert!(matches(&expr("Bogus", json!([])), &l).is_err());
    }

    #[test]
    fn any_of_a_list() {
        let l = labels(&[("zone", "a")]);
        assert!(any_matches(&[], &l).unwrap());
        let a = sel(json!({ "matchLabels": { "zone": "b" } }));
        let b = sel(json!({ "matchLabels": { "zone": "a" } }));
        assert!(!any_matches(std::slice::from_ref(&a), &l).unwrap());
        assert!(any_matches(&[a, b], &l).unwrap());
    }
}
