//! The one small HTTP server of both programs: plain HTTP/1 on a listener,
//! a handler from request path to response, and the OpenMetrics text
//! reply both `/metrics` endpoints give.
//!
//! Each program has two listeners ([`Listen`]): `/metrics`, which names Services, pods and
//! node addresses, on loopback by default; and the probes (`/healthz`, `/readyz`), which say
//! nothing but "up" or "ready", on every address so the kubelet can reach them (it probes a
//! host-network pod on the node's address). To scrape `/metrics` from elsewhere, set
//! `--metrics-addr` to a reachable address on purpose, or put an authenticating proxy such as
//! kube-rbac-proxy in front of the loopback listener.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

/// The agent's `/metrics`: loopback only unless the operator says otherwise.
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:9478";
/// The agent's probes, on the node's addresses (the `DaemonSet` runs on the host network).
pub const AGENT_HEALTH_ADDR: &str = "0.0.0.0:9477";
/// The controller's `/metrics`: loopback only unless the operator says otherwise.
pub const CONTROLLER_METRICS_ADDR: &str = "127.0.0.1:9479";
/// The controller's probes.
pub const CONTROLLER_HEALTH_ADDR: &str = "0.0.0.0:9480";

/// Where a program serves `/metrics` and its probes (`None`: not served). The same address
/// for both serves both on one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub metrics: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
}

/// Answers the paths it knows (`None`: not one of its paths).
pub type Handler = Arc<dyn Fn(&str) -> Option<Response<Full<Bytes>>> + Send + Sync>;

fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("serving {what} on {addr}"))
}

/// Binds the listeners of `listen` (an error if one cannot be bound) and serves `metrics`'
/// paths on the metrics address and `probes`' on the health address, each answering 404 for
/// the other's. Must run inside a Tokio runtime.
pub fn serve_endpoints(listen: Listen, metrics: Handler, probes: Handler) -> Result<()> {
    let serve = |addr: SocketAddr, handlers: Vec<Handler>, paths: &'static str| -> Result<()> {
        let listener = bind(addr, paths)?;
        tokio::spawn(serve_with(listener, move |path| {
            handlers.iter().find_map(|h| h(path)).unwrap_or_else(|| {
                reply(
                    StatusCode::NOT_FOUND,
                    format!("not served here; this address serves {paths}\n"),
                )
            })
        }));
        info!(%addr, "serving {paths}");
        Ok(())
    };
    match (listen.metrics, listen.health) {
        (Some(m), Some(h)) if m == h => serve(m, vec![probes, metrics], "/metrics and the probes"),
        (m, h) => {
            if let Some(m) = m {
                serve(m, vec![metrics], "/metrics")?;
            }
            if let Some(h) = h {
                serve(h, vec![probes], "the probes")?;
            }
            Ok(())
        }
    }
}

pub fn reply(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

/// The media type of what prometheus-client's text encoder writes:
/// OpenMetrics text (`_total` counters, `# EOF` at the end), not the
/// Prometheus 0.0.4 text format; a scraper picks its parser by this header.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `/metrics` response in the OpenMetrics text format (or the error).
pub fn metrics_reply(text: Result<String>) -> Response<Full<Bytes>> {
    match text {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            r
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
    }
}

/// Serves `handler` (request path → response) over HTTP/1 until the
/// runtime stops.
pub async fn serve_with<H>(listener: tokio::net::TcpListener, handler: H)
where
    H: Fn(&str) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "metrics listener");
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = handler(req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                warn!(error = %e, "metrics connection");
            }
        });
    }
}

/// A counter or size as a Prometheus gauge value (saturating).
pub fn i64_of(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use prometheus_client::{
        encoding::text::encode, metrics::counter::Counter, registry::Registry,
    };

    use super::*;

    /// The header names the format the encoder actually produced.
    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let mut reg = Registry::with_prefix("t");
        let c = Counter::<u64>::default();
        c.inc();
        reg.register("things", "Things", c);
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        let r = metrics_reply(Ok(text));
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r.headers()[hyper::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(ct, METRICS_CONTENT_TYPE);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        // OpenMetrics, not Prometheus 0.0.4: the terminator and counter
        // naming only the former has.
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("# TYPE t_things counter\n"), "{body}");
        assert!(body.contains("t_things_total 1\n"), "{body}");
        assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"));
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    /// The metrics name Services, pods and node addresses: by default nobody off the host
    /// may read them. The probes must stay reachable by the kubelet, which probes a
    /// host-network pod on the node's address.
    #[test]
    fn metrics_are_loopback_and_probes_reachable_by_default() {
        for m in [AGENT_METRICS_ADDR, CONTROLLER_METRICS_ADDR] {
            assert!(addr(m).ip().is_loopback(), "{m} is not loopback");
        }
        for h in [AGENT_HEALTH_ADDR, CONTROLLER_HEALTH_ADDR] {
            assert!(
                addr(h).ip().is_unspecified(),
                "{h}: the kubelet cannot reach it"
            );
        }
        let ports = [
            AGENT_METRICS_ADDR,
            AGENT_HEALTH_ADDR,
            CONTROLLER_METRICS_ADDR,
            CONTROLLER_HEALTH_ADDR,
        ]
        .map(|a| addr(a).port());
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "one port per listener: {ports:?}");
    }

    fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    }

    async fn get(addr: SocketAddr, path: &'static str) -> u16 {
        tokio::task::spawn_blocking(move || {
            onehop_testkit::traffic::http_get_here(
                addr,
                path,
                onehop_testkit::traffic::Timeouts::default(),
            )
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e:#}"))
        .status
    }

    fn handlers() -> (Handler, Handler) {
        let metrics: Handler = Arc::new(|p: &str| {
            (p == "/metrics").then(|| reply(StatusCode::OK, "onehop_x 1\n".into()))
        });
        let probes: Handler =
            Arc::new(|p: &str| (p == "/healthz").then(|| reply(StatusCode::OK, "ok\n".into())));
        (metrics, probes)
    }

    #[tokio::test]
    async fn each_listener_serves_only_its_own_paths() {
        let (m, h) = (free_port(), free_port());
        let (metrics, probes) = handlers();
        serve_endpoints(
            Listen {
                metrics: Some(m),
                health: Some(h),
            },
            metrics,
            probes,
        )
        .expect("serve");
        assert_eq!(get(m, "/metrics").await, 200);
        assert_eq!(
            get(m, "/healthz").await,
            404,
            "probes on the metrics address"
        );
        assert_eq!(get(h, "/healthz").await, 200);
        assert_eq!(
            get(h, "/metrics").await,
            404,
            "metrics on the probe address"
        );
    }

    #[tokio::test]
    async fn one_address_for_both_serves_both_and_none_serves_nothing() {
        let both = free_port();
        let (metrics, probes) = handlers();
        serve_endpoints(
            Listen {
                metrics: Some(both),
                health: Some(both),
            },
            metrics,
            probes,
        )
        .expect("serve");
        assert_eq!(get(both, "/metrics").await, 200);
        assert_eq!(get(both, "/healthz").await, 200);
        let (metrics, probes) = handlers();
        let off = free_port();
        serve_endpoints(
            Listen {
                metrics: None,
                health: Some(off),
            },
            metrics,
            probes,
        )
        .expect("serve");
        assert_eq!(get(off, "/metrics").await, 404);
    }
}
