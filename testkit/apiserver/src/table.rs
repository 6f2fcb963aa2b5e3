//! `meta.k8s.io/v1` Table responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`),
//! which `kubectl get` prints: a custom resource's columns come from its CRD's
//! `additionalPrinterColumns`, a built-in kind's are those of the Kubernetes printers for
//! the kinds onehop uses (Service, Node, Namespace, Event, EndpointSlice, Lease, Deployment,
//! `DaemonSet`); other kinds get the default `Name`, `Created At`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::store::{CrdVersion, ResourceDef};

/// Whether an `Accept` header asks for a Table (kubectl lists `as=Table` first, with JSON
/// as the fallback).
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

fn column(name: &str, ty: &str, priority: i64, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": description,
           "priority": priority})
}

fn name_column() -> Value {
    column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace. More info: \
         https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    )
}

fn age_column() -> Value {
    column(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object \
         was created.",
    )
}

/// A Table of `objects` of `rd`. `include` is the `includeObject` parameter: `None`,
/// `Metadata` (the default) or `Object`.
pub(crate) fn table(
    rd: &ResourceDef,
    crd: Option<&CrdVersion>,
    objects: &[Value],
    include: Option<&str>,
    resource_version: &str,
) -> Value {
    let (columns, cells): (Vec<Value>, Cells) = match crd {
        Some(crd) if !crd.printer_columns.is_empty() => crd_columns(crd),
        Some(_) => (
            vec![name_column(), age_column()],
            Box::new(|o: &Value| vec![name(o), age(o)]),
        ),
        None => builtin_columns(rd),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include {
                Some("None") => {}
                Some("Object") => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    });
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

fn crd_columns(crd: &CrdVersion) -> (Vec<Value>, Cells) {
    let mut columns = vec![name_column()];
    let mut paths = Vec::new();
    for c in &crd.printer_columns {
        let ty = c["type"].as_str().unwrap_or("string").to_owned();
        columns.push(json!({
            "name": c["name"], "type": if ty == "date" { "string" } else { ty.as_str() },
            "format": c["format"].as_str().unwrap_or_default(),
            "description": c["description"].as_str().unwrap_or_default(),
            "priority": c["priority"].as_i64().unwrap_or(0),
        }));
        paths.push((c["jsonPath"].as_str().unwrap_or_default().to_owned(), ty));
    }
    let cells = move |o: &Value| {
        let mut row = vec![name(o)];
        for (path, ty) in &paths {
            row.push(match json_path(o, path) {
                None | Some(Value::Null) => Value::Null,
                Some(v) => cell(v, ty),
            });
        }
        row
    };
    (columns, Box::new(cells))
}

/// A printer column's cell: strings as they are, other values of a `string` column as
/// JSON (as the server's `JSONPath` printer does), dates as ages.
fn cell(v: &Value, ty: &str) -> Value {
    match (ty, v) {
        ("date", Value::String(s)) => {
            parse_time(s).map_or("<invalid>".into(), |t| human_age(t).into())
        }
        ("string", Value::String(_)) => v.clone(),
        ("string", other) => other.to_string().into(),
        ("integer", Value::Number(n)) => n.as_i64().map_or_else(|| v.clone(), Value::from),
        _ => v.clone(),
    }
}

/// A simple `JSONPath` as CRDs' printer columns use: `.spec.a.b`, `.spec.list[0].x`.
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = o;
    for seg in path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        let (field, indices) = seg.split_once('[').map_or((seg, ""), |(f, r)| (f, r));
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
}

fn age(o: &Value) -> Value {
    o["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_time)
        .map_or(Value::from("<unknown>"), |t| human_age(t).into())
}

fn none_if_empty(s: String) -> Value {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

#[expect(clippy::too_many_lines, reason = "one printer per kind, side by side")]
fn builtin_columns(rd: &ResourceDef) -> (Vec<Value>, Cells) {
    let c = |n: &str, p: i64| column(n, "string", p, "");
    match (rd.group.as_str(), rd.kind.as_str()) {
        ("", "Service") => (
            vec![
                name_column(),
                c("Type", 0),
                c("Cluster-IP", 0),
                c("External-IP", 0),
                c("Port(s)", 0),
                age_column(),
                c("Selector", 1),
            ],
            Box::new(|o| {
                let spec = &o["spec"];
                vec![
                    name(o),
                    spec["type"].as_str().unwrap_or("ClusterIP").into(),
                    spec["clusterIP"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("<none>")
                        .into(),
                    external_ips(o),
                    none_if_empty(ports(spec)),
                    age(o),
                    none_if_empty(
                        spec["selector"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                ]
            }),
        ),
        ("", "Node") => (
            vec![
                name_column(),
                c("Status", 0),
                c("Roles", 0),
                age_column(),
                c("Version", 0),
                c("Internal-IP", 1),
                c("External-IP", 1),
            ],
            Box::new(|o| {
                let addr = |ty: &str| -> Value {
                    none_if_empty(
                        o["status"]["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|a| a["type"] == ty)
                            .filter_map(|a| a["address"].as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                };
                vec![
                    name(o),
                    node_status(o).into(),
                    none_if_empty(
                        o["metadata"]["labels"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    age(o),
                    o["status"]["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    addr("InternalIP"),
                    addr("ExternalIP"),
                ]
            }),
        ),
        ("", "Namespace") => (
            vec![name_column(), c("Status", 0), age_column()],
            Box::new(|o| {
                vec![
                    name(o),
                    o["status"]["phase"].as_str().unwrap_or("Active").into(),
                    age(o),
                ]
            }),
        ),
        ("", "Event") => (
            vec![
                c("Last Seen", 0),
                c("Type", 0),
                c("Reason", 0),
                c("Object", 0),
                c("Message", 0),
                c("Name", 1),
            ],
            Box::new(|o| {
                let seen = ["lastTimestamp", "eventTime", "firstTimestamp"]
                    .iter()
                    .find_map(|f| o[*f].as_str().and_then(parse_time))
                    .map_or(Value::from("<unknown>"), |t| human_age(t).into());
                let io = &o["involvedObject"];
                vec![
                    seen,
                    o["type"].clone(),
                    o["reason"].clone(),
                    format!(
                        "{}/{}",
                        io["kind"].as_str().unwrap_or_default().to_lowercase(),
                        io["name"].as_str().unwrap_or_default()
                    )
                    .into(),
                    o["message"].clone(),
                    name(o),
                ]
            }),
        ),
        ("discovery.k8s.io", "EndpointSlice") => (
            vec![
                name_column(),
                c("AddressType", 0),
                c("Ports", 0),
                c("Endpoints", 0),
                age_column(),
            ],
            Box::new(|o| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
                    .collect();
                let eps: Vec<&str> = o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| strings(&e["addresses"]))
                    .collect();
                vec![
                    name(o),
                    o["addressType"].clone(),
                    none_if_empty(ports.join(",")),
                    none_if_empty(eps.join(",")),
                    age(o),
                ]
            }),
        ),
        ("coordination.k8s.io", "Lease") => (
            vec![name_column(), c("Holder", 0), age_column()],
            Box::new(|o| {
                vec![
                    name(o),
                    o["spec"]["holderIdentity"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    age(o),
                ]
            }),
        ),
        ("apps", "Deployment") => (
            vec![
                name_column(),
                c("Ready", 0),
                c("Up-to-date", 0),
                c("Available", 0),
                age_column(),
            ],
            Box::new(|o| {
                let st = &o["status"];
                let n = |v: &Value| v.as_i64().unwrap_or(0);
                vec![
                    name(o),
                    format!(
                        "{}/{}",
                        n(&st["readyReplicas"]),
                        o["spec"]["replicas"].as_i64().unwrap_or(1)
                    )
                    .into(),
                    n(&st["updatedReplicas"]).into(),
                    n(&st["availableReplicas"]).into(),
                    age(o),
                ]
            }),
        ),
        ("apps", "DaemonSet") => (
            vec![
                name_column(),
                c("Desired", 0),
                c("Current", 0),
                c("Ready", 0),
                c("Up-to-date", 0),
                c("Available", 0),
                age_column(),
            ],
            Box::new(|o| {
                let st = &o["status"];
                let n = |f: &str| st[f].as_i64().unwrap_or(0);
                vec![
                    name(o),
                    n("desiredNumberScheduled").into(),
                    n("currentNumberScheduled").into(),
                    n("numberReady").into(),
                    n("updatedNumberScheduled").into(),
                    n("numberAvailable").into(),
                    age(o),
                ]
            }),
        ),
        _ => (
            vec![name_column(), column("Created At", "date", 0, "")],
            Box::new(|o| vec![name(o), o["metadata"]["creationTimestamp"].clone()]),
        ),
    }
}

/// `Ready`, `NotReady` or `Unknown`, as the node printer shows it.
fn node_status(o: &Value) -> String {
    let ready = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        });
    let mut s = ready.unwrap_or("Unknown").to_owned();
    if o["spec"]["unschedulable"] == true {
        s.push_str(",SchedulingDisabled");
    }
    s
}

/// The service printer's External-IP: a LoadBalancer's ingress addresses (`<pending>`
/// before it has one) and the external IPs.
fn external_ips(o: &Value) -> Value {
    let mut ips: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
        .collect();
    ips.extend(strings(&o["spec"]["externalIPs"]));
    if ips.is_empty() {
        return if o["spec"]["type"] == "LoadBalancer" {
            "<pending>"
        } else {
            "<none>"
        }
        .into();
    }
    ips.join(",").into()
}

/// `80:31000/TCP,53/UDP`.
fn ports(spec: &Value) -> String {
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds since 1970 of an RFC 3339 UTC time (`Z`, fraction ignored); `None` otherwise.
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// How long ago `t` (seconds since 1970) was, in kubectl's short form (`45s`, `3m12s`,
/// `5h`, `2d3h`).
pub(crate) fn human_age(t: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    human_duration(now - t)
}

fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let (m, h) = (secs / 60, secs / 3600);
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        () if m < 10 => pair(m, "m", secs % 60, "s"),
        () if m < 180 => format!("{m}m"),
        () if h < 8 => pair(h, "h", m % 60, "m"),
        () if h < 48 => format!("{h}h"),
        () if h < 24 * 8 => pair(h / 24, "d", h % 24, "h"),
        () if h < 24 * 365 * 2 => format!("{}d", h / 24),
        () if h < 24 * 365 * 8 => pair(h / 24 / 365, "y", h / 24 % 365, "d"),
        () => format!("{}y", h / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kubectl_shows_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (50 * 3600, "2d2h"),
        ] {
            assert_eq!(human_duration(s), want);
        }
        assert_eq!(parse_time("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_time("2024-03-01T00:00:00Z"), Some(1_709_251_200));
    }

    #[test]
    fn printer_columns_of_a_crd() {
        let crd = CrdVersion {
            printer_columns: serde_json::from_value(json!([
                {"name": "Auto Assign", "type": "boolean", "jsonPath": ".spec.autoAssign"},
                {"name": "Addresses", "type": "string", "jsonPath": ".spec.addresses"},
                {"name": "First", "type": "string", "jsonPath": ".spec.addresses[0]"},
                {"name": "Assigned", "type": "integer", "jsonPath": ".status.assigned"},
            ]))
            .unwrap(),
            ..CrdVersion::default()
        };
        let rd = ResourceDef::new("x.io", "v1", "pools", "Pool");
        let o = json!({"metadata": {"name": "p"},
                       "spec": {"autoAssign": true, "addresses": ["10.0.0.0/24", "a-b"]}});
        let t = table(&rd, Some(&crd), &[o], None, "7");
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["p", true, "[\"10.0.0.0/24\",\"a-b\"]", "10.0.0.0/24", null])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Auto Assign", "Addresses", "First", "Assigned"]
        );
    }

    #[test]
    fn service_columns() {
        let rd = ResourceDef::new("", "v1", "services", "Service");
        let svc = json!({"metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}});
        let t = table(&rd, None, &[svc], Some("None"), "1");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "LoadBalancer");
        assert_eq!(cells[3], "192.168.1.240");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
        assert!(t["rows"][0].get("object").is_none());
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
