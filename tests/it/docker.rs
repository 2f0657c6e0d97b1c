//! The Docker executor through the real binaries: a service of the locally built test image
//! (`scripts/test-image.sh`; no registry here) runs, updates its image, scales, and leaves no
//! container behind once removed. Skipped, saying why, where no Docker engine answers; CI makes a
//! missing engine a failure before the tests run (`.ci/run`).

use std::process::Command;
use std::time::Duration;

use crate::harness::{Swarmd, wait_for};

pub(crate) const IMAGE: &str = "swarmkit-test/busybox:latest";
const IMAGE2: &str = "swarmkit-test/busybox:v2";
const WAIT: Duration = Duration::from_secs(90);

/// What `docker <args>` printed, when it succeeded.
pub(crate) fn docker(args: &[&str]) -> Option<String> {
    docker_bytes(args).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// The exact bytes `docker <args>` printed, when it succeeded (a file `docker exec` cats).
pub(crate) fn docker_bytes(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// Whether an engine answers and the test image can be had; prints why not.
pub(crate) fn engine_ready() -> bool {
    if docker(&["info", "--format", "{{.ServerVersion}}"]).is_none() {
        println!("skipped: no Docker engine answers (docker info failed)");
        return false;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-image.sh");
    let built = Command::new("bash")
        .arg(script)
        .status()
        .is_ok_and(|s| s.success());
    assert!(built, "scripts/test-image.sh failed with an engine present");
    docker(&["tag", IMAGE, IMAGE2]).expect("tag the second image");
    true
}

/// IDs of the containers (running or not) of service `name`, by SwarmKit's label.
pub(crate) fn containers(name: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={name}"),
    ])
    .expect("docker ps")
    .lines()
    .map(str::to_string)
    .collect()
}

/// Images of the running containers of `name`.
pub(crate) fn running_images(name: &str) -> Vec<String> {
    let mut images: Vec<String> = docker(&[
        "ps",
        "--format",
        "{{.Image}}",
        "--filter",
        &format!("label=com.docker.swarm.service.name={name}"),
    ])
    .expect("docker ps")
    .lines()
    .map(str::to_string)
    .collect();
    images.sort();
    images
}

fn running_tasks(d: &Swarmd) -> usize {
    d.ctl(&["task", "ls"])
        .ok()
        .lines()
        .skip(2)
        .filter(|l| l.split_whitespace().nth(3) == Some("RUNNING"))
        .count()
}

#[test]
fn a_docker_service_runs_updates_scales_and_leaves_nothing() {
    if !engine_ready() {
        return;
    }
    let name = format!("itdocker{}", std::process::id());
    let d = Swarmd::start_with(&["--executor", "docker"]);
    d.ctl(&[
        "service",
        "create",
        "--name",
        &name,
        "--image",
        IMAGE,
        "--replicas",
        "2",
        "--command",
        "/bin/sh",
        "--args",
        "-c,trap 'exit 0' TERM; sleep 300 & wait",
    ])
    .ok();
    wait_for("2 tasks RUNNING in containers", WAIT, || {
        (running_tasks(&d) == 2 && running_images(&name) == vec![IMAGE.to_string(); 2])
            .then_some(())
    });
    // SwarmKit's container name: <service>.<slot>.<task id>.
    let names = docker(&[
        "ps",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=com.docker.swarm.service.name={name}"),
    ])
    .expect("names");
    for n in names.lines() {
        let parts: Vec<&str> = n.split('.').collect();
        assert_eq!(parts.len(), 3, "{n}");
        assert_eq!(parts[0], name);
        assert_eq!(parts[2].len(), 25, "{n}");
    }

    d.ctl(&["service", "update", &name, "--image", IMAGE2]).ok();
    wait_for("containers of the new image", WAIT, || {
        (running_tasks(&d) == 2 && running_images(&name) == vec![IMAGE2.to_string(); 2])
            .then_some(())
    });

    d.ctl(&["service", "update", &name, "--replicas", "3"]).ok();
    wait_for("3 containers", WAIT, || {
        (running_tasks(&d) == 3 && running_images(&name).len() == 3).then_some(())
    });

    d.ctl(&["service", "rm", &name]).ok();
    wait_for("no container of ours left", WAIT, || {
        containers(&name).is_empty().then_some(())
    });
}
