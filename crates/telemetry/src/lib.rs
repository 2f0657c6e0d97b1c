//! What an operator can see of a running `swarmd`: Prometheus metrics with SwarmKit's names
//! ([`swarm`]) and grpc-go's per-method gRPC metrics ([`grpc`]), written out by
//! prometheus-client's Prometheus text encoder ([`encode`]), and the per-part debug state
//! ([`debug`]); [`http`] serves both. Metrics are process-wide statics, as SwarmKit's (Go's
//! default registry): recording one is an atomic add ([`metric`]), so the crates that measure
//! (store, raft, dispatcher, manager, node) pay no lock or allocation for it.

pub mod debug;
pub mod grpc;
pub mod http;
pub mod metric;
pub mod swarm;

use std::sync::LazyLock;

use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s text: Prometheus text format 0.0.4, what SwarmKit's
/// `promhttp` handler answers a scraper with.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut registry = Registry::default();
    // grpc_* before swarm_*: families come out sorted by name, as Go's registry writes them.
    registry.register_collector(Box::new(grpc::GrpcCollector));
    registry.register_collector(Box::new(swarm::SwarmCollector));
    registry
});

/// Every metric of this process in the Prometheus text format (0.0.4).
pub fn encode() -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; an encoder error would be a bug in a metric type.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &REGISTRY) {
        tracing::error!("encoding metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarmkit_metrics_are_written_with_their_names_and_help() {
        swarm::MANAGER_SERVICES.set(3);
        swarm::MANAGER_TASKS.get("running").expect("a state").set(2);
        swarm::RAFT_TRANSACTION_LATENCY.observe(std::time::Duration::from_millis(7));
        let text = encode();
        assert!(
            text.contains("# HELP swarm_manager_services_total The number of services in the cluster object store\n# TYPE swarm_manager_services_total gauge\nswarm_manager_services_total 3\n"),
            "{text}"
        );
        assert!(text.contains("swarm_manager_tasks_total{state=\"running\"} 2\n"));
        assert!(text.contains("swarm_manager_tasks_total{state=\"orphaned\"} 0\n"));
        assert!(text.contains("# TYPE swarm_raft_transaction_latency_seconds histogram\n"));
        assert!(text.contains("swarm_raft_transaction_latency_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("swarm_raft_transaction_latency_seconds_bucket{le=\"+Inf\"} 1\n"));
    }
}
