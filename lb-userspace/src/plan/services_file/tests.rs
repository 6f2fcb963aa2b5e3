use super::*;
use proptest::prelude::*;
use std::net::Ipv6Addr;

const EXAMPLE: &str = "\
node:
  ip: 192.168.50.11
nat_ports: { min: 62000, max: 63000 }
flow_timeouts: { tcp_closing: 30, udp: 60 }
announce: [192.168.50.100]
services:
  - name: web
    vip: 192.168.50.100
    ports:
      - { port: 80, protocol: TCP, target_port: 8080 }
      - { port: 53, protocol: UDP }
    session_affinity: ClientIP
    session_affinity_timeout_seconds: 600
    source_ranges: [10.0.0.0/8, 192.168.50.0/24]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.11 }
      - { ip: 10.42.1.7, node_ip: 192.168.50.12 }
  - name: dns
    vip: 192.168.50.101
    ports:
      - port: 53
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ok(text: &str) -> NodeServices {
    match parse(text, &Limits::default()) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// The issues of an invalid file, rendered.
fn issues(text: &str) -> Vec<String> {
    issues_with(text, &Limits::default())
}

fn issues_with(text: &str, limits: &Limits) -> Vec<String> {
    match parse(text, limits) {
        Ok(f) => panic!("expected errors, parsed {f:?}"),
        Err(ConfigError::Syntax(e)) => panic!("expected semantic errors, got syntax error {e}"),
        Err(ConfigError::Empty) => panic!("expected semantic errors, got an empty file"),
        Err(e @ ConfigError::Invalid(_)) => e.issues().iter().map(ToString::to_string).collect(),
    }
}

fn syntax_error(text: &str) -> String {
    match parse(text, &Limits::default()) {
        Err(e @ ConfigError::Syntax(_)) => e.to_string(),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// A one-service file with `extra` lines appended to the service (at
/// 4-space indentation) and the ports list given.
fn service_with(extra: &str) -> String {
    format!(
        "services:\n  - name: web\n    vip: 192.168.50.100\n    ports: [{{ port: 80 }}]\n{extra}"
    )
}

#[test]
fn parses_the_example() {
    let f = ok(EXAMPLE);
    assert_eq!(
        f,
        NodeServices {
            node_ip: Some(ip4("192.168.50.11")),
            node_ip6: None,
            nat_ports: NatPorts {
                min: 62000,
                max: 63000
            },
            flow_timeouts: FlowTimeouts::new(60, 21_600, 30, 60, 5, 2),
            maglev_table_size: MaglevSize::DEFAULT,
            direct_return: crate::plan::model::DirectReturn::Off,
            announce: [ip("192.168.50.100")].into(),
            services: vec![
                Service {
                    name: "web".into(),
                    vip: ip("192.168.50.100"),
                    ports: vec![
                        ServicePort {
                            port: 80,
                            protocol: Protocol::Tcp,
                            target_port: 8080
                        },
                        ServicePort {
                            port: 53,
                            protocol: Protocol::Udp,
                            target_port: 53
                        },
                    ],
                    session_affinity: SessionAffinity::ClientIp { timeout_s: 600 },
                    source_ranges: vec![
                        Cidr {
                            addr: ip("10.0.0.0"),
                            prefix_len: 8
                        },
                        Cidr {
                            addr: ip("192.168.50.0"),
                            prefix_len: 24
                        },
                    ],
                    maglev_table_size: None,
                    draining: Vec::new(),
                    backend_ports: std::collections::BTreeMap::new(),
                    backends: vec![
                        Backend {
                            ip: ip("10.42.0.5"),
                            node_ip: ip("192.168.50.11")
                        },
                        Backend {
                            ip: ip("10.42.1.7"),
                            node_ip: ip("192.168.50.12")
                        },
                    ],
                },
                Service {
                    name: "dns".into(),
                    vip: ip("192.168.50.101"),
                    ports: vec![ServicePort {
                        port: 53,
                        protocol: Protocol::Tcp,
                        target_port: 53
                    }],
                    session_affinity: SessionAffinity::None,
                    source_ranges: vec![],
                    maglev_table_size: None,
                    draining: Vec::new(),
                    backend_ports: std::collections::BTreeMap::new(),
                    backends: vec![],
                },
            ],
        }
    );
}

#[test]
fn module_doc_example_is_valid() {
    let doc = include_str!("../services_file.rs");
    let mut yaml = String::new();
    for l in doc
        .lines()
        .skip_while(|l| !l.starts_with("//! ```yaml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
    {
        yaml.push_str(l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""));
        yaml.push('\n');
    }
    assert!(yaml.contains("services:"), "{yaml}");
    let f = ok(&yaml);
    assert_eq!(f.services.len(), 1);
    assert_eq!(
        f.services[0].session_affinity,
        SessionAffinity::ClientIp {
            timeout_s: DEFAULT_AFFINITY_TIMEOUT_S
        }
    );
}

#[test]
fn defaults() {
    let f = ok(&service_with("    session_affinity: ClientIP\n"));
    assert_eq!(f.node_ip, None);
    assert_eq!(f.nat_ports, NatPorts::default());
    assert_eq!(f.nat_ports.min, 61000);
    assert_eq!(f.nat_ports.max, 65535);
    assert!(f.announce.is_empty());
    let s = &f.services[0];
    assert_eq!(
        s.ports,
        vec![ServicePort {
            port: 80,
            protocol: Protocol::Tcp,
            target_port: 80
        }]
    );
    assert_eq!(
        s.session_affinity,
        SessionAffinity::ClientIp { timeout_s: 10_800 }
    );
    let none = ok(&service_with("    session_affinity: None\n"));
    assert_eq!(none.services[0].session_affinity, SessionAffinity::None);
}

#[test]
fn an_explicit_empty_list_is_an_empty_configuration() {
    for text in [
        "services: []\n",
        "# nothing here yet\nservices: []\n",
        "---\nservices: []\n",
    ] {
        let f = ok(text);
        assert!(f.services.is_empty(), "{text:?}");
        assert!(f.announce.is_empty(), "{text:?}");
        assert_eq!(f.nat_ports, NatPorts::default());
    }
}

/// What a file truncated in place looks like to a reader: these must never
/// be read as "serve nothing".
#[test]
fn empty_files_are_rejected_not_applied_as_no_services() {
    for text in [
        "",
        "\n",
        "   \n\t\n",
        "# nothing yet\n",
        "---\n",
        "---\n...\n",
    ] {
        match parse(text, &Limits::default()) {
            Err(e @ ConfigError::Empty) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("empty") && msg.contains("services: []"),
                    "{text:?}: {msg}"
                );
            }
            other => panic!("{text:?}: expected ConfigError::Empty, got {other:?}"),
        }
    }
}

#[test]
fn a_file_without_its_services_list_is_rejected() {
    for text in [
        // Cut right after the key, or before it.
        "services:\n",
        "services: ~\n",
        "node: { ip: 192.168.50.11 }\n",
        "node: { ip: 192.168.50.11 }\nnat_ports: { min: 62000, max: 63000 }\n",
    ] {
        let got = issues(text);
        assert_eq!(got.len(), 1, "{text:?}: {got:?}");
        assert!(
            got[0].starts_with("services: missing") && got[0].contains("services: []"),
            "{text:?}: {got:?}"
        );
    }
    // Reported together with the file's other problems.
    let got = issues("announce: [192.168.50.100]\n");
    assert!(
        got.iter().any(|i| i.starts_with("services: missing")),
        "{got:?}"
    );
    assert!(got.iter().any(|i| i.starts_with("announce[0]")), "{got:?}");
}

/// A file cut anywhere inside a document (as a non-atomic save leaves it for
/// a moment) is either rejected or, when the cut falls exactly between two
/// entries, still a well-formed file; it never parses into something with
/// more than the full file had, and an empty prefix is never "no services".
#[test]
fn every_prefix_of_a_file_is_rejected_or_a_subset() {
    let full = ok(EXAMPLE);
    let mut rejected = 0;
    for cut in 0..EXAMPLE.len() {
        let prefix = &EXAMPLE[..cut];
        match parse(prefix, &Limits::default()) {
            Err(_) => rejected += 1,
            Ok(f) => {
                assert!(
                    !f.services.is_empty(),
                    "the first {cut} bytes parse as a file without services:\n{prefix}"
                );
                assert!(f.services.len() <= full.services.len(), "{prefix}");
                for s in &f.services {
                    assert!(
                        full.services
                            .iter()
                            .any(|g| g.name == s.name && g.vip == s.vip),
                        "a prefix invented {s:?}"
                    );
                }
            }
        }
    }
    // Most cuts land mid-token or mid-line and must fail.
    assert!(
        rejected > EXAMPLE.len() / 2,
        "only {rejected} of {} prefixes rejected",
        EXAMPLE.len()
    );
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    for text in [
        "servics: []\n".to_string(),
        "node: { ip: 192.168.50.11, mac: x }\n".to_string(),
        "nat_ports: { min: 2000, max: 3000, step: 1 }\n".to_string(),
        service_with("    weight: 3\n"),
        "services:\n  - name: web\n    vip: 192.168.50.100\n    ports: [{ port: 80, nodePort: 30080 }]\n"
            .to_string(),
        service_with("    backends: [{ ip: 10.42.0.5, node_ip: 192.168.50.11, zone: a }]\n"),
    ] {
        let msg = syntax_error(&text);
        assert!(msg.contains("unknown field"), "{text}: {msg}");
    }
}

#[test]
fn syntax_errors_say_where() {
    let msg = syntax_error("services:\n  - name: web\n    vip: [1, 2\n");
    assert!(msg.contains("line"), "{msg}");
    let msg = syntax_error(&service_with("    backends: 3\n"));
    assert!(msg.contains("line 5"), "{msg}");
    // Missing required fields are shape errors too.
    let msg = syntax_error("services:\n  - name: web\n    ports: [{ port: 80 }]\n");
    assert!(msg.contains("vip"), "{msg}");
}

#[test]
fn reports_every_problem_with_path_and_line() {
    let text = "\
node:
  ip: 192.168.50.11
nat_ports: { min: 80, max: 70 }
announce: [192.168.50.100, 192.168.50.199]
services:
  - name: Web_1
    vip: 192.168.50.300
    ports:
      - { port: 0, protocol: SCTP }
  - name: db
    vip: 192.168.50.11
    ports:
      - { port: 5432 }
      - { port: 5433, target_port: 70000 }
    session_affinity_timeout_seconds: 5
    source_ranges: [10.0.0.1/8, 10.0.0.0/33, nonsense]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.12 }
      - { ip: 10.42.0.5, node_ip: 192.168.50.12 }
      - { ip: 127.0.0.1, node_ip: 224.0.0.1 }
";
    assert_eq!(
        issues(text),
        vec![
            "nat_ports.min (line 3): must be at least 1024, not 80",
            "nat_ports (line 3): min 80 is greater than max 70",
            "services[0].name (line 6): \"Web_1\" is not a DNS label (1-63 of a-z, 0-9 and '-', \
             starting and ending with a letter or digit)",
            "services[0].vip (line 7): \"192.168.50.300\" is not an IPv4 address",
            "services[0].ports[0].port (line 9): must be 1..=65535, not 0",
            "services[0].ports[0].protocol (line 9): must be TCP or UDP, not \"SCTP\"",
            "services[1].ports[1].target_port (line 14): must be 1..=65535, not 70000",
            "services[1].session_affinity_timeout_seconds (line 15): only allowed with \
             session_affinity: ClientIP",
            "services[1].source_ranges[0] (line 16): \"10.0.0.1/8\" has host bits set (the \
             network is 10.0.0.0/8)",
            "services[1].source_ranges[1] (line 16): \"10.0.0.0/33\" is not an IPv4 CIDR: \
             prefix length must be 0..=32",
            "services[1].source_ranges[2] (line 16): \"nonsense\" is not a CIDR (expected e.g. \
             10.0.0.0/8)",
            "services[1].backends[1].ip (line 19): 10.42.0.5 is already listed in \
             services[1].backends[0]",
            "services[1].backends[2].ip (line 20): 127.0.0.1 is a loopback address",
            "services[1].backends[2].node_ip (line 20): 224.0.0.1 is a multicast address",
            "services[1].vip (line 11): 192.168.50.11 is the node's own address (node.ip)",
            "announce[0] (line 4): 192.168.50.100 is not the vip of any service",
            "announce[1] (line 4): 192.168.50.199 is not the vip of any service",
        ]
    );
}

#[test]
fn error_display_lists_all_issues() {
    let err = parse(
        &service_with("    session_affinity: Sticky\n    source_ranges: [1.2.3.4]\n"),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the services file has 2 errors:\n  \
         services[0].session_affinity (line 5): must be None or ClientIP, not \"Sticky\"\n  \
         services[0].source_ranges[0] (line 6): \"1.2.3.4\" is not a CIDR (expected e.g. \
         10.0.0.0/8)"
    );
}

#[test]
fn cross_service_checks() {
    let text = "\
node: { ip: 192.168.50.11 }
announce: [192.168.50.100, 192.168.50.100]
services:
  - name: web
    vip: 192.168.50.100
    ports: [{ port: 80 }, { port: 80, protocol: UDP }, { port: 80, target_port: 81 }]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.12 }
  - name: web
    vip: 192.168.50.100
    ports: [{ port: 80 }]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.13 }
  - name: self
    vip: 192.168.50.11
    ports: [{ port: 443 }]
  - name: other-node
    vip: 192.168.50.12
    ports: [{ port: 443 }]
  - name: pod
    vip: 10.42.0.5
    ports: [{ port: 443 }]
";
    assert_eq!(
        issues(text),
        vec![
            "services[0].ports[2] (line 6): TCP port 80 is already listed in services[0].ports[0]",
            "services[1].backends[0].node_ip (line 13): pod 10.42.0.5 runs on 192.168.50.13, but \
             services[0].backends[0] says it runs on 192.168.50.12",
            "services[1].name (line 9): \"web\" is already the name of services[0]",
            "services[1].ports[0] (line 11): TCP 192.168.50.100:80 is already served by \
             services[0]",
            "services[2].vip (line 15): 192.168.50.11 is the node's own address (node.ip)",
            "services[3].vip (line 18): 192.168.50.12 is a node address (node_ip of \
             services[0].backends[0])",
            "services[4].vip (line 21): 10.42.0.5 is a pod address (ip of services[0].backends[0])",
            "announce[1] (line 2): 192.168.50.100 is listed twice",
        ]
    );
}

#[test]
fn vip_address_classes() {
    for (vip, what) in [
        ("0.0.0.0", "the unspecified address"),
        ("127.0.0.2", "a loopback address"),
        ("239.1.1.1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("::", "the unspecified address"),
        ("::1", "a loopback address"),
        ("ff02::1", "a multicast address"),
        (
            "fe80::1",
            "a link-local address (it names no host beyond one link)",
        ),
        (
            "::ffff:10.0.0.1",
            "an IPv4-mapped address (write the IPv4 address)",
        ),
    ] {
        // Quoted: a bare `::` is not a YAML scalar.
        let text =
            format!("services:\n  - name: a\n    vip: \"{vip}\"\n    ports: [{{ port: 1 }}]\n");
        assert_eq!(
            issues(&text),
            vec![format!("services[0].vip (line 3): {vip} is {what}")]
        );
    }
    for bad in ["1.2.3", "1.2.3.4.5", "01.2.3.4x", "", "a.b.c.d"] {
        let text =
            format!("services:\n  - name: a\n    vip: \"{bad}\"\n    ports: [{{ port: 1 }}]\n");
        assert_eq!(
            issues(&text),
            vec![format!(
                "services[0].vip (line 3): {bad:?} is not an IPv4 address"
            )]
        );
    }
    for bad in ["fd00::1::2", "fd00:x::1", "1:2:3:4:5:6:7:8:9"] {
        let text =
            format!("services:\n  - name: a\n    vip: \"{bad}\"\n    ports: [{{ port: 1 }}]\n");
        assert_eq!(
            issues(&text),
            vec![format!(
                "services[0].vip (line 3): {bad:?} is not an IPv6 address"
            )]
        );
    }
    let text = "node: { ip: 0.0.0.0 }\nservices: []\n";
    assert_eq!(
        issues(text),
        vec!["node.ip (line 1): 0.0.0.0 is the unspecified address"]
    );
}

#[test]
fn ports_and_timeouts_ranges() {
    for (port, good) in [
        (1, true),
        (65535, true),
        (0, false),
        (65536, false),
        (-1, false),
    ] {
        let text =
            format!("services:\n  - name: a\n    vip: 10.0.0.1\n    ports: [{{ port: {port} }}]\n");
        assert_eq!(parse(&text, &Limits::default()).is_ok(), good, "{port}");
    }
    for (t, good) in [
        (1, true),
        (86_400, true),
        (0, false),
        (86_401, false),
        (-5, false),
    ] {
        let text = service_with(&format!(
            "    session_affinity: ClientIP\n    session_affinity_timeout_seconds: {t}\n"
        ));
        match parse(&text, &Limits::default()) {
            Ok(f) => {
                assert!(good, "{t}");
                assert_eq!(
                    f.services[0].session_affinity,
                    SessionAffinity::ClientIp {
                        timeout_s: u32::try_from(t).unwrap()
                    }
                );
            }
            Err(e) => {
                assert!(!good, "{t}: {e}");
                assert_eq!(
                    e.issues()[0].to_string(),
                    format!(
                        "services[0].session_affinity_timeout_seconds (line 6): must be \
                         1..=86400, not {t}"
                    )
                );
            }
        }
    }
    assert_eq!(
        issues("services:\n  - name: a\n    vip: 10.0.0.1\n    ports: []\n"),
        vec!["services[0].ports (line 4): must list at least one port"]
    );
    assert_eq!(
        issues("nat_ports: { min: 1023, max: 1023 }\nservices: []\n"),
        vec!["nat_ports.min (line 1): must be at least 1024, not 1023"]
    );
    assert_eq!(
        ok("nat_ports: { min: 1024, max: 1024 }\nservices: []\n").nat_ports,
        NatPorts {
            min: 1024,
            max: 1024
        }
    );
    assert_eq!(
        issues("nat_ports: { min: 2000, max: 65536 }\nservices: []\n"),
        vec!["nat_ports.max (line 1): must be 1..=65535, not 65536"]
    );
}

#[test]
fn limits_are_enforced() {
    let text = "\
services:
  - name: a
    vip: 10.0.0.1
    ports: [{ port: 80 }, { port: 81, target_port: 8081 }]
    source_ranges: [10.0.0.0/8]
    maglev_table_size: 251
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.12 }
      - { ip: 10.42.0.6, node_ip: 192.168.50.12 }
";
    let exact = Limits {
        max_vips: 2,
        max_services: 2,
        max_backends: 4,
        max_src_ranges: 2,
        maglev_slots: 2 * 251,
        ..Limits::default()
    };
    ok_with(text, &exact);
    let tight = Limits {
        max_vips: 1,
        max_services: 1,
        max_backends: 3,
        max_src_ranges: 1,
        maglev_slots: 2 * 251 - 1,
        ..Limits::default()
    };
    assert_eq!(
        issues_with(text, &tight),
        vec![
            "services (line 2): 2 service ports (VIP, port, protocol), more than the 1 the maps \
             hold",
            "services (line 2): 2 addresses in the vips map (VIPs and the node), more than the 1 \
             the maps hold",
            "services (line 2): 4 backends (pod address, target port), more than the 3 the maps \
             hold",
            "services (line 2): 2 source-range entries (ranges x ports), more than the 1 the maps \
             hold",
            "services (line 2): 502 Maglev table slots, more than the 501 the maps hold",
        ]
    );
}

fn ok_with(text: &str, limits: &Limits) -> NodeServices {
    parse(text, limits).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn cidrs() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert_eq!(c.to_string(), "10.0.0.0/8");
    assert!(c.contains(ip("10.255.1.2")));
    assert!(!c.contains(ip("11.0.0.0")));
    assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix_len, 0);
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    assert_eq!(Cidr::parse("1.2.3.4/32").unwrap().addr, ip("1.2.3.4"));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "10.0.0/8",
        "x/8",
        "10.0.0.0/8/8",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        Cidr::parse("192.168.1.1/16").unwrap_err(),
        "\"192.168.1.1/16\" has host bits set (the network is 192.168.0.0/16)"
    );
    assert_eq!(Cidr::mask(0), 0);
    assert_eq!(Cidr::mask(1), 0x8000_0000);
    assert_eq!(Cidr::mask(32), u32::MAX);
}

#[test]
fn dns_labels() {
    for good in ["a", "web", "web-1", "1web", &"a".repeat(63)] {
        assert!(is_dns_label(good), "{good}");
    }
    for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64), "é"] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}

#[test]
fn protocol_numbers() {
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!(Protocol::Udp.to_string(), "UDP");
}

#[test]
fn direct_return_is_off_unless_the_file_turns_it_on() {
    assert_eq!(ok("services: []\n").direct_return, DirectReturn::Off);
    assert_eq!(
        ok("direct_return: true\nservices: []\n").direct_return,
        DirectReturn::Segment
    );
    assert_eq!(
        ok("direct_return: false\nservices: []\n").direct_return,
        DirectReturn::Off
    );
    assert!(syntax_error("direct_return: sometimes\nservices: []\n").contains("line 1"));
}

#[test]
fn maglev_table_sizes() {
    let f = ok("services: []\n");
    assert_eq!(f.maglev_table_size, MaglevSize::DEFAULT);
    let f = ok(&format!(
        "maglev_table_size: 4093\n{}    maglev_table_size: 101\n  - name: dns\n    vip: 192.168.50.101\n    ports: [{{ port: 53 }}]\n",
        service_with("")
    ));
    assert_eq!(f.maglev_table_size.get(), 4093);
    assert_eq!(
        f.services[0].maglev_table_size.map(MaglevSize::get),
        Some(101)
    );
    assert_eq!(f.services[1].maglev_table_size, None);
    assert_eq!(f.services[1].table_size(f.maglev_table_size).get(), 4093);
    assert_eq!(
        issues("maglev_table_size: 1000\nservices: []\n"),
        [
            "maglev_table_size (line 1): 1000 is not a Maglev table size; use one of \
          101, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521"
        ]
    );
    assert_eq!(
        issues(&service_with("    maglev_table_size: -5\n")),
        [
            "services[0].maglev_table_size (line 5): -5 is not a Maglev table size; use one of \
          101, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521"
        ]
    );
    assert_eq!(
        issues(&service_with("    maglev_table_size: 99999999999\n")).len(),
        1
    );
    assert!(syntax_error(&service_with("    maglev_table_size: big\n")).contains("line 5"));
}

#[test]
fn maglev_slots_count_the_configured_sizes() {
    // Two one-port services of 2 backends: 2 x 1021 slots at the default.
    let text = |default: &str, own: &str| {
        format!(
            "{default}services:\n  - name: a\n    vip: 10.0.0.1\n    ports: [{{ port: 80 }}]\n{own}    backends: [{{ ip: 10.1.0.1, node_ip: 10.2.0.1 }}, {{ ip: 10.1.0.2, node_ip: 10.2.0.1 }}]\n  - name: b\n    vip: 10.0.0.2\n    ports: [{{ port: 80 }}]\n    backends: [{{ ip: 10.1.0.3, node_ip: 10.2.0.1 }}, {{ ip: 10.1.0.4, node_ip: 10.2.0.1 }}]\n"
        )
    };
    let fits = Limits {
        maglev_slots: 2 * 1021,
        ..Limits::default()
    };
    assert!(parse(&text("", ""), &fits).is_ok());
    let short = Limits {
        maglev_slots: 2 * 1021 - 1,
        ..Limits::default()
    };
    let e = parse(&text("", ""), &short).unwrap_err().to_string();
    assert!(
        e.contains("2042 Maglev table slots, more than the 2041"),
        "{e}"
    );
    // A smaller size of the file or of a service fits where the default does not.
    assert!(parse(&text("maglev_table_size: 509\n", ""), &short).is_ok());
    assert!(parse(&text("", "    maglev_table_size: 251\n"), &short).is_ok());
    // A table that grows (here 2 backends in 101 slots hold, 11 would not) is
    // counted at its grown size.
    let e = parse(&text("", "    maglev_table_size: 65521\n"), &short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("66542 Maglev table slots"), "{e}");
}

// --- property tests: any valid model, written as YAML, parses back to itself.

/// Service `i`, IPv6 when `v6` (with ranges of both families either way).
fn arb_service(i: usize, v6: bool) -> impl Strategy<Value = Service> {
    (
        proptest::collection::btree_map((1u16.., any::<bool>()), 1u16.., 1..4),
        proptest::option::of(1u32..=MAX_AFFINITY_TIMEOUT_S),
        proptest::collection::btree_set((any::<u128>(), 0u8..=128, any::<bool>()), 0..3),
        proptest::collection::btree_map(0u32..1000, 0u32..4, 0..5),
        proptest::option::of(arb_maglev_size()),
    )
        .prop_map(move |(ports, affinity, ranges, backends, size)| Service {
            name: format!("svc-{i}"),
            vip: if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0x60,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::try_from(i + 1).unwrap(),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(192, 168, 60, u8::try_from(i + 1).unwrap()))
            },
            ports: ports
                .into_iter()
                .map(|((port, udp), target_port)| ServicePort {
                    port,
                    protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                    target_port,
                })
                .collect(),
            session_affinity: affinity.map_or(SessionAffinity::None, |timeout_s| {
                SessionAffinity::ClientIp { timeout_s }
            }),
            source_ranges: ranges
                .into_iter()
                .map(|(a, len, six)| {
                    if six {
                        Cidr {
                            addr: IpAddr::V6(Ipv6Addr::from(a & Cidr::mask6(len))),
                            prefix_len: len,
                        }
                    } else {
                        let a = u32::try_from(a & u128::from(u32::MAX)).unwrap();
                        Cidr::v4(Ipv4Addr::from(a), len % 33)
                    }
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            maglev_table_size: size,
            draining: Vec::new(),
            backend_ports: std::collections::BTreeMap::new(),
            backends: backends
                .into_iter()
                .map(|(pod, node)| Backend {
                    // One node per pod address, fixed by the pod number (by `arb_file`).
                    ip: pod_ip(pod, v6),
                    node_ip: node_ip(pod + node, v6),
                })
                .collect(),
        })
}

/// Pod `n`'s address (`10.42.x.y` or `fd00:42::n`).
fn pod_ip(n: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(0xfd00_0042_u128 << 96 | u128::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a2a_0000 + n))
    }
}

/// The pod number of a [`pod_ip`] address.
fn pod_number(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => u32::from(a) - 0x0a2a_0000,
        IpAddr::V6(a) => u32::try_from(u128::from(a) & 0xffff_ffff).unwrap(),
    }
}

/// The node of pod `n`: one of four, named by their IPv4 address for an
/// IPv4 pod, and for an IPv6 pod by their IPv6 address (nodes 10 and 11) or
/// by their IPv4 one (nodes 12 and 13, as if they had no IPv6 address).
fn node_ip(n: u32, v6: bool) -> IpAddr {
    let node = u8::try_from(10 + n % 4).unwrap();
    if v6 && node < 12 {
        // fd00:50::10 and fd00:50::11, as the planner tests' node is fd00:50::10.
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x50,
            0,
            0,
            0,
            0,
            0,
            0x10 + u16::from(node - 10),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 168, 50, node))
    }
}

/// The smaller table sizes: the planner's test limits hold a few services'
/// tables of these twice over.
fn arb_maglev_size() -> impl Strategy<Value = MaglevSize> {
    proptest::sample::select(vec![101u32, 251, 509, 1021])
        .prop_map(|m| MaglevSize::new(m).expect("an allowed size"))
}

pub(crate) fn arb_file() -> impl Strategy<Value = NodeServices> {
    (1usize..5)
        .prop_flat_map(|n| proptest::collection::vec(any::<bool>(), n))
        .prop_flat_map(|v6| {
            let n = v6.len();
            (
                v6.into_iter()
                    .enumerate()
                    .map(|(i, v6)| arb_service(i, v6))
                    .collect::<Vec<_>>(),
                proptest::collection::btree_set(0..n, 0..=n),
                any::<bool>(),
                (1024u16..=u16::MAX, 0u16..200),
                arb_maglev_size(),
            )
        })
        .prop_map(|(mut services, announce, with_node, (min, span), size)| {
            // Node of each pod fixed across services (config rejects conflicts).
            for s in &mut services {
                for b in &mut s.backends {
                    b.node_ip = node_ip(pod_number(b.ip), b.ip.is_ipv6());
                }
            }
            NodeServices {
                node_ip: with_node.then(|| Ipv4Addr::new(192, 168, 50, 10)),
                node_ip6: with_node.then(|| Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10)),
                nat_ports: NatPorts {
                    min,
                    max: min.saturating_add(span),
                },
                flow_timeouts: FlowTimeouts::DEFAULT,
                maglev_table_size: size,
                direct_return: crate::plan::model::DirectReturn::Off,
                announce: announce.into_iter().map(|i| services[i].vip).collect(),
                services,
            }
        })
}

pub(crate) fn to_yaml(f: &NodeServices) -> String {
    use std::fmt::Write as _;
    let mut y = String::new();
    if f.node_ip.is_some() || f.node_ip6.is_some() {
        writeln!(y, "node:").unwrap();
    }
    if let Some(ip) = f.node_ip {
        writeln!(y, "  ip: {ip}").unwrap();
    }
    if let Some(ip) = f.node_ip6 {
        writeln!(y, "  ip6: {ip}").unwrap();
    }
    writeln!(
        y,
        "nat_ports: {{ min: {}, max: {} }}",
        f.nat_ports.min, f.nat_ports.max
    )
    .unwrap();
    writeln!(y, "maglev_table_size: {}", f.maglev_table_size).unwrap();
    writeln!(y, "direct_return: {}", f.direct_return.on()).unwrap();
    let announce: Vec<String> = f.announce.iter().map(|a| format!("\"{a}\"")).collect();
    writeln!(y, "announce: [{}]", announce.join(", ")).unwrap();
    writeln!(y, "services:").unwrap();
    for s in &f.services {
        writeln!(y, "  - name: {}\n    vip: {}\n    ports:", s.name, s.vip).unwrap();
        for p in &s.ports {
            writeln!(
                y,
                "      - {{ port: {}, protocol: {}, target_port: {} }}",
                p.port, p.protocol, p.target_port
            )
            .unwrap();
        }
        if let SessionAffinity::ClientIp { timeout_s } = s.session_affinity {
            writeln!(
                y,
                "    session_affinity: ClientIP\n    session_affinity_timeout_seconds: {timeout_s}"
            )
            .unwrap();
        }
        let ranges: Vec<String> = s.source_ranges.iter().map(|r| format!("\"{r}\"")).collect();
        writeln!(y, "    source_ranges: [{}]", ranges.join(", ")).unwrap();
        if let Some(size) = s.maglev_table_size {
            writeln!(y, "    maglev_table_size: {size}").unwrap();
        }
        writeln!(y, "    backends:").unwrap();
        for b in &s.backends {
            writeln!(
                y,
                "      - {{ ip: \"{}\", node_ip: \"{}\" }}",
                b.ip, b.node_ip
            )
            .unwrap();
        }
        if s.backends.is_empty() {
            y.truncate(y.len() - "    backends:\n".len());
            writeln!(y, "    backends: []").unwrap();
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn valid_models_round_trip(file in arb_file()) {
        let yaml = to_yaml(&file);
        let parsed = parse(&yaml, &Limits::default()).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(parsed, file);
    }

    /// Any port number is either accepted as itself or reported with its
    /// path and line; parsing never panics.
    #[test]
    fn any_port_number(port in any::<i64>(), target in any::<i64>()) {
        let text = format!("services:\n  - name: a\n    vip: 10.0.0.1\n    ports: [{{ port: {port}, target_port: {target} }}]\n");
        let valid = |p: i64| (1..=65535).contains(&p);
        match parse(&text, &Limits::default()) {
            Ok(f) => {
                prop_assert!(valid(port) && valid(target));
                prop_assert_eq!(i64::from(f.services[0].ports[0].port), port);
                prop_assert_eq!(i64::from(f.services[0].ports[0].target_port), target);
            }
            Err(e) => {
                prop_assert!(!valid(port) || !valid(target));
                for issue in e.issues() {
                    prop_assert_eq!(issue.line, 4);
                    prop_assert!(issue.path.starts_with("services[0].ports[0]."));
                }
                prop_assert_eq!(e.issues().len(), usize::from(!valid(port)) + usize::from(!valid(target)));
            }
        }
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_does_not_panic(text in "\\PC{0,200}") {
        let _ = parse(&text, &Limits::default());
    }
}

/// The YAML budget must not be what limits a file: 12,000 services (serde-saphyr's default
/// node budget stopped at about 10,000).
#[test]
fn large_files_parse() {
    use std::fmt::Write as _;
    let mut y = String::from("maglev_table_size: 251\nservices:\n");
    for i in 0..12_000u32 {
        let [_, _, a, b] = i.to_be_bytes();
        let _ = writeln!(
            y,
            "  - name: s{i}\n    vip: 172.20.{a}.{b}\n    ports: [{{ port: 80, protocol: TCP, target_port: 8080 }}]\n    backends:"
        );
        for k in 0..2u8 {
            let _ = writeln!(
                y,
                "      - {{ ip: 10.42.{k}.2, node_ip: 192.168.50.{} }}",
                11 + k
            );
        }
    }
    let limits = Limits {
        maglev_slots: 12_000 * 251,
        ..Limits::default()
    };
    let f = ok_with(&y, &limits);
    assert_eq!(f.services.len(), 12_000);
    assert_eq!(f.services[11_999].backends.len(), 2);
}

#[test]
fn flow_timeouts_default_each_and_are_bounded() {
    let f = ok("flow_timeouts: {}\nservices: []\n");
    assert_eq!(f.flow_timeouts, FlowTimeouts::DEFAULT);
    let f = ok("flow_timeouts: { tcp_established: 86400 }\nservices: []\n");
    assert_eq!(
        f.flow_timeouts,
        FlowTimeouts::new(60, 86_400, 10, 30, 5, 2),
        "the others keep their defaults"
    );
    let f = ok("flow_timeouts: { udp_reclaim: 7, tcp_reclaim: 3 }\nservices: []\n");
    assert_eq!(
        (f.flow_timeouts.udp_reclaim_s, f.flow_timeouts.tcp_reclaim_s),
        (7, 3)
    );
    assert_eq!(
        issues(
            "flow_timeouts: { tcp_syn: 1, tcp_closing: -5, udp: 2592001, tcp_reclaim: 0 }\nservices: []\n"
        ),
        [
            "flow_timeouts.tcp_syn (line 1): must be 2..=2592000 seconds, not 1",
            "flow_timeouts.tcp_closing (line 1): must be 2..=2592000 seconds, not -5",
            "flow_timeouts.udp (line 1): must be 2..=2592000 seconds, not 2592001",
            "flow_timeouts.tcp_reclaim (line 1): must be 2..=2592000 seconds, not 0",
        ]
    );
    assert!(syntax_error("flow_timeouts: { tcp_fin: 5 }\nservices: []\n").contains("tcp_fin"));
}

/// Addresses the node's environment reserves (its gateways) come out of a parsed file:
/// their services and their announcement, nothing else.
#[test]
fn withheld_addresses_leave_the_rest_of_the_file() {
    let mut f = ok(EXAMPLE);
    let reserved = std::collections::BTreeMap::from([
        (ip("192.168.50.100"), "the gateway".to_owned()),
        (ip("192.168.50.1"), "another gateway".to_owned()),
    ]);
    let hit = f.withhold(&reserved);
    assert_eq!(hit, [(ip("192.168.50.100"), "the gateway".to_owned())]);
    assert_eq!(
        f.services.iter().map(|s| s.vip).collect::<Vec<_>>(),
        [ip("192.168.50.101")]
    );
    assert!(f.announce.is_empty());
    // Nothing reserved: nothing changes.
    let mut g = ok(EXAMPLE);
    assert!(g.withhold(&std::collections::BTreeMap::new()).is_empty());
    assert_eq!(g, ok(EXAMPLE));
}

#[test]
fn parses_ipv6_services() {
    let f = ok("\
node:
  ip: 192.168.50.11
  ip6: fd00:50::11
announce: [\"fd00:60::1\", 192.168.50.100]
services:
  - name: web6
    vip: fd00:60::1
    ports: [{ port: 80, target_port: 8080 }]
    source_ranges: [\"fd00:10::/32\", 10.0.0.0/8]
    backends:
      - { ip: \"fd00:42::5\", node_ip: \"fd00:50::11\" }
      - { ip: \"fd00:42::7\", node_ip: 192.168.50.12 }
  - name: web
    vip: 192.168.50.100
    ports: [{ port: 80 }]
");
    assert_eq!(f.node_ip6, Some("fd00:50::11".parse().unwrap()));
    assert_eq!(f.announce, [ip("fd00:60::1"), ip("192.168.50.100")].into());
    let s = &f.services[0];
    assert_eq!(s.vip, ip("fd00:60::1"));
    assert_eq!(
        s.source_ranges,
        [
            Cidr::parse("fd00:10::/32").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap()
        ]
    );
    assert_eq!(
        s.own_family_ranges().collect::<Vec<_>>(),
        [Cidr::parse("fd00:10::/32").unwrap()]
    );
    assert_eq!(
        s.backends,
        [
            Backend {
                ip: ip("fd00:42::5"),
                node_ip: ip("fd00:50::11")
            },
            Backend {
                ip: ip("fd00:42::7"),
                node_ip: ip("192.168.50.12")
            },
        ]
    );
    // An IPv6 address in block context needs no quotes.
    let g = ok("services:\n  - name: a\n    vip: 2001:db8::1\n    ports: [{ port: 1 }]\n");
    assert_eq!(g.services[0].vip, ip("2001:db8::1"));
}

#[test]
fn ipv6_errors_name_the_service_and_the_field() {
    let text = "\
node: { ip: \"fd00:50::11\", ip6: 192.168.50.11 }
services:
  - name: web6
    vip: fd00:60::1
    ports: [{ port: 80 }]
    source_ranges: [\"fd00:10::1/32\", \"fd00::/129\"]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.12 }
  - name: web
    vip: 192.168.50.100
    ports: [{ port: 80 }]
    backends:
      - { ip: \"fd00:42::5\", node_ip: \"fd00:50::12\" }
      - { ip: 10.42.0.6, node_ip: \"fd00:50::12\" }
";
    assert_eq!(
        issues(text),
        vec![
            "node.ip (line 1): fd00:50::11 is an IPv6 address (node.ip6 takes the node's IPv6 \
             address)",
            "node.ip6 (line 1): 192.168.50.11 is an IPv4 address (node.ip takes the node's IPv4 \
             address)",
            "services[0].source_ranges[0] (line 6): \"fd00:10::1/32\" has host bits set (the \
             network is fd00:10::/32)",
            "services[0].source_ranges[1] (line 6): \"fd00::/129\" is not an IPv6 CIDR: prefix \
             length must be 0..=128",
            "services[0].backends[0].ip (line 8): 10.42.0.5 is IPv4, but the vip of service \
             \"web6\" is IPv6 (a service's backends are of its VIP's family; list the other \
             family's under a service of its own)",
            "services[1].backends[0].ip (line 13): fd00:42::5 is IPv6, but the vip of service \
             \"web\" is IPv4 (a service's backends are of its VIP's family; list the other \
             family's under a service of its own)",
            "services[1].backends[1].node_ip (line 14): fd00:50::12 is IPv6, but the IPv4 pod \
             10.42.0.6 needs its node's IPv4 address",
        ]
    );
    let own = "\
node: { ip6: \"fd00:50::11\" }
services:
  - name: a
    vip: fd00:50::11
    ports: [{ port: 80 }]
  - name: b
    vip: fd00:60::1
    ports: [{ port: 80 }, { port: 80 }]
";
    assert_eq!(
        issues(own),
        vec![
            "services[1].ports[1] (line 8): TCP port 80 is already listed in services[1].ports[0]",
            "services[0].vip (line 4): fd00:50::11 is the node's own address (node.ip6)",
        ]
    );
    let dup = "\
services:
  - name: a
    vip: fd00:60::1
    ports: [{ port: 80 }]
  - name: b
    vip: fd00:60::1
    ports: [{ port: 80 }]
";
    assert_eq!(
        issues(dup),
        vec!["services[1].ports[0] (line 7): TCP [fd00:60::1]:80 is already served by services[0]"]
    );
}

#[test]
fn ipv6_cidrs() {
    let c = Cidr::parse("fd00::/8").unwrap();
    assert_eq!(c.to_string(), "fd00::/8");
    assert!(c.contains(ip("fdff::1")));
    assert!(!c.contains(ip("fe00::1")));
    assert!(!c.contains(ip("10.0.0.1")), "never the other family");
    assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
    assert_eq!(Cidr::parse("::/0").unwrap().prefix_len, 0);
    assert_eq!(Cidr::parse_masked("fd00::1/8").unwrap(), c);
    assert_eq!(Cidr::parse_masked("fd00::1").unwrap().prefix_len, 128);
    assert_eq!(Cidr::parse_masked("10.1.2.3").unwrap().prefix_len, 32);
    assert_eq!(Cidr::mask6(0), 0);
    assert_eq!(Cidr::mask6(128), u128::MAX);
    assert_eq!(Cidr::mask6(1), 1 << 127);
    // The pools' bounds, in each family's width.
    assert_eq!(
        Cidr::parse("10.0.0.0/8").unwrap().bounds(),
        (0x0a00_0000, 0x0aff_ffff)
    );
    assert_eq!(
        c.bounds(),
        (0xfd00_u128 << 112, (0xfd00_u128 << 112) | (u128::MAX >> 8))
    );
    assert_eq!(
        Cidr::parse("::/0").unwrap().bounds(),
        (0, u128::MAX),
        "no overflow at /0"
    );
    assert_eq!(
        Cidr::parse("0.0.0.0/0").unwrap().bounds(),
        (0, u128::from(u32::MAX))
    );
}
