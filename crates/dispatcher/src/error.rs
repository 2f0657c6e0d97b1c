//! Why a dispatcher call was refused, and the one mapping of those reasons to gRPC status codes,
//! with SwarmKit's codes and wording (manager/dispatcher/dispatcher.go and nodes.go).

use tonic::{Code, Status};

/// A refused dispatcher call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatcherError {
    /// The dispatcher runs only while this manager is the leader.
    #[error("dispatcher is stopped")]
    Stopped,
    /// The node has no session with this dispatcher (never registered, or its heartbeat expired).
    #[error("node not registered")]
    NotRegistered,
    /// The node registered again since, or the request named no session.
    #[error("session invalid")]
    SessionInvalid,
    /// The node object is not in the store.
    #[error("node not found")]
    NodeNotFound,
    /// The node registered too often within the rate limit period.
    #[error("node {0} exceeded rate limit count of registrations")]
    RateLimited(String),
    /// A status report named a task that runs elsewhere.
    #[error("cannot update a task not assigned this node")]
    TaskNotAssigned,
    /// The dispatcher stopped while the session was open.
    #[error("node must disconnect")]
    Disconnect,
    /// The request came without a verified node certificate.
    #[error("no client certificates in request")]
    NoIdentity,
}

impl From<DispatcherError> for Status {
    fn from(e: DispatcherError) -> Status {
        let code = match &e {
            DispatcherError::Stopped | DispatcherError::Disconnect => Code::Aborted,
            DispatcherError::NotRegistered => Code::NotFound,
            DispatcherError::SessionInvalid => Code::InvalidArgument,
            // SwarmKit returns a plain error here, which grpc-go sends as Unknown.
            DispatcherError::NodeNotFound => Code::Unknown,
            DispatcherError::RateLimited(_) => Code::Unavailable,
            DispatcherError::TaskNotAssigned | DispatcherError::NoIdentity => {
                Code::PermissionDenied
            }
        };
        Status::new(code, e.to_string())
    }
}
