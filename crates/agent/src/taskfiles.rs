//! The files a task's secrets and configs become on this node, shared by the executors: written
//! into a directory per task (named by the task ID) under one base directory, laid out as the
//! task sees them under its root: a secret with a relative target `T` at `run/secrets/T`, any
//! absolute target `/A` at `A`, a config with a relative target `T` at `T` (moby's rules).
//!
//! The base is chosen once per node, in memory-backed storage so that no secret reaches a disk:
//! `/run/swarmd/<h>` when /run is a tmpfs this process may write (root), else
//! `/dev/shm/swarmd-<uid>/<h>` when /dev/shm is a tmpfs, where `<h>` is a short hash of the
//! canonical state directory (several swarmd may share a machine). When another user took
//! `/run/swarmd` or `/dev/shm/swarmd-<uid>` (anyone may create names in /dev/shm), the base is
//! a new directory `<that name>-<random>` on the same tmpfs, made with create-new semantics and
//! recorded in `<state dir>/taskfiles-base` so that the next start uses it again. Failing both, the files go
//! to `<state dir>/taskfiles`, on disk, with one warning saying why ([`TaskFiles::not_tmpfs`]
//! tells executors that must refuse that). Base directories are 0711 (traversable, not
//! listable), a task's directory 0700, files the reference's mode (0400 when it gives none),
//! owned by the reference's uid and gid (0 when empty) when swarmd runs as root.

use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use tracing::{info, warn};

use crate::dependencies::DependencyGetter;
use crate::executor::ExecutorError;

/// `f_type` of a tmpfs in `statfs`.
const TMPFS_MAGIC: i128 = 0x0102_1994;

/// The file in the state directory recording the private base directory made on a tmpfs
/// whose usual name someone else had taken, so that the next start uses (and sweeps) it again.
const PRIVATE_BASE_FILE: &str = "taskfiles-base";

/// Mode of base directories: others may pass through to their task's directory, not list.
const BASE_MODE: u32 = 0o711;
/// Mode of a task's directory.
const TASK_MODE: u32 = 0o700;
/// Mode of the directories inside a task's directory (`run`, `run/secrets`, config parents).
const INNER_MODE: u32 = 0o755;
/// Mode of a file whose reference gives none.
const DEFAULT_FILE_MODE: u32 = 0o400;

/// Where secrets go inside a task's root, for relative targets.
pub const SECRETS_DIR: &str = "run/secrets";

/// The base directory of this node's task files.
#[derive(Debug)]
pub struct TaskFiles {
    /// The base and the directories above it that this node creates: the base is the last.
    dirs: Vec<PathBuf>,
    /// Why the base is on disk, when it is.
    not_tmpfs: Option<String>,
}

impl TaskFiles {
    /// Chooses (and creates) the base for the node whose state directory is `state_dir`; warns
    /// once when it has to fall back to the state directory.
    pub fn open(state_dir: &Path) -> io::Result<TaskFiles> {
        TaskFiles::open_with(state_dir, Path::new("/run"), Path::new("/dev/shm"))
    }

    /// [`TaskFiles::open`] with other mount points in place of /run and /dev/shm.
    pub fn open_with(state_dir: &Path, run: &Path, shm: &Path) -> io::Result<TaskFiles> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        let hash = short_hash(&state_dir.canonicalize()?);
        let uid = rustix::process::geteuid().as_raw();
        let remembered = state_dir.join(PRIVATE_BASE_FILE);
        let candidates = [(run, "swarmd".to_string()), (shm, format!("swarmd-{uid}"))];
        let mut why = Vec::new();
        for (mount, name) in candidates {
            match tmpfs_base(mount, &name, &hash, &remembered) {
                Ok(dirs) => {
                    return Ok(TaskFiles {
                        dirs,
                        not_tmpfs: None,
                    });
                }
                Err(reason) => why.push(reason),
            }
        }
        let dirs = vec![state_dir.join("taskfiles")];
        make_base_dirs(&dirs)?;
        let why = why.join("; ");
        warn!(
            dir = %dirs[0].display(),
            "no usable tmpfs for task secret and config files ({why}): they are written to the state directory, on disk"
        );
        Ok(TaskFiles {
            dirs,
            not_tmpfs: Some(why),
        })
    }

    /// The base directory.
    pub fn base(&self) -> &Path {
        self.dirs.last().expect("a base")
    }

    /// Why the base is not on a tmpfs; `None` when it is.
    pub fn not_tmpfs(&self) -> Option<&str> {
        self.not_tmpfs.as_deref()
    }

    /// The files `task` references, checked: each target names a file, none has a `..`
    /// component and no two share one. The data is read from `dependencies` only when written.
    pub fn for_task(
        self: &Arc<Self>,
        task: &api::Task,
        dependencies: DependencyGetter,
    ) -> Result<TaskFileSet, ExecutorError> {
        let id = &task.id;
        if id.is_empty() || id.starts_with('.') || id.contains('/') {
            return Err(ExecutorError::Fatal(format!(
                "task id {id:?} cannot name a directory"
            )));
        }
        let refs = file_refs(task).map_err(ExecutorError::Fatal)?;
        Ok(TaskFileSet {
            root: self.base().join(id),
            files: self.clone(),
            refs,
            dependencies,
        })
    }

    /// Removes the directory of every task not in `known` (left by a swarmd that was killed, or
    /// that restarted after the task was removed), saying so for each.
    pub fn remove_orphans(&self, known: &HashSet<String>) {
        let entries = match std::fs::read_dir(self.base()) {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %self.base().display(), "listing task files failed: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    info!(task.id = %name, "removed the secret and config files of a task this node no longer has")
                }
                Err(e) => {
                    warn!(task.id = %name, "removing the files of a task this node no longer has failed: {e}")
                }
            }
        }
    }
}

/// The base goes with the node when no task left anything in it, so that swarmd processes that
/// came and went leave no directories behind on a shared tmpfs.
impl Drop for TaskFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.base());
    }
}

/// A short, stable name for `state_dir`: 12 hex digits of its SHA-256.
fn short_hash(state_dir: &Path) -> String {
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Chooses and creates the base on the tmpfs `mount`: the private directory `remembered` names
/// when it is still there, else `<mount>/<name>/<hash>`, else, when someone else took
/// `<mount>/<name>`, a new private directory; or says why it cannot.
fn tmpfs_base(
    mount: &Path,
    name: &str,
    hash: &str,
    remembered: &Path,
) -> Result<Vec<PathBuf>, String> {
    let fs = rustix::fs::statfs(mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    if i128::from(fs.f_type) != TMPFS_MAGIC {
        return Err(format!("{} is not a tmpfs", mount.display()));
    }
    if let Some(private) = remembered_base(mount, remembered) {
        return Ok(vec![private]);
    }
    let dirs = vec![mount.join(name), mount.join(name).join(hash)];
    match make_base_dirs(&dirs) {
        Ok(()) => Ok(dirs),
        // Squatted: going to disk instead would put secrets there at anyone's asking.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let private = private_base(mount, name, remembered).map_err(|e| e.to_string())?;
            warn!(dir = %private.display(), "{e}: task files go to a private directory instead");
            Ok(vec![private])
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The private base directory recorded in `remembered` when it is a directory of this user
/// directly in `mount`.
fn remembered_base(mount: &Path, remembered: &Path) -> Option<PathBuf> {
    let path = PathBuf::from(std::ffi::OsString::from_vec(
        std::fs::read(remembered).ok()?,
    ));
    let meta = std::fs::symlink_metadata(&path).ok()?;
    (path.parent() == Some(mount) && is_ours(&meta)).then_some(path)
}

/// Makes a directory named `<name>-<random>` in `mount` (with create-new semantics, so that no
/// one can have made it before) and records its path in `remembered` for the next start.
fn private_base(mount: &Path, name: &str, remembered: &Path) -> io::Result<PathBuf> {
    for _ in 0..8 {
        let dir = mount.join(format!("{name}-{:016x}", rand::random::<u64>()));
        match DirBuilder::new().mode(BASE_MODE).create(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, Permissions::from_mode(BASE_MODE))?;
                std::fs::write(remembered, dir.as_os_str().as_bytes())?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    Err(io::Error::other(format!(
        "{}: no free name for a private directory",
        mount.display()
    )))
}

/// Whether `meta` (not followed) is a directory of this user.
fn is_ours(meta: &std::fs::Metadata) -> bool {
    meta.is_dir() && meta.uid() == rustix::process::geteuid().as_raw()
}

/// Creates each of `dirs` (each inside the one before; mode 0711) unless it exists; an
/// existing one must be a directory of this user, not a link (/dev/shm is everyone's): else
/// the error is `AlreadyExists`.
fn make_base_dirs(dirs: &[PathBuf]) -> io::Result<()> {
    for dir in dirs {
        let fail = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
        match DirBuilder::new().mode(BASE_MODE).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
        if !is_ours(&meta) {
            return Err(fail(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory of this user",
            )));
        }
        std::fs::set_permissions(dir, Permissions::from_mode(BASE_MODE)).map_err(fail)?;
    }
    Ok(())
}

/// Secret or config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

/// One file a task references.
#[derive(Debug, Clone)]
struct FileRef {
    kind: Kind,
    /// Secret or config ID.
    id: String,
    /// Its name, for messages.
    name: String,
    /// Where the task sees it: absolute, normalised.
    target: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

/// The file references of `task`'s container spec (configs with a runtime target have no file).
fn file_refs(task: &api::Task) -> Result<Vec<FileRef>, String> {
    let Some(c) = task.container() else {
        return Ok(Vec::new());
    };
    let mut refs = Vec::new();
    for r in &c.secrets {
        let Some(api::secret_reference::Target::File(file)) = &r.target else {
            return Err(format!(
                "secret {}: malformed secret reference, no target provided",
                r.secret_name
            ));
        };
        refs.push(file_ref(Kind::Secret, &r.secret_id, &r.secret_name, file)?);
    }
    for r in &c.configs {
        match &r.target {
            Some(api::config_reference::Target::File(file)) => {
                refs.push(file_ref(Kind::Config, &r.config_id, &r.config_name, file)?);
            }
            Some(api::config_reference::Target::Runtime(_)) => {}
            None => {
                return Err(format!(
                    "config {}: malformed config reference, no target provided",
                    r.config_name
                ));
            }
        }
    }
    let mut seen: HashSet<&Path> = HashSet::new();
    for r in &refs {
        if !seen.insert(&r.target) {
            return Err(format!(
                "{} {}: another secret or config has the same target {}",
                r.kind.name(),
                r.name,
                r.target.display()
            ));
        }
    }
    Ok(refs)
}

fn file_ref(kind: Kind, id: &str, name: &str, file: &api::FileTarget) -> Result<FileRef, String> {
    let what = kind.name();
    let id_of = |field: &str, value: &str| -> Result<u32, String> {
        if value.is_empty() {
            return Ok(0);
        }
        value
            .parse()
            .map_err(|_| format!("{what} {name}: invalid {field} {value:?}"))
    };
    Ok(FileRef {
        kind,
        id: id.to_string(),
        name: name.to_string(),
        target: target_path(kind, &file.name).map_err(|why| format!("{what} {name}: {why}"))?,
        uid: id_of("uid", &file.uid)?,
        gid: id_of("gid", &file.gid)?,
        mode: match file.mode & 0o777 {
            0 => DEFAULT_FILE_MODE,
            mode => mode,
        },
    })
}

/// Where a reference's target appears in the task, as the control API checked it
/// ([`api::limits::file_target_path`]); checked again here since a task may come from a manager
/// that did not.
fn target_path(kind: Kind, name: &str) -> Result<PathBuf, String> {
    let kind = match kind {
        Kind::Secret => api::limits::FileKind::Secret,
        Kind::Config => api::limits::FileKind::Config,
    };
    api::limits::file_target_path(kind, name)
        .map(PathBuf::from)
        .map_err(|why| format!("target {why}"))
}

/// One task's files: where they go, and what writes and removes them.
pub struct TaskFileSet {
    files: Arc<TaskFiles>,
    root: PathBuf,
    refs: Vec<FileRef>,
    dependencies: DependencyGetter,
}

/// Names the directory and the references; never data.
impl std::fmt::Debug for TaskFileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFileSet")
            .field("root", &self.root)
            .field("refs", &self.refs)
            .finish_non_exhaustive()
    }
}

impl TaskFileSet {
    /// The task's directory, its root as the files are laid out.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the task references no file at all.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Whether the task references a secret.
    pub fn has_secrets(&self) -> bool {
        self.refs.iter().any(|r| r.kind == Kind::Secret)
    }

    /// The store this set writes into.
    pub fn files(&self) -> &TaskFiles {
        &self.files
    }

    /// Each file as (where it is on this host, where the task sees it).
    pub fn mounts(&self) -> Vec<(PathBuf, PathBuf)> {
        self.refs
            .iter()
            .map(|r| (self.host_path(&r.target), r.target.clone()))
            .collect()
    }

    fn host_path(&self, target: &Path) -> PathBuf {
        self.root
            .join(target.strip_prefix("/").expect("targets are absolute"))
    }

    /// (Re)writes the task's directory: `run/secrets` and every file, with the data the
    /// dependencies hold now. The directory is owned by `owner` (uid, gid) when given and
    /// swarmd runs as root. On failure nothing of the task is left.
    pub fn write(&self, owner: Option<(u32, u32)>) -> Result<(), ExecutorError> {
        let res = self.write_all(owner);
        if res.is_err() {
            let _ = self.remove();
        }
        res
    }

    fn write_all(&self, owner: Option<(u32, u32)>) -> Result<(), ExecutorError> {
        let io_err =
            |what: String| move |e: io::Error| ExecutorError::Fatal(format!("{what}: {e}"));
        // Whatever an earlier attempt (or an earlier swarmd) left is replaced; the base is made
        // again if it went (another swarmd of this state directory stopped).
        self.remove()?;
        make_base_dirs(&self.files.dirs).map_err(io_err("creating the task files base".into()))?;
        DirBuilder::new()
            .mode(TASK_MODE)
            .create(&self.root)
            .map_err(io_err(format!("creating {}", self.root.display())))?;
        std::fs::set_permissions(&self.root, Permissions::from_mode(TASK_MODE)).map_err(io_err(
            format!("setting the mode of {}", self.root.display()),
        ))?;
        let secrets = self.root.join(SECRETS_DIR);
        inner_dirs(&secrets).map_err(io_err(format!("creating {}", secrets.display())))?;
        let root = rustix::process::geteuid().is_root();
        for r in &self.refs {
            let path = self.host_path(&r.target);
            let what = || {
                format!(
                    "writing the file of {} {} ({})",
                    r.kind.name(),
                    r.name,
                    r.target.display()
                )
            };
            if let Some(parent) = path.parent() {
                inner_dirs(parent).map_err(io_err(what()))?;
            }
            match r.kind {
                Kind::Secret => {
                    let secret = self.dependencies.secret(&r.id)?;
                    if secret.templating().is_some() {
                        return Err(ExecutorError::Fatal(format!(
                            "secret {}: templated secrets are not supported",
                            r.name
                        )));
                    }
                    write_file(&path, secret.data(), r, root).map_err(io_err(what()))?;
                }
                Kind::Config => {
                    let config = self.dependencies.config(&r.id)?;
                    let spec = config.spec.as_ref();
                    if spec.is_some_and(|s| s.templating.is_some()) {
                        return Err(ExecutorError::Fatal(format!(
                            "config {}: templated configs are not supported",
                            r.name
                        )));
                    }
                    let data = spec.map_or(&[][..], |s| s.data.as_slice());
                    write_file(&path, data, r, root).map_err(io_err(what()))?;
                }
            }
        }
        if root && let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&self.root, Some(uid), Some(gid)).map_err(io_err(format!(
                "giving {} to {uid}:{gid}",
                self.root.display()
            )))?;
        }
        Ok(())
    }

    /// Removes the task's directory and everything in it (nothing to do when it is gone).
    pub fn remove(&self) -> Result<(), ExecutorError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ExecutorError::Temporary(format!(
                "removing {}: {e}",
                self.root.display()
            ))),
        }
    }
}

/// Creates `dir` and its missing parents inside a task's directory (mode 0755).
fn inner_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(INNER_MODE)
        .create(dir)
}

/// Writes `data` to a new file at `path` (private while it is written), then gives it the
/// reference's owner (as root) and mode.
fn write_file(path: &Path, data: &[u8], r: &FileRef, root: bool) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    if root {
        std::os::unix::fs::fchown(&file, Some(r.uid), Some(r.gid))?;
    }
    file.set_permissions(Permissions::from_mode(r.mode))
}

#[cfg(test)]
mod tests;
