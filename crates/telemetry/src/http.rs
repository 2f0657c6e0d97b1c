//! The two HTTP endpoints of `swarmd` (HTTP/1.1, plain text: as SwarmKit's, they are meant for
//! a loopback or otherwise trusted address): `--listen-metrics` answers `GET /metrics` with
//! Prometheus text, `--listen-debug` answers `GET /debug/state` (and `/`) with
//! [`crate::debug::snapshot`] as JSON. The listeners are bound by the caller, so an address in use
//! is refused before anything starts.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Which endpoint a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/metrics`.
    Metrics,
    /// `/debug/state`.
    Debug,
}

fn answer(
    endpoint: Endpoint,
    req: &http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, content_type: &str, body: String| {
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        resp
    };
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
    }
    match (endpoint, req.uri().path()) {
        (Endpoint::Metrics, "/metrics") => {
            reply(http::StatusCode::OK, crate::CONTENT_TYPE, crate::encode())
        }
        (Endpoint::Debug, "/" | "/debug/state") => {
            let mut body = serde_json::to_string_pretty(&crate::debug::snapshot())
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            body.push('\n');
            reply(http::StatusCode::OK, "application/json", body)
        }
        _ => reply(
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    }
}

/// Serves `endpoint` on `listener` for as long as the process runs (each connection in its own
/// task). A failed accept (out of file descriptors) is logged and retried after a pause.
pub async fn serve(listener: TcpListener, endpoint: Endpoint) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(?endpoint, "accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service =
                service_fn(move |req| async move { Ok::<_, Infallible>(answer(endpoint, &req)) });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(?endpoint, "connection ended: {e}");
            }
        });
    }
}
