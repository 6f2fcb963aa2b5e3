//! The one small HTTP server of both programs: plain HTTP/1 on a listener,
//! a handler from request path to response, and the Prometheus text-format
//! reply both `/metrics` endpoints give.

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

/// A `/metrics` response in the Prometheus text format (or the error).
pub fn metrics_reply(text: Result<String>) -> Response<Full<Bytes>> {
    match text {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
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
