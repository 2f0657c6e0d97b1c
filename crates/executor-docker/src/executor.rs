//! [`DockerExecutor`]: describes the node from the engine's `info` and plugin list, and makes a
//! [`DockerController`] per task (SwarmKit's swarmd/dockerexec/executor.go).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agent::{Checkpoint, Controller, DependencyGetter, Executor, ExecutorError, TaskFiles};
use bollard::models::Plugin;

use crate::config::ContainerConfig;
use crate::controller::DockerController;
use crate::engine::Engine;
use crate::error::classify;
use crate::network::{LocalNetworks, SWEEP_MIN_AGE};

/// Runs tasks as containers of one Docker Engine.
pub struct DockerExecutor {
    engine: Engine,
    /// Where tasks' secret and config files go, to be bind-mounted.
    files: Arc<TaskFiles>,
    hostname_override: Option<String>,
    /// The node's local networks, one per swarm network its tasks use.
    networks: LocalNetworks,
    /// The generic resources the node advertises (`--generic-node-resources`).
    generic: Vec<api::GenericResource>,
    /// The node's data plane, whose bridges the local networks of swarm networks are made on;
    /// `None`: they are the engine's own bridges and reach this node only.
    plane: Option<Arc<netplane::Dataplane>>,
}

impl DockerExecutor {
    /// An executor for the engine at `engine_addr` (`unix:///var/run/docker.sock`,
    /// `tcp://127.0.0.1:2375`), which must run on this host: tasks' secret and config files are
    /// written in `files` and bind-mounted from there. `hostname_override` replaces the
    /// engine's name in the node description (swarmd's `--hostname`; empty means none). Only
    /// the address is checked: a missing unix socket is [`ExecutorError::Temporary`], an
    /// address bollard cannot dial is [`ExecutorError::Fatal`].
    pub fn connect(
        engine_addr: &str,
        files: Arc<TaskFiles>,
        hostname_override: Option<String>,
    ) -> Result<Self, ExecutorError> {
        let engine = Engine::new(engine_addr)?;
        Ok(Self {
            networks: LocalNetworks::new(engine.clone()),
            engine,
            files,
            // swarmd's `--hostname` defaults to empty, which means "the engine's name".
            hostname_override: hostname_override.filter(|h| !h.is_empty()),
            generic: Vec::new(),
            plane: None,
        })
    }

    /// The same executor putting containers on swarm networks on `plane`'s bridges: they reach
    /// tasks on other nodes over its VXLAN devices, their service names resolve to virtual IPs
    /// through its resolver, and those are balanced in their namespaces.
    pub fn with_data_plane(mut self, plane: Arc<netplane::Dataplane>) -> Self {
        self.plane = Some(plane);
        self
    }

    /// The same executor advertising `generic` in its node description.
    pub fn with_generic_resources(mut self, generic: Vec<api::GenericResource>) -> Self {
        self.generic = generic;
        self
    }

    /// Removes every local network of swarmd's making created more than [`SWEEP_MIN_AGE`] ago
    /// that no container refers to; what [`Executor::remove_orphans`] starts in the background.
    /// It may take another node's networks on a shared engine, but none in use and none just
    /// made (see the `network` module). Only failing to list the networks is an error.
    pub async fn sweep_networks(&self) -> Result<(), ExecutorError> {
        self.networks.sweep(SWEEP_MIN_AGE, None).await
    }

    /// [`Self::sweep_networks`] with another minimum age, for networks that also carry the
    /// label `label` (`key=value`), when given.
    pub async fn sweep_networks_where(
        &self,
        min_age: Duration,
        label: Option<&str>,
    ) -> Result<(), ExecutorError> {
        self.networks.sweep(min_age, label).await
    }

    /// The engine address this executor was made for.
    pub fn engine_addr(&self) -> &str {
        self.engine.addr()
    }
}

#[tonic::async_trait]
impl Executor for DockerExecutor {
    async fn describe(&self) -> Result<api::NodeDescription, ExecutorError> {
        let docker = self.engine.client().await?;
        let info = docker.info().await.map_err(|e| classify("info", e))?;
        // Managed (v2) plugins are a bonus: SwarmKit only logs a failure to list them.
        let managed = match docker.list_plugins(None).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing engine plugins failed");
                Vec::new()
            }
        };
        let builtin = info.plugins.unwrap_or_default();
        let plugins = plugin_list(
            builtin.volume.unwrap_or_default(),
            builtin.network.unwrap_or_default(),
            builtin.authorization.unwrap_or_default(),
            &managed,
        );
        Ok(api::NodeDescription {
            hostname: self
                .hostname_override
                .clone()
                .unwrap_or_else(|| info.name.unwrap_or_default()),
            platform: Some(api::Platform {
                architecture: info.architecture.unwrap_or_default(),
                os: info.os_type.unwrap_or_default(),
            }),
            resources: Some(api::Resources {
                nano_cpus: info.ncpu.unwrap_or_default() * 1_000_000_000,
                memory_bytes: info.mem_total.unwrap_or_default(),
                generic: self.generic.clone(),
            }),
            engine: Some(api::EngineDescription {
                engine_version: info.server_version.unwrap_or_default(),
                labels: engine_labels(info.labels.unwrap_or_default()),
                plugins,
            }),
            ..Default::default()
        })
    }

    fn controller(
        &self,
        task: &api::Task,
        _checkpoint: Option<Checkpoint>,
        dependencies: DependencyGetter,
    ) -> Result<Box<dyn Controller>, ExecutorError> {
        // No checkpoint is needed: the container name identifies the task's container, so a
        // controller made after a restart finds (adopts) the container by name.
        let mut config = ContainerConfig::new(task)?;
        if self.plane.is_some() {
            config = config.on_data_plane();
        }
        let files = self
            .files
            .for_task(task, dependencies)
            .map_err(|e| ExecutorError::Fatal(format!("dockerexec: {e}")))?;
        Ok(Box::new(
            DockerController::new(self.engine.clone(), config, files, self.networks.clone())
                .with_data_plane(self.plane.clone()),
        ))
    }

    fn network_plane_request(&self) -> Option<api::netplane::WatchRequest> {
        self.plane.as_ref().map(|p| p.watch_request())
    }

    fn set_network_view(&self, view: api::netplane::NodeView) {
        if let Some(plane) = &self.plane {
            plane.set_view(view);
        }
    }

    fn remove_orphans(&self, known: &HashSet<String>) {
        self.files.remove_orphans(known);
        // Local networks left by tasks removed while swarmd was down: removed in the background
        // (the engine may be slow or away), under the lock that keeps new tasks' networks safe;
        // only those old enough that no other swarmd on the engine can be making a task on them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let networks = self.networks.clone();
            runtime.spawn(async move {
                if let Err(e) = networks.sweep(SWEEP_MIN_AGE, None).await {
                    tracing::warn!(error = %e, "sweeping unused local networks failed");
                }
            });
        }
    }
}

/// Engine labels (`key=value`) as a map; entries without `=` are dropped and a repeated key keeps
/// its last value, as SwarmKit does.
pub(crate) fn engine_labels(labels: Vec<String>) -> BTreeMap<String, String> {
    labels
        .into_iter()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The plugins a node offers, deduplicated and sorted by type then name: the engine's built-in
/// Volume, Network (always with `overlay`, the built-in multi-host driver) and Authorization
/// plugins, and its enabled managed plugins with a `docker.*` interface (volumedriver becomes
/// Volume, networkdriver Network, any other capability keeps its name).
pub(crate) fn plugin_list(
    volume: Vec<String>,
    network: Vec<String>,
    authorization: Vec<String>,
    managed: &[Plugin],
) -> Vec<api::PluginDescription> {
    let mut set = BTreeSet::new();
    set.extend(volume.into_iter().map(|n| ("Volume".to_string(), n)));
    set.insert(("Network".to_string(), "overlay".to_string()));
    set.extend(network.into_iter().map(|n| ("Network".to_string(), n)));
    set.extend(
        authorization
            .into_iter()
            .map(|n| ("Authorization".to_string(), n)),
    );
    for p in managed.iter().filter(|p| p.enabled) {
        for t in &p.config.interface.types {
            // "docker.volumedriver/1.0": prefix, capability, version.
            let t = t.split_once('/').map_or(t.as_str(), |(t, _)| t);
            let Some(("docker", capability)) = t.split_once('.') else {
                continue;
            };
            let typ = match capability {
                "volumedriver" => "Volume",
                "networkdriver" => "Network",
                other => other,
            };
            set.insert((typ.to_string(), p.name.clone()));
        }
    }
    set.into_iter()
        .map(|(r#type, name)| api::PluginDescription { r#type, name })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Task files under `dir`, on disk (these tests write none).
    fn files(dir: &std::path::Path) -> Arc<TaskFiles> {
        let none = std::path::Path::new("/nonexistent");
        Arc::new(TaskFiles::open_with(dir, none, none).expect("task files"))
    }

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        let labels = engine_labels(vec![
            "zone=a".into(),
            "novalue".into(),
            "expr=x=y".into(),
            "zone=b".into(),
        ]);
        assert_eq!(
            labels,
            BTreeMap::from([
                ("expr".to_string(), "x=y".to_string()),
                ("zone".to_string(), "b".to_string())
            ])
        );
    }

    #[test]
    fn plugins_are_sorted_with_overlay_always_present() {
        let mut managed = Plugin {
            name: "vieux/sshfs:latest".into(),
            enabled: true,
            ..Default::default()
        };
        managed.config.interface.types = vec!["docker.volumedriver/1.0".into()];
        let mut disabled = managed.clone();
        disabled.name = "off:latest".into();
        disabled.enabled = false;
        let got: Vec<(String, String)> = plugin_list(
            vec!["local".into()],
            vec!["bridge".into(), "overlay".into(), "host".into()],
            vec!["authz".into()],
            &[managed, disabled],
        )
        .into_iter()
        .map(|p| (p.r#type, p.name))
        .collect();
        let want = [
            ("Authorization", "authz"),
            ("Network", "bridge"),
            ("Network", "host"),
            ("Network", "overlay"),
            ("Volume", "local"),
            ("Volume", "vieux/sshfs:latest"),
        ];
        assert_eq!(
            got,
            want.map(|(t, n)| (t.to_string(), n.to_string())).to_vec()
        );
    }

    #[test]
    fn a_missing_socket_is_temporary_and_a_bad_scheme_fatal() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            DockerExecutor::connect("unix:///nonexistent/docker.sock", files(dir.path()), None),
            Err(ExecutorError::Temporary(_))
        ));
        assert!(matches!(
            DockerExecutor::connect("gopher://engine", files(dir.path()), None),
            Err(ExecutorError::Fatal(_))
        ));
    }

    /// An executor for an engine whose socket file nobody listens on any more: connecting is
    /// refused. Task files go under `dir`.
    fn refusing_engine(dir: &std::path::Path) -> DockerExecutor {
        let path = dir.join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        DockerExecutor::connect(&format!("unix://{}", path.display()), files(dir), None)
            .expect("the socket file exists")
    }

    /// A task `t1` running the test image.
    fn task() -> api::Task {
        api::Task {
            id: "t1".into(),
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(
                    api::ContainerSpec {
                        image: "swarmkit-test/busybox:latest".into(),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_engine_that_refuses_connections_is_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ex = refusing_engine(dir.path());
        let err = ex.describe().await.expect_err("nothing answers");
        assert!(matches!(err, ExecutorError::Temporary(_)), "{err:?}");
        let c = ex
            .controller(&task(), None, DependencyGetter::none())
            .expect("controller");
        assert!(matches!(
            c.prepare().await,
            Err(ExecutorError::Temporary(_))
        ));
        assert!(matches!(
            c.inspect().await,
            Err(ExecutorError::Temporary(_))
        ));
    }

    /// A removal the engine does not answer still takes the task's files: the runner forgets the
    /// task after a few tries, and nothing would remove them later.
    #[tokio::test]
    async fn a_failed_removal_still_removes_the_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ex = refusing_engine(dir.path());
        let c = ex
            .controller(&task(), None, DependencyGetter::none())
            .expect("controller");
        // What a prepare that got as far as the files left.
        let root = ex.files.base().join("t1");
        std::fs::create_dir_all(root.join("run/secrets")).expect("mkdir");
        assert!(matches!(c.remove().await, Err(ExecutorError::Temporary(_))));
        assert!(!root.exists(), "the files outlived a failed removal");
    }
}
