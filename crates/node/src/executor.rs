//! Which executor runs this node's tasks: Docker through the engine at `--engine-addr`, or plain
//! processes (ours, beyond SwarmKit). With neither chosen, Docker is used when its engine answers,
//! and otherwise the process executor, which swarmd says in one log line. Either writes tasks'
//! secret and config files under the base [`agent::TaskFiles`] chooses once for the state
//! directory.

use std::path::Path;
use std::sync::Arc;

use agent::TaskFiles;

use tracing::{info, warn};

use crate::NodeError;

/// The `--executor` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Docker if the engine answers, processes otherwise.
    #[default]
    Auto,
    /// The Docker engine at the engine address.
    Docker,
    /// Child processes of swarmd.
    Process,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(ExecutorKind::Docker),
            "process" => Ok(ExecutorKind::Process),
            other => Err(format!(
                "invalid executor {other:?}: must be \"docker\" or \"process\""
            )),
        }
    }
}

/// An executor, and the data plane it runs tasks' networks with (stopped after the agent).
pub type Built = (Arc<dyn agent::Executor>, Option<Arc<netplane::Dataplane>>);

/// Builds the executor `kind` names for a node whose state directory is `state_dir`. Either
/// executor gets the node's data plane (`data_path_addr`: the node's VXLAN address, if known;
/// `tunnel_ports`: the WireGuard port and the encrypted VXLAN port).
/// When it cannot start (no CAP_NET_ADMIN, no VXLAN), swarmd says why; the process executor then
/// rejects tasks on swarm networks with that reason, and the Docker executor keeps their
/// containers on local bridges of the engine's (this node only).
pub async fn build(
    kind: ExecutorKind,
    engine_addr: &str,
    state_dir: &Path,
    hostname: Option<String>,
    data_path_addr: Option<std::net::IpAddr>,
    tunnel_ports: (u16, u16),
    generic: &[api::GenericResource],
) -> Result<Built, NodeError> {
    let files = Arc::new(
        TaskFiles::open(state_dir).map_err(|source| NodeError::State {
            path: state_dir.to_path_buf(),
            source,
        })?,
    );
    let start_plane = async || {
        let config = netplane::Config {
            data_path_addr,
            vxlan_port: netplane::VXLAN_PORT,
            state_dir: state_dir.to_path_buf(),
            wireguard_port: tunnel_ports.0,
            encrypted_vxlan_port: tunnel_ports.1,
        };
        netplane::Dataplane::start(config).await
    };
    let process = async || -> Built {
        let plane = start_plane().await.map_err(|e| {
            warn!(
                "no overlay data plane on this node, tasks on swarm networks will be rejected: {e}"
            );
            e.to_string()
        });
        let executor: Arc<dyn agent::Executor> = Arc::new(
            executor_process::ProcessExecutor::new(
                state_dir.join("worker"),
                files.clone(),
                hostname.clone(),
            )
            .with_data_plane(plane.clone())
            .with_generic_resources(generic.to_vec()),
        );
        (executor, plane.ok())
    };
    let docker = || {
        executor_docker::DockerExecutor::connect(engine_addr, files.clone(), hostname.clone())
            .map(|d| d.with_generic_resources(generic.to_vec()))
    };
    // The Docker executor's containers on swarm networks join the data plane's bridges; without
    // one they stay on bridges of the engine's, which reach this node's containers only.
    let with_plane = async |docker: executor_docker::DockerExecutor| -> Built {
        let (docker, plane) = match start_plane().await {
            Ok(plane) => (docker.with_data_plane(plane.clone()), Some(plane)),
            Err(e) => {
                warn!(
                    "no overlay data plane on this node: containers on swarm networks reach only this node's containers, without virtual IPs or service names: {e}"
                );
                (docker, None)
            }
        };
        let executor: Arc<dyn agent::Executor> = Arc::new(docker);
        (executor, plane)
    };
    match kind {
        ExecutorKind::Process => Ok(process().await),
        ExecutorKind::Docker => {
            let docker = docker()
                .map_err(|e| NodeError::Config(format!("--engine-addr {engine_addr}: {e}")))?;
            Ok(with_plane(docker).await)
        }
        ExecutorKind::Auto => {
            let answered = match docker() {
                Ok(docker) => {
                    match tokio::time::timeout(PROBE_LIMIT, agent::Executor::describe(&docker))
                        .await
                    {
                        Ok(Ok(_)) => Ok(docker),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {PROBE_LIMIT:?}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match answered {
                Ok(docker) => {
                    info!(engine.addr = %engine_addr, "using the Docker executor");
                    Ok(with_plane(docker).await)
                }
                Err(why) => {
                    info!(engine.addr = %engine_addr, "no Docker engine answers ({why}): using the process executor");
                    Ok(process().await)
                }
            }
        }
    }
}

/// How long the automatic choice waits for the Docker engine.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
