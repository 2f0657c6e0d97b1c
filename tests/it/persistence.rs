//! State survives restarts and crashes: a graceful restart resumes the same cluster, and a write
//! acknowledged to swarmctl is there after a kill -9 that follows it at once.

use crate::harness::{Swarmd, mask_ids};

fn cluster_id(d: &Swarmd) -> String {
    d.ctl(&["cluster", "ls", "-q"]).ok().trim().to_string()
}

#[test]
fn restart_resumes_same_cluster_and_objects() {
    let mut d = Swarmd::start();
    let id = cluster_id(&d);
    let svc = d
        .ctl(&[
            "service",
            "create",
            "--name",
            "web",
            "--image",
            "nginx:1.25",
        ])
        .ok()
        .trim()
        .to_string();
    let nodes_before = d.ctl(&["node", "ls", "-q"]).ok().to_string();
    assert_eq!(d.signal_and_wait(2), Some(0));

    d.spawn();
    assert_eq!(cluster_id(&d), id);
    assert_eq!(d.ctl(&["node", "ls", "-q"]).ok(), nodes_before);
    let ls = d.ctl(&["service", "ls", "-q"]).ok().to_string();
    assert_eq!(ls.trim(), svc);
    // Networks are not duplicated by the second bootstrap.
    let nets = d.ctl(&["network", "ls"]).ok().to_string();
    assert_eq!(nets.lines().count(), 5, "{}", mask_ids(&nets));
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut d = Swarmd::start();
    let mut acked = Vec::new();
    for i in 0..10 {
        let name = format!("svc{i}");
        let out = d.ctl(&["service", "create", "--name", &name, "--image", "busybox"]);
        acked.push((name, out.ok().trim().to_string()));
    }
    // Kill right after the last acknowledgement.
    d.kill9();
    d.spawn();
    let ls = d.ctl(&["service", "ls", "-q"]).ok().to_string();
    for (name, id) in &acked {
        assert!(
            ls.contains(id.as_str()),
            "{name} ({id}) lost after kill -9:\n{ls}"
        );
    }
    // The stale socket of the killed process was replaced.
    assert_eq!(d.ctl(&["service", "inspect", "svc9"]).code, 0);
}

#[test]
fn secrets_and_configs_survive_restart() {
    let mut d = Swarmd::start();
    d.ctl_stdin(&["secret", "create", "pw"], b"hunter2").ok();
    d.ctl_stdin(&["config", "create", "cfg"], b"key=value").ok();
    d.kill9();
    d.spawn();
    assert!(d.ctl(&["secret", "ls"]).ok().contains("pw"));
    assert!(
        d.ctl(&["config", "inspect", "cfg"])
            .ok()
            .contains("key=value")
    );
}
