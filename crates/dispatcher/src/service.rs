//! The `docker.swarmkit.v1.Dispatcher` gRPC service over [`Dispatcher`]. On the remote port the
//! caller's node ID is the CN of its verified client certificate (the authorization layer in
//! front has already checked role, organisation and removal) and its address the connection's
//! source IP (for a call another manager forwarded, the original caller's: `ca::peer_cert_info`); on the local control socket every call is this manager's own node, as SwarmKit
//! treats local requests.

use tonic::{Request, Response, Status};

use crate::dispatcher::{Dispatcher, DispatcherStream};
use crate::error::DispatcherError;

/// The gRPC face of a [`Dispatcher`], for one listener.
#[derive(Clone)]
pub struct DispatcherService {
    dispatcher: Dispatcher,
    /// Set on the local socket: the node every call comes from.
    local_node: Option<String>,
}

impl DispatcherService {
    /// For the remote port: callers are identified by their certificates.
    pub fn remote(dispatcher: Dispatcher) -> DispatcherService {
        DispatcherService {
            dispatcher,
            local_node: None,
        }
    }

    /// For the local control socket: every caller is `node_id` (this manager's node).
    pub fn local(dispatcher: Dispatcher, node_id: String) -> DispatcherService {
        DispatcherService {
            dispatcher,
            local_node: Some(node_id),
        }
    }

    /// Node ID and source IP of a request (no IP over the local socket: the recorded address
    /// then stays as it was).
    fn caller<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        if let Some(id) = &self.local_node {
            return Ok((id.clone(), String::new()));
        }
        let cert = ca::peer_cert_info(req).ok_or(DispatcherError::NoIdentity)?;
        let addr = ca::peer_ip(req).map(|a| a.to_string()).unwrap_or_default();
        Ok((cert.node_id, addr))
    }
}

#[tonic::async_trait]
impl api::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = DispatcherStream<api::SessionMessage>;
    type TasksStream = DispatcherStream<api::TasksMessage>;
    type AssignmentsStream = DispatcherStream<api::AssignmentsMessage>;

    async fn session(
        &self,
        req: Request<api::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (node_id, addr) = self.caller(&req)?;
        let stream = self
            .dispatcher
            .session(&node_id, &addr, req.into_inner())
            .await?;
        Ok(Response::new(stream))
    }

    async fn heartbeat(
        &self,
        req: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        let (node_id, _) = self.caller(&req)?;
        let period = self
            .dispatcher
            .heartbeat(&node_id, &req.get_ref().session_id)?;
        Ok(Response::new(api::HeartbeatResponse {
            period: prost_types::Duration::try_from(period).ok(),
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<api::UpdateTaskStatusRequest>,
    ) -> Result<Response<api::UpdateTaskStatusResponse>, Status> {
        let (node_id, _) = self.caller(&req)?;
        self.dispatcher
            .update_task_status(&node_id, req.into_inner())?;
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
        let (node_id, _) = self.caller(&req)?;
        let split = req
            .metadata()
            .get(api::assignment_parts::SPLIT_HEADER)
            .is_some_and(|v| v == "true");
        let stream = self
            .dispatcher
            .assignments_for(&node_id, &req.get_ref().session_id, split)?;
        Ok(Response::new(stream))
    }
}
