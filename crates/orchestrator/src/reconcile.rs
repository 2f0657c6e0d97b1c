//! The event loop the replicated and global orchestrators share: a snapshot of the cluster,
//! services, tasks and nodes with a watch started at the same point, `init` on the snapshot, then
//! `handle` on every task, service and node change (cluster changes go to `set_cluster`) and
//! `tick` at every commit, so a batch of changes is acted on once, until shutdown. Both
//! supervisors' background work is cancelled when the loop ends. Task events the orchestrator
//! would ignore are dropped by the store as they are published (`Reconciler::wants`): while `tick`
//! writes thousands of tasks, the other subsystems move them on, and the queue otherwise kept every
//! version of every task until `tick` returned.

use std::future::Future;

use store::{By, Event, EventKind, MemoryStore, ReadTx, WatchFilter};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What an orchestrator plugs into [`run`].
pub(crate) trait Reconciler: Send + 'static {
    /// The store watched.
    fn store(&self) -> &MemoryStore;
    /// Whether [`Reconciler::handle`] may act on a task event; `tx` is the store as the event's raft
    /// entry left it. False only for events `handle` provably ignores, whatever happens later (run
    /// by the store as it publishes events: [`WatchFilter::select`]).
    fn wants(event: &Event, tx: &ReadTx<'_>) -> bool;
    /// Keeps the cluster object (task defaults), at start and whenever it changes.
    fn set_cluster(&mut self, cluster: Option<api::Cluster>);
    /// Start-up work on the snapshot.
    fn init(
        &mut self,
        services: Vec<api::Service>,
        tasks: Vec<api::Task>,
        nodes: Vec<api::Node>,
    ) -> impl Future<Output = ()> + Send;
    /// Records what one change of a task, service or node asks for.
    fn handle(&mut self, event: &Event);
    /// Does the recorded work; called at each commit.
    fn tick(&mut self) -> impl Future<Output = ()> + Send;
    /// Cancels running updates and delayed starts.
    fn stop(&mut self);
}

/// Runs `r` until `shutdown` fires (Ok) or the watch ends (`Error::WatchClosed`).
pub(crate) async fn run<R: Reconciler>(
    r: &mut R,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let result = run_loop(r, shutdown).await;
    r.stop();
    result
}

async fn run_loop<R: Reconciler>(r: &mut R, shutdown: &CancellationToken) -> Result<(), Error> {
    let ((cluster, services, tasks, nodes), mut events) = r.store().view_and_watch(
        WatchFilter::none()
            .tasks()
            .services()
            .nodes()
            .clusters()
            .select(|event, tx| event.object_as::<api::Task>().is_none() || R::wants(event, tx)),
        |tx| {
            (
                tx.find_clusters(By::All).into_iter().next(),
                tx.find_services(By::All),
                tx.find_tasks(By::All),
                tx.find_nodes(By::All),
            )
        },
    );
    r.set_cluster(cluster);
    tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(()),
        () = r.init(services, tasks, nodes) => {}
    }
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            event = events.recv() => event.ok_or(Error::WatchClosed)?,
        };
        if let Event::Commit { .. } = event {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = r.tick() => {}
            }
        } else if let Some(cluster) = event.object_as::<api::Cluster>() {
            if !matches!(
                event,
                Event::Object {
                    kind: EventKind::Remove,
                    ..
                }
            ) {
                r.set_cluster(Some(cluster.clone()));
            }
        } else {
            r.handle(&event);
        }
    }
}
