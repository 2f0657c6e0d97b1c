//! Control API calls on tasks (SwarmKit manager/controlapi/task.go): get, list with filters, and
//! remove (the orchestrator recreates the slot). Also the runtime name that list filters use (the
//! `up_to_date` filter asks the orchestrator's "task is dirty" rule). Tasks are created and updated
//! by the orchestrators only.

use store::{By, Shared};
use tonic::Status;

use super::validate::invalid_argument;
use super::{
    ControlApi, any_of, filter_contains, filter_contains_prefix, filter_match_labels, labels_of,
    name_of,
};

/// The runtime name of a task spec, as SwarmKit's naming.Runtime (None = no runtime).
pub(super) fn runtime_name(spec: Option<&api::TaskSpec>) -> Option<String> {
    match spec?.runtime.as_ref()? {
        api::task_spec::Runtime::Attachment(_) => Some("attachment".to_string()),
        api::task_spec::Runtime::Container(_) => Some("container".to_string()),
        api::task_spec::Runtime::Generic(g) => Some(g.kind.to_lowercase()),
    }
}

/// The name users see for a task (naming.Task): its own name, else `service.slot.id`.
fn task_name(t: &api::Task) -> String {
    let own = name_of(&t.annotations);
    if !own.is_empty() {
        return own.to_string();
    }
    api::naming::task_name(name_of(&t.service_annotations), t.slot, &t.node_id, &t.id)
}

pub(super) async fn get(
    ctl: &ControlApi,
    req: api::GetTaskRequest,
) -> Result<api::GetTaskResponse, Status> {
    if req.task_id.is_empty() {
        return Err(invalid_argument());
    }
    let task = ctl
        .store
        .view(|tx| tx.get_task(&req.task_id))
        .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))?;
    Ok(api::GetTaskResponse { task: Some(task) })
}

pub(super) async fn remove(
    ctl: &ControlApi,
    req: api::RemoveTaskRequest,
) -> Result<api::RemoveTaskResponse, Status> {
    if req.task_id.is_empty() {
        return Err(invalid_argument());
    }
    let id = req.task_id;
    ctl.write(|tx| {
        if tx.get_task(&id).is_none() {
            return Err(Status::not_found(format!("task {id} not found")).into());
        }
        tx.delete_task(&id)?;
        Ok(())
    })
    .await?;
    Ok(api::RemoveTaskResponse {})
}

pub(super) async fn list(
    ctl: &ControlApi,
    req: api::ListTasksRequest,
) -> Result<api::ListTasksResponse, Status> {
    let tasks = list_shared(ctl, req)?;
    Ok(api::ListTasksResponse {
        tasks: tasks.iter().map(|t| api::Task::clone(t)).collect(),
    })
}

/// The tasks [`list`] answers with, as the store holds them (no copy: the control server encodes
/// them straight from there, `super::shared`).
pub(super) fn list_shared(
    ctl: &ControlApi,
    req: api::ListTasksRequest,
) -> Result<Vec<Shared<api::Task>>, Status> {
    let f = req.filters.unwrap_or_default();
    let desired: Vec<api::TaskState> = f
        .desired_states
        .iter()
        .filter_map(|s| api::TaskState::try_from(*s).ok())
        .collect();
    let tasks = ctl.store.view(|tx| {
        let by = if !f.names.is_empty() {
            any_of(&f.names, By::Name)
        } else if !f.name_prefixes.is_empty() {
            any_of(&f.name_prefixes, By::NamePrefix)
        } else if !f.id_prefixes.is_empty() {
            any_of(&f.id_prefixes, By::IdPrefix)
        } else if !f.service_ids.is_empty() {
            any_of(&f.service_ids, By::ServiceId)
        } else if !f.runtimes.is_empty() {
            // The store has no runtime index; the filter below does the selection.
            By::All
        } else if !f.node_ids.is_empty() {
            any_of(&f.node_ids, By::NodeId)
        } else if !f.desired_states.is_empty() {
            By::Or(desired.iter().map(|s| By::DesiredState(*s)).collect())
        } else {
            By::All
        };
        tx.find_shared::<api::Task>(by)
            .into_iter()
            .filter(|t| {
                let name = task_name(t);
                filter_contains(&name, &f.names)
                    && filter_contains_prefix(&name, &f.name_prefixes)
                    && filter_contains_prefix(&t.id, &f.id_prefixes)
                    && filter_match_labels(&labels_of(&t.service_annotations), &f.labels)
                    && filter_contains(&t.service_id, &f.service_ids)
                    && filter_contains(&t.node_id, &f.node_ids)
                    && (f.runtimes.is_empty()
                        || runtime_name(t.spec.as_ref())
                            .is_some_and(|r| filter_contains(&r, &f.runtimes)))
                    && (f.desired_states.is_empty() || f.desired_states.contains(&t.desired_state))
                    && (!f.up_to_date
                        || tx
                            .get_shared::<api::Service>(&t.service_id)
                            .is_some_and(|s| {
                                let node = tx.get_shared::<api::Node>(&t.node_id);
                                !orchestrator::task::is_task_dirty(&s, t, node.as_deref())
                            }))
            })
            .collect()
    });
    Ok(tasks)
}
