//! The object store behind the test API server: a registry of resources, objects as JSON,
//! Kubernetes metadata semantics, and a bounded history of changes for watches.
//!
//! Everything here is synchronous and runs under one mutex: the HTTP layer and tests'
//! direct access go through the same code, so a seeded object produces the same watch
//! events as one created over HTTP.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

use super::{
    patch::{self, PatchKind},
    schema::{self, FieldError},
    typed,
};

/// One resource type the server serves: where it lives in the URL space and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    /// Lower-case plural, the URL segment (`services`).
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the main resource ignore `.status`, writes to
    /// `/status` change only `.status`, and `metadata.generation` follows spec changes.
    pub status: bool,
}

impl ResourceDef {
    /// A namespaced resource without status subresource; adjust with the builder methods.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            kind: kind.to_owned(),
            namespaced: true,
            status: false,
        }
    }

    /// Makes the resource cluster-scoped.
    #[must_use]
    pub fn cluster_scoped(mut self) -> Self {
        self.namespaced = false;
        self
    }

    /// Gives the resource a status subresource.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The registry key: `group/version/plural`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }

    /// The resources a fresh server knows: what onehop's agent and controller use, plus
    /// the usual neighbours.
    pub fn builtin() -> Vec<Self> {
        vec![
            Self::new("", "v1", "namespaces", "Namespace")
                .cluster_scoped()
                .with_status(),
            Self::new("", "v1", "nodes", "Node")
                .cluster_scoped()
                .with_status(),
            Self::new("", "v1", "services", "Service").with_status(),
            Self::new("", "v1", "endpoints", "Endpoints"),
            Self::new("", "v1", "pods", "Pod").with_status(),
            Self::new("", "v1", "configmaps", "ConfigMap"),
            Self::new("", "v1", "secrets", "Secret"),
            Self::new("", "v1", "events", "Event"),
            Self::new("", "v1", "serviceaccounts", "ServiceAccount"),
            Self::new("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
            Self::new("coordination.k8s.io", "v1", "leases", "Lease"),
            // What the install manifests hold, so `kubectl apply` of them works.
            Self::new("apps", "v1", "deployments", "Deployment").with_status(),
            Self::new("apps", "v1", "daemonsets", "DaemonSet").with_status(),
            Self::new("rbac.authorization.k8s.io", "v1", "roles", "Role"),
            Self::new(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "RoleBinding",
            ),
            Self::new(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "ClusterRole",
            )
            .cluster_scoped(),
            Self::new(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
            )
            .cluster_scoped(),
            Self::new("events.k8s.io", "v1", "events", "Event"),
            Self::new(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
            )
            .cluster_scoped()
            .with_status(),
        ]
    }
}

/// A failed request, rendered as a `metav1.Status` by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details`: the object's name, group and resource (plural), when there is one.
    pub name: Box<str>,
    pub group: Box<str>,
    pub resource: Box<str>,
    /// `details.causes` of an Invalid status: what is wrong with which field (boxed: every
    /// fallible call of the server carries this type).
    pub causes: Option<Box<Vec<FieldError>>>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            name: Box::default(),
            group: Box::default(),
            resource: Box::default(),
            causes: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// `422 Invalid` about the object `name` of `rd`, as Kubernetes words it:
    /// `IPAddressPool.onehop.io "x" is invalid: spec.addresses: Required value`.
    fn invalid_object(rd: &ResourceDef, name: &str, causes: Vec<FieldError>) -> Self {
        let qualified = if rd.group.is_empty() {
            rd.kind.clone()
        } else {
            format!("{}.{}", rd.kind, rd.group)
        };
        let rendered: Vec<String> = causes.iter().map(FieldError::render).collect();
        let listed = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let mut e = Self::invalid(format!("{qualified} \"{name}\" is invalid: {listed}"));
        e.name = name.into();
        e.group = rd.group.as_str().into();
        e.resource = rd.kind.as_str().into();
        e.causes = Some(Box::new(causes));
        e
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    fn about(mut self, rd: &ResourceDef, name: &str) -> Self {
        self.name = name.into();
        self.group = rd.group.as_str().into();
        self.resource = rd.plural.as_str().into();
        self
    }

    pub(crate) fn not_found(rd: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rd.plural),
        )
        .about(rd, name)
    }

    fn already_exists(rd: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rd.plural),
        )
        .about(rd, name)
    }

    fn conflict(rd: &ResourceDef, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                rd.plural
            ),
        )
        .about(rd, name)
    }

    /// The `metav1.Status` body.
    pub(crate) fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.name.is_empty() || !self.resource.is_empty() {
            s["details"] = json!({"name": self.name, "group": self.group, "kind": self.resource});
        }
        if let Some(causes) = &self.causes {
            let causes: Vec<Value> = causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            s["details"]["causes"] = causes.into();
        }
        s
    }
}

/// What the server does with fields a write's body has and the type does not: the
/// `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Drops them silently.
    Ignore,
    /// Drops them with a warning (the default, as in Kubernetes since 1.27).
    Warn,
    /// Refuses the write (what `kubectl` asks for).
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("" | "Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}"
            ))),
        }
    }
}

/// Admission of one write: the checks a real server makes (decoding, unknown fields,
/// CRD schema, defaults), and the warnings they produce for the response.
#[derive(Debug)]
pub(crate) struct Admission {
    /// `None`: no admission (a test's direct write, stored as given).
    validation: Option<FieldValidation>,
    pub warnings: Vec<String>,
}

impl Admission {
    pub fn off() -> Self {
        Self {
            validation: None,
            warnings: Vec::new(),
        }
    }

    pub fn api(v: FieldValidation) -> Self {
        Self {
            validation: Some(v),
            warnings: Vec::new(),
        }
    }
}

/// What a CRD says about one served version of its resource, beyond [`ResourceDef`].
#[derive(Debug, Clone, Default)]
pub(crate) struct CrdVersion {
    /// `openAPIV3Schema`.
    pub schema: Option<Value>,
    pub printer_columns: Vec<Value>,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub singular: String,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    /// The main resource: `.status` is ignored if the resource has a status subresource.
    Main,
    /// The `/status` subresource: only `.status` changes.
    Status,
    /// Everything (tests' direct writes).
    All,
}

/// Watch event types, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history ring for watches. `prev` lets a filtered watch turn a
/// modification into ADDED/DELETED when the object starts/stops matching its selectors.
#[derive(Debug, Clone)]
pub(crate) struct HistEvent {
    pub rv: u64,
    pub rkey: String,
    pub namespace: String,
    pub kind: EventType,
    pub prev: Option<Value>,
    pub obj: Value,
}

/// Outcome of a DELETE.
#[derive(Debug, Clone)]
pub(crate) enum Deleted {
    /// Removed; the object as it was last, with the deletion's resourceVersion.
    Gone(Value),
    /// Finalizers pending: marked with `deletionTimestamp`, still there.
    Pending(Value),
}

type ObjKey = (String, String, String);

#[derive(Debug)]
struct Entry {
    obj: Value,
    /// Last server-side apply configuration per (field manager, is-status).
    applied: BTreeMap<(String, bool), Value>,
}

#[derive(Debug)]
pub(crate) struct State {
    registry: BTreeMap<String, ResourceDef>,
    /// By [`ResourceDef::key`], for resources a CRD registered.
    crds: BTreeMap<String, CrdVersion>,
    objects: BTreeMap<ObjKey, Entry>,
    /// The global resourceVersion counter: the last version handed out.
    pub rv: u64,
    history: VecDeque<HistEvent>,
    history_limit: usize,
    /// Events with `rv <= compacted` may have been dropped from the history.
    compacted: u64,
    rng: u64,
}

/// One page of a list ([`State::list_at`]).
#[derive(Debug)]
pub(crate) struct ListPage {
    pub items: Vec<Value>,
    /// The resourceVersion the page was read at.
    pub rv: u64,
    /// (namespace, name) of the last item: where the next page starts after.
    pub last: Option<(String, String)>,
    /// Selected items after this page.
    pub remaining: u64,
}

/// Two iterators sorted by key, merged in key order (the keys are distinct).
fn merge_by_key<'a, K: Ord + Copy, V>(
    a: impl Iterator<Item = (K, V)> + 'a,
    b: impl Iterator<Item = (K, V)> + 'a,
) -> impl Iterator<Item = (K, V)> + 'a {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) if kb < ka => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// The object without `metadata` and `status`: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// RFC 3339 UTC, second precision (what `metav1.Time` carries).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), all in u64: days since 1970 are >= 0.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes();
        let mut s = Self {
            registry: BTreeMap::new(),
            crds: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            rng: u64::from_le_bytes(seed[..8].try_into().unwrap_or_default())
                ^ u64::from(std::process::id()),
        };
        for rd in ResourceDef::builtin() {
            s.register(rd);
        }
        s
    }

    pub fn register(&mut self, rd: ResourceDef) {
        self.registry.insert(rd.key(), rd);
    }

    /// What the CRD of `rd` says, if a CRD registered it.
    pub fn crd(&self, rd: &ResourceDef) -> Option<&CrdVersion> {
        self.crds.get(&rd.key())
    }

    pub fn resources(&self) -> impl Iterator<Item = &ResourceDef> {
        self.registry.values()
    }

    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.registry.get(&format!("{group}/{version}/{plural}"))
    }

    /// Finds a resource by `plural` (core group) or `plural.group`, any version.
    pub fn find(&self, spec: &str) -> Option<&ResourceDef> {
        let (plural, group) = spec.split_once('.').unwrap_or((spec, ""));
        self.registry
            .values()
            .find(|r| r.plural == plural && r.group == group)
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: names and uids only need to be unique and unpredictable-looking.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn new_uid(&mut self) -> String {
        let (a, b) = (self.next_random(), self.next_random());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn name_suffix(&mut self) -> String {
        // The alphabet Kubernetes uses for generateName (no vowels, no look-alikes).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[usize::try_from(r % 27).unwrap_or_default()];
                r /= 27;
                char::from(c)
            })
            .collect()
    }

    fn key(rd: &ResourceDef, ns: &str, name: &str) -> ObjKey {
        let ns = if rd.namespaced { ns } else { "" };
        (rd.key(), ns.to_owned(), name.to_owned())
    }

    fn record(&mut self, ev: HistEvent) {
        self.history.push_back(ev);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Drops the whole watch history: a watch from any older resourceVersion gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// 410 Expired unless the history reaches back to `rv` and `rv` is not from the future
    /// (see [`Self::events_after`]).
    fn check_served(&self, rv: u64) -> Result<(), ApiError> {
        if rv > self.rv {
            return Err(ApiError::expired(format!(
                "too large resource version: {rv}, current: {}",
                self.rv
            )));
        }
        if rv < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted
            )));
        }
        Ok(())
    }

    /// History events after `rv`, or 410 Expired if some of them are gone.
    ///
    /// A version from the future is also 410. A real API server would wait for it (its
    /// watch cache lags etcd); here it can only mean the client saw another server — a test
    /// that replaced this one — and 410 makes a kube-runtime watcher re-list instead of
    /// silently missing every change up to that version.
    pub fn events_after(&self, rv: u64) -> Result<impl Iterator<Item = &HistEvent>, ApiError> {
        self.check_served(rv)?;
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..))
    }

    fn commit(
        &mut self,
        key: ObjKey,
        kind: EventType,
        prev: Option<Value>,
        mut obj: Value,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), self.rv.to_string().into());
        let (rkey, namespace, _) = key.clone();
        if kind == EventType::Deleted {
            self.objects.remove(&key);
        } else {
            let applied = self
                .objects
                .remove(&key)
                .map(|e| e.applied)
                .unwrap_or_default();
            self.objects.insert(
                key,
                Entry {
                    obj: obj.clone(),
                    applied,
                },
            );
        }
        self.record(HistEvent {
            rv: self.rv,
            rkey,
            namespace,
            kind,
            prev,
            obj: obj.clone(),
        });
        obj
    }

    pub fn get(&self, rd: &ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rd, ns, name))
            .map(|e| e.obj.clone())
            .ok_or_else(|| ApiError::not_found(rd, name))
    }

    /// Objects of `rd`, in one namespace or (None) all, sorted by namespace and name.
    pub fn list<'a>(
        &'a self,
        rd: &ResourceDef,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let rkey = rd.key();
        let namespaced = rd.namespaced;
        self.objects
            .iter()
            .filter(move |((r, n, _), _)| {
                *r == rkey && (!namespaced || ns.is_none_or(|ns| ns == n))
            })
            .map(|(_, e)| &e.obj)
    }

    /// One page of the objects of `rd` (in one namespace or, None, all) as they were at
    /// resourceVersion `rv`: those `keep` selects, sorted by namespace and name, after the
    /// key `after`, at most `limit`. Read as etcd serves kube-apiserver's paged lists: every
    /// page of one list reads the same revision, so objects written between pages show in
    /// none or in their old state, never twice and never missing. The past is rebuilt from
    /// the history (the state before the first change after `rv` of each key written
    /// since); once that history is compacted past `rv` the read is 410 Expired, as etcd
    /// answers for a compacted revision.
    pub(crate) fn list_at(
        &self,
        rd: &ResourceDef,
        ns: Option<&str>,
        rv: u64,
        after: Option<&(String, String)>,
        limit: Option<usize>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<ListPage, ApiError> {
        self.check_served(rv)?;
        let rkey = rd.key();
        let ns = if rd.namespaced { ns } else { None };
        let in_scope = |r: &str, n: &str| r == rkey && ns.is_none_or(|ns| ns == n);
        let past_after =
            |k: &(&str, &str)| after.is_none_or(|(an, am)| *k > (an.as_str(), am.as_str()));
        // The state at `rv` of each key written since: the `prev` of its first later write
        // (None: it did not exist then).
        let mut then: BTreeMap<(&str, &str), Option<&Value>> = BTreeMap::new();
        let start = self.history.partition_point(|e| e.rv <= rv);
        for e in self.history.range(start..) {
            if in_scope(&e.rkey, &e.namespace) {
                then.entry((e.namespace.as_str(), meta_str(&e.obj, "name")))
                    .or_insert(e.prev.as_ref());
            }
        }
        let first = match (after, ns) {
            (Some((n, m)), _) => (rkey.clone(), n.clone(), m.clone()),
            (None, Some(n)) => (rkey.clone(), n.to_owned(), String::new()),
            (None, None) => (rkey.clone(), String::new(), String::new()),
        };
        let unchanged = self
            .objects
            .range(first..)
            .take_while(|((r, n, _), _)| *r == rkey && ns.is_none_or(|ns| ns == n))
            .map(|((_, n, m), e)| ((n.as_str(), m.as_str()), &e.obj))
            .filter(|(k, _)| past_after(k) && !then.contains_key(k));
        let rewound = then
            .iter()
            .filter(|(k, _)| past_after(k))
            .filter_map(|(k, v)| v.map(|v| (*k, v)));
        let mut page = ListPage {
            items: Vec::new(),
            rv,
            last: None,
            remaining: 0,
        };
        for (k, v) in merge_by_key(unchanged, rewound).filter(|(_, v)| keep(v)) {
            if limit.is_some_and(|l| page.items.len() >= l) {
                page.remaining += 1;
            } else {
                page.items.push(v.clone());
                page.last = Some((k.0.to_owned(), k.1.to_owned()));
            }
        }
        Ok(page)
    }

    /// Fills in `apiVersion`/`kind`, rejecting a body that names another type.
    fn check_type(rd: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let api_version = rd.api_version();
        for (field, want) in [("apiVersion", api_version.as_str()), ("kind", &rd.kind)] {
            match m.get(field).and_then(Value::as_str) {
                Some(got) if !got.is_empty() && got != want => {
                    return Err(ApiError::bad_request(format!(
                        "{field} {got:?} does not match the request's {want:?}"
                    )));
                }
                _ => {
                    m.insert(field.into(), want.into());
                }
            }
        }
        Ok(())
    }

    fn check_namespace(rd: &ResourceDef, ns: &str, obj: &Value) -> Result<(), ApiError> {
        let body_ns = meta_str(obj, "namespace");
        if rd.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace \
                 sent on the request ({ns})"
            )));
        }
        Ok(())
    }

    /// POST. `keep_status`: tests seeding objects keep `.status`; over HTTP a resource with
    /// a status subresource starts with none, as in Kubernetes.
    pub fn create(
        &mut self,
        rd: &ResourceDef,
        ns: &str,
        mut obj: Value,
        keep_status: bool,
        adm: &mut Admission,
    ) -> Result<Value, ApiError> {
        Self::check_type(rd, &mut obj)?;
        Self::check_namespace(rd, ns, &obj)?;
        let shown = meta_str(&obj, "name").to_owned();
        self.admit(rd, &shown, &mut obj, adm)?;
        if rd.namespaced && ns.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} is namespaced: create it in a namespace",
                rd.plural
            )));
        }
        let mut name = meta_str(&obj, "name").to_owned();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    "metadata.name or metadata.generateName is required",
                ));
            }
            // Like Kubernetes, a collision is not retried server-side forever: a few tries,
            // then AlreadyExists.
            for _ in 0..8 {
                name = format!("{prefix}{}", self.name_suffix());
                if !self.objects.contains_key(&Self::key(rd, ns, &name)) {
                    break;
                }
            }
        }
        if name.contains('/') || name == "." || name == ".." {
            return Err(ApiError::invalid(format!("invalid name {name:?}")));
        }
        if adm.validation.is_some()
            && let Some(e) = schema::name_error(&rd.group, &rd.kind, &name)
        {
            return Err(ApiError::invalid_object(rd, &name, vec![e]));
        }
        let key = Self::key(rd, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rd, &name));
        }
        if rd.status
            && !keep_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let uid = self.new_uid();
        let m = meta_mut(&mut obj);
        m.insert("name".into(), name.into());
        if rd.namespaced {
            m.insert("namespace".into(), ns.into());
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), uid.into());
        m.insert("creationTimestamp".into(), now_rfc3339().into());
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            m.remove(f);
        }
        if rd.status {
            m.insert("generation".into(), 1.into());
        }
        let out = self.commit(key, EventType::Added, None, obj);
        self.on_write(rd, &out);
        Ok(out)
    }

    /// PUT (and the common tail of PATCH).
    pub fn update(
        &mut self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        new: Value,
        sub: Sub,
        adm: &mut Admission,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rd, ns, name);
        let old = self
            .objects
            .get(&key)
            .map(|e| e.obj.clone())
            .ok_or_else(|| ApiError::not_found(rd, name))?;
        let mut new = new;
        Self::check_type(rd, &mut new)?;
        Self::check_namespace(rd, ns, &new)?;
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let want_rv = meta_str(&new, "resourceVersion");
        if !want_rv.is_empty() && want_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(
                rd,
                name,
                "the object has been modified; please apply your changes to the latest version \
                 and try again",
            ));
        }
        let mut cand = match sub {
            Sub::Status => {
                let mut c = old.clone();
                if let Some(m) = c.as_object_mut() {
                    match new.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                c
            }
            Sub::Main if rd.status => {
                let mut c = new;
                if let Some(m) = c.as_object_mut() {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                c
            }
            Sub::Main | Sub::All => new,
        };
        // Fields only the server sets.
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let m = meta_mut(&mut cand);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "generation",
        ] {
            match old_meta.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        self.admit(rd, name, &mut cand, adm)?;
        if rd.status && spec_part(&old) != spec_part(&cand) {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut cand).insert("generation".into(), (generation + 1).into());
        }
        if cand == old {
            // A no-op write changes nothing, not even the resourceVersion, and no watcher
            // hears of it (controllers rely on this to settle).
            return Ok(old);
        }
        let kind = if !meta_str(&cand, "deletionTimestamp").is_empty() && !has_finalizers(&cand) {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        let out = self.commit(key, kind, Some(old), cand);
        if kind == EventType::Modified {
            self.on_write(rd, &out);
        }
        Ok(out)
    }

    /// PATCH of any kind; server-side apply creates the object if it does not exist.
    #[expect(clippy::too_many_arguments, reason = "one PATCH request's parts")]
    pub fn patch(
        &mut self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        sub: Sub,
        manager: Option<&str>,
        adm: &mut Admission,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rd, ns, name);
        if kind == PatchKind::Strategic && self.crd(rd).is_some() {
            // Custom resources have no Go types, so no patch merge keys.
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml",
            ));
        }
        if kind != PatchKind::Apply {
            let mut cand = self.get(rd, ns, name)?;
            patch::patch(kind, &mut cand, body, &rd.group, &rd.kind).map_err(ApiError::invalid)?;
            return self.update(rd, ns, name, cand, sub, adm);
        }
        let mut config = patch::parse_apply(body).map_err(ApiError::bad_request)?;
        let manager = manager
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply patches"))?;
        if config
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request("an apply configuration needs a kind"));
        }
        Self::check_type(rd, &mut config)?;
        let body_name = meta_str(&config, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let applied_key = (manager.to_owned(), sub == Sub::Status);
        let out = match self.objects.get(&key) {
            None if sub == Sub::Status => return Err(ApiError::not_found(rd, name)),
            None => {
                let mut obj = json!({});
                patch::apply(&mut obj, None, &config);
                meta_mut(&mut obj).insert("name".into(), name.into());
                self.create(rd, ns, obj, false, adm)?
            }
            Some(e) => {
                let mut cand = e.obj.clone();
                patch::apply(&mut cand, e.applied.get(&applied_key), &config);
                self.update(rd, ns, name, cand, sub, adm)?
            }
        };
        if let Some(e) = self.objects.get_mut(&key) {
            e.applied.insert(applied_key, config);
        }
        Ok(out)
    }

    /// DELETE: immediate without finalizers, otherwise marks `deletionTimestamp`; the
    /// update that removes the last finalizer then deletes. `options` is a `DeleteOptions`
    /// body: its `preconditions` are checked; grace periods and propagation policies are
    /// ignored (there is no garbage collector).
    pub fn delete(
        &mut self,
        rd: &ResourceDef,
        ns: &str,
        name: &str,
        options: Option<&Value>,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(rd, ns, name);
        let old = self.get(rd, ns, name)?;
        if let Some(pre) = options.and_then(|o| o.get("preconditions")) {
            for (field, meta) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && want != meta_str(&old, meta)
                {
                    return Err(ApiError::conflict(
                        rd,
                        name,
                        &format!(
                            "Precondition failed: {field} in precondition: {want}, {field} in \
                             object meta: {}",
                            meta_str(&old, meta)
                        ),
                    ));
                }
            }
        }
        if !has_finalizers(&old) {
            return Ok(Deleted::Gone(self.commit(
                key,
                EventType::Deleted,
                Some(old.clone()),
                old,
            )));
        }
        if !meta_str(&old, "deletionTimestamp").is_empty() {
            return Ok(Deleted::Pending(old));
        }
        let mut cand = old.clone();
        let m = meta_mut(&mut cand);
        m.insert("deletionTimestamp".into(), now_rfc3339().into());
        m.insert("deletionGracePeriodSeconds".into(), 0.into());
        if rd.status {
            let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
            m.insert("generation".into(), (generation + 1).into());
        }
        Ok(Deleted::Pending(self.commit(
            key,
            EventType::Modified,
            Some(old),
            cand,
        )))
    }

    /// What a real server does to a write's object before storing it: decoding (unknown
    /// fields dropped, reported as `fieldValidation` asks; wrong types refused), and for a
    /// custom resource its CRD's structural schema (pruning, defaults, validation).
    fn admit(
        &self,
        rd: &ResourceDef,
        name: &str,
        obj: &mut Value,
        adm: &mut Admission,
    ) -> Result<(), ApiError> {
        let Some(directive) = adm.validation else {
            return Ok(());
        };
        let cannot_handle = |why: String| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {why}",
                rd.kind, rd.version, rd.kind
            ))
        };
        let (unknown, invalid) = if let Some(s) = self.crd(rd).and_then(|c| c.schema.as_ref()) {
            let unknown = schema::prune(obj, s);
            schema::apply_defaults(obj, s);
            let mut errs = Vec::new();
            schema::validate(obj, s, "", &mut errs);
            (unknown, errs)
        } else {
            let unknown = typed::unknown_fields(&rd.group, &rd.kind, obj).map_err(cannot_handle)?;
            typed::apply_defaults(&rd.group, &rd.kind, obj);
            let is_crd =
                rd.group == "apiextensions.k8s.io" && rd.kind == "CustomResourceDefinition";
            let invalid = if is_crd {
                schema::crd_errors(obj)
            } else {
                Vec::new()
            };
            (unknown, invalid)
        };
        if !unknown.is_empty() {
            match directive {
                FieldValidation::Strict => {
                    let list: Vec<String> = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(cannot_handle(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => adm
                    .warnings
                    .extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
                FieldValidation::Ignore => {}
            }
        }
        if invalid.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid_object(rd, name, invalid))
    }

    /// Creating or updating a `CustomResourceDefinition` registers the resources it serves,
    /// so tests can install CRDs the way a cluster does (`Foo::crd()`), or register them
    /// directly. Deleting a CRD does not unregister it.
    fn on_write(&mut self, rd: &ResourceDef, obj: &Value) {
        if rd.group != "apiextensions.k8s.io" || rd.plural != "customresourcedefinitions" {
            return;
        }
        let spec = &obj["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            return;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for v in spec["versions"].as_array().into_iter().flatten() {
            let (Some(version), true) = (v["name"].as_str(), v["served"].as_bool() != Some(false))
            else {
                continue;
            };
            let mut def = ResourceDef::new(group, version, plural, kind);
            def.namespaced = namespaced;
            def.status = v["subresources"]["status"].is_object();
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            };
            let names = &spec["names"];
            self.crds.insert(
                def.key(),
                CrdVersion {
                    schema: v["schema"].get("openAPIV3Schema").cloned(),
                    printer_columns: v["additionalPrinterColumns"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                    short_names: strings(&names["shortNames"]),
                    categories: strings(&names["categories"]),
                    singular: names["singular"]
                        .as_str()
                        .map_or_else(|| kind.to_lowercase(), str::to_owned),
                },
            );
            self.register(def);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}, "status": {"x": 1}})
    }

    fn rd(s: &State, spec: &str) -> ResourceDef {
        s.find(spec).unwrap().clone()
    }

    #[test]
    fn timestamp_format() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn create_fills_metadata_and_drops_status() {
        let mut s = State::new(10);
        let r = rd(&s, "services");
        let o = s
            .create(&r, "ns", svc("a"), false, &mut Admission::off())
            .unwrap();
        assert_eq!(o["kind"], "Service");
        assert_eq!(o["apiVersion"], "v1");
        assert_eq!(o["metadata"]["namespace"], "ns");
        assert_eq!(o["metadata"]["resourceVersion"], "1");
        assert_eq!(o["metadata"]["generation"], 1);
        assert_eq!(o["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(o.get("status").is_none());
        let e = s
            .create(&r, "ns", svc("a"), false, &mut Admission::off())
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        // Same name, other namespace: fine.
        s.create(&r, "other", svc("a"), false, &mut Admission::off())
            .unwrap();
    }

    #[test]
    fn generate_name() {
        let mut s = State::new(10);
        let r = rd(&s, "configmaps");
        let a = s
            .create(
                &r,
                "ns",
                json!({"metadata": {"generateName": "x-"}}),
                false,
                &mut Admission::off(),
            )
            .unwrap();
        let name = a["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("x-") && name.len() == 7, "{name}");
        let e = s
            .create(
                &r,
                "ns",
                json!({"metadata": {}}),
                false,
                &mut Admission::off(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn update_semantics() {
        let mut s = State::new(10);
        let r = rd(&s, "services");
        let o = s
            .create(&r, "ns", svc("a"), false, &mut Admission::off())
            .unwrap();
        // No-op: same rv.
        let same = s
            .update(&r, "ns", "a", o.clone(), Sub::Main, &mut Admission::off())
            .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "1");
        // Status is ignored on the main resource, generation follows spec.
        let mut changed = o.clone();
        changed["spec"]["ports"][0]["port"] = 81.into();
        changed["status"] = json!({"y": 2});
        let updated = s
            .update(
                &r,
                "ns",
                "a",
                changed.clone(),
                Sub::Main,
                &mut Admission::off(),
            )
            .unwrap();
        assert_eq!(updated["metadata"]["resourceVersion"], "2");
        assert_eq!(updated["metadata"]["generation"], 2);
        assert!(updated.get("status").is_none());
        // Stale rv.
        let err = s
            .update(&r, "ns", "a", changed, Sub::Main, &mut Admission::off())
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        // Status subresource changes only status, not generation.
        let mut st = updated.clone();
        st["spec"] = json!({});
        st["status"] = json!({"z": 3});
        let u2 = s
            .update(&r, "ns", "a", st, Sub::Status, &mut Admission::off())
            .unwrap();
        assert_eq!(u2["status"], json!({"z": 3}));
        assert_eq!(u2["spec"]["ports"][0]["port"], 81);
        assert_eq!(u2["metadata"]["generation"], 2);
        let err = s
            .update(&r, "ns", "nope", u2, Sub::Main, &mut Admission::off())
            .unwrap_err();
        assert_eq!(err.code, 404);
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut s = State::new(10);
        let r = rd(&s, "configmaps");
        let mut o = json!({"metadata": {"name": "a", "finalizers": ["f"]}});
        o = s.create(&r, "ns", o, false, &mut Admission::off()).unwrap();
        let Deleted::Pending(p) = s.delete(&r, "ns", "a", None).unwrap() else {
            panic!("deleted with a finalizer")
        };
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        o["metadata"]["finalizers"] = json!([]);
        o["metadata"]["resourceVersion"] = p["metadata"]["resourceVersion"].clone();
        s.update(&r, "ns", "a", o, Sub::Main, &mut Admission::off())
            .unwrap();
        assert_eq!(s.get(&r, "ns", "a").unwrap_err().code, 404);
        let evs: Vec<_> = s.events_after(0).unwrap().map(|e| e.kind).collect();
        assert_eq!(
            evs,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut s = State::new(2);
        let r = rd(&s, "configmaps");
        for i in 0..4 {
            s.create(
                &r,
                "ns",
                json!({"metadata": {"name": format!("c{i}")}}),
                false,
                &mut Admission::off(),
            )
            .unwrap();
        }
        assert_eq!(s.events_after(1).map(drop).unwrap_err().code, 410);
        assert_eq!(s.events_after(2).unwrap().count(), 2);
        s.compact();
        assert_eq!(s.events_after(3).map(drop).unwrap_err().code, 410);
        assert_eq!(s.events_after(4).unwrap().count(), 0);
        assert_eq!(s.events_after(5).map(drop).unwrap_err().code, 410);
    }

    /// Pages `rd` at `rv` `limit` at a time, from `after` to the end.
    fn page_through(
        s: &State,
        r: &ResourceDef,
        ns: Option<&str>,
        rv: u64,
        limit: usize,
    ) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_at(r, ns, rv, after.as_ref(), Some(limit), |_| true)
                .unwrap();
            assert_eq!(page.rv, rv);
            assert!(page.items.len() <= limit);
            let full = page.items.len() == limit;
            all.extend(page.items);
            if page.remaining == 0 {
                return all;
            }
            assert!(full, "a page short of its limit with more to come");
            after = page.last;
        }
    }

    /// One list paged while objects are created, changed and deleted between its pages
    /// (and objects of another resource written in the same key space) holds exactly the
    /// objects of its first page's version, each as it was then.
    #[test]
    fn paged_lists_read_the_first_pages_version() {
        struct Pager {
            ns: Option<&'static str>,
            rv: u64,
            limit: usize,
            after: Option<(String, String)>,
            got: Vec<Value>,
            want: Vec<Value>,
        }
        let mut s = State::new(100_000);
        let (svcs, maps) = (rd(&s, "services"), rd(&s, "configmaps"));
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            usize::try_from(rng % n).unwrap()
        };
        let namespaces = ["ns0", "ns1", "ns2"];
        let mut pagers: Vec<Pager> = Vec::new();
        let mut finished = 0;
        for step in 0..2_000 {
            let r = if next(4) == 0 { &maps } else { &svcs };
            let ns = namespaces[next(3)];
            let name = format!("o{}", next(40));
            let mut adm = Admission::off();
            match (s.get(r, ns, &name), next(3)) {
                (Err(_), _) => {
                    let o =
                        json!({"metadata": {"name": name, "labels": {"step": step.to_string()}}});
                    s.create(r, ns, o, false, &mut adm).unwrap();
                }
                (Ok(_), 0) => drop(s.delete(r, ns, &name, None).unwrap()),
                (Ok(mut o), _) => {
                    o["metadata"]["labels"]["step"] = step.to_string().into();
                    s.update(r, ns, &name, o, Sub::All, &mut adm).unwrap();
                }
            }
            for p in &mut pagers {
                let page = s
                    .list_at(&svcs, p.ns, p.rv, p.after.as_ref(), Some(p.limit), |_| true)
                    .unwrap();
                let served = p.got.len() + page.items.len();
                assert_eq!(usize::try_from(page.remaining), Ok(p.want.len() - served));
                p.got.extend(page.items);
                p.after = page.last;
            }
            pagers.retain(|p| {
                let done = p.got.len() == p.want.len();
                if done {
                    assert_eq!(p.got, p.want, "a paged list at {}", p.rv);
                    finished += 1;
                }
                !done
            });
            if step % 7 == 0 {
                let ns = [None, Some("ns1")][next(2)];
                pagers.push(Pager {
                    ns,
                    rv: s.rv,
                    limit: 1 + next(9),
                    after: None,
                    got: Vec::new(),
                    want: s.list(&svcs, ns).cloned().collect(),
                });
            }
        }
        assert!(finished > 200, "{finished} paged lists finished");
        // A list at an old version, read whole or in pages of any size, is that version's.
        let rv = s.rv;
        let want: Vec<Value> = s.list(&svcs, None).cloned().collect();
        for i in 0..50 {
            s.delete(&svcs, "ns0", &format!("o{i}"), None).ok();
            s.delete(&svcs, "ns2", &format!("o{i}"), None).ok();
        }
        assert_ne!(s.list(&svcs, None).count(), want.len());
        for limit in [1, 2, 5, 1_000] {
            assert_eq!(page_through(&s, &svcs, None, rv, limit), want);
        }
        let whole = s.list_at(&svcs, None, rv, None, None, |_| true).unwrap();
        assert_eq!((whole.items, whole.remaining), (want, 0));
    }

    #[test]
    fn paging_past_the_history_is_expired() {
        let mut s = State::new(3);
        let r = rd(&s, "configmaps");
        let mut adm = Admission::off();
        for i in 0..3 {
            let o = json!({"metadata": {"name": format!("c{i}")}});
            s.create(&r, "ns", o, false, &mut adm).unwrap();
        }
        let first = s.list_at(&r, None, s.rv, None, Some(2), |_| true).unwrap();
        assert_eq!((first.items.len(), first.remaining), (2, 1));
        // Still within the history: the snapshot holds.
        s.delete(&r, "ns", "c2", None).unwrap();
        let rest = s
            .list_at(&r, None, first.rv, first.last.as_ref(), Some(2), |_| true)
            .unwrap();
        assert_eq!(rest.items[0]["metadata"]["name"], "c2");
        // Three more writes push the first page's version out of the history.
        for i in 3..6 {
            let o = json!({"metadata": {"name": format!("c{i}")}});
            s.create(&r, "ns", o, false, &mut adm).unwrap();
        }
        let e = s
            .list_at(&r, None, first.rv, first.last.as_ref(), Some(2), |_| true)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        let e = s
            .list_at(&r, None, s.rv + 1, None, None, |_| true)
            .unwrap_err();
        assert_eq!(e.code, 410);
    }

    #[test]
    fn selected_pages_skip_what_is_not_selected() {
        let mut s = State::new(100);
        let r = rd(&s, "configmaps");
        let mut adm = Admission::off();
        for i in 0..10 {
            let o = json!({"metadata": {"name": format!("c{i}"), "labels": {"odd": (i % 2).to_string()}}});
            s.create(&r, "ns", o, false, &mut adm).unwrap();
        }
        let odd = |o: &Value| o["metadata"]["labels"]["odd"] == "1";
        let page = s.list_at(&r, None, s.rv, None, Some(2), odd).unwrap();
        let names: Vec<&Value> = page.items.iter().map(|o| &o["metadata"]["name"]).collect();
        assert_eq!(names, ["c1", "c3"]);
        assert_eq!(page.remaining, 3);
    }

    #[test]
    fn crd_registers_its_resource() {
        let mut s = State::new(10);
        let r = rd(&s, "customresourcedefinitions.apiextensions.k8s.io");
        let crd = json!({
            "metadata": {"name": "foos.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "foos", "kind": "Foo"},
                     "versions": [{"name": "v1", "served": true, "subresources": {"status": {}}}]}
        });
        s.create(&r, "", crd, false, &mut Admission::off()).unwrap();
        let foo = s.resolve("example.com", "v1", "foos").unwrap();
        assert!(foo.namespaced && foo.status);
    }
}
