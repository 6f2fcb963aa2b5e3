//! Every manifest in manifests/ parses into the Kubernetes API types it
//! claims to be, and the RBAC it grants is exactly what the code calls
//! (`lb_userspace::k8s::rbac`): nothing missing, nothing extra.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use lb_userspace::k8s::rbac::{AGENT, ApiCall};
use serde_json::Value;

const NAMESPACE: &str = "onehop-system";

/// Every YAML document of every manifest, with its file name.
fn documents() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("manifests/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.extend(
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(|d| (name.clone(), d)),
        );
    }
    out
}

/// `doc` parsed strictly as `T`. k8s-openapi skips fields it does not know,
/// and so does the API server (with at most a warning): a misspelled field
/// would parse here and be silently dropped on install. So the typed object
/// is written back out and must give the document again; whatever got lost
/// on the way is a field `T` does not have.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let kind = &doc["kind"];
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {kind} does not parse: {e}"));
    let back = serde_json::to_value(&t)
        .unwrap_or_else(|e| panic!("{file}: {kind} does not serialise: {e}"));
    let mut lost = Vec::new();
    not_kept(doc, &back, "", &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: {kind} {}: not part of the API type (misspelt or misplaced?): {lost:?}",
        doc["metadata"]["name"]
    );
    t
}

/// The paths of `original` that `kept` lacks or holds with another value.
/// An explicit `null` counts as absent, as it does for the API server.
fn not_kept(original: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (original, kept) {
        (Value::Object(o), Value::Object(k)) => {
            for (key, v) in o {
                let here = format!("{path}.{key}");
                match k.get(key) {
                    Some(kv) => not_kept(v, kv, &here, out),
                    None if v.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(o), Value::Array(k)) if o.len() == k.len() => {
            for (i, (v, kv)) in o.iter().zip(k).enumerate() {
                not_kept(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ if original == kept => {}
        _ => out.push(format!("{path}: {original} became {kept}")),
    }
}

#[derive(Default)]
struct Manifests {
    cluster_roles: BTreeMap<String, Vec<PolicyRule>>,
    roles: BTreeMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    bindings: Vec<RoleBinding>,
    daemonsets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
}

/// The pod template of the agent's `DaemonSet`.
fn agent_pod(c: &Manifests) -> &k8s_openapi::api::core::v1::PodSpec {
    c.daemonsets
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("onehop-agent"))
        .expect("agent DaemonSet")
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn load() -> Manifests {
    let mut c = Manifests::default();
    let docs = documents();
    assert!(!docs.is_empty(), "no manifests found");
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match kind {
            "Namespace" => drop(typed::<Namespace>(file, doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(file, doc)),
            "ClusterRole" => {
                let r: ClusterRole = typed(file, doc);
                c.cluster_roles.insert(
                    r.metadata.name.clone().unwrap_or_default(),
                    r.rules.unwrap_or_default(),
                );
            }
            "Role" => {
                let r: Role = typed(file, doc);
                let key = (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                );
                c.roles.insert(key, r.rules.unwrap_or_default());
            }
            "ClusterRoleBinding" => c.cluster_bindings.push(typed(file, doc)),
            "RoleBinding" => c.bindings.push(typed(file, doc)),
            "DaemonSet" => c.daemonsets.push(typed(file, doc)),
            "Deployment" => c.deployments.push(typed(file, doc)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(file, doc)),
            // Our own resources (pools, advertisements) are checked by the
            // tests of their types.
            _ if doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("onehop.io/")) => {}
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    c
}

/// (group, resource, verb, namespace or "*") granted to a service account.
fn grants(c: &Manifests, sa: &str) -> BTreeSet<(String, String, String, String)> {
    let is_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(NAMESPACE)
        })
    };
    let mut out = BTreeSet::new();
    let mut add = |rules: &[PolicyRule], ns: &str| {
        for r in rules {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        out.insert((g.clone(), res.clone(), v.clone(), ns.to_owned()));
                    }
                }
            }
        }
    };
    for b in c.cluster_bindings.iter().filter(|b| is_sa(&b.subjects)) {
        let rules = c
            .cluster_roles
            .get(&b.role_ref.name)
            .unwrap_or_else(|| panic!("missing ClusterRole {}", b.role_ref.name));
        add(rules, "*");
    }
    for b in c.bindings.iter().filter(|b| is_sa(&b.subjects)) {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        let rules = match b.role_ref.kind.as_str() {
            "Role" => c.roles.get(&(ns.clone(), b.role_ref.name.clone())),
            _ => c.cluster_roles.get(&b.role_ref.name),
        };
        add(
            rules.unwrap_or_else(|| panic!("missing role {}", b.role_ref.name)),
            &ns,
        );
    }
    out
}

fn wanted(calls: &[ApiCall]) -> BTreeSet<(String, String, String, String)> {
    calls
        .iter()
        .map(|c| {
            let ns = if c.own_namespace { NAMESPACE } else { "*" };
            (
                c.group.to_owned(),
                c.resource.to_owned(),
                c.verb.to_owned(),
                ns.to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_manifest_parses_into_its_api_type() {
    let c = load();
    assert!(!c.daemonsets.is_empty());
}

#[test]
fn agent_rbac_is_exactly_what_the_agent_calls() {
    let c = load();
    assert_eq!(
        grants(&c, "onehop-agent"),
        wanted(AGENT),
        "agent RBAC (left) differs from k8s::rbac::AGENT (right)"
    );
}

#[test]
fn agent_daemonset_runs_the_kubernetes_agent_with_least_privilege() {
    let c = load();
    let pod = agent_pod(&c);
    assert_eq!(pod.service_account_name.as_deref(), Some("onehop-agent"));
    assert_eq!(
        pod.host_network,
        Some(true),
        "XDP attaches to the node's uplink"
    );
    let agent = &pod.containers[0];
    let args = agent.args.clone().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "agent") && args.iter().any(|a| a == "--kubernetes"),
        "{args:?}"
    );
    let env: BTreeSet<String> = agent.env.iter().flatten().map(|e| e.name.clone()).collect();
    assert!(env.contains("NODE_NAME"), "the agent needs its node name");
    let sc = agent.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.clone().unwrap_or_default(), ["ALL"]);
    assert!(
        caps.add
            .iter()
            .flatten()
            .all(|c| ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"].contains(&c.as_str()))
    );
    // Not only nothing beyond these: each one, or the agent cannot start.
    // BPF: create maps, load programs and BTF, pin in bpffs; NET_ADMIN:
    // attach XDP and TCX links (networking program types) and write
    // neighbour entries; NET_RAW: the AF_PACKET socket of gratuitous ARP
    // (`garp::ArpSender`); PERFMON: the verifier's pointer arithmetic on
    // packet and map values for a non-root loader.
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"]),
        "the agent's added capabilities"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.host_path.as_ref())
        .expect("hostPath bpffs");
    assert_eq!(bpffs.path, "/sys/fs/bpf");
    let tolerations: Vec<String> = pod
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.clone())
        .collect();
    assert!(
        tolerations
            .iter()
            .any(|k| k == "node-role.kubernetes.io/control-plane")
    );
    // The flow-hash secret: the Secret the controller creates, mounted (not
    // optional, so no agent serves with another seed) where the env points.
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| Some((v.name.as_str(), v.secret.as_ref()?)))
        .expect("a Secret volume for the hash seed");
    assert_eq!(
        secret.1.secret_name.as_deref(),
        Some(lb_userspace::k8s::hash_secret::NAME)
    );
    assert_ne!(
        secret.1.optional,
        Some(true),
        "the seed must not be optional"
    );
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == secret.0)
        .expect("the hash seed Secret is mounted");
    let file = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ONEHOP_HASH_SEED_FILE")
        .and_then(|e| e.value.clone())
        .expect("ONEHOP_HASH_SEED_FILE");
    assert_eq!(
        file,
        format!(
            "{}/{}",
            mount.mount_path,
            lb_userspace::k8s::hash_secret::KEY
        )
    );
}

/// The uninstall `DaemonSet` reaches every node (whatever its taints), in the host's network
/// namespace and bpffs, with the agent's image, least privilege and no API access, and
/// reads Ready only after its init container has uninstalled.
#[test]
fn uninstall_daemonset_runs_on_every_node_with_least_privilege() {
    let c = load();
    let ds = c
        .daemonsets
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("onehop-uninstall"))
        .expect("uninstall DaemonSet");
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "TC and TCX are per netns");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.is_none() && t.operator.as_deref() == Some("Exists")),
        "must tolerate every taint"
    );
    let init = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "one init container does the work");
    let main = &pod.containers;
    assert_eq!(main.len(), 1);
    assert_eq!(
        init[0].args.as_deref().unwrap_or_default(),
        ["uninstall"],
        "every pinned interface, default root"
    );
    assert_eq!(
        main[0].args.as_deref().unwrap_or_default(),
        ["uninstall", "--wait"]
    );
    let agent_image = agent_pod(&c).containers[0].image.clone();
    for container in init.iter().chain(main) {
        assert_eq!(
            container.image, agent_image,
            "{}: the agent's image",
            container.name
        );
        let sc = container
            .security_context
            .as_ref()
            .expect("securityContext");
        assert_ne!(sc.privileged, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.clone().unwrap_or_default(), ["ALL"]);
        assert_eq!(
            caps.add.clone().unwrap_or_default(),
            ["BPF", "NET_ADMIN"],
            "{}",
            container.name
        );
        let mounts = container.volume_mounts.as_deref().unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m.mount_path == "/sys/fs/bpf"),
            "{}: the host bpffs",
            container.name
        );
    }
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.host_path.as_ref())
        .expect("hostPath bpffs");
    assert_eq!(bpffs.path, "/sys/fs/bpf");
}

fn port_of(addr: &str) -> i32 {
    let a: std::net::SocketAddr = addr.parse().expect("a socket address");
    i32::from(a.port())
}

/// Probes reach the probe-only listener, and nothing opens `/metrics` (which names pods and
/// node addresses) beyond loopback: the agent's ports is opened on every node.
fn check_listeners(
    name: &str,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    health: &str,
    metrics: &str,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let c = &pod.containers[0];
    let ports = c.ports.clone().unwrap_or_default();
    assert!(
        ports.iter().all(|p| p.container_port != port_of(metrics)),
        "{name} exposes the metrics port {metrics}"
    );
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(!args.contains("--metrics-addr"), "{name}: {args}");
    assert!(
        c.env
            .iter()
            .flatten()
            .all(|e| e.name != "ONEHOP_METRICS_ADDR"),
        "{name} sets ONEHOP_METRICS_ADDR"
    );
    let probes: Vec<_> = [&c.liveness_probe, &c.readiness_probe]
        .into_iter()
        .flatten()
        .collect();
    assert!(!probes.is_empty(), "{name} has no probes");
    for probe in probes {
        let get = probe.http_get.as_ref().expect("an HTTP probe");
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(n) => {
                ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(n))
                    .unwrap_or_else(|| panic!("{name}: no port named {n}"))
                    .container_port
            }
        };
        assert_eq!(
            port,
            port_of(health),
            "{name}: {} is probed on {port}, not the probe listener {health}",
            get.path.as_deref().unwrap_or_default()
        );
    }
}

#[test]
fn probes_hit_the_probe_listener_and_metrics_stay_private() {
    use lb_userspace::http;
    let c = load();
    let pod = agent_pod(&c);
    check_listeners(
        "agent",
        pod,
        http::AGENT_HEALTH_ADDR,
        http::AGENT_METRICS_ADDR,
    );
    let dep = c
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("onehop-controller"))
        .expect("controller Deployment");
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    check_listeners(
        "controller",
        pod,
        http::CONTROLLER_HEALTH_ADDR,
        http::CONTROLLER_METRICS_ADDR,
    );
}
