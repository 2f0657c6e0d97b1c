//! Oversized requests answer as grpc-go's servers do. tonic refuses a request message larger than
//! a service's decoding limit with OUT_OF_RANGE before reading it; SwarmKit (grpc-go) answers
//! RESOURCE_EXHAUSTED `grpc: received message larger than max (<found> vs. <limit>)`. This layer,
//! in front of every service of both listeners, rewrites tonic's answer into grpc-go's and leaves
//! every other response alone.

use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;

use crate::authz::BoxFuture;

/// Largest request message a client may send to any service (grpc-go's default receive limit,
/// which SwarmKit's servers keep: `transport.GRPCMaxMsgSize`).
pub const MAX_RECV: usize = 4 << 20;

/// The start of tonic's refusal of an oversized request message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// grpc-go's answer for a message of `found` bytes over a limit of `limit` bytes.
pub fn too_large(found: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

/// grpc-go's status for tonic's refusal of an oversized request, `None` for any other status.
fn as_grpc_go(status: &Status) -> Option<Status> {
    if status.code() != tonic::Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(TONIC_TOO_LARGE)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(too_large(found.parse().ok()?, limit.parse().ok()?))
}

/// Tower layer giving oversized requests grpc-go's answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageSizeLayer;

impl<S> tower::Layer<S> for MessageSizeLayer {
    type Service = MessageSizeService<S>;
    fn layer(&self, inner: S) -> MessageSizeService<S> {
        MessageSizeService { inner }
    }
}

/// The service [`MessageSizeLayer`] wraps around the gRPC routes.
#[derive(Clone, Debug)]
pub struct MessageSizeService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MessageSizeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            // A refusal before the call ran is a headers-only answer carrying its status.
            let rewritten = Status::from_header_map(resp.headers())
                .as_ref()
                .and_then(as_grpc_go);
            Ok(match rewritten {
                Some(status) => status.into_http(),
                None => resp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_refusal_becomes_grpc_go_answer() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 5242885 bytes, the limit is: 4194304 bytes",
        );
        let go = as_grpc_go(&tonic).expect("rewritten");
        assert_eq!(go.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            go.message(),
            "grpc: received message larger than max (5242885 vs. 4194304)"
        );
        // Anything else is left as it is.
        assert!(as_grpc_go(&Status::out_of_range("index out of range")).is_none());
        assert!(as_grpc_go(&Status::unknown(tonic.message())).is_none());
    }
}
