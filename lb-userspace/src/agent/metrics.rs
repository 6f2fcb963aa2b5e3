//! The agent's HTTP endpoints: `/metrics` (OpenMetrics text, via
//! prometheus-client), `/healthz` and `/readyz`.
//!
//! Metrics are read from the pinned maps at scrape time (the per-CPU
//! counters summed over CPUs), so they are exactly what `onehop status`
//! shows and survive agent restarts like the data path does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use lb_common::{backend_flags, vip_flags};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    dataplane::maps::{Maps, PinDir},
    dataplane::status::{self, Snapshot},
    http::{Handler, Listen, i64_of, metrics_reply, reply, serve_endpoints},
    plan::state::DataplaneState,
};

/// What the agent's loop reports for health and metrics.
#[derive(Debug)]
pub struct Health {
    /// A desired state was applied at least once.
    pub applied: AtomicBool,
    /// The last apply succeeded.
    pub last_ok: AtomicBool,
    /// Failed applies (rejected input or map writes) since start.
    pub sync_errors: AtomicU64,
    /// The agent's view of the maps, so a scrape reads only counters (not
    /// one syscall per Maglev slot). Shared with the agent, never copied:
    /// at 10,000 services it holds millions of Maglev slots.
    pub state: Mutex<Option<Arc<DataplaneState>>>,
    /// How long each sync that had something to do took (planning, map
    /// writes, re-reading the maps), as kube-proxy's sync duration.
    pub sync_duration: Histogram,
    /// Flow entries the sweeper deleted (`dataplane::sweep`).
    pub flows_swept: AtomicU64,
    /// The interface is up with carrier (the agent may announce).
    pub link_usable: AtomicBool,
    /// What the agent did about each service VIP since it started; only
    /// VIPs the maps hold are kept, so the series stay bounded by them.
    pub vip_events: Mutex<BTreeMap<IpAddr, VipEvents>>,
}

/// Agent-side announcement events of one VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEvents {
    /// Gratuitous ARP frames (IPv4) or unsolicited Neighbor Advertisements
    /// (IPv6) sent for it.
    pub garps_sent: u64,
    /// Times this node started or stopped announcing it.
    pub ownership_changes: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            applied: AtomicBool::default(),
            last_ok: AtomicBool::default(),
            sync_errors: AtomicU64::default(),
            state: Mutex::default(),
            // kube-proxy's buckets: 1 ms doubling to about 16 s.
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            flows_swept: AtomicU64::default(),
            link_usable: AtomicBool::default(),
            vip_events: Mutex::default(),
        }
    }
}

impl Health {
    pub fn record(&self, ok: bool) {
        self.applied.store(true, Ordering::Relaxed);
        self.last_ok.store(ok, Ordering::Relaxed);
        if !ok {
            self.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes the agent's current view of the maps.
    pub fn set_state(&self, state: &Arc<DataplaneState>) {
        if let Ok(mut s) = self.state.lock() {
            *s = Some(Arc::clone(state));
        }
    }

    pub fn set_link_usable(&self, usable: bool) {
        self.link_usable.store(usable, Ordering::Relaxed);
    }

    fn events(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, VipEvents>> {
        // Every change is one field increment or one retain: a panic
        // elsewhere cannot leave the map inconsistent.
        self.vip_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One more gratuitous ARP (or unsolicited Neighbor Advertisement) sent for `vip`.
    pub fn count_garp(&self, vip: IpAddr) {
        self.events().entry(vip).or_default().garps_sent += 1;
    }

    /// This node started or stopped announcing each of `vips`.
    pub fn count_ownership_changes<'a>(&self, vips: impl IntoIterator<Item = &'a IpAddr>) {
        let mut events = self.events();
        for vip in vips {
            events.entry(*vip).or_default().ownership_changes += 1;
        }
    }

    /// Forgets the VIPs not in `vips` (they left the configuration).
    pub fn retain_vips(&self, vips: &BTreeSet<IpAddr>) {
        self.events().retain(|vip, _| vips.contains(vip));
    }

    fn snapshot(&self, maps: &Maps) -> Result<Snapshot> {
        let state = self.state.lock().ok().and_then(|s| s.clone());
        match state {
            Some(state) => Snapshot::read_with(maps, &state),
            None => Snapshot::read(maps),
        }
    }

    fn ready(&self) -> bool {
        self.applied.load(Ordering::Relaxed) && self.last_ok.load(Ordering::Relaxed)
    }
}

/// Which optional series `/metrics` carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// `onehop_backend_packets_total` and `onehop_backend_bytes_total`: two series per
    /// backend, so 200,000 on every node at 10,000 Services of 10 endpoints each. Off
    /// unless asked for (`--backend-metrics`); the per-service series and `onehop status`
    /// cover the common questions.
    pub per_backend: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    node: String,
    location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

/// Renders a snapshot (and the agent's health) in the Prometheus text format.
pub fn render(s: &Snapshot, health: &Health, series: Series) -> Result<String> {
    let mut reg = Registry::with_prefix("onehop");
    let svc_packets = Family::<ServiceLabels, Counter>::default();
    let svc_bytes = Family::<ServiceLabels, Counter>::default();
    // An id beyond the counters' size has no series: absent, not a misleading zero.
    for row in s.services.iter().filter(|r| r.counted) {
        let l = ServiceLabels {
            service: status::frontend(row.key),
        };
        svc_packets.get_or_create(&l).inc_by(row.traffic.packets);
        svc_bytes.get_or_create(&l).inc_by(row.traffic.bytes);
    }
    reg.register(
        "service_packets",
        "Packets balanced per service (VIP:port/protocol)",
        svc_packets,
    );
    reg.register("service_bytes", "Bytes balanced per service", svc_bytes);
    if series.per_backend {
        register_backends(&mut reg, s);
    }
    let drops = Family::<ReasonLabels, Counter>::default();
    for (reason, n) in &s.drops {
        drops
            .get_or_create(&ReasonLabels {
                reason: reason.label().to_owned(),
            })
            .inc_by(*n);
    }
    reg.register(
        "drops",
        "Packets dropped by the data path, by reason",
        drops,
    );
    let outcomes = Family::<OutcomeLabels, Counter>::default();
    for (c, n) in &s.counters {
        outcomes
            .get_or_create(&OutcomeLabels {
                outcome: c.label().to_owned(),
            })
            .inc_by(*n);
    }
    reg.register(
        "packets",
        "Packets seen by the data path, by outcome",
        outcomes,
    );
    let announced = Family::<VipLabels, Gauge>::default();
    for (ip, flags) in &s.vips {
        if flags & vip_flags::ANNOUNCE != 0 {
            announced
                .get_or_create(&VipLabels {
                    vip: ip.to_string(),
                })
                .set(1);
        }
    }
    reg.register(
        "announced_vip",
        "1 for every VIP this node answers ARP (IPv4) or Neighbor Solicitations (IPv6) for",
        announced,
    );
    register_arp(&mut reg, s, health);
    let flows = Gauge::<i64>::default();
    flows.set(i64_of(s.conntrack_entries));
    reg.register(
        "conntrack_entries",
        "Flows in the connection table that are not over (slots of dead flows wait for reuse)",
        flows,
    );
    register_maglev(&mut reg, s);
    register_syncs(&mut reg, health);
    let mut out = String::new();
    encode(&mut out, &reg).context("encoding metrics")?;
    Ok(out)
}

/// The `maglev` array's use, and how many tables are uneven.
fn register_maglev(reg: &mut Registry, s: &Snapshot) {
    let slots = Gauge::<i64>::default();
    slots.set(i64::from(s.maglev_slots));
    reg.register(
        "maglev_slots",
        "Slots of the Maglev array (--maglev-slots when the maps were created)",
        slots,
    );
    let used = Gauge::<i64>::default();
    used.set(i64::try_from(s.maglev_slots_used()).unwrap_or(i64::MAX));
    reg.register(
        "maglev_slots_used",
        "Slots of the Maglev array the services' tables take; a changed table needs its \
         size again free while it is written",
        used,
    );
    let uneven = Gauge::<i64>::default();
    uneven.set(i64_of(s.uneven_services()));
    reg.register(
        "maglev_uneven_services",
        "Service ports whose Maglev table gives backends fewer than 100 slots each (their \
         shares of new flows differ by more than 1%)",
        uneven,
    );
}

/// Traffic per backend (two series each).
fn register_backends(reg: &mut Registry, s: &Snapshot) {
    let be_packets = Family::<BackendLabels, Counter>::default();
    let be_bytes = Family::<BackendLabels, Counter>::default();
    for b in s.backends.iter().filter(|b| b.counted) {
        let l = BackendLabels {
            backend: std::net::SocketAddr::new(b.value.ip(), b.value.port()).to_string(),
            node: b.value.node_ip().to_string(),
            location: if b.value.flags() & backend_flags::LOCAL != 0 {
                "local"
            } else {
                "remote"
            }
            .to_owned(),
        };
        be_packets.get_or_create(&l).inc_by(b.traffic.packets);
        be_bytes.get_or_create(&l).inc_by(b.traffic.bytes);
    }
    reg.register(
        "backend_packets",
        "Packets forwarded per backend",
        be_packets,
    );
    reg.register("backend_bytes", "Bytes forwarded per backend", be_bytes);
}

/// Per-VIP ARP (IPv4) and NDP (IPv6) and announcement counters (as
/// MetalLB's `metallb_layer2_*`), one series per service VIP the maps hold,
/// and whether the data path may answer ARP and NDP and the link may announce.
fn register_arp(reg: &mut Registry, s: &Snapshot, health: &Health) {
    for (v6, proto, request, reply) in [
        (false, "arp", "ARP requests", "ARP replies"),
        (
            true,
            "ndp",
            "Neighbor Solicitations",
            "Neighbor Advertisements",
        ),
    ] {
        let requests = Family::<VipLabels, Counter>::default();
        let replies = Family::<VipLabels, Counter>::default();
        for (ip, a) in s.neighbour_stats(v6) {
            let l = VipLabels {
                vip: ip.to_string(),
            };
            requests.get_or_create(&l).inc_by(a.requests);
            replies.get_or_create(&l).inc_by(a.replies);
        }
        reg.register(
            format!("{proto}_requests_received"),
            format!("{request} for the VIP that reached the data path"),
            requests,
        );
        reg.register(
            format!("{proto}_replies_sent"),
            format!("{reply} for the VIP sent by this node in answer"),
            replies,
        );
    }
    let garps = Family::<VipLabels, Counter>::default();
    let nas = Family::<VipLabels, Counter>::default();
    let changes = Family::<VipLabels, Counter>::default();
    let known: BTreeSet<IpAddr> = s.arp.iter().map(|(ip, _)| *ip).collect();
    for (vip, e) in health.events().iter().filter(|(v, _)| known.contains(v)) {
        let l = VipLabels {
            vip: vip.to_string(),
        };
        let sent = if vip.is_ipv6() { &nas } else { &garps };
        sent.get_or_create(&l).inc_by(e.garps_sent);
        changes.get_or_create(&l).inc_by(e.ownership_changes);
    }
    reg.register(
        "gratuitous_arp_sent",
        "Gratuitous ARP frames sent for the VIP since the agent started",
        garps,
    );
    reg.register(
        "unsolicited_na_sent",
        "Unsolicited Neighbor Advertisements sent for the IPv6 VIP since the agent started",
        nas,
    );
    reg.register(
        "ownership_changes",
        "Times this node started or stopped announcing the VIP since the agent started",
        changes,
    );
    let ndp_uncounted = Gauge::<i64>::default();
    ndp_uncounted.set(i64::try_from(s.ndp_uncounted()).unwrap_or(i64::MAX));
    reg.register(
        "ndp_uncounted_addresses",
        "IPv6 service addresses without NDP counters (served and answered, not counted; no \
         per-address NDP series)",
        ndp_uncounted,
    );
    let uncounted = Gauge::<i64>::default();
    uncounted.set(i64::try_from(s.arp_uncounted()).unwrap_or(i64::MAX));
    reg.register(
        "arp_uncounted_addresses",
        "Service addresses without ARP counters (served and answered, not counted; no per-address ARP series)",
        uncounted,
    );
    let answering = Gauge::<i64>::default();
    answering.set(i64::from(s.answering_arp()));
    reg.register(
        "arp_answering",
        "1 while the agent's heartbeat lets the data path answer ARP for announced VIPs",
        answering,
    );
    let link = Gauge::<i64>::default();
    link.set(i64::from(health.link_usable.load(Ordering::Relaxed)));
    reg.register(
        "interface_usable",
        "1 while the served interface is up with carrier (the node may announce)",
        link,
    );
}

/// What the agent's loop says about its syncs.
fn register_syncs(reg: &mut Registry, health: &Health) {
    let errors = Counter::<u64>::default();
    errors.inc_by(health.sync_errors.load(Ordering::Relaxed));
    reg.register(
        "sync_errors",
        "Failed applies (rejected input, map writes) since the agent started",
        errors,
    );
    let swept = Counter::<u64>::default();
    swept.inc_by(health.flows_swept.load(Ordering::Relaxed));
    reg.register(
        "flows_swept",
        "Expired flow entries (conntrack, rev_nat, affinity) the sweeper deleted",
        swept,
    );
    reg.register(
        "sync_duration_seconds",
        "Time each sync that changed the desired state took (plan, map writes, re-read)",
        health.sync_duration.clone(),
    );
}

/// `/healthz` and `/readyz`: whether the agent runs and whether its last apply succeeded,
/// nothing about what it serves.
fn probe(path: &str, health: &Health) -> Option<Response<Full<Bytes>>> {
    Some(match path {
        "/healthz" => reply(StatusCode::OK, "ok\n".into()),
        "/readyz" if health.ready() => reply(StatusCode::OK, "ready\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: nothing applied yet or the last apply failed\n".into(),
        ),
        _ => return None,
    })
}

/// Serves the agent's endpoints (see [`crate::http`] for which goes where) until the
/// runtime stops.
pub fn serve(listen: Listen, series: Series, pins: PinDir, health: &Arc<Health>) -> Result<()> {
    let h = Arc::clone(health);
    let metrics: Handler = Arc::new(move |path: &str| {
        (path == "/metrics").then(|| {
            metrics_reply(
                Maps::open(&pins)
                    .and_then(|m| h.snapshot(&m))
                    .and_then(|s| render(&s, &h, series)),
            )
        })
    });
    let h = Arc::clone(health);
    let probes: Handler = Arc::new(move |path: &str| probe(path, &h));
    serve_endpoints(listen, metrics, probes)
}

#[cfg(test)]
mod tests {
    use lb_common::{
        BackendValue, Counter as C, DatapathConfig, DropReason, ServiceKey, ServiceValue,
        TrafficCounter, proto,
    };

    use super::*;
    use crate::dataplane::status::{BackendRow, ServiceRow};
    use crate::plan::state::{AnyServiceKey, BackendSlot};
    use std::net::Ipv4Addr;

    /// A node with one announced and one other VIP, a service and a backend.
    fn sample() -> Snapshot {
        Snapshot {
            config: DatapathConfig {
                ready: 1,
                ..DatapathConfig::default()
            },
            vips: vec![
                (
                    IpAddr::from([192, 168, 50, 200]),
                    vip_flags::SERVICE | vip_flags::ANNOUNCE,
                ),
                (IpAddr::from([192, 168, 50, 201]), vip_flags::SERVICE),
            ],
            services: vec![ServiceRow {
                key: AnyServiceKey::V4(ServiceKey::new([192, 168, 50, 200], 80, proto::TCP)),
                value: ServiceValue::default(),
                backend_ids: vec![1],
                traffic: TrafficCounter {
                    packets: 7,
                    bytes: 700,
                },
                counted: true,
            }],
            backends: vec![BackendRow {
                id: 1,
                value: BackendSlot::V4(BackendValue::new(
                    [10, 42, 1, 2],
                    [192, 168, 50, 11],
                    8080,
                    backend_flags::VALID | backend_flags::LOCAL,
                )),
                traffic: TrafficCounter {
                    packets: 5,
                    bytes: 500,
                },
                counted: true,
            }],
            counters: vec![(C::IngressPackets, 9)],
            drops: vec![(DropReason::NoService, 2)],
            conntrack_entries: 3,
            announce: lb_common::AnnounceState::new(1_000, 1_200_000_000),
            read_at_ns: 2_000,
            arp: vec![
                (
                    IpAddr::from([192, 168, 50, 200]),
                    lb_common::ArpStats::new(4, 3),
                ),
                (
                    IpAddr::from([192, 168, 50, 201]),
                    lb_common::ArpStats::new(2, 0),
                ),
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn renders_every_family_with_labels() {
        let s = sample();
        let h = Health::default();
        h.record(false);
        let vip = IpAddr::V4(Ipv4Addr::new(192, 168, 50, 200));
        h.count_ownership_changes(&[vip]);
        h.count_garp(vip);
        h.count_garp(vip);
        // A VIP that left the maps has no series, even with events.
        h.count_garp(IpAddr::V4(Ipv4Addr::new(192, 168, 50, 250)));
        h.set_link_usable(true);
        h.sync_duration.observe(0.003);
        h.sync_duration.observe(0.5);
        let text = render(&s, &h, Series { per_backend: true }).unwrap();
        for needle in [
            "onehop_service_packets_total{service=\"192.168.50.200:80/TCP\"} 7",
            "onehop_service_bytes_total{service=\"192.168.50.200:80/TCP\"} 700",
            "onehop_backend_packets_total{backend=\"10.42.1.2:8080\",node=\"192.168.50.11\",location=\"local\"} 5",
            "onehop_drops_total{reason=\"no_service\"} 2",
            "onehop_packets_total{outcome=\"ingress_packets\"} 9",
            "onehop_announced_vip{vip=\"192.168.50.200\"} 1",
            "onehop_conntrack_entries 3",
            "onehop_sync_errors_total 1",
            "# TYPE onehop_sync_duration_seconds histogram",
            "onehop_sync_duration_seconds_count 2",
            "onehop_sync_duration_seconds_sum 0.503",
            "onehop_sync_duration_seconds_bucket{le=\"0.002\"} 0",
            "onehop_sync_duration_seconds_bucket{le=\"0.004\"} 1",
            "onehop_sync_duration_seconds_bucket{le=\"0.512\"} 2",
            "onehop_sync_duration_seconds_bucket{le=\"+Inf\"} 2",
            "onehop_arp_requests_received_total{vip=\"192.168.50.200\"} 4",
            "onehop_arp_replies_sent_total{vip=\"192.168.50.200\"} 3",
            "onehop_arp_requests_received_total{vip=\"192.168.50.201\"} 2",
            "onehop_arp_replies_sent_total{vip=\"192.168.50.201\"} 0",
            "onehop_gratuitous_arp_sent_total{vip=\"192.168.50.200\"} 2",
            "onehop_ownership_changes_total{vip=\"192.168.50.200\"} 1",
            "onehop_arp_answering 1",
            "onehop_arp_uncounted_addresses 0",
            "onehop_interface_usable 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            !text.contains("192.168.50.201\"} 1"),
            "only announced VIPs are listed"
        );
        // Beyond the counters' size: no series rather than a zero that looks measured.
        let mut uncounted = s.clone();
        uncounted.services[0].counted = false;
        uncounted.backends[0].counted = false;
        let text = render(&uncounted, &h, Series { per_backend: true }).unwrap();
        assert!(!text.contains("onehop_service_packets_total{"), "{text}");
        assert!(!text.contains("onehop_backend_bytes_total{"), "{text}");
        assert!(
            !text.contains("192.168.50.250"),
            "a VIP the maps do not hold has no series:\n{text}"
        );
    }

    /// IPv6 VIPs get NDP series and their unsolicited advertisements, apart
    /// from the ARP ones.
    #[test]
    fn ipv6_vips_have_ndp_series() {
        let mut s = sample();
        let vip6: IpAddr = "fd00:60::1".parse().unwrap();
        s.vips
            .push((vip6, vip_flags::SERVICE | vip_flags::ANNOUNCE));
        s.vips
            .push(("fd00:60::2".parse().unwrap(), vip_flags::SERVICE));
        s.arp.push((vip6, lb_common::ArpStats::new(3, 2)));
        let h = Health::default();
        h.count_garp(vip6);
        h.count_ownership_changes(&[vip6]);
        let text = render(&s, &h, Series::default()).unwrap();
        for needle in [
            "onehop_ndp_requests_received_total{vip=\"fd00:60::1\"} 3",
            "onehop_ndp_replies_sent_total{vip=\"fd00:60::1\"} 2",
            "onehop_unsolicited_na_sent_total{vip=\"fd00:60::1\"} 1",
            "onehop_ownership_changes_total{vip=\"fd00:60::1\"} 1",
            "onehop_announced_vip{vip=\"fd00:60::1\"} 1",
            "onehop_ndp_uncounted_addresses 1",
            "onehop_arp_uncounted_addresses 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            !text.contains("onehop_arp_requests_received_total{vip=\"fd00"),
            "no ARP series for an IPv6 VIP:\n{text}"
        );
        assert!(
            !text.contains("onehop_gratuitous_arp_sent_total{vip=\"fd00"),
            "{text}"
        );
    }

    /// Per-backend series are opt-in: by default a node exports a bounded number of
    /// series per Service, whatever the number of endpoints.
    #[test]
    fn per_backend_series_only_when_asked_for() {
        let backend = |id: u32, last: u8| BackendRow {
            id,
            value: BackendSlot::V4(BackendValue::new(
                [10, 42, 1, last],
                [192, 168, 50, 11],
                8080,
                backend_flags::VALID,
            )),
            traffic: TrafficCounter {
                packets: 1,
                bytes: 100,
            },
            counted: true,
        };
        let s = Snapshot {
            services: vec![ServiceRow {
                key: AnyServiceKey::V4(ServiceKey::new([192, 168, 50, 200], 80, proto::TCP)),
                value: ServiceValue::default(),
                backend_ids: (1..=50).collect(),
                traffic: TrafficCounter {
                    packets: 50,
                    bytes: 5000,
                },
                counted: true,
            }],
            backends: (1..=50u8).map(|i| backend(u32::from(i), i)).collect(),
            ..Snapshot::default()
        };
        let h = Health::default();
        let default = render(&s, &h, Series::default()).unwrap();
        assert!(
            default.contains("onehop_service_packets_total{service=\"192.168.50.200:80/TCP\"} 50"),
            "{default}"
        );
        assert!(!default.contains("onehop_backend_"), "{default}");
        let all = render(&s, &h, Series { per_backend: true }).unwrap();
        let backend_lines = all
            .lines()
            .filter(|l| l.starts_with("onehop_backend_packets_total{"))
            .count();
        assert_eq!(backend_lines, 50, "{all}");
    }

    #[test]
    fn maglev_use_and_uneven_tables() {
        let row = |len: u32, backends: u32| ServiceRow {
            key: AnyServiceKey::V4(ServiceKey::new([192, 168, 50, 200], 80, proto::TCP)),
            value: ServiceValue::new(0, 0, len, 0, 0),
            backend_ids: (0..backends).collect(),
            traffic: TrafficCounter::default(),
            counted: true,
        };
        let s = Snapshot {
            // 1021 slots for 10 backends (even), 1021 for 11 and 16381 for
            // 200 (uneven), and a service without backends.
            services: vec![row(1021, 10), row(1021, 11), row(16381, 200), row(0, 0)],
            maglev_slots: 65_536,
            ..Snapshot::default()
        };
        let text = render(&s, &Health::default(), Series::default()).unwrap();
        for needle in [
            "onehop_maglev_slots 65536",
            "onehop_maglev_slots_used 18423",
            "onehop_maglev_uneven_services 2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn readiness_follows_the_last_apply() {
        let h = Health::default();
        assert!(!h.ready(), "nothing applied yet");
        h.record(true);
        assert!(h.ready());
        h.record(false);
        assert!(!h.ready());
        assert_eq!(h.sync_errors.load(Ordering::Relaxed), 1);
    }
}
