//! The one small HTTP server of both programs: plain HTTP/1 on a listener,
//! a handler from request path to response, and the OpenMetrics text reply
//! both `/metrics` endpoints give.

use std::{convert::Infallible, sync::Arc};

use anyhow::Result;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tracing::warn;

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
}
