//! Control API calls on nodes (SwarmKit manager/controlapi/node.go): get and list with the manager
//! status filled from raft membership, spec updates with the demotion safety checks, and removal
//! (blacklisting the node's certificate and orphaning its tasks). Role reconciliation and the raft
//! membership change itself belong to the role manager, not here.

use api::{NodeRole, TaskState};
use store::By;
use tonic::Status;

use super::cluster::expire_blacklisted_certs;
use super::validate::invalid_argument;
use super::{
    ControlApi, any_of, filter_contains, filter_contains_prefix, filter_match_labels, labels_of,
    now, set_version,
};

/// The name of the cluster object (store.DefaultClusterName).
const DEFAULT_CLUSTER_NAME: &str = "default";

fn not_found(id: &str) -> Status {
    Status::not_found(format!("node {id} not found"))
}

fn desired_role(n: &api::Node) -> i32 {
    n.spec.as_ref().map_or(0, |s| s.desired_role)
}

fn hostname(n: &api::Node) -> Option<&str> {
    n.description.as_ref().map(|d| d.hostname.as_str())
}

impl ControlApi {
    /// Fills `manager_status` from raft membership, as SwarmKit does at read time: a node that
    /// is not a raft member (never was, or was removed) shows none, whatever its stored record
    /// (which keeps the raft ID the leader recorded at join) says.
    fn with_manager_status(&self, mut node: api::Node) -> api::Node {
        node.manager_status = self.members.manager_status(&node.id);
        node
    }
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetNodeRequest,
) -> Result<api::GetNodeResponse, Status> {
    if req.node_id.is_empty() {
        return Err(invalid_argument());
    }
    let node = ctl
        .store
        .view(|tx| tx.get_node(&req.node_id))
        .ok_or_else(|| not_found(&req.node_id))?;
    Ok(api::GetNodeResponse {
        node: Some(ctl.with_manager_status(node)),
    })
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListNodesRequest,
) -> Result<api::ListNodesResponse, Status> {
    let f = req.filters.unwrap_or_default();
    let roles: Vec<NodeRole> = f
        .roles
        .iter()
        .filter_map(|r| NodeRole::try_from(*r).ok())
        .collect();
    let memberships: Vec<api::node_spec::Membership> = f
        .memberships
        .iter()
        .filter_map(|m| api::node_spec::Membership::try_from(*m).ok())
        .collect();
    let nodes = ctl.store.view(|tx| {
        let by = if !f.names.is_empty() {
            any_of(&f.names, By::Name)
        } else if !f.name_prefixes.is_empty() {
            any_of(&f.name_prefixes, By::NamePrefix)
        } else if !f.id_prefixes.is_empty() {
            any_of(&f.id_prefixes, By::IdPrefix)
        } else if !f.roles.is_empty() {
            By::Or(roles.iter().map(|r| By::Role(*r)).collect())
        } else if !f.memberships.is_empty() {
            By::Or(memberships.iter().map(|m| By::Membership(*m)).collect())
        } else {
            By::All
        };
        tx.find_nodes(by)
    });
    let nodes = nodes
        .into_iter()
        .filter(|n| {
            (f.names.is_empty() || hostname(n).is_some_and(|h| filter_contains(h, &f.names)))
                && (f.name_prefixes.is_empty()
                    || hostname(n).is_some_and(|h| filter_contains_prefix(h, &f.name_prefixes)))
                && filter_contains_prefix(&n.id, &f.id_prefixes)
                && (f.labels.is_empty()
                    || n.description
                        .as_ref()
                        .and_then(|d| d.engine.as_ref())
                        .is_some_and(|e| filter_match_labels(&e.labels, &f.labels)))
                && (f.node_labels.is_empty()
                    || filter_match_labels(
                        &labels_of(&n.spec.as_ref().and_then(|s| s.annotations.clone())),
                        &f.node_labels,
                    ))
                && (f.roles.is_empty() || f.roles.contains(&n.role))
                && (f.memberships.is_empty()
                    || f.memberships
                        .contains(&n.spec.as_ref().map_or(0, |s| s.membership)))
        })
        .map(|n| ctl.with_manager_status(n))
        .collect();
    Ok(api::ListNodesResponse { nodes })
}

pub(super) async fn update(
    ctl: &ControlApi,
    req: api::UpdateNodeRequest,
) -> Result<api::UpdateNodeResponse, Status> {
    let (Some(version), false) = (req.node_version, req.node_id.is_empty()) else {
        return Err(invalid_argument());
    };
    let Some(spec) = req.spec else {
        return Err(invalid_argument());
    };
    let id = req.node_id;
    let members = &ctl.members;
    ctl.write(|tx| {
        let mut node = tx.get_node(&id).ok_or_else(|| not_found(&id))?;
        if desired_role(&node) == NodeRole::Manager as i32
            && spec.desired_role == NodeRole::Worker as i32
        {
            let managers = tx.find_nodes(By::Role(NodeRole::Manager));
            if managers.len() == 1 && managers[0].id == node.id {
                return Err(Status::failed_precondition(
                    "attempting to demote the last manager of the swarm",
                )
                .into());
            }
            if !members.is_member(&id) {
                return Err(Status::not_found("can't find manager in raft memberlist").into());
            }
            if !members.can_remove_member(&id) {
                return Err(Status::failed_precondition(
                    "can't remove member from the raft: this would result in a loss of quorum",
                )
                .into());
            }
        }
        set_version(&mut node.meta, version);
        node.spec = Some(spec);
        tx.update_node(node)?;
        Ok(())
    })
    .await?;
    let node = ctl.store.view(|tx| tx.get_node(&id));
    Ok(api::UpdateNodeResponse { node })
}

/// The NotAfter of a PEM certificate, if it parses.
fn certificate_expiry(pem: &[u8]) -> Option<prost_types::Timestamp> {
    let info = ca::CertInfo::parse(pem).ok()?;
    Some(prost_types::Timestamp::from(info.not_after))
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveNodeRequest,
) -> Result<api::RemoveNodeResponse, Status> {
    if req.node_id.is_empty() {
        return Err(invalid_argument());
    }
    let id = req.node_id;
    let members = &ctl.members;
    ctl.write(|tx| {
        let node = tx.get_node(&id).ok_or_else(|| not_found(&id))?;
        if desired_role(&node) == NodeRole::Manager as i32 && members.is_member(&id) {
            return Err(Status::failed_precondition(format!(
                "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
            ))
            .into());
        }
        let ready = node
            .status
            .as_ref()
            .is_some_and(|s| s.state == api::node_status::State::Ready as i32);
        if !req.force && ready {
            return Err(Status::failed_precondition(format!(
                "node {id} is not down and can't be removed"
            ))
            .into());
        }
        let mut clusters = tx.find_clusters(By::Name(DEFAULT_CLUSTER_NAME));
        if clusters.len() != 1 {
            return Err(Status::internal("could not fetch cluster object").into());
        }
        let mut cluster = clusters.remove(0);
        let expiry = node
            .certificate
            .as_ref()
            .filter(|c| !c.certificate.is_empty())
            .and_then(|c| certificate_expiry(&c.certificate));
        cluster
            .blacklisted_certificates
            .insert(node.id.clone(), api::BlacklistedCertificate { expiry });
        expire_blacklisted_certs(&mut cluster);
        tx.update_cluster(cluster)?;

        // The dispatcher can no longer report on these tasks: move the live ones to ORPHANED so
        // their resources get released (node.go orphanNodeTasks).
        for mut task in tx.find_tasks(By::NodeId(&id)) {
            let state = task.status.as_ref().map_or(0, |s| s.state);
            if state < TaskState::Complete as i32 {
                task.status = Some(api::TaskStatus {
                    timestamp: Some(now()),
                    state: TaskState::Orphaned as i32,
                    message: "Task belonged to a node that has been deleted".to_string(),
                    ..Default::default()
                });
                tx.update_task(task)?;
            }
        }
        tx.delete_node(&id)?;
        Ok(())
    })
    .await?;
    tracing::info!(node.id = %id, "node removed");
    Ok(api::RemoveNodeResponse {})
}
