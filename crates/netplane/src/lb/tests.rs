//! The tables built from views (no privileges needed), then the rules at work between network
//! namespaces made for each test (root only; `skipped: <reason>` otherwise). The namespaces and
//! veth pairs are set up with `ip` (test fixtures only);
//! their names carry `lb` and the test process ID, and are removed at the end.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use api::netplane::{Endpoint, NetworkView, PublishedPort, ServiceView, Subnet};

use super::*;
use netlink_packet_netfilter::conntrack::Protocol as conntrack_proto;

fn endpoint(task: &str, service: &str, addr: &str, running: bool) -> Endpoint {
    Endpoint {
        task_id: task.into(),
        service_id: service.into(),
        addr: addr.into(),
        running,
        ..Default::default()
    }
}

fn service(id: &str, vip: &str) -> ServiceView {
    ServiceView {
        id: id.into(),
        name: id.into(),
        vip: vip.into(),
        ..Default::default()
    }
}

fn network(id: &str, services: Vec<ServiceView>, endpoints: Vec<Endpoint>) -> NetworkView {
    NetworkView {
        id: id.into(),
        name: id.into(),
        services,
        endpoints,
        ..Default::default()
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("a test address")
}

/// The (VIP, backends) pairs a sandbox table balances; no backends: refused.
fn vips(table: &Table) -> Vec<(Ipv4Addr, Vec<Ipv4Addr>)> {
    let maps: BTreeMap<_, _> = table.maps.iter().cloned().collect();
    let mut vips: Vec<_> = table
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .map(|rule| match rule.as_slice() {
            [
                Expr::Ipv4,
                Expr::Daddr(vip),
                Expr::DnatSpread {
                    set,
                    size,
                    port: None,
                },
            ] => {
                assert_eq!(*size as usize, maps[set].len());
                (*vip, maps[set].clone())
            }
            [Expr::Ipv4, Expr::Daddr(vip), Expr::Reject] => (*vip, Vec::new()),
            other => panic!("unexpected rule {other:?}"),
        })
        .collect();
    vips.sort();
    vips
}

#[test]
fn sandbox_table_balances_each_vip_over_running_tasks_of_its_networks() {
    let view = NodeView {
        version: 1,
        networks: vec![
            network(
                "n1",
                vec![
                    service("web", "10.0.1.2/24"),
                    service("idle", "10.0.1.3/24"),
                    ServiceView {
                        dnsrr: true,
                        ..service("rr", "")
                    },
                ],
                vec![
                    endpoint("t2", "web", "10.0.1.8/24", true),
                    endpoint("t1", "web", "10.0.1.7/24", true),
                    endpoint("t3", "web", "10.0.1.9/24", false),
                    endpoint("t4", "idle", "10.0.1.10/24", false),
                    endpoint("t5", "rr", "10.0.1.11/24", true),
                ],
            ),
            network(
                "n2",
                vec![service("db", "10.0.2.2/24")],
                vec![endpoint("t6", "db", "10.0.2.5/24", true)],
            ),
        ],
    };
    let table = sandbox_table(&["n1".into()], &view).expect("web has running tasks");
    assert_eq!(
        vips(&table),
        vec![
            (ip("10.0.1.2"), vec![ip("10.0.1.7"), ip("10.0.1.8")]),
            (ip("10.0.1.3"), vec![]),
        ],
        "stopped tasks, DNSRR services and other networks' services are left out; a VIP \
         with no running task refuses"
    );
    let both = sandbox_table(&["n1".into(), "n2".into()], &view).expect("rules");
    assert_eq!(vips(&both).len(), 3);
    assert_eq!(sandbox_table(&["n3".into()], &view), None);
}

fn ingress_view(node_addr: &str, backends: &[(&str, bool)]) -> NodeView {
    NodeView {
        version: 1,
        networks: vec![NetworkView {
            ingress: true,
            vni: 4096,
            node_addr: node_addr.into(),
            subnets: vec![Subnet {
                cidr: "10.255.0.0/16".into(),
                gateway: "10.255.0.1".into(),
            }],
            ..network(
                "ingress",
                vec![ServiceView {
                    ingress_ports: vec![
                        PublishedPort {
                            protocol: "tcp".into(),
                            target_port: 8080,
                            published_port: 30080,
                        },
                        PublishedPort {
                            protocol: "udp".into(),
                            target_port: 5353,
                            published_port: 30053,
                        },
                    ],
                    ..service("web", "10.255.0.4/16")
                }],
                backends
                    .iter()
                    .enumerate()
                    .map(|(i, (addr, running))| endpoint(&format!("t{i}"), "web", addr, *running))
                    .collect(),
            )
        }],
    }
}

#[test]
fn node_table_publishes_ingress_ports_and_translates_the_source() {
    let view = ingress_view(
        "10.255.0.2/16",
        &[("10.255.0.9/16", true), ("10.255.0.8/16", false)],
    );
    let table =
        node_table(&view, &BTreeMap::new(), &[]).expect("a published port with a running task");
    assert_eq!(
        table.maps,
        vec![
            ("backends0".to_owned(), vec![ip("10.255.0.9")]),
            ("backends1".to_owned(), vec![ip("10.255.0.9")]),
        ]
    );
    let names: Vec<_> = table
        .chains
        .iter()
        .map(|c| (c.name.as_str(), c.hook))
        .collect();
    assert_eq!(
        names,
        vec![
            ("mesh-in", Hook::Prerouting),
            ("mesh-local", Hook::Output),
            ("mesh-source", Hook::Postrouting),
            ("isolation", Hook::Forward),
            ("loopback-guard", Hook::Prerouting),
        ]
    );
    assert_eq!(
        table.chains[4].rules,
        vec![vec![
            Expr::Ipv4,
            Expr::Iifname("lo".into(), false),
            Expr::DaddrIn(ip("127.0.0.0"), 8),
            Expr::Drop,
        ]],
        "route_localnet on the bridges lets nothing from them reach the loopback"
    );
    assert_eq!(
        table.chains[0].rules[0],
        vec![Expr::Ipv4, Expr::Daddr(ip("10.255.0.1")), Expr::Return],
        "the gateway (the resolver's address) is not the mesh's"
    );
    assert_eq!(
        table.chains[0].rules[2],
        vec![
            Expr::Ipv4,
            Expr::DaddrLocal,
            Expr::Dport(L4::Udp, 30053),
            Expr::DnatSpread {
                set: "backends1".into(),
                size: 1,
                port: Some(5353)
            },
        ]
    );
    let snat = |l4, port| {
        vec![
            Expr::Ipv4,
            Expr::CtDnat,
            Expr::CtOriginalDport(l4, port),
            Expr::DaddrIn(ip("10.255.0.0"), 16),
            Expr::Snat(ip("10.255.0.2")),
        ]
    };
    assert_eq!(
        table.chains[2].rules,
        vec![snat(L4::Tcp, 30080), snat(L4::Udp, 30053)]
    );

    // No running task: the published ports are refused (not left to what the host has there),
    // nothing is translated.
    let none_running = ingress_view("10.255.0.2/16", &[("10.255.0.9/16", false)]);
    let closed = node_table(&none_running, &BTreeMap::new(), &[]).expect("refusing rules");
    assert!(closed.maps.is_empty(), "{closed:?}");
    let hooks: Vec<_> = closed.chains.iter().map(|c| (c.hook, c.nat)).collect();
    assert_eq!(hooks, vec![(Hook::Input, false), (Hook::Output, false)]);
    assert_eq!(
        closed.chains[0].rules[1..],
        [
            vec![
                Expr::Ipv4,
                Expr::DaddrLocal,
                Expr::Dport(L4::Tcp, 30080),
                Expr::Reject
            ],
            vec![
                Expr::Ipv4,
                Expr::DaddrLocal,
                Expr::Dport(L4::Udp, 30053),
                Expr::Reject
            ],
        ]
    );
    let no_node_addr = ingress_view("", &[("10.255.0.9/16", true)]);
    assert_eq!(node_table(&no_node_addr, &BTreeMap::new(), &[]), None);
    // A published port swarmd uses itself (the VXLAN port) is left out.
    let reserved = node_table(&view, &BTreeMap::new(), &[30053]).expect("the TCP port");
    assert_eq!(reserved.maps.len(), 1, "{reserved:?}");
}

/// Task `t1`'s HOST-mode ports 30090/tcp -> 8080 and 30053/udp -> 5353, at 10.233.0.5 on the
/// network of bridge `swbr-4097` (gateway 10.233.0.1).
fn host_forwards() -> BTreeMap<String, HostForward> {
    BTreeMap::from([(
        "t1".to_owned(),
        HostForward {
            addr: ip("10.233.0.5"),
            prefix: 24,
            gateway: Some(ip("10.233.0.1")),
            bridge: "swbr-4097".into(),
            ports: vec![
                HostPort {
                    protocol: L4::Tcp,
                    published: 30090,
                    target: 8080,
                },
                HostPort {
                    protocol: L4::Udp,
                    published: 30053,
                    target: 5353,
                },
            ],
        },
    )])
}

#[test]
fn node_table_forwards_host_ports_to_the_task_keeping_the_source_but_loopbacks() {
    let table = node_table(&NodeView::default(), &host_forwards(), &[])
        .expect("host ports without any network in the view");
    assert_eq!(
        table.maps,
        vec![
            ("backends0".to_owned(), vec![ip("10.233.0.5")]),
            ("backends1".to_owned(), vec![ip("10.233.0.5")]),
        ]
    );
    let names: Vec<_> = table.chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mesh-in",
            "mesh-local",
            "mesh-source",
            "isolation",
            "loopback-guard"
        ]
    );
    assert_eq!(
        table.chains[0].rules[0],
        vec![
            Expr::Ipv4,
            Expr::DaddrLocal,
            Expr::Dport(L4::Tcp, 30090),
            Expr::DnatSpread {
                set: "backends0".into(),
                size: 1,
                port: Some(8080)
            },
        ]
    );
    let from = |l4, source: &str, prefix| {
        vec![
            Expr::Ipv4,
            Expr::CtDnat,
            Expr::CtOriginalDport(l4, if l4 == L4::Tcp { 30090 } else { 30053 }),
            Expr::Daddr(ip("10.233.0.5")),
            Expr::SaddrIn(ip(source), prefix),
            Expr::Snat(ip("10.233.0.1")),
        ]
    };
    assert_eq!(
        table.chains[2].rules,
        [
            from(L4::Tcp, "127.0.0.0", 8),
            from(L4::Tcp, "10.233.0.0", 24),
            from(L4::Udp, "127.0.0.0", 8),
            from(L4::Udp, "10.233.0.0", 24),
        ],
        "only a connection from the loopback or the task's own network gets the gateway as its \
         source"
    );
    assert!(
        table.chains[3]
            .rules
            .iter()
            .any(|r| r.contains(&Expr::Iifname("swbr-4097".into(), true))),
        "the task's network is isolated like the view's: {:?}",
        table.chains[3]
    );
    // With the routing mesh: both in one table.
    let view = ingress_view("10.255.0.2/16", &[("10.255.0.9/16", true)]);
    let both = node_table(&view, &host_forwards(), &[]).expect("both");
    assert_eq!(both.maps.len(), 4, "{both:?}");
    // A port swarmd uses itself is left out.
    assert_eq!(
        node_table(&NodeView::default(), &host_forwards(), &[30053])
            .expect("the TCP port")
            .maps
            .len(),
        1
    );
}

// ---- Namespaces ------------------------------------------------------------------------------

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespaces need root");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command to set up test namespaces");
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("no `nft` command to apply the rules");
    }
    None
}

macro_rules! require_namespaces {
    () => {
        if let Some(reason) = cannot_run() {
            println!("skipped: {reason}");
            return;
        }
    };
}

fn sh_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of this test process, deleted on drop.
struct Netns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "lb{:x}{tag}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh_ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> NetnsPath {
        NetnsPath(PathBuf::from(format!("/run/netns/{}", self.name)))
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh_ip(&all);
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> T {
        nft::in_netns(Some(&self.path().0), f).expect("in the test namespace")
    }

    fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || std::fs::read_to_string(path))
            .trim()
            .to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair between `a` and `b`, with the addresses given (CIDR) on each side, both up.
fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
    link_named(a, &unique("a"), a_addrs, b, b_addrs);
}

/// As [`link`], with the name of `a`'s end given (devices are named per namespace: the pair
/// is made right in its two namespaces).
fn link_named(a: &Netns, ea: &str, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
    let eb = unique("b");
    sh_ip(&[
        "link", "add", ea, "netns", &a.name, "type", "veth", "peer", "name", &eb, "netns", &b.name,
    ]);
    for (ns, dev, addrs) in [(a, ea, a_addrs), (b, eb.as_str(), b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// Namespaces `node`, `client` and `task`: the client (10.232.0.2) linked to the node
/// (10.232.0.1), the task linked to the node's end named `bridge` (standing for a network's
/// bridge), with `node_addr` and `task_addr` (CIDR) on either side; the task answers on its
/// address, TCP port 8080 and UDP port 5353, as `web`.
fn node_client_task(bridge: &str, node_addr: &str, task_addr: &str) -> (Netns, Netns, Netns) {
    let node = Netns::new("n");
    let client = Netns::new("c");
    let task = Netns::new("t");
    link(&client, &["10.232.0.2/24"], &node, &["10.232.0.1/24"]);
    link_named(&node, bridge, &[node_addr], &task, &[task_addr]);
    let addr: Ipv4Addr = task_addr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an IPv4 address");
    tcp_server(&task, SocketAddr::from((addr, 8080)), "web");
    udp_server(&task, SocketAddr::from((addr, 5353)), "web");
    (node, client, task)
}

/// A TCP server in `ns` on `addr`: answers each connection with `<name> <peer address>`.
fn tcp_server(ns: &Netns, addr: SocketAddr, name: &'static str) {
    let listener = ns.run(move || TcpListener::bind(addr));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().map(|p| p.ip().to_string());
            let mut conn = conn;
            let _ = writeln!(conn, "{name} {}", peer.unwrap_or_default());
        }
    });
}

/// A UDP server in `ns` on `addr`: answers each datagram with `<name>`.
fn udp_server(ns: &Netns, addr: SocketAddr, name: &'static str) {
    let socket = ns.run(move || UdpSocket::bind(addr));
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), from);
        }
    });
}

const WAIT: Duration = Duration::from_secs(3);

/// Connects `n` times from `ns` to `to`; the answers (`<name> <peer>`), in order.
fn tcp_answers(ns: &Netns, to: SocketAddr, n: usize) -> Vec<String> {
    ns.run(move || {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&to, WAIT)?;
                s.set_read_timeout(Some(WAIT))?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text.trim().to_owned())
            })
            .collect()
    })
}

/// Sends one datagram each from `n` new sockets in `ns` to `to`; the answers.
fn udp_answers(ns: &Netns, to: SocketAddr, n: usize) -> Vec<String> {
    ns.run(move || {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(WAIT))?;
                s.send_to(b"?", to)?;
                let mut buf = [0u8; 64];
                let (len, from) = s.recv_from(&mut buf)?;
                assert_eq!(from, to, "the answer comes from the address asked");
                Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
            })
            .collect()
    })
}

/// How many answers each server name gave.
fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let name = a.split(' ').next().unwrap_or_default().to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn vip_view(running: [bool; 3]) -> NodeView {
    NodeView {
        version: 1,
        networks: vec![network(
            "net",
            vec![service("web", "10.231.0.100/24")],
            ["10.231.0.11/24", "10.231.0.12/24", "10.231.0.13/24"]
                .iter()
                .zip(running)
                .enumerate()
                .map(|(i, (addr, up))| endpoint(&format!("t{i}"), "web", addr, up))
                .collect(),
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_connections_spread_over_running_tasks_and_skip_stopped_ones() {
    require_namespaces!();
    // A task's namespace, and one holding the three backends' addresses.
    let task = Netns::new("t");
    let backends = Netns::new("s");
    link(
        &task,
        &["10.231.0.2/24"],
        &backends,
        &["10.231.0.11/24", "10.231.0.12/24", "10.231.0.13/24"],
    );
    for (addr, name) in [
        ("10.231.0.11", "b1"),
        ("10.231.0.12", "b2"),
        ("10.231.0.13", "b3"),
    ] {
        tcp_server(&backends, SocketAddr::new(addr.parse().unwrap(), 80), name);
        udp_server(&backends, SocketAddr::new(addr.parse().unwrap(), 53), name);
    }
    let vip_tcp: SocketAddr = "10.231.0.100:80".parse().unwrap();
    let vip_udp: SocketAddr = "10.231.0.100:53".parse().unwrap();
    let balancer = Balancer::new();
    let nets = ["net".to_owned()];

    // --- all three running: 30 connections reach each of them (chosen at random: all three
    // are missed by one of them with a chance of 3 * (2/3)^30, about 1.5e-5)
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view([true; 3]))
        .await
        .expect("programming the VIP");
    let counts = tally(&tcp_answers(&task, vip_tcp, 30));
    assert_eq!(
        counts.len(),
        3,
        "every backend answers over TCP: {counts:?}"
    );
    let counts = tally(&udp_answers(&task, vip_udp, 30));
    assert_eq!(
        counts.len(),
        3,
        "every backend answers over UDP: {counts:?}"
    );

    // --- one backend no longer running: never chosen again
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view([true, false, true]))
        .await
        .expect("programming the VIP");
    let counts = tally(&tcp_answers(&task, vip_tcp, 30));
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["b1", "b3"],
        "b2 is out: {counts:?}"
    );
    let counts = tally(&udp_answers(&task, vip_udp, 30));
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b1", "b3"]);

    // --- a UDP flow (one client socket) whose backend goes out moves to another at once:
    // its conntrack entry is dropped with the backend
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view([true; 3]))
        .await
        .expect("programming the VIP");
    let flow = task.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(s)
    });
    let ask = |s: &UdpSocket| {
        s.send_to(b"?", vip_udp).expect("sending");
        let mut buf = [0u8; 64];
        let (len, _) = s.recv_from(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let first = ask(&flow);
    assert_eq!(ask(&flow), first, "a flow stays on its backend");
    // TCP connections kept open meanwhile, some on `first` (random: all 20 miss it with a
    // chance of (2/3)^20, about 3e-4)
    let held = task.run(move || {
        (0..20)
            .map(|_| TcpStream::connect_timeout(&vip_tcp, WAIT))
            .collect::<io::Result<Vec<_>>>()
    });
    let first_addr = ip(match first.as_str() {
        "b1" => "10.231.0.11",
        "b2" => "10.231.0.12",
        _ => "10.231.0.13",
    });
    let on_first = move || conntrack::marked_protocols(first_addr);
    let before = task.run(on_first);
    assert!(before.contains(&conntrack_proto::Tcp), "{before:?}");
    assert!(before.contains(&conntrack_proto::Udp), "{before:?}");
    let running = ["b1", "b2", "b3"].map(|b| b != first);
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view(running))
        .await
        .expect("programming the VIP");
    let after = task.run(on_first);
    assert!(
        after.iter().all(|p| *p == conntrack_proto::Tcp) && !after.is_empty(),
        "only the UDP flows are forgotten, TCP connections stay: {after:?}"
    );
    drop(held);
    let moved = ask(&flow);
    assert_ne!(moved, first, "the flow left {first}");
    assert_eq!(ask(&flow), moved, "and stays where it moved");

    // --- figures: connection setup through the VIP against straight to a backend
    let setup = |to: SocketAddr| {
        task.run(move || {
            (0..1000)
                .map(|_| {
                    let start = Instant::now();
                    let s = TcpStream::connect_timeout(&to, WAIT)?;
                    let took = start.elapsed();
                    drop(s);
                    Ok(took)
                })
                .collect::<io::Result<Vec<_>>>()
        })
    };
    let through_vip = median(setup(vip_tcp));
    let direct = median(setup("10.231.0.11:80".parse().unwrap()));
    println!(
        "figure: TCP connection setup, median of 1000: through the VIP {through_vip:?}, straight to a backend {direct:?}"
    );
    // How long from a view marking a backend not running to the rules no longer choosing it:
    // the apply is the one transaction after which no new connection gets it.
    let mut took = Vec::new();
    for round in 0..20 {
        let running = if round % 2 == 0 {
            [true, true, false]
        } else {
            [true, true, true]
        };
        let start = Instant::now();
        balancer
            .apply_sandbox(&task.path(), &nets, &vip_view(running))
            .await
            .expect("programming the VIP");
        took.push(start.elapsed());
        if round % 2 == 0 {
            let counts = tally(&tcp_answers(&task, vip_tcp, 6));
            assert!(!counts.contains_key("b3"), "b3 is out at once: {counts:?}");
        }
    }
    println!(
        "figure: view marking a backend not running -> rules no longer choosing it, median of 20: {:?} (max {:?})",
        median(took.clone()),
        took.iter().max().expect("20 samples")
    );

    // --- no running backend: connections are refused at once
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view([false; 3]))
        .await
        .expect("programming the VIP");
    let refused = task.run(move || {
        let start = Instant::now();
        let err = TcpStream::connect_timeout(&vip_tcp, WAIT).expect_err("nothing to reach");
        Ok((err.kind(), start.elapsed()))
    });
    assert_eq!(refused.0, io::ErrorKind::ConnectionRefused, "{refused:?}");
    assert!(refused.1 < Duration::from_secs(1), "{refused:?}");

    // --- no virtual IP on the task's networks: no table
    balancer
        .apply_sandbox(&task.path(), &["other".to_owned()], &vip_view([true; 3]))
        .await
        .expect("programming the VIP");
    let present = task.run(|| nft::table_exists(TABLE));
    assert!(!present, "no VIP: no table");
    balancer
        .apply_sandbox(&task.path(), &nets, &vip_view([true; 3]))
        .await
        .expect("programming the VIP");
    assert_eq!(balancer.applied.lock().unwrap().len(), 1);
    balancer.forget_sandbox(&task.path());
    assert!(balancer.applied.lock().unwrap().is_empty(), "forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_port_on_a_node_reaches_a_task_elsewhere_and_replies_return() {
    require_namespaces!();
    // `node` is a node: 10.232.0.1 faces a client outside, 10.255.0.2 is its ingress address
    // (on its end of the link standing for the ingress network's bridge, VNI 4096); `task` is
    // a task (as on another node) with ingress address 10.255.0.9 and no route to the client,
    // so its replies can only go back through the node's source translation.
    let (node, client, task) = node_client_task("swbr-4096", "10.255.0.2/16", "10.255.0.9/16");
    let balancer = Balancer::in_netns(node.path());
    let published: SocketAddr = "10.232.0.1:30080".parse().unwrap();
    let published_udp: SocketAddr = "10.232.0.1:30053".parse().unwrap();

    // Forwarding is set on every apply, also the second, whose unchanged table is not sent.
    for _ in 0..2 {
        node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"));
        balancer
            .apply_node(&ingress_view("10.255.0.2/16", &[("10.255.0.9/16", true)]))
            .await
            .expect("programming the routing mesh");
        assert_eq!(node.sysctl("net.ipv4.ip_forward"), "1");
    }

    // --- from outside the node
    let answers = tcp_answers(&client, published, 3);
    assert_eq!(
        answers,
        vec!["web 10.255.0.2"; 3],
        "the task answers, and sees the node's ingress address as the peer"
    );
    assert_eq!(udp_answers(&client, published_udp, 3), vec!["web"; 3]);
    // --- from the node itself
    assert_eq!(tcp_answers(&node, published, 1), vec!["web 10.255.0.2"]);
    let localhost: SocketAddr = "127.0.0.1:30080".parse().unwrap();
    assert_eq!(tcp_answers(&node, localhost, 1), vec!["web 10.255.0.2"]);

    // --- forwarding is on, but only for the mesh: a connection routed straight from outside
    // to the task's address (both sides have a route) is dropped by the node
    client.ip(&["route", "add", "10.255.0.0/16", "via", "10.232.0.1"]);
    task.ip(&["route", "add", "10.232.0.0/24", "via", "10.255.0.2"]);
    let direct: SocketAddr = "10.255.0.9:8080".parse().unwrap();
    let short = Duration::from_millis(500);
    let passed = client.run(move || Ok(TcpStream::connect_timeout(&direct, short).is_ok()));
    assert!(!passed, "no routing into the network's bridge");
    assert_eq!(tcp_answers(&client, published, 1), vec!["web 10.255.0.2"]);

    // --- a view older than the one applied is ignored
    let mut old = ingress_view("10.255.0.2/16", &[("10.255.0.9/16", false)]);
    old.version = 0;
    balancer.apply_node(&old).await.expect("ignored");
    assert_eq!(tcp_answers(&client, published, 1), vec!["web 10.255.0.2"]);

    // --- the task stops: the published port is refused, even with something of the host's
    // listening on it
    tcp_server(&node, "0.0.0.0:30080".parse().unwrap(), "host");
    balancer
        .apply_node(&ingress_view("10.255.0.2/16", &[("10.255.0.9/16", false)]))
        .await
        .expect("programming the routing mesh");
    let refused = client.run(move || {
        Ok(TcpStream::connect_timeout(&published, WAIT)
            .err()
            .map(|e| e.kind()))
    });
    assert_eq!(
        refused,
        Some(io::ErrorKind::ConnectionRefused),
        "no running task: the port is refused"
    );

    // --- remove_node_rules leaves nothing behind
    balancer
        .apply_node(&ingress_view("10.255.0.2/16", &[("10.255.0.9/16", true)]))
        .await
        .expect("programming the routing mesh");
    assert!(balancer.node_rules_present().await.expect("lookup"));
    balancer.remove_node_rules().await.expect("removing");
    assert!(!balancer.node_rules_present().await.expect("lookup"));
    assert_eq!(
        tcp_answers(&client, published, 1),
        vec!["host 10.232.0.2"],
        "rules gone: the host's own listener has its port back"
    );
    assert_eq!(
        node.sysctl("net.ipv4.ip_forward"),
        "0",
        "forwarding is put back as it was"
    );
    balancer
        .remove_node_rules()
        .await
        .expect("removing twice is harmless");
    // --- stopped: a late view programs nothing
    balancer
        .apply_node(&ingress_view("10.255.0.2/16", &[("10.255.0.9/16", true)]))
        .await
        .expect("nothing to do");
    assert!(!balancer.node_rules_present().await.expect("lookup"));
    assert_eq!(node.sysctl("net.ipv4.ip_forward"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_on_the_tasks_node_reaches_it_in_its_sandbox() {
    require_namespaces!();
    // `node` is a node: 10.232.0.1 faces a client; its end of the link to `task` stands for
    // the task's network's bridge (VNI 4097) with the gateway 10.233.0.1, which is the task's
    // default route (as in a sandbox).
    let (node, client, task) = node_client_task("swbr-4097", "10.233.0.1/24", "10.233.0.5/24");
    task.ip(&["route", "add", "default", "via", "10.233.0.1"]);
    let balancer = Balancer::in_netns(node.path());
    let published: SocketAddr = "10.232.0.1:30090".parse().unwrap();
    let refused = |ns: &Netns, to: SocketAddr| {
        ns.run(move || {
            Ok(TcpStream::connect_timeout(&to, WAIT)
                .err()
                .map(|e| e.kind()))
        })
    };
    assert_eq!(
        refused(&client, published),
        Some(io::ErrorKind::ConnectionRefused)
    );

    // A new namespace may inherit forwarding from the first one.
    node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"));
    let forward = host_forwards().remove("t1");
    balancer
        .set_host_forward("t1", forward)
        .await
        .expect("forwarding the host ports");
    assert_eq!(node.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(node.sysctl("net.ipv4.conf.swbr-4097.route_localnet"), "1");
    // --- from outside the node: the task sees the client's address
    assert_eq!(
        tcp_answers(&client, published, 2),
        vec!["web 10.232.0.2"; 2]
    );
    let published_udp: SocketAddr = "10.232.0.1:30053".parse().unwrap();
    assert_eq!(udp_answers(&client, published_udp, 2), vec!["web"; 2]);
    // --- from the node itself, at its address and at 127.0.0.1 (seen from the gateway)
    assert_eq!(tcp_answers(&node, published, 1), vec!["web 10.232.0.1"]);
    let localhost: SocketAddr = "127.0.0.1:30090".parse().unwrap();
    assert_eq!(tcp_answers(&node, localhost, 1), vec!["web 10.233.0.1"]);
    // --- a view (with no network) does not take the forward away
    balancer
        .apply_node(&NodeView {
            version: 3,
            networks: vec![],
        })
        .await
        .expect("applying a view");
    assert_eq!(tcp_answers(&client, published, 1), vec!["web 10.232.0.2"]);

    // --- the task stops: its port is refused, forwarding is put back
    balancer
        .set_host_forward("t1", None)
        .await
        .expect("removing the forward");
    assert_eq!(
        refused(&client, published),
        Some(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        refused(&node, localhost),
        Some(io::ErrorKind::ConnectionRefused)
    );
    assert!(!balancer.node_rules_present().await.expect("lookup"));
    assert_eq!(node.sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(node.sysctl("net.ipv4.conf.swbr-4097.route_localnet"), "0");
}

/// A task reaching a neighbour's HOST-mode port through the node (both on one network's
/// bridge): the node answers for the neighbour, which sees the gateway as the caller (it would
/// otherwise answer the task directly, from an address the task never called). (A task
/// reaching its own port this way is not covered: with `br_netfilter` on, the kernel bridges
/// the translated packet back to the port it came from, which needs hairpin mode there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reaches_a_neighbours_host_port_through_the_node() {
    require_namespaces!();
    let node = Netns::new("n");
    node.ip(&["addr", "add", "10.232.0.1/32", "dev", "lo"]);
    node.ip(&["link", "add", "swbr-4097", "type", "bridge"]);
    node.ip(&["addr", "add", "10.233.0.1/24", "dev", "swbr-4097"]);
    node.ip(&["link", "set", "swbr-4097", "up"]);
    let on_bridge = |addr: &str| {
        let task = Netns::new("t");
        let (outside, inside) = (unique("a"), unique("b"));
        sh_ip(&[
            "link", "add", &outside, "netns", &node.name, "type", "veth", "peer", "name", &inside,
            "netns", &task.name,
        ]);
        node.ip(&["link", "set", &outside, "master", "swbr-4097", "up"]);
        task.ip(&["addr", "add", addr, "dev", &inside]);
        task.ip(&["link", "set", &inside, "up"]);
        task.ip(&["route", "add", "default", "via", "10.233.0.1"]);
        task
    };
    let server = on_bridge("10.233.0.5/24");
    let neighbour = on_bridge("10.233.0.6/24");
    tcp_server(&server, "10.233.0.5:8080".parse().unwrap(), "web");
    let balancer = Balancer::in_netns(node.path());
    balancer
        .set_host_forward("t1", host_forwards().remove("t1"))
        .await
        .expect("forwarding the host ports");
    let published: SocketAddr = "10.232.0.1:30090".parse().unwrap();
    assert_eq!(
        tcp_answers(&neighbour, published, 2),
        vec!["web 10.233.0.1"; 2]
    );
    balancer
        .set_host_forward("t1", None)
        .await
        .expect("removing the forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_with_many_services_is_one_transaction() {
    require_namespaces!();
    let task = Netns::new("m");
    let services = (0..1000u32)
        .map(|i| {
            service(
                &format!("s{i}"),
                &format!("10.{}.{}.1/8", 100 + i / 250, i % 250),
            )
        })
        .collect();
    let endpoints = (0..1000u32)
        .flat_map(|i| {
            (1..=3).map(move |j| {
                let addr = format!("10.{}.{}.{}/8", 100 + i / 250, i % 250, 1 + j);
                endpoint(&format!("t{i}.{j}"), &format!("s{i}"), &addr, true)
            })
        })
        .collect();
    let view = NodeView {
        version: 1,
        networks: vec![network("net", services, endpoints)],
    };
    let balancer = Balancer::new();
    let start = Instant::now();
    balancer
        .apply_sandbox(&task.path(), &["net".to_owned()], &view)
        .await
        .expect("programming 1000 VIPs");
    println!(
        "figure: one view with 1000 VIPs x 3 tasks programmed in {:?}",
        start.elapsed()
    );
    let present = task.run(|| nft::table_exists(TABLE));
    assert!(present);
}

#[test]
fn a_failed_transaction_leaves_the_previous_rules_in_place() {
    require_namespaces!();
    let ns = Netns::new("x");
    let view = vip_view([true; 3]);
    let good = sandbox_table(&["net".to_owned()], &view).expect("rules");
    // Source translation is refused in an output chain: the whole transaction fails.
    let mut bad = good.clone();
    bad.chains[0].rules.push(vec![Expr::Snat(ip("10.0.0.1"))]);
    let (first, second, after) = ns.run(move || {
        let first = nft::replace_table(TABLE, Some(&good), b"t1");
        let second = nft::replace_table(TABLE, Some(&bad), b"t2");
        Ok((first, second, nft::table_token(TABLE)?))
    });
    first.expect("a valid table");
    let err = second.expect_err("an invalid table");
    assert!(
        err.to_string().contains("Could not process rule"),
        "nft's error, with its reason: {err}"
    );
    assert_eq!(
        after,
        Some(b"t1".to_vec()),
        "the table from before is still there"
    );
    // Its content too.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "nft", "list", "table", "inet", TABLE,
        ])
        .output()
        .expect("running nft");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("ip daddr 10.231.0.100"), "{listing}");
    assert!(!listing.contains("snat"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_table_is_not_sent_again_unless_it_is_gone() {
    require_namespaces!();
    let ns = Netns::new("u");
    let nets = ["net".to_owned()];
    let balancer = Balancer::new();
    let token = |ns: &Netns| ns.run(|| nft::table_token(TABLE));
    let apply = |ns: &Netns, running| {
        let path = ns.path();
        let balancer = &balancer;
        let nets = &nets;
        async move {
            balancer
                .apply_sandbox(&path, nets, &vip_view(running))
                .await
                .expect("programming")
        }
    };
    apply(&ns, [true; 3]).await;
    let first = token(&ns).expect("a table");
    apply(&ns, [true; 3]).await;
    assert_eq!(
        token(&ns),
        Some(first.clone()),
        "the same table is not sent again"
    );
    apply(&ns, [true, true, false]).await;
    let second = token(&ns).expect("a table");
    assert_ne!(second, first, "a changed one is");

    // Taken away behind the balancer's back: the next apply puts it back.
    ns.run(|| nft::replace_table(TABLE, None, &[]));
    apply(&ns, [true, true, false]).await;
    assert!(token(&ns).is_some(), "restored");

    // A new namespace at the same path gets its table from an unchanged view.
    let name = ns.name.clone();
    drop(ns);
    sh_ip(&["netns", "add", &name]);
    let again = Netns { name };
    apply(&again, [true, true, false]).await;
    assert!(token(&again).is_some(), "a new namespace is programmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_to_one_namespace_end_with_the_newest_view() {
    require_namespaces!();
    let ns = Netns::new("r");
    let nets = ["net".to_owned()];
    let balancer = Balancer::new();
    let key = Some(ns.path().0);
    for round in 0..5u64 {
        // Two views at once, the newer one either first or second.
        let newer = NodeView {
            version: 2 * round + 2,
            ..vip_view([true, round % 2 == 0, true])
        };
        let older = NodeView {
            version: 2 * round + 1,
            ..vip_view([false, true, round % 2 == 1])
        };
        let (a, b) = if round % 2 == 0 {
            (&newer, &older)
        } else {
            (&older, &newer)
        };
        let path = ns.path();
        let (ra, rb) = tokio::join!(
            balancer.apply_sandbox(&path, &nets, a),
            balancer.apply_sandbox(&path, &nets, b)
        );
        ra.expect("programming");
        rb.expect("programming");
        let applied = balancer.applied.lock().unwrap()[&key].clone();
        assert_eq!(applied.version, newer.version, "round {round}");
        assert_eq!(applied.table, sandbox_table(&nets, &newer), "round {round}");
        let token = ns.run(|| nft::table_token(TABLE));
        assert_eq!(token, applied.token, "the kernel has what was stored");
    }
}
