//! The secrets and configs the dispatcher sends with the tasks that need them (SwarmKit's
//! agent/secrets, agent/configs and agent/dependency.go): held in memory only, by ID, never
//! written to the task database nor logged. The worker updates the set from the Assignments
//! stream; each task's controller gets a [`DependencyGetter`] that hands out only what the
//! task's own container spec references. A secret's bytes are zeroed once the last holder drops
//! it (removed from the set, replaced by a newer version, or the set replaced).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use zeroize::Zeroize;

/// A secret as the dispatcher sent it, data included. Its data is zeroed when it is dropped, and
/// it has no `Debug`, so that it cannot be logged by mistake.
pub struct Secret(api::Secret);

impl Secret {
    /// The secret's ID.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The secret's data.
    pub fn data(&self) -> &[u8] {
        self.0.spec.as_ref().map_or(&[], |s| s.data.as_slice())
    }

    /// The templating driver the secret's spec names, if any.
    pub fn templating(&self) -> Option<&api::Driver> {
        self.0.spec.as_ref().and_then(|s| s.templating.as_ref())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        if let Some(spec) = &mut self.0.spec {
            spec.data.zeroize();
        }
    }
}

/// Why a task's controller could not have a secret or config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// The task's spec does not reference it.
    #[error("task not authorized to access {kind} {id}")]
    NotAuthorized {
        /// `secret` or `config`.
        kind: &'static str,
        /// Its ID.
        id: String,
    },
    /// The node does not hold it.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `secret` or `config`.
        kind: &'static str,
        /// Its ID.
        id: String,
        /// Whether the node had applied a whole COMPLETE set when it looked: then the manager
        /// did not send it and it will not come; before (after a swarmd restart, a resumed task
        /// may ask before the first assignments arrive) it may.
        synced: bool,
    },
}

impl From<DependencyError> for crate::ExecutorError {
    /// A reference the task does not make is a bug that no retry mends, and so is one the
    /// manager did not send; one missing before the first COMPLETE set comes with it, so it is
    /// worth waiting for.
    fn from(e: DependencyError) -> Self {
        match e {
            DependencyError::NotFound { synced: false, .. } => {
                crate::ExecutorError::Temporary(e.to_string())
            }
            _ => crate::ExecutorError::Fatal(e.to_string()),
        }
    }
}

/// The secrets and configs this node holds, by ID.
#[derive(Default)]
pub struct Dependencies {
    secrets: RwLock<HashMap<String, Arc<Secret>>>,
    configs: RwLock<HashMap<String, Arc<api::Config>>>,
    /// Whether a whole COMPLETE set has been applied since this node started.
    synced: AtomicBool,
}

/// Reads a lock whose holders never panic while holding it; a poisoned one is still consistent.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Dependencies {
    /// Adds or replaces a secret.
    pub fn put_secret(&self, secret: api::Secret) {
        let id = secret.id.clone();
        write(&self.secrets).insert(id, Arc::new(Secret(secret)));
    }

    /// Adds or replaces a config.
    pub fn put_config(&self, config: api::Config) {
        write(&self.configs).insert(config.id.clone(), Arc::new(config));
    }

    /// Drops a secret (a no-op for one the node does not hold).
    pub fn remove_secret(&self, id: &str) {
        write(&self.secrets).remove(id);
    }

    /// Drops a config.
    pub fn remove_config(&self, id: &str) {
        write(&self.configs).remove(id);
    }

    /// Keeps only the secrets and configs whose IDs are given: the end of a COMPLETE set, after
    /// which one the node does not hold is one the manager did not send.
    pub fn retain(&self, secrets: &HashSet<String>, configs: &HashSet<String>) {
        write(&self.secrets).retain(|id, _| secrets.contains(id));
        write(&self.configs).retain(|id, _| configs.contains(id));
        self.synced.store(true, Ordering::Release);
    }

    /// How many secrets and configs the node holds.
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (read(&self.secrets).len(), read(&self.configs).len())
    }

    /// A getter for `task`: only the secrets and configs its container spec references.
    pub fn restrict(self: &Arc<Self>, task: &api::Task) -> DependencyGetter {
        let (secrets, configs) = match task.container() {
            Some(c) => (
                c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
                c.configs.iter().map(|r| r.config_id.clone()).collect(),
            ),
            None => Default::default(),
        };
        DependencyGetter {
            all: self.clone(),
            secrets,
            configs,
        }
    }
}

/// One task's view of the node's secrets and configs: only those its spec references (SwarmKit's
/// `Restrict`).
#[derive(Clone)]
pub struct DependencyGetter {
    all: Arc<Dependencies>,
    secrets: HashSet<String>,
    configs: HashSet<String>,
}

impl DependencyGetter {
    /// A getter that gives nothing: for a task that references nothing, or a test.
    pub fn none() -> DependencyGetter {
        DependencyGetter {
            all: Arc::default(),
            secrets: HashSet::new(),
            configs: HashSet::new(),
        }
    }

    /// The secret `id`, if the task references it and the node holds it.
    pub fn secret(&self, id: &str) -> Result<Arc<Secret>, DependencyError> {
        self.lookup(&self.all.secrets, &self.secrets, "secret", id)
    }

    /// The config `id`, if the task references it and the node holds it.
    pub fn config(&self, id: &str) -> Result<Arc<api::Config>, DependencyError> {
        self.lookup(&self.all.configs, &self.configs, "config", id)
    }

    fn lookup<T>(
        &self,
        all: &RwLock<HashMap<String, Arc<T>>>,
        allowed: &HashSet<String>,
        kind: &'static str,
        id: &str,
    ) -> Result<Arc<T>, DependencyError> {
        if !allowed.contains(id) {
            return Err(DependencyError::NotAuthorized {
                kind,
                id: id.to_string(),
            });
        }
        // Read before the lookup: a COMPLETE set that ends in between did not send it either.
        let synced = self.all.synced.load(Ordering::Acquire);
        read(all)
            .get(id)
            .cloned()
            .ok_or_else(|| DependencyError::NotFound {
                kind,
                id: id.to_string(),
                synced,
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A secret holding `data`.
    pub(crate) fn secret(id: &str, data: &[u8]) -> api::Secret {
        api::Secret {
            id: id.into(),
            spec: Some(api::SecretSpec {
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task_with(secrets: &[&str], configs: &[&str]) -> api::Task {
        api::Task {
            id: "t1".into(),
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(Box::new(
                    api::ContainerSpec {
                        secrets: secrets
                            .iter()
                            .map(|id| api::SecretReference {
                                secret_id: id.to_string(),
                                ..Default::default()
                            })
                            .collect(),
                        configs: configs
                            .iter()
                            .map(|id| api::ConfigReference {
                                config_id: id.to_string(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_getter_gives_only_what_its_task_references() {
        let all = Arc::new(Dependencies::default());
        all.put_secret(secret("s1", b"one"));
        all.put_secret(secret("s2", b"two"));
        all.put_config(api::Config {
            id: "c1".into(),
            ..Default::default()
        });
        let getter = all.restrict(&task_with(&["s1", "s3"], &["c1"]));
        assert_eq!(getter.secret("s1").expect("s1").data(), b"one");
        assert_eq!(
            getter.secret("s2").err().map(|e| e.to_string()).as_deref(),
            Some("task not authorized to access secret s2")
        );
        assert_eq!(
            getter.secret("s3").err(),
            Some(DependencyError::NotFound {
                kind: "secret",
                id: "s3".into(),
                synced: false
            })
        );
        assert_eq!(getter.config("c1").expect("c1").id, "c1");
        assert!(getter.config("c2").is_err());
        // A task that references nothing gets nothing.
        let none = all.restrict(&api::Task::default());
        assert!(none.secret("s1").is_err());
        // A later update is seen by an existing getter; a removal too.
        all.put_secret(secret("s1", b"uno"));
        assert_eq!(getter.secret("s1").expect("s1").data(), b"uno");
        all.remove_secret("s1");
        assert!(matches!(
            getter.secret("s1"),
            Err(DependencyError::NotFound { .. })
        ));
        // Missing is worth a retry, unreferenced never.
        assert!(matches!(
            crate::ExecutorError::from(getter.secret("s3").err().expect("missing")),
            crate::ExecutorError::Temporary(_)
        ));
        assert!(matches!(
            crate::ExecutorError::from(getter.secret("s2").err().expect("unreferenced")),
            crate::ExecutorError::Fatal(_)
        ));
        // Once a whole COMPLETE set has been applied, missing is final: the manager did not
        // send it.
        all.retain(&HashSet::new(), &HashSet::new());
        assert_eq!(
            crate::ExecutorError::from(getter.secret("s3").err().expect("missing")),
            crate::ExecutorError::Fatal("secret s3 not found".into())
        );
        assert_eq!(
            crate::ExecutorError::from(getter.config("c1").expect_err("missing")),
            crate::ExecutorError::Fatal("config c1 not found".into())
        );
    }

    #[test]
    fn retain_keeps_only_the_listed_ids() {
        let all = Dependencies::default();
        all.put_secret(secret("s1", b"one"));
        all.put_secret(secret("s2", b"two"));
        all.put_config(api::Config {
            id: "c1".into(),
            ..Default::default()
        });
        all.retain(&HashSet::from(["s2".to_string()]), &HashSet::new());
        assert_eq!(all.len(), (1, 0));
        assert!(read(&all.secrets).contains_key("s2"));
    }
}
