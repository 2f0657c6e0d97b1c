//! How an engine error becomes an [`ExecutorError`]: the engine being out of reach (connection
//! refused, socket missing, request timeout) is temporary, anything the engine itself answered is
//! fatal with the engine's own message. Which answers a step treats as success (a container that
//! already exists, one that is already gone) is the controller's business.

use agent::ExecutorError;
use bollard::errors::Error as EngineError;

/// The HTTP status of an engine answer, when the error is one.
pub(crate) fn status(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// True when the engine answered that the object does not exist.
pub(crate) fn is_not_found(e: &EngineError) -> bool {
    status(e) == Some(404)
}

/// Maps an engine error to the executor's two kinds; `what` names the step for errors that did
/// not come from the engine (the engine's own messages already say what went wrong).
pub(crate) fn classify(what: &str, e: EngineError) -> ExecutorError {
    match e {
        EngineError::DockerResponseServerError { message, .. } => ExecutorError::Fatal(message),
        EngineError::DockerStreamError { error } => ExecutorError::Fatal(error),
        EngineError::RequestTimeoutError
        | EngineError::IOError { .. }
        | EngineError::HyperResponseError { .. }
        | EngineError::HyperLegacyError { .. }
        | EngineError::SocketNotFoundError(_) => {
            ExecutorError::Temporary(format!("{what}: docker engine unavailable: {e}"))
        }
        other => ExecutorError::Fatal(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_answers_are_fatal_with_the_engine_message() {
        let e = EngineError::DockerResponseServerError {
            status_code: 404,
            message: "No such image: nope:latest".into(),
        };
        assert!(is_not_found(&e));
        assert_eq!(
            classify("pull", e),
            ExecutorError::Fatal("No such image: nope:latest".into())
        );
        // A registry that refuses connections is still the engine's answer, not ours.
        let e = EngineError::DockerStreamError {
            error: "dial tcp 127.0.0.1:1: connect: connection refused".into(),
        };
        assert!(matches!(classify("pull", e), ExecutorError::Fatal(_)));
    }

    #[test]
    fn an_unreachable_engine_is_temporary() {
        for e in [
            EngineError::RequestTimeoutError,
            EngineError::SocketNotFoundError("/nope.sock".into()),
            EngineError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            },
        ] {
            assert!(
                matches!(classify("start", e), ExecutorError::Temporary(_)),
                "should be temporary"
            );
        }
    }
}
