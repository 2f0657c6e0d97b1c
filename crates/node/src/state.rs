//! The state directory: `certificates/` (owned by `ca::KeyStore`), `raft/` (owned by the raft
//! crate), `worker/` (the agent's, later) and `state.json`, the list of known managers that a
//! restarting node reconnects to. Directories are 0700 and `state.json` is 0600 (spec 2.2).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NodeError;

/// One entry of `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerPeer {
    /// The manager's node ID.
    pub node_id: String,
    /// Its remote API address.
    pub addr: String,
}

/// Paths inside a node's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::State {
        path: path.to_path_buf(),
        source,
    }
}

fn make_private_dir(path: &Path) -> Result<(), NodeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))?;
    // An existing directory keeps its mode otherwise; ours must not be readable by others.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_err(path))
}

impl StateDir {
    /// Creates the directory and its `raft/` and `worker/` subdirectories (0700) if missing.
    pub fn open(root: &Path) -> Result<StateDir, NodeError> {
        let dir = StateDir {
            root: root.to_path_buf(),
        };
        make_private_dir(&dir.root)?;
        make_private_dir(&dir.raft_dir())?;
        make_private_dir(&dir.worker_dir())?;
        Ok(dir)
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where raft keeps its log, vote and snapshots.
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// Where the agent keeps its task database.
    pub fn worker_dir(&self) -> PathBuf {
        self.root.join("worker")
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// True when raft has written anything, i.e. this node already belongs to a cluster.
    pub fn has_raft_data(&self) -> bool {
        std::fs::read_dir(self.raft_dir()).is_ok_and(|mut d| d.next().is_some())
    }

    /// Removes everything raft wrote (a demoted manager's log, vote and snapshots), leaving an
    /// empty `raft/`: a later start runs as a worker or, promoted again, joins raft anew.
    pub fn clear_raft_data(&self) -> Result<(), NodeError> {
        let dir = self.raft_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        make_private_dir(&dir)
    }

    /// The managers recorded by the last run; empty if none.
    pub fn load_managers(&self) -> Result<Vec<ManagerPeer>, NodeError> {
        let path = self.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NodeError::State {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces `state.json` atomically (temp file, fsync, rename), mode 0600.
    pub fn save_managers(&self, managers: &[ManagerPeer]) -> Result<(), NodeError> {
        let path = self.state_file();
        let tmp = self.root.join("state.json.tmp");
        let json = serde_json::to_vec(managers).expect("peers serialize to JSON");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(&json).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn layout_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("state");
        let dir = StateDir::open(&root).expect("open");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&dir.raft_dir()), 0o700);
        assert_eq!(mode(&dir.worker_dir()), 0o700);
        assert!(!dir.has_raft_data());
        assert!(dir.load_managers().expect("load").is_empty());

        let peers = vec![ManagerPeer {
            node_id: "abc".into(),
            addr: "0.0.0.0:4242".into(),
        }];
        dir.save_managers(&peers).expect("save");
        assert_eq!(mode(&dir.state_file()), 0o600);
        assert_eq!(dir.load_managers().expect("load"), peers);
        let raw = std::fs::read_to_string(dir.state_file()).expect("read");
        assert_eq!(raw, r#"[{"node_id":"abc","addr":"0.0.0.0:4242"}]"#);

        std::fs::write(dir.raft_dir().join("raft.db"), b"x").expect("write");
        assert!(dir.has_raft_data());
        dir.clear_raft_data().expect("clear");
        assert!(!dir.has_raft_data());
        assert_eq!(mode(&dir.raft_dir()), 0o700);
        dir.clear_raft_data().expect("clear again");
    }
}
