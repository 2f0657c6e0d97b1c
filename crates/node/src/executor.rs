//! Which executor runs this node's tasks: Docker through the engine at `--engine-addr`, or plain
//! processes (ours, beyond SwarmKit). With neither chosen, Docker is used when its engine answers,
//! and otherwise the process executor, which swarmd says in one log line.

use std::path::Path;
use std::sync::Arc;

use tracing::info;

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

/// Builds the executor `kind` names for a node whose state directory is `state_dir`.
pub async fn build(
    kind: ExecutorKind,
    engine_addr: &str,
    state_dir: &Path,
    hostname: Option<String>,
) -> Result<Arc<dyn agent::Executor>, NodeError> {
    let process = || -> Arc<dyn agent::Executor> {
        Arc::new(executor_process::ProcessExecutor::new(
            state_dir.join("worker"),
            hostname.clone(),
        ))
    };
    match kind {
        ExecutorKind::Process => Ok(process()),
        ExecutorKind::Docker | ExecutorKind::Auto => {
            let _ = engine_addr;
            if kind == ExecutorKind::Docker {
                return Err(NodeError::Config(
                    "not supported yet: --executor docker".into(),
                ));
            }
            info!("no Docker executor yet: using the process executor");
            Ok(process())
        }
    }
}
