//! Tests of the allocator loop over a raft-less store: networks' subnets, driver state and ports
//! reserved, freed and rebuilt after a restart, and NEW tasks moved to PENDING. The pure IPAM,
//! VXLAN ID and port logic is tested in `ipam/tests.rs`, `networks.rs` and `ports.rs`.

use std::time::Duration;

use api::port_config::PublishMode;
use store::{By, Event, MemoryStore, WatchFilter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Allocator, Error};

const WAIT: Duration = Duration::from_secs(10);

fn port(mode: PublishMode, target: u32, published: u32) -> api::PortConfig {
    api::PortConfig {
        name: String::new(),
        protocol: api::port_config::Protocol::Tcp as i32,
        target_port: target,
        published_port: published,
        publish_mode: mode as i32,
    }
}

fn ingress(target: u32, published: u32) -> api::PortConfig {
    port(PublishMode::Ingress, target, published)
}

fn host(target: u32, published: u32) -> api::PortConfig {
    port(PublishMode::Host, target, published)
}

fn service(id: &str, ports: Vec<api::PortConfig>) -> api::Service {
    api::Service {
        id: id.into(),
        spec: Some(api::ServiceSpec {
            annotations: Some(api::Annotations {
                name: format!("svc-{id}"),
                ..Default::default()
            }),
            endpoint: Some(api::EndpointSpec { mode: 0, ports }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, service_id: &str) -> api::Task {
    let mut t = testkit::fixtures::task(id, service_id, api::TaskState::New);
    t.status.as_mut().expect("status").message = "created".into();
    t
}

async fn create_service(store: &MemoryStore, s: api::Service) {
    store
        .update(|tx| tx.create_service(s))
        .await
        .expect("create service");
}

async fn create_tasks(store: &MemoryStore, tasks: Vec<api::Task>) {
    store
        .update(|tx| tasks.into_iter().try_for_each(|t| tx.create_task(t)))
        .await
        .expect("create tasks");
}

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

fn published(s: &api::Service) -> Option<Vec<u32>> {
    s.endpoint
        .as_ref()
        .map(|e| e.ports.iter().map(|p| p.published_port).collect())
}

fn state(t: &api::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

async fn wait_published(store: &MemoryStore, id: &str, expected: Vec<u32>) -> api::Service {
    let what = format!("service {id} published on {expected:?}");
    testkit::wait_for(WAIT, store, &what, |tx| {
        tx.get_service(id)
            .filter(|s| published(s).as_ref() == Some(&expected))
    })
    .await
}

async fn wait_pending(store: &MemoryStore, id: &str) -> api::Task {
    testkit::wait_for(WAIT, store, &format!("task {id} pending"), |tx| {
        tx.get_task(id)
            .filter(|t| state(t) == api::TaskState::Pending as i32)
    })
    .await
}

fn get_service(store: &MemoryStore, id: &str) -> api::Service {
    store.view(|tx| tx.get_service(id)).expect("service exists")
}

fn get_task(store: &MemoryStore, id: &str) -> api::Task {
    store.view(|tx| tx.get_task(id)).expect("task exists")
}

/// Creates a service without ports and a task of it, and waits for the task to be PENDING: every
/// change committed before has then been handled by the allocator.
async fn barrier(store: &MemoryStore, name: &str) {
    create_service(store, service(name, vec![])).await;
    let task_id = format!("{name}-task");
    create_tasks(store, vec![task(&task_id, name)]).await;
    wait_pending(store, &task_id).await;
}

#[tokio::test]
async fn ingress_port_is_reserved_and_task_moves_to_pending() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_service(&store, service("a", vec![ingress(80, 8080)])).await;
    create_tasks(&store, vec![task("a1", "a")]).await;

    let a = wait_published(&store, "a", vec![8080]).await;
    let endpoint = a.endpoint.clone().expect("endpoint");
    assert_eq!(
        endpoint.spec,
        a.spec.as_ref().and_then(|s| s.endpoint.clone())
    );
    assert_eq!(endpoint.ports, vec![ingress(80, 8080)]);

    let t = wait_pending(&store, "a1").await;
    let status = t.status.expect("status");
    assert_eq!(status.message, "pending task scheduling");
    assert!(status.timestamp.is_some());
    assert_eq!(t.endpoint, Some(Box::new(endpoint)));
    allocator.stop().await;
}

#[tokio::test]
async fn dynamic_ports_come_from_30000_upward() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_service(&store, service("a", vec![ingress(80, 0)])).await;
    wait_published(&store, "a", vec![30000]).await;

    // The explicit 30001 is taken first; the dynamic port is then the lowest free one. The endpoint
    // lists the ports in spec order.
    create_service(
        &store,
        service("b", vec![ingress(81, 0), ingress(82, 30001)]),
    )
    .await;
    let b = wait_published(&store, "b", vec![30002, 30001]).await;
    let ports = b.endpoint.expect("endpoint").ports;
    assert_eq!(ports, vec![ingress(81, 30002), ingress(82, 30001)]);
    allocator.stop().await;
}

#[tokio::test]
async fn conflicting_service_waits_until_the_port_is_freed() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_service(&store, service("a", vec![ingress(80, 8080)])).await;
    wait_published(&store, "a", vec![8080]).await;

    create_service(&store, service("b", vec![ingress(80, 8080)])).await;
    create_tasks(&store, vec![task("b1", "b"), task("b2", "b")]).await;
    barrier(&store, "z").await;
    assert_eq!(get_service(&store, "b").endpoint, None);
    assert_eq!(state(&get_task(&store, "b1")), api::TaskState::New as i32);
    assert_eq!(state(&get_task(&store, "b2")), api::TaskState::New as i32);

    store
        .update(|tx| tx.delete_service("a"))
        .await
        .expect("remove a");
    wait_published(&store, "b", vec![8080]).await;
    let b1 = wait_pending(&store, "b1").await;
    wait_pending(&store, "b2").await;
    assert_eq!(
        published(&api::Service {
            endpoint: b1.endpoint.map(|b| *b),
            ..Default::default()
        }),
        Some(vec![8080])
    );
    allocator.stop().await;
}

#[tokio::test]
async fn port_change_frees_the_old_port() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_service(&store, service("a", vec![ingress(80, 8080)])).await;
    wait_published(&store, "a", vec![8080]).await;
    create_service(&store, service("b", vec![ingress(80, 8080)])).await;
    create_tasks(&store, vec![task("b1", "b")]).await;
    barrier(&store, "z").await;
    assert_eq!(state(&get_task(&store, "b1")), api::TaskState::New as i32);

    // a moves to 9090: 8080 is freed and the waiting service gets it.
    let mut a = get_service(&store, "a");
    a.spec.as_mut().expect("spec").endpoint = Some(api::EndpointSpec {
        mode: 0,
        ports: vec![ingress(80, 9090)],
    });
    store
        .update(|tx| tx.update_service(a))
        .await
        .expect("update a");
    wait_published(&store, "a", vec![9090]).await;
    wait_published(&store, "b", vec![8080]).await;
    wait_pending(&store, "b1").await;
    allocator.stop().await;
}

#[tokio::test]
async fn host_mode_ports_are_copied_unallocated() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_service(&store, service("a", vec![host(80, 8080), host(81, 0)])).await;
    create_service(&store, service("b", vec![host(80, 8080), ingress(82, 0)])).await;
    create_tasks(&store, vec![task("a1", "a"), task("b1", "b")]).await;

    let a = wait_published(&store, "a", vec![8080, 0]).await;
    assert_eq!(
        a.endpoint.as_ref().expect("endpoint").ports,
        vec![host(80, 8080), host(81, 0)]
    );
    // The same host port again is fine; only the ingress port got a dynamic port.
    let b = wait_published(&store, "b", vec![8080, 30000]).await;
    assert_eq!(
        b.endpoint.as_ref().expect("endpoint").ports,
        vec![host(80, 8080), ingress(82, 30000)]
    );
    let a1 = wait_pending(&store, "a1").await;
    assert_eq!(a1.endpoint, a.endpoint.map(Box::new));
    wait_pending(&store, "b1").await;
    allocator.stop().await;
}

#[tokio::test]
async fn tasks_without_ports_or_with_networks_move_to_pending() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    let mut s = service("a", vec![]);
    s.spec.as_mut().expect("spec").endpoint = None;
    create_service(&store, s).await;
    let mut with_network = task("a1", "a");
    with_network.spec = Some(api::TaskSpec {
        networks: vec![api::NetworkAttachmentConfig {
            target: "net1".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    create_tasks(&store, vec![with_network, task("lone", "")]).await;

    let t = wait_pending(&store, "a1").await;
    assert_eq!(t.endpoint, None);
    assert!(
        t.networks.is_empty(),
        "no network attachment is allocated yet"
    );
    wait_pending(&store, "lone").await;
    assert_eq!(get_service(&store, "a").endpoint, None);
    allocator.stop().await;
}

#[tokio::test]
async fn many_tasks_move_in_batches() {
    let store = MemoryStore::new(None);
    create_service(&store, service("a", vec![ingress(80, 0)])).await;
    let tasks: Vec<api::Task> = (0..450).map(|i| task(&format!("t{i:03}"), "a")).collect();
    create_tasks(&store, tasks).await;

    let mut watcher = store.watch(WatchFilter::none().tasks());
    let allocator = start(&store);
    let mut in_commit = 0usize;
    let mut largest = 0usize;
    let mut moved = 0usize;
    while moved < 450 {
        let event = tokio::time::timeout(WAIT, watcher.recv())
            .await
            .expect("task updates arrive in time")
            .expect("store open");
        match event {
            Event::Commit { .. } => {
                largest = largest.max(in_commit);
                in_commit = 0;
            }
            Event::Object { .. } => {
                let t = event.object_as::<api::Task>().expect("task event");
                assert_eq!(state(t), api::TaskState::Pending as i32);
                in_commit += 1;
                moved += 1;
            }
        }
    }
    largest = largest.max(in_commit);
    assert!(largest > 1 && largest <= 200, "batch of {largest} tasks");
    let pending = store.view(|tx| tx.find_tasks(By::TaskState(api::TaskState::Pending)).len());
    assert_eq!(pending, 450);
    allocator.stop().await;
}

#[tokio::test]
async fn restart_rebuilds_the_port_map() {
    let store = MemoryStore::new(None);
    let first = start(&store);
    create_service(&store, service("a", vec![ingress(80, 0)])).await;
    create_service(&store, service("b", vec![ingress(80, 8080)])).await;
    let a = wait_published(&store, "a", vec![30000]).await;
    let b = wait_published(&store, "b", vec![8080]).await;
    first.stop().await;

    // Changes while no allocator runs (leadership moving): both wait for the next one.
    create_service(&store, service("c", vec![ingress(80, 0)])).await;
    create_service(&store, service("d", vec![ingress(80, 8080)])).await;
    create_tasks(&store, vec![task("c1", "c"), task("d1", "d")]).await;

    let second = start(&store);
    wait_published(&store, "c", vec![30001]).await;
    wait_pending(&store, "c1").await;
    assert_eq!(get_service(&store, "d").endpoint, None);
    assert_eq!(state(&get_task(&store, "d1")), api::TaskState::New as i32);
    // The services allocated before keep their ports, untouched.
    assert_eq!(get_service(&store, "a"), a);
    assert_eq!(get_service(&store, "b"), b);

    create_service(&store, service("e", vec![ingress(80, 0)])).await;
    wait_published(&store, "e", vec![30002]).await;
    second.stop().await;
}

/// Services that need allocation and together exceed one raft entry (each fits alone) are
/// allocated in several transactions: written as one, every retry would be refused again.
#[tokio::test]
async fn large_services_are_allocated_in_transactions_that_fit() {
    let store = MemoryStore::new(None);
    let ids = ["big-a", "big-b", "big-c"];
    for id in ids {
        let mut s = service(id, vec![ingress(80, 0)]);
        let annotations = s.spec.as_mut().and_then(|spec| spec.annotations.as_mut());
        annotations.expect("annotations").labels.insert(
            "payload".into(),
            "x".repeat(store::MAX_TRANSACTION_BYTES * 2 / 5),
        );
        create_service(&store, s).await;
    }
    // Allocated together at start: 3 x 0.4 of the limit would not fit one transaction.
    let running = start(&store);
    let mut ports = Vec::new();
    for id in ids {
        let what = format!("service {id} allocated");
        let s = testkit::wait_for(WAIT, &store, &what, |tx| {
            tx.get_service(id).filter(|s| published(s).is_some())
        })
        .await;
        ports.extend(published(&s).expect("published"));
    }
    ports.sort_unstable();
    assert_eq!(ports, [30000, 30001, 30002]);
    running.stop().await;
}

fn network(id: &str, driver: &str, vnis: Option<&str>) -> api::Network {
    api::Network {
        id: id.into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: format!("net-{id}"),
                ..Default::default()
            }),
            driver_config: Some(api::Driver {
                name: driver.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        driver_state: vnis.map(|v| api::Driver {
            name: "overlay".into(),
            options: [(crate::VXLAN_ID_LIST_OPTION.to_string(), v.to_string())].into(),
        }),
        ..Default::default()
    }
}

/// The IPAM state of a network with the given `(subnet, gateway)` configs.
fn ipam_state(configs: &[(&str, &str)]) -> api::IpamOptions {
    api::IpamOptions {
        driver: Some(api::Driver {
            name: "default".into(),
            ..Default::default()
        }),
        configs: configs
            .iter()
            .map(|(subnet, gateway)| api::IpamConfig {
                family: api::ipam_config::AddressFamily::Ipv4 as i32,
                subnet: subnet.to_string(),
                gateway: gateway.to_string(),
                ..Default::default()
            })
            .collect(),
    }
}

/// The networks bootstrap creates: ingress (10.0.0.0/24, VNI 4096) and the predefined bridge
/// and host.
fn bootstrap_networks() -> Vec<api::Network> {
    let mut ingress = network("ingress", "", Some("4096"));
    ingress.spec.as_mut().expect("spec").ingress = true;
    ingress.ipam = Some(ipam_state(&[("10.0.0.0/24", "10.0.0.1")]));
    let predefined = |name: &str| {
        let mut n = network(name, name, None);
        let spec = n.spec.as_mut().expect("spec");
        spec.annotations.as_mut().expect("annotations").labels = [(
            "com.docker.swarm.predefined".to_string(),
            "true".to_string(),
        )]
        .into();
        n.driver_state = Some(api::Driver {
            name: name.into(),
            ..Default::default()
        });
        n.ipam = Some(api::IpamOptions {
            driver: Some(api::Driver::default()),
            configs: Vec::new(),
        });
        n
    };
    vec![ingress, predefined("bridge"), predefined("host")]
}

async fn create_networks(store: &MemoryStore, networks: Vec<api::Network>) {
    store
        .update(|tx| networks.into_iter().try_for_each(|n| tx.create_network(n)))
        .await
        .expect("create networks");
}

/// Waits for the network's driver state and returns its driver name and VNI list.
async fn wait_driver_state(store: &MemoryStore, id: &str) -> (String, String) {
    let driver = testkit::wait_for(WAIT, store, &format!("network {id} allocated"), |tx| {
        tx.get_network(id).and_then(|n| n.driver_state)
    })
    .await;
    let vnis = driver
        .options
        .get(crate::VXLAN_ID_LIST_OPTION)
        .cloned()
        .unwrap_or_default();
    (driver.name, vnis)
}

fn overlay(name: &str, vnis: &str) -> (String, String) {
    (name.to_string(), vnis.to_string())
}

#[tokio::test]
async fn created_networks_get_distinct_vxlan_ids_after_ingress_and_predefined_ones_are_untouched() {
    let store = MemoryStore::new(None);
    create_networks(&store, bootstrap_networks()).await;
    let before = store.view(|tx| tx.find_networks(By::All));
    let allocator = start(&store);
    // No driver named: the default, overlay.
    create_networks(&store, vec![network("a", "", None)]).await;
    assert_eq!(
        wait_driver_state(&store, "a").await,
        overlay("overlay", "4097")
    );
    create_networks(&store, vec![network("b", "overlay", None)]).await;
    assert_eq!(
        wait_driver_state(&store, "b").await,
        overlay("overlay", "4098")
    );
    // A node-local driver gets its name only.
    create_networks(&store, vec![network("m", "macvlan", None)]).await;
    assert_eq!(wait_driver_state(&store, "m").await, overlay("macvlan", ""));
    barrier(&store, "sync").await;
    for n in before {
        assert_eq!(
            store.view(|tx| tx.get_network(&n.id)),
            Some(n),
            "bootstrap networks are left as they are"
        );
    }
    allocator.stop().await;
}

#[tokio::test]
async fn without_ingress_the_first_network_gets_4096() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_networks(&store, vec![network("a", "overlay", None)]).await;
    assert_eq!(
        wait_driver_state(&store, "a").await,
        overlay("overlay", "4096")
    );
    allocator.stop().await;
}

#[tokio::test]
async fn a_removed_networks_vxlan_id_is_handed_out_again() {
    let store = MemoryStore::new(None);
    let allocator = start(&store);
    create_networks(&store, vec![network("a", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "a").await.1, "4096");
    create_networks(&store, vec![network("b", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "b").await.1, "4097");
    store
        .update(|tx| tx.delete_network("a"))
        .await
        .expect("delete a");
    // Serially, as SwarmKit's overlay driver: the next one first, the freed one after a wrap.
    create_networks(&store, vec![network("c", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "c").await.1, "4098");
    // A new leader starts from the lowest free ID: 4096, freed above.
    allocator.stop().await;
    let allocator = start(&store);
    create_networks(&store, vec![network("d", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "d").await.1, "4096");
    create_networks(&store, vec![network("e", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "e").await.1, "4099");
    allocator.stop().await;
}

#[tokio::test]
async fn ids_in_the_store_at_start_are_not_handed_out_again() {
    let store = MemoryStore::new(None);
    create_networks(
        &store,
        vec![
            network("held", "overlay", Some("4096,4097")),
            network("far", "overlay", Some("4099")),
            network("waiting", "overlay", None),
            network("plugin", "weave", None),
        ],
    )
    .await;
    let allocator = start(&store);
    // Allocated at start, as are those created after.
    assert_eq!(wait_driver_state(&store, "waiting").await.1, "4098");
    create_networks(&store, vec![network("new", "overlay", None)]).await;
    assert_eq!(wait_driver_state(&store, "new").await.1, "4100");
    barrier(&store, "sync").await;
    // A driver swarmd has no plugin for is not allocated, and nothing else waits for it.
    let plugin = store.view(|tx| tx.get_network("plugin")).expect("plugin");
    assert_eq!(plugin.driver_state, None);
    allocator.stop().await;
}

/// Waits for the network's IPAM state and returns its `(subnet, gateway)` configs.
async fn wait_subnets(store: &MemoryStore, id: &str) -> Vec<(String, String)> {
    let network = testkit::wait_for(WAIT, store, &format!("network {id} allocated"), |tx| {
        tx.get_network(id).filter(|n| n.ipam.is_some())
    })
    .await;
    // The driver state is written in the same transaction.
    assert!(network.driver_state.is_some(), "{network:?}");
    let ipam = network.ipam.expect("ipam");
    // Node-local networks get the empty state SwarmKit gives them.
    let driver = if ipam.configs.is_empty() {
        ""
    } else {
        "default"
    };
    assert_eq!(ipam.driver.expect("driver").name, driver);
    ipam.configs
        .into_iter()
        .map(|c| (c.subnet, c.gateway))
        .collect()
}

fn subnet(subnet: &str, gateway: &str) -> Vec<(String, String)> {
    vec![(subnet.to_string(), gateway.to_string())]
}

fn with_subnets(mut n: api::Network, configs: &[(&str, &str)]) -> api::Network {
    n.spec.as_mut().expect("spec").ipam = Some(api::IpamOptions {
        driver: None,
        configs: ipam_state(configs).configs,
    });
    n
}

#[tokio::test]
async fn created_networks_get_subnets_from_the_default_pool_or_their_own() {
    let store = MemoryStore::new(None);
    create_networks(&store, bootstrap_networks()).await;
    let allocator = start(&store);
    create_networks(&store, vec![network("a", "overlay", None)]).await;
    assert_eq!(
        wait_subnets(&store, "a").await,
        subnet("10.0.1.0/24", "10.0.1.1"),
        "ingress holds 10.0.0.0/24"
    );
    let user = with_subnets(
        network("u", "overlay", None),
        &[("10.1.0.0/16", ""), ("10.2.0.0/16", "10.2.0.9")],
    );
    create_networks(&store, vec![user]).await;
    assert_eq!(
        wait_subnets(&store, "u").await,
        [
            ("10.1.0.0/16".to_string(), "10.1.0.1".to_string()),
            ("10.2.0.0/16".to_string(), "10.2.0.9".to_string())
        ]
    );
    // One VXLAN ID per IPv4 subnet.
    assert_eq!(wait_driver_state(&store, "u").await.1, "4098,4099");
    // Node-local networks get an empty IPAM state, as SwarmKit's.
    create_networks(&store, vec![network("m", "macvlan", None)]).await;
    assert_eq!(wait_subnets(&store, "m").await, []);
    allocator.stop().await;
}

#[tokio::test]
async fn a_full_pool_waits_for_a_removed_networks_subnet_and_a_restart_keeps_them() {
    let store = MemoryStore::new(None);
    // A cluster whose default pool holds two /24s.
    store
        .update(|tx| {
            tx.create_cluster(api::Cluster {
                id: "cluster".into(),
                default_address_pool: vec!["10.9.0.0/23".into()],
                subnet_size: 24,
                ..Default::default()
            })
        })
        .await
        .expect("cluster");
    let allocator = start(&store);
    create_networks(&store, vec![network("a", "overlay", None)]).await;
    assert_eq!(
        wait_subnets(&store, "a").await,
        subnet("10.9.0.0/24", "10.9.0.1")
    );
    create_networks(&store, vec![network("b", "overlay", None)]).await;
    assert_eq!(
        wait_subnets(&store, "b").await,
        subnet("10.9.1.0/24", "10.9.1.1")
    );
    create_networks(&store, vec![network("c", "overlay", None)]).await;
    barrier(&store, "sync").await;
    let c = store.view(|tx| tx.get_network("c")).expect("c");
    assert_eq!(
        (c.ipam, c.driver_state),
        (None, None),
        "no subnet left for c"
    );
    store
        .update(|tx| tx.delete_network("a"))
        .await
        .expect("delete a");
    assert_eq!(
        wait_subnets(&store, "c").await,
        subnet("10.9.0.0/24", "10.9.0.1")
    );
    // A new leader takes back what the store holds: nothing is left for d.
    allocator.stop().await;
    let allocator = start(&store);
    create_networks(&store, vec![network("d", "overlay", None)]).await;
    barrier(&store, "sync2").await;
    let d = store.view(|tx| tx.get_network("d")).expect("d");
    assert_eq!(
        d.ipam, None,
        "the restored subnets are not handed out again"
    );
    store
        .update(|tx| tx.delete_network("b"))
        .await
        .expect("delete b");
    assert_eq!(
        wait_subnets(&store, "d").await,
        subnet("10.9.1.0/24", "10.9.1.1")
    );
    allocator.stop().await;
}

#[tokio::test]
async fn at_start_ingress_is_allocated_first() {
    let store = MemoryStore::new(None);
    let mut ingress = network("z-ingress", "", None);
    ingress.spec.as_mut().expect("spec").ingress = true;
    create_networks(&store, vec![network("a", "overlay", None), ingress]).await;
    let allocator = start(&store);
    assert_eq!(
        wait_subnets(&store, "z-ingress").await,
        subnet("10.0.0.0/24", "10.0.0.1")
    );
    assert_eq!(wait_driver_state(&store, "z-ingress").await.1, "4096");
    assert_eq!(
        wait_subnets(&store, "a").await,
        subnet("10.0.1.0/24", "10.0.1.1")
    );
    allocator.stop().await;
}
