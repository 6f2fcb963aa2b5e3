//! A real `kubectl` (v1.32 on the test machines) against the test API server, validation
//! on as kubectl defaults to it: what the server enforces and shows is what a real one
//! enforces and shows for onehop's objects — the install manifests apply, CRD schemas
//! accept MetalLB-shaped L2 configurations and refuse malformed ones with the real
//! server's errors, printer columns, short names and categories work, `kubectl apply`'s
//! strategic merge patches merge lists by key, and `kubectl describe` lists
//! `events.k8s.io` Events.

use std::path::PathBuf;

use k8s_openapi::{
    api::{core::v1::Service, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use onehop_apiserver::{
    ApiServer, Verb,
    kubectl::{Kubectl, Output, parse_table},
};
use serde_json::json;

/// The install manifests (`kubectl apply -f` of this directory installs onehop).
fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

fn setup() -> (ApiServer, Kubectl) {
    let server = ApiServer::start_local().expect("server");
    let kubectl = Kubectl::new(&server, "onehop-system").expect("kubectl");
    (server, kubectl)
}

#[track_caller]
fn ok(kubectl: &Kubectl, args: &[&str]) -> String {
    kubectl.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

#[track_caller]
fn applied(out: &Output) -> &str {
    assert!(
        out.success,
        "kubectl apply failed:\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        !out.stderr.to_lowercase().contains("warning"),
        "kubectl warned:\n{}",
        out.stderr
    );
    &out.stdout
}

/// The install bundle, as the README applies it.
fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/onehop.yaml")
}

fn install(kubectl: &Kubectl) -> String {
    let file = bundle();
    let file = file.to_str().expect("a UTF-8 path");
    let out = kubectl.run(&["apply", "-f", file]).expect("kubectl");
    applied(&out).to_owned()
}

/// The column names and rows of `kubectl get <args>`.
fn table(kubectl: &Kubectl, args: &[&str]) -> Vec<Vec<String>> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    parse_table(&ok(kubectl, &all))
}

#[test]
fn the_install_manifests_apply_with_validation_and_pools_show_their_columns() {
    let (_server, kubectl) = setup();
    let out = install(&kubectl);
    for made in [
        "namespace/onehop-system created",
        "customresourcedefinition.apiextensions.k8s.io/ipaddresspools.onehop.io created",
        "customresourcedefinition.apiextensions.k8s.io/l2advertisements.onehop.io created",
        "daemonset.apps/onehop-agent created",
        "deployment.apps/onehop-controller created",
        "clusterrole.rbac.authorization.k8s.io/onehop-controller created",
    ] {
        assert!(out.lines().any(|l| l == made), "{made:?} not in:\n{out}");
    }
    // Again: everything is found and nothing changes (kubectl's three-way patch is empty).
    let again = install(&kubectl);
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")),
        "a second apply changed something:\n{again}"
    );
    // The uninstall DaemonSet (applied on its own, README "Uninstall") validates too.
    let uninstall = manifests().join("uninstall.yaml");
    let out = kubectl
        .run(&["apply", "-f", uninstall.to_str().expect("UTF-8")])
        .expect("kubectl");
    assert!(
        applied(&out)
            .lines()
            .any(|l| l == "daemonset.apps/onehop-uninstall created"),
        "{}",
        out.stdout
    );
    let example = manifests().join("examples/l2.yaml");
    let out = kubectl
        .run(&["apply", "-f", example.to_str().expect("UTF-8")])
        .expect("kubectl");
    applied(&out);

    let t = table(&kubectl, &["ipaddresspools"]);
    assert_eq!(
        t[0],
        [
            "NAME",
            "AUTO ASSIGN",
            "AVOID BUGGY IPS",
            "ADDRESSES",
            "ASSIGNED",
            "AVAILABLE"
        ]
    );
    // The default (autoAssign: true) was applied by the server; no status yet.
    assert_eq!(
        t[1],
        [
            "lan",
            "true",
            "",
            "[\"192.168.1.240-192.168.1.250\"]",
            "",
            ""
        ]
    );
    // Short names and the `onehop` category come from the CRDs.
    assert_eq!(
        ok(&kubectl, &["get", "ipp", "-o", "name"]).trim(),
        "ipaddresspool.onehop.io/lan"
    );
    assert_eq!(
        ok(&kubectl, &["get", "onehop", "-o", "name"])
            .lines()
            .collect::<Vec<_>>(),
        [
            "ipaddresspool.onehop.io/lan",
            "l2advertisement.onehop.io/lan"
        ]
    );
    // A column of priority 10 shows only with `-o wide`.
    assert_eq!(table(&kubectl, &["l2adv"])[0], ["NAME", "IPADDRESSPOOLS"]);
    let wide = table(&kubectl, &["l2adv", "-o", "wide"]);
    assert_eq!(wide[0], ["NAME", "IPADDRESSPOOLS", "NODE SELECTORS"]);
    assert_eq!(wide[1][..2], ["lan", "[\"lan\"]"]);
    // `kubectl explain` reads the CRD's schema from the OpenAPI v3 document.
    let explained = ok(&kubectl, &["explain", "ipaddresspool.spec"]);
    assert!(
        explained.contains("addresses\t<[]string> -required-"),
        "{explained}"
    );
}

/// MetalLB's documented L2 configurations, in our own words and with onehop's group: every
/// shape is accepted.
const METALLB_SHAPED: &str = r"
apiVersion: onehop.io/v1beta1
kind: IPAddressPool
metadata: {name: first-pool}
spec:
  addresses:
    - 192.168.10.0/24
    - 192.168.9.1-192.168.9.5
    - fc00:f853:0ccd:e799::/124
---
apiVersion: onehop.io/v1beta1
kind: IPAddressPool
metadata: {name: expensive}
spec:
  addresses: [42.176.25.64/30]
  autoAssign: false
---
apiVersion: onehop.io/v1beta1
kind: IPAddressPool
metadata: {name: no-buggy}
spec:
  addresses: [192.168.20.0/24]
  avoidBuggyIPs: true
---
apiVersion: onehop.io/v1beta1
kind: IPAddressPool
metadata: {name: for-team-red}
spec:
  addresses: [192.168.30.0/28]
  serviceAllocation:
    priority: 50
    namespaces: [apps-a]
    namespaceSelectors:
      - matchLabels: {tier: front}
    serviceSelectors:
      - matchExpressions:
          - {key: team, operator: In, values: [red]}
---
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata: {name: everything}
---
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata: {name: by-name}
spec:
  ipAddressPools: [first-pool, expensive]
---
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata: {name: by-label}
spec:
  ipAddressPoolSelectors:
    - matchLabels: {zone: east}
    - matchExpressions:
        - {key: tier, operator: NotIn, values: [internal]}
---
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata: {name: on-interfaces}
spec:
  ipAddressPools: [no-buggy]
  interfaces: [eth0, eth1]
---
apiVersion: onehop.io/v1beta1
kind: L2Advertisement
metadata: {name: from-some-nodes}
spec:
  ipAddressPools: [for-team-red]
  nodeSelectors:
    - matchLabels: {kubernetes.io/hostname: node-a}
    - matchExpressions:
        - {key: onehop.io/announce, operator: Exists}
";

/// Malformed variants, each with what kubectl prints of the real API server's answer: an
/// Invalid status as `The <kind> "<name>" is invalid: <field>: <cause>` (from the status's
/// details), a `BadRequest` one (strict decoding: unknown fields are pruned, and reported,
/// before the schema is validated) as its message.
const MALFORMED: &[(&str, &str)] = &[
    (
        "kind: IPAddressPool\nmetadata: {name: no-addresses}\nspec: {autoAssign: false}",
        "The IPAddressPool \"no-addresses\" is invalid: spec.addresses: Required value",
    ),
    (
        "kind: IPAddressPool\nmetadata: {name: no-spec}",
        "The IPAddressPool \"no-spec\" is invalid: spec: Required value",
    ),
    (
        "kind: IPAddressPool\nmetadata: {name: one-string}\nspec: {addresses: 192.168.10.0/24}",
        "The IPAddressPool \"one-string\" is invalid: spec.addresses: Invalid value: \
         \"string\": spec.addresses in body must be of type array: \"string\"",
    ),
    (
        "kind: IPAddressPool\nmetadata: {name: yes-string}\n\
         spec: {addresses: [10.0.0.0/24], autoAssign: \"yes\"}",
        "The IPAddressPool \"yes-string\" is invalid: spec.autoAssign: Invalid value: \
         \"string\": spec.autoAssign in body must be of type boolean: \"string\"",
    ),
    (
        "kind: IPAddressPool\nmetadata: {name: high}\n\
         spec: {addresses: [10.0.0.0/24], serviceAllocation: {priority: high}}",
        "The IPAddressPool \"high\" is invalid: spec.serviceAllocation.priority: Invalid \
         value: \"string\": spec.serviceAllocation.priority in body must be of type integer: \
         \"string\"",
    ),
    (
        // MetalLB spells it avoidBuggyIPs too; a typo is an unknown field.
        "kind: IPAddressPool\nmetadata: {name: typo}\n\
         spec: {addresses: [10.0.0.0/24], avoidBuggyIps: true}",
        "IPAddressPool in version \"v1beta1\" cannot be handled as a IPAddressPool: strict \
         decoding error: unknown field \"spec.avoidBuggyIps\"",
    ),
    (
        "kind: L2Advertisement\nmetadata: {name: map-not-list}\n\
         spec: {nodeSelectors: {matchLabels: {a: b}}}",
        "L2Advertisement in version \"v1beta1\" cannot be handled as a L2Advertisement: \
         strict decoding error: unknown field \"spec.nodeSelectors.matchLabels\"",
    ),
    (
        "kind: L2Advertisement\nmetadata: {name: no-operator}\n\
         spec: {nodeSelectors: [{matchExpressions: [{key: a, values: [b]}]}]}",
        "The L2Advertisement \"no-operator\" is invalid: \
         spec.nodeSelectors[0].matchExpressions[0].operator: Required value",
    ),
    (
        "kind: IPAddressPool\nmetadata: {name: First_Pool}\nspec: {addresses: [10.0.0.0/24]}",
        "The IPAddressPool \"First_Pool\" is invalid: metadata.name: Invalid value: \
         \"First_Pool\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
         characters, '-' or '.', and must start and end with an alphanumeric character",
    ),
    (
        "kind: L2Advertisement\nmetadata: {name: pools-string}\nspec: {ipAddressPools: lan}",
        "The L2Advertisement \"pools-string\" is invalid: spec.ipAddressPools: Invalid \
         value: \"string\": spec.ipAddressPools in body must be of type array: \"string\"",
    ),
];

#[test]
fn metallb_shaped_l2_samples_are_accepted_and_malformed_ones_refused() {
    let (_server, kubectl) = setup();
    install(&kubectl);
    let out = kubectl.apply(METALLB_SHAPED, &[]).expect("kubectl");
    let created: Vec<&str> = applied(&out).lines().collect();
    assert_eq!(created.len(), 9, "{created:?}");
    assert!(
        created.iter().all(|l| l.ends_with(" created")),
        "{created:?}"
    );
    let auto = |name: &str| {
        ok(
            &kubectl,
            &["get", "ipp", name, "-o", "jsonpath={.spec.autoAssign}"],
        )
    };
    assert_eq!(auto("first-pool"), "true", "defaulted by the server");
    assert_eq!(auto("expensive"), "false");
    assert_eq!(table(&kubectl, &["l2adv"]).len(), 1 + 5);

    for (body, want) in MALFORMED {
        let yaml = format!("apiVersion: onehop.io/v1beta1\n{body}\n");
        let out = kubectl.apply(&yaml, &[]).expect("kubectl");
        assert!(!out.success, "accepted:\n{yaml}\n{}", out.stdout);
        assert!(
            out.stderr.contains(want),
            "for\n{yaml}\nwant {want:?}\ngot {}",
            out.stderr
        );
    }
    // Nothing malformed was stored.
    assert_eq!(table(&kubectl, &["ipp"]).len(), 1 + 4);

    // Unknown fields: `--validate=warn` stores the object without them and warns;
    // `--validate=false` drops them silently.
    let typo = "apiVersion: onehop.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: NAME}\n\
                spec: {addresses: [10.0.0.0/24], avoidBuggyIps: true}\n";
    let out = kubectl
        .apply(&typo.replace("NAME", "warned"), &["--validate=warn"])
        .expect("kubectl");
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Warning: unknown field \"spec.avoidBuggyIps\""),
        "{}",
        out.stderr
    );
    let out = kubectl
        .apply(&typo.replace("NAME", "ignored"), &["--validate=false"])
        .expect("kubectl");
    assert!(out.success && out.stderr.is_empty(), "{}", out.stderr);
    for name in ["warned", "ignored"] {
        let spec = ok(&kubectl, &["get", "ipp", name, "-o", "jsonpath={.spec}"]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&spec).expect("JSON"),
            json!({"addresses": ["10.0.0.0/24"], "autoAssign": true})
        );
    }
}

const SERVICE: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: https, port: 443, targetPort: 8443}
";

/// `kubectl get --chunk-size` pages through the server's `continue` tokens: Tables (the
/// default output) and JSON lists hold every object once, in as many LISTs as pages.
#[test]
fn kubectl_pages_lists_with_chunk_size() {
    let (server, kubectl) = setup();
    let store = server.store();
    for ns in ["a", "b"] {
        for i in 0..3 {
            store
                .put_value(
                    &store.resource("services").expect("services"),
                    ns,
                    json!({"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": format!("s{i}"), "namespace": ns},
                           "spec": {"ports": [{"port": 80}]}}),
                )
                .expect("seeded");
        }
    }
    server.reset_stats();
    let t = table(&kubectl, &["svc", "-A", "--chunk-size=2"]);
    let names: Vec<String> = t[1..]
        .iter()
        .map(|r| format!("{}/{}", r[0], r[1]))
        .collect();
    assert_eq!(names, ["a/s0", "a/s1", "a/s2", "b/s0", "b/s1", "b/s2"]);
    assert_eq!(server.request_count(Verb::List, "services"), 3);
    let out = ok(
        &kubectl,
        &["get", "svc", "-n", "b", "--chunk-size=2", "-o", "json"],
    );
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["s0", "s1", "s2"]);
    assert_eq!(server.request_count(Verb::List, "services"), 5);
}

#[tokio::test]
async fn kubectl_patches_merge_by_key_and_describe_lists_events() {
    let (server, kubectl) = setup();
    let client = server.client().expect("client");
    let run = |args: &'static [&'static str]| {
        let out = kubectl.run(args).expect("kubectl");
        assert!(out.success, "kubectl {args:?}: {}", out.stderr);
        out.stdout
    };
    applied(&kubectl.apply(SERVICE, &[]).expect("kubectl"));
    // kubectl apply after a change to one port: a strategic merge patch that names the
    // changed entry by its key (`port`) and the list's order; the other entry stays.
    let changed = SERVICE.replace("targetPort: 8080", "targetPort: 9090");
    applied(&kubectl.apply(&changed, &[]).expect("kubectl"));
    run(&["label", "-n", "default", "svc", "web", "tier=front"]);
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = svcs.get("web").await.expect("web");
    let spec = svc.spec.clone().expect("spec");
    let ports: Vec<(i32, String)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let target = match p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    n.to_string()
                }
                other => format!("{other:?}"),
            };
            (p.port, target)
        })
        .collect();
    assert_eq!(ports, [(80, "9090".into()), (443, "8443".into())]);
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));

    let row = |t: &[Vec<String>]| t[1].clone();
    let t = table(&kubectl, &["svc", "-n", "default"]);
    assert_eq!(
        t[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(
        row(&t)[..5],
        [
            "web",
            "LoadBalancer",
            "<none>",
            "<pending>",
            "80/TCP,443/TCP"
        ]
    );

    // What onehop's controller writes: the address in the status and an events.k8s.io
    // Event; `kubectl get svc` and `kubectl describe svc` show them.
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}});
    svcs.patch_status(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(status),
    )
    .await
    .expect("status");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "web.1", "namespace": "default"},
        "regarding": {"apiVersion": "v1", "kind": "Service", "name": "web",
                      "namespace": "default", "uid": svc.metadata.uid},
        "reason": "IPAllocated", "note": "Assigned IP [\"192.168.1.240\"]", "type": "Normal",
        "action": "Allocate", "eventTime": MicroTime(Timestamp::now()),
        "reportingController": "onehop.io/controller", "reportingInstance": "controller-0",
    }))
    .expect("event");
    Api::<Event>::namespaced(client, "default")
        .create(&PostParams::default(), &event)
        .await
        .expect("event");
    assert_eq!(
        row(&table(&kubectl, &["svc", "-n", "default"]))[3],
        "192.168.1.240"
    );
    check_describe(&run(&["describe", "-n", "default", "svc", "web"]));
    // `kubectl get events` (core/v1) lists it too.
    let t = table(&kubectl, &["events", "-n", "default"]);
    assert_eq!(t[0], ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    assert_eq!(t[1][1..4], ["Normal", "IPAllocated", "service/web"]);
}

/// `kubectl describe svc web` shows the address, the defaulted ports and the Event.
fn check_describe(described: &str) {
    let Some((_, events)) = described.split_once("Events:") else {
        panic!("no Events in:\n{described}");
    };
    let t = parse_table(events.trim_start_matches('\n'));
    assert_eq!(
        t[0],
        ["Type", "Reason", "Age", "From", "Message"],
        "{events}"
    );
    assert_eq!(t[1][..2], ["----", "------"]);
    let shown = &t[2];
    assert!(shown[2].ends_with('s'), "a few seconds old: {events}");
    assert_eq!(
        [&shown[0], &shown[1], &shown[3], &shown[4]],
        [
            "Normal",
            "IPAllocated",
            "onehop.io/controller",
            "Assigned IP [\"192.168.1.240\"]"
        ],
        "{events}"
    );
    let field = |name: &str| {
        described
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        field("LoadBalancer Ingress:"),
        "192.168.1.240",
        "{described}"
    );
    // The server's defaults for Service ports.
    assert_eq!(field("Port:"), "http  80/TCP", "{described}");
}
