//! The overlay data plane through the real binaries (issue 18, items 1 and 6): process-executor
//! tasks on a swarm network run in network namespaces of their own and reach each other at
//! their allocated addresses, on one node over its bridge and across nodes (each swarmd in a
//! network namespace of its own) over VXLAN; a task finds a service by name through its node's
//! resolver (`web`: the VIP; `tasks.web`: every replica), connections to the VIP spread over
//! every replica, a dead node's tasks leave the names and the VIP (the time it takes is printed),
//! and an ingress port answers on a node that runs no task of the service (the routing mesh),
//! a HOST-mode port only on the node its task runs on, forwarded into its sandbox (item 4);
//! on an encrypted network (`--opts encrypted=true`, issue 18 item 5) the traffic goes through
//! both nodes' WireGuard tunnels (their TUN devices' counters). Each test ends with a clean stop of every node and checks that none left a device or rule in
//! its namespace. Tasks are Debian's busybox-static (`nc`, `nslookup`, `ip`). Skipped, saying
//! why, without root, network namespaces or busybox-static.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ha_cluster::Netns;
use crate::harness::{Swarmd, node_cert, wait_for};

const WAIT: Duration = Duration::from_secs(90);
const BUSYBOX: &str = "/bin/busybox";
const PORT: u16 = 4242;
/// Where `web`'s tasks listen.
const WEB_PORT: u16 = 7000;

/// Whether busybox-static is here; prints why not.
pub(crate) fn busybox_ready() -> bool {
    if Path::new(BUSYBOX).exists() {
        return true;
    }
    println!("skipped: {BUSYBOX} missing (apt-get install busybox-static)");
    false
}

/// The cluster's services and tasks as `d` lists them (empty when it does not answer).
fn services_and_tasks(d: &Swarmd) -> (Vec<api::Service>, Vec<api::Task>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let Ok(channel) = ca::control_channel(&d.socket()) else {
            return Default::default();
        };
        let mut client = api::control_client::ControlClient::new(channel);
        let Ok(services) = client
            .list_services(api::ListServicesRequest::default())
            .await
        else {
            return Default::default();
        };
        let Ok(tasks) = client.list_tasks(api::ListTasksRequest::default()).await else {
            return Default::default();
        };
        (services.into_inner().services, tasks.into_inner().tasks)
    })
}

fn service_named<'a>(services: &'a [api::Service], name: &str) -> Option<&'a api::Service> {
    services.iter().find(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| a.name.as_str())
            == Some(name)
    })
}

/// A running task of a service: its node, and its addresses (without prefix) on each of its
/// networks, in the task's order.
#[derive(Debug, Clone)]
struct Replica {
    id: String,
    node: String,
    addrs: Vec<String>,
}

/// The running tasks of service `name`.
fn running(d: &Swarmd, name: &str) -> Vec<Replica> {
    let (services, tasks) = services_and_tasks(d);
    let Some(service) = service_named(&services, name) else {
        return Vec::new();
    };
    tasks
        .into_iter()
        .filter(|t| {
            t.service_id == service.id
                && t.status.as_ref().map(|s| s.state) == Some(api::TaskState::Running as i32)
        })
        .map(|t| Replica {
            id: t.id,
            node: t.node_id,
            addrs: t
                .networks
                .iter()
                .filter_map(|n| n.addresses.first()?.split('/').next().map(str::to_string))
                .collect(),
        })
        .collect()
}

/// The virtual IP of service `name` (without prefix), once allocated.
fn vip(d: &Swarmd, name: &str) -> Option<String> {
    let (services, _) = services_and_tasks(d);
    let vip = service_named(&services, name)?
        .endpoint
        .as_ref()?
        .virtual_ips
        .first()?
        .addr
        .split('/')
        .next()?
        .to_string();
    (!vip.is_empty()).then_some(vip)
}

/// Creates overlay network `net` and service `web` on it: `replicas` tasks placed by
/// `constraint`, each answering a connection on [`WEB_PORT`] with `pong` and its IPv4 addresses
/// (`pong 127.0.0.1/8 10.0.1.3/24 …`), so a client knows which replica it reached; `extra`
/// flags go to `service create`.
fn create_web(d: &Swarmd, net: &str, replicas: usize, constraint: &str, extra: &[&str]) {
    create_web_on(d, (net, &[]), replicas, constraint, extra);
}

/// The same on a network created with driver options `net.1` (`k=v`).
fn create_web_on(
    d: &Swarmd,
    net: (&str, &[&str]),
    replicas: usize,
    constraint: &str,
    extra: &[&str],
) {
    let (net, opts) = net;
    let mut network = vec!["network", "create", "--name", net, "--driver", "overlay"];
    for o in opts {
        network.extend(["--opts", o]);
    }
    d.ctl(&network).ok();
    let answer = format!("echo pong $({BUSYBOX} ip -o -4 addr | {BUSYBOX} awk '{{print $4}}')");
    let args = format!("nc,-ll,-p,{WEB_PORT},-e,{BUSYBOX},sh,-c,{answer}");
    let replicas = replicas.to_string();
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "busybox",
        "--network",
        net,
        "--replicas",
        &replicas,
        "--constraint",
        constraint,
        "--command",
        BUSYBOX,
        "--args",
        &args,
    ];
    create.extend(extra);
    d.ctl(&create).ok();
}

/// Waits until `count` tasks of `web` run, on every node of `nodes` (node IDs) and no other.
fn wait_web(d: &Swarmd, count: usize, nodes: &[String]) -> Vec<Replica> {
    wait_for(
        &format!("{count} web tasks running on {nodes:?}"),
        WAIT,
        || {
            let web = running(d, "web");
            let on: BTreeSet<&String> = web.iter().map(|r| &r.node).collect();
            let want: BTreeSet<&String> = nodes.iter().collect();
            (web.len() == count && on == want).then_some(web)
        },
    )
}

/// Creates service `probe` on `net`, placed by `constraint`, running `script` (a shell loop: no
/// commas, which would split swarmctl's `--args`).
fn create_probe(d: &Swarmd, net: &str, constraint: &str, script: &str) {
    d.ctl(&[
        "service",
        "create",
        "--name",
        "probe",
        "--image",
        "busybox",
        "--network",
        net,
        "--constraint",
        constraint,
        "--command",
        BUSYBOX,
        "--args",
        &format!("sh,-c,{script}"),
    ])
    .ok();
}

/// One line a task wrote: when (seconds since the epoch, as its node recorded it) and what.
struct Line {
    at: f64,
    text: String,
}

/// Every line the tasks on `on` wrote, from their `.log` records (`<secs>.<nanos> O|E <text>`;
/// their output FIFOs beside them never end), in each file's order.
fn task_lines(on: &Swarmd) -> Vec<Line> {
    let logs = on.state_dir().join("worker").join("process");
    std::fs::read_dir(&logs)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension() == Some("log".as_ref())).then_some(path)
        })
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| {
                    let mut parts = line.splitn(3, ' ');
                    let at = parts.next()?.parse().ok()?;
                    let kind = parts.next()?;
                    (kind == "O" || kind == "E").then(|| Line {
                        at,
                        text: parts.next().unwrap_or("").to_string(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The last few lines of `lines`, for a failure message.
fn tail(lines: &[Line]) -> String {
    let start = lines.len().saturating_sub(40);
    lines[start..]
        .iter()
        .map(|l| format!("{:.3} {}\n", l.at, l.text))
        .collect()
}

/// Creates service `probe` on `net` (placed by `constraint`, on node `on`), which asks each of
/// `addrs` on [`WEB_PORT`] once a second and prints what it heard; returns once its output shows
/// that every address answered.
pub(crate) fn probe_from(d: &Swarmd, on: &Swarmd, net: &str, constraint: &str, addrs: &[String]) {
    let probes: Vec<String> = addrs
        .iter()
        .map(|a| format!("echo to-{a} $({BUSYBOX} nc -w 2 {a} {WEB_PORT} </dev/null)"))
        .collect();
    let script = format!(
        "while true; do {}; {BUSYBOX} sleep 1; done",
        probes.join("; ")
    );
    create_probe(d, net, constraint, &script);
    let start = Instant::now();
    loop {
        let lines = task_lines(on);
        let heard = |a: &String| {
            lines
                .iter()
                .any(|l| l.text.starts_with(&format!("to-{a} pong")))
        };
        if addrs.iter().all(heard) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the client did not hear pong from every web task {addrs:?}; task output:\n{}\nnode log:\n{}",
            tail(&lines),
            on.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One answer the probe of [`probe_web`] printed.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was printed, or for a connection when it started (seconds since the epoch).
    at: f64,
    /// `web` or `tasks.web` (a lookup of that name), `byname` or `byvip` (a connection to
    /// `web:7000` or to the VIP).
    what: String,
    /// The addresses the lookup answered, or those of the replica that answered the connection
    /// (empty if none did).
    addrs: BTreeSet<String>,
}

/// The addresses in `nslookup`'s answer (its lines joined): those after `Address:` (the server's
/// own comes with `:53`, and is left out).
fn answer_addrs(text: &str) -> BTreeSet<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "Address:" && w[1].parse::<Ipv4Addr>().is_ok())
        .map(|w| w[1].to_string())
        .collect()
}

/// The addresses a `web` replica answered with (`pong 127.0.0.1/8 10.0.1.3/24`), loopback left
/// out; empty when the answer is not a pong.
fn replica_addrs(text: &str) -> BTreeSet<String> {
    let mut words = text.split_whitespace();
    if words.next() != Some("pong") {
        return BTreeSet::new();
    }
    words
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect()
}

/// Creates service `probe` on `net` on node-1, which in one loop asks its resolver for `web` and
/// `tasks.web`, and in another connects to `web:7000` and to `vip:7000` (a connection that hangs
/// delays no lookup), each round about 0.1 s after the last ([`samples`] reads them).
fn probe_web(d: &Swarmd, net: &str, vip: &str) {
    let lookup = |name: &str| {
        format!("echo {name} $({BUSYBOX} nslookup -type=a {name} 2>&1 | {BUSYBOX} tr '\\n' ' ')")
    };
    let connect = |tag: &str, to: &str| {
        format!("echo {tag}-start; echo {tag} $({BUSYBOX} nc -w 1 {to} {WEB_PORT} </dev/null 2>&1)")
    };
    let pause = format!("{BUSYBOX} usleep 100000");
    let script = format!(
        "while true; do {}; {}; {pause}; done & while true; do {}; {}; {pause}; done",
        lookup("web"),
        lookup("tasks.web"),
        connect("byname", "web"),
        connect("byvip", vip),
    );
    create_probe(d, net, "node.hostname==node-1", &script);
}

/// The answers the probe of [`probe_web`] on node `on` printed so far; a connection's at the time
/// it started (the `<tag>-start` line before it), as a failed one ends a second later.
fn samples(on: &Swarmd) -> Vec<Sample> {
    let mut started = std::collections::HashMap::new();
    task_lines(on)
        .into_iter()
        .filter_map(|line| {
            let (what, rest) = line.text.split_once(' ').unwrap_or((&line.text, ""));
            if let Some(tag) = what.strip_suffix("-start") {
                started.insert(tag.to_string(), line.at);
                return None;
            }
            let (at, addrs) = match what {
                "web" | "tasks.web" => (line.at, answer_addrs(rest)),
                "byname" | "byvip" => (
                    started.get(what).copied().unwrap_or(line.at),
                    replica_addrs(rest),
                ),
                _ => return None,
            };
            Some(Sample {
                at,
                what: what.to_string(),
                addrs,
            })
        })
        .collect()
}

/// The samples of any kind in `what` (`web|tasks.web`), after `since`.
fn of(samples: &[Sample], what: &str, since: f64) -> Vec<Sample> {
    samples
        .iter()
        .filter(|x| what.split('|').any(|w| w == x.what) && x.at > since)
        .cloned()
        .collect()
}

/// `n` nodes, each swarmd in a network namespace of its own with its data path on the
/// namespace's address (node-1 the manager, the others workers joined to it), plus `outside`
/// namespaces where no swarmd runs (index `n` on). The nodes are dropped before the namespaces.
struct Mesh {
    nodes: Vec<Swarmd>,
    net: Netns,
}

impl Mesh {
    /// `None` (with the reason printed) when the tests cannot run here.
    fn start(n: usize, outside: usize) -> Option<Mesh> {
        if !busybox_ready() {
            return None;
        }
        let net = match Netns::create(n + outside) {
            Ok(net) => net,
            Err(reason) => {
                println!("skipped: network namespaces unavailable: {reason}");
                return None;
            }
        };
        let addr = |i: usize| format!("{}:{PORT}", net.addr(i));
        let mut nodes: Vec<Swarmd> = Vec::new();
        let mut token = String::new();
        for i in 0..n {
            let hostname = format!("node-{}", i + 1);
            let (listen, data, join) = (addr(i), net.addr(i), addr(0));
            let mut args = vec![
                "--executor",
                "process",
                "--raft-tick-ms",
                "100",
                "--hostname",
                &hostname,
                "--listen-remote-api",
                &listen,
                "--data-path-addr",
                &data,
            ];
            if i > 0 {
                args.extend(["--join-addr", &join, "--join-token", &token]);
            }
            let ready = if i == 0 {
                "node is ready"
            } else {
                "worker node is ready"
            };
            let (node, code) = Swarmd::start_node_in(Some(net.name(i)), &args, ready, WAIT);
            assert_eq!(code, None, "{}", node.log());
            if i == 0 {
                token = node.join_tokens().0;
            }
            nodes.push(node);
        }
        let mesh = Mesh { nodes, net };
        wait_for(&format!("{n} nodes ready"), WAIT, || {
            (mesh
                .manager()
                .ctl(&["node", "ls"])
                .ok()
                .matches("READY")
                .count()
                == n)
                .then_some(())
        });
        Some(mesh)
    }

    fn manager(&self) -> &Swarmd {
        &self.nodes[0]
    }

    /// The node ID of node `i`.
    fn node_id(&self, i: usize) -> String {
        node_cert(&self.nodes[i].state_dir()).node_id
    }

    /// Waits until each of `nodes` has applied a view listing a network (its data plane logs
    /// each view it applies): the leader's NetworkPlane stream reached it.
    fn wait_views(&self, nodes: &[usize]) {
        for &i in nodes {
            wait_for(&format!("a network view on node-{}", i + 1), WAIT, || {
                self.nodes[i]
                    .log()
                    .lines()
                    .any(|l| l.contains("network view applied") && !l.contains("networks=0"))
                    .then_some(())
            });
        }
    }

    /// Runs `args` in namespace `i` (`ip netns exec`).
    fn exec_in(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.net.name(i)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// What the data plane may leave in namespace `i`: its devices (`swbr-`, `swvx-`, `swv`
    /// veths, the WireGuard tunnel's `swwg-`), nftables tables `swarmd` and `swarmd-wg-<port>`,
    /// and the routing rules of the tunnel, one per line.
    fn leftovers(&self, i: usize) -> Vec<String> {
        let links = self.exec_in(i, &["ip", "-o", "link", "show"]);
        let tables = self.exec_in(i, &["nft", "list", "tables"]);
        let rules = self.exec_in(i, &["ip", "rule", "show"]);
        let mut left: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| {
                [": swbr-", ": swvx-", ": swv", ": swwg-"]
                    .iter()
                    .any(|p| l.contains(p))
            })
            .map(str::to_string)
            .collect();
        left.extend(
            String::from_utf8_lossy(&tables.stdout)
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .last()
                        .is_some_and(|t| t == "swarmd" || t.starts_with("swarmd-wg-"))
                })
                .map(str::to_string),
        );
        left.extend(
            String::from_utf8_lossy(&rules.stdout)
                .lines()
                .filter(|l| l.contains("port 4788"))
                .map(str::to_string),
        );
        left
    }

    /// Stops every node still running (SIGINT), workers first, and checks each exited 0 and
    /// left nothing of its data plane in its namespace (devices, rules) nor a task sandbox's
    /// mount point `/run/netns/swt-<task id:12>`.
    fn stop_clean(&mut self) {
        let (_, tasks) = services_and_tasks(self.manager());
        assert!(!tasks.is_empty(), "the manager lists no task");
        // The check sees what a data plane makes: a node running tasks has some.
        let before: usize = (0..self.nodes.len()).map(|i| self.leftovers(i).len()).sum();
        assert!(
            before > 0,
            "no data plane device or rule seen while the nodes run"
        );
        for i in (0..self.nodes.len()).rev() {
            if !self.nodes[i].running() {
                continue;
            }
            let code = self.nodes[i].stop();
            assert_eq!(
                code,
                Some(0),
                "node-{} stops; log:\n{}",
                i + 1,
                self.nodes[i].log()
            );
            let left = self.leftovers(i);
            assert!(left.is_empty(), "node-{} left {left:#?}", i + 1);
        }
        let sandboxes: Vec<String> = tasks
            .iter()
            .map(|t| format!("/run/netns/swt-{}", &t.id[..12]))
            .filter(|path| Path::new(path).exists())
            .collect();
        assert!(sandboxes.is_empty(), "sandboxes left: {sandboxes:?}");
    }
}

#[test]
fn tasks_on_one_node_reach_each_other_at_their_overlay_addresses() {
    let Some(mut mesh) = Mesh::start(1, 0) else {
        return;
    };
    let d = mesh.manager();
    create_web(d, "ovone", 2, "node.hostname==node-1", &[]);
    let web = wait_web(d, 2, &[mesh.node_id(0)]);
    let addrs: Vec<String> = web.into_iter().map(|r| r.addrs[0].clone()).collect();
    probe_from(d, d, "ovone", "node.hostname==node-1", &addrs);
    mesh.stop_clean();
}

#[test]
fn a_task_on_one_node_reaches_replicas_on_the_others_across_the_overlay() {
    let Some(mut mesh) = Mesh::start(3, 0) else {
        return;
    };
    let m = mesh.manager();
    create_web(m, "ovacross", 2, "node.hostname!=node-1", &[]);
    let web = wait_web(m, 2, &[mesh.node_id(1), mesh.node_id(2)]);
    mesh.wait_views(&[1, 2]);
    let addrs: Vec<String> = web.into_iter().map(|r| r.addrs[0].clone()).collect();
    probe_from(m, m, "ovacross", "node.hostname==node-1", &addrs);
    mesh.stop_clean();
}

/// Service `web` (`replicas` tasks on node-2 and node-3) on network `ovmesh` and a `probe` on
/// node-1 ([`probe_web`]) in a new 3-node mesh; returns once the probe has resolved `web` to the
/// VIP and `tasks.web` to every replica, reached a replica by name, and reached each replica
/// through the VIP. Also returns the replicas and the VIP.
fn web_with_probe(replicas: usize) -> Option<(Mesh, Vec<Replica>, String)> {
    let mesh = Mesh::start(3, 0)?;
    let m = mesh.manager();
    create_web(m, "ovmesh", replicas, "node.hostname!=node-1", &[]);
    let web = wait_web(m, replicas, &[mesh.node_id(1), mesh.node_id(2)]);
    mesh.wait_views(&[0, 1, 2]);
    let vip = wait_for("web's VIP", WAIT, || vip(m, "web"));
    let addrs: BTreeSet<String> = web.iter().map(|r| r.addrs[0].clone()).collect();
    probe_web(m, "ovmesh", &vip);
    let start = Instant::now();
    loop {
        let seen = samples(m);
        let any = |what: &str, f: &dyn Fn(&BTreeSet<String>) -> bool| {
            of(&seen, what, 0.0).iter().any(|x| f(&x.addrs))
        };
        let done = any("web", &|a| *a == BTreeSet::from([vip.clone()]))
            && any("tasks.web", &|a| *a == addrs)
            && any("byname", &|a| !a.is_empty())
            && addrs.iter().all(|addr| any("byvip", &|a| a.contains(addr)));
        if done {
            return Some((mesh, web, vip));
        }
        assert!(
            start.elapsed() < WAIT,
            "the probe did not find web at {vip} and all of {addrs:?}; last answers:\n{:#?}\nnode log:\n{}",
            &seen[seen.len().saturating_sub(12)..],
            m.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Seconds since the epoch, as the task records count them.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_secs_f64()
}

/// The process tasks `swarmd` started: its children that lead a process group of their own (not
/// an `nft` it may be running), from /proc.
fn task_processes(swarmd: i32) -> Vec<i32> {
    let parent = swarmd.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let child: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid pgrp …`: the comm may hold spaces, not a `) `.
            let mut fields = stat.rsplit_once(") ")?.1.split_whitespace().skip(1);
            let (ppid, group) = (fields.next()?, fields.next()?);
            (ppid == parent && group == child.to_string()).then_some(child)
        })
        .collect()
}

/// Whether process `pid` exists (a zombie counts).
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILL to process group `group`, with `kill(1)`, keeping this crate free of unsafe code.
fn kill_group(group: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
}

#[test]
fn a_task_finds_web_by_name_and_reaches_every_replica_through_its_vip() {
    let Some((mut mesh, web, vip)) = web_with_probe(3) else {
        return;
    };
    // Every answer came from a replica of web: the names and the VIP lead nowhere else.
    let replicas: Vec<BTreeSet<String>> = web
        .iter()
        .map(|r| r.addrs.iter().cloned().collect())
        .collect();
    let seen = samples(mesh.manager());
    let mut hits = vec![0; replicas.len()];
    for x in &seen {
        match x.what.as_str() {
            "web" => assert!(
                x.addrs.is_empty() || x.addrs == BTreeSet::from([vip.clone()]),
                "{x:?}"
            ),
            "byname" | "byvip" if !x.addrs.is_empty() => {
                let i = replicas
                    .iter()
                    .position(|addrs| *addrs == x.addrs)
                    .unwrap_or_else(|| panic!("an answer from no replica of {replicas:?}: {x:?}"));
                hits[i] += 1;
            }
            _ => {}
        }
    }
    println!("answers per replica (by name and VIP): {hits:?}");
    mesh.stop_clean();
}

#[test]
fn a_dead_nodes_tasks_leave_the_names_and_the_vip() {
    let Some((mut mesh, web, _vip)) = web_with_probe(4) else {
        return;
    };
    let node3 = mesh.node_id(2);
    let dead: BTreeSet<String> = web
        .iter()
        .filter(|r| r.node == node3)
        .map(|r| r.addrs[0].clone())
        .collect();
    let swarmd = mesh.nodes[2].pid();
    let tasks = task_processes(swarmd);
    assert_eq!(tasks.len(), dead.len(), "node-3's task processes {tasks:?}");

    // Node-3 dies: its swarmd, then its tasks (a process task outlives a killed swarmd, as a
    // container outlives a killed dockerd's shim: the test kills them itself).
    let killed_at = now();
    mesh.nodes[2].kill9();
    let survivors = tasks.iter().filter(|&&p| alive(p)).count();
    println!(
        "after SIGKILL of node-3's swarmd, {survivors} of its {} task processes still ran",
        tasks.len()
    );
    for &group in &tasks {
        kill_group(group);
    }

    // Until both the names and the VIP have left node-3's tasks for good: ten answers in a row
    // to `tasks.web` naming none of them, and ten connections to the VIP (by name or address) in
    // a row none of which failed or reached one.
    const STEADY: usize = 10;
    let m = mesh.manager();
    let mut down_at = None;
    let bad = |x: &Sample| x.addrs.is_empty() || !x.addrs.is_disjoint(&dead);
    let (dns, vip) = wait_for(
        "node-3's tasks out of tasks.web and of the VIP",
        Duration::from_secs(120),
        || {
            if down_at.is_none()
                && m.ctl(&["node", "ls"])
                    .stdout
                    .lines()
                    .any(|l| l.contains("node-3") && l.contains("DOWN"))
            {
                down_at = Some(now() - killed_at);
            }
            let seen = samples(m);
            // (last bad answer, first of the good ones after it), since the kill.
            let settled = |what: &str| {
                let after = of(&seen, what, killed_at);
                let last_bad = after.iter().rposition(bad);
                let from = last_bad.map_or(0, |i| i + 1);
                (after.len() >= from + STEADY).then(|| {
                    let last = last_bad.map_or(0.0, |i| after[i].at - killed_at);
                    (last, after[from].at - killed_at)
                })
            };
            Some((settled("tasks.web")?, settled("byname|byvip")?))
        },
    );
    let down = down_at.map_or("not seen".to_string(), |t| format!("{t:.1} s"));
    println!(
        "kill -9 of node-3 -> its tasks out of tasks.web: {:.1} s (last listed at {:.1} s); \
         out of the VIP: {:.1} s (last connection failing or reaching one at {:.1} s); \
         node-3 DOWN in node ls by {down}",
        dns.1, dns.0, vip.1, vip.0
    );

    // Node-3 comes back: it removes what its killed run left (the mount points of its dead
    // tasks' sandboxes, still here), and the clean stop checks that nothing stays.
    let left: Vec<String> = web
        .iter()
        .filter(|r| r.node == node3)
        .map(|r| format!("/run/netns/swt-{}", &r.id[..12]))
        .collect();
    assert!(left.iter().all(|p| Path::new(p).exists()), "{left:?}");
    let back = mesh.nodes[2].spawn_until("worker node is ready", WAIT);
    assert_eq!(back, None, "node-3 restarts; log:\n{}", mesh.nodes[2].log());
    mesh.stop_clean();
}

#[test]
fn an_ingress_port_answers_on_a_node_that_runs_no_task_of_it() {
    // Namespace 3 is a client outside the swarm.
    let Some(mut mesh) = Mesh::start(3, 1) else {
        return;
    };
    let m = mesh.manager();
    create_web(
        m,
        "ovpub",
        2,
        "node.hostname==node-2",
        &["--ports", "web:7000:30080", "--publish-mode", "ingress"],
    );
    let web = wait_web(m, 2, &[mesh.node_id(1)]);
    mesh.wait_views(&[0, 1, 2]);
    let replicas: BTreeSet<String> = web.iter().flat_map(|r| r.addrs.clone()).collect();
    // From the client outside to node-1 and node-3, and on node-1 from the node itself, at its
    // address and at 127.0.0.1.
    let (node1, node3) = (mesh.net.addr(0), mesh.net.addr(2));
    for (from, to) in [
        (3, &node1),
        (3, &node3),
        (0, &node1),
        (0, &"127.0.0.1".to_string()),
    ] {
        let heard = wait_for(
            &format!("web's answer at {to}:30080 from namespace {from}"),
            WAIT,
            || {
                let out = mesh.exec_in(from, &[BUSYBOX, "nc", "-w", "2", to, "30080"]);
                let heard = replica_addrs(&String::from_utf8_lossy(&out.stdout));
                (!heard.is_disjoint(&replicas)).then_some(heard)
            },
        );
        println!("{to}:30080 from namespace {from} answered by {heard:?}");
    }
    mesh.stop_clean();
}

/// A child process killed (and reaped) when dropped, also when a test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connection from namespace `from` to `to:port` is refused (busybox nc's
/// message), and nc's output when it is not.
fn refused(mesh: &Mesh, from: usize, to: &str, port: u16) -> Result<(), String> {
    let out = mesh.exec_in(from, &[BUSYBOX, "nc", "-w", "2", to, &port.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("refused") {
        Ok(())
    } else {
        Err(format!(
            "stdout {:?}, stderr {err:?}",
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

#[test]
fn a_host_port_answers_only_on_the_node_running_its_task_until_it_goes() {
    // Namespace 3 is a client outside the swarm.
    let Some(mut mesh) = Mesh::start(3, 1) else {
        return;
    };
    let m = mesh.manager();
    println!("--- something on node-2 holds the published port: the task fails there");
    let holder = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                mesh.net.name(1),
                BUSYBOX,
                "nc",
                "-l",
                "-p",
                "30090",
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("a listener on node-2"),
    );
    wait_for("the listener on node-2", WAIT, || {
        mesh.exec_in(1, &[BUSYBOX, "netstat", "-ltn"])
            .stdout
            .windows(6)
            .any(|w| w == b":30090")
            .then_some(())
    });
    // HOST mode is swarmctl's default; the task listens on its target port in its sandbox.
    create_web(
        m,
        "ovhost",
        1,
        "node.hostname==node-2",
        &["--ports", "web:7000:30090"],
    );
    let err = wait_for("a web task failing on the taken port", WAIT, || {
        let (_, tasks) = services_and_tasks(m);
        tasks
            .iter()
            .filter_map(|t| t.status.as_ref())
            .find(|s| s.err.contains("30090"))
            .map(|s| s.err.clone())
    });
    assert!(
        err.contains("host port 30090/tcp is already in use on this node"),
        "{err}"
    );
    drop(holder);
    let web = wait_web(m, 1, &[mesh.node_id(1)]);
    let replicas: BTreeSet<String> = web.iter().flat_map(|r| r.addrs.clone()).collect();
    // Another service keeps a task on the network once web is gone (for the clean stop).
    create_probe(
        m,
        "ovhost",
        "node.hostname==node-2",
        "while true; do sleep 1; done",
    );
    let (node1, node2, node3) = (mesh.net.addr(0), mesh.net.addr(1), mesh.net.addr(2));
    let localhost = "127.0.0.1".to_string();

    println!("--- node-2 answers, from outside and from itself at 127.0.0.1");
    for (from, to) in [(3, &node2), (1, &node2), (1, &localhost)] {
        let heard = wait_for(
            &format!("web's answer at {to}:30090 from namespace {from}"),
            WAIT,
            || {
                let out = mesh.exec_in(from, &[BUSYBOX, "nc", "-w", "2", to, "30090"]);
                let heard = replica_addrs(&String::from_utf8_lossy(&out.stdout));
                (!heard.is_disjoint(&replicas)).then_some(heard)
            },
        );
        println!("{to}:30090 from namespace {from} answered by {heard:?}");
    }

    println!("--- node-1 and node-3 run no task of web: refused there");
    for (from, to) in [(3, &node1), (3, &node3), (0, &localhost), (2, &localhost)] {
        if let Err(got) = refused(&mesh, from, to, 30090) {
            panic!("{to}:30090 from namespace {from} is not refused: {got}");
        }
    }

    println!("--- web is removed: node-2 refuses too");
    m.ctl(&["service", "rm", "web"]).ok();
    for (from, to) in [(3, &node2), (1, &localhost)] {
        wait_for(
            &format!("{to}:30090 refused from namespace {from}"),
            WAIT,
            || refused(&mesh, from, to, 30090).ok(),
        );
    }
    mesh.stop_clean();
}

/// The packets the kernel sent into the WireGuard TUN device of node `i` (to be sealed) and the
/// ones swarmd wrote into it (opened): its TX and RX counters.
fn tunnel_packets(mesh: &Mesh, i: usize) -> (u64, u64) {
    let out = mesh.exec_in(i, &["ip", "-s", "link", "show", "swwg-51820"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let after = |header: &str| -> u64 {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(header))
            .and_then(|i| lines.get(i + 1)?.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (after("TX:"), after("RX:"))
}

#[test]
fn an_encrypted_network_carries_tasks_across_nodes_through_the_wireguard_tunnel() {
    let Some(mut mesh) = Mesh::start(2, 0) else {
        return;
    };
    let m = mesh.manager();
    create_web_on(
        m,
        ("ovsealed", &["encrypted=true"]),
        1,
        "node.hostname==node-2",
        &[],
    );
    let web = wait_web(m, 1, &[mesh.node_id(1)]);
    mesh.wait_views(&[1]);
    let before: Vec<(u64, u64)> = (0..2).map(|i| tunnel_packets(&mesh, i)).collect();
    let addrs: Vec<String> = web.into_iter().map(|r| r.addrs[0].clone()).collect();
    probe_from(m, m, "ovsealed", "node.hostname==node-1", &addrs);
    // The probe's packets went through both nodes' tunnels, sealed and opened.
    for (i, (tx, rx)) in before.into_iter().enumerate() {
        let (tx2, rx2) = tunnel_packets(&mesh, i);
        assert!(
            tx2 > tx && rx2 > rx,
            "node-{}: TUN TX {tx} -> {tx2}, RX {rx} -> {rx2}\n{}",
            i + 1,
            mesh.nodes[i].log()
        );
    }
    mesh.stop_clean();
}
