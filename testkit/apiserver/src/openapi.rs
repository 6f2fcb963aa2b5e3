//! `OpenAPI` v3 documents (`/openapi/v3` and one per group-version), as `kubectl` reads them:
//! whether the server validates fields itself (a PATCH operation per kind that takes the
//! `fieldValidation` parameter — then kubectl's `--validate=strict`, its default, leaves
//! validation to the server instead of needing schemas), and custom resources' schemas
//! (`kubectl explain`). Built-in kinds' schemas are not served: the test server has none.
//! `OpenAPI` v2 (`/openapi/v2`) is protobuf-only for kubectl and is not served (404).

use serde_json::{Map, Value, json};

use super::store::{ResourceDef, State};

/// `api/v1` or `apis/<group>/<version>`: a group-version's key in the v3 index.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The group-versions served, each once.
fn group_versions(state: &State) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> = Vec::new();
    for rd in state.resources() {
        let gv = (rd.group.clone(), rd.version.clone());
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    gvs
}

/// `GET /openapi/v3`: where each group-version's document is. The `hash` changes whenever
/// the server's resources do (clients cache documents by it).
pub(crate) fn index(state: &State) -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions(state) {
        let doc = group_version(state, &g, &v);
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={:016X}", fnv(&doc.to_string()))}),
        );
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The document of `/openapi/v3/<path>` (`api/v1`, `apis/<group>/<version>`), if served.
pub(crate) fn document(state: &State, path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (g, v) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let served = state.resources().any(|r| r.group == g && r.version == v);
    served.then(|| group_version(state, g, v))
}

/// The schema's name in `components.schemas`, as Kubernetes names them
/// (`io.onehop.v1beta1.IPAddressPool`: the group reversed).
fn schema_name(rd: &ResourceDef) -> String {
    let mut parts: Vec<&str> = rd.group.split('.').filter(|s| !s.is_empty()).collect();
    parts.reverse();
    if parts.is_empty() {
        format!("io.k8s.api.core.{}.{}", rd.version, rd.kind)
    } else {
        format!("{}.{}.{}", parts.join("."), rd.version, rd.kind)
    }
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// `ObjectMeta`'s schema, with the patch strategies kubectl reads from it.
fn object_meta() -> Value {
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "description": "Standard object's metadata.",
        "properties": {
            "name": {"type": "string"},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": strings,
            "annotations": strings,
            "finalizers": {"type": "array", "items": {"type": "string"},
                           "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
            "ownerReferences": {"type": "array", "items": {"type": "object",
                "x-kubernetes-map-type": "atomic",
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                               "name": {"type": "string"}, "uid": {"type": "string"},
                               "controller": {"type": "boolean"},
                               "blockOwnerDeletion": {"type": "boolean"}}},
                "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "managedFields": {"type": "array", "items": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}},
        },
    })
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn group_version(state: &State, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rd in state
        .resources()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": rd.group, "version": rd.version, "kind": rd.kind});
        // Only custom resources have a schema here. A built-in kind's is left out rather
        // than made up: kubectl then computes its patches from its own Go types' merge keys.
        let crd_schema = state.crd(rd).and_then(|c| c.schema.clone());
        let body_ref = match &crd_schema {
            Some(_) => json!({"$ref": format!("#/components/schemas/{}", schema_name(rd))}),
            None => json!({"type": "object"}),
        };
        let content = json!({"application/json": {"schema": body_ref}});
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", rd.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK", "content": content}},
            })
        };
        let mut patch = op("patch");
        patch["parameters"] = json!([
            param("dryRun", "When present, modifications should not be persisted."),
            param("fieldManager", "The name of the actor making the change."),
            param(
                "fieldValidation",
                "Ignore, Warn (the default) or Strict: what to do with unknown fields.",
            ),
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ]);
        patch["requestBody"] = json!({"content": {
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
        }, "required": true});
        let mut create = op("post");
        create["parameters"] = json!([param("fieldValidation", "See PATCH.")]);
        let base = format!("/{}", gv_path(&rd.group, &rd.version));
        let collection = if rd.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rd.plural)
        } else {
            format!("{base}/{}", rd.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": op("list"), "post": create}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": patch, "delete": op("delete")}),
        );
        if let Some(mut schema) = crd_schema {
            // As Kubernetes publishes a CRD's schema: with the fields every object has.
            if let Some(m) = schema.as_object_mut() {
                m.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
                let props = m.entry("properties").or_insert_with(|| json!({}));
                props["apiVersion"] = json!({"type": "string",
                    "description": "The versioned schema of this representation of an object."});
                props["kind"] = json!({"type": "string",
                    "description": "The REST resource this object represents."});
                props["metadata"] = json!({"$ref": format!("#/components/schemas/{OBJECT_META}")});
            }
            schemas.insert(schema_name(rd), schema);
            schemas.insert(OBJECT_META.into(), object_meta());
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (onehop test API server)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
