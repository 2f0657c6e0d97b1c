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

/// Every regular file under `root` with its bytes. Symbolic links are not followed and other
/// files are left out: reading a FIFO (the process executor's task output) would block.
pub(crate) fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else {
            continue;
        };
        if kind.is_dir() {
            out.extend(tree(&path));
        } else if kind.is_file()
            && let Ok(data) = std::fs::read(&path)
        {
            out.insert(path, data);
        }
    }
    out
}

pub(crate) fn key_file(m: &Swarmd) -> String {
    std::fs::read_to_string(m.state_dir().join("certificates/swarm-node.key")).expect("key file")
}

/// The cluster's unlock key, from `swarmctl cluster unlock-key` on `m`.
pub(crate) fn unlock_key(m: &Swarmd) -> String {
    let out = m
        .ctl(&["cluster", "unlock-key", "default"])
        .ok()
        .to_string();
    let key = out
        .rsplit_once("Unlock key: ")
        .map(|(_, k)| k.trim().to_string())
        .unwrap_or_else(|| panic!("no unlock key in {out:?}"));
    assert!(key.starts_with("SWMKEY-1-") && key.len() == 9 + 43, "{out}");
    key
}

/// Starts `m` again with `args`; it must exit 1 with `message` and leave its state dir as it was.
#[track_caller]
pub(crate) fn refused(m: &mut Swarmd, args: &[&str], message: &str) {
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

/// `key` (`SWMKEY-1-` and 43 base64 characters, so 2 unused bits at the end) with the lowest
/// bit of its last character set and a line break after its first 20 characters: the same key
/// for Go's `base64.RawStdEncoding`, another text.
fn go_form(key: &str) -> String {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (head, last) = key.split_at(key.len() - 1);
    let index = ALPHABET.find(last).expect("a base64 character");
    let odd = &ALPHABET[index | 1..(index | 1) + 1];
    assert_ne!(odd, last, "the encoder leaves unused bits zero");
    format!("{}\n{}{odd}", &head[..20], &head[20..])
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
    let key = unlock_key(&m);
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
    refused(&mut m, &["--unlock-key", ""], "invalid key string");
    refused(
        &mut m,
        &["--unlock-key", "SWMKEY-1-AAAA="],
        "invalid key string",
    );
    // Well-formed for Go's base64 (unused last bits set): a wrong key, not a malformed one.
    refused(
        &mut m,
        &["--unlock-key", "SWMKEY-1-AB"],
        "node is locked, and needs a valid unlock key",
    );

    // The key as Go's base64 reads it too (SwarmKit's swarmd takes this form): the last
    // character's unused low bit set and a line break inside.
    m.set_extra_args(&["--unlock-key", &go_form(&key)]);
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
    // An unlock key given to a manager that is not locked is refused as a wrong one, as
    // SwarmKit's swarmd does (its raft data key headers are plain), changing nothing.
    assert_eq!(m.stop(), Some(0));
    refused(
        &mut m,
        &["--unlock-key", &key],
        "node is locked, and needs a valid unlock key",
    );
    assert!(key_file(&m).contains("BEGIN PRIVATE KEY"));
}

/// `tree` on a state dir holding a FIFO (as the process executor's task output) returns, with
/// the regular files only.
#[test]
fn tree_skips_fifos() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(dir.path().join("tasks")).expect("mkdir");
    std::fs::write(dir.path().join("tasks/plain"), b"data").expect("write");
    let fifo = dir.path().join("tasks/t.stdout");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let root = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(tree(&root)));
    let files = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("tree returned");
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        [dir.path().join("tasks/plain")]
    );
}
