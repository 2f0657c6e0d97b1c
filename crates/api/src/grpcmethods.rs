//! The gRPC methods of every service in proto/ with their streaming kinds, as protoc describes
//! them (written by build.rs): what per-method metrics label calls with, as grpc-go's
//! interceptors see them, without a table kept by hand.

/// One rpc of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcMethod {
    /// The service's full name, `package.Service`.
    pub service: &'static str,
    /// The method's name.
    pub method: &'static str,
    /// The client sends a stream of messages.
    pub client_streaming: bool,
    /// The server answers with a stream of messages.
    pub server_streaming: bool,
}

impl GrpcMethod {
    /// grpc-go's name for the kind of call: `unary`, `client_stream`, `server_stream` or
    /// `bidi_stream` (the `grpc_type` label of SwarmKit's gRPC metrics).
    pub fn kind(&self) -> &'static str {
        match (self.client_streaming, self.server_streaming) {
            (false, false) => "unary",
            (true, false) => "client_stream",
            (false, true) => "server_stream",
            (true, true) => "bidi_stream",
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    fn find(service: &str, method: &str) -> GrpcMethod {
        *GRPC_METHODS
            .iter()
            .find(|m| m.service == service && m.method == method)
            .unwrap_or_else(|| panic!("{service}/{method} listed"))
    }

    #[test]
    fn every_rpc_is_listed_with_its_kind() {
        assert_eq!(
            find("docker.swarmkit.v1.Control", "ListNodes").kind(),
            "unary"
        );
        assert_eq!(
            find("docker.swarmkit.v1.Dispatcher", "Session").kind(),
            "server_stream"
        );
        assert_eq!(
            find("docker.swarmkit.v1.LogBroker", "PublishLogs").kind(),
            "client_stream"
        );
        assert_eq!(
            find("docker.swarmkit.v1.Watch", "Watch").kind(),
            "server_stream"
        );
        assert!(
            GRPC_METHODS
                .iter()
                .any(|m| m.service == "swarmkit.raftrpc.v1.RaftTransport")
        );
    }
}
