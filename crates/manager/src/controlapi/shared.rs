//! The Control service as served: the generated `ControlServer`, except that `ListTasks` is
//! encoded straight from the task versions the store holds. The generated response owns its
//! tasks, so answering through it copies every listed task first (about 1.7 KiB each): listing
//! the 10,000 tasks of a service made 17 MB of copies, the manager's largest allocation while a
//! client (`swarmctl` following an update, a script polling) watched a large service converge.
//! The bytes on the wire are the same (`ListTasksResponse`, field 1 repeated).

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use api::control_server::ControlServer;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use store::Shared;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};

use super::ControlApi;

/// `ListTasks`' path: the one call answered here rather than by the generated server.
const LIST_TASKS: &str = "/docker.swarmkit.v1.Control/ListTasks";
/// `ListTasksResponse.tasks`' field number.
const TASKS_FIELD: u32 = 1;

/// A `ListTasksResponse` holding the store's own task versions. Only ever encoded: a decoder
/// skips every field.
#[derive(Default)]
pub struct SharedTasks(pub Vec<Shared<api::Task>>);

impl fmt::Debug for SharedTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedTasks({} tasks)", self.0.len())
    }
}

impl prost::Message for SharedTasks {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for task in &self.0 {
            encoding::message::encode(TASKS_FIELD, &**task, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0
            .iter()
            .map(|task| encoding::message::encoded_len(TASKS_FIELD, &**task))
            .sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// `ListTasks` as a unary service answering with [`SharedTasks`].
struct ListTasks(ControlApi);

impl UnaryService<api::ListTasksRequest> for ListTasks {
    type Response = SharedTasks;
    type Future = BoxFuture<tonic::Response<SharedTasks>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<api::ListTasksRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            super::task::list_shared(&api, request.into_inner())
                .map(|tasks| tonic::Response::new(SharedTasks(tasks)))
        })
    }
}

/// The Control service: [`ControlServer`] of a [`ControlApi`], with `ListTasks` answered from
/// shared task versions.
#[derive(Clone)]
pub struct ControlService {
    server: ControlServer<ControlApi>,
    api: ControlApi,
    max_decoding: usize,
}

impl ControlService {
    /// Serves `api`; requests over `max_decoding` bytes are refused (as the generated server's
    /// `max_decoding_message_size`).
    pub fn new(api: ControlApi, max_decoding: usize) -> Self {
        ControlService {
            server: ControlServer::new(api.clone()).max_decoding_message_size(max_decoding),
            api,
            max_decoding,
        }
    }
}

impl NamedService for ControlService {
    const NAME: &'static str = <ControlServer<ControlApi> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for ControlService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != LIST_TASKS {
            return self.server.call(req);
        }
        let method = ListTasks(self.api.clone());
        let max_decoding = self.max_decoding;
        Box::pin(async move {
            let codec = api::codec::ProtoCodec::<SharedTasks, api::ListTasksRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(max_decoding), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn shared_tasks_encode_as_a_list_tasks_response() {
        let tasks: Vec<api::Task> = (0..3)
            .map(|i| api::Task {
                id: format!("task{i}"),
                service_id: "svc".into(),
                slot: i,
                spec: Some(api::TaskSpec {
                    force_update: i,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let owned = api::ListTasksResponse {
            tasks: tasks.clone(),
        };
        let shared = SharedTasks(tasks.into_iter().map(Shared::new).collect());
        assert_eq!(shared.encoded_len(), owned.encoded_len());
        assert_eq!(shared.encode_to_vec(), owned.encode_to_vec());
        let back = api::ListTasksResponse::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, owned);
        assert_eq!(SharedTasks::default().encode_to_vec(), Vec::<u8>::new());
    }
}
