//! kube-proxy's data-path rules, generated the way kube-proxy writes them, for the
//! baselines of `bench-e2e`.
//!
//! - iptables mode (`pkg/proxy/iptables`): nat table, `KUBE-SERVICES` jumped from
//!   `PREROUTING`/`OUTPUT` with one rule per service port per cluster IP and per LB IP,
//!   `KUBE-EXT-*` (mark for masquerade, then `KUBE-SVC-*`), `KUBE-SVC-*` picking an
//!   endpoint with `-m statistic --mode random --probability 1/n, 1/(n-1), …`,
//!   `KUBE-SEP-*` (hairpin mark, DNAT), `KUBE-MARK-MASQ` (0x4000) and
//!   `KUBE-POSTROUTING` (`MASQUERADE --random-fully` for marked packets). Chain names are
//!   `KUBE-SVC-` + the first 16 base32 characters of sha256(servicePortName + protocol)
//!   (`+ endpoint` for `KUBE-SEP-`), like kube-proxy's `portProtoHash`.
//! - nftables mode (`pkg/proxy/nftables`): table `ip kube-proxy`, the `service-ips` verdict
//!   map (`ipv4_addr . inet_proto . inet_service : verdict`), per-service chains that mark
//!   for masquerade and dispatch with `numgen random mod N vmap`, per-endpoint chains with
//!   `dnat to`, masquerading in postrouting. Chain names are
//!   `<8 base32 chars of sha256(name)>-<ns>/<svc>/<proto>/<port name>`.
//!
//! Every service has a cluster IP and one LoadBalancer IP (the VIP) with
//! `externalTrafficPolicy: Cluster`, as kube-proxy sees a `type: LoadBalancer` Service.
//! Pure text generation; the caller loads it with one `iptables-restore` / `nft -f`.

use std::{fmt::Write as _, net::Ipv4Addr};

use sha2::{Digest as _, Sha256};

/// The masquerade mark kube-proxy uses (`--masquerade-bit` 14).
pub const MASQ_MARK: u32 = 0x4000;

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Lower case, as kube-proxy hashes and matches it.
    pub fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// Kubernetes spelling (`TCP`/`UDP`), as in the services file.
    pub fn upper(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub target_port: u16,
}

/// A `type: LoadBalancer` Service as kube-proxy sees it: cluster IP, one LB IP, its ports and
/// ready endpoints (pod IPs; every port's endpoint is `pod:target_port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub lb_ip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port` (`ns/name` if unnamed).
    pub fn port_name(&self, port: &Port) -> String {
        if port.name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, port.name)
        }
    }
}

/// RFC 4648 base32 (standard alphabet, with padding), what Go's `base32.StdEncoding` writes.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = buf.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                let idx = usize::try_from((bits >> (35 - 5 * i)) & 31).unwrap_or(0);
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hash_prefix(input: &str, len: usize) -> String {
    let mut s = base32(&Sha256::digest(input.as_bytes()));
    s.truncate(len);
    s
}

/// kube-proxy's `portProtoHash`: 16 base32 characters of sha256(servicePortName + protocol).
pub fn port_proto_hash(service_port_name: &str, proto: Proto) -> String {
    hash_prefix(&format!("{service_port_name}{}", proto.lower()), 16)
}

/// `KUBE-SVC-<hash>`.
pub fn svc_chain(service_port_name: &str, proto: Proto) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(service_port_name, proto))
}

/// `KUBE-EXT-<hash>` (same hash as the `KUBE-SVC-` chain).
pub fn ext_chain(service_port_name: &str, proto: Proto) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(service_port_name, proto))
}

/// `KUBE-SEP-<hash>` of sha256(servicePortName + protocol + "ip:port").
pub fn sep_chain(service_port_name: &str, proto: Proto, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(
            &format!("{service_port_name}{}{endpoint}", proto.lower()),
            16
        )
    )
}

/// The `--probability` of endpoint `i` (0-based) of `n`: 1/(n-i), printed like kube-proxy's
/// `%0.10f`. The last endpoint has no statistic match (`None`).
pub fn probability(i: usize, n: usize) -> Option<String> {
    let left = n - i;
    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
    (left > 1).then(|| format!("{:.10}", 1.0 / left as f64))
}

/// The whole nat table for `services`, one `iptables-restore` (no `--noflush`) transaction.
/// `pod_cidr` is kube-proxy's `--cluster-cidr` (masquerade off-cluster traffic to cluster IPs).
pub fn iptables_restore(services: &[Service], pod_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut svc_rules = String::new();
    for s in services {
        for p in &s.ports {
            let spn = s.port_name(p);
            let proto = p.proto.lower();
            let svc = svc_chain(&spn, p.proto);
            let ext = ext_chain(&spn, p.proto);
            let _ = writeln!(chains, ":{svc} - [0:0]\n:{ext} - [0:0]");
            let _ = writeln!(
                svc_rules,
                "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc}",
                s.cluster_ip, p.port
            );
            let _ = writeln!(
                svc_rules,
                "-A KUBE-SERVICES -m comment --comment \"{spn} loadbalancer IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {ext}",
                s.lb_ip, p.port
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}"
            );
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {pod_cidr} -j KUBE-MARK-MASQ",
                s.cluster_ip, p.port
            );
            let n = s.endpoints.len();
            for (i, ip) in s.endpoints.iter().enumerate() {
                let ep = format!("{ip}:{}", p.target_port);
                let sep = sep_chain(&spn, p.proto, &ep);
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let stat = probability(i, n)
                    .map(|pr| format!(" -m statistic --mode random --probability {pr}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"{spn} -> {ep}\"{stat} -j {sep}"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment {spn} -s {ip}/32 -j KUBE-MARK-MASQ\n-A {sep} -m comment --comment {spn} -m {proto} -p {proto} -j DNAT --to-destination {ep}"
                );
            }
        }
    }
    let mut out = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    out.push_str(&chains);
    let _ = write!(
        out,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK:#x}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK:#x}\n"
    );
    out.push_str(&svc_rules);
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// nftables chain-name base: `<hash8>-<name>` with `name` = `ns/svc/proto/port`.
fn nft_base(name: &str) -> String {
    format!("{}-{name}", hash_prefix(name, 8))
}

/// `service-<hash>-ns/svc/proto/port`.
pub fn nft_service_chain(s: &Service, p: &Port) -> String {
    format!("service-{}", nft_base(&nft_port_id(s, p)))
}

/// `external-<hash>-ns/svc/proto/port`.
pub fn nft_external_chain(s: &Service, p: &Port) -> String {
    format!("external-{}", nft_base(&nft_port_id(s, p)))
}

/// `endpoint-<hash>-ns/svc/proto/port__ip/port`.
pub fn nft_endpoint_chain(s: &Service, p: &Port, ip: Ipv4Addr) -> String {
    format!(
        "endpoint-{}",
        nft_base(&format!("{}__{ip}/{}", nft_port_id(s, p), p.target_port))
    )
}

fn nft_port_id(s: &Service, p: &Port) -> String {
    format!("{}/{}/{}/{}", s.namespace, s.name, p.proto.lower(), p.name)
}

/// The whole `ip kube-proxy` table for `services`, for one `nft -f` transaction.
pub fn nft_ruleset(services: &[Service], pod_cidr: &str) -> String {
    let mut out = format!(
        "table ip kube-proxy {{\n\
         \tcomment \"rules for kube-proxy\"\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}}\n\
         \tchain masquerading {{\n\t\tmeta mark & {MASQ_MARK:#010x} == 0 return\n\t\tmeta mark set meta mark ^ {MASQ_MARK:#010x}\n\t\tmasquerade fully-random\n\t}}\n\
         \tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_MARK:#010x}\n\t}}\n\
         \tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\tcomment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"\n\t}}\n\
         \tmap service-nodeports {{\n\t\ttype inet_proto . inet_service : verdict\n\t}}\n\
         \tchain services {{\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\t}}\n"
    );
    let mut elements = Vec::new();
    for s in services {
        for p in &s.ports {
            let proto = p.proto.lower();
            let svc = nft_service_chain(s, p);
            let ext = nft_external_chain(s, p);
            let _ = writeln!(
                out,
                "\tchain {svc} {{\n\t\tip daddr {} {proto} dport {} ip saddr != {pod_cidr} jump mark-for-masquerade",
                s.cluster_ip, p.port
            );
            let arms: Vec<String> = s
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, ip)| format!("{i} : goto {}", nft_endpoint_chain(s, p, *ip)))
                .collect();
            let _ = writeln!(
                out,
                "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                s.endpoints.len(),
                arms.join(", ")
            );
            let _ = writeln!(
                out,
                "\tchain {ext} {{\n\t\tjump mark-for-masquerade\n\t\tgoto {svc}\n\t}}"
            );
            for ip in &s.endpoints {
                let _ = writeln!(
                    out,
                    "\tchain {} {{\n\t\tip saddr {ip} jump mark-for-masquerade\n\t\tmeta l4proto {proto} dnat to {ip}:{}\n\t}}",
                    nft_endpoint_chain(s, p, *ip),
                    p.target_port
                );
            }
            elements.push(format!(
                "{} . {proto} . {} : goto {svc}",
                s.cluster_ip, p.port
            ));
            elements.push(format!("{} . {proto} . {} : goto {ext}", s.lb_ip, p.port));
        }
    }
    out.push_str("}\n");
    // Elements in bounded batches: one huge line is slow for nft's parser.
    for batch in elements.chunks(1000) {
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} }}",
            batch.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(endpoints: usize) -> Service {
        Service {
            namespace: "bench".into(),
            name: "web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            lb_ip: Ipv4Addr::new(192, 168, 50, 200),
            ports: vec![Port {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 80,
                target_port: 8080,
            }],
            endpoints: (0..endpoints)
                .map(|i| Ipv4Addr::new(10, 42, 1, 2 + u8::try_from(i).unwrap()))
                .collect(),
        }
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY======");
        assert_eq!(base32(b"fo"), "MZXQ====");
        assert_eq!(base32(b"foo"), "MZXW6===");
        assert_eq!(base32(b"foob"), "MZXW6YQ=");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn chain_names_are_kube_proxy_hashes() {
        // sha256("ns1/svc1:p80tcp") base32, first 16 chars, computed independently with
        // `printf 'ns1/svc1:p80tcp' | sha256sum | xxd -r -p | base32`.
        assert_eq!(
            port_proto_hash("ns1/svc1:p80", Proto::Tcp),
            "XPGD46QRK7WJZT7O"
        );
        let svc = svc_chain("ns1/svc1:p80", Proto::Tcp);
        assert_eq!(svc.len(), "KUBE-SVC-".len() + 16);
        assert_eq!(
            ext_chain("ns1/svc1:p80", Proto::Tcp)[9..],
            svc[9..],
            "EXT and SVC share the hash"
        );
        assert_ne!(
            svc_chain("ns1/svc1:p80", Proto::Udp),
            svc,
            "protocol is hashed"
        );
        let a = sep_chain("ns1/svc1:p80", Proto::Tcp, "10.180.0.1:80");
        let b = sep_chain("ns1/svc1:p80", Proto::Tcp, "10.180.0.2:80");
        assert!(a.starts_with("KUBE-SEP-") && a.len() == 25 && a != b);
        assert!(
            svc[9..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
    }

    #[test]
    fn probabilities_give_every_endpoint_an_equal_share() {
        assert_eq!(probability(0, 1), None);
        assert_eq!(probability(0, 4).as_deref(), Some("0.2500000000"));
        assert_eq!(probability(1, 4).as_deref(), Some("0.3333333333"));
        assert_eq!(probability(2, 4).as_deref(), Some("0.5000000000"));
        assert_eq!(probability(3, 4), None);
        // P(endpoint i) = prod_{j<i}(1-p_j) * p_i = 1/n for every i.
        for n in 1..20usize {
            let mut left = 1.0f64;
            for i in 0..n {
                let p: f64 = probability(i, n).map_or(1.0, |s| s.parse().unwrap());
                let share = left * p;
                #[expect(clippy::cast_precision_loss, reason = "small")]
                let want = 1.0 / n as f64;
                assert!((share - want).abs() < 1e-9, "n={n} i={i} share={share}");
                left *= 1.0 - p;
            }
        }
    }

    #[test]
    fn iptables_structure() {
        let s = svc(4);
        let text = iptables_restore(std::slice::from_ref(&s), "10.42.0.0/16");
        let spn = "bench/web:http";
        let svcc = svc_chain(spn, Proto::Tcp);
        let ext = ext_chain(spn, Proto::Tcp);
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        for must in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-j MASQUERADE --random-fully",
            &format!("-d 192.168.50.200/32 --dport 80 -j {ext}"),
            &format!("-d 10.96.0.10/32 --dport 80 -j {svcc}"),
            &format!("-A {ext} -j {svcc}"),
            "-j DNAT --to-destination 10.42.1.5:8080",
        ] {
            assert!(text.contains(must), "missing {must:?} in\n{text}");
        }
        let stats: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svcc}")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(stats.len(), 4);
        assert!(stats[0].contains("--probability 0.2500000000"));
        assert!(stats[2].contains("--probability 0.5000000000"));
        assert!(
            !stats[3].contains("statistic"),
            "last endpoint takes the rest"
        );
        // Every chain jumped to is declared exactly once.
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let target = l.rsplit("-j ").next().unwrap().split(' ').next().unwrap();
            if target.starts_with("KUBE-") {
                assert_eq!(
                    text.lines()
                        .filter(|d| *d == format!(":{target} - [0:0]"))
                        .count(),
                    1,
                    "{target}"
                );
            }
        }
        // nodeports rule is the last rule of KUBE-SERVICES.
        let last = text
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last.contains("KUBE-NODEPORTS"));
    }

    #[test]
    fn nft_structure() {
        let s = svc(3);
        let text = nft_ruleset(std::slice::from_ref(&s), "10.42.0.0/16");
        let svcc = nft_service_chain(&s, &s.ports[0]);
        assert!(svcc.starts_with("service-") && svcc.ends_with("-bench/web/tcp/http"));
        assert_eq!(
            svcc.len(),
            "service-".len() + 8 + "-bench/web/tcp/http".len()
        );
        assert!(text.contains("type ipv4_addr . inet_proto . inet_service : verdict"));
        assert!(text.contains("ip daddr . meta l4proto . th dport vmap @service-ips"));
        assert!(text.contains("masquerade fully-random"));
        let ep0 = nft_endpoint_chain(&s, &s.ports[0], s.endpoints[0]);
        assert!(ep0.ends_with("__10.42.1.2/8080"));
        assert!(text.contains(&format!(
            "numgen random mod 3 vmap {{ 0 : goto {ep0}, 1 : goto "
        )));
        assert!(text.contains("meta l4proto tcp dnat to 10.42.1.4:8080"));
        assert!(text.contains("192.168.50.200 . tcp . 80 : goto external-"));
        assert!(text.contains(&format!("10.96.0.10 . tcp . 80 : goto {svcc}")));
    }
}
