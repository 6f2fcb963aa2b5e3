use super::*;
use crate::plan::testing::{NODE, limits, parse};
use crate::plan::{
    model::{Backend, MaglevSize, NatPorts, Protocol, Service, ServicePort},
    services_file,
};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn plan_ok(prev: &DataplaneState, file: &NodeServices) -> DataplaneState {
    plan(prev, file, &NODE, &limits()).unwrap_or_else(|e| panic!("{e}"))
}

fn plan_releasing(
    prev: &DataplaneState,
    file: &NodeServices,
    release: &BTreeSet<u32>,
) -> DataplaneState {
    plan_with_options(
        prev,
        file,
        &NODE,
        &limits(),
        PlanOptions {
            reuse_tables: false,
            release,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn size251() -> MaglevSize {
    MaglevSize::new(251).unwrap()
}

fn key(vip: &str, port: u16, proto: u8) -> ServiceKey {
    ServiceKey::new(ip4(vip).octets(), port, proto)
}

/// Tables of 251 slots, the size two backends had when sizes followed the
/// backend count: the offsets below were written for it.
const FILE: &str = "\
nat_ports: { min: 62000, max: 62999 }
maglev_table_size: 251
announce: [192.168.60.1]
services:
  - name: web
    vip: 192.168.60.1
    ports:
      - { port: 80, target_port: 8080 }
      - { port: 53, protocol: UDP }
    session_affinity: ClientIP
    session_affinity_timeout_seconds: 60
    source_ranges: [10.0.0.0/8]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.10 }
      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }
  - name: empty
    vip: 192.168.60.2
    ports: [{ port: 443 }]
";

#[test]
fn plans_every_map() {
    let s = plan_ok(&DataplaneState::default(), &parse(FILE));
    assert_eq!(
        s.config,
        DatapathConfig::new(
            [192, 168, 50, 10],
            7,
            [2, 0, 0, 0, 0, 1],
            62000,
            62999,
            true
        )
        .with_hash_seed(0x5eed_0001)
        .with_node_ip6(NODE.ip6.expect("the test node's IPv6 address").octets())
    );
    assert_eq!(
        s.vips,
        BTreeMap::from([
            ([192, 168, 60, 1], vip_flags::SERVICE | vip_flags::ANNOUNCE),
            ([192, 168, 60, 2], vip_flags::SERVICE),
            ([192, 168, 50, 10], vip_flags::NODE),
        ])
    );
    // Backends sorted by identity get ids 0.. in order.
    let local = backend_flags::VALID | backend_flags::LOCAL;
    let remote = backend_flags::VALID;
    let be = |ip: [u8; 4], node: [u8; 4], port, flags| BackendValue::new(ip, node, port, flags);
    assert_eq!(
        s.backends,
        BTreeMap::from([
            (0, be([10, 42, 0, 5], [192, 168, 50, 10], 53, local)),
            (1, be([10, 42, 0, 5], [192, 168, 50, 10], 8080, local)),
            (2, be([10, 42, 1, 7], [192, 168, 50, 11], 53, remote)),
            (3, be([10, 42, 1, 7], [192, 168, 50, 11], 8080, remote)),
        ])
    );
    // Frontends in key order: .1:53/UDP, .1:80/TCP, .2:443/TCP.
    let dns = s.services[&key("192.168.60.1", 53, 17)];
    let web = s.services[&key("192.168.60.1", 80, 6)];
    let empty = s.services[&key("192.168.60.2", 443, 6)];
    assert_eq!(s.services.len(), 3);
    let flags = service_flags::AFFINITY | service_flags::SOURCE_RANGES;
    assert_eq!(
        (
            dns.id,
            dns.maglev_offset,
            dns.maglev_len,
            dns.flags,
            dns.affinity_timeout_s
        ),
        (0, 0, 251, flags, 60)
    );
    assert_eq!(
        (
            web.id,
            web.maglev_offset,
            web.maglev_len,
            web.flags,
            web.affinity_timeout_s
        ),
        (1, 251, 251, flags, 60)
    );
    assert_eq!(
        (
            empty.id,
            empty.maglev_len,
            empty.flags,
            empty.affinity_timeout_s
        ),
        (2, 0, 0, 0)
    );
    assert_eq!(s.maglev.len(), 2);
    assert_eq!(
        s.maglev[&0].to_vec(),
        maglev::build(&[("10.42.0.5:53", 0), ("10.42.1.7:53", 2)], size251())
    );
    assert_eq!(
        s.maglev[&251].to_vec(),
        maglev::build(&[("10.42.0.5:8080", 1), ("10.42.1.7:8080", 3)], size251())
    );
    let ten = Cidr::parse("10.0.0.0/8").unwrap();
    assert_eq!(
        s.src_ranges,
        BTreeSet::from([
            SrcRangeKey::new(0, ten).unwrap(),
            SrcRangeKey::new(1, ten).unwrap()
        ])
    );
    let k = SrcRangeKey::new(1, ten).unwrap();
    assert_eq!(k.prefixlen, 40);
    assert_eq!(k.data.service_id, [0, 0, 0, 1]);
    assert_eq!(k.data.addr, [10, 0, 0, 0]);
    assert_eq!(k.cidr(), Some(ten));
    s.allocators(&limits()).unwrap();
}

#[test]
fn replanning_changes_nothing() {
    let file = parse(FILE);
    let a = plan_ok(&DataplaneState::default(), &file);
    assert_eq!(plan_ok(&a, &file), a);
    // Same as a restart that read `a` back from the maps.
    let read_back = a.clone();
    assert_eq!(plan_ok(&read_back, &file), a);
}

#[test]
fn ids_and_regions_are_kept_and_never_reused_at_once() {
    let a = plan_ok(&DataplaneState::default(), &parse(FILE));
    // Drop backend 10.42.0.5, add 10.42.2.9, drop the empty service, add one.
    let b_text = FILE
        .replace(
            "      - { ip: 10.42.0.5, node_ip: 192.168.50.10 }\n",
            "      - { ip: 10.42.2.9, node_ip: 192.168.50.12 }\n",
        )
        .replace(
            "name: empty\n    vip: 192.168.60.2",
            "name: new\n    vip: 192.168.60.3",
        );
    let b = plan_ok(&a, &parse(&b_text));
    // 10.42.1.7 keeps its ids 2 and 3; the new pod gets 4 and 5, not the
    // ids 0 and 1 that `a` still uses (and that drain, retired, in `b`).
    let ids: BTreeMap<(IpAddr, u16), u32> = b
        .backends
        .iter()
        .filter(|(_, v)| v.flags & backend_flags::GONE == 0)
        .map(|(&id, v)| ((IpAddr::from(v.ip), v.port), id))
        .collect();
    assert_eq!(retired(&b).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        ids,
        BTreeMap::from([
            ((ip("10.42.1.7"), 53), 2),
            ((ip("10.42.1.7"), 8080), 3),
            ((ip("10.42.2.9"), 53), 4),
            ((ip("10.42.2.9"), 8080), 5),
        ])
    );
    // Services keep ids; the new one does not take id 2 of the removed one.
    assert_eq!(b.services[&key("192.168.60.1", 53, 17)].id, 0);
    assert_eq!(b.services[&key("192.168.60.1", 80, 6)].id, 1);
    assert_eq!(b.services[&key("192.168.60.3", 443, 6)].id, 3);
    // Changed tables moved to regions disjoint from a's.
    let a_regions: Vec<Region> = a.regions().map(|(_, r)| r).collect();
    for (_, r) in b.regions() {
        assert!(
            a_regions.iter().all(|o| !o.overlaps(r)),
            "{r} overlaps {a_regions:?}"
        );
    }
    // Once `b` is current and its retired slots released, freed ids and
    // slots are reused.
    let release: BTreeSet<u32> = retired(&b).collect();
    let b = plan_releasing(&b, &parse(&b_text), &release);
    assert!(retired(&b).next().is_none());
    let c_text = b_text.replace("10.42.2.9", "10.42.3.1");
    let c = plan_ok(&b, &parse(&c_text));
    let new_ids: BTreeSet<u32> = c
        .backends
        .iter()
        .filter(|(_, v)| v.ip == [10, 42, 3, 1])
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(new_ids, BTreeSet::from([0, 1]));
    assert_eq!(c.regions().map(|(_, r)| r.offset).min(), Some(0));
}

#[test]
fn unchanged_table_keeps_its_offset_when_others_change() {
    let a = plan_ok(&DataplaneState::default(), &parse(FILE));
    // Only the UDP port's target changes: the TCP table stays put.
    let b = plan_ok(
        &a,
        &parse(&FILE.replace(
            "{ port: 53, protocol: UDP }",
            "{ port: 53, protocol: UDP, target_port: 5353 }",
        )),
    );
    let web = key("192.168.60.1", 80, 6);
    let dns = key("192.168.60.1", 53, 17);
    assert_eq!(b.services[&web], a.services[&web]);
    assert_ne!(
        b.services[&dns].maglev_offset,
        a.services[&dns].maglev_offset
    );
    assert_eq!(b.services[&dns].id, a.services[&dns].id);
}

/// Regression (found by the Kubernetes end-to-end test): a service with no
/// backends sits at offset 0 without a region; when it gets the same
/// backends as the service whose table is at offset 0, it must get a region
/// of its own, not share that one.
#[test]
fn a_service_gaining_backends_never_shares_another_services_table() {
    let two = |b_backends: &str| {
        parse(&format!(
            "services:
  - name: a
    vip: 192.168.60.1
    ports: [{{ port: 80, target_port: 8080 }}]
    backends: [{{ ip: 10.42.0.5, node_ip: 192.168.50.10 }}, {{ ip: 10.42.1.7, node_ip: 192.168.50.11 }}]
  - name: b
    vip: 192.168.60.2
    ports: [{{ port: 80, target_port: 8080 }}]
    backends: [{b_backends}]
"
        ))
    };
    let first = plan_ok(&DataplaneState::default(), &two(""));
    let a = key("192.168.60.1", 80, 6);
    let b = key("192.168.60.2", 80, 6);
    assert_eq!(first.services[&a].maglev_offset, 0);
    assert_eq!(first.services[&b].maglev_len, 0);
    let second = plan_ok(
        &first,
        &two(
            "{ ip: 10.42.0.5, node_ip: 192.168.50.10 }, { ip: 10.42.1.7, node_ip: 192.168.50.11 }",
        ),
    );
    assert_eq!(
        second.maglev[&0], second.maglev[&second.services[&b].maglev_offset],
        "same content"
    );
    assert_ne!(
        second.services[&b].maglev_offset, 0,
        "b must not reuse a's region"
    );
    second.allocators(&limits()).expect("consistent");
    // And the next plan over it works (it failed before the fix).
    plan_ok(&second, &two(""));
}

/// An adopted table that may hold IPv6 flows of an earlier tag gets the
/// config flag that makes the data path look there; nothing else changes,
/// and the flag goes when the limits say the last such flow is over.
#[test]
fn an_adopted_tables_earlier_tags_are_in_the_config_until_they_are_over() {
    let before = Limits {
        legacy_tags6: true,
        ..limits()
    };
    let a = plan(&DataplaneState::default(), &parse(FILE), &NODE, &before).unwrap();
    assert_eq!(a.config.flags, config_flags::LEGACY_TAGS6);
    let b = plan(&a, &parse(FILE), &NODE, &limits()).unwrap();
    assert_eq!(b.config.flags, 0);
    assert_eq!(
        crate::plan::diff::diff(&a, &b).len(),
        1,
        "only the config is written"
    );
}

#[test]
fn node_changes_update_flags_and_config() {
    let a = plan_ok(&DataplaneState::default(), &parse(FILE));
    let other = Node {
        ip: ip4("192.168.50.11"),
        ip6: None,
        ifindex: 9,
        mac: [2, 0, 0, 0, 0, 2],
        hash_seed: 0x5eed_0002,
        segment: None,
        segment6: None,
    };
    let b = plan(&a, &parse(FILE), &other, &limits()).unwrap();
    assert_eq!(b.config.node_ip, [192, 168, 50, 11]);
    assert_eq!(
        b.config.node_ip6, [0; 16],
        "no IPv6 address: no IPv6 full NAT"
    );
    assert_eq!(b.config.hash_seed, 0x5eed_0002, "the seed is the node's");
    assert_eq!(b.config.ifindex, 9);
    assert_eq!(b.vips.get(&[192, 168, 50, 11]), Some(&vip_flags::NODE));
    assert_eq!(b.vips.get(&[192, 168, 50, 10]), None);
    for v in b.backends.values() {
        let local = v.node_ip == [192, 168, 50, 11];
        assert_eq!(v.flags & backend_flags::LOCAL != 0, local, "{v:?}");
    }
    // Same ids, same tables.
    assert_eq!(b.maglev, a.maglev);
    assert_eq!(b.services, a.services);
}

/// Direct return marks the backends on other nodes of the segment, and
/// only with the file's switch on; the config says whether it is on.
#[test]
fn direct_return_marks_backends_on_the_segment() {
    let text = FILE.replace(
        "      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }\n",
        "      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }\n      \
         - { ip: 10.42.2.9, node_ip: 192.168.51.12 }\n",
    );
    let node = Node {
        segment: Some(Cidr {
            addr: ip("192.168.50.0"),
            prefix_len: 24,
        }),
        ..NODE
    };
    let flags_of = |direct: DirectReturn, node: &Node| {
        let mut file = parse(&text);
        file.direct_return = direct;
        let s = plan(&DataplaneState::default(), &file, node, &limits()).unwrap();
        let by_pod: BTreeMap<IpAddr, u16> = s
            .backends
            .values()
            .map(|b| (IpAddr::from(b.ip), b.flags))
            .collect();
        (by_pod, s.config.flags)
    };
    let (on, config) = flags_of(DirectReturn::Segment, &node);
    assert_eq!(config, config_flags::DIRECT_RETURN);
    let direct = |f: u16| f & backend_flags::DIRECT != 0;
    assert!(!direct(on[&ip("10.42.0.5")]), "local");
    assert!(direct(on[&ip("10.42.1.7")]), "on the segment");
    assert!(!direct(on[&ip("10.42.2.9")]), "beyond a router: full NAT");
    let (off, config) = flags_of(DirectReturn::Off, &node);
    assert_eq!(config, 0);
    assert!(off.values().all(|&f| !direct(f)), "{off:?}");
    let (unknown, _) = flags_of(DirectReturn::Segment, &NODE);
    assert!(
        unknown.values().all(|&f| !direct(f)),
        "no segment known: full NAT"
    );
    // Kubernetes: only the nodes whose agent is live.
    let live = BTreeSet::from([ip("192.168.51.12")]);
    let (others, config) = flags_of(DirectReturn::Nodes(live), &node);
    assert_eq!(config, config_flags::DIRECT_RETURN);
    assert!(others.values().all(|&f| !direct(f)), "{others:?}");
    let live = BTreeSet::from([ip("192.168.50.11")]);
    let (peer, _) = flags_of(DirectReturn::Nodes(live), &node);
    assert!(direct(peer[&ip("10.42.1.7")]), "a live peer on the segment");
}

/// With direct return every service names one of this node's serving
/// backends as its fallback (spread over them by service id), and none
/// when the node has no serving backend of it or direct return is off.
#[test]
fn direct_return_names_a_local_fallback_per_service() {
    let text = FILE.replace(
        "      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }\n",
        "      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }\n      \
         - { ip: 10.42.0.6, node_ip: 192.168.50.10 }\n",
    );
    let plan_with = |direct: DirectReturn, text: &str| {
        let mut file = parse(text);
        file.direct_return = direct;
        plan(&DataplaneState::default(), &file, &NODE, &limits()).unwrap()
    };
    let s = plan_with(DirectReturn::Segment, &text);
    let web: Vec<&ServiceValue> = [key("192.168.60.1", 80, 6), key("192.168.60.1", 53, 17)]
        .iter()
        .map(|k| &s.services[k])
        .collect();
    let mut chosen = BTreeSet::new();
    for v in &web {
        let id = v.local_fallback().expect("a local fallback");
        let b = s.backends[&id];
        assert_ne!(b.flags & backend_flags::LOCAL, 0, "{b:?}");
        assert_eq!(b.flags & backend_flags::DRAINING, 0, "{b:?}");
        chosen.insert(IpAddr::from(b.ip));
    }
    assert_eq!(
        chosen,
        BTreeSet::from([ip("10.42.0.5"), ip("10.42.0.6")]),
        "two services, two local pods: one each"
    );
    let empty = &s.services[&key("192.168.60.2", 443, 6)];
    assert_eq!(empty.local_fallback(), None, "no backend at all");
    let off = plan_with(DirectReturn::Off, &text);
    assert!(off.services.values().all(|v| v.local_fallback == 0));
    // Only remote backends: nothing to fall back to.
    let remote = FILE.replace("node_ip: 192.168.50.10", "node_ip: 192.168.50.12");
    let r = plan_with(DirectReturn::Segment, &remote);
    assert!(r.services.values().all(|v| v.local_fallback().is_none()));
}

/// A node whose own pod leaves the service keeps naming it as the fallback
/// (terminating, then retired) while it has no serving pod of the service,
/// until the slot is released or its address goes to another pod; a serving
/// local pod takes over at once.
#[test]
fn direct_return_falls_back_on_the_leaving_pod_until_its_slot_is_freed() {
    let mut file = parse(FILE);
    file.direct_return = DirectReturn::Segment;
    let web = key("192.168.60.1", 80, 6);
    let fallback_ip = |s: &DataplaneState| {
        s.services[&web]
            .local_fallback()
            .map(|id| (IpAddr::from(s.backends[&id].ip), s.backends[&id].flags))
    };
    let serving = plan_ok(&DataplaneState::default(), &file);
    let pod = ip("10.42.0.5");
    assert_eq!(fallback_ip(&serving).map(|f| f.0), Some(pod));

    // Terminating: still named, flagged draining.
    let mut terminating = file.clone();
    let b = terminating.services[0].backends.remove(0);
    assert_eq!(b.ip, pod);
    terminating.services[0].draining.push(b);
    let t = plan_ok(&serving, &terminating);
    let (at, flags) = fallback_ip(&t).expect("the terminating pod");
    assert_eq!(at, pod);
    assert_ne!(flags & backend_flags::DRAINING, 0);
    assert_eq!(flags & backend_flags::GONE, 0);

    // Gone from the service (and the model): the retired slot, kept.
    let mut gone = terminating.clone();
    gone.services[0].draining.clear();
    let g = plan_ok(&t, &gone);
    let (at, flags) = fallback_ip(&g).expect("the retired slot");
    assert_eq!(at, pod);
    assert_eq!(
        flags & (backend_flags::DRAINING | backend_flags::GONE),
        backend_flags::DRAINING | backend_flags::GONE
    );
    // Planning again over that keeps it; a plan from empty maps never
    // invents one (nothing was there to leave).
    assert_eq!(fallback_ip(&plan_ok(&g, &gone)).map(|f| f.0), Some(pod));
    assert_eq!(
        plan_ok(&DataplaneState::default(), &gone).services[&web].local_fallback(),
        None
    );
    // Its address handed to another pod (of another service): not named any
    // more, though the slot is still retired.
    let mut reused = gone.clone();
    reused.services[1].backends.push(Backend {
        ip: pod,
        node_ip: NODE.ip.into(),
    });
    let after = plan_ok(&g, &reused);
    assert_eq!(after.services[&web].local_fallback(), None);
    assert!(retired(&after).any(|id| Ipv4Addr::from(after.backends[&id].ip) == pod));
    // Freed: no fallback any more.
    let id = g.services[&web].local_fallback().expect("named");
    let freed = plan_releasing(&g, &gone, &BTreeSet::from([id]));
    assert!(!freed.backends.contains_key(&id));
    assert_eq!(freed.services[&web].local_fallback(), None);

    // A serving local pod comes (back): it is named, not the leaving one.
    let mut back = gone.clone();
    back.services[0].backends.push(Backend {
        ip: ip("10.42.0.9"),
        node_ip: NODE.ip.into(),
    });
    let s = plan_ok(&g, &back);
    let (at, flags) = fallback_ip(&s).expect("the new pod");
    assert_eq!((at, flags & backend_flags::DRAINING), (ip("10.42.0.9"), 0));
    // A terminating pod of another node is never named.
    let mut remote = terminating.clone();
    remote.services[0].draining[0].node_ip = ip("192.168.50.11");
    assert_eq!(
        plan_ok(&DataplaneState::default(), &remote).services[&web].local_fallback(),
        None
    );
}

#[test]
fn plan_errors() {
    let file = parse(FILE);
    let empty = DataplaneState::default();
    let mut pinned = file.clone();
    pinned.node_ip = Some(ip4("192.168.50.99"));
    assert_eq!(
        plan(&empty, &pinned, &NODE, &limits()),
        Err(PlanError::NodeIpMismatch {
            node: NODE.ip,
            file: ip4("192.168.50.99")
        })
    );
    let mut vip_is_node = file.clone();
    vip_is_node.services[1].vip = NODE.ip.into();
    assert!(matches!(
        plan(&empty, &vip_is_node, &NODE, &limits()),
        Err(PlanError::VipIsNodeIp { .. })
    ));
    let mut dup = file.clone();
    dup.services[1].vip = dup.services[0].vip;
    dup.services[1].ports = vec![dup.services[0].ports[0]];
    let err = plan(&empty, &dup, &NODE, &limits()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TCP 192.168.60.1:80 is served by both web and empty"
    );
    let mut conflict = file.clone();
    conflict.services[1].backends = vec![Backend {
        ip: ip("10.42.0.5"),
        node_ip: ip("192.168.50.13"),
    }];
    assert!(matches!(
        plan(&empty, &conflict, &NODE, &limits()),
        Err(PlanError::ConflictingBackendNode { .. })
    ));
}

#[test]
fn exhaustion_is_an_error_not_a_panic() {
    let file = parse(FILE);
    let empty = DataplaneState::default();
    let tight = |f: fn(&mut Limits)| {
        let mut l = limits();
        f(&mut l);
        plan(&empty, &file, &NODE, &l)
    };
    assert!(matches!(
        tight(|l| l.max_backends = 3),
        Err(PlanError::BackendIds(IdError::Exhausted { max: 3 }))
    ));
    assert!(matches!(
        tight(|l| l.max_services = 2),
        Err(PlanError::ServiceIds(IdError::Exhausted { max: 2 }))
    ));
    assert!(matches!(
        tight(|l| l.maglev_slots = 500),
        Err(PlanError::Maglev(SlotError::Full { .. }))
    ));
    assert!(matches!(
        tight(|l| l.max_vips = 2),
        Err(PlanError::MapFull {
            what: "vips",
            count: 3,
            max: 2
        })
    ));
    assert!(matches!(
        tight(|l| l.max_src_ranges = 1),
        Err(PlanError::MapFull {
            what: "src_ranges",
            count: 2,
            max: 1
        })
    ));
    // Exactly enough slots for one full table swap: 2 x 502.
    let a = plan(
        &empty,
        &file,
        &NODE,
        &Limits {
            maglev_slots: 502,
            ..limits()
        },
    )
    .unwrap();
    let changed = parse(&FILE.replace("10.42.1.7", "10.42.1.8"));
    assert!(matches!(
        plan(
            &a,
            &changed,
            &NODE,
            &Limits {
                maglev_slots: 502,
                ..limits()
            }
        ),
        Err(PlanError::Maglev(_))
    ));
    plan(
        &a,
        &changed,
        &NODE,
        &Limits {
            maglev_slots: 1004,
            ..limits()
        },
    )
    .unwrap();
}

fn base() -> DataplaneState {
    plan_ok(&DataplaneState::default(), &parse(FILE))
}

#[test]
fn allocators_reject_inconsistent_contents() {
    let l = limits();
    let check = |f: &dyn Fn(&mut DataplaneState)| {
        let mut s = base();
        f(&mut s);
        s.allocators(&l).unwrap_err()
    };
    assert_eq!(
        check(&|s| {
            s.backends.insert(l.max_backends, s.backends[&0]);
        }),
        StateError::BackendIdOutOfRange {
            id: l.max_backends,
            max: l.max_backends
        }
    );
    assert_eq!(
        check(&|s| s.backends.get_mut(&2).unwrap().flags = 0),
        StateError::BackendNotValid { id: 2 }
    );
    assert_eq!(
        check(&|s| {
            s.backends.insert(9, s.backends[&1]);
        }),
        StateError::DuplicateBackend {
            a: 1,
            b: 9,
            identity: "10.42.0.5:8080".into()
        }
    );
    assert!(matches!(
        check(&|s| s.services.get_mut(&key("192.168.60.2", 443, 6)).unwrap().id = 0),
        StateError::DuplicateServiceId { id: 0, .. }
    ));
    assert!(matches!(
        check(&|s| s.services.get_mut(&key("192.168.60.2", 443, 6)).unwrap().id = u32::MAX),
        StateError::ServiceIdOutOfRange { .. }
    ));
    assert!(matches!(
        check(&|s| s
            .services
            .get_mut(&key("192.168.60.1", 80, 6))
            .unwrap()
            .maglev_offset = 7),
        StateError::MissingTable { offset: 7, .. }
    ));
    assert!(matches!(
        check(&|s| s
            .services
            .get_mut(&key("192.168.60.1", 80, 6))
            .unwrap()
            .maglev_len = 101),
        StateError::TableLength {
            expected: 101,
            found: 251,
            ..
        }
    ));
    assert!(matches!(
        check(&|s| {
            s.backends.remove(&3);
        }),
        StateError::DanglingBackend { id: 3, .. }
    ));
    // Two services sharing one region.
    assert!(matches!(
        check(&|s| {
            let web = s.services[&key("192.168.60.1", 80, 6)];
            let dns = s.services.get_mut(&key("192.168.60.1", 53, 17)).unwrap();
            dns.maglev_offset = web.maglev_offset;
            s.maglev.remove(&0);
        }),
        StateError::Regions(SlotError::Overlap { .. })
    ));
    assert!(matches!(
        check(&|s| {
            s.maglev.insert(5000, vec![0; 101].into());
        }),
        StateError::UnreferencedTable { offset: 5000 }
    ));
    assert!(matches!(
        check(&|s| {
            let mut k = *s.src_ranges.first().unwrap();
            k.data.addr = [10, 0, 0, 1];
            s.src_ranges.insert(k);
        }),
        StateError::BadSrcRange { prefixlen: 40, .. }
    ));
    let mut small = l;
    small.maglev_slots = 400;
    assert!(matches!(
        base().allocators(&small),
        Err(StateError::Regions(SlotError::OutOfBounds { .. }))
    ));
}

#[test]
fn allocators_tolerate_interrupted_updates() {
    let mut s = base();
    // An orphan backend, a VIP without services, a service VIP not yet in
    // vips, and src ranges of a service that is gone.
    s.backends.insert(
        40,
        BackendValue::new([10, 9, 9, 9], [1, 1, 1, 1], 1, backend_flags::VALID),
    );
    s.vips.insert([192, 168, 70, 1], vip_flags::SERVICE);
    s.vips.remove(&[192, 168, 60, 2]);
    s.src_ranges
        .insert(SrcRangeKey::new(17, Cidr::parse("1.0.0.0/8").unwrap()).unwrap());
    let a = s.allocators(&limits()).unwrap();
    assert!(a.backend_ids.contains(40));
    assert!(a.service_ids.contains(17), "stale src range id is reserved");
    // Planning over it drops the leftovers and does not reuse id 17 yet.
    let next = plan_ok(
        &s,
        &parse(&format!(
            "{FILE}  - name: x\n    vip: 192.168.60.9\n    ports: [{{ port: 1 }}]\n"
        )),
    );
    // The orphan may carry flows: it drains like any removed backend,
    // until released.
    assert_eq!(retired(&next).collect::<Vec<_>>(), [40]);
    let next = plan_releasing(
        &next,
        &parse(&format!(
            "{FILE}  - name: x\n    vip: 192.168.60.9\n    ports: [{{ port: 1 }}]\n"
        )),
        &BTreeSet::from([40]),
    );
    assert!(!next.backends.contains_key(&40));
    assert_eq!(next.services[&key("192.168.60.9", 1, 6)].id, 3);
    assert!(next.src_ranges.iter().all(|r| r.service_id() != 17));
}

#[test]
fn src_range_keys() {
    let k = SrcRangeKey {
        prefixlen: 31,
        data: SourceRangeData::default(),
    };
    assert_eq!(k.cidr(), None);
    let k = SrcRangeKey {
        prefixlen: 65,
        data: SourceRangeData::default(),
    };
    assert_eq!(k.cidr(), None);
    let all = SrcRangeKey::new(3, Cidr::parse("0.0.0.0/0").unwrap()).unwrap();
    assert_eq!(all.prefixlen, 32);
    assert_eq!(all.service_id(), 3);
    let a = SrcRangeKey::new(1, Cidr::parse("10.0.0.0/8").unwrap()).unwrap();
    let b = SrcRangeKey::new(2, Cidr::parse("1.0.0.0/8").unwrap()).unwrap();
    assert!(a < b, "ordered by service id first");
    assert_eq!(frontend_name(&key("1.2.3.4", 5, 17)), "UDP 1.2.3.4:5");
    assert_eq!(frontend_name(&key("1.2.3.4", 5, 1)), "proto 1 1.2.3.4:5");
}

/// The `vips`/`vips6` flags of `a` in `s`.
fn vip_flags_of(s: &DataplaneState, a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => s.vips.get(&a.octets()).copied().unwrap_or(0),
        IpAddr::V6(a) => s.vips6.get(&a.octets()).copied().unwrap_or(0),
    }
}

/// Checks the plan against the file, independently of how it was built.
fn check_plan(
    prev: &DataplaneState,
    file: &NodeServices,
    s: &DataplaneState,
) -> Result<(), TestCaseError> {
    let a = s
        .allocators(&limits())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        a.slots.used_slots() as usize,
        s.maglev.values().map(Table::len).sum::<usize>()
    );
    let entries: usize = file.services.iter().map(|s| s.ports.len()).sum();
    prop_assert_eq!(s.services.len() + s.services6.len(), entries);
    for svc in &file.services {
        for p in &svc.ports {
            let k = AnyServiceKey::new(svc.vip, p.port, p.protocol.number());
            prop_assert_eq!(matches!(k, AnyServiceKey::V6(_)), svc.vip.is_ipv6());
            let v = *s.service(&k).expect("every frontend planned");
            // The table is Maglev over this service's backends on this port.
            let members: Vec<(String, u32)> = svc
                .backends
                .iter()
                .map(|b| {
                    let (id, slot) = s
                        .all_backends()
                        .find(|(_, v)| v.identity() == (b.ip, p.target_port))
                        .unwrap();
                    // In the map of the pod's family.
                    assert_eq!(matches!(slot, BackendSlot::V6(_)), b.ip.is_ipv6());
                    (maglev::identity(b.ip, p.target_port), id)
                })
                .collect();
            let table = maglev::build(&members, svc.table_size(file.maglev_table_size));
            prop_assert_eq!(v.maglev_len as usize, table.len());
            if !table.is_empty() {
                prop_assert_eq!(&s.maglev[&v.maglev_offset].to_vec(), &table);
            }
            // Kept from prev when present.
            if let Some(old) = prev.service(&k) {
                prop_assert_eq!(old.id, v.id);
                if prev.maglev.get(&old.maglev_offset).map(Table::to_vec) == Some(table) {
                    prop_assert_eq!(old.maglev_offset, v.maglev_offset);
                }
            } else {
                prop_assert!(
                    !prev.all_services().any(|(_, o)| o.id == v.id),
                    "new service reuses a live id"
                );
            }
            // Restricted by ranges of any family; only its own family's in its trie.
            prop_assert_eq!(
                v.flags & service_flags::SOURCE_RANGES != 0,
                !svc.source_ranges.is_empty()
            );
            for c in &svc.source_ranges {
                let in4 = SrcRangeKey::new(v.id, *c).is_some_and(|k| s.src_ranges.contains(&k));
                let in6 = SrcRangeKey6::new(v.id, *c).is_some_and(|k| s.src_ranges6.contains(&k));
                let own = c.addr.is_ipv6() == svc.vip.is_ipv6();
                prop_assert_eq!(in4 || in6, own, "range {} of {}", c, svc.vip);
            }
            prop_assert_eq!(
                v.flags & service_flags::AFFINITY != 0,
                svc.session_affinity != SessionAffinity::None
            );
        }
        prop_assert!(vip_flags_of(s, svc.vip) & vip_flags::SERVICE != 0);
    }
    // Changed tables never overlap a region live in prev.
    let prev_regions: Vec<Region> = prev.regions().map(|(_, r)| r).collect();
    for (k, r) in s.regions() {
        let kept = prev
            .service(&k)
            .is_some_and(|o| o.maglev_offset == r.offset && o.maglev_len == r.len);
        if !kept {
            prop_assert!(prev_regions.iter().all(|o| !o.overlaps(r)));
        }
    }
    // Backend ids, one space for both families: kept per identity; new ones
    // avoid prev's, whatever its family.
    for (id, b) in s.all_backends() {
        match prev
            .all_backends()
            .find(|(_, o)| o.identity() == b.identity())
        {
            Some((old_id, _)) => prop_assert_eq!(old_id, id),
            None => prop_assert!(prev.backend(id).is_none()),
        }
        let local =
            b.node_ip() == IpAddr::V4(NODE.ip) || NODE.ip6.map(IpAddr::V6) == Some(b.node_ip());
        // An IPv6 pod whose node is named by its IPv4 address has no IPv6
        // next hop (all zero): local only when that node is this one.
        let by_v4_node = b.ip().is_ipv6() && b.node_ip().is_unspecified();
        if !by_v4_node {
            prop_assert_eq!(b.flags() & backend_flags::LOCAL != 0, local);
        }
    }
    prop_assert!(s.backends.keys().all(|id| !s.backends6.contains_key(id)));
    for a in &file.announce {
        prop_assert!(vip_flags_of(s, *a) & vip_flags::ANNOUNCE != 0);
    }
    prop_assert_eq!(s.vips[&NODE.ip.octets()], vip_flags::NODE);
    if let Some(ip6) = NODE.ip6 {
        prop_assert_eq!(s.vips6[&ip6.octets()], vip_flags::NODE);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plans_are_consistent_and_stable(files in proptest::collection::vec(services_file::tests::arb_file(), 1..5)) {
        let mut prev = DataplaneState::default();
        for file in &files {
            let next = plan(&prev, file, &NODE, &limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_plan(&prev, file, &next)?;
            // Deterministic, and a fixpoint.
            prop_assert_eq!(&plan(&prev, file, &NODE, &limits()).unwrap(), &next);
            prop_assert_eq!(&plan(&next, file, &NODE, &limits()).unwrap(), &next);
            prev = next;
        }
    }
}

#[test]
fn plans_hand_built_files() {
    // Building a file by hand (as the Kubernetes source will) plans too.
    let file = NodeServices {
        node_ip: None,
        node_ip6: None,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: crate::plan::model::MaglevSize::DEFAULT,
        direct_return: crate::plan::model::DirectReturn::Off,
        announce: BTreeSet::new(),
        services: vec![Service {
            name: "a".into(),
            vip: ip("192.168.60.1"),
            ports: vec![ServicePort {
                port: 1,
                protocol: Protocol::Udp,
                target_port: 2,
            }],
            session_affinity: SessionAffinity::None,
            source_ranges: vec![],
            maglev_table_size: None,
            draining: Vec::new(),
            backend_ports: std::collections::BTreeMap::new(),
            backends: vec![Backend {
                ip: ip("10.1.1.1"),
                node_ip: ip("192.168.50.10"),
            }],
        }],
    };
    let s = plan_ok(&DataplaneState::default(), &file);
    assert_eq!(s.backends[&0].port, 2);
    assert_eq!(
        s.backends[&0].flags,
        backend_flags::VALID | backend_flags::LOCAL
    );
}

/// `(address, target port) → id` of every backend of `s`.
fn members_of(s: &DataplaneState, backends: &[&str], port: u16) -> Vec<((IpAddr, u16), u32)> {
    backends
        .iter()
        .map(|b| {
            let want = (ip(b), port);
            let id = s
                .all_backends()
                .find(|(_, v)| v.identity() == want)
                .map_or_else(|| panic!("no backend {b}:{port}"), |(id, _)| id);
            (want, id)
        })
        .collect()
}

#[test]
fn replan_takes_only_tables_that_would_be_built_the_same() {
    let a = plan_ok(&DataplaneState::default(), &parse(FILE));
    let web = a.services[&key("192.168.60.1", 80, 6)];
    let members = members_of(&a, &["10.42.0.5", "10.42.1.7"], 8080);
    // Unchanged backends: prev's table, which is what a build gives.
    let t = unchanged_table(&a, Some(&web), &members, size251()).expect("unchanged table taken");
    assert_eq!(t, &a.maglev[&web.maglev_offset]);
    let named: Vec<(String, u32)> = members
        .iter()
        .map(|&((i, p), id)| (maglev::identity(i, p), id))
        .collect();
    assert_eq!(t.to_vec(), maglev::build(&named, size251()));
    // Listed twice: the same backend set.
    let twice = [members.clone(), members.clone()].concat();
    assert!(unchanged_table(&a, Some(&web), &twice, size251()).is_some());
    // One backend fewer, or one more: built again.
    assert!(unchanged_table(&a, Some(&web), &members[..1], size251()).is_none());
    let more = [members.clone(), vec![((ip("10.42.2.9"), 8080), 99)]].concat();
    assert!(unchanged_table(&a, Some(&web), &more, size251()).is_none());
    // Another configured size: built again, at that size.
    let other = MaglevSize::DEFAULT;
    assert!(unchanged_table(&a, Some(&web), &members, other).is_none());
    // An id that stood for another backend in prev (freed and reused): built again,
    // since the identities, and so the table, differ.
    let mut moved = a.clone();
    let (_, id0) = members[0];
    moved.backends.get_mut(&id0).unwrap().ip = ip4("10.42.9.9").octets();
    assert!(unchanged_table(&moved, Some(&web), &members, size251()).is_none());
    // A table holding an id the members do not have: built again.
    let mut stray = a.clone();
    let mut slots = stray.maglev[&web.maglev_offset].to_vec();
    slots[0] = 12_345;
    stray.maglev.insert(web.maglev_offset, slots.into());
    assert!(unchanged_table(&stray, Some(&web), &members, size251()).is_none());
    // No previous entry, or one without a table: built.
    assert!(unchanged_table(&a, None, &members, size251()).is_none());
    let empty = a.services[&key("192.168.60.2", 443, 6)];
    assert!(unchanged_table(&a, Some(&empty), &[], size251()).is_none());
}

#[test]
fn replan_equals_plan_through_changes() {
    let files = [
        FILE.to_owned(),
        FILE.replace("      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }\n", ""),
        FILE.replace("10.42.1.7", "10.42.3.3"),
        FILE.to_owned(),
    ];
    let mut prev = DataplaneState::default();
    for f in &files {
        let file = parse(f);
        let planned = plan_ok(&prev, &file);
        let replanned = replan(&prev, &file, &NODE, &limits()).unwrap();
        assert_eq!(replanned, planned, "{f}");
        prev = planned;
    }
}

/// A service restricted to ranges of the other family only gets the
/// `SOURCE_RANGES` flag and no entries in its own family's trie (the data
/// path's lookup then misses for every client: fail closed), for either
/// family; lifting the restriction clears the flag.
#[test]
fn restricted_to_the_other_family_plans_the_flag_alone() {
    let mut file = parse(FILE);
    let web = &mut file.services[0];
    web.source_ranges = vec![Cidr::parse("fd00::/8").unwrap()];
    let s = plan_ok(&DataplaneState::default(), &file);
    for (port, p) in [(53, 17), (80, 6)] {
        let v = s.services[&key("192.168.60.1", port, p)];
        assert_ne!(v.flags & service_flags::SOURCE_RANGES, 0, "port {port}");
    }
    assert!(s.src_ranges.is_empty(), "no entry may match");
    assert!(
        s.src_ranges6.is_empty(),
        "an IPv4 service's ranges go nowhere else"
    );

    file.services[0].source_ranges.clear();
    let s2 = plan_ok(&s, &file);
    let v = s2.services[&key("192.168.60.1", 80, 6)];
    assert_eq!(
        v.flags & service_flags::SOURCE_RANGES,
        0,
        "unrestricted again"
    );

    // The same for an IPv6 service restricted to IPv4 ranges.
    let six = parse(&FILE6.replace("fd00:10::/32", "10.0.0.0/8"));
    let s6 = plan_ok(&DataplaneState::default(), &six);
    let v = s6.services6[&key6("fd00:60::1", 80, 6)];
    assert_ne!(v.flags & service_flags::SOURCE_RANGES, 0);
    assert!(s6.src_ranges6.is_empty() && s6.src_ranges.is_empty());
}

/// One backend through its whole life: serving, terminating (drains, in no
/// table), removed (retired: same slot, not reused), back (serving in its old
/// slot), removed again and released (gone, its id free for the next plan).
#[test]
fn a_backend_drains_retires_comes_back_and_is_released() {
    let pod = ip("10.42.0.5");
    let file = parse(FILE);
    let serving_state = plan_ok(&DataplaneState::default(), &file);
    let ids_of = |s: &DataplaneState| -> BTreeMap<u32, u16> {
        s.backends
            .iter()
            .filter(|(_, b)| IpAddr::from(b.ip) == pod)
            .map(|(&id, b)| (id, b.flags))
            .collect()
    };
    let in_tables = |s: &DataplaneState, id: u32| s.maglev.values().any(|t| t.ids().contains(&id));
    let pod_ids: Vec<u32> = ids_of(&serving_state).into_keys().collect();
    assert_eq!(pod_ids.len(), 2, "one slot per target port");
    let serving = backend_flags::VALID | backend_flags::LOCAL;
    assert!(ids_of(&serving_state).values().all(|f| *f == serving));

    // Terminating: the same slots, draining, in no table.
    let mut terminating = file.clone();
    let web = &mut terminating.services[0];
    let at = web.backends.iter().position(|b| b.ip == pod).unwrap();
    let gone = web.backends.remove(at);
    web.draining.push(gone);
    let draining_state = plan_ok(&serving_state, &terminating);
    assert_eq!(
        ids_of(&draining_state).into_keys().collect::<Vec<_>>(),
        pod_ids
    );
    for (id, f) in ids_of(&draining_state) {
        assert_eq!(f, serving | backend_flags::DRAINING);
        assert!(!in_tables(&draining_state, id));
    }
    // A release names them, but they are not retired: nothing goes.
    let all: BTreeSet<u32> = draining_state.backends.keys().copied().collect();
    assert_eq!(
        plan_releasing(&draining_state, &terminating, &all),
        draining_state
    );

    // Removed: retired, still there, ids not reused by a new pod.
    let mut removed = terminating.clone();
    removed.services[0].draining.clear();
    removed.services[0].backends.push(Backend {
        ip: ip("10.42.3.3"),
        node_ip: ip("192.168.50.11"),
    });
    let retired_state = plan_ok(&draining_state, &removed);
    let retired_flags = serving | backend_flags::DRAINING | backend_flags::GONE;
    assert!(ids_of(&retired_state).values().all(|f| *f == retired_flags));
    assert_eq!(retired(&retired_state).collect::<Vec<_>>(), pod_ids);
    let new_ids: BTreeSet<u32> = retired_state
        .backends
        .iter()
        .filter(|(_, b)| b.ip == [10, 42, 3, 3])
        .map(|(&id, _)| id)
        .collect();
    assert!(new_ids.iter().all(|id| !pod_ids.contains(id)));
    // Planning again keeps them: only a release lets them go.
    assert_eq!(plan_ok(&retired_state, &removed), retired_state);

    // Back: its old slots, serving, in the tables again.
    let back = plan_ok(&retired_state, &file);
    assert_eq!(ids_of(&back).into_keys().collect::<Vec<_>>(), pod_ids);
    for (id, f) in ids_of(&back) {
        assert_eq!(f, serving);
        assert!(in_tables(&back, id));
    }

    // Removed again, then released: gone, and free for the plan after.
    let again = plan_ok(&back, &removed);
    let release: BTreeSet<u32> = retired(&again).collect();
    assert_eq!(release.iter().copied().collect::<Vec<_>>(), pod_ids);
    let released = plan_releasing(&again, &removed, &release);
    assert!(ids_of(&released).is_empty());
    let mut another = removed.clone();
    another.services[0].backends.push(Backend {
        ip: ip("10.42.4.4"),
        node_ip: ip("192.168.50.11"),
    });
    let reusing = plan_ok(&released, &another);
    let reused: BTreeSet<u32> = reusing
        .backends
        .iter()
        .filter(|(_, b)| b.ip == [10, 42, 4, 4])
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(reused, pod_ids.iter().copied().collect());
}

fn key6(vip: &str, port: u16, proto: u8) -> ServiceKey6 {
    let vip: Ipv6Addr = vip.parse().unwrap();
    ServiceKey6::new(vip.octets(), port, proto)
}

/// An IPv6 service: a pod on this node (named by its IPv6 address), one on
/// another node with an IPv6 address, and one on a node known only by its
/// IPv4 address.
const FILE6: &str = "\
maglev_table_size: 251
announce: [\"fd00:60::1\"]
services:
  - name: web6
    vip: fd00:60::1
    ports: [{ port: 80, target_port: 8080 }]
    source_ranges: [\"fd00:10::/32\"]
    backends:
      - { ip: \"fd00:42::5\", node_ip: \"fd00:50::10\" }
      - { ip: \"fd00:42::7\", node_ip: \"fd00:50::11\" }
      - { ip: \"fd00:42::9\", node_ip: 192.168.50.12 }
  - name: quiet6
    vip: fd00:60::2
    ports: [{ port: 443 }]
";

#[test]
fn plans_the_ipv6_maps() {
    let s = plan_ok(&DataplaneState::default(), &parse(FILE6));
    let v6 = |a: &str| a.parse::<Ipv6Addr>().unwrap().octets();
    assert_eq!(
        s.vips6,
        BTreeMap::from([
            (v6("fd00:60::1"), vip_flags::SERVICE | vip_flags::ANNOUNCE),
            (v6("fd00:60::2"), vip_flags::SERVICE),
            (v6("fd00:50::10"), vip_flags::NODE),
        ])
    );
    assert_eq!(
        s.vips,
        BTreeMap::from([([192, 168, 50, 10], vip_flags::NODE)]),
        "no IPv6 address in the IPv4 map"
    );
    assert!(s.services.is_empty() && s.backends.is_empty() && s.src_ranges.is_empty());
    let be = |ip: &str, node: [u8; 16], flags| BackendValue6::new(v6(ip), node, 8080, flags);
    let valid = backend_flags::VALID;
    assert_eq!(
        s.backends6,
        BTreeMap::from([
            (
                0,
                be(
                    "fd00:42::5",
                    v6("fd00:50::10"),
                    valid | backend_flags::LOCAL
                )
            ),
            (1, be("fd00:42::7", v6("fd00:50::11"), valid)),
            // No IPv6 address for its node: all zero, served only where local.
            (2, be("fd00:42::9", [0; 16], valid)),
        ])
    );
    let web = s.services6[&key6("fd00:60::1", 80, 6)];
    let quiet = s.services6[&key6("fd00:60::2", 443, 6)];
    assert_eq!((web.id, quiet.id), (0, 1));
    assert_eq!(web.flags, service_flags::SOURCE_RANGES);
    assert_eq!((quiet.maglev_len, quiet.flags), (0, 0));
    assert_eq!(
        s.maglev[&web.maglev_offset].to_vec(),
        maglev::build(
            &[
                ("[fd00:42::5]:8080", 0),
                ("[fd00:42::7]:8080", 1),
                ("[fd00:42::9]:8080", 2)
            ],
            size251()
        ),
        "Maglev over the IPv6 identities, as for IPv4"
    );
    let range = SrcRangeKey6::new(0, Cidr::parse("fd00:10::/32").unwrap()).unwrap();
    assert_eq!(s.src_ranges6, BTreeSet::from([range]));
    assert_eq!(range.prefixlen, 64);
    assert_eq!(range.cidr(), Some(Cidr::parse("fd00:10::/32").unwrap()));
    s.allocators(&limits()).unwrap();
    assert_eq!(plan_ok(&s, &parse(FILE6)), s, "stable");
    // A pod whose node is named by this node's IPv4 address is local too.
    let here = FILE6.replace("node_ip: 192.168.50.12", "node_ip: 192.168.50.10");
    let h = plan_ok(&DataplaneState::default(), &parse(&here));
    assert_eq!(h.backends6[&2].flags, valid | backend_flags::LOCAL);
}

/// IPv6 pods on other nodes get direct return by their node's IPv6
/// address, as IPv4 ones by their node's IPv4 address: in the services
/// file for every node on the interface's IPv6 segment, with Kubernetes for
/// the live ones only; never for a pod whose node is known by its IPv4
/// address alone (no IPv6 next hop) or beyond a router, nor on a node
/// without an IPv6 segment (full NAT takes those).
#[test]
fn direct_return_marks_ipv6_backends_by_their_nodes_ipv6_address() {
    let mut node = Node {
        segment: Some(Cidr::parse("192.168.50.0/24").unwrap()),
        segment6: Some(Cidr::parse("fd00:50::/64").unwrap()),
        ..NODE
    };
    let text = FILE6.replace(
        "  - name: quiet6",
        "      - { ip: \"fd00:42::b\", node_ip: \"fd00:51::11\" }\n  - name: quiet6",
    );
    let flags_of = |direct: DirectReturn, node: &Node| {
        let mut file = parse(&text);
        file.direct_return = direct;
        let s = plan(&DataplaneState::default(), &file, node, &limits()).unwrap();
        let by_pod: BTreeMap<Ipv6Addr, u16> = s
            .backends6
            .values()
            .map(|b| (Ipv6Addr::from(b.ip), b.flags))
            .collect();
        (by_pod, s.config.flags)
    };
    let direct = |f: u16| f & backend_flags::DIRECT != 0;
    let pod = |a: &str| a.parse::<Ipv6Addr>().unwrap();
    let (all, config) = flags_of(DirectReturn::Segment, &node);
    assert_eq!(config, config_flags::DIRECT_RETURN);
    assert!(!direct(all[&pod("fd00:42::b")]), "a node beyond a router");
    assert!(!direct(all[&pod("fd00:42::5")]), "local");
    assert!(
        direct(all[&pod("fd00:42::7")]),
        "a peer by its IPv6 address"
    );
    assert!(
        !direct(all[&pod("fd00:42::9")]),
        "a node known by its IPv4 address only"
    );
    let (live, _) = flags_of(
        DirectReturn::Nodes(BTreeSet::from([ip("fd00:50::11")])),
        &node,
    );
    assert!(direct(live[&pod("fd00:42::7")]), "a live peer");
    let (other, _) = flags_of(
        DirectReturn::Nodes(BTreeSet::from([ip("192.168.50.11")])),
        &node,
    );
    assert!(
        other.values().all(|&f| !direct(f)),
        "live by its IPv4 address only: its IPv6 pods' node is another name"
    );
    let (off, _) = flags_of(DirectReturn::Off, &node);
    assert!(off.values().all(|&f| !direct(f)), "{off:?}");
    node.segment6 = None;
    let (unsegmented, _) = flags_of(DirectReturn::Segment, &node);
    assert!(
        unsegmented.values().all(|&f| !direct(f)),
        "no IPv6 segment: {unsegmented:?}"
    );
}

/// Both families side by side: one space of service ids, backend ids and
/// Maglev slots; each entry in its own family's map.
#[test]
fn dual_stack_shares_ids_and_slots() {
    let text = format!(
        "{FILE}{}",
        FILE6
            .split_once("services:\n")
            .unwrap()
            .1
            .replace("announce", "#")
    );
    let mut file = parse(&text);
    file.announce.insert(ip("fd00:60::1"));
    let s = plan_ok(&DataplaneState::default(), &file);
    assert_eq!((s.services.len(), s.services6.len()), (3, 2));
    let ids: BTreeSet<u32> = s.all_services().map(|(_, v)| v.id).collect();
    assert_eq!(ids.len(), 5, "service ids are unique over both families");
    let backend_ids: Vec<u32> = s.all_backends().map(|(id, _)| id).collect();
    assert_eq!(backend_ids.len(), 4 + 3);
    assert!(s.backends.keys().all(|id| !s.backends6.contains_key(id)));
    let regions: Vec<Region> = s.regions().map(|(_, r)| r).collect();
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            assert!(!a.overlaps(*b), "{a:?} {b:?}");
        }
    }
    assert_eq!(
        s.vips6[&"fd00:60::1".parse::<Ipv6Addr>().unwrap().octets()],
        vip_flags::SERVICE | vip_flags::ANNOUNCE
    );
    s.allocators(&limits()).unwrap();
    // Removing the IPv6 services leaves the IPv4 ones as they were.
    let v4_only = plan_ok(&s, &parse(FILE));
    assert_eq!(v4_only.services, s.services);
    assert!(v4_only.services6.is_empty());
    assert!(
        v4_only
            .backends6
            .values()
            .all(|b| b.flags & RETIRED == RETIRED),
        "the IPv6 backends drain, retired"
    );
}

/// A backend id freed by one family is taken by the other only once the
/// clear of its old entry was planned and applied; never within one plan.
#[test]
fn backend_ids_move_between_families_only_after_release() {
    let v4 = "\
services:
  - name: a
    vip: 192.168.60.1
    ports: [{ port: 80 }]
    backends: [{ ip: 10.42.0.5, node_ip: 192.168.50.11 }]
";
    let v6 = |pods: &str| {
        format!(
            "services:\n  - name: b\n    vip: \"fd00:60::1\"\n    ports: [{{ port: 80 }}]\n    backends: [{pods}]\n"
        )
    };
    let one = "{ ip: \"fd00:42::5\", node_ip: \"fd00:50::11\" }";
    let two = format!("{one}, {{ ip: \"fd00:42::6\", node_ip: \"fd00:50::11\" }}");
    let a = plan_ok(&DataplaneState::default(), &parse(v4));
    assert_eq!(a.backends.keys().copied().collect::<Vec<_>>(), [0]);
    // The IPv4 pod leaves: its slot retires; the IPv6 pod gets another id.
    let b = plan_ok(&a, &parse(&v6(one)));
    assert_eq!(retired(&b).collect::<Vec<_>>(), [0]);
    assert_eq!(b.backends6.keys().copied().collect::<Vec<_>>(), [1]);
    // Released: id 0 leaves `backends`, and no IPv6 backend takes it in
    // the same plan.
    let c = plan_releasing(&b, &parse(&v6(&two)), &BTreeSet::from([0]));
    assert!(c.backends.is_empty());
    assert_eq!(c.backends6.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert!(crate::plan::diff::diff(&b, &c).contains(&crate::plan::diff::MapOp::ClearBackend(0)));
    // The next plan may give id 0 to an IPv6 backend.
    let three = format!("{two}, {{ ip: \"fd00:42::7\", node_ip: \"fd00:50::11\" }}");
    let d = plan_ok(&c, &parse(&v6(&three)));
    assert_eq!(d.backends6.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(d.backends.is_empty());
    d.allocators(&limits()).unwrap();
    // Contents with one id in both maps are refused.
    let mut both = d.clone();
    both.backends.insert(0, a.backends[&0]);
    assert_eq!(
        both.allocators(&limits()),
        Err(StateError::BackendInBothFamilies { id: 0 })
    );
}

#[test]
fn ipv6_plan_errors() {
    let file = parse(FILE6);
    let mut mixed = file.clone();
    mixed.services[0].backends.push(Backend {
        ip: ip("10.42.0.5"),
        node_ip: ip("192.168.50.11"),
    });
    assert!(matches!(
        plan(&DataplaneState::default(), &mixed, &NODE, &limits()),
        Err(PlanError::MixedFamilies { .. })
    ));
    let mut is_node = file.clone();
    is_node.services[1].vip = ip("fd00:50::10");
    assert!(matches!(
        plan(&DataplaneState::default(), &is_node, &NODE, &limits()),
        Err(PlanError::VipIsNodeIp { .. })
    ));
    let mut pinned = file;
    pinned.node_ip6 = Some("fd00:50::99".parse().unwrap());
    assert!(matches!(
        plan(&DataplaneState::default(), &pinned, &NODE, &limits()),
        Err(PlanError::NodeIp6Mismatch { .. })
    ));
}
