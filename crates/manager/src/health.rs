//! SwarmKit's own Health service (`docker.swarmkit.v1.Health`, not grpc.health.v1): the control
//! socket reports `ControlAPI`, the remote port `Raft`, SERVING once the manager has started.

use api::health_check_response::ServingStatus;
use api::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

/// Answers SERVING for the one service name it was built with.
#[derive(Clone, Debug)]
pub struct HealthService {
    service: &'static str,
}

impl HealthService {
    /// A health service that knows `service`.
    pub fn new(service: &'static str) -> Self {
        HealthService { service }
    }
}

#[tonic::async_trait]
impl api::health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = request.into_inner().service;
        if name.is_empty() || name == self.service {
            Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            }))
        } else {
            Err(Status::not_found("unknown service"))
        }
    }
}
