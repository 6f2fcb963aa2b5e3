//! A VIP equal to the node's gateway is neither served nor announced: the agent reads its
//! routes and withholds it, so it never answers ARP for the LAN's router (nor drops the ARP
//! for it). The namespace cluster's client plays the router: node1's default route goes
//! through it, and node1's services file lists the client's address as a VIP next to a
//! real one.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

mod cluster;

use cluster::{Cluster, TARGET_PORT, pods_in_use};
use onehop_testkit::{arp, capture::Capture};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);

#[test]
fn the_nodes_gateway_is_neither_served_nor_announced() {
    let c = Cluster::new(2, 1, 1);
    let router = c.topo.client().ip();
    let node = c.topo.node(1);
    node.ns()
        .ip(&["route", "add", "default", "via", &router.to_string()])
        .expect("default route via the client");
    let pod = node.pod(1).ip();
    c.write_services(
        1,
        &format!(
            "node: {{ ip: {n} }}\nannounce: [{VIP}, {router}]\nservices:\n\
             \x20 - name: web\n    vip: {VIP}\n    ports: [{{ port: 80, target_port: {TARGET_PORT} }}]\n\
             \x20   backends: [{{ ip: {pod}, node_ip: {n} }}]\n\
             \x20 - name: router\n    vip: {router}\n    ports: [{{ port: 80, target_port: {TARGET_PORT} }}]\n\
             \x20   backends: [{{ ip: {pod}, node_ip: {n} }}]\n",
            n = node.ip(),
        ),
    )
    .expect("services file");
    let source = c.services_path(1).to_string_lossy().into_owned();
    c.spawn_agent(1, &["--services-file", &source], &[]);
    c.wait_for(1, "the web service", |s| pods_in_use(s) == 1);
    // The maps once the whole file is applied: backends are written before VIPs, so the
    // web service's pod can be there before its VIP is (and the router's, were it served).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !c.log(1).contains("applied the services file") {
        assert!(
            std::time::Instant::now() < deadline,
            "the file was never applied:\n{}",
            c.log(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = c.snapshot(1).expect("node1's maps");

    let vips: Vec<std::net::IpAddr> = s.vips.iter().map(|(ip, _)| *ip).collect();
    assert!(vips.contains(&VIP.into()), "{vips:?}");
    assert!(
        !vips.contains(&router.into()),
        "the gateway {router} is in the maps: {vips:?}"
    );
    assert_eq!(s.services.len(), 1, "{:?}", s.services);
    let log = c.log(1);
    assert!(
        log.contains(&format!(
            "{router} is the gateway of this node's default route (via eth0)"
        )) && log.contains("neither served nor announced"),
        "no warning naming the gateway:\n{log}"
    );

    // Every ARP answer for the router's address comes from the router, none from node1.
    let lan = Capture::open(c.topo.lan(), node.lan_peer()).expect("capture");
    let reply = arp::arp_probe(c.topo.node(2).ns(), "eth0", router, Duration::from_secs(2))
        .expect("arp")
        .expect("nobody answered ARP for the router");
    assert_eq!(
        reply.sender_mac,
        c.topo.client().mac(),
        "the router's own MAC"
    );
    let hijack = lan
        .next_matching(Duration::from_millis(500), |f| {
            f.data.len() >= 42
                && f.data[12..14] == [8, 6]
                && f.data[20..22] == [0, 2]
                && f.data[28..32] == router.octets()
                && f.data[22..28] == node.mac().octets()
        })
        .expect("capture");
    assert!(hijack.is_none(), "node1 answered ARP for its gateway");

    // The rest of the file is served, and node1 still reaches its gateway.
    let answer = c
        .topo
        .client()
        .http_get(SocketAddr::V4(SocketAddrV4::new(VIP, 80)))
        .and_then(|r| r.answer())
        .unwrap_or_else(|e| panic!("the VIP: {e:#}\n{}", c.log(1)));
    assert!(answer.pod.starts_with("node1-"), "{answer:?}");
    node.ns()
        .ip(&["neigh", "flush", "dev", "eth0"])
        .expect("flush");
    let mut ping = onehop_testkit::netns::command_in(node.ns(), "ping");
    ping.args(["-c", "1", "-W", "2", &router.to_string()]);
    onehop_testkit::netns::run_checked(&mut ping).expect("node1 pings its gateway");

    // The check follows the routes, not a list: once the client is no longer the gateway,
    // a restarted agent serves its address like any other.
    node.ns()
        .ip(&["route", "del", "default"])
        .expect("remove the default route");
    c.kill_agent(1);
    c.spawn_agent(1, &["--services-file", &source], &[]);
    c.wait_for(1, "both services", |s| s.services.len() == 2);
}
