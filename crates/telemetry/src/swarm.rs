//! SwarmKit's own metrics, with its names, types, help texts and label values (docker/go-metrics
//! namespaces `swarm_<subsystem>`: manager/metrics/collector.go, manager/manager.go, node/node.go,
//! manager/state/raft/raft.go and storage.go, manager/state/store/memory.go,
//! manager/dispatcher/dispatcher.go). Each is a `static` the crate that measures it writes to.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use crate::metric::{Gauge, StateGauges, Timer};

/// Node states, as SwarmKit labels them (`NodeStatus.State` names, lower case, in enum order).
pub const NODE_STATES: [&str; 4] = ["unknown", "down", "ready", "disconnected"];

/// Task states, as SwarmKit labels them (`TaskState` names, lower case, in enum order).
pub const TASK_STATES: [&str; 14] = [
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
];

/// `swarm_manager_nodes{state}`: nodes in the store by status.
pub static MANAGER_NODES: StateGauges<4> = StateGauges::new("state", NODE_STATES);
/// `swarm_manager_tasks_total{state}`: tasks in the store by observed state.
pub static MANAGER_TASKS: StateGauges<14> = StateGauges::new("state", TASK_STATES);
/// `swarm_manager_services_total`.
pub static MANAGER_SERVICES: Gauge = Gauge::new();
/// `swarm_manager_networks_total`.
pub static MANAGER_NETWORKS: Gauge = Gauge::new();
/// `swarm_manager_secrets_total`.
pub static MANAGER_SECRETS: Gauge = Gauge::new();
/// `swarm_manager_configs_total`.
pub static MANAGER_CONFIGS: Gauge = Gauge::new();
/// `swarm_manager_leader`: 1 while this manager is the raft leader.
pub static MANAGER_LEADER: Gauge = Gauge::new();

/// `swarm_node_manager`: 1 while this node runs a manager.
pub static NODE_MANAGER: Gauge = Gauge::new();
/// `swarm_node_info{swarm_id,node_id}`: set once the node knows its identity.
pub static NODE_INFO: NodeInfo = NodeInfo::new();

/// `swarm_raft_transaction_latency_seconds`: from proposing a store write to its entry applied.
pub static RAFT_TRANSACTION_LATENCY: Timer = Timer::new();
/// `swarm_raft_snapshot_latency_seconds`: building and saving one snapshot.
pub static RAFT_SNAPSHOT_LATENCY: Timer = Timer::new();

/// `swarm_store_write_tx_latency_seconds`: one `MemoryStore::update`, commit included.
pub static STORE_WRITE_TX_LATENCY: Timer = Timer::new();
/// `swarm_store_read_tx_latency_seconds`: one `MemoryStore::view`.
pub static STORE_READ_TX_LATENCY: Timer = Timer::new();
/// `swarm_store_lookup_latency_seconds`: one read of an object by its ID (`get`, and the
/// existence checks of `create`, `update` and `delete`).
pub static STORE_LOOKUP_LATENCY: Timer = Timer::new();
/// `swarm_store_batch_latency_seconds`: one `MemoryStore::batch`.
pub static STORE_BATCH_LATENCY: Timer = Timer::new();
/// `swarm_store_memory_store_lock_duration_seconds`: how long a writer held the store's write
/// turn.
pub static STORE_LOCK_DURATION: Timer = Timer::new();

/// `swarm_dispatcher_scheduling_delay_seconds`: from a task's creation to the dispatcher
/// writing it RUNNING.
pub static DISPATCHER_SCHEDULING_DELAY: Timer = Timer::new();

/// The labels of `swarm_node_info`, set when the node knows its cluster and ID (rarely: a lock
/// is fine here).
#[derive(Debug)]
pub struct NodeInfo(Mutex<Option<(String, String)>>);

impl NodeInfo {
    const fn new() -> NodeInfo {
        NodeInfo(Mutex::new(None))
    }

    /// Records this node's cluster (swarm) ID and node ID.
    pub fn set(&self, swarm_id: &str, node_id: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((swarm_id.to_string(), node_id.to_string()));
    }
}

impl EncodeMetric for NodeInfo {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let info = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((swarm, node)) = info {
            // Labels in name order, as Go's registry writes them.
            let labels = [("node_id", node.as_str()), ("swarm_id", swarm.as_str())];
            encoder.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// One metric: full name, SwarmKit's help text (verbatim: the registry's `register` would add a
/// full stop) and its value.
type Row = (
    &'static str,
    &'static str,
    &'static (dyn EncodeMetric + Sync),
);

/// Every SwarmKit metric, in the order they are written out.
static ROWS: &[Row] = &[
    (
        "swarm_dispatcher_scheduling_delay_seconds",
        "Scheduling delay is the time a task takes to go from NEW to RUNNING state.",
        &DISPATCHER_SCHEDULING_DELAY,
    ),
    (
        "swarm_manager_configs_total",
        "The number of configs in the cluster object store",
        &MANAGER_CONFIGS,
    ),
    (
        "swarm_manager_leader",
        "Indicates if this manager node is a leader",
        &MANAGER_LEADER,
    ),
    (
        "swarm_manager_networks_total",
        "The number of networks in the cluster object store",
        &MANAGER_NETWORKS,
    ),
    ("swarm_manager_nodes", "The number of nodes", &MANAGER_NODES),
    (
        "swarm_manager_secrets_total",
        "The number of secrets in the cluster object store",
        &MANAGER_SECRETS,
    ),
    (
        "swarm_manager_services_total",
        "The number of services in the cluster object store",
        &MANAGER_SERVICES,
    ),
    (
        "swarm_manager_tasks_total",
        "The number of tasks in the cluster object store",
        &MANAGER_TASKS,
    ),
    (
        "swarm_node_info",
        "Information related to the swarm",
        &NODE_INFO,
    ),
    (
        "swarm_node_manager",
        "Whether this node is a manager or not",
        &NODE_MANAGER,
    ),
    (
        "swarm_raft_snapshot_latency_seconds",
        "Raft snapshot create latency.",
        &RAFT_SNAPSHOT_LATENCY,
    ),
    (
        "swarm_raft_transaction_latency_seconds",
        "Raft transaction latency.",
        &RAFT_TRANSACTION_LATENCY,
    ),
    (
        "swarm_store_batch_latency_seconds",
        "Raft store batch latency.",
        &STORE_BATCH_LATENCY,
    ),
    (
        "swarm_store_lookup_latency_seconds",
        "Raft store read latency.",
        &STORE_LOOKUP_LATENCY,
    ),
    (
        "swarm_store_memory_store_lock_duration_seconds",
        "Duration for which the raft memory store lock was held.",
        &STORE_LOCK_DURATION,
    ),
    (
        "swarm_store_read_tx_latency_seconds",
        "Raft store read tx latency.",
        &STORE_READ_TX_LATENCY,
    ),
    (
        "swarm_store_write_tx_latency_seconds",
        "Raft store write tx latency.",
        &STORE_WRITE_TX_LATENCY,
    ),
];

/// Writes [`ROWS`] on each scrape.
#[derive(Debug)]
pub(crate) struct SwarmCollector;

impl Collector for SwarmCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, metric) in ROWS {
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(metric_encoder)?;
        }
        Ok(())
    }
}
