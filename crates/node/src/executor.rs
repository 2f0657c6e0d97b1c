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

/// Builds the executor `kind` names for a node whose state directory is `state_dir`. The
/// process executor gets the node's data plane (`data_path_addr`: the node's VXLAN address, if
/// known); when it cannot start (no CAP_NET_ADMIN, no VXLAN), swarmd says why and tasks on swarm
/// networks are rejected with that reason.
pub async fn build(
    kind: ExecutorKind,
    engine_addr: &str,
    state_dir: &Path,
    hostname: Option<String>,
    data_path_addr: Option<std::net::IpAddr>,
    generic: &[api::GenericResource],
) -> Result<Built, NodeError> {
    let files = Arc::new(
        TaskFiles::open(state_dir).map_err(|source| NodeError::State {
            path: state_dir.to_path_buf(),
            source,
        })?,
    );
    let process = async || -> Built {
        let config = netplane::Config {
            data_path_addr,
            vxlan_port: netplane::VXLAN_PORT,
            state_dir: state_dir.to_path_buf(),
            wireguard_port: netplane::tunnel::WIREGUARD_PORT,
            encrypted_vxlan_port: netplane::tunnel::ENCRYPTED_VXLAN_PORT,
        };
        let plane = netplane::Dataplane::start(config).await.map_err(|e| {
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
    match kind {
        ExecutorKind::Process => Ok(process().await),
        ExecutorKind::Docker => {
            let docker = docker()
                .map_err(|e| NodeError::Config(format!("--engine-addr {engine_addr}: {e}")))?;
            Ok((Arc::new(docker), None))
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
                    Ok((Arc::new(docker), None))
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
