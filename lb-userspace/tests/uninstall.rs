//! `onehop uninstall` on every node of a running namespace cluster: agents serving a VIP,
//! then stopped for good (the `DaemonSet` deleted), then the uninstall run on each node as the
//! `manifests/uninstall.yaml` pod runs it. Afterwards no program of ours is attached to any
//! node's interface (checked with `ip -d link`, `bpftool net` and `tc filter`), nothing is
//! pinned, and the VIP is answered neither for ARP nor for traffic.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Command,
    time::Duration,
};

mod cluster;

use aya::programs::{SchedClassifier, TcAttachType, tc};
use cluster::{Cluster, TARGET_PORT, pods_in_use};
use lb_common::maps::programs;
use lb_userspace::dataplane::{object, uninstall};
use onehop_testkit::{
    cluster::NODE_INTERFACE,
    netns::{command_in, in_netns, run_checked},
};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
const PORT: u16 = 80;

fn services_yaml(c: &Cluster, node: u8, announce: bool) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "node: {{ ip: {} }}", c.topo.node(node).ip());
    let announced = if announce {
        VIP.to_string()
    } else {
        String::new()
    };
    let _ = writeln!(y, "announce: [{announced}]");
    let _ = writeln!(y, "services:\n  - name: web\n    vip: {VIP}");
    let _ = writeln!(
        y,
        "    ports: [{{ port: {PORT}, protocol: TCP, target_port: {TARGET_PORT} }}]"
    );
    let _ = writeln!(y, "    backends:");
    for n in 1..=2u8 {
        for p in 1..=2u8 {
            let _ = writeln!(
                y,
                "      - {{ ip: {}, node_ip: {} }}",
                c.topo.node(n).pod(p).ip(),
                c.topo.node(n).ip()
            );
        }
    }
    y
}

/// `cmd args…` in node `node`'s namespace; its stdout.
fn on_node(c: &Cluster, node: u8, cmd: &str, args: &[&str]) -> String {
    let mut command = command_in(c.topo.node(node).ns(), cmd);
    command.args(args);
    run_checked(&mut command).unwrap_or_else(|e| panic!("node{node}: {cmd} {args:?}: {e:#}"))
}

/// Everything attached to the node's interface: the XDP line of `ip -d link` (program
/// name and id), `bpftool net` (XDP and clsact programs), the classic egress filters (`tc`),
/// and the TCX programs as the kernel lists them (`BPF_PROG_QUERY`; the bpftool and
/// iproute2 of Debian 12 predate TCX and show none).
fn attachments(c: &Cluster, node: u8) -> String {
    let link = on_node(
        c,
        node,
        "ip",
        &["-d", "link", "show", "dev", NODE_INTERFACE],
    );
    let net = on_node(c, node, "bpftool", &["net", "show", "dev", NODE_INTERFACE]);
    let filters = on_node(
        c,
        node,
        "tc",
        &["filter", "show", "dev", NODE_INTERFACE, "egress"],
    );
    let tcx = in_netns(c.topo.node(node).ns(), || -> anyhow::Result<_> {
        let index = onehop_testkit::netns::ifindex(NODE_INTERFACE)?;
        Ok((
            uninstall::tcx_programs(index, false)?,
            uninstall::tcx_programs(index, true)?,
        ))
    })
    .expect("netns")
    .expect("TCX query");
    format!(
        "ip -d link:\n{link}\nbpftool net:\n{net}\ntc filter egress:\n{filters}\n\
         TCX programs: ingress {:?}, egress {:?}\n",
        tcx.0, tcx.1
    )
}

/// `ip -d link` prints a `prog/xdp` line, `bpftool net` an `<if>(<index>) driver|generic
/// id <n>` line under `xdp:`, while a program is attached.
fn xdp_attached(text: &str) -> bool {
    text.contains("prog/xdp") || text.contains("driver id") || text.contains("generic id")
}

/// No TCX program at all on the node's interface (nothing else attaches one here).
fn no_tcx(text: &str) -> bool {
    text.contains("TCX programs: ingress [], egress []")
}

/// What the TC fallback for kernels without TCX leaves: our egress program as a classic
/// filter on a `clsact` qdisc, attached over netlink (no `bpf_link`, nothing pinned). The
/// loaded object is leaked on purpose: dropping it would detach the filter over netlink in
/// whatever namespace the dropping thread is in.
fn attach_clsact_egress(c: &Cluster, node: u8) {
    in_netns(c.topo.node(node).ns(), || -> anyhow::Result<()> {
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries(lb_common::maps::MAGLEV, 1024)
            .map_max_entries(lb_common::maps::CONNTRACK, 1024)
            .map_max_entries(lb_common::maps::REV_NAT, 1024)
            .map_max_entries(lb_common::maps::AFFINITY, 1024)
            .load(object::object()?)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(programs::EGRESS)
            .ok_or_else(|| anyhow::anyhow!("no {}", programs::EGRESS))?
            .try_into()?;
        lb_userspace::dataplane::loader::verify(|| prog.load())?;
        match tc::qdisc_add_clsact(NODE_INTERFACE) {
            Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let id = prog.attach_with_options(
            NODE_INTERFACE,
            TcAttachType::Egress,
            tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
        )?;
        std::mem::forget(prog.take_link(id)?);
        std::mem::forget(ebpf);
        Ok(())
    })
    .expect("netns")
    .expect("clsact egress filter");
}

fn run_uninstall(c: &Cluster, node: u8) -> String {
    let mut cmd = command_in(c.topo.node(node).ns(), c.binary());
    cmd.arg("uninstall")
        .arg("--bpffs-root")
        .arg(c.pin_root(node));
    run_checked(&mut cmd).unwrap_or_else(|e| panic!("node{node}: onehop uninstall: {e:#}"))
}

fn served(c: &Cluster) -> bool {
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, PORT));
    c.topo
        .client()
        .http_get(vip)
        .and_then(|r| r.answer())
        .is_ok()
}

#[test]
fn uninstall_on_every_node_detaches_unpins_and_the_vip_goes_silent() {
    let c = Cluster::new(2, 2, 1);
    for node in 1..=2u8 {
        c.write_services(node, &services_yaml(&c, node, node == 1))
            .expect("services file");
        c.spawn_agent(
            node,
            &[
                "--poll-interval-ms",
                "100",
                "--services-file",
                &c.services_path(node).to_string_lossy(),
            ],
            &[],
        );
    }
    for node in 1..=2u8 {
        c.wait_for(node, "4 backends", |s| pods_in_use(s) == 4);
    }
    assert!(served(&c), "the VIP must serve before the uninstall");
    // node2 also carries the clsact filter the TC fallback would have attached.
    attach_clsact_egress(&c, 2);
    for node in 1..=2u8 {
        let before = attachments(&c, node);
        assert!(
            xdp_attached(&before) && before.contains(programs::INGRESS),
            "node{node}: XDP not attached before the uninstall:\n{before}"
        );
        assert!(
            !no_tcx(&before),
            "node{node}: no TCX egress program before the uninstall:\n{before}"
        );
    }
    assert!(
        attachments(&c, 2).contains("direct-action"),
        "the clsact filter is in place on node2"
    );

    // `kubectl delete daemonset onehop-agent`: the agents go (their links stay pinned, so
    // the VIP keeps being served from frozen maps: what the uninstall is for).
    for node in 1..=2u8 {
        c.kill_agent(node);
    }
    assert!(
        served(&c),
        "pinned links keep serving after the agents are gone"
    );

    for node in 1..=2u8 {
        let out = run_uninstall(&c, node);
        eprintln!("node{node}: onehop uninstall:\n{out}");
        assert!(
            out.contains("detached XDP link") && out.contains("detached TCX link"),
            "node{node}: {out}"
        );
        assert!(out.contains("onehop uninstalled"), "node{node}: {out}");
        if node == 2 {
            assert!(out.contains("clsact egress filter"), "node2: {out}");
        }
        let after = attachments(&c, node);
        assert!(
            !xdp_attached(&after),
            "node{node}: XDP still attached after the uninstall:\n{after}"
        );
        for name in [programs::INGRESS, programs::EGRESS] {
            assert!(
                !after.contains(name),
                "node{node}: {name} still attached after the uninstall:\n{after}"
            );
        }
        assert!(
            no_tcx(&after),
            "node{node}: TCX program still attached after the uninstall:\n{after}"
        );
        assert!(
            !after.contains("direct-action"),
            "node{node}: a clsact filter is still attached after the uninstall:\n{after}"
        );
        assert!(
            !c.pin_root(node).exists(),
            "node{node}: {} still exists",
            c.pin_root(node).display()
        );
        // Idempotent: a second run finds nothing and says so.
        let again = run_uninstall(&c, node);
        assert!(
            again.starts_with("nothing to uninstall"),
            "node{node}: {again}"
        );
    }

    assert!(!served(&c), "the VIP still serves after the uninstall");
    assert_eq!(
        c.topo
            .client()
            .arp(VIP, Duration::from_secs(1))
            .expect("arp"),
        None,
        "somebody still answers ARP for the VIP"
    );
}

/// The `--interface` form (what `onehop cleanup` does) leaves the other interfaces' pins.
#[test]
fn uninstall_of_one_interface_keeps_the_others_pinned() {
    let c = Cluster::new(1, 1, 1);
    c.write_services(1, &services_yaml_one(&c))
        .expect("services file");
    c.spawn_agent(
        1,
        &["--services-file", &c.services_path(1).to_string_lossy()],
        &[],
    );
    c.wait_for(1, "1 backend", |s| pods_in_use(s) == 1);
    c.kill_agent(1);
    let other = c.pin_root(1).join("eth7");
    std::fs::create_dir(&other).expect("another interface's pin dir");
    let mut cmd = command_in(c.topo.node(1).ns(), c.binary());
    cmd.args(["uninstall", "--interface", NODE_INTERFACE, "--bpffs-root"])
        .arg(c.pin_root(1));
    let out = run_checked(&mut cmd).expect("uninstall --interface");
    assert!(out.contains("detached XDP link"), "{out}");
    assert!(!c.pin_root(1).join(NODE_INTERFACE).exists());
    assert!(other.exists(), "another interface's pins were removed");
    assert!(c.pin_root(1).exists(), "a root still in use was removed");
    let status = Command::new(c.binary())
        .args(["status", "--interface", NODE_INTERFACE, "--bpffs-root"])
        .arg(c.pin_root(1))
        .output()
        .expect("status");
    assert!(!status.status.success(), "status still finds maps");
}

fn services_yaml_one(c: &Cluster) -> String {
    format!(
        "node: {{ ip: {ip} }}\nannounce: [{VIP}]\nservices:\n  - name: web\n    vip: {VIP}\n    \
         ports: [{{ port: {PORT}, target_port: {TARGET_PORT} }}]\n    backends:\n      \
         - {{ ip: {pod}, node_ip: {ip} }}\n",
        ip = c.topo.node(1).ip(),
        pod = c.topo.node(1).pod(1).ip(),
    )
}

/// The capabilities `manifests/uninstall.yaml` gives its init container.
fn manifest_capabilities() -> Vec<String> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/uninstall.yaml");
    let text = std::fs::read_to_string(path).expect("read the uninstall DaemonSet");
    let ds: DaemonSet = serde_saphyr::from_str(&text).expect("the uninstall DaemonSet parses");
    ds.spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.init_containers?.into_iter().next())
        .and_then(|c| c.security_context?.capabilities?.add)
        .unwrap_or_default()
}

/// `onehop uninstall` as uid 0 with `caps` as its whole capability bounding set (how the
/// uninstall pod's container runs): (succeeded, stdout and stderr).
fn uninstall_with(c: &Cluster, caps: &[String]) -> (bool, String) {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = command_in(c.topo.node(1).ns(), "setpriv");
    cmd.args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
        .arg(c.binary())
        .arg("uninstall")
        .arg("--bpffs-root")
        .arg(c.pin_root(1));
    let out = cmd.output().expect("run setpriv");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// With the manifest's capabilities alone the uninstall succeeds, and without `NET_ADMIN` it
/// fails. `BPF` is not checked the same way: since Linux 6.7 opening a pinned object needs
/// only the file's permissions, but before that every `bpf()` call needs `CAP_BPF` while
/// `kernel.unprivileged_bpf_disabled` is set (the default of most distributions).
#[test]
fn uninstall_needs_the_manifest_capabilities() {
    let caps = manifest_capabilities();
    assert!(
        caps.iter().any(|c| c == "NET_ADMIN") && caps.iter().any(|c| c == "BPF"),
        "{caps:?}"
    );
    let c = Cluster::new(1, 1, 1);
    c.write_services(1, &services_yaml_one(&c))
        .expect("services file");
    let source = c.services_path(1).to_string_lossy().into_owned();
    let attach = || {
        c.spawn_agent(1, &["--services-file", &source], &[]);
        c.wait_for(1, "1 backend", |s| pods_in_use(s) == 1);
        c.kill_agent(1);
        // The clsact fallback's filter too, so every step of the uninstall is exercised.
        attach_clsact_egress(&c, 1);
    };
    attach();
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "NET_ADMIN").cloned().collect();
    let (ok, out) = uninstall_with(&c, &fewer);
    assert!(!ok, "uninstall succeeds without NET_ADMIN:\n{out}");
    eprintln!(
        "without NET_ADMIN: {}",
        out.lines().last().unwrap_or_default()
    );
    // Finish as plain root (it is idempotent), so the next round starts clean.
    run_uninstall(&c, 1);
    attach();
    let (ok, out) = uninstall_with(&c, &caps);
    assert!(ok, "uninstall fails with {caps:?} alone:\n{out}");
    let after = attachments(&c, 1);
    assert!(!xdp_attached(&after) && no_tcx(&after), "{after}");
    assert!(!after.contains("direct-action"), "{after}");
    assert!(!c.pin_root(1).exists());
}
