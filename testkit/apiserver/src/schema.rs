//! What a real API server does with a custom resource's body against its CRD's structural
//! schema (`openAPIV3Schema`), in the same order: prune unknown fields (reporting them, so
//! `fieldValidation=Strict` can refuse them), drop `null`s where the schema does not allow
//! them, apply `default`s, then validate.
//!
//! Validated: `type` (with `nullable`, `x-kubernetes-int-or-string`), `required`, `enum`,
//! `format` (`int32`, `int64`, `date-time`, `ipv4`, `ipv6`, `cidr`), `minimum`/`maximum`,
//! `minLength`/`maxLength`, `minItems`/`maxItems`, `additionalProperties`, `items`,
//! `x-kubernetes-preserve-unknown-fields`. Not validated (accepted as if absent): `pattern`,
//! `multipleOf`, `uniqueItems`, `allOf`/`anyOf`/`oneOf`/`not`, `x-kubernetes-validations`
//! (CEL) and `x-kubernetes-list-type` uniqueness. onehop's CRDs use none of those.

use serde_json::{Map, Value};

/// One field error, as `metav1.StatusCause` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueTypeInvalid`,
    /// `FieldValueNotSupported`.
    pub reason: &'static str,
    /// `spec.addresses`, `spec.ports[0].port`.
    pub field: String,
    /// What follows the field in the server's message: `Required value`,
    /// `Invalid value: "x": spec.a in body must be of type boolean: "string"`.
    pub message: String,
}

impl FieldError {
    /// `spec.addresses: Required value`: one entry of an Invalid status's message.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves_unknown(s: &Value) -> bool {
    s["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

fn nullable(s: &Value) -> bool {
    s["nullable"] == Value::Bool(true)
}

/// Removes fields the schema does not declare (apart from `apiVersion`, `kind` and
/// `metadata` at the root, which every object has) and `null`s of non-nullable fields.
/// Returns the paths of the unknown fields removed, as `fieldValidation` reports them.
pub(crate) fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(m) = obj.as_object_mut() {
        let props = schema["properties"].as_object();
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(ps) => prune_value(m, &k, ps, &k, &mut unknown),
                None if preserves_unknown(schema) => {}
                None => {
                    m.remove(&k);
                    unknown.push(k);
                }
            }
        }
    }
    unknown
}

/// Prunes the field `key` of `parent` against its schema `s`.
fn prune_value(
    parent: &mut Map<String, Value>,
    key: &str,
    s: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    if parent.get(key).is_some_and(Value::is_null) && !nullable(s) {
        parent.remove(key);
        return;
    }
    if let Some(v) = parent.get_mut(key) {
        prune_in(v, s, path, unknown);
    }
}

fn prune_in(v: &mut Value, s: &Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = s["properties"].as_object();
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = child(path, &k);
                match (props.and_then(|ps| ps.get(&k)), additional) {
                    (Some(ks), _) | (None, Some(ks)) => prune_value(m, &k, ks, &p, unknown),
                    (None, None) if preserves_unknown(s) || s["additionalProperties"] == true => {}
                    (None, None) => {
                        m.remove(&k);
                        unknown.push(p);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_in(item, is, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `default`s of absent fields, wherever their parent object exists.
pub(crate) fn apply_defaults(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s["properties"].as_object() {
                for (k, ps) in props {
                    if !m.contains_key(k)
                        && let Some(d) = ps.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
                for (k, ps) in props {
                    if let Some(cv) = m.get_mut(k) {
                        apply_defaults(cv, ps);
                    }
                }
            }
            if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, cv) in m.iter_mut() {
                    if s["properties"].get(k).is_none() {
                        apply_defaults(cv, a);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for item in items {
                    apply_defaults(item, is);
                }
            }
        }
        _ => {}
    }
}

/// How the server quotes a value in a field error: strings quoted, the rest as JSON.
fn quoted(v: &Value) -> String {
    v.to_string()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        // JSON has one number type: 2.0 is an integer, 2.5 is not.
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn format_ok(v: &Value, format: &str) -> bool {
    let Some(s) = v.as_str() else {
        return match format {
            "int32" => v.as_i64().is_none_or(|n| i32::try_from(n).is_ok()),
            _ => true,
        };
    };
    match format {
        "date-time" => is_rfc3339(s),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, len)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        }),
        _ => true,
    }
}

/// `2006-01-02T15:04:05Z`, with optional fraction and a `Z` or `±hh:mm` offset.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// Validates `v` (at `path`) against `s`, appending what is wrong.
#[expect(
    clippy::too_many_lines,
    reason = "one check after the other, in the server's order"
)]
pub(crate) fn validate(v: &Value, s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    let invalid = |reason: &'static str, msg: String| FieldError {
        reason,
        field: shown.to_owned(),
        message: msg,
    };
    if v.is_null() {
        if !nullable(s) && s.get("type").is_some() {
            errs.push(invalid(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"null\": {shown} in body must be of type {}: \"null\"",
                    s["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if s["x-kubernetes-int-or-string"] == true {
        if !(v.is_string() || type_matches(v, "integer")) {
            errs.push(invalid(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{}\": {shown} in body must be of type integer,string: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
            ));
        }
        return;
    }
    if let Some(ty) = s["type"].as_str()
        && !type_matches(v, ty)
    {
        errs.push(invalid(
            "FieldValueTypeInvalid",
            format!(
                "Invalid value: \"{}\": {shown} in body must be of type {ty}: \"{}\"",
                type_name(v),
                type_name(v)
            ),
        ));
        // Nothing below the type is meaningful for a value of another type.
        return;
    }
    if let Some(options) = s["enum"].as_array()
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(quoted).collect();
        errs.push(invalid(
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                quoted(v),
                supported.join(", ")
            ),
        ));
    }
    if let Some(f) = s["format"].as_str()
        && !format_ok(v, f)
    {
        errs.push(invalid(
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: {shown} in body must be of type {f}: {}",
                quoted(v),
                quoted(v)
            ),
        ));
    }
    bounds(v, s, shown, errs);
    match v {
        Value::Object(m) => {
            for r in s["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !m.contains_key(r)
                {
                    errs.push(FieldError {
                        reason: "FieldValueRequired",
                        field: child(path, r),
                        message: "Required value".into(),
                    });
                }
            }
            let props = s["properties"].as_object();
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, cv) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
                    validate(cv, cs, &child(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item, is, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

/// `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`, with the server's
/// wording.
fn bounds(v: &Value, s: &Value, shown: &str, errs: &mut Vec<FieldError>) {
    let mut push = |msg: String| {
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: shown.to_owned(),
            message: format!("Invalid value: {}: {msg}", quoted(v)),
        });
    };
    if let Some(n) = v.as_f64() {
        if let Some(min) = s["minimum"].as_f64()
            && n < min
        {
            push(format!(
                "{shown} in body should be greater than or equal to {}",
                s["minimum"]
            ));
        }
        if let Some(max) = s["maximum"].as_f64()
            && n > max
        {
            push(format!(
                "{shown} in body should be less than or equal to {}",
                s["maximum"]
            ));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s["minLength"].as_u64()
            && len < min
        {
            push(format!(
                "{shown} in body should be at least {min} chars long"
            ));
        }
        if let Some(max) = s["maxLength"].as_u64()
            && len > max
        {
            push(format!("{shown} in body may not be longer than {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        let len = items.len() as u64;
        if let Some(min) = s["minItems"].as_u64()
            && len < min
        {
            push(format!("{shown} in body should have at least {min} items"));
        }
        if let Some(max) = s["maxItems"].as_u64()
            && len > max
        {
            push(format!("{shown} in body should have at most {max} items"));
        }
    }
}

/// What makes a CRD's schemas non-structural, which the API server refuses: a schema node
/// without `type` (unless it preserves unknown fields or is int-or-string), a root that is
/// not an object, `properties` beside `additionalProperties`, and root `metadata` saying
/// more than `name` and `generateName`.
pub(crate) fn crd_errors(crd: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, v) in crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(s) = v["schema"].get("openAPIV3Schema") else {
            continue;
        };
        let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
        if s.get("type").is_some_and(|t| t != "object") {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                field: format!("{path}.type"),
                message: format!("Invalid value: {}: must be object at the root", s["type"]),
            });
        }
        let meta_fields = s["properties"]["metadata"]["properties"].as_object();
        if meta_fields.is_some_and(|p| p.keys().any(|k| k != "name" && k != "generateName")) {
            errs.push(FieldError {
                reason: "FieldValueForbidden",
                field: format!("{path}.properties[metadata]"),
                message: "Forbidden: must not specify anything other than name and \
                          generateName, but metadata is implicitly specified"
                    .into(),
            });
        }
        structural(s, &path, "object fields", &mut errs);
    }
    errs
}

fn structural(s: &Value, path: &str, what: &str, errs: &mut Vec<FieldError>) {
    let typeless = s
        .get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty));
    if typeless && !preserves_unknown(s) && s["x-kubernetes-int-or-string"] != true {
        errs.push(FieldError {
            reason: "FieldValueRequired",
            field: format!("{path}.type"),
            message: format!("Required value: must not be empty for specified {what}"),
        });
    }
    if s["properties"].is_object() && s["additionalProperties"].is_object() {
        errs.push(FieldError {
            reason: "FieldValueForbidden",
            field: format!("{path}.additionalProperties"),
            message: "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        });
    }
    for (k, ps) in s["properties"].as_object().into_iter().flatten() {
        structural(
            ps,
            &format!("{path}.properties[{k}]"),
            "object fields",
            errs,
        );
    }
    if let Some(is) = s.get("items").filter(|i| i.is_object()) {
        structural(is, &format!("{path}.items"), "array items", errs);
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        structural(
            a,
            &format!("{path}.additionalProperties"),
            "object fields",
            errs,
        );
    }
}

/// What is wrong with an object's name, by the rule Kubernetes applies to its kind:
/// Services a DNS-1035 label, Namespaces an RFC 1123 label, RBAC objects a path segment
/// (checked by every write), everything else an RFC 1123 subdomain.
pub(crate) fn name_error(group: &str, kind: &str, name: &str) -> Option<FieldError> {
    let label_ok = |l: &str, first_alpha: bool| {
        let b = l.as_bytes();
        let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
        !b.is_empty()
            && b.iter().all(ok_char)
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && (!first_alpha || b[0].is_ascii_lowercase())
    };
    let (ok, max, rule) = match (group, kind) {
        ("", "Service") => (
            label_ok(name, true),
            63,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (e.g. \
             'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        ),
        ("", "Namespace") => (
            label_ok(name, false),
            63,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
             '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ),
        ("rbac.authorization.k8s.io", _) => return None,
        _ => (
            name.split('.').all(|l| label_ok(l, false)),
            253,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
    };
    let message = if name.len() > max {
        format!("must be no more than {max} characters")
    } else if !ok {
        rule.to_owned()
    } else {
        return None;
    };
    Some(FieldError {
        reason: "FieldValueInvalid",
        field: "metadata.name".into(),
        message: format!("Invalid value: {}: {message}", Value::from(name)),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["addresses"],
                    "properties": {
                        "addresses": {"type": "array", "items": {"type": "string"}},
                        "autoAssign": {"type": "boolean", "default": true, "nullable": true},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "n": {"type": "integer", "format": "int32", "minimum": 1},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                },
                "status": {"type": "object", "properties": {
                    "t": {"type": "string", "format": "date-time"},
                }},
            },
        })
    }

    fn check(mut v: Value) -> (Value, Vec<String>, Vec<String>) {
        let unknown = prune(&mut v, &schema());
        apply_defaults(&mut v, &schema());
        let mut errs = Vec::new();
        validate(&v, &schema(), "", &mut errs);
        // The order follows the JSON maps' (a build may preserve insertion order).
        let mut errs: Vec<String> = errs.iter().map(FieldError::render).collect();
        errs.sort();
        (v, unknown, errs)
    }

    #[test]
    fn prunes_unknown_fields_and_reports_them() {
        let (v, unknown, errs) = check(json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "whatever": 1},
            "spec": {"addresses": ["10.0.0.0/24"], "bogus": 1, "labels": {"k": "v"},
                     "free": {"anything": {"goes": true}}},
            "extra": {},
        }));
        assert!(errs.is_empty(), "{errs:?}");
        let mut unknown = unknown;
        unknown.sort();
        assert_eq!(unknown, ["extra", "spec.bogus"]);
        assert_eq!(v["metadata"]["whatever"], 1, "metadata is not the schema's");
        assert_eq!(v["spec"]["free"]["anything"]["goes"], true);
        assert_eq!(v["spec"]["autoAssign"], true, "defaulted");
        assert!(v["spec"].get("bogus").is_none());
    }

    #[test]
    fn nulls_of_non_nullable_fields_are_dropped_then_defaulted() {
        let (v, _, errs) = check(json!({"spec": {"addresses": null, "autoAssign": null}}));
        assert_eq!(v["spec"]["autoAssign"], Value::Null, "nullable: kept");
        assert_eq!(errs, ["spec.addresses: Required value"]);
    }

    #[test]
    fn reports_what_a_real_server_reports() {
        let (_, _, errs) = check(json!({
            "spec": {"addresses": "10.0.0.1", "autoAssign": "yes", "mode": "c",
                     "labels": {"k": 1}, "n": 0},
            "status": {"t": "yesterday"},
        }));
        assert_eq!(
            errs,
            [
                "spec.addresses: Invalid value: \"string\": spec.addresses in body must be of \
                 type array: \"string\"",
                "spec.autoAssign: Invalid value: \"string\": spec.autoAssign in body must be of \
                 type boolean: \"string\"",
                "spec.labels.k: Invalid value: \"integer\": spec.labels.k in body must be of \
                 type string: \"integer\"",
                "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
                "spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1",
                "status.t: Invalid value: \"yesterday\": status.t in body must be of type \
                 date-time: \"yesterday\"",
            ]
        );
        let (_, _, errs) = check(json!({}));
        assert_eq!(errs, ["spec: Required value"]);
    }

    #[test]
    fn non_structural_crds() {
        let crd = |schema: Value| json!({"spec": {"versions": [{"schema": {"openAPIV3Schema": schema}}]}});
        assert!(crd_errors(&crd(schema())).is_empty());
        let bad = crd(json!({"type": "object", "properties": {
            "spec": {"properties": {"a": {"type": "string"}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "m": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
        }}));
        let mut got: Vec<String> = crd_errors(&bad).iter().map(FieldError::render).collect();
        got.sort();
        let p = "spec.versions[0].schema.openAPIV3Schema";
        assert_eq!(
            got,
            [
                format!(
                    "{p}.properties[m].additionalProperties: Forbidden: additionalProperties and \
                     properties are mutual exclusive"
                ),
                format!(
                    "{p}.properties[metadata]: Forbidden: must not specify anything other than \
                     name and generateName, but metadata is implicitly specified"
                ),
                format!(
                    "{p}.properties[spec].type: Required value: must not be empty for specified \
                     object fields"
                ),
            ]
        );
    }

    #[test]
    fn names_by_kind() {
        assert!(name_error("", "Service", "web-1").is_none());
        assert!(
            name_error("", "Service", "1web").is_some(),
            "DNS-1035: a letter first"
        );
        assert!(name_error("", "Namespace", "1ns").is_none());
        assert!(name_error("", "Namespace", "a.b").is_some());
        assert!(name_error("onehop.io", "IPAddressPool", "lan.v4").is_none());
        let e = name_error("onehop.io", "IPAddressPool", "Lan_1").unwrap();
        assert_eq!(e.field, "metadata.name");
        assert!(
            e.message
                .starts_with("Invalid value: \"Lan_1\": a lowercase RFC 1123 subdomain")
        );
        assert!(name_error("", "Node", &"a".repeat(254)).is_some());
        assert!(name_error("rbac.authorization.k8s.io", "Role", "system:x").is_none());
    }

    #[test]
    fn rfc3339() {
        assert!(is_rfc3339("2024-01-02T03:04:05Z"));
        assert!(is_rfc3339("2024-01-02T03:04:05.123+02:00"));
        assert!(!is_rfc3339("2024-01-02 03:04:05Z"));
        assert!(!is_rfc3339("2024-01-02T03:04:05"));
    }
}
