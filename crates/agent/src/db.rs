//! The worker's task database, `worker/tasks.db` (redb; spec 2.2): the tasks assigned to this
//! node, the last status the agent gave each, and the executor's checkpoint, so that an agent
//! restart neither loses nor re-runs tasks. A status is written (and fsynced) here before it is
//! reported to the manager.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("status");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// Why the task database failed.
#[derive(Debug, thiserror::Error)]
#[error("worker task database {path}: {message}")]
pub struct DbError {
    path: PathBuf,
    message: String,
}

/// One task as stored: the task as last assigned, the agent's status of it, the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// The task as the dispatcher last sent it.
    pub task: api::Task,
    /// The status the agent last gave it (the task's own status until the agent wrote one).
    pub status: api::TaskStatus,
    /// What the executor needs to adopt it after a restart.
    pub checkpoint: Option<Vec<u8>>,
}

/// The open database.
#[derive(Clone)]
pub struct TaskDb {
    db: Arc<Database>,
    path: PathBuf,
    /// The first write that failed (a full or read-only disk): the agent cannot keep its promise
    /// to store a status before reporting it, so the node stops ([`TaskDb::failed`]).
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl TaskDb {
    /// Opens or creates `<dir>/tasks.db` (mode 0600).
    pub fn open(dir: &Path) -> Result<TaskDb, DbError> {
        let path = dir.join("tasks.db");
        let err = |e: &dyn std::fmt::Display| DbError {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(&e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(&e))?;
        let db = Database::create(&path).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        for table in [TASKS, STATUS, CHECKPOINTS] {
            txn.open_table(table).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))?;
        Ok(TaskDb {
            db: Arc::new(db),
            path,
            failure: Arc::new(tokio::sync::watch::Sender::new(None)),
        })
    }

    /// Resolves once a write has failed, with that write's error; never otherwise.
    pub async fn failed(&self) -> DbError {
        let mut rx = self.failure.subscribe();
        let message = rx.wait_for(Option::is_some).await.map(|m| m.clone());
        match message {
            Ok(message) => DbError {
                path: self.path.clone(),
                message: message.unwrap_or_default(),
            },
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> DbError {
        DbError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every stored task.
    pub fn load(&self) -> Result<Vec<StoredTask>, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let tasks = txn.open_table(TASKS).map_err(|e| self.err(e))?;
        let status = txn.open_table(STATUS).map_err(|e| self.err(e))?;
        let checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in tasks.iter().map_err(|e| self.err(e))? {
            let (id, bytes) = row.map_err(|e| self.err(e))?;
            let task = api::Task::decode(bytes.value()).map_err(|e| self.err(e))?;
            let id = id.value();
            let status = match status.get(id).map_err(|e| self.err(e))? {
                Some(s) => api::TaskStatus::decode(s.value()).map_err(|e| self.err(e))?,
                None => task.status.clone().unwrap_or_default(),
            };
            let checkpoint = checkpoints
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|c| c.value().to_vec());
            out.push(StoredTask {
                task,
                status,
                checkpoint,
            });
        }
        Ok(out)
    }

    /// Stores (or replaces) the task as assigned.
    pub fn put_task(&self, task: &api::Task) -> Result<(), DbError> {
        self.write(|txn| {
            let mut t = txn.open_table(TASKS)?;
            t.insert(task.id.as_str(), task.encode_to_vec().as_slice())?;
            Ok(())
        })
    }

    /// Stores the agent's status of a task.
    pub fn put_status(&self, id: &str, status: &api::TaskStatus) -> Result<(), DbError> {
        self.write(|txn| {
            let mut t = txn.open_table(STATUS)?;
            t.insert(id, status.encode_to_vec().as_slice())?;
            Ok(())
        })
    }

    /// Stores the executor's checkpoint of a task.
    pub fn put_checkpoint(&self, id: &str, checkpoint: &[u8]) -> Result<(), DbError> {
        self.write(|txn| {
            let mut t = txn.open_table(CHECKPOINTS)?;
            t.insert(id, checkpoint)?;
            Ok(())
        })
    }

    /// Forgets a task entirely.
    pub fn delete(&self, id: &str) -> Result<(), DbError> {
        self.write(|txn| {
            for table in [TASKS, STATUS, CHECKPOINTS] {
                txn.open_table(table)?.remove(id)?;
            }
            Ok(())
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), DbError> {
        let res = self
            .db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|txn| {
                f(&txn)?;
                txn.commit().map_err(redb::Error::from)
            });
        res.map_err(|e| {
            let e = self.err(e);
            self.failure.send_if_modified(|first| {
                let unset = first.is_none();
                if unset {
                    *first = Some(e.message.clone());
                }
                unset
            });
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_write_is_reported_once_and_the_first_error_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(dir.path()).expect("open");
        let failed = tokio::spawn({
            let db = db.clone();
            async move { db.failed().await }
        });
        db.put_status("t1", &api::TaskStatus::default())
            .expect("a good write");
        tokio::task::yield_now().await;
        assert!(!failed.is_finished(), "a good write is no failure");
        let injected = |what: &str| {
            let what = what.to_string();
            move |_: &redb::WriteTransaction| Err(redb::Error::Io(std::io::Error::other(what)))
        };
        let err = db
            .write(injected("No space left on device"))
            .expect_err("injected");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        db.write(injected("second")).expect_err("injected");
        let reported = tokio::time::timeout(std::time::Duration::from_secs(5), failed)
            .await
            .expect("failed() resolves")
            .expect("join");
        let text = reported.to_string();
        assert!(
            text.contains("tasks.db") && text.contains("No space left on device"),
            "{text}"
        );
        // A later waiter sees the same first failure at once.
        assert_eq!(db.failed().await.to_string(), text);
    }

    #[test]
    fn tasks_status_and_checkpoints_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(dir.path()).expect("open");
        assert!(db.load().expect("load").is_empty());
        let task = api::Task {
            id: "t1".into(),
            desired_state: api::TaskState::Running as i32,
            status: Some(api::TaskStatus {
                state: api::TaskState::Assigned as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        db.put_task(&task).expect("put");
        let running = api::TaskStatus {
            state: api::TaskState::Running as i32,
            message: "started".into(),
            ..Default::default()
        };
        db.put_status("t1", &running).expect("status");
        db.put_checkpoint("t1", b"pid=1").expect("checkpoint");
        db.put_task(&api::Task {
            id: "t2".into(),
            ..Default::default()
        })
        .expect("put");
        drop(db);

        let db = TaskDb::open(dir.path()).expect("reopen");
        let mut rows = db.load().expect("load");
        rows.sort_by(|a, b| a.task.id.cmp(&b.task.id));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].task, task);
        assert_eq!(rows[0].status, running);
        assert_eq!(rows[0].checkpoint.as_deref(), Some(&b"pid=1"[..]));
        assert_eq!(rows[1].checkpoint, None);
        db.delete("t1").expect("delete");
        let rows = db.load().expect("load");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].task.id, "t2");
        let mode = std::fs::metadata(dir.path().join("tasks.db"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
