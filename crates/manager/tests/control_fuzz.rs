//! Property test of the Control service's request handling (issue 14, item 6): every method of
//! `docker.swarmkit.v1.Control` (read from proto/control.proto, so a new method without a
//! generator here fails) gets random bytes and random-but-valid requests (built from the objects of
//! a seeded store, then mutated field by field at the protobuf wire level), sent through the real
//! gRPC server path (`ControlServer`: framing, prost codec, handler) over a raft-less store.
//!
//! Checked for every case: no panic; an error carries a proper code (never Unknown or Internal,
//! except the codec's Internal for bytes that do not decode and the few plain errors SwarmKit
//! itself returns, which gRPC reports as Unknown: see [`SWARMKIT_UNKNOWN`]); on error every table
//! is unchanged; on success reads change nothing, a create adds exactly one object of its kind, an
//! update bumps the version of its object only, a remove removes its object.
//!
//! Replay a failure with `CONTROL_FUZZ_SEED=<seed>` (and `CONTROL_FUZZ_CASES` for more cases).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use api::control_server::ControlServer;
use http_body_util::{BodyExt, Full};
use manager::controlapi::{ControlApi, RaftMembers};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use store::{By, MemoryStore};
use tonic::codegen::{Bytes, http};
use tonic::{Code, Status};
use tower::ServiceExt;

const CONTROL_PROTO: &str = include_str!("../../../proto/control.proto");

/// Messages of plain Go errors that SwarmKit's handlers return unwrapped, which grpc-go reports
/// with code Unknown; we answer the same (faithfulness over the code).
const SWARMKIT_UNKNOWN: &[&str] = &[
    // store.ErrSequenceConflict
    "update out of sequence",
    // store.ErrNameConflict (CreateNetwork, UpdateCluster, ... pass it through)
    "name conflicts with an existing object",
    // constraint.Parse errors (validatePlacement)
    "constraint expected one operator",
    "key '",
    "value '",
];

/// The raft members of the fixture: `mgr1` and `mgr2`.
struct Members;

impl RaftMembers for Members {
    fn manager_status(&self, node_id: &str) -> Option<api::ManagerStatus> {
        self.is_member(node_id).then(|| api::ManagerStatus {
            raft_id: 7,
            addr: "127.0.0.1:4242".to_string(),
            leader: node_id == "mgr1",
            reachability: api::raft_member_status::Reachability::Reachable as i32,
        })
    }
    fn is_member(&self, node_id: &str) -> bool {
        node_id == "mgr1" || node_id == "mgr2"
    }
}

/// A seeded generator, so a failing case can be replayed by seed.
struct Rng(StdRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The rpc names of the Control service in proto/control.proto.
fn proto_methods() -> Vec<String> {
    let body = CONTROL_PROTO
        .split_once("service Control {")
        .expect("service Control in control.proto")
        .1;
    let body = body.split_once("\n}").expect("end of service Control").0;
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().expect("rpc name").trim().to_string())
        .collect()
}

// ------------------------------------------------------------------------------ method table

/// What a successful call may do to the store.
#[derive(Clone, Copy)]
enum Effect {
    Read,
    Create(&'static str),
    Update(&'static str, fn(&[u8]) -> String),
    Remove(&'static str, fn(&[u8]) -> String),
}

struct Method {
    name: &'static str,
    decodes: fn(&[u8]) -> bool,
    debug: fn(&[u8]) -> String,
    effect: Effect,
}

macro_rules! methods {
    ($($name:literal $req:ident $effect:ident $($kind:literal $($field:ident)?)?;)*) => {
        vec![$(Method {
            name: $name,
            decodes: |b| api::$req::decode(b).is_ok(),
            debug: |b| match api::$req::decode(b) {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("undecodable: {e}"),
            },
            effect: methods!(@effect $req $effect $($kind $($field)?)?),
        },)*]
    };
    (@effect $req:ident read) => { Effect::Read };
    (@effect $req:ident create $kind:literal) => { Effect::Create($kind) };
    (@effect $req:ident update $kind:literal $field:ident) => {
        Effect::Update($kind, |b| api::$req::decode(b).map(|r| r.$field).unwrap_or_default())
    };
    (@effect $req:ident remove $kind:literal $field:ident) => {
        Effect::Remove($kind, |b| api::$req::decode(b).map(|r| r.$field).unwrap_or_default())
    };
}

fn method_table() -> Vec<Method> {
    methods! {
        "GetNode" GetNodeRequest read;
        "ListNodes" ListNodesRequest read;
        "UpdateNode" UpdateNodeRequest update "node" node_id;
        "RemoveNode" RemoveNodeRequest remove "node" node_id;
        "GetTask" GetTaskRequest read;
        "ListTasks" ListTasksRequest read;
        "RemoveTask" RemoveTaskRequest remove "task" task_id;
        "GetService" GetServiceRequest read;
        "ListServices" ListServicesRequest read;
        "CreateService" CreateServiceRequest create "service";
        "UpdateService" UpdateServiceRequest update "service" service_id;
        "RemoveService" RemoveServiceRequest remove "service" service_id;
        "ListServiceStatuses" ListServiceStatusesRequest read;
        "GetNetwork" GetNetworkRequest read;
        "ListNetworks" ListNetworksRequest read;
        "CreateNetwork" CreateNetworkRequest create "network";
        "RemoveNetwork" RemoveNetworkRequest remove "network" network_id;
        "GetCluster" GetClusterRequest read;
        "ListClusters" ListClustersRequest read;
        "UpdateCluster" UpdateClusterRequest update "cluster" cluster_id;
        "GetSecret" GetSecretRequest read;
        "UpdateSecret" UpdateSecretRequest update "secret" secret_id;
        "ListSecrets" ListSecretsRequest read;
        "CreateSecret" CreateSecretRequest create "secret";
        "RemoveSecret" RemoveSecretRequest remove "secret" secret_id;
        "GetConfig" GetConfigRequest read;
        "UpdateConfig" UpdateConfigRequest update "config" config_id;
        "ListConfigs" ListConfigsRequest read;
        "CreateConfig" CreateConfigRequest create "config";
        "RemoveConfig" RemoveConfigRequest remove "config" config_id;
        "GetExtension" GetExtensionRequest read;
        "CreateExtension" CreateExtensionRequest create "extension";
        "RemoveExtension" RemoveExtensionRequest remove "extension" extension_id;
        "GetResource" GetResourceRequest read;
        "UpdateResource" UpdateResourceRequest update "resource" resource_id;
        "ListResources" ListResourcesRequest read;
        "CreateResource" CreateResourceRequest create "resource";
        "RemoveResource" RemoveResourceRequest remove "resource" resource_id;
        "CreateVolume" CreateVolumeRequest create "volume";
        "GetVolume" GetVolumeRequest read;
        "UpdateVolume" UpdateVolumeRequest update "volume" volume_id;
        "ListVolumes" ListVolumesRequest read;
        "RemoveVolume" RemoveVolumeRequest remove "volume" volume_id;
    }
}

// ---------------------------------------------------------------------------------- fixture

/// The control API under test and its store.
struct Fx {
    ctl: ControlApi,
    store: MemoryStore,
}

impl Fx {
    fn new() -> Fx {
        let store = MemoryStore::new(None);
        Fx {
            ctl: ControlApi::new(store.clone(), Arc::new(Members)),
            store,
        }
    }
}

fn annotations(name: &str) -> Option<api::Annotations> {
    Some(api::Annotations {
        name: name.to_string(),
        labels: [("tier".to_string(), "front".to_string())].into(),
        ..Default::default()
    })
}

/// `seconds` and a few nanoseconds: both fields are on the wire, for mutations to change.
fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 5 })
}

fn node(id: &str, role: api::NodeRole, state: api::node_status::State) -> api::Node {
    let mut n = testkit::fixtures::node(id);
    n.role = role as i32;
    let spec = n.spec.get_or_insert_with(Default::default);
    spec.desired_role = role as i32;
    spec.membership = api::node_spec::Membership::Accepted as i32;
    n.status.get_or_insert_with(Default::default).state = state as i32;
    n
}

fn cluster_object(root: &ca::RootCa) -> api::Cluster {
    api::Cluster {
        id: "cluster0000000000000000001".to_string(),
        spec: Some(api::ClusterSpec {
            annotations: Some(api::Annotations {
                name: "default".to_string(),
                ..Default::default()
            }),
            ca_config: Some(api::CaConfig {
                node_cert_expiry: secs(90 * 24 * 3600),
                ..Default::default()
            }),
            dispatcher: Some(api::DispatcherConfig {
                heartbeat_period: secs(5),
            }),
            ..Default::default()
        }),
        root_ca: Some(api::RootCa {
            ca_key: root.key_pem().expect("key").to_vec(),
            ca_cert: root.cert_pem().to_vec(),
            ca_cert_hash: root.cert_hash(),
            join_tokens: Some(api::JoinTokens {
                worker: ca::generate_join_token(root),
                manager: ca::generate_join_token(root),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_spec(w: &Refs, rng: &mut Rng) -> api::ContainerSpec {
    let mut c = api::ContainerSpec {
        image: ["nginx:latest", "busybox", "localhost:5000/a/b:1"][rng.below(3)].to_string(),
        env: vec!["A=1".to_string()],
        ..Default::default()
    };
    if let Some((id, name)) = rng.pick(&w.secrets).filter(|_| rng.chance(2)) {
        c.secrets.push(api::SecretReference {
            secret_id: id.clone(),
            secret_name: name.clone(),
            target: Some(api::secret_reference::Target::File(api::FileTarget {
                name: "s".to_string(),
                mode: 0o400,
                ..Default::default()
            })),
        });
    }
    if let Some((id, name)) = rng.pick(&w.configs).filter(|_| rng.chance(2)) {
        c.configs.push(api::ConfigReference {
            config_id: id.clone(),
            config_name: name.clone(),
            target: Some(api::config_reference::Target::File(api::FileTarget {
                name: "c".to_string(),
                mode: 0o444,
                ..Default::default()
            })),
        });
    }
    if rng.chance(3) {
        c.healthcheck = Some(api::HealthConfig {
            test: vec!["CMD".to_string(), "true".to_string()],
            interval: secs(2),
            timeout: secs(1),
            retries: 3,
            start_period: secs(1),
            ..Default::default()
        });
        c.stop_grace_period = secs(3);
    }
    if rng.chance(3) {
        c.mounts.push(api::Mount {
            target: "/data".to_string(),
            source: "vol".to_string(),
            ..Default::default()
        });
    }
    c
}

fn service_spec(name: &str, w: &Refs, rng: &mut Rng) -> api::ServiceSpec {
    use api::service_spec::Mode;
    let mode = match rng.below(4) {
        0 => Mode::Global(api::GlobalService {}),
        1 => Mode::ReplicatedJob(api::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 2,
        }),
        _ => Mode::Replicated(api::ReplicatedService {
            replicas: rng.below(4) as u64,
        }),
    };
    let is_job = matches!(mode, Mode::ReplicatedJob(_));
    let mut task = api::TaskSpec {
        runtime: Some(api::task_spec::Runtime::Container(Box::new(
            container_spec(w, rng),
        ))),
        ..Default::default()
    };
    if let Some(net) = rng.pick(&w.networks).filter(|_| rng.chance(2)) {
        task.networks.push(api::NetworkAttachmentConfig {
            target: net.clone(),
            ..Default::default()
        });
    }
    if rng.chance(3) {
        task.placement = Some(Box::new(api::Placement {
            constraints: vec!["node.role==worker".to_string()],
            ..Default::default()
        }));
    }
    if rng.chance(3) {
        task.restart = Some(Box::new(api::RestartPolicy {
            delay: secs(1),
            max_attempts: 3,
            window: secs(10),
            ..Default::default()
        }));
    }
    let endpoint = rng.chance(3).then(|| api::EndpointSpec {
        ports: vec![api::PortConfig {
            target_port: 80,
            published_port: 30000 + rng.below(50) as u32,
            publish_mode: rng.below(2) as i32,
            ..Default::default()
        }],
        ..Default::default()
    });
    api::ServiceSpec {
        annotations: annotations(name),
        task: Some(task),
        mode: Some(mode),
        update: (!is_job && rng.chance(2)).then(|| api::UpdateConfig {
            parallelism: 1,
            delay: secs(1),
            monitor: secs(2),
            max_failure_ratio: 0.5,
            ..Default::default()
        }),
        endpoint,
        ..Default::default()
    }
}

fn network_spec(name: &str, rng: &mut Rng) -> api::NetworkSpec {
    api::NetworkSpec {
        annotations: annotations(name),
        driver_config: Some(api::Driver {
            name: "overlay".to_string(),
            ..Default::default()
        }),
        ipam: rng.chance(2).then(|| api::IpamOptions {
            configs: vec![api::IpamConfig {
                subnet: format!("10.{}.0.0/24", rng.below(250)),
                gateway: String::new(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        attachable: rng.chance(2),
        ..Default::default()
    }
}

/// IDs and names of what is in the store, for references.
struct Refs {
    secrets: Vec<(String, String)>,
    configs: Vec<(String, String)>,
    networks: Vec<String>,
    /// Every ID and name of every object: the strings mutations put into fields.
    strings: Vec<String>,
}

fn refs(store: &MemoryStore) -> Refs {
    let snap = store.save();
    let name =
        |a: &Option<api::Annotations>| a.as_ref().map(|a| a.name.clone()).unwrap_or_default();
    let mut strings = Vec::new();
    macro_rules! collect {
        ($($field:ident $(. $spec:ident)?),*) => {$(
            for o in &snap.$field {
                strings.push(o.id.clone());
                strings.push(o.id[..o.id.len().min(5)].to_string());
                $( strings.push(name(&o.$spec.as_ref().and_then(|s| s.annotations.clone()))); )?
            }
        )*};
    }
    collect!(
        nodes.spec,
        services.spec,
        networks.spec,
        tasks,
        clusters.spec,
        secrets.spec,
        configs.spec,
        resources,
        extensions
    );
    for r in &snap.resources {
        strings.push(name(&r.annotations));
    }
    for e in &snap.extensions {
        strings.push(name(&e.annotations));
    }
    let spec_name = |s: Option<api::Annotations>| s.map(|a| a.name).unwrap_or_default();
    Refs {
        secrets: snap
            .secrets
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    spec_name(s.spec.clone().and_then(|s| s.annotations)),
                )
            })
            .collect(),
        configs: snap
            .configs
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    spec_name(s.spec.clone().and_then(|s| s.annotations)),
                )
            })
            .collect(),
        networks: snap
            .networks
            .iter()
            .filter(|n| !n.spec.as_ref().is_some_and(|s| s.ingress))
            .map(|n| n.id.clone())
            .collect(),
        strings,
    }
}

/// A control API over a store holding a small cluster: managers (raft members) and workers, up
/// and down, the default cluster with a real root CA, the ingress, a predefined and a user
/// network, a secret, a config, services of every mode (one updated, so it has a previous spec)
/// with tasks on nodes, an extension and a resource of it.
async fn seeded() -> Fx {
    use api::NodeRole::{Manager, Worker};
    use api::node_status::State::{Down, Ready};
    let fx = Fx::new();
    let root = ca::RootCa::generate().expect("root CA");
    let cluster = cluster_object(&root);
    fx.store
        .update(|tx| {
            tx.create_cluster(cluster)?;
            tx.create_node(node("mgr1", Manager, Ready))?;
            tx.create_node(node("mgr2", Manager, Down))?;
            tx.create_node(node("wrk1", Worker, Ready))?;
            tx.create_node(node("wrk2", Worker, Down))?;
            tx.create_network(api::Network {
                id: "ingress00000000000000000001".to_string(),
                spec: Some(api::NetworkSpec {
                    annotations: Some(api::Annotations {
                        name: "ingress".to_string(),
                        labels: [("com.docker.swarm.internal".to_string(), "true".to_string())]
                            .into(),
                        ..Default::default()
                    }),
                    ingress: true,
                    ..Default::default()
                }),
                ..Default::default()
            })?;
            tx.create_network(api::Network {
                id: "bridge000000000000000000001".to_string(),
                spec: Some(api::NetworkSpec {
                    annotations: Some(api::Annotations {
                        name: "bridge".to_string(),
                        labels: [(
                            "com.docker.swarm.predefined".to_string(),
                            "true".to_string(),
                        )]
                        .into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .await
        .expect("seeding");
    let mut rng = Rng::new(1);
    let call = |method: &'static str, req: Vec<u8>| {
        let ctl = fx.ctl.clone();
        async move {
            let (status, _) = call(&ctl, method, &req).await;
            assert_eq!(status.code(), Code::Ok, "seeding {method}: {status:?}");
        }
    };
    call(
        "CreateNetwork",
        api::CreateNetworkRequest {
            spec: Some(network_spec("net1", &mut rng)),
        }
        .encode_to_vec(),
    )
    .await;
    call(
        "CreateSecret",
        api::CreateSecretRequest {
            spec: Some(api::SecretSpec {
                annotations: annotations("sec1"),
                data: b"hush".to_vec(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
    )
    .await;
    call(
        "CreateConfig",
        api::CreateConfigRequest {
            spec: Some(api::ConfigSpec {
                annotations: annotations("cfg1"),
                data: b"conf".to_vec(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
    )
    .await;
    call(
        "CreateExtension",
        api::CreateExtensionRequest {
            annotations: annotations("ext1"),
            description: "an extension".to_string(),
        }
        .encode_to_vec(),
    )
    .await;
    call(
        "CreateResource",
        api::CreateResourceRequest {
            annotations: annotations("res1"),
            kind: "ext1".to_string(),
            payload: Some(prost_types::Any {
                type_url: "x/y".to_string(),
                value: b"z".to_vec(),
            }),
        }
        .encode_to_vec(),
    )
    .await;
    for name in ["web", "job", "glob", "api"] {
        let r = refs(&fx.store);
        let mut spec = service_spec(name, &r, &mut rng);
        spec.endpoint = None;
        call(
            "CreateService",
            api::CreateServiceRequest { spec: Some(spec) }.encode_to_vec(),
        )
        .await;
    }
    // One service updated once (it has a previous spec), and tasks on nodes.
    let services = fx.store.view(|tx| tx.find_services(By::All));
    let web = services
        .iter()
        .find(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .is_some_and(|a| a.name == "web")
        })
        .expect("web")
        .clone();
    let mut spec = web.spec.clone().expect("spec");
    spec.annotations
        .as_mut()
        .expect("annotations")
        .labels
        .insert("v".into(), "2".into());
    call(
        "UpdateService",
        api::UpdateServiceRequest {
            service_id: web.id.clone(),
            service_version: web.meta.and_then(|m| m.version),
            spec: Some(spec),
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .await;
    let net1 = refs(&fx.store).networks;
    fx.store
        .update(|tx| {
            for (i, s) in services.iter().enumerate() {
                for (slot, node) in ["mgr1", "wrk1", "wrk2"].iter().enumerate() {
                    let mut t = testkit::fixtures::task(
                        &format!("task{i}{slot}0000000000000000000000"),
                        &s.id,
                        api::TaskState::Running,
                    );
                    t.slot = slot as u64 + 1;
                    t.node_id = node.to_string();
                    t.spec = s.spec.as_ref().and_then(|sp| sp.task.clone());
                    t.service_annotations = s.spec.as_ref().and_then(|sp| sp.annotations.clone());
                    t.networks = net1
                        .iter()
                        .take(1)
                        .map(|n| api::NetworkAttachment {
                            network: Some(api::Network {
                                id: n.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect();
                    tx.create_task(t)?;
                }
            }
            Ok(())
        })
        .await
        .expect("seeding tasks");
    fx
}

// ------------------------------------------------------------------------- valid requests

fn version(meta: &Option<api::Meta>) -> Option<api::Version> {
    meta.as_ref().and_then(|m| m.version)
}

fn some_strings(rng: &mut Rng, w: &Refs) -> Vec<String> {
    (0..rng.below(3))
        .filter_map(|_| rng.pick(&w.strings).cloned())
        .collect()
}

fn some_labels(rng: &mut Rng) -> BTreeMap<String, String> {
    if rng.chance(2) {
        return Default::default();
    }
    [(
        "tier".to_string(),
        ["front", "", "x"][rng.below(3)].to_string(),
    )]
    .into()
}

/// A request for `method` that is valid as far as the client can tell, about objects of the
/// store (or, now and then, about ones it does not have).
fn valid_request(method: &str, rng: &mut Rng, store: &MemoryStore) -> Vec<u8> {
    let w = refs(store);
    let snap = store.save();
    let fresh = format!("n{}", rng.next() % 100_000);
    macro_rules! id_of {
        ($table:ident) => {
            match rng.pick(&snap.$table) {
                Some(o) if !rng.chance(8) => o.id.clone(),
                _ => api::naming::new_id(),
            }
        };
    }
    // Filters on the usual fields (names, ID prefixes, labels, name prefixes) and `extra`, or none.
    macro_rules! filters {
        ($($seg:ident)::+ { $($extra:tt)* }) => {
            rng.chance(2).then(|| $($seg)::+ {
                names: some_strings(rng, &w),
                id_prefixes: some_strings(rng, &w),
                labels: some_labels(rng),
                name_prefixes: some_strings(rng, &w),
                $($extra)*
            })
        };
    }
    // An update of the labels of a secret or config (the rest of its spec as stored).
    macro_rules! update_labels {
        ($table:ident, $req:ident, $id:ident, $version:ident) => {{
            let o = obj!($table);
            let mut spec = o.spec.clone().unwrap_or_default();
            spec.data.clear();
            if let Some(a) = spec.annotations.as_mut() {
                a.labels.insert("v".into(), fresh.clone());
            }
            api::$req {
                $id: o.id.clone(),
                $version: version(&o.meta),
                spec: Some(spec),
            }
            .encode_to_vec()
        }};
    }
    // A new secret or config of a few random bytes.
    macro_rules! create_data {
        ($req:ident, $spec:ident) => {{
            let n = 1 + rng.below(64);
            api::$req {
                spec: Some(api::$spec {
                    annotations: annotations(&fresh),
                    data: rng.bytes(n),
                    ..Default::default()
                }),
            }
            .encode_to_vec()
        }};
    }
    macro_rules! obj {
        ($table:ident) => {
            rng.pick(&snap.$table).cloned().unwrap_or_default()
        };
    }
    match method {
        "GetNode" => api::GetNodeRequest {
            node_id: id_of!(nodes),
        }
        .encode_to_vec(),
        "ListNodes" => api::ListNodesRequest {
            filters: filters!(api::list_nodes_request::Filters {
                node_labels: some_labels(rng),
                memberships: (0..rng.below(2)).map(|_| rng.below(3) as i32).collect(),
                roles: (0..rng.below(2)).map(|_| rng.below(3) as i32).collect(),
            }),
        }
        .encode_to_vec(),
        "UpdateNode" => {
            let n: api::Node = obj!(nodes);
            let mut spec = n.spec.clone().unwrap_or_default();
            spec.availability = rng.below(3) as i32;
            if rng.chance(3) {
                spec.desired_role = rng.below(2) as i32;
            }
            api::UpdateNodeRequest {
                node_id: n.id.clone(),
                node_version: version(&n.meta),
                spec: Some(spec),
            }
            .encode_to_vec()
        }
        "RemoveNode" => api::RemoveNodeRequest {
            node_id: id_of!(nodes),
            force: rng.chance(2),
        }
        .encode_to_vec(),
        "GetTask" => api::GetTaskRequest {
            task_id: id_of!(tasks),
        }
        .encode_to_vec(),
        "ListTasks" => api::ListTasksRequest {
            filters: filters!(api::list_tasks_request::Filters {
                service_ids: some_strings(rng, &w),
                node_ids: some_strings(rng, &w),
                desired_states: (0..rng.below(2))
                    .map(|_| 64 * rng.below(10) as i32)
                    .collect(),
                runtimes: if rng.chance(2) {
                    vec!["container".to_string()]
                } else {
                    vec![]
                },
                up_to_date: rng.chance(2),
            }),
        }
        .encode_to_vec(),
        "RemoveTask" => api::RemoveTaskRequest {
            task_id: id_of!(tasks),
        }
        .encode_to_vec(),
        "GetService" => api::GetServiceRequest {
            service_id: id_of!(services),
            insert_defaults: rng.chance(2),
        }
        .encode_to_vec(),
        "ListServices" => api::ListServicesRequest {
            filters: filters!(api::list_services_request::Filters {
                runtimes: if rng.chance(2) {
                    vec!["container".to_string()]
                } else {
                    vec![]
                },
            }),
        }
        .encode_to_vec(),
        "CreateService" => api::CreateServiceRequest {
            spec: Some(service_spec(&fresh, &w, rng)),
        }
        .encode_to_vec(),
        "UpdateService" => {
            let s: api::Service = obj!(services);
            let mut spec = s.spec.clone().unwrap_or_default();
            match &mut spec.mode {
                Some(api::service_spec::Mode::Replicated(r)) => r.replicas = rng.below(5) as u64,
                _ => {
                    if let Some(a) = spec.annotations.as_mut() {
                        a.labels.insert("v".into(), fresh.clone());
                    }
                }
            }
            if rng.chance(3) {
                let new = service_spec("x", &w, rng);
                spec.task = new.task;
                spec.endpoint = new.endpoint;
            }
            api::UpdateServiceRequest {
                service_id: s.id.clone(),
                service_version: version(&s.meta),
                spec: Some(spec),
                rollback: rng.chance(4) as i32,
            }
            .encode_to_vec()
        }
        "RemoveService" => api::RemoveServiceRequest {
            service_id: id_of!(services),
        }
        .encode_to_vec(),
        "ListServiceStatuses" => api::ListServiceStatusesRequest {
            services: (0..rng.below(3)).map(|_| id_of!(services)).collect(),
        }
        .encode_to_vec(),
        "GetNetwork" => api::GetNetworkRequest {
            network_id: id_of!(networks),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListNetworks" => api::ListNetworksRequest {
            appdata: None,
            filters: filters!(api::list_networks_request::Filters {}),
        }
        .encode_to_vec(),
        "CreateNetwork" => api::CreateNetworkRequest {
            spec: Some(network_spec(&fresh, rng)),
        }
        .encode_to_vec(),
        "RemoveNetwork" => api::RemoveNetworkRequest {
            network_id: id_of!(networks),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetCluster" => api::GetClusterRequest {
            cluster_id: id_of!(clusters),
        }
        .encode_to_vec(),
        "ListClusters" => api::ListClustersRequest {
            filters: filters!(api::list_clusters_request::Filters {}),
        }
        .encode_to_vec(),
        "UpdateCluster" => {
            let c: api::Cluster = obj!(clusters);
            let mut spec = c.spec.clone().unwrap_or_default();
            if let Some(a) = spec.annotations.as_mut() {
                a.labels.insert("v".into(), fresh.clone());
            }
            if rng.chance(4) {
                spec.ca_config
                    .get_or_insert_with(Default::default)
                    .force_rotate += 1;
            }
            if rng.chance(4) {
                spec.encryption_config = Some(api::EncryptionConfig {
                    auto_lock_managers: rng.chance(2),
                });
            }
            api::UpdateClusterRequest {
                cluster_id: c.id.clone(),
                cluster_version: version(&c.meta),
                spec: Some(spec),
                rotation: rng.chance(2).then(|| api::KeyRotation {
                    worker_join_token: rng.chance(2),
                    manager_join_token: rng.chance(2),
                    manager_unlock_key: rng.chance(2),
                }),
            }
            .encode_to_vec()
        }
        "GetSecret" => api::GetSecretRequest {
            secret_id: id_of!(secrets),
        }
        .encode_to_vec(),
        "UpdateSecret" => update_labels!(secrets, UpdateSecretRequest, secret_id, secret_version),
        "ListSecrets" => api::ListSecretsRequest {
            filters: filters!(api::list_secrets_request::Filters {}),
        }
        .encode_to_vec(),
        "CreateSecret" => create_data!(CreateSecretRequest, SecretSpec),
        "RemoveSecret" => api::RemoveSecretRequest {
            secret_id: id_of!(secrets),
        }
        .encode_to_vec(),
        "GetConfig" => api::GetConfigRequest {
            config_id: id_of!(configs),
        }
        .encode_to_vec(),
        "UpdateConfig" => update_labels!(configs, UpdateConfigRequest, config_id, config_version),
        "ListConfigs" => api::ListConfigsRequest {
            filters: filters!(api::list_configs_request::Filters {}),
        }
        .encode_to_vec(),
        "CreateConfig" => create_data!(CreateConfigRequest, ConfigSpec),
        "RemoveConfig" => api::RemoveConfigRequest {
            config_id: id_of!(configs),
        }
        .encode_to_vec(),
        "GetExtension" => api::GetExtensionRequest {
            extension_id: id_of!(extensions),
        }
        .encode_to_vec(),
        "CreateExtension" => api::CreateExtensionRequest {
            annotations: annotations(&fresh),
            description: "d".to_string(),
        }
        .encode_to_vec(),
        "RemoveExtension" => api::RemoveExtensionRequest {
            extension_id: id_of!(extensions),
        }
        .encode_to_vec(),
        "GetResource" => api::GetResourceRequest {
            resource_id: id_of!(resources),
        }
        .encode_to_vec(),
        "UpdateResource" => {
            let r: api::Resource = obj!(resources);
            let mut a = r.annotations.clone();
            if let Some(a) = a.as_mut() {
                a.labels.insert("v".into(), fresh.clone());
            }
            api::UpdateResourceRequest {
                resource_id: r.id.clone(),
                resource_version: version(&r.meta),
                annotations: a,
                payload: rng.chance(2).then(|| prost_types::Any {
                    type_url: "x/y".to_string(),
                    value: fresh.clone().into_bytes(),
                }),
            }
            .encode_to_vec()
        }
        "ListResources" => api::ListResourcesRequest {
            filters: filters!(api::list_resources_request::Filters {
                kind: if rng.chance(2) {
                    "ext1".to_string()
                } else {
                    String::new()
                },
            }),
        }
        .encode_to_vec(),
        "CreateResource" => {
            let e: api::Extension = obj!(extensions);
            api::CreateResourceRequest {
                annotations: annotations(&fresh),
                kind: e.annotations.map(|a| a.name).unwrap_or_default(),
                payload: None,
            }
            .encode_to_vec()
        }
        "RemoveResource" => api::RemoveResourceRequest {
            resource_id: id_of!(resources),
        }
        .encode_to_vec(),
        "CreateVolume" => api::CreateVolumeRequest {
            spec: Some(api::VolumeSpec {
                annotations: annotations(&fresh),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "GetVolume" => api::GetVolumeRequest {
            volume_id: api::naming::new_id(),
        }
        .encode_to_vec(),
        "UpdateVolume" => api::UpdateVolumeRequest {
            volume_id: api::naming::new_id(),
            volume_version: Some(api::Version { index: 1 }),
            spec: None,
        }
        .encode_to_vec(),
        "ListVolumes" => api::ListVolumesRequest::default().encode_to_vec(),
        "RemoveVolume" => api::RemoveVolumeRequest {
            volume_id: api::naming::new_id(),
            ..Default::default()
        }
        .encode_to_vec(),
        other => panic!("no request generator for Control method {other}: add one"),
    }
}

// ----------------------------------------------------------------- wire-level mutation

/// One field of a protobuf message as it is on the wire.
#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The fields of `buf` if it parses as a protobuf message (no groups).
fn parse(mut buf: &[u8]) -> Option<Vec<(u32, Value)>> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n > 0)?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut buf)?),
            1 => {
                let (b, rest) = buf.split_at_checked(8)?;
                buf = rest;
                Value::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                let (b, rest) = buf.split_at_checked(len)?;
                buf = rest;
                Value::Bytes(b.to_vec())
            }
            5 => {
                let (b, rest) = buf.split_at_checked(4)?;
                buf = rest;
                Value::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            _ => return None,
        };
        fields.push((number, value));
    }
    Some(fields)
}

fn encode(fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        let wire = match value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        write_varint(&mut out, (u64::from(*number) << 3) | wire);
        match value {
            Value::Varint(v) => write_varint(&mut out, *v),
            Value::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bytes(b) => {
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Whether a length-delimited value is better treated as a nested message than as a string.
fn nested(b: &[u8]) -> Option<Vec<(u32, Value)>> {
    if b.is_empty() || std::str::from_utf8(b).is_ok_and(|s| s.chars().all(|c| !c.is_control())) {
        return None;
    }
    parse(b).filter(|f| !f.is_empty())
}

fn mutate_string(rng: &mut Rng, w: &Refs, old: &[u8]) -> Vec<u8> {
    match rng.below(12) {
        0 => Vec::new(),
        1 => "a".repeat(1 + rng.below(70_000)).into_bytes(),
        2 => "ünïcødé-😀-\u{202e}-名前".as_bytes().to_vec(),
        3 | 4 => rng
            .pick(&w.strings)
            .cloned()
            .unwrap_or_default()
            .into_bytes(),
        5 => api::naming::new_id().into_bytes(),
        6 => rng
            .pick(&w.strings)
            .cloned()
            .unwrap_or_default()
            .to_uppercase()
            .into_bytes(),
        7 => [
            " ",
            "\0",
            "-",
            "..",
            "a b",
            "=",
            "a==b",
            "node.id!=",
            "../../etc/passwd",
        ][rng.below(9)]
        .as_bytes()
        .to_vec(),
        8 => [old, old].concat(),
        9 => old[..rng.below(old.len() + 1)].to_vec(),
        10 => {
            let n = rng.below(16);
            rng.bytes(n)
        }
        _ => {
            let mut b = old.to_vec();
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = b[i].wrapping_add(1 + rng.below(255) as u8);
            }
            b
        }
    }
}

fn mutate_varint(rng: &mut Rng, old: u64) -> u64 {
    const EDGES: [u64; 12] = [
        0,
        1,
        u64::MAX,
        i64::MIN as u64,
        i64::MAX as u64,
        i32::MIN as i64 as u64,
        i32::MAX as u64,
        u32::MAX as u64,
        1 << 31,
        999,
        1_000_000_000,
        -1_000_000_000_i64 as u64,
    ];
    match rng.below(3) {
        0 => old.wrapping_add(1),
        1 => rng.next() >> rng.below(64),
        _ => EDGES[rng.below(EDGES.len())],
    }
}

/// How many places of a message stand for adding a field to it.
const INSERT_WEIGHT: usize = 2;

/// The places a mutation can apply to in `fields`: the message itself (a field added), each
/// field, and the places in each nested message.
fn sites(fields: &[(u32, Value)]) -> usize {
    INSERT_WEIGHT + fields.len() + fields.iter().map(|(_, v)| nested_sites(v)).sum::<usize>()
}

fn nested_sites(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => nested(b).map_or(0, |f| sites(&f)),
        _ => 0,
    }
}

/// Applies one random mutation at a place chosen uniformly among all the [`sites`] of the message
/// `fields`, nested messages included: a field added, removed, repeated or given another value.
fn mutate(rng: &mut Rng, w: &Refs, fields: &mut Vec<(u32, Value)>) {
    let mut k = rng.below(sites(fields));
    if k < INSERT_WEIGHT {
        // A field the message may not have (or has with its default value, which is not on the
        // wire), of any wire type; messages number their fields from 1, most below 10.
        let highest = if rng.chance(4) { 40 } else { 9 };
        let number = 1 + rng.below(highest) as u32;
        let value = match rng.below(4) {
            0 => Value::Varint(mutate_varint(rng, 0)),
            1 => Value::Fixed64(rng.next()),
            2 => Value::Bytes(mutate_string(rng, w, b"")),
            _ => Value::Fixed32(rng.next() as u32),
        };
        let at = rng.below(fields.len() + 1);
        fields.insert(at, (number, value));
        return;
    }
    k -= INSERT_WEIGHT;
    if k < fields.len() {
        match rng.below(8) {
            0 => {
                fields.remove(k);
            }
            1 => {
                let f = fields[k].clone();
                fields.push(f);
            }
            _ => match &mut fields[k].1 {
                Value::Varint(v) => *v = mutate_varint(rng, *v),
                Value::Fixed64(v) => *v = rng.next(),
                Value::Fixed32(v) => *v = rng.next() as u32,
                Value::Bytes(b) => *b = mutate_string(rng, w, b),
            },
        }
        return;
    }
    k -= fields.len();
    for (_, v) in fields.iter_mut() {
        let n = nested_sites(v);
        if k < n {
            if let Value::Bytes(b) = v
                && let Some(mut inner) = nested(b)
            {
                mutate(rng, w, &mut inner);
                *b = encode(&inner);
            }
            return;
        }
        k -= n;
    }
}

// --------------------------------------------------------------------------- the checks

/// Calls `method` with the raw request `payload` through the generated server, as a client's
/// HTTP/2 request would arrive; returns the status and the response message bytes.
async fn call(ctl: &ControlApi, method: &str, payload: &[u8]) -> (Status, Bytes) {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("/docker.swarmkit.v1.Control/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .expect("request");
    let response = ControlServer::new(ctl.clone())
        .oneshot(request)
        .await
        .expect("the server's service is infallible");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("response body");
    let status = Status::from_header_map(&parts.headers)
        .or_else(|| collected.trailers().and_then(Status::from_header_map))
        .expect("a grpc-status");
    (status, collected.to_bytes())
}

type Tables = BTreeMap<&'static str, BTreeMap<String, (u64, Vec<u8>)>>;

/// Every table of the store: ID -> (version, encoded object).
fn tables(s: &api::StoreSnapshot) -> Tables {
    let mut t = Tables::new();
    macro_rules! put {
        ($($field:ident => $kind:literal),*) => {$(
            t.insert($kind, s.$field.iter().map(|o| {
                let v = o.meta.as_ref().and_then(|m| m.version).map_or(0, |v| v.index);
                (o.id.clone(), (v, o.encode_to_vec()))
            }).collect());
        )*};
    }
    put!(nodes => "node", services => "service", networks => "network", tasks => "task",
         clusters => "cluster", secrets => "secret", resources => "resource",
         extensions => "extension", configs => "config", volumes => "volume");
    t
}

fn others_unchanged(before: &Tables, after: &Tables, kind: &str) -> bool {
    before
        .iter()
        .filter(|(k, _)| **k != kind)
        .all(|(k, t)| after.get(k) == Some(t))
}

/// Checks one call; returns a description of what is wrong, if anything.
async fn check_case(fx: &Fx, method: &Method, payload: &[u8]) -> Result<Code, String> {
    let before_index = fx.store.last_index();
    let before = fx.store.save();
    let task = {
        let ctl = fx.ctl.clone();
        let name = method.name;
        let payload = payload.to_vec();
        tokio::spawn(async move { call(&ctl, name, &payload).await })
    };
    let (status, _) = match task.await {
        Ok(r) => r,
        Err(e) => return Err(format!("the call panicked: {e}")),
    };
    let after = fx.store.save();
    let code = status.code();
    if code != Code::Ok {
        let allowed = match code {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::Aborted => true,
            // The codec's answer to bytes that are no such message.
            Code::Internal => !(method.decodes)(payload),
            Code::Unknown => SWARMKIT_UNKNOWN
                .iter()
                .any(|m| status.message().starts_with(m)),
            _ => false,
        };
        if !allowed {
            return Err(format!("improper error {code:?}: {:?}", status.message()));
        }
        if (fx.store.last_index(), &after) != (before_index, &before) {
            return Err(format!(
                "the store changed although the call failed with {code:?}: {:?}",
                status.message()
            ));
        }
        return Ok(code);
    }
    if !(method.decodes)(payload) {
        return Err("undecodable request succeeded".to_string());
    }
    let (b, a) = (tables(&before), tables(&after));
    match method.effect {
        Effect::Read => {
            if b != a {
                return Err("a read changed the store".to_string());
            }
        }
        Effect::Create(kind) => {
            let new: Vec<_> = a[kind]
                .keys()
                .filter(|id| !b[kind].contains_key(*id))
                .collect();
            if new.len() != 1 || a[kind].len() != b[kind].len() + 1 {
                return Err(format!("create did not add exactly one {kind}: {new:?}"));
            }
            if !b[kind].iter().all(|(id, o)| a[kind].get(id) == Some(o)) {
                return Err(format!("create changed an existing {kind}"));
            }
            if !others_unchanged(&b, &a, kind) {
                return Err(format!("create of a {kind} changed other tables"));
            }
        }
        Effect::Update(kind, id_of) => {
            let id = id_of(payload);
            let (Some(old), Some(new)) = (b[kind].get(&id), a[kind].get(&id)) else {
                return Err(format!(
                    "update of {kind} {id:?} succeeded without the object"
                ));
            };
            if new.0 <= old.0 {
                return Err(format!("update of {kind} {id} did not bump its version"));
            }
            let rest = |t: &BTreeMap<String, (u64, Vec<u8>)>| {
                t.iter()
                    .filter(|(i, _)| **i != id)
                    .map(|(i, o)| (i.clone(), o.clone()))
                    .collect::<Vec<_>>()
            };
            if rest(&b[kind]) != rest(&a[kind]) || !others_unchanged(&b, &a, kind) {
                return Err(format!("update of {kind} {id} changed other objects"));
            }
        }
        Effect::Remove(kind, id_of) => {
            let id = id_of(payload);
            if !b[kind].contains_key(&id) || a[kind].contains_key(&id) {
                return Err(format!(
                    "remove of {kind} {id:?} succeeded but did not remove it"
                ));
            }
            if b[kind]
                .iter()
                .any(|(i, o)| *i != id && a[kind].get(i) != Some(o))
            {
                return Err(format!(
                    "remove of {kind} {id} changed other objects of its kind"
                ));
            }
        }
    }
    Ok(code)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn every_control_method_has_a_generator() {
    let table: HashSet<&str> = method_table().iter().map(|m| m.name).collect();
    let store = MemoryStore::new(None);
    let mut rng = Rng::new(7);
    for m in proto_methods() {
        assert!(
            table.contains(m.as_str()),
            "Control method {m} is not in the method table"
        );
        // Panics when there is no generator.
        let _ = valid_request(&m, &mut rng, &store);
    }
    assert_eq!(
        table.len(),
        proto_methods().len(),
        "a method of the table is not in the proto"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn control_requests_fail_cleanly_and_change_nothing_on_error() {
    let seed = env_u64("CONTROL_FUZZ_SEED").unwrap_or(0x5eed_0014);
    let cases = env_u64("CONTROL_FUZZ_CASES").unwrap_or(100) as usize;
    let methods = method_table();
    assert_eq!(methods.len(), proto_methods().len());
    let seeded = seeded().await;
    let seed_state = (seeded.store.save(), seeded.store.last_index());
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..cases {
        // A fresh copy of the seeded cluster each round: every method then runs over the state
        // the earlier methods of the round left.
        let fx = Fx::new();
        fx.store.restore(seed_state.0.clone(), seed_state.1);
        for method in &methods {
            let w = refs(&fx.store);
            let payload = match rng.below(6) {
                // Random bytes.
                0 => {
                    let len = rng.below(64);
                    rng.bytes(len)
                }
                // A valid request with some bytes changed or cut.
                1 => {
                    let mut b = valid_request(method.name, &mut rng, &fx.store);
                    if !b.is_empty() && rng.chance(2) {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    } else {
                        b.truncate(rng.below(b.len() + 1));
                    }
                    b
                }
                // A valid request as is.
                2 => valid_request(method.name, &mut rng, &fx.store),
                // A valid request mutated field by field, into one that still decodes (the
                // codec's refusals are covered above): a few tries.
                _ => {
                    let b = valid_request(method.name, &mut rng, &fx.store);
                    let parsed = parse(&b).expect("prost output parses");
                    let mut mutated = b;
                    for _ in 0..20 {
                        let mut fields = parsed.clone();
                        for _ in 0..1 + rng.below(3) {
                            mutate(&mut rng, &w, &mut fields);
                        }
                        mutated = encode(&fields);
                        if (method.decodes)(&mutated) {
                            break;
                        }
                    }
                    mutated
                }
            };
            match check_case(&fx, method, &payload).await {
                Ok(code) => {
                    *codes
                        .entry(format!("{}:{code:?}", method.name))
                        .or_default() += 1
                }
                Err(e) => failures.push(format!(
                    "{} (round {round}, {} bytes {:?}): {e}",
                    method.name,
                    payload.len(),
                    (method.debug)(&payload)
                        .chars()
                        .take(1500)
                        .collect::<String>()
                )),
            }
        }
    }
    let ok = codes.iter().filter(|(k, _)| k.ends_with(":Ok")).count();
    println!("seed {seed:#x}, {cases} rounds, methods with a success: {ok}; codes: {codes:?}");
    assert!(
        failures.is_empty(),
        "{} failing cases (seed {seed:#x}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
