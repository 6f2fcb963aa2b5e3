//! onehop's custom resources, group `onehop.io`, version `v1beta1`:
//! `IPAddressPool` and `L2Advertisement`, field for field compatible with
//! MetalLB's `metallb.io/v1beta1` kinds of the same names, so the manifests
//! of MetalLB's L2 guides work after changing `apiVersion` (fields MetalLB
//! has and onehop does not use are rejected by the schema rather than
//! silently ignored: none of them exist for these two kinds in L2 mode).
//!
//! `manifests/crds.yaml` is generated from these types by
//! `cargo xtask crdgen` ([`crds_yaml`]); a test fails when it is stale.

use std::borrow::Cow;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta},
};
use kube::{CustomResource, CustomResourceExt as _, Resource as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of onehop's resources.
pub const GROUP: &str = "onehop.io";
/// Their version.
pub const VERSION: &str = "v1beta1";

/// A range of addresses the controller assigns to `LoadBalancer` Services.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "onehop.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    doc = "A range of addresses onehop assigns to LoadBalancer Services (MetalLB-compatible).",
    namespaced,
    status = "IPAddressPoolStatus",
    shortname = "ipp",
    category = "onehop",
    printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Avoid Buggy IPs","type":"boolean","jsonPath":".spec.avoidBuggyIPs"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Assigned","type":"integer","jsonPath":".status.assignedIPv4"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableIPv4"}"#,
    printcolumn = r#"{"name":"Assigned IPv6","type":"integer","jsonPath":".status.assignedIPv6","priority":10}"#,
    printcolumn = r#"{"name":"Available IPv6","type":"integer","jsonPath":".status.availableIPv6","priority":10}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// IPv4 and IPv6 CIDRs (`192.168.10.0/24`, `fc00::/120`) and inclusive
    /// ranges (`192.168.10.10-192.168.10.20`, `fc00::10-fc00::20`, both ends
    /// of one family). A pool may hold both families (dual-stack).
    pub addresses: Vec<String>,
    /// Whether Services get addresses from this pool without asking for it
    /// by name or address (default true).
    // The schema default makes the API server fill it in, so the printer
    // column shows `true` rather than nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub auto_assign: Option<bool>,
    /// Skip IPv4 addresses ending in `.0` and `.255` (default false).
    #[serde(
        default,
        rename = "avoidBuggyIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub avoid_buggy_ips: Option<bool>,
    /// Which Services may get addresses from this pool, and its priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

/// `spec.serviceAllocation` of an `IPAddressPool`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower first; pools without a priority come last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Only Services in these namespaces (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only Services in namespaces matching one of these (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Only Services matching one of these (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller reports about a pool (MetalLB's field names plus
/// conditions).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses of this pool held by Services.
    #[serde(rename = "assignedIPv4", default)]
    pub assigned_ipv4: i64,
    /// IPv4 addresses of this pool still free.
    #[serde(rename = "availableIPv4", default)]
    pub available_ipv4: i64,
    /// IPv6 addresses of this pool held by Services.
    #[serde(rename = "assignedIPv6", default)]
    pub assigned_ipv6: i64,
    /// IPv6 addresses of this pool still free (at most 2^63-1: a /64 has more).
    #[serde(rename = "availableIPv6", default)]
    pub available_ipv6: i64,
    /// `Valid`: `True`, or `False` with the reason the pool is ignored
    /// (`InvalidPool`, `OverlappingPool`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `spec` of an [`L2Advertisement`]: which pools are announced in L2 mode,
/// from which nodes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "onehop.io",
    version = "v1beta1",
    kind = "L2Advertisement",
    // Only for the CRD: objects are read as [`L2Advertisement`], which
    // accepts a missing `spec` as MetalLB's guides write it.
    root = "L2AdvertisementCrd",
    doc = "Which IPAddressPools are announced in L2 mode, from which nodes (MetalLB-compatible).",
    namespaced,
    shortname = "l2adv",
    category = "onehop",
    printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Pools announced by name (with `ipAddressPoolSelectors` empty too:
    /// every pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// Pools announced by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Nodes that may announce (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces to announce from (empty: the agent's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Services this advertisement applies to (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Among the nodes allowed to announce, those matching one of these
    /// announce when any of them is eligible (empty: no preference).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_node_selectors: Vec<LabelSelector>,
}

/// An `L2Advertisement`. Written by hand rather than derived because
/// MetalLB's smallest L2 example has no `spec` at all (announce every pool
/// from every node), and the derived type would reject it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct L2Advertisement {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: L2AdvertisementSpec,
}

impl L2Advertisement {
    pub fn new(name: &str, spec: L2AdvertisementSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

impl Serialize for L2Advertisement {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut obj = ser.serialize_struct("L2Advertisement", 4)?;
        obj.serialize_field("apiVersion", &L2AdvertisementCrd::api_version(&()))?;
        obj.serialize_field("kind", &L2AdvertisementCrd::kind(&()))?;
        obj.serialize_field("metadata", &self.metadata)?;
        obj.serialize_field("spec", &self.spec)?;
        obj.end()
    }
}

impl kube::Resource for L2Advertisement {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        L2AdvertisementCrd::kind(&())
    }
    fn group((): &()) -> Cow<'_, str> {
        L2AdvertisementCrd::group(&())
    }
    fn version((): &()) -> Cow<'_, str> {
        L2AdvertisementCrd::version(&())
    }
    fn plural((): &()) -> Cow<'_, str> {
        L2AdvertisementCrd::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The `L2Advertisement` CRD. The derived schema lists `spec` as required;
/// a real API server would then reject MetalLB's smallest advertisement
/// (no `spec`: every pool from every node), which onehop accepts.
pub fn l2_advertisement_crd() -> CustomResourceDefinition {
    let mut crd = L2AdvertisementCrd::crd();
    for version in &mut crd.spec.versions {
        let root = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(root) = root
            && let Some(required) = root.required.as_mut()
        {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                root.required = None;
            }
        }
    }
    crd
}

/// Every CRD onehop defines, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![IPAddressPool::crd(), l2_advertisement_crd()]
}

/// Every CRD onehop defines, as YAML documents (`manifests/crds.yaml`).
pub fn crds_yaml() -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut out = String::from(
        "# Generated by `cargo xtask crdgen` from lb-userspace/src/k8s/crd.rs; do not edit.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).context("rendering a CRD as YAML")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `manifests/crds.yaml` as generated; regenerate with `cargo xtask crdgen`.
    #[test]
    fn crds_yaml_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
        let file = std::fs::read_to_string(path).expect("manifests/crds.yaml");
        assert!(
            file == crds_yaml().unwrap(),
            "manifests/crds.yaml is stale: run `cargo xtask crdgen`"
        );
    }

    #[test]
    fn crds_are_structural_and_named() {
        let ipp = IPAddressPool::crd();
        assert_eq!(
            ipp.metadata.name.as_deref(),
            Some("ipaddresspools.onehop.io")
        );
        assert_eq!(ipp.spec.scope, "Namespaced");
        let v = &ipp.spec.versions[0];
        assert_eq!(v.name, "v1beta1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(&v.schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ] {
            assert!(spec.get(field).is_some(), "{field} missing: {spec}");
        }
        let alloc = &spec["serviceAllocation"]["properties"];
        for field in [
            "priority",
            "namespaces",
            "namespaceSelectors",
            "serviceSelectors",
        ] {
            assert!(alloc.get(field).is_some(), "{field} missing: {alloc}");
        }
        let l2 = L2AdvertisementCrd::crd();
        let schema = serde_json::to_value(&l2.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
        ] {
            assert!(spec.get(field).is_some(), "{field} missing: {spec}");
        }
    }

    /// What a real API server enforces from the schemas: MetalLB's empty
    /// advertisement has no `spec`, and `autoAssign` is filled in on create.
    #[test]
    fn spec_is_optional_for_advertisements_and_auto_assign_defaults_to_true() {
        let l2 = serde_json::to_value(&l2_advertisement_crd().spec.versions[0].schema).unwrap();
        let root = &l2["openAPIV3Schema"];
        let required = root.get("required").cloned().unwrap_or_default();
        assert!(
            !required
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == "spec")),
            "spec required: {required}"
        );
        assert!(root["properties"].get("spec").is_some());
        let spec = &root["properties"]["spec"]["properties"];
        for field in ["serviceSelectors", "preferredNodeSelectors"] {
            assert_eq!(spec[field]["type"], "array", "{field}: {spec}");
        }
        // The pool CRD keeps `spec` required: a pool without addresses is
        // meaningless.
        let ipp = serde_json::to_value(&IPAddressPool::crd().spec.versions[0].schema).unwrap();
        let root = &ipp["openAPIV3Schema"];
        assert!(
            root["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == "spec")),
            "{root}"
        );
        assert_eq!(
            root["properties"]["spec"]["properties"]["autoAssign"]["default"],
            serde_json::Value::Bool(true)
        );
        // The file carries the same (the stale check compares it whole).
        assert_eq!(crds().len(), 2);
        assert_eq!(crds()[1], l2_advertisement_crd());
    }

    #[test]
    fn the_example_manifests_deserialize() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples/l2.yaml");
        let text = std::fs::read_to_string(path).expect("manifests/examples/l2.yaml");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_str_multiple::<_, Vec<_>>(&text).unwrap();
        assert_eq!(docs.len(), 2);
        let pool: IPAddressPool = serde_json::from_value(docs[0].clone()).unwrap();
        crate::k8s::pool::Pool::parse("lan", &pool.spec).unwrap();
        let adv: L2Advertisement = serde_json::from_value(docs[1].clone()).unwrap();
        assert_eq!(adv.spec.ip_address_pools, ["lan"]);
    }

    /// The manifests of MetalLB's L2 configuration guide, with only
    /// `apiVersion` changed.
    #[test]
    fn metallb_l2_guide_manifests_deserialize() {
        let yaml = r"
apiVersion: onehop.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: metallb-system
spec:
  addresses:
  - 192.168.10.0/24
  - 192.168.9.1-192.168.9.5
  - fc00:f853:0ccd:e799::/124
  autoAssign: false
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 50
    namespaces:
      - namespace-a
    namespaceSelectors:
      - matchLabels:
          foo: bar
    serviceSelectors:
      - matchExpressions:
          - {key: app, operator: In, values: [bar]}
";
        let pool: IPAddressPool = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(pool.metadata.name.as_deref(), Some("first-pool"));
        assert_eq!(pool.spec.addresses.len(), 3);
        assert_eq!(pool.spec.addresses[1], "192.168.9.1-192.168.9.5");
        assert_eq!(pool.spec.auto_assign, Some(false));
        assert_eq!(pool.spec.avoid_buggy_ips, Some(true));
        let al = pool.spec.service_allocation.as_ref().unwrap();
        assert_eq!(al.priority, Some(50));
        assert_eq!(al.namespaces, ["namespace-a"]);
        assert_eq!(
            al.namespace_selectors[0].match_labels.as_ref().unwrap()["foo"],
            "bar"
        );
        let expr = &al.service_selectors[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!((expr.key.as_str(), expr.operator.as_str()), ("app", "In"));
        // A dual-stack pool: both families are served; avoidBuggyIPs drops
        // .0 and .255 of the IPv4 /24 and nothing of the IPv6 entry.
        let parsed = crate::k8s::pool::Pool::parse("first-pool", &pool.spec).unwrap();
        assert_eq!(parsed.size_of(crate::k8s::pool::Family::V4), 254 + 5);
        assert!(parsed.has(crate::k8s::pool::Family::V6));

        let yaml = r"
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: metallb-system
spec:
  ipAddressPools:
  - first-pool
  ipAddressPoolSelectors:
  - matchLabels:
      zone: east
  nodeSelectors:
  - matchLabels:
      kubernetes.io/hostname: NodeA
  - matchLabels:
      kubernetes.io/hostname: NodeB
  interfaces:
  - eth3
";
        let adv: L2Advertisement = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(adv.spec.ip_address_pools, ["first-pool"]);
        assert_eq!(adv.spec.node_selectors.len(), 2);
        assert_eq!(
            adv.spec.node_selectors[1].match_labels.as_ref().unwrap()["kubernetes.io/hostname"],
            "NodeB"
        );
        assert_eq!(adv.spec.ip_address_pool_selectors.len(), 1);
        assert_eq!(adv.spec.interfaces, ["eth3"]);

        // The smallest L2 setup of the guide.
        let yaml = r"
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: metallb-system
";
        let adv: L2Advertisement = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(adv.spec, L2AdvertisementSpec::default());
    }
}
