//! Two "hosts" on one machine: network namespaces joined by a veth (the underlay), a
//! [`Dataplane`] working in each, fed hand-written views. A task sandbox on host A reaches one on
//! host B over the VXLAN; the devices go when the view drops the network; a restart after a
//! crash removes what the crashed run left; a container's networks (another runtime's namespace)
//! stay while it is attached; and (ignored, run by hand) the throughput across the
//! overlay against the plain veth.
//!
//! Needs root and VXLAN: otherwise each test prints `skipped: <reason>` and passes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use api::netplane::{Endpoint, NetworkView, Peer, Subnet};
use netplane::{Config, Dataplane, NetnsPath, NodeView, TaskNet};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces `ovl-<pid>-<seq>-{a,b}` joined by a veth, 192.168.<x>.1 and .2; removed on drop.
struct Hosts {
    names: [String; 2],
    underlay: [Ipv4Addr; 2],
    tag: String,
    state: tempfile::TempDir,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{seq}", pid % 100_000);
        let names = [format!("ovl-{tag}-a"), format!("ovl-{tag}-b")];
        let x = ((pid + seq * 7) % 200 + 20) as u8;
        let underlay = [Ipv4Addr::new(192, 168, x, 1), Ipv4Addr::new(192, 168, x, 2)];
        let hosts = Hosts {
            names: names.clone(),
            underlay,
            tag: tag.clone(),
            state: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        for n in &names {
            ip(&["netns", "add", n])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let (va, vb) = (format!("ovu{tag}a"), format!("ovu{tag}b"));
        ip(&[
            "link", "add", &va, "netns", &names[0], "type", "veth", "peer", "name", &vb, "netns",
            &names[1],
        ])?;
        for (i, v) in [(0, &va), (1, &vb)] {
            ip(&[
                "-n",
                &names[i],
                "addr",
                "add",
                &format!("{}/24", underlay[i]),
                "dev",
                v,
            ])?;
            ip(&["-n", &names[i], "link", "set", v, "up"])?;
        }
        // VXLAN present?
        let probe = format!("ovx{tag}");
        ip(&[
            "-n", &names[0], "link", "add", &probe, "type", "vxlan", "id", "1", "dstport", "4789",
        ])
        .map_err(|e| format!("no VXLAN: {e}"))?;
        ip(&["-n", &names[0], "link", "del", &probe])?;
        Ok(hosts)
    }

    fn netns(&self, i: usize) -> NetnsPath {
        NetnsPath(PathBuf::from("/run/netns").join(&self.names[i]))
    }

    fn config(&self, i: usize) -> Config {
        Config {
            data_path_addr: Some(self.underlay[i].into()),
            vxlan_port: 4789,
            state_dir: self.state.path().join(&self.names[i]),
        }
    }

    async fn plane(&self, i: usize) -> Arc<Dataplane> {
        Dataplane::start_in(self.config(i), &self.netns(i))
            .await
            .expect("data plane starts")
    }

    fn has_link(&self, i: usize, name: &str) -> bool {
        ip(&["-n", &self.names[i], "link", "show", name]).is_ok()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

/// Skips (prints why and returns) when the hosts cannot be made here.
macro_rules! hosts_or_skip {
    () => {
        match Hosts::create() {
            Ok(h) => h,
            Err(reason) => {
                println!("skipped: {reason}");
                return;
            }
        }
    };
}

const NET: &str = "netovl1";
const VNI: u32 = 4242;

/// The network object a task's attachment carries.
fn network() -> api::Network {
    api::Network {
        id: NET.into(),
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: HashMap::from([(
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                VNI.to_string(),
            )])
            .into_iter()
            .collect(),
        }),
        ipam: Some(api::IpamOptions {
            configs: vec![api::IpamConfig {
                subnet: "10.77.0.0/24".into(),
                gateway: "10.77.0.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, addr: &str) -> api::Task {
    api::Task {
        id: id.into(),
        networks: vec![api::NetworkAttachment {
            network: Some(network()),
            addresses: vec![addr.into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Host `me`'s view: two nodes, one task on each.
fn view(h: &Hosts, me: usize, tasks: &[(&str, &str)]) -> NodeView {
    let other = 1 - me;
    let node_addr = |i: usize| format!("10.77.0.{}/24", 2 + i);
    NodeView {
        version: 1,
        networks: vec![NetworkView {
            id: NET.into(),
            name: "ovl".into(),
            vni: VNI,
            subnets: vec![Subnet {
                cidr: "10.77.0.0/24".into(),
                gateway: "10.77.0.1".into(),
            }],
            node_addr: node_addr(me),
            peers: vec![Peer {
                node_id: format!("node{other}"),
                data_path_addr: h.underlay[other].to_string(),
                node_addr: node_addr(other),
                ..Default::default()
            }],
            endpoints: tasks
                .iter()
                .enumerate()
                .map(|(i, (id, addr))| Endpoint {
                    task_id: id.to_string(),
                    node_id: format!("node{i}"),
                    addr: addr.to_string(),
                    running: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    }
}

/// Runs `f` on a thread inside the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// Listens on `addr` in `server_ns`, connects from `client_ns`, sends a line and reads it back.
fn echo_across(server_ns: &Path, client_ns: &Path, addr: SocketAddr) -> io::Result<String> {
    let listener = in_netns(server_ns, || TcpListener::bind(addr))?;
    let server = std::thread::spawn(move || -> io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(&buf[..n])
    });
    let reply = in_netns(client_ns, || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"hello across the overlay")?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    server.join().expect("server thread")?;
    reply
}

fn task_ids(h: &Hosts) -> [String; 2] {
    [format!("ovl{}ta", h.tag), format!("ovl{}tb", h.tag)]
}

/// A data plane on each host, with the view of a task on each and that task's sandbox.
async fn task_on_each(h: &Hosts) -> ([Arc<Dataplane>; 2], Vec<TaskNet>) {
    let [ta, tb] = task_ids(h);
    let tasks = [
        (ta.as_str(), "10.77.0.10/24"),
        (tb.as_str(), "10.77.0.11/24"),
    ];
    let planes = [h.plane(0).await, h.plane(1).await];
    let mut sandboxes = Vec::new();
    for i in 0..2 {
        planes[i]
            .apply(view(h, i, &tasks))
            .await
            .expect("view applied");
        let ns = planes[i]
            .create_sandbox(&task(tasks[i].0, tasks[i].1))
            .await
            .expect("sandbox")
            .expect("a task with networks gets a namespace");
        sandboxes.push(ns);
    }
    (planes, sandboxes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_one_host_reaches_a_task_on_the_other_and_the_network_goes_with_its_last_task() {
    let h = hosts_or_skip!();
    let (planes, nets) = task_on_each(&h).await;
    let sandboxes: Vec<NetnsPath> = nets.iter().map(|n| n.netns.clone()).collect();
    let ta = task_ids(&h)[0].clone();
    for i in 0..2 {
        assert!(h.has_link(i, &format!("swbr-{VNI}")), "bridge on host {i}");
        assert!(h.has_link(i, &format!("swvx-{VNI}")), "vxlan on host {i}");
    }

    // A process started in the sandbox sees its interfaces and the gateway as its nameserver,
    // while the host's resolv.conf stays as it was.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let out = nets[0]
        .spawn(
            Command::new("/bin/sh")
                .args(["-c", "cat /etc/resolv.conf /proc/net/dev"])
                .stdout(std::process::Stdio::piped()),
        )
        .expect("spawn in the sandbox")
        .wait_with_output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("nameserver 10.77.0.1\n"), "{seen}");
    assert!(seen.contains("eth0:") && !seen.contains("ovu"), "{seen}");
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );

    let addr: SocketAddr = "10.77.0.11:7000".parse().unwrap();
    let reply = echo_across(&sandboxes[1].0, &sandboxes[0].0, addr).expect("TCP across");
    assert_eq!(reply, "hello across the overlay");
    // And back, to the other task.
    let addr: SocketAddr = "10.77.0.10:7001".parse().unwrap();
    let reply = echo_across(&sandboxes[0].0, &sandboxes[1].0, addr).expect("TCP back");
    assert_eq!(reply, "hello across the overlay");

    // The task on A leaves and the view no longer lists the network: A's devices go, B's stay.
    planes[0]
        .destroy_sandbox(&ta)
        .await
        .expect("sandbox removed");
    assert!(!sandboxes[0].0.exists(), "the task's namespace is gone");
    planes[0]
        .apply(NodeView {
            version: 2,
            networks: Vec::new(),
        })
        .await
        .expect("empty view");
    assert!(!h.has_link(0, &format!("swbr-{VNI}")));
    assert!(!h.has_link(0, &format!("swvx-{VNI}")));
    assert!(h.has_link(1, &format!("swvx-{VNI}")));
    assert!(planes[0].networks().await.is_empty());

    // A clean stop removes everything.
    planes[1].stop().await.expect("stop");
    assert!(!h.has_link(1, &format!("swbr-{VNI}")));
    assert!(!sandboxes[1].0.exists());
    let links = ip(&["-n", &h.names[1], "-o", "link", "show"]).unwrap();
    assert!(!links.contains("swv"), "{links}");
}

/// Whether table `swarmd` (the virtual IPs) exists in the namespace named `netns`.
fn has_vip_table(netns: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "list", "table", "inet", "swarmd",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_networks_stay_while_it_is_attached_and_its_namespace_goes_with_it() {
    let h = hosts_or_skip!();
    let [ta, _] = task_ids(&h);
    let plane = h.plane(0).await;
    let t = task(&ta, "10.77.0.10/24");
    // Before any view: the devices are made from the task's network, the bridge is named.
    let bridges = plane.attach_container(&t).await.expect("attached");
    assert_eq!(bridges, [format!("swbr-{VNI}")]);
    assert!(h.has_link(0, &format!("swbr-{VNI}")));
    assert!(h.has_link(0, &format!("swvx-{VNI}")));

    // The container runs in a namespace of its own (here one made by hand on host A); a
    // service with a virtual IP and no running task gets its refusing rule there.
    let container = format!("ovl-{}-c", h.tag);
    ip(&["netns", "add", &container]).expect("container namespace");
    let netns = NetnsPath(PathBuf::from("/run/netns").join(&container));
    let mut v = view(&h, 0, &[(ta.as_str(), "10.77.0.10/24")]);
    v.networks[0].services.push(api::netplane::ServiceView {
        id: "svcweb".into(),
        name: "web".into(),
        vip: "10.77.0.100/24".into(),
        ..Default::default()
    });
    plane.apply(v.clone()).await.expect("view applied");
    // The node's own namespace is never taken for a container's.
    assert!(
        plane
            .container_running(&t, NetnsPath("/proc/self/ns/net".into()))
            .await
            .is_err()
    );
    plane
        .container_running(&t, netns.clone())
        .await
        .expect("virtual IPs in the container");
    assert!(has_vip_table(&container));

    // The container ends: a later view lets its namespace go and still applies.
    ip(&["netns", "del", &container]).expect("container namespace removed");
    v.version = 2;
    plane
        .apply(v)
        .await
        .expect("a view after the container ended");

    // A view without the network keeps its devices while the container is attached.
    plane
        .apply(NodeView {
            version: 3,
            networks: Vec::new(),
        })
        .await
        .expect("empty view");
    assert!(h.has_link(0, &format!("swbr-{VNI}")));
    plane.detach_container(&ta).await.expect("detached");
    assert!(!h.has_link(0, &format!("swbr-{VNI}")));
    assert!(!h.has_link(0, &format!("swvx-{VNI}")));
    plane.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_a_crash_removes_what_the_crashed_run_left() {
    let h = hosts_or_skip!();
    let [ta, _] = task_ids(&h);
    let plane = h.plane(0).await;
    plane
        .apply(view(&h, 0, &[(ta.as_str(), "10.77.0.10/24")]))
        .await
        .unwrap();
    let ns = plane
        .create_sandbox(&task(&ta, "10.77.0.10/24"))
        .await
        .unwrap()
        .unwrap()
        .netns;
    assert!(ns.0.exists());
    // The "crash": the data plane goes without a stop.
    drop(plane);
    assert!(h.has_link(0, &format!("swbr-{VNI}")));

    let restarted = h.plane(0).await;
    assert!(!ns.0.exists(), "the old task namespace is removed");
    assert!(!h.has_link(0, &format!("swbr-{VNI}")));
    assert!(!h.has_link(0, &format!("swvx-{VNI}")));
    let links = ip(&["-n", &h.names[0], "-o", "link", "show"]).unwrap();
    assert!(!links.contains("swv"), "{links}");
    restarted.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_that_cannot_be_set_up_is_a_clear_sandbox_error() {
    let h = hosts_or_skip!();
    let plane = h.plane(0).await;
    // No VXLAN ID: as a network the allocator has not finished.
    let mut t = task(&format!("ovl{}tc", h.tag), "10.77.0.12/24");
    t.networks[0].network.as_mut().unwrap().driver_state = None;
    let err = plane.create_sandbox(&t).await.unwrap_err();
    assert!(err.to_string().contains("no VXLAN ID"), "{err}");
    // A VNI the kernel refuses (VXLAN IDs have 24 bits).
    let mut t = task(&format!("ovl{}td", h.tag), "10.77.0.13/24");
    t.networks[0]
        .network
        .as_mut()
        .unwrap()
        .driver_state
        .as_mut()
        .unwrap()
        .options
        .insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            "16777216".into(),
        );
    let err = plane.create_sandbox(&t).await.unwrap_err();
    assert!(err.to_string().contains("swvx-16777216"), "{err}");
    // Nothing is left behind, and a good task still gets its sandbox.
    assert!(!h.has_link(0, "swbr-16777216"));
    let ok = plane
        .create_sandbox(&task(&format!("ovl{}te", h.tag), "10.77.0.14/24"))
        .await
        .expect("the other network still works");
    assert!(ok.is_some());
    plane.stop().await.unwrap();
}

/// Sends for `secs` seconds from `client_ns` to `addr` in `server_ns`; bits per second.
fn throughput(server_ns: &Path, client_ns: &Path, addr: SocketAddr, secs: u64) -> f64 {
    let listener = in_netns(server_ns, || TcpListener::bind(addr)).unwrap();
    let server = std::thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let start = Instant::now();
    in_netns(client_ns, || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        let buf = vec![7u8; 256 * 1024];
        while start.elapsed() < Duration::from_secs(secs) {
            conn.write_all(&buf)?;
        }
        Ok(())
    })
    .unwrap();
    let bytes = server.join().unwrap().unwrap();
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64()
}

/// The figure for the issue note: `cargo nextest run -p netplane --run-ignored only
/// throughput --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn throughput_across_the_overlay_against_the_plain_veth() {
    let h = hosts_or_skip!();
    let (planes, nets) = task_on_each(&h).await;
    let sandboxes: Vec<NetnsPath> = nets.into_iter().map(|n| n.netns).collect();
    // Alternated, best of three each: the machine is shared.
    let (mut plain, mut overlay) = (0f64, 0f64);
    for round in 0..3 {
        plain = plain.max(throughput(
            &h.netns(1).0,
            &h.netns(0).0,
            SocketAddr::new(h.underlay[1].into(), 7100 + round),
            3,
        ));
        overlay = overlay.max(throughput(
            &sandboxes[1].0,
            &sandboxes[0].0,
            SocketAddr::new([10, 77, 0, 11].into(), 7200 + round),
            3,
        ));
    }
    println!(
        "plain veth: {:.2} Gbit/s; overlay task to task: {:.2} Gbit/s; ratio {:.2}",
        plain / 1e9,
        overlay / 1e9,
        overlay / plain
    );
    for p in planes {
        p.stop().await.unwrap();
    }
}
