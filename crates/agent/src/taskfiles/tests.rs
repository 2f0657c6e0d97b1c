use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;
use crate::dependencies::Dependencies;
use crate::dependencies::tests::secret;

fn file(name: &str, uid: &str, gid: &str, mode: u32) -> api::FileTarget {
    api::FileTarget {
        name: name.into(),
        uid: uid.into(),
        gid: gid.into(),
        mode,
    }
}

fn secret_ref(id: &str, target: api::FileTarget) -> api::SecretReference {
    api::SecretReference {
        secret_id: id.into(),
        secret_name: format!("{id}-name"),
        target: Some(api::secret_reference::Target::File(target)),
    }
}

fn config_ref(id: &str, target: api::FileTarget) -> api::ConfigReference {
    api::ConfigReference {
        config_id: id.into(),
        config_name: format!("{id}-name"),
        target: Some(api::config_reference::Target::File(target)),
    }
}

fn task(
    id: &str,
    secrets: Vec<api::SecretReference>,
    configs: Vec<api::ConfigReference>,
) -> api::Task {
    api::Task {
        id: id.into(),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(
                api::ContainerSpec {
                    secrets,
                    configs,
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn config(id: &str, data: &[u8]) -> api::Config {
    api::Config {
        id: id.into(),
        spec: Some(api::ConfigSpec {
            data: data.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Task files in the state directory: no tmpfs candidate exists.
fn on_disk(state: &Path) -> Arc<TaskFiles> {
    Arc::new(
        TaskFiles::open_with(state, Path::new("/nonexistent/run"), Path::new("/proc"))
            .expect("open"),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).expect("exists");
    (m.uid(), m.gid())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn without_a_tmpfs_the_state_dir_is_used_and_the_reason_kept() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    assert_eq!(files.base(), state.path().join("taskfiles"));
    assert_eq!(mode(files.base()), 0o711);
    let why = files.not_tmpfs().expect("not on a tmpfs");
    assert!(
        why.contains("/nonexistent/run") && why.contains("/proc is not a tmpfs"),
        "{why}"
    );
}

/// /dev/shm when it is a tmpfs, for the tests that need one; else says they are skipped.
fn shm_tmpfs() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    let tmpfs = rustix::fs::statfs(shm).is_ok_and(|s| i128::from(s.f_type) == TMPFS_MAGIC);
    if !tmpfs {
        println!("skipped: /dev/shm is not a tmpfs here");
    }
    tmpfs.then_some(shm)
}

#[test]
fn the_base_is_a_tmpfs_directory_per_state_dir() {
    let Some(shm) = shm_tmpfs() else {
        return;
    };
    // A tmpfs directory stands in for /run.
    let run = tempfile::tempdir_in(shm).expect("tempdir on tmpfs");
    let state = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let a = TaskFiles::open_with(state.path(), run.path(), shm).expect("open");
    let hash = short_hash(&state.path().canonicalize().expect("canonical"));
    assert_eq!(hash.len(), 12);
    assert_eq!(a.base(), run.path().join("swarmd").join(&hash));
    assert_eq!(a.not_tmpfs(), None);
    assert_eq!(mode(&run.path().join("swarmd")), 0o711);
    assert_eq!(mode(a.base()), 0o711);
    // The same state directory however spelt gives the same base; another one another.
    let again = TaskFiles::open_with(&state.path().join("."), run.path(), shm).expect("open");
    assert_eq!(again.base(), a.base());
    let b = TaskFiles::open_with(other.path(), run.path(), shm).expect("open");
    assert_ne!(b.base(), a.base());

    // Without /run, /dev/shm/swarmd-<uid>/<h>.
    let c = TaskFiles::open_with(state.path(), Path::new("/proc"), shm).expect("open");
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(c.base(), shm.join(format!("swarmd-{uid}")).join(&hash));
    assert_eq!(c.not_tmpfs(), None);
    assert_eq!(mode(c.base()), 0o711);
    assert_eq!(mode(c.base().parent().expect("parent")), 0o711);
    // An empty base goes with the node.
    let base = c.base().to_path_buf();
    drop(c);
    assert!(!base.exists());
}

#[test]
fn a_squatted_name_on_a_tmpfs_gives_a_private_directory_not_the_disk() {
    let Some(real_shm) = shm_tmpfs() else {
        return;
    };
    let uid = rustix::process::geteuid().as_raw();
    let usual = format!("swarmd-{uid}");
    // A squatting directory of another user (as root), a file otherwise; and a link.
    let squat_dir = |at: &Path| {
        if is_root() {
            std::fs::create_dir(at).expect("squat");
            std::os::unix::fs::chown(at, Some(65534), Some(65534)).expect("chown");
        } else {
            std::fs::write(at, b"").expect("squat");
        }
    };
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let squat_link = |at: &Path| std::os::unix::fs::symlink(elsewhere.path(), at).expect("link");
    for squat in [&squat_dir as &dyn Fn(&Path), &squat_link] {
        // A tmpfs directory stands in for /dev/shm.
        let shm = tempfile::tempdir_in(real_shm).expect("tempdir on tmpfs");
        squat(&shm.path().join(&usual));
        let state = tempfile::tempdir().expect("tempdir");
        let files = Arc::new(
            TaskFiles::open_with(state.path(), Path::new("/proc"), shm.path()).expect("open"),
        );
        assert_eq!(files.not_tmpfs(), None);
        let base = files.base().to_path_buf();
        assert_eq!(base.parent(), Some(shm.path()));
        let name = base
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("{usual}-")) && name.len() == usual.len() + 17,
            "{name}"
        );
        assert_eq!(mode(&base), 0o711);
        assert_eq!(owner(&base).0, uid);
        assert!(
            std::fs::read_dir(elsewhere.path())
                .expect("list")
                .next()
                .is_none()
        );
        // The next start finds it again, and sweeps what it holds.
        let t = task("t1", vec![], vec![]);
        files
            .for_task(&t, DependencyGetter::none())
            .expect("valid")
            .write(None)
            .expect("write");
        drop(files);
        let again =
            TaskFiles::open_with(state.path(), Path::new("/proc"), shm.path()).expect("open");
        assert_eq!(again.base(), base);
        again.remove_orphans(&HashSet::new());
        assert!(!base.join("t1").exists());
        // Once empty it goes with the node; the next start makes another.
        drop(again);
        assert!(!base.exists());
        let next =
            TaskFiles::open_with(state.path(), Path::new("/proc"), shm.path()).expect("open");
        assert_ne!(next.base(), base);
        assert_eq!(next.base().parent(), Some(shm.path()));
    }
}

#[test]
fn files_are_laid_out_as_the_task_sees_them() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    let all = Arc::new(Dependencies::default());
    all.put_secret(secret("s1", b"pass"));
    all.put_secret(secret("s2", b"key"));
    all.put_config(config("c1", b"conf"));
    all.put_config(config("c2", b"{}"));
    let t = task(
        "t1",
        vec![
            secret_ref("s1", file("db/pass", "1000", "1001", 0o440)),
            secret_ref("s2", file("/etc/abs.key", "", "", 0)),
        ],
        vec![
            config_ref("c1", file("app/conf.yml", "0", "0", 0o444)),
            config_ref("c2", file("/cfg.json", "", "", 0o644)),
            api::ConfigReference {
                config_id: "c3".into(),
                config_name: "c3".into(),
                target: Some(api::config_reference::Target::Runtime(
                    api::RuntimeTarget {},
                )),
            },
        ],
    );
    let set = files.for_task(&t, all.restrict(&t)).expect("valid");
    assert!(set.has_secrets() && !set.is_empty());
    let root = files.base().join("t1");
    assert_eq!(set.root(), root);
    assert_eq!(
        set.mounts(),
        [
            ("run/secrets/db/pass", "/run/secrets/db/pass"),
            ("etc/abs.key", "/etc/abs.key"),
            ("app/conf.yml", "/app/conf.yml"),
            ("cfg.json", "/cfg.json"),
        ]
        .map(|(host, target)| (root.join(host), PathBuf::from(target)))
    );
    // A leftover of an earlier attempt goes.
    std::fs::create_dir_all(root.join("stale")).expect("stale");
    set.write(Some((4242, 4343))).expect("write");
    assert!(!root.join("stale").exists());
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("run/secrets")), 0o755);
    for (path, data, file_mode, ids) in [
        ("run/secrets/db/pass", &b"pass"[..], 0o440, (1000, 1001)),
        ("etc/abs.key", b"key", 0o400, (0, 0)),
        ("app/conf.yml", b"conf", 0o444, (0, 0)),
        ("cfg.json", b"{}", 0o644, (0, 0)),
    ] {
        let p = root.join(path);
        assert_eq!(std::fs::read(&p).expect("read"), data, "{path}");
        assert_eq!(mode(&p), file_mode, "{path}");
        if is_root() {
            assert_eq!(owner(&p), ids, "{path}");
        }
    }
    if is_root() {
        assert_eq!(owner(&root), (4242, 4343));
    }
    set.remove().expect("remove");
    assert!(!root.exists());
    set.remove().expect("removing twice is fine");
    assert!(files.base().exists());
}

#[test]
fn bad_targets_and_references_are_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    let refused = |t: api::Task| match files.for_task(&t, DependencyGetter::none()) {
        Err(ExecutorError::Fatal(m)) => m,
        Err(e) => panic!("not fatal: {e:?}"),
        Ok(_) => panic!("accepted"),
    };
    let one_secret = |target: api::FileTarget| task("t1", vec![secret_ref("s1", target)], vec![]);
    assert_eq!(
        refused(one_secret(file("../../etc/passwd", "", "", 0o444))),
        "secret s1-name: target '../../etc/passwd' contains a '..' component"
    );
    assert_eq!(
        refused(task(
            "t1",
            vec![],
            vec![config_ref("c1", file("/app/../etc/x", "", "", 0o444))]
        )),
        "config c1-name: target '/app/../etc/x' contains a '..' component"
    );
    assert_eq!(
        refused(one_secret(file("/", "", "", 0o444))),
        "secret s1-name: target '/' names no file"
    );
    assert_eq!(
        refused(one_secret(file("x", "root", "", 0o444))),
        "secret s1-name: invalid uid \"root\""
    );
    assert_eq!(
        refused(task(
            "t1",
            vec![
                secret_ref("s1", file("x", "", "", 0o444)),
                secret_ref("s2", file("/run/secrets/x", "", "", 0o444)),
            ],
            vec![]
        )),
        "secret s2-name: another secret or config has the same target /run/secrets/x"
    );
    let mut no_target = secret_ref("s1", file("x", "", "", 0o444));
    no_target.target = None;
    assert_eq!(
        refused(task("t1", vec![no_target], vec![])),
        "secret s1-name: malformed secret reference, no target provided"
    );
    assert_eq!(
        refused(task("../t1", vec![], vec![])),
        "task id \"../t1\" cannot name a directory"
    );
}

/// Before the first COMPLETE set (a task resumed after a restart), a missing secret may come.
#[test]
fn a_missing_secret_is_worth_a_retry_before_the_first_complete_set_and_leaves_nothing() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    let all = Arc::new(Dependencies::default());
    all.put_config(config("c1", b"conf"));
    let t = task(
        "t1",
        vec![secret_ref("s1", file("x", "", "", 0o444))],
        vec![config_ref("c1", file("c", "", "", 0o444))],
    );
    let set = files.for_task(&t, all.restrict(&t)).expect("valid");
    assert_eq!(
        set.write(None),
        Err(ExecutorError::Temporary("secret s1 not found".into()))
    );
    assert!(!set.root().exists(), "a failed write leaves nothing");
    // Once it arrives, the write succeeds; a templated one is refused.
    all.put_secret(secret("s1", b"x"));
    set.write(None).expect("write");
    let mut templated = secret("s1", b"{{.Service.Name}}");
    templated.spec.as_mut().expect("spec").templating = Some(api::Driver {
        name: "golang".into(),
        ..Default::default()
    });
    all.put_secret(templated);
    assert_eq!(
        set.write(None),
        Err(ExecutorError::Fatal(
            "secret s1-name: templated secrets are not supported".into()
        ))
    );
    assert!(!set.root().exists());
}

/// Once a whole COMPLETE set has been applied, a missing secret or config is one the manager did
/// not send: fatal, so the task is REJECTED and replaced, with SwarmKit's message.
#[test]
fn a_missing_secret_or_config_after_a_complete_set_is_fatal_and_leaves_nothing() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    let all = Arc::new(Dependencies::default());
    all.put_config(config("c1", b"conf"));
    all.retain(&HashSet::new(), &HashSet::from(["c1".to_string()]));
    let with_secret = task(
        "t1",
        vec![secret_ref("s1", file("x", "", "", 0o444))],
        vec![config_ref("c1", file("c", "", "", 0o444))],
    );
    let with_config = task(
        "t2",
        vec![],
        vec![config_ref("c2", file("c", "", "", 0o444))],
    );
    for (t, missing) in [(with_secret, "secret s1"), (with_config, "config c2")] {
        let set = files.for_task(&t, all.restrict(&t)).expect("valid");
        assert_eq!(
            set.write(None),
            Err(ExecutorError::Fatal(format!("{missing} not found")))
        );
        assert!(!set.root().exists(), "a failed write leaves nothing");
    }
}

#[test]
fn orphans_go_and_known_tasks_stay() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    for id in ["t1", "t2"] {
        let t = task(id, vec![], vec![]);
        files
            .for_task(&t, DependencyGetter::none())
            .expect("valid")
            .write(None)
            .expect("write");
    }
    files.remove_orphans(&HashSet::from(["t1".to_string()]));
    assert!(files.base().join("t1").join(SECRETS_DIR).is_dir());
    assert!(!files.base().join("t2").exists());
    // A base that still holds a task's files stays when the node goes.
    let base = files.base().to_path_buf();
    drop(files);
    assert!(base.join("t1").is_dir());
}

#[test]
fn a_base_removed_meanwhile_is_made_again() {
    let state = tempfile::tempdir().expect("tempdir");
    let files = on_disk(state.path());
    std::fs::remove_dir(files.base()).expect("remove the base");
    let t = task("t1", vec![], vec![]);
    let set = files.for_task(&t, DependencyGetter::none()).expect("valid");
    set.write(None).expect("write");
    assert_eq!(mode(files.base()), 0o711);
    assert!(set.root().join(SECRETS_DIR).is_dir());
}
