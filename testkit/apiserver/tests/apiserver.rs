//! The test API server against the real `kube::Client` and `kube_runtime::watcher`.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeStatus, Service, ServicePort, ServiceSpec, ServiceStatus},
        discovery::v1::{Endpoint, EndpointSlice},
        events::v1::Event as EventV1,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, CustomResource, CustomResourceExt as _, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    core::Status,
    runtime::{WatchStreamExt as _, reflector, watcher, watcher::Event},
};
use onehop_apiserver::{ApiServer, ResourceDef, ServerConfig, Verb};
use onehop_testkit::{Netns, in_netns, unique_prefix};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn svc(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn setup() -> (ApiServer, Client) {
    let server = ApiServer::start_local().expect("server");
    let client = server.client().expect("client");
    (server, client)
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

#[tokio::test]
async fn typed_crud_and_selectors() {
    let (server, client) = setup();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "ns1");
    let pp = PostParams::default();
    let a = svcs
        .create(&pp, &svc("a", &[("app", "web"), ("tier", "fe")]))
        .await
        .unwrap();
    assert_eq!(a.metadata.namespace.as_deref(), Some("ns1"));
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let rv_a: u64 = a.resource_version().unwrap().parse().unwrap();
    svcs.create(&pp, &svc("b", &[("app", "db")])).await.unwrap();
    svcs.create(&pp, &svc("c", &[])).await.unwrap();
    Api::<Service>::namespaced(client.clone(), "ns2")
        .create(&pp, &svc("a", &[("app", "web")]))
        .await
        .unwrap();

    let e = api_err(svcs.create(&pp, &svc("a", &[])).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let e = api_err(svcs.get("zz").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert!(svcs.get_opt("zz").await.unwrap().is_none());
    assert_eq!(svcs.get("a").await.unwrap().uid(), a.uid());

    let sel = |s: &str| ListParams::default().labels(s);
    let list = svcs.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["a", "b", "c"]);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv > rv_a);
    assert_eq!(
        names(&svcs.list(&sel("app=web")).await.unwrap().items),
        ["a"]
    );
    assert_eq!(
        names(&svcs.list(&sel("app!=web")).await.unwrap().items),
        ["b", "c"]
    );
    assert_eq!(
        names(&svcs.list(&sel("app in (web,db)")).await.unwrap().items),
        ["a", "b"]
    );
    assert_eq!(
        names(&svcs.list(&sel("app notin (web)")).await.unwrap().items),
        ["b", "c"]
    );
    assert_eq!(
        names(&svcs.list(&sel("app")).await.unwrap().items),
        ["a", "b"]
    );
    assert_eq!(names(&svcs.list(&sel("!app")).await.unwrap().items), ["c"]);
    assert_eq!(
        names(&svcs.list(&sel("app==web,tier=fe")).await.unwrap().items),
        ["a"]
    );
    let fields = ListParams::default().fields("metadata.name=b");
    assert_eq!(names(&svcs.list(&fields).await.unwrap().items), ["b"]);
    let e = api_err(svcs.list(&sel("app in (web")).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));

    // Cluster-wide list of a namespaced resource.
    let all = Api::<Service>::all(client.clone())
        .list(&sel("app=web"))
        .await
        .unwrap();
    assert_eq!(
        all.items
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any()))
            .collect::<Vec<_>>(),
        ["ns1/a", "ns2/a"]
    );

    // Counters see it all; the direct store agrees with the API.
    assert_eq!(server.request_count(Verb::Create, "services"), 5);
    assert_eq!(server.request_count(Verb::List, "services"), 11);
    let stored = server.store().get::<Service>("ns1", "a").unwrap();
    assert_eq!(stored.uid(), a.uid());
}

/// The other types the agent and controller use.
#[tokio::test]
async fn nodes_slices_leases_events() {
    let (server, client) = setup();
    let pp = PostParams::default();
    let sel = |s: &str| ListParams::default().labels(s);
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .create(
            &pp,
            &Node {
                metadata: ObjectMeta {
                    name: Some("node-1".into()),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            },
        )
        .await
        .unwrap();
    assert!(n.metadata.namespace.is_none());
    assert_eq!(
        names(&nodes.list(&ListParams::default()).await.unwrap().items),
        ["node-1"]
    );

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "ns1");
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some("a-".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                "a".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".into()],
            ..Endpoint::default()
        }],
        ports: None,
    };
    let s1 = slices.create(&pp, &slice).await.unwrap();
    let s2 = slices.create(&pp, &slice).await.unwrap();
    assert!(s1.name_any().starts_with("a-") && s1.name_any().len() == 7);
    assert_ne!(s1.name_any(), s2.name_any());
    let by_svc = slices
        .list(&sel("kubernetes.io/service-name=a"))
        .await
        .unwrap();
    assert_eq!(by_svc.items.len(), 2);

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases
        .create(
            &pp,
            &Lease {
                metadata: ObjectMeta {
                    name: Some("onehop-leader".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("node-1".into()),
                    lease_duration_seconds: Some(15),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("node-1")
    );

    let events: Api<EventV1> = Api::namespaced(client.clone(), "ns1");
    let ev = events
        .create(
            &pp,
            &EventV1 {
                metadata: ObjectMeta {
                    generate_name: Some("a.".into()),
                    ..ObjectMeta::default()
                },
                event_time: Some(MicroTime(Timestamp::now())),
                reason: Some("Assigned".into()),
                note: Some("vip 192.0.2.1".into()),
                action: Some("Assign".into()),
                reporting_controller: Some("onehop.io/controller".into()),
                reporting_instance: Some("c-1".into()),
                type_: Some("Normal".into()),
                ..EventV1::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ev.note.as_deref(), Some("vip 192.0.2.1"));

    assert_eq!(
        server.request_count(Verb::Create, "endpointslices.discovery.k8s.io"),
        2
    );
    assert_eq!(
        server.request_count(Verb::Create, "events.events.k8s.io"),
        1
    );
}

#[tokio::test]
async fn replace_conflict_and_status_subresource() {
    let (server, client) = setup();
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let mut with_status = svc("a", &[]);
    with_status.status = Some(ServiceStatus::default());
    let created = svcs.create(&pp, &with_status).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // Replace with the current resourceVersion works; with the old one it conflicts.
    let mut bumped = created.clone();
    bumped.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    let bumped = svcs.replace("a", &pp, &bumped).await.unwrap();
    assert_eq!(bumped.metadata.generation, Some(2));
    assert_ne!(bumped.resource_version(), created.resource_version());
    let e = api_err(svcs.replace("a", &pp, &created).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let e = api_err(
        svcs.replace("nope", &pp, &svc("nope", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // Status subresource: only status changes, generation stays.
    let status = json!({
        "spec": {"ports": [{"port": 9999}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
    });
    let with_lb = svcs
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        with_lb
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.0.2.10")
    );
    assert_eq!(
        with_lb.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        81
    );
    assert_eq!(with_lb.metadata.generation, Some(2));

    // ...and the main resource ignores status.
    let labelled = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}, "status": null})),
        )
        .await
        .unwrap();
    assert!(labelled.status.as_ref().unwrap().load_balancer.is_some());
    assert_eq!(labelled.labels().get("x").map(String::as_str), Some("y"));
    assert_eq!(labelled.metadata.generation, Some(2), "labels are not spec");

    // A no-op patch changes nothing, not even the resourceVersion.
    let same = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), labelled.resource_version());

    // A stale resourceVersion in a merge patch is a precondition too.
    let stale = json!({"metadata": {"resourceVersion": created.resource_version()}, "spec": {}});
    let e = api_err(
        svcs.patch("a", &PatchParams::default(), &Patch::Merge(stale))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);

    // Node status as the kubelet writes it.
    server
        .store()
        .put(&Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
        .unwrap();
    let nodes: Api<Node> = Api::all(server.client().unwrap());
    let mut node = nodes.get_status("n1").await.unwrap();
    node.status = Some(NodeStatus {
        phase: Some("Running".into()),
        ..NodeStatus::default()
    });
    let node = nodes.replace_status("n1", &pp, &node).await.unwrap();
    assert_eq!(node.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(server.request_count(Verb::Update, "nodes/status"), 1);
    assert_eq!(server.request_count(Verb::Patch, "services/status"), 1);
}

#[tokio::test]
async fn patch_flavours_and_server_side_apply() {
    let (_server, client) = setup();
    let svcs: Api<Service> = Api::namespaced(client, "default");
    svcs.create(&PostParams::default(), &svc("a", &[("a", "1")]))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let j: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
    ]))
    .unwrap();
    let s = svcs.patch("a", &pp, &Patch::<()>::Json(j)).await.unwrap();
    assert_eq!(s.labels().len(), 2);
    // A failing `test` op is rejected.
    let j: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/a", "value": "nope"},
    ]))
    .unwrap();
    let e = api_err(
        svcs.patch("a", &pp, &Patch::<()>::Json(j))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);

    let s = svcs
        .patch(
            "a",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"b": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(s.labels().keys().collect::<Vec<_>>(), ["a"]);

    // Server-side apply: creates, merges, removes what the same manager dropped.
    let ssa = PatchParams::apply("onehop-test");
    let applied = |labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "labels": labels},
               "spec": {"ports": [{"port": 443}]}})
    };
    let b = svcs
        .patch(
            "b",
            &ssa,
            &Patch::Apply(applied(json!({"x": "1", "y": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(b.labels().len(), 2);
    assert!(b.metadata.uid.is_some());
    svcs.patch(
        "b",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"other": "z"}}})),
    )
    .await
    .unwrap();
    let b = svcs
        .patch("b", &ssa, &Patch::Apply(applied(json!({"x": "3"}))))
        .await
        .unwrap();
    assert_eq!(
        b.labels(),
        &BTreeMap::from([("other".into(), "z".into()), ("x".into(), "3".into())])
    );
    let e = api_err(
        svcs.patch(
            "b",
            &PatchParams::default(),
            &Patch::Apply(applied(json!({}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str()),
        (400, "BadRequest"),
        "no fieldManager"
    );
    let e = api_err(
        svcs.patch("zz", &pp, &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn finalizers_and_delete() {
    let (server, client) = setup();
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let mut s = svc("a", &[]);
    s.metadata.finalizers = Some(vec!["onehop.io/vip".into()]);
    svcs.create(&PostParams::default(), &s).await.unwrap();
    svcs.create(&PostParams::default(), &svc("b", &[]))
        .await
        .unwrap();

    let pending = svcs.delete("a", &DeleteParams::default()).await.unwrap();
    let pending = pending.left().expect("a finalizer keeps the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(
        svcs.get("a")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // Deleting again changes nothing.
    let again = svcs.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        again.left().unwrap().resource_version(),
        pending.resource_version()
    );

    // Removing the last finalizer deletes it.
    svcs.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(svcs.get_opt("a").await.unwrap().is_none());

    let gone = svcs.delete("b", &DeleteParams::default()).await.unwrap();
    let status = gone.right().expect("no finalizer: deleted at once");
    assert_eq!(status.details.unwrap().name, "b");
    let e = api_err(
        svcs.delete("b", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // Preconditions.
    svcs.create(&PostParams::default(), &svc("c", &[]))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let e = api_err(svcs.delete("c", &dp).await.unwrap_err());
    assert_eq!(e.code, 409);

    // delete_collection with a selector.
    svcs.create(&PostParams::default(), &svc("d", &[("del", "1")]))
        .await
        .unwrap();
    svcs.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("del"),
    )
    .await
    .unwrap();
    assert_eq!(
        names(&svcs.list(&ListParams::default()).await.unwrap().items),
        ["c"]
    );
    assert_eq!(server.request_count(Verb::DeleteCollection, "services"), 1);
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "onehop.io",
    version = "v1alpha1",
    kind = "VipPool",
    namespaced,
    status = "VipPoolStatus"
)]
pub struct VipPoolSpec {
    cidr: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct VipPoolStatus {
    allocated: u32,
}

#[tokio::test]
async fn custom_resources() {
    let (server, client) = setup();
    let pools: Api<VipPool> = Api::namespaced(client.clone(), "default");
    let pool = VipPool::new(
        "p",
        VipPoolSpec {
            cidr: "192.0.2.0/24".into(),
        },
    );
    // Not served until registered.
    let e = api_err(
        pools
            .create(&PostParams::default(), &pool)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // Installing the CRD registers it, status subresource included.
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &VipPool::crd())
        .await
        .unwrap();
    let rd = server.store().resource("vippools.onehop.io").unwrap();
    assert_eq!(
        rd,
        ResourceDef::new("onehop.io", "v1alpha1", "vippools", "VipPool").with_status()
    );

    let mut with_status = pool.clone();
    with_status.status = Some(VipPoolStatus { allocated: 7 });
    let p = pools
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(p.status.is_none(), "status is dropped on create");
    let p = pools
        .patch_status(
            "p",
            &PatchParams::apply("ctl"),
            &Patch::Apply(
                json!({"apiVersion": "onehop.io/v1alpha1", "kind": "VipPool",
                                 "status": {"allocated": 3}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().allocated, 3);
    assert_eq!(p.spec.cidr, "192.0.2.0/24");
    let p = pools
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cidr": "198.51.100.0/24"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
    assert_eq!(p.status.unwrap().allocated, 3);

    // A cluster-scoped resource registered directly.
    server
        .store()
        .register(ResourceDef::new("onehop.io", "v1alpha1", "things", "Thing").cluster_scoped());
    let things: Api<kube::api::DynamicObject> = Api::all_with(
        client,
        &kube::api::ApiResource {
            group: "onehop.io".into(),
            version: "v1alpha1".into(),
            api_version: "onehop.io/v1alpha1".into(),
            kind: "Thing".into(),
            plural: "things".into(),
        },
    );
    let t = things
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "onehop.io/v1alpha1", "kind": "Thing",
                                          "metadata": {"name": "t"}, "data": 1}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(t.data["data"], 1);
}

/// The next watcher event, skipping nothing; fails the test after `T`.
async fn next<S, K>(stream: &mut S) -> Event<K>
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(T, stream.next())
        .await
        .expect("watcher event in time")
        .expect("stream open")
        .expect("no watcher error")
}

fn ev_name<K: kube::Resource>(e: &Event<K>) -> String {
    match e {
        Event::Init => "Init".into(),
        Event::InitApply(o) => format!("InitApply {}", o.name_any()),
        Event::InitDone => "InitDone".into(),
        Event::Apply(o) => format!("Apply {}", o.name_any()),
        Event::Delete(o) => format!("Delete {}", o.name_any()),
    }
}

#[tokio::test]
async fn watcher_sees_initial_state_and_changes() {
    let (server, client) = setup();
    let store = server.store();
    store.put(&svc("a", &[])).unwrap();
    store.put(&svc("b", &[])).unwrap();
    let svcs: Api<Service> = Api::namespaced(client, "default");

    let configs = [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ];
    for (round, config) in configs.into_iter().enumerate() {
        let mut w = watcher(svcs.clone(), config).boxed();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(ev_name(&next(&mut w).await));
        }
        assert_eq!(got, ["Init", "InitApply a", "InitApply b", "InitDone"]);
        svcs.create(&PostParams::default(), &svc("c", &[]))
            .await
            .unwrap();
        assert_eq!(ev_name(&next(&mut w).await), "Apply c");
        svcs.patch(
            "a",
            &PatchParams::apply("t"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"labels": {"round": round.to_string()}}})),
        )
        .await
        .unwrap();
        assert_eq!(ev_name(&next(&mut w).await), "Apply a");
        svcs.delete("c", &DeleteParams::default()).await.unwrap();
        assert_eq!(ev_name(&next(&mut w).await), "Delete c");
        // Another namespace is not this watch's business; a direct write is.
        let mut other = svc("z", &[]);
        other.metadata.namespace = Some("elsewhere".into());
        store.put(&other).unwrap();
        store.put(&svc("d", &[])).unwrap();
        assert_eq!(ev_name(&next(&mut w).await), "Apply d");
        store.delete::<Service>("default", "d").unwrap();
        assert_eq!(ev_name(&next(&mut w).await), "Delete d");
    }
    assert_eq!(server.request_count(Verb::List, "services"), 1);
    assert_eq!(server.request_count(Verb::Watch, "services"), 2);
}

fn watch_params() -> WatchParams {
    WatchParams::default().timeout(30)
}

#[tokio::test]
async fn raw_watch_selectors_bookmarks_and_410() {
    let server = ApiServer::start_with(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        ServerConfig {
            history_limit: 3,
            bookmark_interval: Duration::from_millis(100),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let client = server.client().unwrap();
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let a = svcs
        .create(&PostParams::default(), &svc("a", &[]))
        .await
        .unwrap();
    let rv = a.resource_version().unwrap();

    // A label-filtered watch sees objects enter (ADDED) and leave (DELETED) the selection.
    let mut w = svcs
        .watch(&watch_params().labels("app=web").disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"app": v}}}));
    svcs.patch("a", &PatchParams::default(), &label("web"))
        .await
        .unwrap();
    svcs.patch("a", &PatchParams::default(), &label("db"))
        .await
        .unwrap();
    let kinds: Vec<String> = (&mut w)
        .take(2)
        .map(|e| match e.unwrap() {
            WatchEvent::Added(s) => format!("ADDED {}", s.labels()["app"]),
            WatchEvent::Deleted(s) => format!("DELETED {}", s.labels()["app"]),
            other => format!("{other:?}"),
        })
        .collect()
        .await;
    assert_eq!(kinds, ["ADDED web", "DELETED db"]);

    // Bookmarks on silence carry the latest resourceVersion.
    let now = server.store().resource_version().to_string();
    let mut w = svcs.watch(&watch_params(), &now).await.unwrap().boxed();
    match tokio::time::timeout(T, w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // History holds 3 changes: resuming from before them is 410 Expired, in the stream.
    for i in 0..4 {
        server.store().put(&svc(&format!("x{i}"), &[])).unwrap();
    }
    let mut w = svcs.watch(&watch_params(), &rv).await.unwrap().boxed();
    match tokio::time::timeout(T, w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(
        w.try_next().await.unwrap().is_none(),
        "stream ends after 410"
    );
    // A version this server never reached (the client saw another server): 410 too.
    let future = (server.store().resource_version() + 100).to_string();
    let mut w = svcs.watch(&watch_params(), &future).await.unwrap().boxed();
    match tokio::time::timeout(T, w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    let e = api_err(
        svcs.list(
            &ListParams::default()
                .at(&rv)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 410);
    let Err(e) = svcs.watch(&watch_params(), "abc").await else {
        panic!("a bad resourceVersion is refused")
    };
    let e = api_err(e);
    assert_eq!(e.code, 400);

    // timeoutSeconds ends the response.
    let now = server.store().resource_version().to_string();
    let mut w = svcs
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &now)
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(5), w.try_next()).await;
    assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watcher_recovers_from_outage() {
    let (server, client) = setup();
    let store = server.store();
    store.put(&svc("a", &[])).unwrap();
    store.put(&svc("b", &[])).unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(writer, watcher(svcs.clone(), watcher::Config::default()))
        .default_backoff()
        .boxed();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errs = errors.clone();
    let task = tokio::spawn(stream.for_each(move |r| {
        if r.is_err() {
            errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        async {}
    }));
    let state = |r: &reflector::Store<Service>| {
        let mut v: Vec<String> = r
            .state()
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s.name_any(),
                    s.labels().get("v").cloned().unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    };
    wait_for("initial state", || state(&reader) == ["a:", "b:"]).await;

    // Outage 1: changes while down arrive as events once the server is back (resume from
    // the last resourceVersion).
    server.set_available(false);
    let e = svcs.get("a").await.unwrap_err();
    assert!(
        !matches!(e, kube::Error::Api(_)),
        "refused, not answered: {e:?}"
    );
    store.put(&svc("a", &[("v", "1")])).unwrap();
    store.delete::<Service>("default", "b").unwrap();
    store.put(&svc("c", &[])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state(&reader),
        ["a:", "b:"],
        "nothing gets through an outage"
    );
    let watches = server.request_count(Verb::Watch, "services");
    server.set_available(true);
    wait_for("changes made during the outage", || {
        state(&reader) == ["a:1", "c:"]
    })
    .await;
    assert!(errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(server.request_count(Verb::Watch, "services") > watches);

    // Outage 2 with the history compacted meanwhile: the resumed watch gets 410 and the
    // watcher re-lists.
    let lists = server.request_count(Verb::List, "services");
    server.set_available(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.put(&svc("d", &[])).unwrap();
    store.delete::<Service>("default", "a").unwrap();
    store.compact_history();
    server.set_available(true);
    wait_for("the re-listed state", || state(&reader) == ["c:", "d:"]).await;
    assert!(server.request_count(Verb::List, "services") > lists);
    task.abort();
}

#[tokio::test]
async fn write_log_and_rates() {
    let (server, client) = setup();
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let start = std::time::Instant::now();
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("l".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec::default()),
            },
        )
        .await
        .unwrap();
    for i in 0..10 {
        leases
            .patch(
                "l",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"leaseTransitions": i}})),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    leases
        .patch(
            "l",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "x"}})),
        )
        .await
        .unwrap();
    leases.get("l").await.unwrap();
    let writes = server.writes();
    assert_eq!(writes.len(), 12);
    assert!(
        writes
            .iter()
            .all(|w| w.resource == "leases.coordination.k8s.io")
    );
    assert!(writes.iter().all(|w| w.at >= start && w.code < 300));
    assert_eq!(writes[0].verb, Verb::Create);
    assert!(writes.windows(2).all(|p| p[0].at <= p[1].at));
    assert_eq!(server.peak_writes(Duration::from_secs(1)), 11);
    assert_eq!(
        server.request_count(Verb::Patch, "leases.coordination.k8s.io"),
        11
    );
    assert_eq!(
        server.request_count(Verb::Get, "leases.coordination.k8s.io"),
        1
    );
    server.reset_stats();
    assert!(server.writes().is_empty());
    // A failed write is still a write.
    let e = leases
        .delete("nope", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_err(e).code, 404);
    assert_eq!(server.writes()[0].code, 404);
}

#[tokio::test]
async fn errors_are_status_objects() {
    let (server, client) = setup();
    // Unknown resource path: 404 NotFound Status.
    let req = hyper::Request::get(format!("{}/apis/nope/v1/things", server.url()))
        .body(Vec::new())
        .unwrap();
    let e = api_err(client.request::<serde_json::Value>(req).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    // Method not allowed: POST to an item.
    let req = hyper::Request::post(format!(
        "{}/api/v1/namespaces/default/services/a",
        server.url()
    ))
    .body(b"{}".to_vec())
    .unwrap();
    let e = api_err(client.request::<serde_json::Value>(req).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (405, "MethodNotAllowed"));
    // Unsupported patch type.
    let req = hyper::Request::patch(format!(
        "{}/api/v1/namespaces/default/services/a",
        server.url()
    ))
    .header("content-type", "text/plain")
    .body(b"{}".to_vec())
    .unwrap();
    assert_eq!(
        api_err(client.request::<serde_json::Value>(req).await.unwrap_err()).code,
        415
    );
    // Wrong kind in the body.
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let req = hyper::Request::post(format!(
        "{}/api/v1/namespaces/default/services",
        server.url()
    ))
    .body(br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#.to_vec())
    .unwrap();
    assert_eq!(
        api_err(client.request::<serde_json::Value>(req).await.unwrap_err()).code,
        400
    );
    assert!(svcs.get_opt("x").await.unwrap().is_none());
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
}

/// The way agent tests use it: the listener is bound inside a network namespace and
/// clients in that namespace reach the server.
#[test]
fn serves_inside_a_network_namespace() {
    let ns = Netns::create(&format!("{}api", unique_prefix("oh"))).expect("netns");
    let listener = in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let server = ApiServer::start(listener).unwrap();
    server.store().put(&svc("a", &[])).unwrap();
    let url = server.url().to_owned();
    let names = in_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
            let svcs: Api<Service> = Api::default_namespaced(client);
            names(&svcs.list(&ListParams::default()).await.unwrap().items)
        })
    })
    .unwrap();
    assert_eq!(names, ["a"]);
    assert_eq!(server.request_count(Verb::List, "services"), 1);
}

#[test]
fn direct_store_access() {
    let server = ApiServer::start_local().unwrap();
    let store = server.store();
    let mut s = svc("a", &[]);
    s.status = Some(ServiceStatus::default());
    let a = store.put(&s).unwrap();
    assert!(a.status.is_some(), "direct writes keep status");
    assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(store.resource_version(), 1);
    let a2 = store.put(&s).unwrap();
    assert_eq!(a2.uid(), a.uid(), "put replaces, keeping identity");
    assert_eq!(store.list::<Service>().unwrap().len(), 1);
    assert!(store.get::<Service>("default", "a").is_some());
    assert!(store.delete::<Service>("default", "a").unwrap());
    assert!(store.get::<Service>("default", "a").is_none());
    assert!(
        store
            .put(&VipPool::new("p", VipPoolSpec::default()))
            .is_err(),
        "unregistered"
    );
    assert!(
        server.request_counts().is_empty(),
        "direct access is not an API request"
    );
}

/// The controller's way of writing Events: kube-runtime's recorder creates one, then
/// patches its series on repeats.
#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() {
    use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
    let (server, client) = setup();
    let s = server.store().put(&svc("a", &[])).unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "onehop-controller".into(),
            instance: Some("c-1".into()),
        },
    );
    let note = Note {
        type_: EventType::Normal,
        reason: "VipAssigned".into(),
        note: Some("192.0.2.1".into()),
        action: "Assign".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&s, &());
    recorder.publish(&note, &reference).await.unwrap();
    recorder.publish(&note, &reference).await.unwrap();
    let events: Vec<EventV1> = server.store().list().unwrap();
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev.reason.as_deref(), Some("VipAssigned"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("a"));
    assert_eq!(ev.series.as_ref().unwrap().count, 2);
    assert_eq!(
        server.request_count(Verb::Create, "events.events.k8s.io"),
        1
    );
    assert_eq!(server.request_count(Verb::Patch, "events.events.k8s.io"), 1);
}

/// Leader election's building block: two candidates read the same Lease, both try to take
/// it; exactly one replace wins, the other gets 409 Conflict.
#[tokio::test]
async fn lease_takeover_is_optimistic() {
    let (_server, client) = setup();
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("onehop-leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let seen = leases.get("onehop-leader").await.unwrap();
    let take = |who: &str| {
        let mut l = seen.clone();
        l.spec.as_mut().unwrap().holder_identity = Some(who.into());
        let leases = leases.clone();
        async move {
            leases
                .replace("onehop-leader", &PostParams::default(), &l)
                .await
        }
    };
    let (a, b) = tokio::join!(take("node-a"), take("node-b"));
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one candidate must win: {other:?}"),
    };
    assert_eq!(api_err(lost).code, 409);
    let holder = leases
        .get("onehop-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder, won.spec.unwrap().holder_identity);
}

/// `Accept: ...;as=Table` (what `kubectl get` sends): lists, gets and watches answer
/// `meta.k8s.io/v1` Tables, a custom resource's with its CRD's printer columns.
#[tokio::test]
async fn tables_for_lists_gets_and_watches() {
    let (_server, client) = setup();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = VipPool::crd();
    crd.spec.versions[0].additional_printer_columns = Some(
        serde_json::from_value(json!([
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Allocated", "type": "integer", "jsonPath": ".status.allocated"},
        ]))
        .unwrap(),
    );
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let pools: Api<VipPool> = Api::namespaced(client.clone(), "ns1");
    let cidr = "192.0.2.0/24".to_owned();
    pools
        .create(
            &PostParams::default(),
            &VipPool::new("a", VipPoolSpec { cidr }),
        )
        .await
        .unwrap();
    let get = |path: &str| {
        hyper::Request::get(path)
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .unwrap()
    };
    let base = "/apis/onehop.io/v1alpha1/namespaces/ns1/vippools";
    let list: serde_json::Value =
        serde_json::from_str(&client.request_text(get(base)).await.unwrap()).unwrap();
    assert_eq!(list["kind"], "Table");
    let names: Vec<&str> = list["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Name", "CIDR", "Allocated"]);
    assert_eq!(list["rows"][0]["cells"], json!(["a", "192.0.2.0/24", null]));
    assert_eq!(list["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let one: serde_json::Value = serde_json::from_str(
        &client
            .request_text(get(&format!("{base}/a?includeObject=Object")))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(one["rows"][0]["object"]["spec"]["cidr"], "192.0.2.0/24");
    let watched = client
        .request_text(get(&format!("{base}?watch=1&timeoutSeconds=1")))
        .await
        .unwrap();
    let events: Vec<serde_json::Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{watched}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert_eq!(events[0]["object"]["rows"][0]["cells"][0], "a");
    // A built-in kind: the Kubernetes printer's columns.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "ns1");
    svcs.create(&PostParams::default(), &svc("web", &[]))
        .await
        .unwrap();
    let t: serde_json::Value = serde_json::from_str(
        &client
            .request_text(get("/api/v1/namespaces/ns1/services"))
            .await
            .unwrap(),
    )
    .unwrap();
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[1], "LoadBalancer");
    assert_eq!(cells[3], "<pending>");
    assert_eq!(cells[4], "80/TCP", "the server defaulted the protocol");
}

/// Custom resources are admitted against their CRD's schema as a real server does.
#[tokio::test]
async fn custom_resources_are_validated_pruned_and_defaulted() {
    let (_server, client) = setup();
    let mut crd = VipPool::crd();
    let schema = crd.spec.versions[0].schema.as_mut().unwrap();
    let mut s = serde_json::to_value(&schema.open_api_v3_schema).unwrap();
    s["properties"]["spec"]["properties"]["mode"] =
        json!({"type": "string", "enum": ["l2", "bgp"], "default": "l2"});
    schema.open_api_v3_schema = Some(serde_json::from_value(s).unwrap());
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = kube::api::ApiResource::erase::<VipPool>(&());
    let pools: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "ns1", &ar);
    let create = |body: serde_json::Value| {
        let pools = pools.clone();
        async move {
            let mut obj = json!({"apiVersion": "onehop.io/v1alpha1", "kind": "VipPool"});
            onehop_apiserver::json::merge(&mut obj, body);
            pools
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(obj).unwrap(),
                )
                .await
        }
    };
    let ok = create(json!({"metadata": {"name": "ok"}, "spec": {"cidr": "10.0.0.0/8", "x": 1}}))
        .await
        .unwrap();
    assert_eq!(
        ok.data["spec"],
        json!({"cidr": "10.0.0.0/8", "mode": "l2"}),
        "the unknown field is pruned (fieldValidation defaults to Warn), the default applied"
    );
    for (body, field, reason) in [
        (
            json!({"metadata": {"name": "a"}, "spec": {}}),
            "spec.cidr",
            "FieldValueRequired",
        ),
        (
            json!({"metadata": {"name": "b"}, "spec": {"cidr": 5}}),
            "spec.cidr",
            "FieldValueTypeInvalid",
        ),
        (
            json!({"metadata": {"name": "c"}, "spec": {"cidr": "x", "mode": "ospf"}}),
            "spec.mode",
            "FieldValueNotSupported",
        ),
    ] {
        let e = api_err(create(body).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{e:?}");
        assert!(
            e.message.starts_with("VipPool.onehop.io \""),
            "{}",
            e.message
        );
        let causes = e.details.map(|d| d.causes).unwrap_or_default();
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, field);
        assert_eq!(causes[0].reason, reason);
    }
    // A status write is validated too.
    let e = api_err(
        pools
            .patch_status(
                "ok",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"allocated": "three"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{e:?}");
    // Custom resources have no patch merge keys: a strategic merge patch is refused.
    let e = api_err(
        pools
            .patch(
                "ok",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"cidr": "10.0.0.0/16"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 415, "{e:?}");
}

/// A server keeping 50 changes, with Services s0..s9 in namespaces a and b (label `app`:
/// even or odd).
async fn paging_setup() -> (ApiServer, Client) {
    let server = ApiServer::start_with(
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        ServerConfig {
            history_limit: 50,
            ..ServerConfig::default()
        },
    )
    .expect("server");
    let client = server.client().expect("client");
    for ns in ["a", "b"] {
        let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
        for i in 0..10 {
            let app = if i % 2 == 0 { "even" } else { "odd" };
            svcs.create(
                &PostParams::default(),
                &svc(&format!("s{i}"), &[("app", app)]),
            )
            .await
            .expect("created");
        }
    }
    (server, client)
}

/// Lists paged as kube-apiserver pages them: `limit`, `continue`, `remainingItemCount`, every
/// page at the first page's resourceVersion while objects change between the pages.
#[tokio::test]
async fn paged_lists_hold_the_first_pages_version() {
    let (_server, client) = paging_setup().await;
    let all: Api<Service> = Api::all(client.clone());
    let whole = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(whole.items.len(), 20);
    assert!(whole.metadata.continue_.is_none());

    // Pages of 3 while, between them, one not yet listed is deleted, one changed and one
    // created: the pages hold the list as it was at the first page, once each.
    let mut lp = ListParams::default().limit(3);
    let mut paged = Vec::new();
    let mut page_count = 0;
    loop {
        let page = all.list(&lp).await.unwrap();
        page_count += 1;
        assert_eq!(
            page.metadata.resource_version,
            whole.metadata.resource_version
        );
        paged.extend(page.items);
        let Some(token) = page.metadata.continue_ else {
            assert_eq!(page.metadata.remaining_item_count, None);
            break;
        };
        assert_eq!(
            page.metadata.remaining_item_count,
            Some(20 - i64::try_from(paged.len()).unwrap())
        );
        if page_count == 1 {
            let b: Api<Service> = Api::namespaced(client.clone(), "b");
            b.delete("s9", &DeleteParams::default()).await.unwrap();
            b.patch(
                "s8",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "changed"}}})),
            )
            .await
            .unwrap();
            b.create(&PostParams::default(), &svc("s99", &[]))
                .await
                .unwrap();
        }
        lp = lp.continue_token(&token);
    }
    assert_eq!(page_count, 7);
    let key = |s: &Service| (s.namespace(), s.name_any(), s.resource_version());
    assert_eq!(
        paged.iter().map(key).collect::<Vec<_>>(),
        whole.items.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(paged[18].labels()["app"], "even", "b/s8 as it was");
    // A new list sees the writes.
    let now = all.list(&ListParams::default().limit(100)).await.unwrap();
    assert_ne!(
        now.metadata.resource_version,
        whole.metadata.resource_version
    );
    assert_eq!(now.items.len(), 20);
    assert!(now.items.iter().any(|s| s.name_any() == "s99"));

    // With a selector: pages of what it selects, no remaining count (unknown to a real
    // server), in one namespace.
    let a: Api<Service> = Api::namespaced(client.clone(), "a");
    let mut lp = ListParams::default().labels("app=odd").limit(2);
    let mut odd = Vec::new();
    loop {
        let page = a.list(&lp).await.unwrap();
        assert_eq!(page.metadata.remaining_item_count, None);
        odd.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_ {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(odd, ["s1", "s3", "s5", "s7", "s9"]);

    // A list at an exact past version is that version's, paged or not.
    let then = all
        .list(
            &ListParams::default()
                .at(whole.metadata.resource_version.as_deref().unwrap())
                .matching(kube::api::VersionMatch::Exact)
                .limit(500),
        )
        .await
        .unwrap();
    assert_eq!(
        then.items.iter().map(key).collect::<Vec<_>>(),
        whole.items.iter().map(key).collect::<Vec<_>>()
    );
}

/// The errors kube-apiserver answers for a continue token it cannot serve, and a
/// kube-runtime watcher (the agent's initial LIST) paging through a small page size.
#[tokio::test]
async fn paged_list_errors_and_the_watchers_pages() {
    let (server, client) = paging_setup().await;
    let all: Api<Service> = Api::all(client.clone());
    // What kube-apiserver refuses: a token that is not one (400), a token with a
    // resourceVersion (400), a token whose version the history no longer reaches (410:
    // the client starts the list again).
    let first = all.list(&ListParams::default().limit(5)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    let e = api_err(
        all.list(&ListParams::default().continue_token("not-a-token"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    let raw = client
        .request_text(
            hyper::Request::get(format!(
                "/api/v1/services?limit=5&continue={token}&resourceVersion=1"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(raw).code, 400);
    let b: Api<Service> = Api::namespaced(client.clone(), "b");
    let e = api_err(
        b.list(&ListParams::default().limit(5).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.code, 400,
        "a token of the cluster-wide list in namespace b"
    );
    // The history keeps 50 changes: the 51st since the token's version drops it.
    for i in 0..51 {
        b.create(&PostParams::default(), &svc(&format!("t{i}"), &[]))
            .await
            .unwrap();
    }
    let e = api_err(
        all.list(&ListParams::default().limit(5).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));

    // kube-runtime's watcher pages its initial list (the agent's is 500 a page).
    server.reset_stats();
    let (reader, writer) = reflector::store::<Service>();
    let watch = watcher(all.clone(), watcher::Config::default().page_size(4))
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(watch.for_each(|_| futures::future::ready(())));
    tokio::time::timeout(T, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    task.abort();
    let listed = all.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(reader.state().len(), listed);
    assert_eq!(
        server.request_count(Verb::List, "services"),
        u64::try_from(listed.div_ceil(4) + 1).unwrap(),
        "one LIST a page, then the check's own"
    );
}
