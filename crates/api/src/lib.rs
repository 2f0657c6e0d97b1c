//! The `docker.swarmkit.v1` wire types and gRPC services generated from `proto/`, plus the
//! pure helpers every other crate shares: object IDs and naming, and Go's text formats
//! (`gofmt`). No I/O happens here.

#![allow(
    clippy::large_enum_variant,
    clippy::enum_variant_names,
    clippy::doc_lazy_continuation
)]

/// Generated code, nested as the proto package is.
pub mod docker {
    /// `docker.swarmkit`
    pub mod swarmkit {
        /// `docker.swarmkit.v1`
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("docker.swarmkit.v1");
        }
    }
}

/// `swarmkit.raftrpc.v1`: the raft transport between managers (this implementation's own
/// package; its payloads are serialized openraft messages).
#[allow(missing_docs, clippy::all)]
pub mod raftrpc {
    tonic::include_proto!("swarmkit.raftrpc.v1");
}

/// `swarmkit.netplane.v1`: the leader's view of the swarm networks each node takes part in, for
/// the node's data plane (this implementation's own package; proto/netplane.proto).
#[allow(missing_docs, clippy::all)]
pub mod netplane {
    tonic::include_proto!("swarmkit.netplane.v1");
}

pub use docker::swarmkit::v1::*;

pub mod assignment_parts;
pub mod codec;
/// Largest answer our gRPC clients read (swarmctl, the agent): grpc-go's `math.MaxInt32`, which
/// SwarmKit's agent and node set as their receive limit, so any answer a server sends is read.
pub const CLIENT_MAX_RECV: usize = i32::MAX as usize;

pub mod constraint;
pub mod genericresource;
pub mod gofmt;
pub mod grpcmethods;
pub mod limits;
pub mod naming;

impl Task {
    /// The container spec of this task, if it runs a container.
    pub fn container(&self) -> Option<&ContainerSpec> {
        match self.spec.as_ref()?.runtime.as_ref()? {
            task_spec::Runtime::Container(c) => Some(c),
            _ => None,
        }
    }
}

/// The driver option asking for a network's traffic between nodes to be encrypted
/// (`network create --opt encrypted`).
pub const NETWORK_ENCRYPTED_OPTION: &str = "encrypted";

impl Network {
    /// Whether the network's traffic between nodes is to be encrypted: the `encrypted` option
    /// of its spec's driver or of its driver state.
    pub fn encrypted(&self) -> bool {
        let asks = |d: Option<&Driver>| {
            d.is_some_and(|d| d.options.contains_key(NETWORK_ENCRYPTED_OPTION))
        };
        asks(self.spec.as_ref().and_then(|s| s.driver_config.as_ref()))
            || asks(self.driver_state.as_ref())
    }
}

/// prost's `skip_debug` on EncryptionKey also drops the Debug of the enum nested in it; the enum
/// holds no secret, so it gets its name back.
impl std::fmt::Debug for encryption_key::Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str_name())
    }
}

/// Shows everything of a key but its bytes (their length only), so that no log line carries
/// key material.
impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("subsystem", &self.subsystem)
            .field("algorithm", &self.algorithm)
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .field("lamport_time", &self.lamport_time)
            .finish()
    }
}
