//! SwarmKit's Control service (`docker.swarmkit.v1.Control`) over the store: the gRPC trait
//! implementation, which delegates to one file per object kind (mirroring SwarmKit's
//! manager/controlapi/*.go), the list-filter helpers shared by those files, and the mapping of
//! store errors to gRPC statuses. Transport, authorization and forwarding to the leader are the
//! server's business, not this module's; raft membership is reached through [`RaftMembers`].

use std::collections::BTreeMap;
use std::sync::Arc;

use api::control_server::Control;
use store::{MemoryStore, StoreError, Tx};
use tonic::{Request, Response, Status};

mod cluster;
pub use cluster::redact_cluster;
mod config;
mod network;
mod node;
mod resource;
mod secret;
mod service;
mod shared;
pub use shared::ControlService;
mod task;
pub mod validate;
mod volume;

#[cfg(test)]
mod tests;

/// What the control API needs to know about raft membership. Implemented by the raft node; tests
/// use a fixed list.
pub trait RaftMembers: Send + Sync + 'static {
    /// The manager status of `node_id` (raft ID, address, leader, reachability) if it is a raft
    /// member; filled into `Node.manager_status` at read time.
    fn manager_status(&self, node_id: &str) -> Option<api::ManagerStatus>;
    /// Whether `node_id` is currently a member of the raft cluster.
    fn is_member(&self, node_id: &str) -> bool;
    /// Whether removing `node_id` from raft keeps a quorum (checked when demoting a manager).
    /// Defaults to yes until raft membership changes are wired in.
    fn can_remove_member(&self, node_id: &str) -> bool {
        let _ = node_id;
        true
    }
    /// Whether `node_id` is this manager's own node.
    fn is_local(&self, node_id: &str) -> bool {
        let _ = node_id;
        false
    }
    /// Removes `node_id` from raft (the role manager's half of a demotion; leader only). A
    /// leader removing itself hands leadership over. Defaults to refusing, loudly.
    fn remove_member(
        &self,
        node_id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let msg = format!("not supported yet: removing node {node_id} from raft");
        Box::pin(async move { Err(msg) })
    }
}

/// The Control service: every call reads or writes `store`, in one transaction for writes.
#[derive(Clone)]
pub struct ControlApi {
    store: MemoryStore,
    members: Arc<dyn RaftMembers>,
}

impl ControlApi {
    /// A control API over `store`, asking `members` about raft membership.
    pub fn new(store: MemoryStore, members: Arc<dyn RaftMembers>) -> Self {
        Self { store, members }
    }

    /// Runs `f` as one store transaction. A [`TxError::Refused`] aborts it (nothing is written, even
    /// if `f` wrote before refusing) and is returned as-is; store errors map through
    /// [`store_status`].
    async fn write<R: Send>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, TxError> + Send,
    ) -> Result<R, Status> {
        let mut refused = None;
        let result = self
            .store
            .update(|tx| {
                f(tx).map_err(|e| match e {
                    TxError::Refused(status) => {
                        refused = Some(status);
                        StoreError::Invalid("request refused".to_string())
                    }
                    TxError::Store(e) => e,
                })
            })
            .await;
        match result {
            Ok(r) => Ok(r),
            Err(e) => Err(refused.take().unwrap_or_else(|| store_status(e))),
        }
    }
}

/// Why a write transaction stopped: a refusal with its gRPC status, or a store error.
enum TxError {
    Refused(Status),
    Store(StoreError),
}

impl From<Status> for TxError {
    fn from(s: Status) -> Self {
        TxError::Refused(s)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

/// Maps a store error to the status SwarmKit's handlers produce when they return the store error
/// unchanged: gRPC reports a plain Go error as `Unknown` with its text (`update out of sequence`,
/// `name conflicts with an existing object`, the no-leader message). Handlers that SwarmKit gives
/// a specific code or message check for those cases themselves.
pub fn store_status(e: StoreError) -> Status {
    match &e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Invalid(_) => Status::internal(e.to_string()),
        _ => Status::unknown(e.to_string()),
    }
}

/// An empty candidate list matches everything; otherwise `value` must be one of them.
fn filter_contains(value: &str, candidates: &[String]) -> bool {
    candidates.is_empty() || candidates.iter().any(|c| c == value)
}

/// An empty candidate list matches everything; otherwise `value` must start with one of them.
fn filter_contains_prefix(value: &str, candidates: &[String]) -> bool {
    candidates.is_empty() || candidates.iter().any(|c| value.starts_with(c.as_str()))
}

/// Every wanted label must be present; a wanted empty value matches any value.
fn filter_match_labels(
    labels: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> bool {
    wanted.iter().all(|(k, v)| match labels.get(k) {
        Some(have) => v.is_empty() || v == have,
        None => false,
    })
}

/// The query of List calls: the union of `by(value)` over `values`.
fn any_of<'a>(values: &'a [String], by: impl Fn(&'a str) -> store::By<'a>) -> store::By<'a> {
    store::By::Or(values.iter().map(|v| by(v.as_str())).collect())
}

/// The name of an object's annotations, or "" when unset.
fn name_of(a: &Option<api::Annotations>) -> &str {
    a.as_ref().map(|a| a.name.as_str()).unwrap_or("")
}

/// The labels of an object's annotations (empty when unset).
fn labels_of(a: &Option<api::Annotations>) -> BTreeMap<String, String> {
    a.as_ref().map(|a| a.labels.clone()).unwrap_or_default()
}

/// The current time as a protobuf timestamp.
fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// The version an object currently has (zero when unset).
fn version_of(meta: &Option<api::Meta>) -> Option<api::Version> {
    meta.as_ref().and_then(|m| m.version)
}

/// Sets the version the client read, so the store refuses the write if it is stale.
fn set_version(meta: &mut Option<api::Meta>, version: api::Version) {
    meta.get_or_insert_with(Default::default).version = Some(store::client_version(version));
}

macro_rules! delegate {
    ($($method:ident($req:ident) -> $resp:ident = $f:path;)*) => {
        #[tonic::async_trait]
        impl Control for ControlApi {
            $(
                async fn $method(
                    &self,
                    request: Request<api::$req>,
                ) -> Result<Response<api::$resp>, Status> {
                    $f(self, request.into_inner()).await.map(Response::new)
                }
            )*
        }
    };
}

delegate! {
    get_node(GetNodeRequest) -> GetNodeResponse = node::get;
    list_nodes(ListNodesRequest) -> ListNodesResponse = node::list;
    update_node(UpdateNodeRequest) -> UpdateNodeResponse = node::update;
    remove_node(RemoveNodeRequest) -> RemoveNodeResponse = node::remove;
    get_task(GetTaskRequest) -> GetTaskResponse = task::get;
    list_tasks(ListTasksRequest) -> ListTasksResponse = task::list;
    remove_task(RemoveTaskRequest) -> RemoveTaskResponse = task::remove;
    get_service(GetServiceRequest) -> GetServiceResponse = service::get;
    list_services(ListServicesRequest) -> ListServicesResponse = service::list;
    create_service(CreateServiceRequest) -> CreateServiceResponse = service::create;
    update_service(UpdateServiceRequest) -> UpdateServiceResponse = service::update;
    remove_service(RemoveServiceRequest) -> RemoveServiceResponse = service::remove;
    list_service_statuses(ListServiceStatusesRequest) -> ListServiceStatusesResponse = service::list_statuses;
    get_network(GetNetworkRequest) -> GetNetworkResponse = network::get;
    list_networks(ListNetworksRequest) -> ListNetworksResponse = network::list;
    create_network(CreateNetworkRequest) -> CreateNetworkResponse = network::create;
    remove_network(RemoveNetworkRequest) -> RemoveNetworkResponse = network::remove;
    get_cluster(GetClusterRequest) -> GetClusterResponse = cluster::get;
    list_clusters(ListClustersRequest) -> ListClustersResponse = cluster::list;
    update_cluster(UpdateClusterRequest) -> UpdateClusterResponse = cluster::update;
    get_secret(GetSecretRequest) -> GetSecretResponse = secret::get;
    update_secret(UpdateSecretRequest) -> UpdateSecretResponse = secret::update;
    list_secrets(ListSecretsRequest) -> ListSecretsResponse = secret::list;
    create_secret(CreateSecretRequest) -> CreateSecretResponse = secret::create;
    remove_secret(RemoveSecretRequest) -> RemoveSecretResponse = secret::remove;
    get_config(GetConfigRequest) -> GetConfigResponse = config::get;
    update_config(UpdateConfigRequest) -> UpdateConfigResponse = config::update;
    list_configs(ListConfigsRequest) -> ListConfigsResponse = config::list;
    create_config(CreateConfigRequest) -> CreateConfigResponse = config::create;
    remove_config(RemoveConfigRequest) -> RemoveConfigResponse = config::remove;
    get_extension(GetExtensionRequest) -> GetExtensionResponse = resource::get_extension;
    create_extension(CreateExtensionRequest) -> CreateExtensionResponse = resource::create_extension;
    remove_extension(RemoveExtensionRequest) -> RemoveExtensionResponse = resource::remove_extension;
    get_resource(GetResourceRequest) -> GetResourceResponse = resource::get;
    update_resource(UpdateResourceRequest) -> UpdateResourceResponse = resource::update;
    list_resources(ListResourcesRequest) -> ListResourcesResponse = resource::list;
    create_resource(CreateResourceRequest) -> CreateResourceResponse = resource::create;
    remove_resource(RemoveResourceRequest) -> RemoveResourceResponse = resource::remove;
    create_volume(CreateVolumeRequest) -> CreateVolumeResponse = volume::create;
    get_volume(GetVolumeRequest) -> GetVolumeResponse = volume::get;
    update_volume(UpdateVolumeRequest) -> UpdateVolumeResponse = volume::update;
    list_volumes(ListVolumesRequest) -> ListVolumesResponse = volume::list;
    remove_volume(RemoveVolumeRequest) -> RemoveVolumeResponse = volume::remove;
}
