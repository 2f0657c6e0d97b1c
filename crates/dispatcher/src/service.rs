//! The `docker.swarmkit.v1.Dispatcher` gRPC service over [`Dispatcher`]: the caller's node ID is
//! the CN of its verified client certificate (the authorization layer in front has already
//! checked role, organisation and removal), its address the connection's source IP.

use tonic::{Request, Response, Status};

use crate::dispatcher::{Dispatcher, DispatcherStream};
use crate::error::DispatcherError;

/// Node ID and source IP of a request.
fn caller<T>(req: &Request<T>) -> Result<(String, String), Status> {
    let cert = ca::peer_cert_info(req).ok_or(DispatcherError::NoIdentity)?;
    let addr = req
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    Ok((cert.node_id, addr))
}

#[tonic::async_trait]
impl api::dispatcher_server::Dispatcher for Dispatcher {
    type SessionStream = DispatcherStream<api::SessionMessage>;
    type TasksStream = DispatcherStream<api::TasksMessage>;
    type AssignmentsStream = DispatcherStream<api::AssignmentsMessage>;

    #[tracing::instrument(skip_all, name = "session")]
    async fn session(
        &self,
        req: Request<api::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (node_id, addr) = caller(&req)?;
        let stream = Dispatcher::session(self, &node_id, &addr, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn heartbeat(
        &self,
        req: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        let (node_id, _) = caller(&req)?;
        let period = Dispatcher::heartbeat(self, &node_id, &req.get_ref().session_id)?;
        Ok(Response::new(api::HeartbeatResponse {
            period: prost_types::Duration::try_from(period).ok(),
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<api::UpdateTaskStatusRequest>,
    ) -> Result<Response<api::UpdateTaskStatusResponse>, Status> {
        let (node_id, _) = caller(&req)?;
        Dispatcher::update_task_status(self, &node_id, req.into_inner())?;
        Ok(Response::new(api::UpdateTaskStatusResponse {}))
    }

    async fn update_volume_status(
        &self,
        _: Request<api::UpdateVolumeStatusRequest>,
    ) -> Result<Response<api::UpdateVolumeStatusResponse>, Status> {
        Err(Status::unimplemented("not supported yet: cluster volumes"))
    }

    async fn tasks(
        &self,
        _: Request<api::TasksRequest>,
    ) -> Result<Response<Self::TasksStream>, Status> {
        Err(Status::unimplemented(
            "not supported yet: Tasks is deprecated, use Assignments",
        ))
    }

    async fn assignments(
        &self,
        req: Request<api::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let (node_id, _) = caller(&req)?;
        let stream = Dispatcher::assignments(self, &node_id, &req.get_ref().session_id)?;
        Ok(Response::new(stream))
    }
}
