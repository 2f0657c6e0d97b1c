use std::time::Duration;

use api::TaskState;
use store::MemoryStore;
use testkit::fixtures;
use tokio_stream::StreamExt;

use super::*;

/// An allocated overlay network `id` named `name` with VXLAN ID `vni` on `subnet` (gateway the
/// first address).
fn overlay(id: &str, name: &str, vni: u32, subnet: &str, gateway: &str) -> api::Network {
    api::Network {
        id: id.into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: [(VXLAN_IDS.to_string(), vni.to_string())].into(),
        }),
        ipam: Some(api::IpamOptions {
            configs: vec![api::IpamConfig {
                subnet: subnet.into(),
                gateway: gateway.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node-local (bridge) network: never in a view.
fn bridge(id: &str) -> api::Network {
    api::Network {
        id: id.into(),
        driver_state: Some(api::Driver {
            name: "bridge".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attachment(net: &str, addr: &str, aliases: &[&str]) -> api::NetworkAttachment {
    api::NetworkAttachment {
        network: Some(api::Network {
            id: net.into(),
            ..Default::default()
        }),
        addresses: vec![addr.into()],
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// Node `id` at `addr` with attachments (network, address).
fn node(id: &str, addr: &str, nets: &[(&str, &str)]) -> api::Node {
    let mut n = fixtures::node(id);
    n.status.as_mut().expect("status").addr = addr.into();
    n.attachments = nets.iter().map(|(n, a)| attachment(n, a, &[])).collect();
    n
}

/// Service `id` named `name` with VIPs (network, address); `dnsrr` for DNS round robin.
fn service(id: &str, name: &str, vips: &[(&str, &str)], dnsrr: bool) -> api::Service {
    let mode = if dnsrr {
        api::endpoint_spec::ResolutionMode::Dnsrr
    } else {
        api::endpoint_spec::ResolutionMode::Vip
    };
    api::Service {
        id: id.into(),
        spec: Some(fixtures::service_spec(name, 1, "busybox")),
        endpoint: Some(api::Endpoint {
            spec: Some(api::EndpointSpec {
                mode: mode as i32,
                ports: Vec::new(),
            }),
            ports: vec![api::PortConfig {
                protocol: api::port_config::Protocol::Tcp as i32,
                target_port: 80,
                published_port: 30080,
                publish_mode: api::port_config::PublishMode::Ingress as i32,
                ..Default::default()
            }],
            virtual_ips: vips
                .iter()
                .map(|(n, a)| api::endpoint::VirtualIp {
                    network_id: n.to_string(),
                    addr: a.to_string(),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// Task `id` of service `svc` (named `svc_name`, slot 1) on `node` in `state`, attached as given.
fn task(
    id: &str,
    svc: &str,
    svc_name: &str,
    node: &str,
    state: TaskState,
    nets: &[(&str, &str, &[&str])],
) -> api::Task {
    let mut t = fixtures::task(id, svc, state);
    t.node_id = node.into();
    t.service_annotations = Some(api::Annotations {
        name: svc_name.into(),
        ..Default::default()
    });
    t.networks = nets
        .iter()
        .map(|(n, a, aliases)| attachment(n, a, aliases))
        .collect();
    t
}

/// The cluster the tests start from: networks `front` (n1) and `back` (n2), a bridge network,
/// an ingress network; nodes a (front, back, ingress), b (front, ingress), c (ingress only);
/// `web` (VIP on front and ingress) with a RUNNING task on a and a STARTING one on b, `db`
/// (DNSRR, on back) with a RUNNING task on a.
fn seed() -> Vec<api::Object> {
    let mut ingress = overlay("ing", "ingress", 4096, "10.255.0.0/16", "10.255.0.1");
    ingress.spec.as_mut().expect("spec").ingress = true;
    let objects: Vec<api::Object> = vec![
        overlay("n1", "front", 4097, "10.0.1.0/24", "10.0.1.1").into_object(),
        overlay("n2", "back", 4098, "10.0.2.0/24", "10.0.2.1").into_object(),
        ingress.into_object(),
        bridge("br").into_object(),
        node(
            "a",
            "192.168.0.1",
            &[
                ("n1", "10.0.1.2/24"),
                ("n2", "10.0.2.2/24"),
                ("ing", "10.255.0.2/16"),
                ("br", ""),
            ],
        )
        .into_object(),
        node(
            "b",
            "192.168.0.2",
            &[("n1", "10.0.1.3/24"), ("ing", "10.255.0.3/16")],
        )
        .into_object(),
        node("c", "192.168.0.3", &[("ing", "10.255.0.4/16")]).into_object(),
        service(
            "web",
            "web",
            &[("n1", "10.0.1.100/24"), ("ing", "10.255.0.100/16")],
            false,
        )
        .into_object(),
        service("db", "db", &[], true).into_object(),
        task(
            "t1",
            "web",
            "web",
            "a",
            TaskState::Running,
            &[
                ("ing", "10.255.0.10/16", &[]),
                ("n1", "10.0.1.10/24", &["www"]),
            ],
        )
        .into_object(),
        task(
            "t2",
            "web",
            "web",
            "b",
            TaskState::Starting,
            &[
                ("ing", "10.255.0.11/16", &[]),
                ("n1", "10.0.1.11/24", &["www"]),
            ],
        )
        .into_object(),
        task(
            "t3",
            "db",
            "db",
            "a",
            TaskState::Running,
            &[("n2", "10.0.2.10/24", &[])],
        )
        .into_object(),
        // Past RUNNING, unassigned, or without networks: in no view.
        task(
            "t4",
            "web",
            "web",
            "c",
            TaskState::Failed,
            &[("n1", "10.0.1.12/24", &[])],
        )
        .into_object(),
        task(
            "t5",
            "web",
            "web",
            "",
            TaskState::Pending,
            &[("n1", "10.0.1.13/24", &[])],
        )
        .into_object(),
        task("t6", "web", "web", "c", TaskState::Running, &[]).into_object(),
    ];
    objects
}

use store::StoreObject;

async fn seeded_store() -> MemoryStore {
    let store = MemoryStore::new(None);
    store
        .update(|tx| {
            for o in seed() {
                match o.object.expect("object") {
                    api::object::Object::Network(n) => tx.create(*n)?,
                    api::object::Object::Node(n) => tx.create(*n)?,
                    api::object::Object::Service(s) => tx.create(*s)?,
                    api::object::Object::Task(t) => tx.create(*t)?,
                    _ => unreachable!(),
                }
            }
            Ok(())
        })
        .await
        .expect("seed");
    store
}

fn model_of(store: &MemoryStore) -> Model {
    let mut m = store.view(Model::load);
    m.refresh();
    m
}

fn net<'a>(v: &'a NodeView, id: &str) -> &'a NetworkView {
    v.networks
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no network {id} in {v:?}"))
}

fn ids<T>(items: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| f(i).to_string()).collect()
}

#[tokio::test]
async fn a_view_lists_only_the_nodes_swarm_networks_with_peers_services_and_endpoints() {
    let store = seeded_store().await;
    let m = model_of(&store);

    let a = m.node_view("a", 7);
    assert_eq!(a.version, 7);
    assert_eq!(ids(&a.networks, |n| &n.id), ["ing", "n1", "n2"], "{a:?}");
    let front = net(&a, "n1");
    assert_eq!(front.name, "front");
    assert_eq!(front.vni, 4097);
    assert_eq!(front.node_addr, "10.0.1.2/24");
    assert!(!front.ingress);
    assert_eq!(
        front.subnets,
        [Subnet {
            cidr: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into()
        }]
    );
    assert_eq!(
        front.peers,
        [Peer {
            node_id: "b".into(),
            data_path_addr: "192.168.0.2".into(),
            node_addr: "10.0.1.3/24".into(),
            wireguard_public_key: Vec::new(),
            wireguard_port: 0,
        }],
        "itself left out"
    );
    assert_eq!(
        front.services,
        [ServiceView {
            id: "web".into(),
            name: "web".into(),
            vip: "10.0.1.100/24".into(),
            dnsrr: false,
            ingress_ports: Vec::new(),
        }],
        "ingress ports only on ingress"
    );
    assert_eq!(
        front.endpoints,
        [
            Endpoint {
                task_id: "t1".into(),
                task_name: "web.1.t1".into(),
                service_id: "web".into(),
                node_id: "a".into(),
                addr: "10.0.1.10/24".into(),
                aliases: vec!["www".into()],
                running: true,
            },
            Endpoint {
                task_id: "t2".into(),
                task_name: "web.1.t2".into(),
                service_id: "web".into(),
                node_id: "b".into(),
                addr: "10.0.1.11/24".into(),
                aliases: vec!["www".into()],
                running: false,
            },
        ]
    );
    let back = net(&a, "n2");
    assert!(back.peers.is_empty(), "a alone on back");
    assert_eq!(ids(&back.services, |s| &s.id), ["db"]);
    assert!(back.services[0].dnsrr && back.services[0].vip.is_empty());
    assert_eq!(ids(&back.endpoints, |e| &e.task_id), ["t3"]);

    let ing = net(&a, "ing");
    assert!(ing.ingress);
    assert_eq!(ids(&ing.peers, |p| &p.node_id), ["b", "c"]);
    assert_eq!(
        ing.services[0].ingress_ports,
        [PublishedPort {
            protocol: "tcp".into(),
            target_port: 80,
            published_port: 30080,
        }]
    );

    let b = m.node_view("b", 7);
    assert_eq!(ids(&b.networks, |n| &n.id), ["ing", "n1"], "not back");
    assert_eq!(net(&b, "n1").node_addr, "10.0.1.3/24");
    assert_eq!(ids(&net(&b, "n1").peers, |p| &p.node_id), ["a"]);
    let c = m.node_view("c", 7);
    assert_eq!(ids(&c.networks, |n| &n.id), ["ing"]);
    assert!(m.node_view("nobody", 7).networks.is_empty());
}

#[tokio::test]
async fn a_peer_is_listed_at_its_announced_address_else_its_status_address() {
    let store = seeded_store().await;
    store
        .update(|tx| {
            let mut b = tx.get_node("b").expect("b");
            b.status.as_mut().expect("status").addr = String::new();
            tx.update(b)
        })
        .await
        .expect("b without address");
    let mut m = model_of(&store);
    assert!(
        net(&m.node_view("a", 1), "n1").peers.is_empty(),
        "b's address is not known yet"
    );
    m.announce("b", "172.16.0.2".parse().expect("ip"));
    let affected = m.refresh();
    assert!(
        affected.contains("a") && affected.contains("c"),
        "{affected:?}"
    );
    assert_eq!(
        net(&m.node_view("a", 1), "n1").peers[0].data_path_addr,
        "172.16.0.2"
    );
    m.announce("a", "172.16.0.1".parse().expect("ip"));
    m.refresh();
    assert_eq!(
        net(&m.node_view("b", 1), "n1").peers[0].data_path_addr,
        "172.16.0.1",
        "announced wins over status.addr"
    );
}

#[tokio::test]
async fn a_peer_is_listed_with_the_wireguard_key_its_stream_announced() {
    let store = seeded_store().await;
    let mut m = model_of(&store);
    m.refresh();
    assert!(
        net(&m.node_view("a", 1), "n1").peers[0]
            .wireguard_public_key
            .is_empty()
    );
    m.announce_key("b", vec![7; 32], 51820);
    let affected = m.refresh();
    assert!(affected.contains("a"), "{affected:?}");
    let peer = net(&m.node_view("a", 1), "n1").peers[0].clone();
    assert_eq!(
        (peer.wireguard_public_key, peer.wireguard_port),
        (vec![7; 32], 51820)
    );
    // The same key and port again change nothing; another port does; a stream without a key
    // takes it away.
    m.announce_key("b", vec![7; 32], 51820);
    assert!(!m.is_dirty());
    m.announce_key("b", vec![7; 32], 51999);
    let affected = m.refresh();
    assert!(affected.contains("a"), "{affected:?}");
    assert_eq!(
        net(&m.node_view("a", 1), "n1").peers[0].wireguard_port,
        51999
    );
    m.announce_key("b", Vec::new(), 0);
    m.refresh();
    assert!(
        net(&m.node_view("a", 1), "n1").peers[0]
            .wireguard_public_key
            .is_empty()
    );
}

#[tokio::test]
async fn a_change_touches_only_the_nodes_on_its_network() {
    let store = seeded_store().await;
    let mut m = model_of(&store);
    assert!(!m.is_dirty());
    // db's task is on back, where only a is.
    let mut t3 = store.view(|tx| tx.get_task("t3")).expect("t3");
    t3.status.as_mut().expect("status").state = TaskState::Failed as i32;
    m.set_task(&t3);
    let affected = m.refresh();
    assert_eq!(affected, HashSet::from(["a".to_string()]));
    assert!(net(&m.node_view("a", 2), "n2").endpoints.is_empty());
    // An update that changes nothing a view shows marks nothing.
    let mut t1 = store.view(|tx| tx.get_task("t1")).expect("t1");
    t1.status.as_mut().expect("status").message = "still running".into();
    m.set_task(&t1);
    assert!(!m.is_dirty());
}

/// Reads views from `stream` until one satisfies `pred` (bounded).
async fn until(stream: &mut ViewStream, what: &str, pred: impl Fn(&NodeView) -> bool) -> NodeView {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let view = stream
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended waiting for {what}"))
                .expect("a view");
            if pred(&view) {
                return view;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no view with {what}"))
}

#[tokio::test]
async fn streams_follow_tasks_dying_and_nodes_leaving_and_end_with_the_term() {
    let store = seeded_store().await;
    let plane = NetworkPlane::with_debounce(store.clone(), Duration::from_millis(5));
    assert_eq!(
        plane.watch("a", None).err().expect("stopped").code(),
        tonic::Code::Unavailable
    );
    let term = CancellationToken::new();
    let run = tokio::spawn(plane.clone().run(term.clone()));
    testkit::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(5),
        "the plane serves",
        || plane.watch("probe", None).is_ok(),
    )
    .await;
    let mut a = plane.watch("a", None).expect("a's stream");
    let first = until(&mut a, "a's first view", |_| true).await;
    assert_eq!(
        ids(&net(&first, "n1").endpoints, |e| &e.task_id),
        ["t1", "t2"]
    );
    let mut b = plane
        .watch("b", Some("172.16.0.2".parse().expect("ip")))
        .expect("b's stream");
    until(&mut b, "b's first view", |v| v.networks.len() == 2).await;
    // b announced its data path address: a's peers change.
    until(&mut a, "b at its announced address", |v| {
        net(v, "n1").peers[0].data_path_addr == "172.16.0.2"
    })
    .await;

    // t2 starts running, then t1 dies.
    store
        .update(|tx| {
            let mut t2 = tx.get_task("t2").expect("t2");
            t2.status.as_mut().expect("status").state = TaskState::Running as i32;
            tx.update(t2)
        })
        .await
        .expect("t2 running");
    until(&mut b, "t2 running", |v| {
        net(v, "n1")
            .endpoints
            .iter()
            .any(|e| e.task_id == "t2" && e.running)
    })
    .await;
    store
        .update(|tx| {
            let mut t1 = tx.get_task("t1").expect("t1");
            t1.status.as_mut().expect("status").state = TaskState::Failed as i32;
            tx.update(t1)
        })
        .await
        .expect("t1 failed");
    let v = until(&mut b, "t1 gone", |v| {
        ids(&net(v, "n1").endpoints, |e| &e.task_id) == ["t2"]
    })
    .await;
    assert!(
        v.version > first.version,
        "{} then {}",
        first.version,
        v.version
    );

    // b leaves the cluster: a's peers on front and ingress lose it.
    store
        .update(|tx| tx.delete::<api::Node>("b"))
        .await
        .expect("b removed");
    until(&mut a, "b gone", |v| {
        net(v, "n1").peers.is_empty() && !net(v, "ing").peers.iter().any(|p| p.node_id == "b")
    })
    .await;
    // A new network for a (its attachment added) shows up; a's views never repeat.
    store
        .update(|tx| {
            tx.create(overlay("n3", "extra", 4099, "10.0.3.0/24", "10.0.3.1"))?;
            let mut a = tx.get_node("a").expect("a");
            a.attachments.push(attachment("n3", "10.0.3.2/24", &[]));
            tx.update(a)
        })
        .await
        .expect("n3");
    let v = until(&mut a, "n3", |v| v.networks.iter().any(|n| n.id == "n3")).await;
    assert_eq!(net(&v, "n3").node_addr, "10.0.3.2/24");

    term.cancel();
    run.await.expect("run").expect("a clean stop");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), a.next())
            .await
            .expect("the stream ends")
            .is_none()
    );
    assert_eq!(
        plane.watch("a", None).err().expect("stopped").code(),
        tonic::Code::Unavailable
    );
}

#[test]
fn the_watch_names_its_address_or_the_callers() {
    let source: IpAddr = "10.1.2.3".parse().expect("ip");
    assert_eq!(requested_addr("", Some(source)).expect("ok"), Some(source));
    assert_eq!(requested_addr("", None).expect("ok"), None);
    assert_eq!(
        requested_addr("192.168.5.5", Some(source)).expect("ok"),
        Some("192.168.5.5".parse().expect("ip"))
    );
    assert_eq!(
        requested_addr("nope", None).expect_err("bad").code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_watch_with_a_malformed_key_or_port_is_refused() {
    use api::netplane::network_plane_server::NetworkPlane as _;
    let store = seeded_store().await;
    let service = NetworkPlaneService::local(NetworkPlane::new(store), "a".into());
    let bad = [
        api::netplane::WatchRequest {
            wireguard_public_key: vec![7; 31],
            ..Default::default()
        },
        api::netplane::WatchRequest {
            wireguard_public_key: vec![7; 32],
            wireguard_port: 65536,
            ..Default::default()
        },
    ];
    for req in bad {
        let err = service
            .watch(tonic::Request::new(req.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{req:?} accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
}
