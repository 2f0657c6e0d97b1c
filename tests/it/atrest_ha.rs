//! Autolock on a cluster of three real managers (issue 20, spec 5.11), as SwarmKit behaves: a
//! stopped manager needs its unlock key to come back (none or a wrong one changes nothing on
//! its disk) and then catches up; one that was down while the key was rotated comes back with
//! the key its file is locked with, the old one, and re-locks with the new one; one that was
//! down while autolock was turned off still needs its key once, then none (and one down while
//! it was turned back on needs none once, then the new key); no file of any of the three
//! managers holds a secret's bytes, with autolock on and off; and a kill -9 of every manager
//! loses no acknowledged write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::atrest::{key_file, refused, unlock_key};
use crate::ha_cluster::{Cluster, JOIN_LIMIT};
use crate::ha_proxy::local_services;
use crate::harness::{ctl_at, wait_for};
use crate::secrets::{create_from_file, files_containing, leak_forms, payload, token};

const TICK_MS: u64 = 100;
const WAIT: Duration = Duration::from_secs(60);
const LOCKED: &str = "node is locked, and needs a valid unlock key";

/// The flags manager `i` of `c` restarts with: its name and address, then `extra`.
fn flags(c: &Cluster, i: usize, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--hostname".to_string(),
        format!("node-{}", i + 1),
        "--listen-remote-api".to_string(),
        c.addrs[i].clone(),
        "--advertise-remote-api".to_string(),
        c.addrs[i].clone(),
        "--raft-tick-ms".to_string(),
        TICK_MS.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn set_args(c: &mut Cluster, i: usize, extra: &[&str]) {
    let args = flags(c, i, extra);
    c.managers[i].set_extra_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Starts manager `i` again with `extra` flags and waits until it is ready.
#[track_caller]
fn restart(c: &mut Cluster, i: usize, extra: &[&str]) {
    set_args(c, i, extra);
    if let Err(e) = c.restart(i) {
        panic!("{e}; log:\n{}", c.managers[i].log());
    }
}

/// Starting manager `i` with `extra` flags fails with `message`, changing nothing on its disk.
#[track_caller]
fn refused_with(c: &mut Cluster, i: usize, extra: &[&str], message: &str) {
    let args = flags(c, i, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&mut c.managers[i], &args, message);
}

/// The `kek-version` header of manager `i`'s key file.
fn kek_version(c: &Cluster, i: usize) -> u64 {
    let file = key_file(&c.managers[i]);
    file.lines()
        .find_map(|l| l.strip_prefix("kek-version: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kek-version in {file}"))
}

fn locked(c: &Cluster, i: usize) -> bool {
    let file = key_file(&c.managers[i]);
    assert!(file.contains("raft-dek: "), "{file}");
    file.contains("BEGIN ENCRYPTED PRIVATE KEY")
}

/// Waits until every running manager's key file is locked (`true`) or plain.
fn wait_all(c: &mut Cluster, want: bool) {
    for i in c.running() {
        wait_for(
            &format!("node-{}'s key file locked: {want}", i + 1),
            WAIT,
            || (locked(c, i) == want).then_some(()),
        );
    }
}

/// Stops manager `down` and runs `swarmctl cluster update default <flag>` on the leader, whose
/// index it returns.
fn update_while_down(c: &mut Cluster, down: usize, flag: &str) -> usize {
    assert_eq!(c.managers[down].stop(), Some(0));
    let l = c.leader(JOIN_LIMIT);
    c.managers[l]
        .ctl(&["cluster", "update", "default", flag])
        .ok();
    l
}

/// No file of any manager's state dir holds a byte form of the secrets' `needles`.
#[track_caller]
fn no_secret_on_any_disk(c: &Cluster, needles: &[Vec<u8>], when: &str) {
    for (i, m) in c.managers.iter().enumerate() {
        let found = files_containing(&m.state_dir(), needles);
        assert!(
            found.is_empty(),
            "secret bytes on node-{}'s disk ({when}): {found:?}",
            i + 1
        );
    }
}

#[test]
fn a_locked_manager_comes_back_only_with_its_key_and_catches_up() {
    // Small snapshot interval: the secrets reach the followers in snapshots as well as entries.
    let mut c = Cluster::start_with(3, TICK_MS, &["--autolock", "--snapshot-interval", "3"]);
    let key = unlock_key(&c.managers[0]);
    wait_all(&mut c, true);
    let tok = token();
    let needles = leak_forms(&tok);
    let l = c.leader(JOIN_LIMIT);
    for i in 0..6 {
        create_from_file(&c.managers[l], "secret", &format!("ha-{i}"), &payload(&tok));
    }
    for m in &c.managers {
        wait_for("the secrets in every manager's store", WAIT, || {
            (m.ctl(&["secret", "ls"]).ok().matches("ha-").count() == 6).then_some(())
        });
    }
    no_secret_on_any_disk(&c, &needles, "autolock on");
    let l = c.leader(JOIN_LIMIT);
    let down = (l + 1) % 3;

    // Down: no key, a wrong one, then the key; it catches up on what was made meanwhile.
    assert_eq!(c.managers[down].stop(), Some(0));
    let l = c.leader(JOIN_LIMIT);
    c.managers[l]
        .ctl(&[
            "service",
            "create",
            "--name",
            "while-down",
            "--image",
            "busybox",
            "--replicas",
            "0",
        ])
        .ok();
    refused_with(&mut c, down, &[], LOCKED);
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    refused_with(&mut c, down, &["--unlock-key", &wrong], LOCKED);
    restart(&mut c, down, &["--unlock-key", &key]);
    wait_for("the service in the restarted manager's store", WAIT, || {
        local_services(&c.managers[down])
            .contains(&"while-down".to_string())
            .then_some(())
    });

    // The unlock key rotated while it is down: its file is still locked with the old key, so
    // the new one is refused and the old one taken (as SwarmKit); once back it re-locks with
    // the new key, and then the old one is refused.
    let l = update_while_down(&mut c, down, "--rotate-unlock-key");
    let new = unlock_key(&c.managers[l]);
    assert_ne!(new, key);
    refused_with(&mut c, down, &["--unlock-key", &new], LOCKED);
    let before = kek_version(&c, down);
    restart(&mut c, down, &["--unlock-key", &key]);
    wait_for("the key file re-locked with the new key", WAIT, || {
        (kek_version(&c, down) != before).then_some(())
    });
    assert!(locked(&c, down));
    assert_eq!(c.managers[down].stop(), Some(0));
    refused_with(&mut c, down, &["--unlock-key", &key], LOCKED);
    restart(&mut c, down, &["--unlock-key", &new]);

    // Autolock turned off while it is down: the others unlock their files; it still needs its
    // key once, then unlocks its file too and starts without one afterwards, as do the others.
    update_while_down(&mut c, down, "--autolock=false");
    wait_all(&mut c, false);
    refused_with(&mut c, down, &[], LOCKED);
    restart(&mut c, down, &["--unlock-key", &new]);
    wait_all(&mut c, false);
    for i in [down, (down + 1) % 3] {
        assert_eq!(c.managers[i].stop(), Some(0));
        restart(&mut c, i, &[]);
    }
    c.wait_reachable(3, JOIN_LIMIT);
    assert!(local_services(&c.managers[down]).contains(&"while-down".to_string()));
    no_secret_on_any_disk(&c, &needles, "autolock off");

    // Autolock turned back on while it is down: its file is plain, so it starts without a key,
    // then locks it with the cluster's new key, which it needs from then on.
    let l = update_while_down(&mut c, down, "--autolock=true");
    let latest = unlock_key(&c.managers[l]);
    restart(&mut c, down, &[]);
    wait_all(&mut c, true);
    assert_eq!(c.managers[down].stop(), Some(0));
    refused_with(&mut c, down, &["--unlock-key", &new], LOCKED);
    restart(&mut c, down, &["--unlock-key", &latest]);
}

#[test]
fn a_locked_cluster_killed_with_sigkill_loses_no_acknowledged_write() {
    // Small snapshot interval: the writes go through encrypted snapshots as well as entries.
    let mut c = Cluster::start_with(3, TICK_MS, &["--autolock", "--snapshot-interval", "5"]);
    let key = unlock_key(&c.managers[0]);
    wait_all(&mut c, true);
    let l = c.leader(JOIN_LIMIT);

    // Configs created one after another on the leader; a name is recorded once acknowledged.
    let socket = c.managers[l].socket();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            for k in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let name = format!("acked-{k}");
                let out = ctl_at(&socket, &["config", "create", &name], Some(b"payload"));
                if out.code != 0 {
                    break;
                }
                acked.lock().expect("lock").push(name);
            }
        })
    };
    wait_for("50 acknowledged writes", WAIT, || {
        (acked.lock().expect("lock").len() >= 50).then_some(())
    });
    for i in [l, (l + 1) % 3, (l + 2) % 3] {
        c.kill(i);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();
    println!("{} writes acknowledged before the kill", acked.len());

    // Killed, the files are still locked: no key is refused, changing nothing.
    refused_with(&mut c, l, &[], LOCKED);
    let skips: Vec<usize> = (0..3)
        .map(|i| {
            set_args(&mut c, i, &["--unlock-key", &key]);
            c.managers[i].spawn_detached()
        })
        .collect();
    for (i, skip) in skips.into_iter().enumerate() {
        let m = &mut c.managers[i];
        wait_for(&format!("node-{} ready", i + 1), JOIN_LIMIT, || {
            assert!(m.running(), "node-{} exited; log:\n{}", i + 1, m.log());
            m.log()[skip..].contains("node is ready").then_some(())
        });
    }
    let l = c.leader(JOIN_LIMIT);
    let listed = c.managers[l].ctl(&["config", "ls"]).ok().to_string();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !listed.split_whitespace().any(|w| w == n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    for i in 0..3 {
        assert!(locked(&c, i), "node-{}'s key file", i + 1);
    }
}
