//! Tests of virtual IPs and network attachments through the allocator loop over a raft-less
//! store: a VIP per network of a VIP-mode service and none for DNSRR, an address per attachment of
//! each task, ingress only with INGRESS-mode ports, node attachments following the tasks a node
//! runs, everything freed with its owner, exhaustion that keeps a task NEW with the reason and
//! retries it once an address is freed, and a restart that keeps every address.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use store::{MemoryStore, ReadTx};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Allocator, Error};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), Error>>,
}

fn start(store: &MemoryStore) -> Running {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(Allocator::new(store.clone()).run(shutdown.clone()));
    Running { shutdown, handle }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("allocator stops in time")
            .expect("allocator task joins")
            .expect("allocator exits cleanly");
    }
}

/// An overlay network `id` on `subnet` (the default pool when empty).
fn overlay(id: &str, subnet: &str) -> api::Network {
    let configs = if subnet.is_empty() {
        Vec::new()
    } else {
        vec![api::IpamConfig {
            subnet: subnet.into(),
            ..Default::default()
        }]
    };
    api::Network {
        id: id.into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: id.into(),
                ..Default::default()
            }),
            ipam: Some(api::IpamOptions {
                driver: None,
                configs,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ingress_network(subnet: &str) -> api::Network {
    let mut n = overlay("ingress", subnet);
    n.spec.as_mut().expect("spec").ingress = true;
    n
}

fn attach(target: &str) -> api::NetworkAttachmentConfig {
    api::NetworkAttachmentConfig {
        target: target.into(),
        ..Default::default()
    }
}

/// A service `id` attached to `networks`, in `mode` (VIP or DNSRR), publishing `ports`.
fn service(
    id: &str,
    networks: &[&str],
    mode: api::endpoint_spec::ResolutionMode,
    ports: Vec<api::PortConfig>,
) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(api::ServiceSpec {
            annotations: Some(api::Annotations {
                name: id.into(),
                ..Default::default()
            }),
            task: Some(api::TaskSpec {
                networks: networks.iter().map(|n| attach(n)).collect(),
                ..Default::default()
            }),
            endpoint: Some(api::EndpointSpec {
                mode: mode as i32,
                ports,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn vip_service(id: &str, networks: &[&str]) -> api::Service {
    service(
        id,
        networks,
        api::endpoint_spec::ResolutionMode::Vip,
        Vec::new(),
    )
}

fn port(mode: api::port_config::PublishMode, published: u32) -> api::PortConfig {
    api::PortConfig {
        protocol: api::port_config::Protocol::Tcp as i32,
        target_port: 80,
        published_port: published,
        publish_mode: mode as i32,
        ..Default::default()
    }
}

/// A NEW task of `service`, whose spec attaches it to the service's networks as the
/// orchestrators' do.
fn task(id: &str, service: &api::Service) -> api::Task {
    let mut t = testkit::fixtures::task(id, &service.id, api::TaskState::New);
    t.status.as_mut().expect("status").message = "created".into();
    t.spec = service.spec.as_ref().and_then(|s| s.task.clone());
    t
}

async fn create(store: &MemoryStore, networks: Vec<api::Network>, services: Vec<api::Service>) {
    store
        .update(|tx| {
            networks
                .into_iter()
                .try_for_each(|n| tx.create_network(n))?;
            services.into_iter().try_for_each(|s| tx.create_service(s))
        })
        .await
        .expect("create");
}

async fn create_tasks(store: &MemoryStore, tasks: Vec<api::Task>) {
    store
        .update(|tx| tasks.into_iter().try_for_each(|t| tx.create_task(t)))
        .await
        .expect("create tasks");
}

async fn create_nodes(store: &MemoryStore, ids: &[&str]) {
    store
        .update(|tx| {
            ids.iter()
                .try_for_each(|id| tx.create_node(testkit::fixtures::node(id)))
        })
        .await
        .expect("create nodes");
}

fn state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

async fn wait_pending(store: &MemoryStore, ids: &[&str]) -> Vec<api::Task> {
    let what = format!("tasks {ids:?} pending");
    testkit::wait_for(WAIT, store, &what, |tx| {
        ids.iter()
            .map(|id| {
                tx.get_task(id)
                    .filter(|t| state(t) == api::TaskState::Pending as i32)
            })
            .collect::<Option<Vec<_>>>()
    })
    .await
}

/// Waits until `f` holds of the store.
async fn wait_until(store: &MemoryStore, what: &str, f: impl Fn(&ReadTx<'_>) -> bool) {
    testkit::wait_for(WAIT, store, what, |tx| f(tx).then_some(())).await;
}

fn vips(s: &api::Service) -> Vec<(String, String)> {
    s.endpoint
        .as_ref()
        .map(|e| {
            e.virtual_ips
                .iter()
                .map(|v| (v.network_id.clone(), v.addr.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The (network, address) pairs of attachments.
fn addresses(attachments: &[api::NetworkAttachment]) -> Vec<(String, String)> {
    attachments
        .iter()
        .flat_map(|a| {
            let id = a.network.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            a.addresses
                .iter()
                .map(move |addr| (id.clone(), addr.clone()))
        })
        .collect()
}

/// Every address handed out in the store (service VIPs, attachments of tasks at or below
/// RUNNING, node attachments), each with its owner.
fn all_addresses(tx: &ReadTx<'_>) -> Vec<((String, String), String)> {
    let mut all = Vec::new();
    for s in tx.find_services(store::By::All) {
        all.extend(vips(&s).into_iter().map(|a| (a, s.id.clone())));
    }
    for t in tx.find_tasks(store::By::All) {
        if state(&t) <= api::TaskState::Running as i32 {
            all.extend(
                addresses(&t.networks)
                    .into_iter()
                    .map(|a| (a, t.id.clone())),
            );
        }
    }
    for n in tx.find_nodes(store::By::All) {
        all.extend(
            addresses(&n.attachments)
                .into_iter()
                .map(|a| (a, n.id.clone())),
        );
    }
    all
}

/// Asserts no address is held twice, and returns them all.
fn assert_unique(store: &MemoryStore) -> BTreeMap<(String, String), String> {
    let all = store.view(all_addresses);
    let mut unique = BTreeMap::new();
    for (address, owner) in all {
        if let Some(other) = unique.insert(address.clone(), owner.clone()) {
            panic!("{address:?} is held by both {other} and {owner}");
        }
    }
    unique
}

#[tokio::test]
async fn vip_service_gets_a_vip_per_network_and_tasks_an_address_each() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    let web = vip_service("web", &["front", "back"]);
    create(
        &store,
        vec![
            overlay("front", "10.1.0.0/24"),
            overlay("back", "10.2.0.0/24"),
        ],
        vec![web.clone()],
    )
    .await;
    create_tasks(&store, vec![task("t1", &web), task("t2", &web)]).await;

    let tasks = wait_pending(&store, &["t1", "t2"]).await;
    let service = store.view(|tx| tx.get_service("web")).expect("service");
    let vips = vips(&service);
    assert_eq!(
        vips.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["front", "back"]
    );
    assert!(vips[0].1.starts_with("10.1.0.") && vips[0].1.ends_with("/24"));
    assert!(vips[1].1.starts_with("10.2.0."));
    for t in &tasks {
        let networks: Vec<&str> = t
            .networks
            .iter()
            .map(|a| a.network.as_ref().expect("network copy").id.as_str())
            .collect();
        assert_eq!(networks, ["front", "back"], "task {}", t.id);
        assert!(t.networks.iter().all(|a| a.addresses.len() == 1));
        let network = t.networks[0].network.as_ref().expect("network copy");
        assert!(network.ipam.is_some() && network.driver_state.is_some());
        assert_eq!(
            t.endpoint.as_deref().map(|e| e.virtual_ips.len()),
            Some(2),
            "the task carries the service's endpoint"
        );
    }
    let all = assert_unique(&store);
    assert_eq!(all.len(), 6, "2 VIPs and 2 addresses per task: {all:?}");
    allocator.stop().await;
}

#[tokio::test]
async fn dnsrr_service_has_no_vip_but_its_tasks_have_addresses() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    let s = service(
        "dns",
        &["net"],
        api::endpoint_spec::ResolutionMode::Dnsrr,
        Vec::new(),
    );
    create(&store, vec![overlay("net", "10.3.0.0/24")], vec![s.clone()]).await;
    create_tasks(&store, vec![task("d1", &s)]).await;
    let [d1] = <[api::Task; 1]>::try_from(wait_pending(&store, &["d1"]).await).expect("one");
    assert_eq!(addresses(&d1.networks).len(), 1);
    let service = store.view(|tx| tx.get_service("dns")).expect("service");
    assert!(vips(&service).is_empty(), "DNSRR: no VIP");

    // Switching to VIP mode gives it one.
    let mut updated = service.clone();
    updated
        .spec
        .as_mut()
        .and_then(|s| s.endpoint.as_mut())
        .expect("endpoint")
        .mode = api::endpoint_spec::ResolutionMode::Vip as i32;
    store
        .update(|tx| tx.update_service(updated))
        .await
        .expect("update");
    wait_until(&store, "a VIP after the switch to VIP mode", |tx| {
        tx.get_service("dns")
            .is_some_and(|s| vips(&s).len() == 1 && !vips(&s)[0].1.is_empty())
    })
    .await;
    assert_unique(&store);
    allocator.stop().await;
}

#[tokio::test]
async fn only_ingress_mode_ports_attach_to_ingress() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    use api::port_config::PublishMode;
    let routed = service(
        "routed",
        &["net"],
        api::endpoint_spec::ResolutionMode::Vip,
        vec![port(PublishMode::Ingress, 8080)],
    );
    let hosted = service(
        "hosted",
        &["net"],
        api::endpoint_spec::ResolutionMode::Vip,
        vec![port(PublishMode::Host, 8081)],
    );
    create(
        &store,
        vec![
            ingress_network("10.255.0.0/24"),
            overlay("net", "10.4.0.0/24"),
        ],
        vec![routed.clone(), hosted.clone()],
    )
    .await;
    create_tasks(&store, vec![task("r1", &routed), task("h1", &hosted)]).await;
    let tasks = wait_pending(&store, &["r1", "h1"]).await;
    let networks = |t: &api::Task| -> Vec<String> {
        t.networks
            .iter()
            .map(|a| a.network.as_ref().expect("network").id.clone())
            .collect()
    };
    assert_eq!(networks(&tasks[0]), ["ingress", "net"]);
    assert_eq!(networks(&tasks[1]), ["net"]);
    let (routed, hosted) = store.view(|tx| {
        (
            tx.get_service("routed").expect("routed"),
            tx.get_service("hosted").expect("hosted"),
        )
    });
    let vip_networks = |s: &api::Service| vips(s).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(vip_networks(&routed), ["ingress", "net"]);
    assert_eq!(vip_networks(&hosted), ["net"]);
    assert_unique(&store);
    allocator.stop().await;
}

/// The networks of `node`'s attachments.
fn node_networks(tx: &ReadTx<'_>, node: &str) -> BTreeSet<String> {
    tx.get_node(node)
        .map(|n| {
            n.attachments
                .iter()
                .filter(|a| a.addresses.len() == 1)
                .filter_map(|a| a.network.as_ref().map(|n| n.id.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn set_task(store: &MemoryStore, id: &str, node: &str, state: api::TaskState) {
    let (id, node) = (id.to_string(), node.to_string());
    store
        .update(move |tx| {
            let mut t = tx.get_task(&id).expect("task");
            t.node_id = node;
            t.status.as_mut().expect("status").state = state as i32;
            tx.update_task(t)
        })
        .await
        .expect("update task");
}

#[tokio::test]
async fn nodes_get_ingress_and_the_networks_of_their_tasks() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    let web = vip_service("web", &["net"]);
    create(
        &store,
        vec![
            ingress_network("10.255.0.0/24"),
            overlay("net", "10.5.0.0/24"),
        ],
        vec![web.clone()],
    )
    .await;
    create_nodes(&store, &["n1", "n2"]).await;
    wait_until(&store, "both nodes on ingress", |tx| {
        node_networks(tx, "n1") == set(&["ingress"]) && node_networks(tx, "n2") == set(&["ingress"])
    })
    .await;

    create_tasks(&store, vec![task("w1", &web)]).await;
    wait_pending(&store, &["w1"]).await;
    set_task(&store, "w1", "n1", api::TaskState::Assigned).await;
    wait_until(&store, "n1 on net", |tx| {
        node_networks(tx, "n1") == set(&["ingress", "net"])
    })
    .await;
    assert_eq!(store.view(|tx| node_networks(tx, "n2")), set(&["ingress"]));
    let before = assert_unique(&store);

    // The task stops: its address and n1's attachment on net go.
    set_task(&store, "w1", "n1", api::TaskState::Failed).await;
    wait_until(&store, "n1 off net", |tx| {
        node_networks(tx, "n1") == set(&["ingress"])
    })
    .await;
    let ingress_of = |m: &BTreeMap<(String, String), String>, node: &str| {
        m.iter()
            .find(|((n, _), owner)| n == "ingress" && *owner == node)
            .map(|(a, _)| a.clone())
    };
    let after = assert_unique(&store);
    assert_eq!(
        ingress_of(&before, "n1"),
        ingress_of(&after, "n1"),
        "the ingress address stays"
    );

    // A removed node gives its address back: a new node gets the lowest free one again only
    // after the serial allocation wraps, so check through exhaustion instead (see below); here,
    // that the node's removal leaves the others alone.
    store
        .update(|tx| tx.delete_node("n2"))
        .await
        .expect("delete node");
    create_nodes(&store, &["n3"]).await;
    wait_until(&store, "n3 on ingress", |tx| {
        node_networks(tx, "n3") == set(&["ingress"])
    })
    .await;
    assert_unique(&store);
    allocator.stop().await;
}

#[tokio::test]
async fn exhausted_network_keeps_tasks_new_with_the_reason_until_an_address_is_freed() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    // A /29: 8 addresses, less the network, broadcast and gateway ones: 5, one of them the VIP.
    let web = vip_service("web", &["tiny"]);
    create(
        &store,
        vec![overlay("tiny", "10.6.0.0/29")],
        vec![web.clone()],
    )
    .await;
    let ids: Vec<String> = (1..=5).map(|i| format!("w{i}")).collect();
    create_tasks(&store, ids.iter().map(|id| task(id, &web)).collect()).await;
    wait_pending(&store, &["w1", "w2", "w3", "w4"]).await;
    let w5 = testkit::wait_for(WAIT, &store, "w5 to carry the reason", |tx| {
        tx.get_task("w5")
            .filter(|t| t.status.as_ref().is_some_and(|s| !s.err.is_empty()))
    })
    .await;
    assert_eq!(state(&w5), api::TaskState::New as i32, "it stays NEW");
    let err = &w5.status.as_ref().expect("status").err;
    assert!(
        err.starts_with("failed to allocate network IP for task w5 network tiny")
            && err.contains("could not find an available IP"),
        "{err}"
    );
    assert!(w5.networks.is_empty(), "nothing stored for it");

    // A task that stops frees its address, and the waiting one takes it.
    set_task(&store, "w2", "", api::TaskState::Shutdown).await;
    let [w5] = <[api::Task; 1]>::try_from(wait_pending(&store, &["w5"]).await).expect("one");
    assert_eq!(addresses(&w5.networks).len(), 1);
    assert_unique(&store);

    // A removed service frees its VIP too: another service can have it.
    store
        .update(|tx| tx.delete_service("web"))
        .await
        .expect("delete service");
    let other = vip_service("other", &["tiny"]);
    create(&store, Vec::new(), vec![other]).await;
    wait_until(&store, "the other service gets the freed VIP", |tx| {
        tx.get_service("other")
            .is_some_and(|s| vips(&s).len() == 1 && !vips(&s)[0].1.is_empty())
    })
    .await;
    allocator.stop().await;
}

/// Ingress, network "net" on 10.7.0.0/24, VIP service "web" on it, `nodes`, and `count` tasks
/// a00.. of web, PENDING, a00 RUNNING on n1 (which then has an attachment on net).
async fn web_running_on_n1(store: &MemoryStore, nodes: &[&str], count: usize) -> api::Service {
    let web = vip_service("web", &["net"]);
    create(
        store,
        vec![
            ingress_network("10.255.0.0/24"),
            overlay("net", "10.7.0.0/24"),
        ],
        vec![web.clone()],
    )
    .await;
    create_nodes(store, nodes).await;
    let ids: Vec<String> = (0..count).map(|i| format!("a{i:02}")).collect();
    create_tasks(store, ids.iter().map(|id| task(id, &web)).collect()).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_pending(store, &refs).await;
    set_task(store, "a00", "n1", api::TaskState::Running).await;
    wait_until(store, "n1 on net", |tx| {
        node_networks(tx, "n1") == set(&["ingress", "net"])
    })
    .await;
    web
}

#[tokio::test]
async fn restart_keeps_every_address_and_hands_none_out_twice() {
    let store = MemoryStore::new(None);
    let first = start(&store);
    let web = web_running_on_n1(&store, &["n1", "n2"], 20).await;
    wait_until(&store, "n2 on ingress only", |tx| {
        node_networks(tx, "n2") == set(&["ingress"])
    })
    .await;
    let before = assert_unique(&store);
    first.stop().await;

    // A new allocator (a new leader) on the same store: nothing it restores changes, and what it
    // allocates next never repeats an address in use.
    let second = start(&store);
    let more: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    create_tasks(&store, more.iter().map(|id| task(id, &web)).collect()).await;
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    wait_pending(&store, &refs).await;
    create_nodes(&store, &["n3"]).await;
    wait_until(&store, "n3 on ingress", |tx| {
        node_networks(tx, "n3") == set(&["ingress"])
    })
    .await;
    let after = assert_unique(&store);
    for (address, owner) in &before {
        assert_eq!(after.get(address), Some(owner), "{address:?} moved");
    }
    assert_eq!(after.len(), before.len() + 21);
    second.stop().await;
}

#[tokio::test]
async fn a_network_restored_late_takes_back_the_addresses_stored_on_it() {
    let store = MemoryStore::new(None);
    let first = start(&store);
    let web = web_running_on_n1(&store, &["n1"], 5).await;
    let before = assert_unique(&store);
    first.stop().await;

    // A damaged store: another network holds the same stored allocation and is restored first,
    // so "net" cannot be restored and the addresses on it are not taken back at start-up.
    let mut blocker = store.view(|tx| tx.get_network("net")).expect("net");
    blocker.id = "a-blocker".into();
    blocker.spec.as_mut().expect("spec").annotations = Some(api::Annotations {
        name: "a-blocker".into(),
        ..Default::default()
    });
    store
        .update(|tx| tx.create_network(blocker))
        .await
        .expect("create blocker");
    let second = start(&store);
    let more: Vec<String> = (0..5).map(|i| format!("b{i:02}")).collect();
    create_tasks(&store, more.iter().map(|id| task(id, &web)).collect()).await;
    // The new allocator has started once a new node gets its ingress attachment.
    create_nodes(&store, &["n2"]).await;
    wait_until(&store, "n2 on ingress", |tx| {
        node_networks(tx, "n2") == set(&["ingress"])
    })
    .await;
    // Once the blocker goes, "net" is allocated again from its stored state: what the store says
    // is held on it must be taken back before the new tasks get addresses there.
    store
        .update(|tx| tx.delete_network("a-blocker"))
        .await
        .expect("delete blocker");
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    wait_pending(&store, &refs).await;
    let after = assert_unique(&store);
    // The tasks and the VIP keep theirs (a node's attachment on a network it cannot be restored
    // is planned again meanwhile, so it may move).
    for (address, owner) in before.iter().filter(|(_, o)| o.as_str() != "n1") {
        assert_eq!(after.get(address), Some(owner), "{address:?} moved");
    }
    second.stop().await;
}

#[tokio::test]
async fn removed_network_takes_node_attachments_with_it() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create(&store, vec![ingress_network("10.255.0.0/24")], Vec::new()).await;
    create_nodes(&store, &["n1"]).await;
    wait_until(&store, "n1 on ingress", |tx| {
        node_networks(tx, "n1") == set(&["ingress"])
    })
    .await;
    store
        .update(|tx| tx.delete_network("ingress"))
        .await
        .expect("delete network");
    wait_until(&store, "n1 without attachments", |tx| {
        tx.get_node("n1").is_some_and(|n| n.attachments.is_empty())
    })
    .await;
    allocator.stop().await;
}

/// Growth check (issue 17, item 7): 1,000 VIP-mode services on one network, created in rounds of
/// 250; prints the time each round took to get its VIPs. Run by hand:
/// `cargo nextest run -p allocator --run-ignored only vip_allocation_time --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn vip_allocation_time_does_not_grow_with_the_services() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create(&store, vec![overlay("big", "10.8.0.0/16")], Vec::new()).await;
    let mut rounds = Vec::new();
    for round in 0..4 {
        let started = std::time::Instant::now();
        for i in 0..250 {
            let s = vip_service(&format!("s{round}-{i:03}"), &["big"]);
            create(&store, Vec::new(), vec![s]).await;
        }
        // Only this round's services are read, so the wait costs the same every round.
        wait_until(&store, &format!("round {round} with its VIPs"), |tx| {
            (0..250).all(|i| {
                tx.get_service(&format!("s{round}-{i:03}"))
                    .is_some_and(|s| vips(&s).len() == 1)
            })
        })
        .await;
        rounds.push(started.elapsed());
    }
    println!("time per round of 250 services (create + VIP): {rounds:?}");
    assert_eq!(assert_unique(&store).len(), 1000);
    allocator.stop().await;
}
