//! JSON helpers for building Kubernetes objects in tests.

use serde_json::Value;

/// Deep-merges `patch` into `base`: objects merge key by key, anything else
/// (arrays included) replaces — a JSON merge patch without deletions.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merges_objects_and_replaces_the_rest() {
        let mut v = json!({ "a": { "b": 1, "c": [1, 2] }, "d": 1 });
        merge(&mut v, json!({ "a": { "c": [], "e": 2 }, "d": "x" }));
        assert_eq!(v, json!({ "a": { "b": 1, "c": [], "e": 2 }, "d": "x" }));
    }
}
