//! The Docker executor through the real binaries: a service of the locally built test image
//! (`scripts/test-image.sh`; no registry here) runs, updates its image, scales, and leaves no
//! container behind once removed; containers on a swarm network are on the node's data plane
//! (service names answer virtual IPs, a process task on another node reaches them over VXLAN). Skipped, saying why, where no Docker engine answers; CI makes a
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

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a TCP server at `addr` sends before it closes, if it answers.
fn read_from(addr: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    (!text.is_empty()).then_some(text)
}

/// swarmctl's `--ports name:target:published` (HOST mode) is bound on the node: the task's
/// container answers on the published port, and nothing does once the service is gone.
#[test]
fn a_host_mode_published_port_answers_on_the_node() {
    if !engine_ready() {
        return;
    }
    let name = format!("itport{}", std::process::id());
    let port = free_port();
    let d = Swarmd::start_with(&["--executor", "docker"]);
    d.ctl(&[
        "service",
        "create",
        "--name",
        &name,
        "--image",
        IMAGE,
        "--ports",
        &format!("web:8080:{port}"),
        "--command",
        "/bin/sh",
        "--args",
        "-c,trap 'exit 0' TERM; while true; do echo hello | nc -l -p 8080; done & wait",
    ])
    .ok();
    let addr = format!("127.0.0.1:{port}");
    let text = wait_for("the service answering on its published port", WAIT, || {
        read_from(&addr)
    });
    assert_eq!(text.trim(), "hello");
    // The task's status reports the binding, as `task inspect` shows it.
    let task = d.ctl(&["task", "ls", "-q"]).ok().trim().to_string();
    let want = format!("0.0.0.0:{port}->8080/tcp");
    wait_for("the bound port in the task's status", WAIT, || {
        let out = d.ctl(&["task", "inspect", &task]).ok().to_string();
        out.lines()
            .any(|l| l.starts_with("Ports") && l.ends_with(&want))
            .then_some(())
    });
    d.ctl(&["service", "rm", &name]).ok();
    wait_for("no container of ours left", WAIT, || {
        containers(&name).is_empty().then_some(())
    });
    // Nothing accepts a connection on it any more (binding 127.0.0.1 would succeed even while
    // the engine forwards the port without a proxy listening).
    let socket: std::net::SocketAddr = addr.parse().expect("an address");
    wait_for("nothing answering on the port any more", WAIT, || {
        std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });
}

/// The address of the container `id` on each of its networks, as `network=ip` lines (none for
/// a container gone since it was listed: its failed task's, replaced).
fn addresses(id: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.IPAddress}}\n{{end}}",
        id,
    ])
    .unwrap_or_default()
}

/// Creates network `network` on `subnet` and a service `name` of two replicas on it, each
/// answering its hostname on TCP port 7000; the two containers' IDs and addresses on the
/// network once both have one.
fn two_listening_replicas(
    d: &Swarmd,
    name: &str,
    network: &str,
    subnet: &str,
) -> Vec<(String, String)> {
    d.ctl(&["network", "create", "--name", network, "--subnet", subnet])
        .ok();
    create_listener(d, name, network, "hostname", &["--replicas", "2"]);
    let ips: Vec<(String, String)> = wait_for("2 containers with addresses", WAIT, || {
        let found: Vec<(String, String)> = containers(name)
            .into_iter()
            .filter_map(|id| {
                let ip = address_in(&id, subnet)?;
                Some((id, ip))
            })
            .collect();
        (found.len() == 2).then_some(found)
    });
    assert_ne!(ips[0].1, ips[1].1, "two tasks, one address: {ips:?}");
    ips
}

/// Creates service `name` on `network` (with the `extra` flags), whose containers answer what
/// the shell command `reply` prints on TCP port 7000.
fn create_listener(d: &Swarmd, name: &str, network: &str, reply: &str, extra: &[&str]) {
    let script = format!("trap 'exit 0' TERM; while true; do {reply} | nc -l -p 7000; done & wait");
    let mut flags = vec!["--image", IMAGE, "--network", network];
    flags.extend_from_slice(extra);
    d.create_shell_service(name, &flags, &script);
}

/// The address of container `id` on its local network for the swarm network on `subnet`
/// (`a.b.c.0/24`).
fn address_in(id: &str, subnet: &str) -> Option<String> {
    let prefix = subnet
        .rsplit_once(".0/")
        .map_or(subnet, |(p, _)| p)
        .to_string()
        + ".";
    addresses(id)
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(n, ip)| n.starts_with("swarmd-") && ip.starts_with(&prefix))
        .map(|(_, ip)| ip.to_string())
}

/// Removes service `name` and waits for its containers and the local network of `network` to go.
fn remove_service_and_network(d: &Swarmd, name: &str, network: &str) {
    d.ctl(&["service", "rm", name]).ok();
    wait_for("no container of ours left", WAIT, || {
        containers(name).is_empty().then_some(())
    });
    wait_for("the local network removed", WAIT, || {
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            "label=swarmd.local-network=true",
            "--filter",
            &format!("name=swarmd-{network}-"),
        ])
        .filter(|out| out.trim().is_empty())
    });
}

/// Two replicas of a service on a swarm network, on one node: each container has an address of
/// the network's subnet on the node's local network for it, and one reaches the other over TCP
/// at its address, by its task name (an alias the executor gives the engine's embedded DNS) and
/// by the service name (the node's resolver's virtual IP, balanced over both). The local
/// network goes with the service.
#[test]
fn two_replicas_on_a_network_reach_each_other() {
    if !engine_ready() {
        return;
    }
    let name = format!("itnet{}", std::process::id());
    let network = format!("itnet{}n", std::process::id());
    let subnet_third = 1 + std::process::id() % 250;
    let d = Swarmd::start_with(&["--executor", "docker"]);
    let ips = two_listening_replicas(&d, &name, &network, &format!("10.215.{subnet_third}.0/24"));
    let (from, _) = &ips[0];
    let (to, to_ip) = &ips[1];
    let to_host = docker(&["inspect", "--format", "{{.Config.Hostname}}", to]).expect("hostname");
    let answer = wait_for("one replica reaching the other", WAIT, || {
        docker(&["exec", from, "nc", "-w", "2", to_ip, "7000"]).filter(|a| !a.trim().is_empty())
    });
    assert_eq!(answer.trim(), to_host.trim());
    // By name too: the other's task name (`<service>.<slot>.<task id>`, its one alias on the
    // network) is the other; the service name is one replica or the other.
    let aliases = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{range .Aliases}}{{.}} {{end}}{{end}}",
        to,
    ])
    .expect("aliases");
    let task_name = aliases
        .split_whitespace()
        .find(|a| a.starts_with(&format!("{name}.")) && a.split('.').count() == 3)
        .unwrap_or_else(|| panic!("no task name among the aliases {aliases:?}"))
        .to_string();
    let by_task_name = wait_for("one replica reaching the other by task name", WAIT, || {
        docker(&["exec", from, "nc", "-w", "2", &task_name, "7000"])
            .filter(|a| !a.trim().is_empty())
    });
    assert_eq!(by_task_name.trim(), to_host.trim(), "{task_name}");
    let from_host =
        docker(&["inspect", "--format", "{{.Config.Hostname}}", from]).expect("hostname");
    let by_service = wait_for("a replica reached by the service name", WAIT, || {
        docker(&["exec", from, "nc", "-w", "2", &name, "7000"]).filter(|a| !a.trim().is_empty())
    });
    assert!(
        [to_host.trim(), from_host.trim()].contains(&by_service.trim()),
        "{by_service:?} is neither replica"
    );
    remove_service_and_network(&d, &name, &network);
}

/// The service's virtual IP on `network`, from `swarmctl service inspect`'s "Virtual IPs" list
/// (`<network> : <ip>/<prefix>`), without the prefix length.
fn virtual_ip(d: &Swarmd, service: &str, network: &str) -> Option<String> {
    let out = d.ctl(&["service", "inspect", service]).ok().to_string();
    out.lines()
        .skip_while(|l| !l.starts_with("Virtual IPs"))
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim() == network)
        .map(|(_, ip)| ip.trim().split('/').next().unwrap_or_default().to_string())
}

/// The addresses `busybox nslookup <host>` printed for `host`, run in container `id` (through
/// the engine's embedded DNS, which forwards what it does not know to the nameserver the
/// executor gave: the node's resolver).
fn lookup(id: &str, host: &str) -> Option<Vec<String>> {
    let out = docker(&["exec", id, "busybox", "nslookup", host])?;
    let mut addrs: Vec<String> = out
        .split(&format!("Name:\t{host}"))
        .skip(1)
        .filter_map(|answer| {
            let line = answer.lines().find(|l| l.starts_with("Address:"))?;
            Some(line.trim_start_matches("Address:").trim().to_string())
        })
        .collect();
    addrs.sort();
    Some(addrs)
}

/// Containers on a swarm network are on the node's data plane (issue 18): the local network is
/// made on the data plane's bridge for it (`swbr-<vni>`, where the network's VXLAN device is),
/// the service name resolves to the service's virtual IP and `tasks.<service>` to both
/// replicas (the node's resolver, which the engine's embedded DNS forwards to), a connection to
/// the virtual IP reaches a replica, one replica still reaches the other after swarmd is killed
/// and started again (the containers it adopts are put back on the bridge made again), and the
/// bridge goes when the node stops.
#[test]
fn replicas_on_a_network_reach_the_service_at_its_virtual_ip() {
    if !engine_ready() {
        return;
    }
    let name = format!("itvip{}", std::process::id());
    let network = format!("itvip{}n", std::process::id());
    let subnet_third = 1 + std::process::id() % 250;
    let mut d = Swarmd::start_with(&["--executor", "docker"]);
    let ips = two_listening_replicas(&d, &name, &network, &format!("10.216.{subnet_third}.0/24"));
    let vip = wait_for("the service's virtual IP", WAIT, || {
        virtual_ip(&d, &name, &network)
    });
    assert!(
        !ips.iter().any(|(_, ip)| *ip == vip),
        "the VIP {vip} is a replica's address: {ips:?}"
    );
    let local = docker(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("name=swarmd-{network}-"),
    ])
    .expect("docker network ls");
    let bridge = docker(&[
        "network",
        "inspect",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        local.trim(),
    ])
    .expect("docker network inspect");
    let bridge = bridge.trim().to_string();
    let vni = bridge
        .strip_prefix("swbr-")
        .unwrap_or_else(|| panic!("local network {local:?} is on bridge {bridge:?}"));
    let ports = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .expect("ip link");
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert!(
        ports.contains(&format!("swvx-{vni}")),
        "no VXLAN device on {bridge}: {ports}"
    );
    let (from, _) = &ips[0];
    let vip_answer = wait_for("the service name answering its virtual IP", WAIT, || {
        lookup(from, &name).filter(|a| !a.is_empty())
    });
    assert_eq!(vip_answer, std::slice::from_ref(&vip), "{name}");
    let mut replicas: Vec<String> = ips.iter().map(|(_, ip)| ip.clone()).collect();
    replicas.sort();
    let tasks = wait_for("tasks.<service> answering both replicas", WAIT, || {
        lookup(from, &format!("tasks.{name}")).filter(|a| *a == replicas)
    });
    assert_eq!(tasks, replicas);
    let hosts: Vec<String> = ips
        .iter()
        .map(|(id, _)| {
            docker(&["inspect", "--format", "{{.Config.Hostname}}", id])
                .expect("hostname")
                .trim()
                .to_string()
        })
        .collect();
    for target in [vip.as_str(), name.as_str()] {
        let answer = wait_for("a replica answering at the virtual IP", WAIT, || {
            docker(&["exec", from, "nc", "-w", "2", target, "7000"])
                .filter(|a| !a.trim().is_empty())
        });
        assert!(
            hosts.contains(&answer.trim().to_string()),
            "{target} answered {answer:?}, neither replica {hosts:?}"
        );
    }
    // swarmd exits at once on SIGTERM, leaving the containers running; the next start removes
    // the devices the last run left and makes them again, and the containers it adopts are put
    // back on the new bridge.
    assert_eq!(d.signal_and_wait(15), Some(143));
    d.spawn();
    // The other replica, not the VIP: the VIP may pick the asking replica itself, which needs
    // no bridge.
    let other = &ips[1].1;
    let answer = wait_for("the other replica answering after a restart", WAIT, || {
        docker(&["exec", from, "nc", "-w", "2", other, "7000"]).filter(|a| !a.trim().is_empty())
    });
    assert_eq!(answer.trim(), hosts[1], "after the restart");
    remove_service_and_network(&d, &name, &network);
    d.stop();
    let left = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .expect("ip link");
    assert!(
        !left.status.success(),
        "{bridge} left after the node stopped"
    );
}

/// A network namespace `dx-<pid>` joined to this one by a veth: 192.168.<x>.1 here, .2 there;
/// removed on drop.
struct Peer {
    name: String,
    here: String,
    there: String,
}

impl Peer {
    fn create() -> Result<Peer, String> {
        let pid = std::process::id();
        let x = 20 + pid % 200;
        let peer = Peer {
            name: format!("dx-{pid}"),
            here: format!("192.168.{x}.1"),
            there: format!("192.168.{x}.2"),
        };
        let (h, t) = (format!("dxh{pid}"), format!("dxn{pid}"));
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        };
        ip(&["netns", "add", &peer.name])?;
        ip(&["-n", &peer.name, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &h, "type", "veth", "peer", "name", &t, "netns", &peer.name,
        ])?;
        ip(&["addr", "add", &format!("{}/24", peer.here), "dev", &h])?;
        ip(&["link", "set", &h, "up"])?;
        ip(&[
            "-n",
            &peer.name,
            "addr",
            "add",
            &format!("{}/24", peer.there),
            "dev",
            &t,
        ])?;
        ip(&["-n", &peer.name, "link", "set", &t, "up"])?;
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The veth goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A container on one node and a process task on another (issue 18): the process task, on a
/// worker in a network namespace of its own, reaches the container on the Docker node over the
/// VXLAN, at its address and at its service's virtual IP.
#[test]
fn a_process_task_on_another_node_reaches_a_container_across_the_overlay() {
    if !engine_ready() || !crate::overlay::busybox_ready() {
        return;
    }
    let peer = match Peer::create() {
        Ok(p) => p,
        Err(reason) => {
            println!("skipped: no network namespace: {reason}");
            return;
        }
    };
    let port = crate::harness::free_port().to_string();
    let listen = format!("{}:{port}", peer.here);
    let (m, code) = Swarmd::start_node_in(
        None,
        &[
            "--executor",
            "docker",
            "--hostname",
            "dock",
            "--listen-remote-api",
            &listen,
            "--data-path-addr",
            &peer.here,
        ],
        "node is ready",
        WAIT,
    );
    assert_eq!(code, None, "{}", m.log());
    let token = m.join_tokens().0;
    let worker_listen = format!("{}:{port}", peer.there);
    let (w, code) = Swarmd::start_node_in(
        Some(&peer.name),
        &[
            "--executor",
            "process",
            "--hostname",
            "proc",
            "--listen-remote-api",
            &worker_listen,
            "--data-path-addr",
            &peer.there,
            "--join-addr",
            &listen,
            "--join-token",
            &token,
        ],
        "worker node is ready",
        WAIT,
    );
    assert_eq!(code, None, "{}", w.log());
    wait_for("2 nodes ready", WAIT, || {
        (m.ctl(&["node", "ls"]).ok().matches("READY").count() == 2).then_some(())
    });
    let name = format!("itx{}", std::process::id());
    let network = format!("itx{}n", std::process::id());
    let subnet_third = 1 + std::process::id() % 250;
    let subnet = format!("10.218.{subnet_third}.0/24");
    m.ctl(&[
        "network", "create", "--name", &network, "--driver", "overlay", "--subnet", &subnet,
    ])
    .ok();
    create_listener(
        &m,
        &name,
        &network,
        "echo pong",
        &["--constraint", "node.hostname==dock"],
    );
    let container_ip = wait_for("the container's address", WAIT, || {
        containers(&name)
            .into_iter()
            .find_map(|id| address_in(&id, &subnet))
    });
    let vip = wait_for("the service's virtual IP", WAIT, || {
        virtual_ip(&m, &name, &network)
    });
    crate::overlay::probe_from(
        &m,
        &w,
        &network,
        "node.hostname==proc",
        &[container_ip, vip],
    );
    m.ctl(&["service", "rm", "probe"]).ok();
    remove_service_and_network(&m, &name, &network);
}
