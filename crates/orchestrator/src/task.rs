//! Task helpers shared by every orchestrator, the restart supervisor, the updater and the task reaper
//! (after SwarmKit's `manager/orchestrator/{task.go,service.go,slot.go}`): creating a task from a
//! service (spec 5.3 "Task creation"), deciding whether a task is out of date (spec 5.4), the service
//! mode predicates, node validity, the restart policy defaults and the task history limit. Nothing
//! here touches the store except [`set_desired`], which works inside a caller's transaction.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use api::restart_policy::RestartCondition;
use store::{MemoryStore, StoreError};
use tracing::error;

/// Restart delay when the service's restart policy sets none (spec 7).
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Restart condition when the service has no restart policy (spec 7).
pub const DEFAULT_RESTART_CONDITION: RestartCondition = RestartCondition::Any;

/// Tasks kept per slot (replicated) or node (global) when the cluster does not say (spec 7).
pub const DEFAULT_TASK_HISTORY_RETENTION_LIMIT: i64 = 5;

/// Identifies one slot in the broad sense: a slot number of a replicated service, or a node of a
/// global service (SwarmKit's `SlotTuple`). The unused member is left at its default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SlotTuple {
    /// The service.
    pub service_id: String,
    /// The slot number; 0 for global services.
    pub slot: u64,
    /// The node; empty for replicated services.
    pub node_id: String,
}

/// A new task for `slot` of `service` (replicated: `node_id` empty; global: slot 0 and `node_id`
/// preset): a fresh ID, a copy of the service's task spec, spec version, annotations and endpoint
/// spec, status NEW `created`, desired RUNNING, and the service's log driver or else the cluster's
/// default one. Callers holding a task back (restarts, stop-first updates) lower the desired state
/// to READY themselves; job orchestrators set `job_iteration` and desired COMPLETE.
pub fn new_task(
    cluster: Option<&api::Cluster>,
    service: &api::Service,
    slot: u64,
    node_id: &str,
) -> api::Task {
    let spec = service.spec.clone().unwrap_or_default();
    let task_spec = spec.task.clone().unwrap_or_default();
    let log_driver = task_spec.log_driver.clone().or_else(|| {
        cluster
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.task_defaults.as_ref())
            .and_then(|d| d.log_driver.clone())
            .map(Box::new)
    });
    api::Task {
        id: api::naming::new_id(),
        service_annotations: spec.annotations.clone(),
        spec: Some(task_spec),
        spec_version: service.spec_version,
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        status: Some(api::TaskStatus {
            timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
            state: api::TaskState::New as i32,
            message: "created".into(),
            ..Default::default()
        }),
        endpoint: Some(Box::new(api::Endpoint {
            spec: spec.endpoint.clone(),
            ..Default::default()
        })),
        desired_state: api::TaskState::Running as i32,
        log_driver,
        ..Default::default()
    }
}

/// The observed state (`status.state`) of a task as its enum number; NEW when it has no status.
pub fn observed(task: &api::Task) -> i32 {
    task.status.as_ref().map_or(0, |s| s.state)
}

/// `TaskState` as the number stored in tasks, for comparisons with `desired_state` and [`observed`].
pub const fn state(s: api::TaskState) -> i32 {
    s as i32
}

fn mode(service: &api::Service) -> Option<&api::service_spec::Mode> {
    service.spec.as_ref().and_then(|s| s.mode.as_ref())
}

/// Whether `service` is a replicated service (not a replicated job).
pub fn is_replicated(service: &api::Service) -> bool {
    matches!(mode(service), Some(api::service_spec::Mode::Replicated(_)))
}

/// Whether `service` is a global service (not a global job).
pub fn is_global(service: &api::Service) -> bool {
    matches!(mode(service), Some(api::service_spec::Mode::Global(_)))
}

/// Whether `service` is a replicated job.
pub fn is_replicated_job(service: &api::Service) -> bool {
    matches!(
        mode(service),
        Some(api::service_spec::Mode::ReplicatedJob(_))
    )
}

/// Whether `service` is a global job.
pub fn is_global_job(service: &api::Service) -> bool {
    matches!(mode(service), Some(api::service_spec::Mode::GlobalJob(_)))
}

/// Whether `service` is a job of either kind.
pub fn is_job(service: &api::Service) -> bool {
    is_replicated_job(service) || is_global_job(service)
}

/// Whether tasks on `node` must be moved away: the node is missing, DOWN, or DRAIN-ed. A PAUSE-d
/// node is valid (it keeps its tasks, it only gets no new ones).
pub fn invalid_node(node: Option<&api::Node>) -> bool {
    let Some(node) = node else {
        return true;
    };
    node.status.as_ref().map(|s| s.state) == Some(api::node_status::State::Down as i32)
        || node.spec.as_ref().map(|s| s.availability)
            == Some(api::node_spec::Availability::Drain as i32)
}

/// Whether `node` is known and DOWN.
pub fn node_is_down(node: Option<&api::Node>) -> bool {
    node.and_then(|n| n.status.as_ref()).map(|s| s.state)
        == Some(api::node_status::State::Down as i32)
}

/// Whether `node` is known and DRAIN-ed.
pub fn node_is_drained(node: Option<&api::Node>) -> bool {
    node.and_then(|n| n.spec.as_ref()).map(|s| s.availability)
        == Some(api::node_spec::Availability::Drain as i32)
}

/// Whether `node` is ACTIVE (not PAUSE-d or DRAIN-ed) and READY: it may get new tasks.
pub fn node_accepts_tasks(node: &api::Node) -> bool {
    node.spec
        .as_ref()
        .is_none_or(|s| s.availability == api::node_spec::Availability::Active as i32)
        && node.status.as_ref().map(|s| s.state) == Some(api::node_status::State::Ready as i32)
}

/// The placement constraints of `service`, parsed; unparsable constraints (the control API rejects
/// them, so only hand-made stores have them) count as none, as in SwarmKit.
pub fn service_constraints(service: &api::Service) -> Vec<api::constraint::Constraint> {
    let exprs = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map(|p| p.constraints.as_slice())
        .unwrap_or_default();
    api::constraint::parse(exprs).unwrap_or_default()
}

/// Whether `node` exists and satisfies the placement constraints of `service`.
pub fn node_matches_service(service: &api::Service, node: Option<&api::Node>) -> bool {
    node.is_some_and(|n| api::constraint::node_matches(&service_constraints(service), n))
}

/// Whether `task` is out of date for `service` (spec 5.4). Tasks of the service's current spec
/// version are clean. Otherwise the task is dirty when its spec or endpoint spec differs from the
/// service's, except that pull options are ignored for tasks that got past pulling (desired <=
/// RUNNING, observed READY..RUNNING), and a change of the placement alone keeps the task clean as
/// long as its node (`node`, the task's node) still satisfies the new constraints.
pub fn is_task_dirty(service: &api::Service, task: &api::Task, node: Option<&api::Node>) -> bool {
    if let (Some(have), Some(want)) = (&task.spec_version, &service.spec_version)
        && have == want
    {
        return false;
    }
    let spec = service.spec.clone().unwrap_or_default();
    let mut want = spec.task.clone().unwrap_or_default();
    let have = task.spec.clone().unwrap_or_default();

    if is_task_dirty_placement_constraints_only(&want, &have) && node_matches_service(service, node)
    {
        return false;
    }

    let current = observed(task);
    let ignore_pull = task.desired_state <= state(api::TaskState::Running)
        && current >= state(api::TaskState::Ready)
        && current <= state(api::TaskState::Running);
    if ignore_pull
        && let (
            Some(api::task_spec::Runtime::Container(w)),
            Some(api::task_spec::Runtime::Container(h)),
        ) = (want.runtime.as_mut(), have.runtime.as_ref())
    {
        w.pull_options = h.pull_options.clone();
    }
    want != have
        || task
            .endpoint
            .as_ref()
            .is_some_and(|e| e.spec != spec.endpoint)
}

/// Whether the service task spec `want` differs from the task's spec `have` in its placement only.
pub fn is_task_dirty_placement_constraints_only(
    want: &api::TaskSpec,
    have: &api::TaskSpec,
) -> bool {
    if want.placement == have.placement {
        return false;
    }
    let mut want = want.clone();
    want.placement = have.placement.clone();
    want == *have
}

/// The restart condition of `task`'s spec; ANY when it has no restart policy.
pub fn restart_condition(task: &api::Task) -> RestartCondition {
    match task.spec.as_ref().and_then(|s| s.restart.as_ref()) {
        Some(policy) => {
            RestartCondition::try_from(policy.condition).unwrap_or(RestartCondition::Any)
        }
        None => DEFAULT_RESTART_CONDITION,
    }
}

/// The restart delay of `task`'s spec; 5 s when unset (a negative duration counts as zero).
pub fn restart_delay(task: &api::Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.restart.as_ref())
        .and_then(|p| p.delay)
        .map_or(DEFAULT_RESTART_DELAY, duration)
}

/// The restart policy's `max_attempts` of `task` (0 = unlimited).
pub fn restart_max_attempts(task: &api::Task) -> u64 {
    task.spec
        .as_ref()
        .and_then(|s| s.restart.as_ref())
        .map_or(0, |p| p.max_attempts)
}

/// The restart policy's lookback `window` of `task`; zero = every restart counts.
pub fn restart_window(task: &api::Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.restart.as_ref())
        .and_then(|p| p.window)
        .map_or(Duration::ZERO, duration)
}

/// A protobuf duration as a std one; negative or invalid ones are zero.
pub fn duration(d: prost_types::Duration) -> Duration {
    Duration::try_from(d).unwrap_or_default()
}

/// How many tasks the cluster keeps per slot or node (`orchestration.task_history_retention_limit`;
/// 5 without a cluster or orchestration config; negative = keep all).
pub fn task_history_retention_limit(cluster: Option<&api::Cluster>) -> i64 {
    cluster
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.orchestration.as_ref())
        .map_or(DEFAULT_TASK_HISTORY_RETENTION_LIMIT, |o| {
            o.task_history_retention_limit
        })
}

/// The time a task's state was last decided: the manager's `applied_at` when set, else the agent's
/// status timestamp.
pub fn task_timestamp(task: &api::Task) -> Option<prost_types::Timestamp> {
    let status = task.status.as_ref()?;
    status.applied_at.or(status.timestamp)
}

/// Orders tasks oldest first by [`task_timestamp`]; tasks without a timestamp come first.
pub fn cmp_by_timestamp(a: &api::Task, b: &api::Task) -> Ordering {
    match (task_timestamp(a), task_timestamp(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => (x.seconds, x.nanos).cmp(&(y.seconds, y.nanos)),
    }
}

/// A protobuf timestamp as a `SystemTime` (before the epoch and invalid ones = the epoch).
pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*ts).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Sets the desired state of task `task_id` to `desired` inside `tx`, never lowering it (desired
/// states only move forward). Returns whether the task was changed; a missing task is no error.
pub fn set_desired(
    tx: &mut store::Tx<'_>,
    task_id: &str,
    desired: api::TaskState,
) -> Result<bool, StoreError> {
    let Some(mut task) = tx.get_task(task_id) else {
        return Ok(false);
    };
    if task.desired_state >= state(desired) {
        return Ok(false);
    }
    task.desired_state = state(desired);
    tx.update_task(task)?;
    Ok(true)
}

/// Deletes a task unless it is already gone (someone else deleted it since it was read).
pub fn delete_task_if_present(tx: &mut store::Tx<'_>, task_id: &str) -> Result<(), StoreError> {
    if tx.get_task(task_id).is_some() {
        tx.delete_task(task_id)?;
    }
    Ok(())
}

/// Applies `write` to every item in as few transactions as the store's batch limits allow
/// ([`MemoryStore::batch`]: 200 writes or 3/4 of SwarmKit's transaction size). An item whose write
/// fails is logged with `what` and skipped; the others are written.
pub(crate) async fn in_batches<T: Sync>(
    store: &MemoryStore,
    items: Vec<T>,
    what: &str,
    write: impl Fn(&mut store::Tx<'_>, &T) -> Result<(), StoreError> + Send + Sync,
) {
    for e in store.batch(&items, write).await {
        error!(error = %e, "failed to {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(image: &str, constraints: &[&str]) -> api::Service {
        let mut spec = testkit::fixtures::service_spec("web", 1, image);
        spec.task.as_mut().expect("task").placement = Some(Box::new(api::Placement {
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }));
        api::Service {
            id: "svc".into(),
            spec: Some(spec),
            spec_version: Some(api::Version { index: 1 }),
            ..Default::default()
        }
    }

    fn node(id: &str, hostname: &str) -> api::Node {
        api::Node {
            id: id.into(),
            description: Some(api::NodeDescription {
                hostname: hostname.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_version(mut s: api::Service, index: u64) -> api::Service {
        s.spec_version = Some(api::Version { index });
        s
    }

    #[test]
    fn new_task_copies_the_service_and_uses_cluster_log_driver() {
        let s = service("nginx", &[]);
        let cluster = api::Cluster {
            spec: Some(api::ClusterSpec {
                task_defaults: Some(api::TaskDefaults {
                    log_driver: Some(api::Driver {
                        name: "syslog".into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = new_task(Some(&cluster), &s, 3, "");
        assert_eq!(t.id.len(), 25);
        assert_eq!(t.slot, 3);
        assert_eq!(t.service_id, "svc");
        assert_eq!(t.node_id, "");
        assert_eq!(t.spec, s.spec.as_ref().and_then(|s| s.task.clone()));
        assert_eq!(t.spec_version, Some(api::Version { index: 1 }));
        assert_eq!(
            t.service_annotations.as_ref().map(|a| a.name.as_str()),
            Some("web")
        );
        assert_eq!(t.desired_state, state(api::TaskState::Running));
        let status = t.status.expect("status");
        assert_eq!(status.state, state(api::TaskState::New));
        assert_eq!(status.message, "created");
        assert_eq!(t.log_driver.map(|d| d.name).as_deref(), Some("syslog"));
        assert_eq!(
            api::naming::task_name("web", t.slot, &t.node_id, &t.id),
            format!("web.3.{}", t.id)
        );

        let g = new_task(None, &s, 0, "node1");
        assert_eq!(g.node_id, "node1");
        assert!(g.log_driver.is_none());
    }

    #[test]
    fn same_spec_version_is_clean_and_spec_change_is_dirty() {
        let old = service("v1", &[]);
        let t = new_task(None, &old, 1, "");
        assert!(!is_task_dirty(&old, &t, None));
        // A new version with an identical spec is still clean.
        assert!(!is_task_dirty(&with_version(old.clone(), 2), &t, None));
        let new = with_version(service("v2", &[]), 2);
        assert!(is_task_dirty(&new, &t, None));
    }

    #[test]
    fn placement_only_change_is_clean_while_the_node_matches() {
        let old = service("v1", &[]);
        let t = new_task(None, &old, 1, "");
        let new = with_version(service("v1", &["node.hostname==a"]), 2);
        assert!(!is_task_dirty(&new, &t, Some(&node("n1", "a"))));
        assert!(is_task_dirty(&new, &t, Some(&node("n2", "b"))));
        assert!(is_task_dirty(&new, &t, None));
        // Placement plus image: dirty even on a matching node.
        let both = with_version(service("v2", &["node.hostname==a"]), 2);
        assert!(is_task_dirty(&both, &t, Some(&node("n1", "a"))));
    }

    #[test]
    fn pull_options_are_ignored_once_the_task_is_ready() {
        let old = service("v1", &[]);
        let mut t = new_task(None, &old, 1, "");
        let mut new = with_version(old.clone(), 2);
        if let Some(api::task_spec::Runtime::Container(c)) = new
            .spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .and_then(|t| t.runtime.as_mut())
        {
            c.pull_options = Some(api::container_spec::PullOptions {
                registry_auth: "x".into(),
            });
        }
        assert!(is_task_dirty(&new, &t, None), "NEW task has not pulled yet");
        t.status.as_mut().expect("status").state = state(api::TaskState::Running);
        assert!(!is_task_dirty(&new, &t, None));
    }

    #[test]
    fn endpoint_change_is_dirty() {
        let old = service("v1", &[]);
        let t = new_task(None, &old, 1, "");
        let mut new = with_version(old, 2);
        new.spec.as_mut().expect("spec").endpoint = Some(api::EndpointSpec {
            mode: 1,
            ..Default::default()
        });
        assert!(is_task_dirty(&new, &t, None));
    }

    #[test]
    fn invalid_node_is_missing_down_or_drained() {
        assert!(invalid_node(None));
        let mut n = node("n1", "a");
        assert!(!invalid_node(Some(&n)));
        n.spec = Some(api::NodeSpec {
            availability: api::node_spec::Availability::Pause as i32,
            ..Default::default()
        });
        assert!(!invalid_node(Some(&n)), "PAUSE keeps tasks");
        n.spec.as_mut().expect("spec").availability = api::node_spec::Availability::Drain as i32;
        assert!(invalid_node(Some(&n)));
        n.spec = None;
        n.status = Some(api::NodeStatus {
            state: api::node_status::State::Down as i32,
            ..Default::default()
        });
        assert!(invalid_node(Some(&n)));
    }

    #[test]
    fn restart_policy_defaults() {
        let s = service("v1", &[]);
        let mut t = new_task(None, &s, 1, "");
        assert_eq!(restart_condition(&t), RestartCondition::Any);
        assert_eq!(restart_delay(&t), Duration::from_secs(5));
        assert_eq!(restart_max_attempts(&t), 0);
        assert_eq!(restart_window(&t), Duration::ZERO);
        t.spec.as_mut().expect("spec").restart = Some(Box::new(api::RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            delay: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            max_attempts: 3,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        }));
        assert_eq!(restart_condition(&t), RestartCondition::OnFailure);
        assert_eq!(restart_delay(&t), Duration::ZERO);
        assert_eq!(restart_max_attempts(&t), 3);
        assert_eq!(restart_window(&t), Duration::from_secs(60));
    }

    #[test]
    fn history_limit_comes_from_the_cluster() {
        assert_eq!(task_history_retention_limit(None), 5);
        let mut c = api::Cluster::default();
        assert_eq!(task_history_retention_limit(Some(&c)), 5);
        c.spec = Some(api::ClusterSpec {
            orchestration: Some(api::OrchestrationConfig {
                task_history_retention_limit: -1,
            }),
            ..Default::default()
        });
        assert_eq!(task_history_retention_limit(Some(&c)), -1);
    }

    #[test]
    fn mode_predicates() {
        let mut s = service("v1", &[]);
        assert!(is_replicated(&s) && !is_global(&s) && !is_job(&s));
        s.spec.as_mut().expect("spec").mode =
            Some(api::service_spec::Mode::Global(Default::default()));
        assert!(is_global(&s) && !is_replicated(&s));
        s.spec.as_mut().expect("spec").mode =
            Some(api::service_spec::Mode::GlobalJob(Default::default()));
        assert!(is_global_job(&s) && is_job(&s) && !is_global(&s));
    }
}
