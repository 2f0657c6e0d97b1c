//! Encryption at rest and autolock (issue 20, spec 5.11) with the real binaries: no secret byte
//! in any file of a manager's state directory, locked or not; a locked manager refuses to start
//! without its unlock key or with a wrong one, changing nothing on disk; turning autolock off
//! lets it start without one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Swarmd, wait_for};
use crate::secrets::{create_from_file, files_containing, leak_forms, payload, token};

const WAIT: Duration = Duration::from_secs(60);

/// Every file under `root` with its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(tree(&path));
        } else if let Ok(data) = std::fs::read(&path) {
            out.insert(path, data);
        }
    }
    out
}

fn key_file(m: &Swarmd) -> String {
    std::fs::read_to_string(m.state_dir().join("certificates/swarm-node.key")).expect("key file")
}

/// Starts `m` again with `args`; it must exit 1 with `message` and leave its state dir as it was.
#[track_caller]
fn refused(m: &mut Swarmd, args: &[&str], message: &str) {
    let before = tree(&m.state_dir());
    m.set_extra_args(args);
    let code = m.spawn_until("agent session registered", WAIT);
    assert_eq!(code, Some(1), "started with {args:?}; log:\n{}", m.log());
    assert!(
        m.log().contains(message),
        "{message:?} not in log:\n{}",
        m.log()
    );
    assert!(
        tree(&m.state_dir()) == before,
        "a refused start changed the state dir"
    );
}

#[test]
fn secrets_never_reach_a_managers_disk_and_a_locked_manager_needs_its_key() {
    // Small snapshot interval: the secrets go through snapshots as well as log entries.
    let mut m = Swarmd::start_with(&["--autolock", "--snapshot-interval", "3"]);
    let tok = token();
    let needles = leak_forms(&tok);
    for i in 0..6 {
        create_from_file(&m, "secret", &format!("atrest-{i}"), &payload(&tok));
    }
    let file = key_file(&m);
    assert!(file.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{file}");
    assert!(
        file.contains("raft-dek: ") && file.contains("kek-version: "),
        "{file}"
    );
    let unlock = m
        .ctl(&["cluster", "unlock-key", "default"])
        .ok()
        .to_string();
    let key = unlock
        .rsplit_once("Unlock key: ")
        .map(|(_, k)| k.trim().to_string())
        .expect("unlock key line");
    assert!(
        key.starts_with("SWMKEY-1-") && key.len() == 9 + 43,
        "{unlock}"
    );
    let found = files_containing(&m.state_dir(), &needles);
    assert!(
        found.is_empty(),
        "secret bytes on disk (autolock on): {found:?}"
    );

    assert_eq!(m.stop(), Some(0));
    refused(&mut m, &[], "node is locked, and needs a valid unlock key");
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    refused(
        &mut m,
        &["--unlock-key", &wrong],
        "node is locked, and needs a valid unlock key",
    );
    refused(
        &mut m,
        &["--unlock-key", "SWMKEY-1-AAAA"],
        "node is locked, and needs a valid unlock key",
    );
    refused(
        &mut m,
        &["--unlock-key", "SWMKEY-1-not base64!"],
        "invalid key string",
    );
    refused(&mut m, &["--unlock-key", "not-a-key"], "invalid key string");

    m.set_extra_args(&["--unlock-key", &key]);
    m.spawn();
    let ls = m.ctl(&["secret", "ls", "-q"]).ok().to_string();
    assert_eq!(ls.lines().count(), 6, "{ls}");

    // Autolock off: the key file is unlocked by the manager, and a restart needs no key.
    m.ctl(&["cluster", "update", "default", "--autolock=false"])
        .ok();
    wait_for("the key file unlocked", WAIT, || {
        key_file(&m).contains("BEGIN PRIVATE KEY").then_some(())
    });
    create_from_file(&m, "secret", "atrest-after", &payload(&tok));
    assert_eq!(m.stop(), Some(0));
    m.set_extra_args(&[]);
    m.spawn();
    let ls = m.ctl(&["secret", "ls", "-q"]).ok().to_string();
    assert_eq!(ls.lines().count(), 7, "{ls}");
    let found = files_containing(&m.state_dir(), &needles);
    assert!(
        found.is_empty(),
        "secret bytes on disk (autolock off): {found:?}"
    );
    // An unlock key given to a manager that is not locked is ignored, as SwarmKit does.
    assert_eq!(m.stop(), Some(0));
    m.set_extra_args(&["--unlock-key", &key]);
    m.spawn();
    assert!(
        m.log()
            .contains("this node is not locked: --unlock-key is ignored")
    );
    assert!(key_file(&m).contains("BEGIN PRIVATE KEY"));
    m.stop();
}
