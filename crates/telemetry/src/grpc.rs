//! Per-method gRPC server metrics with grpc-go's names and labels (go-grpc-prometheus, which
//! SwarmKit's manager installs as interceptors on both of its servers):
//! `grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and
//! `grpc_server_handling_seconds`, each labelled `grpc_type`, `grpc_service`, `grpc_method`.
//!
//! [`GrpcMetricsLayer`] is a tower layer put in front of a tonic server's routes. Every method of
//! proto/ ([`api::grpcmethods`]) has its counters made once, so a call costs one lookup of its
//! path in a map that never changes and atomic adds; no lock, no allocation. A call is handled
//! when its status is known: a headers-only answer, or the trailers at the end of the answer's
//! body (a streaming call's time is its whole stream); an answer dropped before its end (the
//! client went away) counts as `Canceled`. Messages sent are counted from the answer's gRPC
//! framing; a request's messages are counted as one for calls whose client sends one (unary and
//! server-streaming), and not counted for client-streaming calls, whose request body is left
//! untouched.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;

use crate::metric::{Counter, Timer};

/// grpc-go's names of the status codes (`codes.Code.String()`), by code number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The counters of one method.
#[derive(Debug)]
struct MethodMetrics {
    method: api::grpcmethods::GrpcMethod,
    /// Shown once a server serving its service was built or it was called (grpc-go shows the
    /// methods of the services registered on a server).
    served: AtomicBool,
    started: Counter,
    handled: [Counter; CODE_NAMES.len()],
    received: Counter,
    sent: Counter,
    seconds: Timer,
}

/// Every method's counters, and their index by gRPC path (`/package.Service/Method`).
#[derive(Debug)]
struct Methods {
    methods: Vec<MethodMetrics>,
    by_path: HashMap<String, usize>,
}

static METHODS: LazyLock<Methods> = LazyLock::new(|| {
    let methods: Vec<MethodMetrics> = api::grpcmethods::GRPC_METHODS
        .iter()
        .map(|m| MethodMetrics {
            method: *m,
            served: AtomicBool::new(false),
            started: Counter::new(),
            handled: [const { Counter::new() }; CODE_NAMES.len()],
            received: Counter::new(),
            sent: Counter::new(),
            seconds: Timer::new(),
        })
        .collect();
    let by_path = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("/{}/{}", m.method.service, m.method.method), i))
        .collect();
    Methods { methods, by_path }
});

fn lookup(path: &str) -> Option<&'static MethodMetrics> {
    let methods = &*METHODS;
    methods.by_path.get(path).map(|i| &methods.methods[*i])
}

/// Tower layer counting the calls of a gRPC server (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct GrpcMetricsLayer;

impl GrpcMetricsLayer {
    /// The layer for a server serving `services` (full names, `package.Service`), whose
    /// methods are then shown at 0 before their first call, as grpc-go's are.
    pub fn new(services: &[&str]) -> GrpcMetricsLayer {
        for m in &METHODS.methods {
            if services.contains(&m.method.service) {
                m.served.store(true, Ordering::Relaxed);
            }
        }
        GrpcMetricsLayer
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
}

/// One call being measured.
#[derive(Debug)]
struct Call {
    metrics: &'static MethodMetrics,
    start: Instant,
}

impl Call {
    fn finish(self, code: usize) {
        let code = if code < CODE_NAMES.len() {
            code
        } else {
            UNKNOWN
        };
        self.metrics.handled[code].inc();
        self.metrics.seconds.observe_since(self.start);
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = lookup(req.uri().path()).map(|metrics| {
            metrics.served.store(true, Ordering::Relaxed);
            metrics.started.inc();
            if !metrics.method.client_streaming {
                metrics.received.inc();
            }
            Call {
                metrics,
                start: Instant::now(),
            }
        });
        MeteredFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a measured call, on its way.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

/// The status code a headers-only answer carries, if any.
fn header_code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(UNKNOWN),
    )
}

impl<F, RB, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(a) => a,
        };
        let mut call = this.call.take();
        match answer {
            Ok(resp) => {
                if let Some(code) = header_code(resp.headers())
                    && let Some(c) = call.take()
                {
                    c.finish(code);
                }
                Poll::Ready(Ok(resp.map(|inner| MeteredBody {
                    inner,
                    call,
                    frames: Frames::default(),
                })))
            }
            Err(e) => {
                if let Some(c) = call {
                    c.finish(UNKNOWN);
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

/// Where the answer's gRPC framing (1 flag byte, 4 length bytes, the message) stands.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current message still to come.
    rest: u64,
    /// Prefix bytes of the next message seen so far.
    prefix_seen: usize,
    /// Its length bytes.
    len: [u8; 4],
}

impl Frames {
    /// Reads `data` and returns how many messages began in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut began = 0;
        while !data.is_empty() {
            if self.rest > 0 {
                let skip = usize::try_from(self.rest).map_or(data.len(), |r| r.min(data.len()));
                self.rest -= skip as u64;
                data = &data[skip..];
                continue;
            }
            if self.prefix_seen > 0 {
                self.len[self.prefix_seen - 1] = data[0];
            }
            data = &data[1..];
            self.prefix_seen += 1;
            if self.prefix_seen == 5 {
                self.prefix_seen = 0;
                self.rest = u64::from(u32::from_be_bytes(self.len));
                began += 1;
            }
        }
        began
    }
}

/// An answer's body, counting its messages and reading its final status.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
    frames: Frames,
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(call) = &this.call {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        for _ in 0..this.frames.feed(data) {
                            call.metrics.sent.inc();
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        let code = header_code(trailers).unwrap_or(UNKNOWN);
                        if let Some(c) = this.call.take() {
                            c.finish(code);
                        }
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    if let Some(c) = this.call.take() {
                        c.finish(UNKNOWN);
                    }
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // The answer went away before its status: the client cancelled (or the connection
        // closed), as grpc-go reports it.
        if let Some(c) = self.call.take() {
            c.finish(CANCELED);
        }
    }
}

/// Writes the gRPC families on each scrape, in grpc-go's order (by name).
#[derive(Debug)]
pub(crate) struct GrpcCollector;

impl GrpcCollector {
    fn family(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric_type: MetricType,
        each: impl Fn(
            &MethodMetrics,
            [(&'static str, &'static str); 3],
            &mut prometheus_client::encoding::MetricEncoder,
        ) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        let mut served = METHODS
            .methods
            .iter()
            .filter(|m| m.served.load(Ordering::Relaxed))
            .peekable();
        if served.peek().is_none() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
        for m in served {
            let labels = [
                ("grpc_method", m.method.method),
                ("grpc_service", m.method.service),
                ("grpc_type", m.method.kind()),
            ];
            each(m, labels, &mut metric)?;
        }
        Ok(())
    }
}

impl Collector for GrpcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        GrpcCollector::family(
            &mut encoder,
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            MetricType::Counter,
            |m, labels, enc| {
                for (code, counter) in CODE_NAMES.iter().zip(&m.handled) {
                    let with_code = [("grpc_code", *code), labels[0], labels[1], labels[2]];
                    counter.encode(enc.encode_family(&with_code)?)?;
                }
                Ok(())
            },
        )?;
        GrpcCollector::family(
            &mut encoder,
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            MetricType::Histogram,
            |m, labels, enc| m.seconds.encode(enc.encode_family(&labels)?),
        )?;
        GrpcCollector::family(
            &mut encoder,
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server.",
            MetricType::Counter,
            |m, labels, enc| m.received.encode(enc.encode_family(&labels)?),
        )?;
        GrpcCollector::family(
            &mut encoder,
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            MetricType::Counter,
            |m, labels, enc| m.sent.encode(enc.encode_family(&labels)?),
        )?;
        GrpcCollector::family(
            &mut encoder,
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            MetricType::Counter,
            |m, labels, enc| m.started.encode(enc.encode_family(&labels)?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_chunk_boundaries() {
        let msg = |len: u32| {
            let mut v = vec![0u8];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend(std::iter::repeat_n(7u8, len as usize));
            v
        };
        let mut stream = msg(3);
        stream.extend(msg(0));
        stream.extend(msg(300));
        for cut in 0..stream.len() {
            let mut f = Frames::default();
            let n = f.feed(&stream[..cut]) + f.feed(&stream[cut..]);
            assert_eq!(n, 3, "cut at {cut}");
            assert_eq!((f.rest, f.prefix_seen), (0, 0));
        }
    }

    #[test]
    fn every_method_of_the_protos_has_counters() {
        let m = lookup("/docker.swarmkit.v1.Control/ListNodes").expect("listed");
        assert_eq!(m.method.kind(), "unary");
        assert!(lookup("/docker.swarmkit.v1.Control/Nope").is_none());
    }
}
