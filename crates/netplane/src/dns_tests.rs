//! The resolver on real UDP and TCP sockets of 127.0.0.x (every 127/8 address is local on Linux),
//! two networks on two "gateways", and a fake node resolver for what it forwards.

use std::time::Instant;

use api::netplane::{Endpoint, NetworkView, ServiceView, Subnet};
use hickory_server::proto::op::Query;

use super::*;

const NET1_GW: &str = "127.0.0.2";
const NET2_GW: &str = "127.0.0.3";
const UPSTREAM: &str = "127.0.0.4";

fn endpoint(
    task: &str,
    name: &str,
    svc: &str,
    addr: &str,
    aliases: &[&str],
    running: bool,
) -> Endpoint {
    Endpoint {
        task_id: task.into(),
        task_name: name.into(),
        service_id: svc.into(),
        node_id: "n".into(),
        addr: addr.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        running,
    }
}

fn service(id: &str, name: &str, vip: &str, dnsrr: bool) -> ServiceView {
    ServiceView {
        id: id.into(),
        name: name.into(),
        vip: vip.into(),
        dnsrr,
        ingress_ports: Vec::new(),
    }
}

/// `front` (gateway 127.0.0.2): `web` (VIP, tasks w1 running and w2 starting, alias `www`),
/// `db` (DNSRR, tasks d1 and d2 running), `cache` (VIP) whose task has the alias `web`;
/// `back` (gateway 127.0.0.3): `api` (VIP).
fn view() -> NodeView {
    NodeView {
        version: 1,
        networks: vec![
            NetworkView {
                id: "n1".into(),
                name: "front".into(),
                vni: 4097,
                subnets: vec![Subnet {
                    cidr: "127.0.0.0/8".into(),
                    gateway: NET1_GW.into(),
                }],
                services: vec![
                    service("s-web", "web", "10.0.1.100/24", false),
                    service("s-db", "db", "", true),
                    service("s-cache", "cache", "10.0.1.101/24", false),
                ],
                endpoints: vec![
                    endpoint("w1", "web.1.w1", "s-web", "10.0.1.10/24", &["www"], true),
                    endpoint("w2", "web.2.w2", "s-web", "10.0.1.11/24", &["www"], false),
                    endpoint("d1", "db.1.d1", "s-db", "10.0.1.20/24", &["database"], true),
                    endpoint("d2", "db.2.d2", "s-db", "10.0.1.21/24", &["database"], true),
                    endpoint(
                        "c1",
                        "cache.1.c1",
                        "s-cache",
                        "10.0.1.30/24",
                        &["web"],
                        true,
                    ),
                ],
                ..Default::default()
            },
            NetworkView {
                id: "n2".into(),
                name: "back".into(),
                vni: 4098,
                subnets: vec![Subnet {
                    cidr: "127.0.0.0/8".into(),
                    gateway: NET2_GW.into(),
                }],
                services: vec![service("s-api", "api", "10.0.2.100/24", false)],
                endpoints: vec![endpoint(
                    "a1",
                    "api.1.a1",
                    "s-api",
                    "10.0.2.10/24",
                    &[],
                    true,
                )],
                ..Default::default()
            },
        ],
    }
}

/// A port free on the test addresses (UDP and TCP), found by binding one.
async fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((NET1_GW, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        let ok = [NET1_GW, NET2_GW, UPSTREAM].iter().all(|ip| {
            std::net::TcpListener::bind((*ip, port)).is_ok()
                && (*ip == NET1_GW || std::net::UdpSocket::bind((*ip, port)).is_ok())
        });
        if ok {
            return port;
        }
    }
}

/// A fake node resolver on 127.0.0.4:`port` (UDP and TCP): `example.org` is 192.0.2.7, any
/// other name NXDOMAIN. Returns how many queries it got.
async fn fake_upstream(port: u16) -> Arc<std::sync::atomic::AtomicUsize> {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answer = |raw: &[u8]| -> Vec<u8> {
        let q = Message::from_vec(raw).expect("query");
        let mut m = Message::new(
            q.metadata.id,
            hickory_server::proto::op::MessageType::Response,
            OpCode::Query,
        );
        m.metadata.recursion_available = true;
        let query = q.queries[0].clone();
        if query.name().to_ascii().trim_end_matches('.') == "example.org" {
            m.answers.push(Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(A("192.0.2.7".parse().expect("ip"))),
            ));
        } else {
            m.metadata.response_code = ResponseCode::NXDomain;
        }
        m.add_query(query);
        m.to_vec().expect("encode")
    };
    let udp = UdpSocket::bind((UPSTREAM, port))
        .await
        .expect("upstream udp");
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.expect("recv");
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            udp.send_to(&answer(&buf[..n]), from).await.expect("send");
        }
    });
    let tcp = TcpListener::bind((UPSTREAM, port))
        .await
        .expect("upstream tcp");
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.expect("accept");
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let len = s.read_u16().await.expect("len");
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.expect("query");
            let out = answer(&buf);
            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            s.write_all(&framed).await.expect("answer");
        }
    });
    count
}

/// A resolver serving [`view`] on `port`, forwarding to the fake upstream on the same port.
async fn resolver(port: u16, dir: &tempfile::TempDir) -> Resolver {
    let conf = dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        format!("# the node's\nsearch example.com\nnameserver {NET1_GW}\nnameserver {UPSTREAM}\noptions ndots:1\n"),
    )
    .expect("resolv.conf");
    let r = Resolver::with_config(ResolverConfig {
        port,
        resolv_conf: conf,
        upstream_port: port,
    });
    r.update(&view()).await.expect("serving");
    r
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(
        rand::random(),
        hickory_server::proto::op::MessageType::Query,
        OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m.to_vec().expect("encode")
}

/// Asks `gw`:`port` over UDP; the answer's code and addresses (sorted).
async fn ask(gw: &str, port: u16, name: &str, qtype: RecordType) -> (ResponseCode, Vec<IpAddr>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    socket.connect((gw, port)).await.expect("connect");
    let q = query(name, qtype);
    socket.send(&q).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name}"))
        .expect("recv");
    decode(&q, &buf[..n])
}

fn decode(q: &[u8], answer: &[u8]) -> (ResponseCode, Vec<IpAddr>) {
    let m = Message::from_vec(answer).expect("answer");
    assert_eq!(m.metadata.id, Message::from_vec(q).expect("q").metadata.id);
    let mut ips: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    (m.metadata.response_code, ips)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().expect("ip")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn each_kind_of_name_is_answered_from_the_network_the_query_arrived_on() {
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("dir");
    let upstream = fake_upstream(port).await;
    let r = resolver(port, &dir).await;
    let ok = ResponseCode::NoError;
    let a = RecordType::A;

    // <service>: its VIP; DNSRR: its running tasks.
    assert_eq!(
        ask(NET1_GW, port, "web", a).await,
        (ok, ips(&["10.0.1.100"]))
    );
    assert_eq!(
        ask(NET1_GW, port, "WEB.", a).await,
        (ok, ips(&["10.0.1.100"]))
    );
    assert_eq!(
        ask(NET1_GW, port, "db", a).await,
        (ok, ips(&["10.0.1.20", "10.0.1.21"]))
    );
    // tasks.<service>: running tasks only.
    assert_eq!(
        ask(NET1_GW, port, "tasks.web", a).await,
        (ok, ips(&["10.0.1.10"]))
    );
    assert_eq!(
        ask(NET1_GW, port, "tasks.db", a).await,
        (ok, ips(&["10.0.1.20", "10.0.1.21"]))
    );
    // Aliases: as the service (VIP), or the tasks with the alias for DNSRR; tasks.<alias>.
    assert_eq!(
        ask(NET1_GW, port, "www", a).await,
        (ok, ips(&["10.0.1.100"]))
    );
    assert_eq!(
        ask(NET1_GW, port, "database", a).await,
        (ok, ips(&["10.0.1.20", "10.0.1.21"]))
    );
    assert_eq!(
        ask(NET1_GW, port, "tasks.www", a).await,
        (ok, ips(&["10.0.1.10"]))
    );
    // cache's alias "web" does not take web's name.
    assert_eq!(
        ask(NET1_GW, port, "cache", a).await,
        (ok, ips(&["10.0.1.101"]))
    );
    // Task names, while running.
    assert_eq!(
        ask(NET1_GW, port, "web.1.w1", a).await,
        (ok, ips(&["10.0.1.10"]))
    );
    assert_eq!(upstream.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A known name asked for AAAA: empty, not forwarded.
    assert_eq!(
        ask(NET1_GW, port, "web", RecordType::AAAA).await,
        (ok, vec![])
    );
    assert_eq!(upstream.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Other names go to the node's resolver (the gateway in resolv.conf is skipped).
    assert_eq!(
        ask(NET1_GW, port, "example.org", a).await,
        (ok, ips(&["192.0.2.7"]))
    );
    assert_eq!(upstream.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The stopped task's name, and another network's names, are unknown here.
    assert_eq!(
        ask(NET1_GW, port, "web.2.w2", a).await.0,
        ResponseCode::NXDomain
    );
    assert_eq!(ask(NET1_GW, port, "api", a).await.0, ResponseCode::NXDomain);
    assert_eq!(
        ask(NET2_GW, port, "api", a).await,
        (ok, ips(&["10.0.2.100"]))
    );
    assert_eq!(ask(NET2_GW, port, "web", a).await.0, ResponseCode::NXDomain);

    // Over TCP too, known and forwarded.
    for (name, want) in [("web", "10.0.1.100"), ("example.org", "192.0.2.7")] {
        let q = query(name, a);
        let mut s = TcpStream::connect((NET1_GW, port)).await.expect("tcp");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.expect("send");
        let len = s.read_u16().await.expect("len");
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.expect("answer");
        assert_eq!(decode(&q, &buf), (ok, ips(&[want])), "{name} over TCP");
    }

    // A new view: w2 runs, db goes, the back network leaves (its gateway closes).
    let mut v = view();
    v.networks[0].endpoints[1].running = true;
    v.networks[0].services.retain(|s| s.name != "db");
    v.networks[0].endpoints.retain(|e| e.service_id != "s-db");
    v.networks.truncate(1);
    r.update(&v).await.expect("update");
    assert_eq!(
        ask(NET1_GW, port, "tasks.web", a).await,
        (ok, ips(&["10.0.1.10", "10.0.1.11"]))
    );
    assert_eq!(ask(NET1_GW, port, "db", a).await.0, ResponseCode::NXDomain);
    assert!(
        UdpSocket::bind((NET2_GW, port)).await.is_ok(),
        "the back network's socket is closed"
    );
    r.stop().await;
    assert!(UdpSocket::bind((NET1_GW, port)).await.is_ok(), "stopped");
}

#[test]
fn resolv_conf_nameservers_are_the_upstreams_less_the_gateways() {
    let text = "nameserver 10.0.0.53\n# nameserver 1.1.1.1\nnameserver fe80::1%eth0\nnameserver 10.0.1.1\nnameserver ::1\nsearch x\n";
    let own = ["10.0.1.1".parse().expect("ip")];
    assert_eq!(
        upstreams(text, &own, 53),
        [
            "10.0.0.53:53".parse::<SocketAddr>().expect("addr"),
            "[::1]:53".parse().expect("addr"),
        ]
    );
}

/// The figure of the issue: median time of 1000 answers to `web` on loopback, one query at a
/// time (`cargo nextest run -p netplane dns::tests::answer_time --no-capture`).
#[tokio::test]
async fn answer_time_median_over_1000_queries() {
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("dir");
    let _upstream = fake_upstream(port).await;
    let r = resolver(port, &dir).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    socket.connect((NET1_GW, port)).await.expect("connect");
    let q = query("web", RecordType::A);
    let mut buf = vec![0u8; 512];
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        socket.send(&q).await.expect("send");
        let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        times.push(start.elapsed());
        assert_eq!(decode(&q, &buf[..n]).1, ips(&["10.0.1.100"]));
    }
    times.sort();
    println!(
        "DNS answer time over 1000 queries on loopback: median {:?}, p99 {:?}",
        times[500], times[990]
    );
    r.stop().await;
}
