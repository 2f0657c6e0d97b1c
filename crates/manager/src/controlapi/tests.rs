//! Tests of the control API over a store without a proposer: the error catalogue of the spec
//! (section 1.4) as far as it is decided by the API (status code and message), and happy paths
//! for every object kind.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use api::control_server::Control;
use api::port_config::PublishMode;
use tonic::{Code, Request, Status};

use super::*;

/// Raft membership fixed by the test: these node IDs are members.
struct FixedMembers(HashSet<String>);

impl RaftMembers for FixedMembers {
    fn manager_status(&self, node_id: &str) -> Option<api::ManagerStatus> {
        self.0.contains(node_id).then(|| api::ManagerStatus {
            raft_id: 42,
            addr: "127.0.0.1:4242".to_string(),
            leader: true,
            reachability: api::raft_member_status::Reachability::Reachable as i32,
        })
    }
    fn is_member(&self, node_id: &str) -> bool {
        self.0.contains(node_id)
    }
}

fn control(members: &[&str]) -> ControlApi {
    ControlApi::new(
        MemoryStore::new(None),
        Arc::new(FixedMembers(
            members.iter().map(|m| m.to_string()).collect(),
        )),
    )
}

/// Asserts that `result` failed with `code` and exactly `message`.
#[track_caller]
fn check<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, message: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} {message:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.message(), message);
            assert_eq!(s.code(), code, "{message}");
        }
    }
}

fn annotations(name: &str) -> Option<api::Annotations> {
    Some(api::Annotations {
        name: name.to_string(),
        ..Default::default()
    })
}

fn container(image: &str) -> api::ContainerSpec {
    api::ContainerSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn service_spec(name: &str) -> api::ServiceSpec {
    api::ServiceSpec {
        annotations: annotations(name),
        task: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(container(
                "nginx:latest",
            )))),
            ..Default::default()
        }),
        mode: Some(api::service_spec::Mode::Replicated(
            api::ReplicatedService { replicas: 1 },
        )),
        ..Default::default()
    }
}

/// Applies `f` to the container spec of `spec`.
fn with_container(
    mut spec: api::ServiceSpec,
    f: impl FnOnce(&mut api::ContainerSpec),
) -> api::ServiceSpec {
    if let Some(api::task_spec::Runtime::Container(c)) =
        spec.task.as_mut().and_then(|t| t.runtime.as_mut())
    {
        f(c);
    }
    spec
}

fn with_task(mut spec: api::ServiceSpec, f: impl FnOnce(&mut api::TaskSpec)) -> api::ServiceSpec {
    f(spec.task.get_or_insert_with(Default::default));
    spec
}

fn ports(mut spec: api::ServiceSpec, list: &[(u32, PublishMode)]) -> api::ServiceSpec {
    spec.endpoint = Some(api::EndpointSpec {
        ports: list
            .iter()
            .map(|(p, mode)| api::PortConfig {
                target_port: 80,
                published_port: *p,
                publish_mode: *mode as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    spec
}

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn create_service(ctl: &ControlApi, spec: api::ServiceSpec) -> Result<api::Service, Status> {
    ctl.create_service(Request::new(api::CreateServiceRequest { spec: Some(spec) }))
        .await
        .map(|r| r.into_inner().service.expect("created service"))
}

async fn update_service(
    ctl: &ControlApi,
    service: &api::Service,
    spec: api::ServiceSpec,
    rollback: bool,
) -> Result<api::Service, Status> {
    let rollback = if rollback {
        api::update_service_request::Rollback::Previous
    } else {
        api::update_service_request::Rollback::None
    };
    ctl.update_service(Request::new(api::UpdateServiceRequest {
        service_id: service.id.clone(),
        service_version: version_of(&service.meta),
        spec: Some(spec),
        rollback: rollback as i32,
    }))
    .await
    .map(|r| r.into_inner().service.expect("updated service"))
}

/// The stored service `id`, without defaults filled in.
async fn get_service(ctl: &ControlApi, id: &str) -> api::Service {
    ctl.get_service(Request::new(api::GetServiceRequest {
        service_id: id.to_string(),
        insert_defaults: false,
    }))
    .await
    .expect("get")
    .into_inner()
    .service
    .expect("service")
}

async fn create_network(ctl: &ControlApi, spec: api::NetworkSpec) -> Result<api::Network, Status> {
    ctl.create_network(Request::new(api::CreateNetworkRequest { spec: Some(spec) }))
        .await
        .map(|r| r.into_inner().network.expect("created network"))
}

fn network_spec(name: &str) -> api::NetworkSpec {
    api::NetworkSpec {
        annotations: annotations(name),
        driver_config: Some(api::Driver {
            name: "overlay".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_ingress(ctl: &ControlApi) -> api::Network {
    create_network(
        ctl,
        api::NetworkSpec {
            ingress: true,
            ..network_spec("ingress")
        },
    )
    .await
    .expect("ingress network")
}

async fn seed<F>(ctl: &ControlApi, f: F)
where
    F: FnOnce(&mut store::Tx<'_>) -> Result<(), StoreError> + Send,
{
    ctl.store.update(f).await.expect("seeding the store");
}

fn node(
    id: &str,
    hostname: &str,
    role: api::NodeRole,
    state: api::node_status::State,
) -> api::Node {
    api::Node {
        id: id.to_string(),
        spec: Some(api::NodeSpec {
            desired_role: role as i32,
            membership: api::node_spec::Membership::Accepted as i32,
            ..Default::default()
        }),
        description: Some(api::NodeDescription {
            hostname: hostname.to_string(),
            ..Default::default()
        }),
        status: Some(api::NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        role: role as i32,
        ..Default::default()
    }
}

fn cluster_object() -> api::Cluster {
    api::Cluster {
        id: "cluster1".to_string(),
        spec: Some(api::ClusterSpec {
            annotations: annotations("default"),
            ca_config: Some(api::CaConfig {
                node_cert_expiry: secs(90 * 24 * 3600),
                signing_ca_cert: b"CERT".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        root_ca: Some(api::RootCa {
            ca_key: b"PRIVATE KEY".to_vec(),
            ca_cert: b"CERT".to_vec(),
            ca_cert_hash: "sha256:abc".to_string(),
            join_tokens: Some(api::JoinTokens {
                worker: "SWMTKN-1-w".to_string(),
                manager: "SWMTKN-1-m".to_string(),
            }),
            ..Default::default()
        }),
        network_bootstrap_keys: vec![api::EncryptionKey {
            subsystem: "networking:gossip".to_string(),
            key: b"gossip".to_vec(),
            ..Default::default()
        }],
        unlock_keys: vec![api::EncryptionKey {
            subsystem: "swarm-manager".to_string(),
            key: b"unlock".to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

// ---------------------------------------------------------------- services: error catalogue

#[tokio::test]
async fn service_name_conflict_is_case_insensitive() {
    let ctl = control(&[]);
    create_service(&ctl, service_spec("Web"))
        .await
        .expect("first");
    check(
        create_service(&ctl, service_spec("web")).await,
        Code::AlreadyExists,
        "name conflicts with an existing object: service web already exists",
    );
}

#[tokio::test]
async fn service_names_follow_the_dns_label_rule() {
    let ctl = control(&[]);
    for bad in ["bad_name!", "-lead"] {
        check(
            create_service(&ctl, service_spec(bad)).await,
            Code::InvalidArgument,
            "name must be valid as a DNS name component",
        );
    }
    check(
        create_service(&ctl, service_spec(&"a".repeat(64))).await,
        Code::InvalidArgument,
        "name must be 63 characters or fewer",
    );
    check(
        create_service(&ctl, service_spec("")).await,
        Code::InvalidArgument,
        "meta: name must be provided",
    );
}

#[tokio::test]
async fn service_image_must_parse() {
    let ctl = control(&[]);
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| c.image.clear()),
        )
        .await,
        Code::InvalidArgument,
        "ContainerSpec: image reference must be provided",
    );
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| c.image = "Bad:Image".into()),
        )
        .await,
        Code::InvalidArgument,
        "ContainerSpec: \"Bad:Image\" is not a valid repository/tag",
    );
    check(
        create_service(&ctl, with_task(service_spec("web"), |t| t.runtime = None)).await,
        Code::InvalidArgument,
        "TaskSpec: missing runtime",
    );
}

#[tokio::test]
async fn service_durations_cannot_be_negative() {
    let ctl = control(&[]);
    let restart = |delay, window| {
        with_task(service_spec("web"), |t| {
            t.restart = Some(Box::new(api::RestartPolicy {
                delay,
                window,
                ..Default::default()
            }))
        })
    };
    check(
        create_service(&ctl, restart(secs(-5), None)).await,
        Code::InvalidArgument,
        "TaskSpec: restart-delay cannot be negative",
    );
    check(
        create_service(&ctl, restart(None, secs(-5))).await,
        Code::InvalidArgument,
        "TaskSpec: restart-window cannot be negative",
    );
    let update = |uc: api::UpdateConfig| api::ServiceSpec {
        update: Some(uc),
        ..service_spec("web")
    };
    check(
        create_service(
            &ctl,
            update(api::UpdateConfig {
                delay: secs(-5),
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        "TaskSpec: update-delay cannot be negative",
    );
    check(
        create_service(
            &ctl,
            update(api::UpdateConfig {
                monitor: secs(-5),
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        "TaskSpec: update-monitor cannot be negative",
    );
    check(
        create_service(
            &ctl,
            update(api::UpdateConfig {
                max_failure_ratio: 1.5,
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        "TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1",
    );
}

#[tokio::test]
async fn service_resources_have_minimums() {
    let ctl = control(&[]);
    let limits = |r: api::Resources| {
        with_task(service_spec("web"), |t| {
            t.resources = Some(Box::new(api::ResourceRequirements {
                limits: Some(r),
                ..Default::default()
            }))
        })
    };
    check(
        create_service(
            &ctl,
            limits(api::Resources {
                memory_bytes: 1024,
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        "invalid memory value 1024: Must be at least 4MiB",
    );
    check(
        create_service(
            &ctl,
            limits(api::Resources {
                nano_cpus: 100_000,
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        "invalid cpu value 0.0001: Must be at least 0.001",
    );
}

#[tokio::test]
async fn service_constraints_must_parse() {
    let ctl = control(&[]);
    let constraint = |c: &str| {
        let c = c.to_string();
        with_task(service_spec("web"), move |t| {
            t.placement = Some(Box::new(api::Placement {
                constraints: vec![c],
                ..Default::default()
            }))
        })
    };
    check(
        create_service(&ctl, constraint("garbage")).await,
        Code::Unknown,
        "constraint expected one operator from ==, !=",
    );
    check(
        create_service(&ctl, constraint("node.id>=x")).await,
        Code::Unknown,
        "constraint expected one operator from ==, !=",
    );
    check(
        create_service(&ctl, constraint("==abc")).await,
        Code::Unknown,
        "key '' is invalid",
    );
    check(
        create_service(&ctl, constraint("node.id==x>")).await,
        Code::Unknown,
        "value 'x>' is invalid",
    );
}

#[tokio::test]
async fn service_mounts_and_ports_are_checked() {
    let ctl = control(&[]);
    let mount = |target: &str| api::Mount {
        target: target.to_string(),
        ..Default::default()
    };
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| {
                c.mounts = vec![mount("/x"), mount("/x")]
            }),
        )
        .await,
        Code::InvalidArgument,
        "ContainerSpec: duplicate mount point: /x",
    );
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| c.oom_score_adj = 5000),
        )
        .await,
        Code::InvalidArgument,
        "ContainerSpec: Invalid value 5000, range for oom score adj is [-1000, 1000]",
    );
    check(
        create_service(
            &ctl,
            ports(
                service_spec("web"),
                &[(8080, PublishMode::Host), (8080, PublishMode::Host)],
            ),
        )
        .await,
        Code::InvalidArgument,
        "EndpointSpec: duplicate published ports provided",
    );
    check(
        create_service(
            &ctl,
            ports(service_spec("web"), &[(8080, PublishMode::Ingress)]),
        )
        .await,
        Code::FailedPrecondition,
        "service needs ingress network, but no ingress network is present",
    );
}

/// Ports beyond 65535 are refused (SwarmKit accepts them) on create and update, changing nothing.
#[tokio::test]
async fn ports_out_of_range_are_refused() {
    let ctl = control(&[]);
    check(
        create_service(
            &ctl,
            ports(service_spec("web"), &[(70000, PublishMode::Host)]),
        )
        .await,
        Code::InvalidArgument,
        "EndpointSpec: published port 70000 is out of range (0-65535)",
    );
    let mut target = ports(service_spec("web"), &[(8080, PublishMode::Host)]);
    target.endpoint.as_mut().expect("endpoint").ports[0].target_port = 65536;
    check(
        create_service(&ctl, target).await,
        Code::InvalidArgument,
        "EndpointSpec: target port 65536 is out of range (0-65535)",
    );
    let services = ctl
        .list_services(Request::new(api::ListServicesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .services;
    assert!(services.is_empty(), "a refused create wrote {services:?}");

    let svc = create_service(
        &ctl,
        ports(service_spec("web"), &[(65535, PublishMode::Host)]),
    )
    .await
    .expect("65535 is a port");
    check(
        update_service(
            &ctl,
            &svc,
            ports(service_spec("web"), &[(70000, PublishMode::Host)]),
            false,
        )
        .await,
        Code::InvalidArgument,
        "EndpointSpec: published port 70000 is out of range (0-65535)",
    );
    let after = get_service(&ctl, &svc.id).await;
    assert_eq!(after, svc, "a refused update changed the service");
}

#[tokio::test]
async fn service_cannot_attach_to_ingress_explicitly() {
    let ctl = control(&[]);
    let ingress = create_ingress(&ctl).await;
    let spec = with_task(service_spec("web"), |t| {
        t.networks = vec![api::NetworkAttachmentConfig {
            target: ingress.id.clone(),
            ..Default::default()
        }]
    });
    check(
        create_service(&ctl, spec).await,
        Code::InvalidArgument,
        "Service cannot be explicitly attached to the ingress network \"ingress\"",
    );
}

#[tokio::test]
async fn published_port_conflicts_between_services() {
    let ctl = control(&[]);
    create_ingress(&ctl).await;
    let a = create_service(
        &ctl,
        ports(service_spec("a"), &[(8080, PublishMode::Ingress)]),
    )
    .await
    .expect("a");
    check(
        create_service(&ctl, ports(service_spec("b"), &[(8080, PublishMode::Host)])).await,
        Code::InvalidArgument,
        &format!(
            "port '8080' is already in use by service 'a' ({}) as an ingress port",
            a.id
        ),
    );
    let c = create_service(&ctl, ports(service_spec("c"), &[(9090, PublishMode::Host)]))
        .await
        .expect("c");
    // Two host-mode services may share a port; the scheduler keeps them apart.
    let d = create_service(&ctl, ports(service_spec("d"), &[(9090, PublishMode::Host)]))
        .await
        .expect("d");
    // Either holder may be named: services are scanned in ID order, as SwarmKit's store does.
    let err = create_service(
        &ctl,
        ports(service_spec("e"), &[(9090, PublishMode::Ingress)]),
    )
    .await
    .expect_err("ingress port held by host-mode services");
    assert_eq!(err.code(), Code::InvalidArgument);
    let first = if c.id < d.id { (&c, "c") } else { (&d, "d") };
    assert_eq!(
        err.message(),
        format!(
            "port '9090' is already in use by service '{}' ({}) as a host-published port",
            first.1, first.0.id
        )
    );
}

#[tokio::test]
async fn service_secret_references_must_exist() {
    let ctl = control(&[]);
    let reference = |id: &str, name: &str| api::SecretReference {
        secret_id: id.to_string(),
        secret_name: name.to_string(),
        target: Some(api::secret_reference::Target::File(api::FileTarget {
            name: name.to_string(),
            ..Default::default()
        })),
    };
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| {
                c.secrets = vec![reference("x1", "a")]
            }),
        )
        .await,
        Code::InvalidArgument,
        "secret not found: a",
    );
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| {
                c.secrets = vec![reference("x1", "a"), reference("x2", "b")]
            }),
        )
        .await,
        Code::InvalidArgument,
        "secrets not found: a, b",
    );
    check(
        create_service(
            &ctl,
            with_container(service_spec("web"), |c| {
                c.secrets = vec![reference("", "a")]
            }),
        )
        .await,
        Code::InvalidArgument,
        "malformed secret reference",
    );
}

#[tokio::test]
async fn missing_services_are_not_found() {
    let ctl = control(&[]);
    check(
        ctl.get_service(Request::new(api::GetServiceRequest {
            service_id: "nosuch".into(),
            insert_defaults: false,
        }))
        .await,
        Code::NotFound,
        "service nosuch not found",
    );
    check(
        ctl.remove_service(Request::new(api::RemoveServiceRequest {
            service_id: "nosuch".into(),
        }))
        .await,
        Code::NotFound,
        "service nosuch not found",
    );
    let ghost = api::Service {
        id: "nosuch".into(),
        meta: Some(api::Meta {
            version: Some(api::Version { index: 1 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    check(
        update_service(&ctl, &ghost, service_spec("web"), false).await,
        Code::NotFound,
        "service nosuch not found",
    );
    check(
        ctl.get_service(Request::new(api::GetServiceRequest::default()))
            .await,
        Code::InvalidArgument,
        "invalid argument",
    );
}

#[tokio::test]
async fn service_update_refuses_rename_mode_change_and_stale_versions() {
    let ctl = control(&[]);
    let svc = create_service(&ctl, service_spec("web"))
        .await
        .expect("create");
    check(
        update_service(&ctl, &svc, service_spec("web2"), false).await,
        Code::Unimplemented,
        "renaming services is not supported",
    );
    let global = api::ServiceSpec {
        mode: Some(api::service_spec::Mode::Global(api::GlobalService {})),
        ..service_spec("web")
    };
    check(
        update_service(&ctl, &svc, global, false).await,
        Code::Unimplemented,
        "service mode change is not allowed",
    );
    check(
        update_service(&ctl, &svc, service_spec("web"), true).await,
        Code::FailedPrecondition,
        &format!("service {} does not have a previous spec", svc.id),
    );
    update_service(&ctl, &svc, service_spec("web"), false)
        .await
        .expect("update");
    // `svc` still carries the version read before that update.
    check(
        update_service(&ctl, &svc, service_spec("web"), false).await,
        Code::Unknown,
        "update out of sequence",
    );
    let stored = ctl
        .store
        .view(|tx| tx.get_service(&svc.id))
        .expect("stored");
    assert_eq!(stored.spec_version, version_of(&svc.meta));
}

// ---------------------------------------------------------------- services: happy paths

#[tokio::test]
async fn service_lifecycle() {
    let ctl = control(&[]);
    let svc = create_service(&ctl, service_spec("web"))
        .await
        .expect("create");
    assert_eq!(svc.id.len(), 25);
    assert_eq!(svc.spec_version, Some(api::Version { index: 0 }));
    assert!(version_of(&svc.meta).is_some_and(|v| v.index > 0));
    assert!(svc.job_status.is_none() && svc.previous_spec.is_none());

    let got = get_service(&ctl, &svc.id).await;
    assert_eq!(got, svc);

    // Defaults are filled in only when asked for, and never stored.
    let defaulted = ctl
        .get_service(Request::new(api::GetServiceRequest {
            service_id: svc.id.clone(),
            insert_defaults: true,
        }))
        .await
        .expect("get")
        .into_inner()
        .service
        .expect("service")
        .spec
        .expect("spec");
    let task = defaulted.task.expect("task");
    let restart = task.restart.expect("restart");
    assert_eq!(
        restart.condition,
        api::restart_policy::RestartCondition::Any as i32
    );
    assert_eq!(restart.delay, secs(5));
    let update = defaulted.update.expect("update config");
    assert_eq!((update.parallelism, update.monitor), (1, secs(5)));
    assert!(defaulted.rollback.is_some() && task.placement.is_some() && task.resources.is_some());
    match task.runtime {
        Some(api::task_spec::Runtime::Container(c)) => {
            assert_eq!(c.stop_grace_period, secs(10));
            assert!(c.pull_options.is_some() && c.dns_config.is_some());
        }
        other => panic!("unexpected runtime {other:?}"),
    }

    // Update, then roll back to the first spec.
    let new_spec = with_container(service_spec("web"), |c| c.image = "nginx:2".into());
    let updated = update_service(&ctl, &svc, new_spec.clone(), false)
        .await
        .expect("update");
    assert_eq!(updated.spec.as_ref(), Some(&new_spec));
    assert_eq!(updated.previous_spec, svc.spec);
    assert_eq!(updated.spec_version, version_of(&svc.meta));
    let rolled = update_service(&ctl, &updated, new_spec.clone(), true)
        .await
        .expect("rollback");
    assert_eq!(rolled.spec, svc.spec);
    assert_eq!(rolled.previous_spec.as_ref(), Some(&new_spec));
    let status = rolled.update_status.expect("update status");
    assert_eq!(
        status.state,
        api::update_status::UpdateState::RollbackStarted as i32
    );
    assert_eq!(status.message, "manually requested rollback");

    // List with filters.
    create_service(&ctl, service_spec("api"))
        .await
        .expect("second");
    let list = |filters: api::list_services_request::Filters| {
        let ctl = ctl.clone();
        async move {
            ctl.list_services(Request::new(api::ListServicesRequest {
                filters: Some(filters),
            }))
            .await
            .expect("list")
            .into_inner()
            .services
            .into_iter()
            .map(|s| name_of(&s.spec.and_then(|sp| sp.annotations)).to_string())
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Default::default()).await.len(), 2);
    assert_eq!(
        list(api::list_services_request::Filters {
            names: vec!["web".into()],
            ..Default::default()
        })
        .await,
        ["web"]
    );
    assert_eq!(
        list(api::list_services_request::Filters {
            name_prefixes: vec!["a".into()],
            ..Default::default()
        })
        .await,
        ["api"]
    );
    assert_eq!(
        list(api::list_services_request::Filters {
            id_prefixes: vec![svc.id[..5].to_string()],
            ..Default::default()
        })
        .await,
        ["web"]
    );
    assert!(
        list(api::list_services_request::Filters {
            runtimes: vec!["attachment".into()],
            ..Default::default()
        })
        .await
        .is_empty()
    );

    // Removal deletes the service alone: its orchestrator marks the tasks for removal.
    let task = api::Task {
        id: "task1".into(),
        service_id: svc.id.clone(),
        slot: 1,
        desired_state: api::TaskState::Running as i32,
        ..Default::default()
    };
    seed(&ctl, |tx| tx.create_task(task)).await;
    ctl.remove_service(Request::new(api::RemoveServiceRequest {
        service_id: svc.id.clone(),
    }))
    .await
    .expect("remove");
    assert!(ctl.store.view(|tx| tx.get_service(&svc.id)).is_none());
    let task = ctl
        .store
        .view(|tx| tx.get_task("task1"))
        .expect("task stays until reaped");
    assert_eq!(task.desired_state, api::TaskState::Running as i32);
}

#[tokio::test]
async fn service_statuses_count_tasks() {
    let ctl = control(&[]);
    let mut spec = service_spec("web");
    spec.mode = Some(api::service_spec::Mode::Replicated(
        api::ReplicatedService { replicas: 3 },
    ));
    let svc = create_service(&ctl, spec).await.expect("create");
    let task = |id: &str, state: api::TaskState| api::Task {
        id: id.to_string(),
        service_id: svc.id.clone(),
        desired_state: api::TaskState::Running as i32,
        status: Some(api::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (t1, t2) = (
        task("t1", api::TaskState::Running),
        task("t2", api::TaskState::Pending),
    );
    seed(&ctl, |tx| {
        tx.create_task(t1)?;
        tx.create_task(t2)
    })
    .await;
    let statuses = ctl
        .list_service_statuses(Request::new(api::ListServiceStatusesRequest {
            services: vec![svc.id.clone(), "unknown".into()],
        }))
        .await
        .expect("statuses")
        .into_inner()
        .statuses;
    assert_eq!(statuses.len(), 2);
    assert_eq!(
        (statuses[0].desired_tasks, statuses[0].running_tasks),
        (3, 1)
    );
    assert_eq!(
        (statuses[1].service_id.as_str(), statuses[1].desired_tasks),
        ("unknown", 0)
    );
}

// ---------------------------------------------------------------- tasks

#[tokio::test]
async fn tasks_get_list_remove() {
    let ctl = control(&[]);
    check(
        ctl.get_task(Request::new(api::GetTaskRequest {
            task_id: "nosuch".into(),
        }))
        .await,
        Code::NotFound,
        "task nosuch not found",
    );
    check(
        ctl.remove_task(Request::new(api::RemoveTaskRequest {
            task_id: "nosuch".into(),
        }))
        .await,
        Code::NotFound,
        "task nosuch not found",
    );
    let task = |id: &str, node: &str| api::Task {
        id: id.to_string(),
        service_id: "svc".into(),
        node_id: node.to_string(),
        slot: 1,
        service_annotations: annotations("web"),
        ..Default::default()
    };
    let (a, b) = (task("ta", "n1"), task("tb", "n2"));
    seed(&ctl, |tx| {
        tx.create_task(a)?;
        tx.create_task(b)
    })
    .await;
    let list = |filters: api::list_tasks_request::Filters| {
        let ctl = ctl.clone();
        async move {
            ctl.list_tasks(Request::new(api::ListTasksRequest {
                filters: Some(filters),
            }))
            .await
            .expect("list")
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Default::default()).await, ["ta", "tb"]);
    assert_eq!(
        list(api::list_tasks_request::Filters {
            node_ids: vec!["n2".into()],
            ..Default::default()
        })
        .await,
        ["tb"]
    );
    assert_eq!(
        list(api::list_tasks_request::Filters {
            names: vec!["web.1.ta".into()],
            ..Default::default()
        })
        .await,
        ["ta"]
    );
    ctl.remove_task(Request::new(api::RemoveTaskRequest {
        task_id: "ta".into(),
    }))
    .await
    .expect("remove");
    assert_eq!(list(Default::default()).await, ["tb"]);
}

// ---------------------------------------------------------------- nodes

#[tokio::test]
async fn node_removal_rules() {
    use api::NodeRole::{Manager, Worker};
    use api::node_status::State::{Down, Ready};
    let ctl = control(&["m1"]);
    let (m1, w1, w2) = (
        node("m1", "host-m1", Manager, Ready),
        node("w1", "host-w1", Worker, Ready),
        node("w2", "host-w2", Worker, Down),
    );
    let orphan = api::Task {
        id: "t1".into(),
        node_id: "w2".into(),
        status: Some(api::TaskStatus {
            state: api::TaskState::Running as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    seed(&ctl, |tx| {
        tx.create_node(m1)?;
        tx.create_node(w1)?;
        tx.create_node(w2)?;
        tx.create_task(orphan)?;
        tx.create_cluster(cluster_object())
    })
    .await;
    let remove = |id: &str, force: bool| {
        ctl.remove_node(Request::new(api::RemoveNodeRequest {
            node_id: id.to_string(),
            force,
        }))
    };
    check(
        remove("m1", true).await,
        Code::FailedPrecondition,
        "node m1 is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
    );
    check(
        remove("w1", false).await,
        Code::FailedPrecondition,
        "node w1 is not down and can't be removed",
    );
    check(
        remove("nosuch", false).await,
        Code::NotFound,
        "node nosuch not found",
    );
    let before = ctl
        .store
        .view(|tx| tx.get_cluster("cluster1"))
        .expect("cluster");

    remove("w2", false).await.expect("a down node can go");
    assert!(ctl.store.view(|tx| tx.get_node("w2")).is_none());
    let cluster = ctl
        .store
        .view(|tx| tx.get_cluster("cluster1"))
        .expect("cluster");
    assert!(cluster.blacklisted_certificates.contains_key("w2"));
    assert_ne!(version_of(&cluster.meta), version_of(&before.meta));
    let task = ctl.store.view(|tx| tx.get_task("t1")).expect("task");
    let status = task.status.expect("status");
    assert_eq!(status.state, api::TaskState::Orphaned as i32);
    assert_eq!(
        status.message,
        "Task belonged to a node that has been deleted"
    );

    remove("w1", true)
        .await
        .expect("force removes a ready worker");
}

#[tokio::test]
async fn node_get_list_update_and_demotion() {
    use api::NodeRole::{Manager, Worker};
    use api::node_status::State::Ready;
    let ctl = control(&["m1"]);
    let (m1, w1) = (
        node("m1", "host-m1", Manager, Ready),
        node("w1", "host-w1", Worker, Ready),
    );
    seed(&ctl, |tx| {
        tx.create_node(m1)?;
        tx.create_node(w1)
    })
    .await;
    let get = |id: &str| {
        ctl.get_node(Request::new(api::GetNodeRequest {
            node_id: id.to_string(),
        }))
    };
    let m1 = get("m1")
        .await
        .expect("get")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(m1.manager_status.as_ref().map(|s| s.raft_id), Some(42));
    check(get("nosuch").await, Code::NotFound, "node nosuch not found");

    let names = |filters: api::list_nodes_request::Filters| {
        let ctl = ctl.clone();
        async move {
            ctl.list_nodes(Request::new(api::ListNodesRequest {
                filters: Some(filters),
            }))
            .await
            .expect("list")
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| n.id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(Default::default()).await, ["m1", "w1"]);
    assert_eq!(
        names(api::list_nodes_request::Filters {
            roles: vec![Worker as i32],
            ..Default::default()
        })
        .await,
        ["w1"]
    );
    assert_eq!(
        names(api::list_nodes_request::Filters {
            names: vec!["host-m1".into()],
            ..Default::default()
        })
        .await,
        ["m1"]
    );

    let update = |n: &api::Node, spec: api::NodeSpec| {
        ctl.update_node(Request::new(api::UpdateNodeRequest {
            node_id: n.id.clone(),
            node_version: version_of(&n.meta),
            spec: Some(spec),
        }))
    };
    let demoted = api::NodeSpec {
        desired_role: Worker as i32,
        ..m1.spec.clone().expect("spec")
    };
    check(
        update(&m1, demoted).await,
        Code::FailedPrecondition,
        "attempting to demote the last manager of the swarm",
    );
    let w1 = get("w1")
        .await
        .expect("get")
        .into_inner()
        .node
        .expect("node");
    let drained = api::NodeSpec {
        availability: api::node_spec::Availability::Drain as i32,
        ..w1.spec.clone().expect("spec")
    };
    let updated = update(&w1, drained.clone())
        .await
        .expect("update")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(updated.spec, Some(drained.clone()));
    check(
        update(&w1, drained).await,
        Code::Unknown,
        "update out of sequence",
    );
}

// ---------------------------------------------------------------- networks

/// A network spec asking for `(subnet, range, gateway)` configs.
fn subnets_spec(name: &str, configs: &[(&str, &str, &str)]) -> api::NetworkSpec {
    api::NetworkSpec {
        ipam: Some(api::IpamOptions {
            driver: None,
            configs: configs
                .iter()
                .map(|(subnet, range, gateway)| api::IpamConfig {
                    subnet: subnet.to_string(),
                    range: range.to_string(),
                    gateway: gateway.to_string(),
                    ..Default::default()
                })
                .collect(),
        }),
        ..network_spec(name)
    }
}

#[tokio::test]
async fn networks_the_allocator_could_not_allocate_are_refused_and_nothing_is_stored() {
    let ctl = control(&[]);
    // A cluster whose default pool holds three /24s.
    ctl.store
        .update(|tx| {
            tx.create_cluster(api::Cluster {
                id: "cluster".into(),
                default_address_pool: vec!["10.9.0.0/23".into(), "10.9.2.0/24".into()],
                subnet_size: 24,
                ..Default::default()
            })
        })
        .await
        .expect("cluster");
    let user = create_network(&ctl, subnets_spec("user", &[("10.1.0.0/16", "", "")]))
        .await
        .expect("user subnet");
    let ids = |ctl: &ControlApi| -> Vec<String> {
        ctl.store
            .view(|tx| tx.find_networks(store::By::All))
            .into_iter()
            .map(|n| n.id)
            .collect()
    };
    let before = ids(&ctl);
    let refused = [
        (
            subnets_spec("a", &[("10.1.2.0/24", "", "")]),
            format!(
                "ipam configuration: subnet 10.1.2.0/24 overlaps with subnet 10.1.0.0/16 of network user ({})",
                user.id
            ),
        ),
        (
            subnets_spec("a", &[("10.0.0.0/8", "", "")]),
            format!(
                "ipam configuration: subnet 10.0.0.0/8 overlaps with subnet 10.1.0.0/16 of network user ({})",
                user.id
            ),
        ),
        (
            subnets_spec("a", &[("10.2.0.0/16", "", ""), ("10.2.3.0/24", "", "")]),
            "ipam configuration: subnet 10.2.3.0/24 overlaps with subnet 10.2.0.0/16 of the same network".to_string(),
        ),
        (
            subnets_spec("a", &[("10.3.0.0/16", "", "10.4.0.1")]),
            "ipam configuration: subnet 10.3.0.0/16 does not contain gateway 10.4.0.1".to_string(),
        ),
        (
            subnets_spec("a", &[("10.3.0.0/16", "10.4.0.0/24", "")]),
            "ipam configuration: subnet 10.3.0.0/16 does not contain range 10.4.0.0/24".to_string(),
        ),
        (
            subnets_spec("a", &[("10.3.0.0/16", "10.3.0.0/8", "")]),
            "ipam configuration: subnet 10.3.0.0/16 does not contain range 10.3.0.0/8".to_string(),
        ),
        (
            subnets_spec("a", &[("10.3.0.0/16", "", "10.3.255.255")]),
            "ipam configuration: gateway 10.3.255.255 is the network or broadcast address of subnet 10.3.0.0/16".to_string(),
        ),
    ];
    for (spec, message) in refused {
        check(
            create_network(&ctl, spec).await,
            Code::InvalidArgument,
            &message,
        );
        assert_eq!(ids(&ctl), before, "{message}: nothing stored");
    }
    let ipam_driver = api::NetworkSpec {
        ipam: Some(api::IpamOptions {
            driver: Some(api::Driver {
                name: "weave".into(),
                ..Default::default()
            }),
            configs: Vec::new(),
        }),
        ..network_spec("a")
    };
    check(
        create_network(&ctl, ipam_driver).await,
        Code::InvalidArgument,
        "plugin weave not supported",
    );
    // Three default subnets: two networks waiting for the allocator and one allocated count.
    create_network(&ctl, network_spec("d1")).await.expect("d1");
    create_network(&ctl, network_spec("d2")).await.expect("d2");
    create_network(&ctl, network_spec("d3")).await.expect("d3");
    let before = ids(&ctl);
    check(
        create_network(&ctl, network_spec("d4")).await,
        Code::InvalidArgument,
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
    );
    assert_eq!(ids(&ctl), before);
    // A user subnet outside the pool still fits, and so does a node-local network.
    create_network(&ctl, subnets_spec("u2", &[("192.168.0.0/24", "", "")]))
        .await
        .expect("user subnet outside the pool");
    let bridge = api::NetworkSpec {
        driver_config: Some(api::Driver {
            name: "bridge".into(),
            ..Default::default()
        }),
        ..network_spec("b")
    };
    create_network(&ctl, bridge).await.expect("node-local");
}

#[tokio::test]
async fn network_rules() {
    let ctl = control(&[]);
    let net = create_network(&ctl, network_spec("ov1"))
        .await
        .expect("create");
    check(
        create_network(&ctl, network_spec("OV1")).await,
        Code::Unknown,
        "name conflicts with an existing object",
    );
    let ingress = create_ingress(&ctl).await;
    check(
        create_network(
            &ctl,
            api::NetworkSpec {
                ingress: true,
                ..network_spec("ingress2")
            },
        )
        .await,
        Code::AlreadyExists,
        &format!("ingress network ({}) is already present", ingress.id),
    );
    check(
        create_network(
            &ctl,
            api::NetworkSpec {
                ingress: true,
                attachable: true,
                ..network_spec("i3")
            },
        )
        .await,
        Code::InvalidArgument,
        "ingress network cannot be attachable",
    );
    let mut labelled = network_spec("x");
    labelled.annotations.as_mut().expect("annotations").labels = BTreeMap::from([(
        "com.docker.swarm.predefined".to_string(),
        "true".to_string(),
    )]);
    check(
        create_network(&ctl, labelled).await,
        Code::PermissionDenied,
        "label com.docker.swarm.predefined is for internally created predefined networks and cannot be applied by users",
    );
    let driver = |name: &str| api::NetworkSpec {
        driver_config: Some(api::Driver {
            name: name.to_string(),
            ..Default::default()
        }),
        ..network_spec("d")
    };
    check(
        create_network(&ctl, driver("weave")).await,
        Code::InvalidArgument,
        "plugin weave not supported",
    );
    let ipam = |subnet: &str, gateway: &str| api::NetworkSpec {
        ipam: Some(api::IpamOptions {
            configs: vec![api::IpamConfig {
                subnet: subnet.to_string(),
                gateway: gateway.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..network_spec("n")
    };
    check(
        create_network(&ctl, ipam("bogus", "")).await,
        Code::InvalidArgument,
        "ipam configuration: invalid subnet bogus",
    );
    check(
        create_network(&ctl, ipam("10.1.0.0/16", "10.2.0.1")).await,
        Code::InvalidArgument,
        "ipam configuration: subnet 10.1.0.0/16 does not contain gateway 10.2.0.1",
    );
    create_network(&ctl, ipam("10.1.0.0/16", "10.1.0.1"))
        .await
        .expect("valid ipam");

    // Get / list.
    let got = ctl
        .get_network(Request::new(api::GetNetworkRequest {
            network_id: net.id.clone(),
            ..Default::default()
        }))
        .await
        .expect("get")
        .into_inner()
        .network;
    assert_eq!(got.as_ref(), Some(&net));
    check(
        ctl.get_network(Request::new(api::GetNetworkRequest {
            network_id: "nosuch".into(),
            ..Default::default()
        }))
        .await,
        Code::NotFound,
        "network nosuch not found",
    );
    let listed = ctl
        .list_networks(Request::new(api::ListNetworksRequest {
            filters: Some(api::list_networks_request::Filters {
                names: vec!["ov1".into()],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .networks;
    assert_eq!(listed, std::slice::from_ref(&net));

    // Removal refusals: in use by a service, predefined, ingress needed.
    let user = create_service(
        &ctl,
        with_task(
            ports(service_spec("web"), &[(80, PublishMode::Ingress)]),
            |t| {
                t.networks = vec![api::NetworkAttachmentConfig {
                    target: net.id.clone(),
                    ..Default::default()
                }]
            },
        ),
    )
    .await
    .expect("service");
    let remove = |id: &str| {
        ctl.remove_network(Request::new(api::RemoveNetworkRequest {
            network_id: id.to_string(),
            ..Default::default()
        }))
    };
    check(
        remove(&net.id).await,
        Code::FailedPrecondition,
        &format!("network {} is in use by service {}", net.id, user.id),
    );
    check(
        remove(&ingress.id).await,
        Code::FailedPrecondition,
        &format!(
            "ingress network cannot be removed because service {} depends on it",
            user.id
        ),
    );
    let bridge = api::Network {
        id: "bridgeid".into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: "bridge".into(),
                labels: BTreeMap::from([(
                    "com.docker.swarm.predefined".to_string(),
                    "true".to_string(),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    seed(&ctl, |tx| tx.create_network(bridge)).await;
    check(
        remove("bridgeid").await,
        Code::FailedPrecondition,
        "network bridgeid (bridge) is a swarm predefined network and cannot be removed",
    );
    ctl.remove_service(Request::new(api::RemoveServiceRequest {
        service_id: user.id.clone(),
    }))
    .await
    .expect("remove service");
    remove(&net.id).await.expect("unused network");
    remove(&ingress.id).await.expect("unneeded ingress");
    check(
        remove(&net.id).await,
        Code::NotFound,
        &format!("network {} not found", net.id),
    );
}

// ---------------------------------------------------------------- clusters

#[tokio::test]
async fn clusters_are_redacted() {
    let ctl = control(&[]);
    seed(&ctl, |tx| tx.create_cluster(cluster_object())).await;
    let got = ctl
        .get_cluster(Request::new(api::GetClusterRequest {
            cluster_id: "cluster1".into(),
        }))
        .await
        .expect("get")
        .into_inner()
        .cluster
        .expect("cluster");
    let listed = ctl
        .list_clusters(Request::new(api::ListClustersRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .clusters;
    assert_eq!(listed, std::slice::from_ref(&got));
    let root = got.root_ca.as_ref().expect("root ca");
    assert!(root.ca_key.is_empty());
    assert_eq!(root.ca_cert, b"CERT");
    assert_eq!(
        root.join_tokens.as_ref().map(|t| t.worker.as_str()),
        Some("SWMTKN-1-w")
    );
    let ca_config = got
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .expect("ca config");
    assert!(ca_config.signing_ca_key.is_empty() && ca_config.signing_ca_cert.is_empty());
    assert!(got.unlock_keys.is_empty() && got.network_bootstrap_keys.is_empty());
    assert_eq!(got.default_address_pool, ["10.0.0.0/8"]);
    assert_eq!((got.subnet_size, got.vxlanudp_port), (24, 4789));
    check(
        ctl.get_cluster(Request::new(api::GetClusterRequest {
            cluster_id: "nosuch".into(),
        }))
        .await,
        Code::NotFound,
        "cluster nosuch not found",
    );
}

#[tokio::test]
async fn cluster_update_rules() {
    let ctl = control(&[]);
    seed(&ctl, |tx| tx.create_cluster(cluster_object())).await;
    let current = || {
        ctl.store
            .view(|tx| tx.get_cluster("cluster1"))
            .expect("cluster")
    };
    let update = |spec: api::ClusterSpec, rotation: api::KeyRotation| {
        let cluster = current();
        ctl.update_cluster(Request::new(api::UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            cluster_version: version_of(&cluster.meta),
            spec: Some(spec),
            rotation: Some(rotation),
        }))
    };
    let spec = current().spec.expect("spec");
    let mut short = spec.clone();
    short
        .ca_config
        .as_mut()
        .expect("ca config")
        .node_cert_expiry = secs(600);
    check(
        update(short, Default::default()).await,
        Code::InvalidArgument,
        "minimum certificate expiry time is: 1h0m0s",
    );
    let renamed = api::ClusterSpec {
        annotations: annotations("other"),
        ..spec.clone()
    };
    check(
        update(renamed, Default::default()).await,
        Code::InvalidArgument,
        "modification of cluster name is not allowed",
    );

    // Turning autolock off drops the managers' unlock key; on creates a fresh one.
    let mut unlocked = spec.clone();
    unlocked.encryption_config = Some(api::EncryptionConfig {
        auto_lock_managers: false,
    });
    let resp = update(unlocked, Default::default())
        .await
        .expect("update")
        .into_inner()
        .cluster
        .expect("cluster");
    assert!(resp.unlock_keys.is_empty());
    assert!(current().unlock_keys.is_empty());
    let mut locked = spec.clone();
    locked.encryption_config = Some(api::EncryptionConfig {
        auto_lock_managers: true,
    });
    update(locked.clone(), Default::default())
        .await
        .expect("autolock on");
    let keys = current().unlock_keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0].subsystem.as_str(), keys[0].key.len()),
        ("swarm-manager", 32)
    );
    let rotate = api::KeyRotation {
        manager_unlock_key: true,
        ..Default::default()
    };
    update(locked, rotate).await.expect("rotate unlock key");
    assert_ne!(current().unlock_keys[0].key, keys[0].key);
    // The signing key the spec carried is still there: a redacted spec sent back must not lose it.
    assert!(
        current()
            .root_ca
            .is_some_and(|r| r.ca_key == b"PRIVATE KEY")
    );
}

// ---------------------------------------------------------------- secrets and configs

fn secret_spec(name: &str, data: &[u8]) -> api::SecretSpec {
    api::SecretSpec {
        annotations: annotations(name),
        data: data.to_vec(),
        ..Default::default()
    }
}

async fn create_secret(ctl: &ControlApi, spec: api::SecretSpec) -> Result<api::Secret, Status> {
    ctl.create_secret(Request::new(api::CreateSecretRequest { spec: Some(spec) }))
        .await
        .map(|r| r.into_inner().secret.expect("secret"))
}

#[tokio::test]
async fn secret_rules() {
    let ctl = control(&[]);
    let secret = create_secret(&ctl, secret_spec("mysecret", b"s3cr3t"))
        .await
        .expect("create");
    assert!(
        secret.spec.as_ref().is_some_and(|s| s.data.is_empty()),
        "data never leaves"
    );
    let stored = ctl
        .store
        .view(|tx| tx.get_secret(&secret.id))
        .expect("stored");
    assert_eq!(
        stored.spec.as_ref().map(|s| s.data.as_slice()),
        Some(&b"s3cr3t"[..])
    );
    check(
        create_secret(&ctl, secret_spec("MySecret", b"x")).await,
        Code::AlreadyExists,
        "secret MySecret already exists",
    );
    check(
        create_secret(&ctl, secret_spec("bad name", b"x")).await,
        Code::InvalidArgument,
        "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
    );
    check(
        create_secret(&ctl, secret_spec("empty", b"")).await,
        Code::InvalidArgument,
        "secret data must be larger than 0 and less than 512000 bytes",
    );
    check(
        create_secret(&ctl, secret_spec("big", &vec![1u8; 512_000])).await,
        Code::InvalidArgument,
        "secret data must be larger than 0 and less than 512000 bytes",
    );
    let driven = api::SecretSpec {
        driver: Some(api::Driver {
            name: "drv".into(),
            ..Default::default()
        }),
        ..secret_spec("ext", b"")
    };
    check(
        create_secret(&ctl, driven).await,
        Code::Unimplemented,
        "secret drivers are not supported yet (plugin getter is nil)",
    );

    let got = ctl
        .get_secret(Request::new(api::GetSecretRequest {
            secret_id: secret.id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .secret
        .expect("secret");
    assert!(got.spec.as_ref().is_some_and(|s| s.data.is_empty()));
    let listed = ctl
        .list_secrets(Request::new(api::ListSecretsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .secrets;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].spec.as_ref().is_some_and(|s| s.data.is_empty()));

    // Labels may change, nothing else.
    let mut relabelled = secret_spec("mysecret", b"");
    relabelled.annotations.as_mut().expect("annotations").labels =
        BTreeMap::from([("a".to_string(), "b".to_string())]);
    let update = |spec: api::SecretSpec| {
        let current = ctl
            .store
            .view(|tx| tx.get_secret(&secret.id))
            .expect("secret");
        ctl.update_secret(Request::new(api::UpdateSecretRequest {
            secret_id: current.id.clone(),
            secret_version: version_of(&current.meta),
            spec: Some(spec),
        }))
    };
    let updated = update(relabelled)
        .await
        .expect("labels")
        .into_inner()
        .secret
        .expect("secret");
    assert_eq!(
        labels_of(&updated.spec.as_ref().and_then(|s| s.annotations.clone()))
            .get("a")
            .map(String::as_str),
        Some("b")
    );
    assert!(updated.spec.as_ref().is_some_and(|s| s.data.is_empty()));
    check(
        update(secret_spec("mysecret", b"other")).await,
        Code::InvalidArgument,
        "only updates to Labels are allowed",
    );

    // In use by services.
    let reference = api::SecretReference {
        secret_id: secret.id.clone(),
        secret_name: "mysecret".into(),
        target: Some(api::secret_reference::Target::File(api::FileTarget {
            name: "f".into(),
            ..Default::default()
        })),
    };
    for name in ["web", "api"] {
        let r = reference.clone();
        create_service(
            &ctl,
            with_container(service_spec(name), move |c| c.secrets = vec![r]),
        )
        .await
        .expect("service using the secret");
    }
    let remove = || {
        ctl.remove_secret(Request::new(api::RemoveSecretRequest {
            secret_id: secret.id.clone(),
        }))
    };
    let err = remove().await.expect_err("in use");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        [
            "secret 'mysecret' is in use by the following services: web, api",
            "secret 'mysecret' is in use by the following services: api, web"
        ]
        .contains(&err.message()),
        "{}",
        err.message()
    );
    check(
        ctl.remove_secret(Request::new(api::RemoveSecretRequest {
            secret_id: "nosuch".into(),
        }))
        .await,
        Code::NotFound,
        "could not find secret nosuch",
    );
}

#[tokio::test]
async fn config_rules() {
    let ctl = control(&[]);
    let create = |name: &str, data: &[u8]| {
        ctl.create_config(Request::new(api::CreateConfigRequest {
            spec: Some(api::ConfigSpec {
                annotations: annotations(name),
                data: data.to_vec(),
                ..Default::default()
            }),
        }))
    };
    let config = create("mycfg", b"payload")
        .await
        .expect("create")
        .into_inner()
        .config
        .expect("config");
    check(
        create("mycfg", b"x").await,
        Code::AlreadyExists,
        "config mycfg already exists",
    );
    check(
        create("big", &vec![1u8; 1_024_000]).await,
        Code::InvalidArgument,
        "config data must be larger than 0 and less than 1024000 bytes",
    );
    let got = ctl
        .get_config(Request::new(api::GetConfigRequest {
            config_id: config.id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .config
        .expect("config");
    assert_eq!(
        got.spec.map(|s| s.data),
        Some(b"payload".to_vec()),
        "configs are not secret"
    );
    ctl.remove_config(Request::new(api::RemoveConfigRequest {
        config_id: config.id.clone(),
    }))
    .await
    .expect("remove");
    check(
        ctl.get_config(Request::new(api::GetConfigRequest {
            config_id: config.id.clone(),
        }))
        .await,
        Code::NotFound,
        &format!("config {} not found", config.id),
    );
}

fn secret_ref(secret: &api::Secret, target: &str) -> api::SecretReference {
    api::SecretReference {
        secret_id: secret.id.clone(),
        secret_name: name_of(&secret.spec.as_ref().and_then(|s| s.annotations.clone())).into(),
        target: Some(api::secret_reference::Target::File(api::FileTarget {
            name: target.into(),
            mode: 0o444,
            ..Default::default()
        })),
    }
}

fn config_ref(config: &api::Config, target: &str) -> api::ConfigReference {
    api::ConfigReference {
        config_id: config.id.clone(),
        config_name: name_of(&config.spec.as_ref().and_then(|s| s.annotations.clone())).into(),
        target: Some(api::config_reference::Target::File(api::FileTarget {
            name: target.into(),
            mode: 0o444,
            ..Default::default()
        })),
    }
}

async fn create_config(ctl: &ControlApi, name: &str, data: &[u8]) -> Result<api::Config, Status> {
    ctl.create_config(Request::new(api::CreateConfigRequest {
        spec: Some(api::ConfigSpec {
            annotations: annotations(name),
            data: data.to_vec(),
            ..Default::default()
        }),
    }))
    .await
    .map(|r| r.into_inner().config.expect("config"))
}

/// Issue 16, item 6: every bad secret or config input is InvalidArgument with a clear message
/// and changes nothing: a reference to a missing one, a target given twice, a target that would
/// leave the secrets (configs) directory, empty names, oversize data.
#[tokio::test]
async fn bad_secret_and_config_input_is_refused_and_changes_nothing() {
    let ctl = control(&[]);
    let secret = create_secret(&ctl, secret_spec("pw", b"hunter2"))
        .await
        .expect("secret");
    let other = create_secret(&ctl, secret_spec("key", b"k"))
        .await
        .expect("secret");
    let config = create_config(&ctl, "app.conf", b"a=1")
        .await
        .expect("config");
    let other_config = create_config(&ctl, "log.conf", b"l=1")
        .await
        .expect("config");
    let svc = create_service(
        &ctl,
        with_container(service_spec("web"), |c| {
            c.secrets = vec![secret_ref(&secret, "pw")];
            c.configs = vec![config_ref(&config, "app.conf")];
        }),
    )
    .await
    .expect("a service with a secret and a config");
    let before = (ctl.store.last_index(), ctl.store.save());

    let with_refs = |secrets: Vec<api::SecretReference>, configs: Vec<api::ConfigReference>| {
        with_container(service_spec("api"), |c| {
            c.secrets = secrets;
            c.configs = configs;
        })
    };
    let refused = [
        (
            with_refs(
                vec![api::SecretReference {
                    secret_id: "nosuch".into(),
                    ..secret_ref(&secret, "pw")
                }],
                vec![],
            ),
            "secret not found: pw",
        ),
        (
            with_refs(
                vec![],
                vec![api::ConfigReference {
                    config_id: "nosuch".into(),
                    ..config_ref(&config, "c")
                }],
            ),
            "config not found: app.conf",
        ),
        (
            with_refs(
                vec![secret_ref(&secret, "same"), secret_ref(&other, "same")],
                vec![],
            ),
            "secret references 'pw' and 'key' have a conflicting target: 'same'",
        ),
        (
            with_refs(
                vec![],
                vec![
                    config_ref(&config, "same"),
                    config_ref(&other_config, "same"),
                ],
            ),
            "config references 'app.conf' and 'log.conf' have a conflicting target: 'same'",
        ),
        (
            with_refs(vec![secret_ref(&secret, "../x")], vec![]),
            "malformed file secret reference, invalid target file name provided: '../x' contains a '..' component",
        ),
        (
            with_refs(vec![secret_ref(&secret, "a/../b")], vec![]),
            "malformed file secret reference, invalid target file name provided: 'a/../b' contains a '..' component",
        ),
        (
            with_refs(vec![secret_ref(&secret, "/run/../etc/shadow")], vec![]),
            "malformed file secret reference, invalid target file name provided: '/run/../etc/shadow' contains a '..' component",
        ),
        (
            with_refs(vec![], vec![config_ref(&config, "../x")]),
            "malformed file config reference, invalid target file name provided: '../x' contains a '..' component",
        ),
        (
            with_refs(vec![], vec![config_ref(&config, "a/../b")]),
            "malformed file config reference, invalid target file name provided: 'a/../b' contains a '..' component",
        ),
        (
            with_refs(vec![secret_ref(&secret, "./")], vec![]),
            "malformed file secret reference, invalid target file name provided: './' names no file",
        ),
        (
            with_refs(vec![], vec![config_ref(&config, "/")]),
            "malformed file config reference, invalid target file name provided: '/' names no file",
        ),
        (
            with_refs(
                vec![
                    secret_ref(&secret, "x"),
                    secret_ref(&other, "/run/secrets/x"),
                ],
                vec![],
            ),
            "secret reference 'pw' (target 'x') and secret reference 'key' (target '/run/secrets/x') name the same file in the task: '/run/secrets/x'",
        ),
        (
            with_refs(
                vec![secret_ref(&secret, "app.conf")],
                vec![config_ref(&config, "./run/secrets/app.conf")],
            ),
            "secret reference 'pw' (target 'app.conf') and config reference 'app.conf' (target './run/secrets/app.conf') name the same file in the task: '/run/secrets/app.conf'",
        ),
    ];
    for (spec, message) in refused {
        check(
            create_service(&ctl, spec.clone()).await,
            Code::InvalidArgument,
            message,
        );
        let spec = api::ServiceSpec {
            annotations: annotations("web"),
            ..spec
        };
        check(
            update_service(&ctl, &svc, spec, false).await,
            Code::InvalidArgument,
            message,
        );
    }

    for (spec, message) in [
        (secret_spec("", b"x"), "name must be provided"),
        (
            secret_spec("big", &vec![0u8; 512_000]),
            "secret data must be larger than 0 and less than 512000 bytes",
        ),
        (
            secret_spec("empty", b""),
            "secret data must be larger than 0 and less than 512000 bytes",
        ),
    ] {
        check(
            create_secret(&ctl, spec).await,
            Code::InvalidArgument,
            message,
        );
    }
    for (name, data, message) in [
        ("", &b"x"[..], "name must be provided"),
        (
            "big",
            &vec![0u8; 1_024_000][..],
            "config data must be larger than 0 and less than 1024000 bytes",
        ),
        (
            "empty",
            &b""[..],
            "config data must be larger than 0 and less than 1024000 bytes",
        ),
    ] {
        check(
            create_config(&ctl, name, data).await,
            Code::InvalidArgument,
            message,
        );
    }
    // In use: neither can be removed.
    check(
        ctl.remove_secret(Request::new(api::RemoveSecretRequest {
            secret_id: secret.id.clone(),
        }))
        .await,
        Code::InvalidArgument,
        "secret 'pw' is in use by the following service: web",
    );
    check(
        ctl.remove_config(Request::new(api::RemoveConfigRequest {
            config_id: config.id.clone(),
        }))
        .await,
        Code::InvalidArgument,
        "config 'app.conf' is in use by the following service: web",
    );
    assert_eq!((ctl.store.last_index(), ctl.store.save()), before);

    // What stays allowed: absolute targets, a secret and a config of one relative target (they
    // land in different directories), the largest data.
    create_service(
        &ctl,
        with_refs(
            vec![
                secret_ref(&secret, "/etc/app/pw"),
                secret_ref(&other, "sub/key"),
            ],
            vec![
                config_ref(&config, "/etc/app.conf"),
                config_ref(&other_config, "sub/key"),
            ],
        ),
    )
    .await
    .expect("allowed targets");
    create_secret(&ctl, secret_spec("largest", &vec![0u8; 511_999]))
        .await
        .expect("largest secret");
    create_config(&ctl, "largest", &vec![0u8; 1_023_999])
        .await
        .expect("largest config");
}

// ---------------------------------------------------------------- extensions, resources, volumes

#[tokio::test]
async fn extensions_and_resources() {
    let ctl = control(&[]);
    let create = |name: &str, kind: &str| {
        ctl.create_resource(Request::new(api::CreateResourceRequest {
            annotations: annotations(name),
            kind: kind.to_string(),
            payload: None,
        }))
    };
    check(
        create("r1", "widget").await,
        Code::InvalidArgument,
        "Kind widget is not registered",
    );
    let ext = ctl
        .create_extension(Request::new(api::CreateExtensionRequest {
            annotations: annotations("widget"),
            description: "widgets".into(),
        }))
        .await
        .expect("extension")
        .into_inner()
        .extension
        .expect("extension");
    let r1 = create("r1", "widget")
        .await
        .expect("resource")
        .into_inner()
        .resource
        .expect("resource");
    check(
        create("r1", "widget").await,
        Code::AlreadyExists,
        "A resource with name r1 already exists",
    );
    let listed = ctl
        .list_resources(Request::new(api::ListResourcesRequest {
            filters: Some(api::list_resources_request::Filters {
                kind: "widget".into(),
                ..Default::default()
            }),
        }))
        .await
        .expect("list")
        .into_inner()
        .resources;
    assert_eq!(listed, std::slice::from_ref(&r1));
    let stale = api::UpdateResourceRequest {
        resource_id: r1.id.clone(),
        resource_version: Some(api::Version { index: 0 }),
        ..Default::default()
    };
    check(
        ctl.update_resource(Request::new(stale)).await,
        Code::InvalidArgument,
        "update out of sequence",
    );
    ctl.remove_resource(Request::new(api::RemoveResourceRequest {
        resource_id: r1.id.clone(),
    }))
    .await
    .expect("remove resource");
    ctl.remove_extension(Request::new(api::RemoveExtensionRequest {
        extension_id: ext.id.clone(),
    }))
    .await
    .expect("remove extension");
    check(
        ctl.get_extension(Request::new(api::GetExtensionRequest {
            extension_id: ext.id.clone(),
        }))
        .await,
        Code::NotFound,
        &format!("extension {} not found", ext.id),
    );
}

#[tokio::test]
async fn volumes_are_not_supported_yet() {
    let ctl = control(&[]);
    check(
        ctl.list_volumes(Request::new(api::ListVolumesRequest::default()))
            .await,
        Code::Unimplemented,
        "not supported yet: cluster volumes",
    );
}

#[test]
fn store_errors_map_like_swarmkit() {
    let status = store_status(StoreError::SequenceConflict {
        kind: store::Kind::Service,
        id: "x".into(),
    });
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unknown, "update out of sequence")
    );
    let status = store_status(StoreError::Propose(store::ProposeError::NoLeader));
    assert_eq!(status.code(), Code::Unknown);
    assert!(
        status
            .message()
            .starts_with("The swarm does not have a leader")
    );
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    use api::NodeRole::Manager;
    use api::node_status::State::Ready;
    let ctl = control(&["m1"]);
    let m1 = node("m1", "host-m1", Manager, Ready);
    let orphan = api::Task {
        id: "t1".into(),
        node_id: "m1".into(),
        ..Default::default()
    };
    seed(&ctl, |tx| {
        tx.create_node(m1)?;
        tx.create_task(orphan)?;
        tx.create_cluster(cluster_object())
    })
    .await;
    let svc = create_service(&ctl, service_spec("web"))
        .await
        .expect("create");
    let before = (ctl.store.last_index(), ctl.store.save());

    check(
        ctl.remove_node(Request::new(api::RemoveNodeRequest {
            node_id: "m1".into(),
            force: true,
        }))
        .await,
        Code::FailedPrecondition,
        "node m1 is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
    );
    // The rollback refusal comes after the version and job fields were already touched.
    check(
        update_service(&ctl, &svc, service_spec("web"), true).await,
        Code::FailedPrecondition,
        &format!("service {} does not have a previous spec", svc.id),
    );
    check(
        create_service(&ctl, service_spec("WEB")).await,
        Code::AlreadyExists,
        "name conflicts with an existing object: service WEB already exists",
    );
    assert_eq!((ctl.store.last_index(), ctl.store.save()), before);
}

#[tokio::test]
async fn cluster_update_rotates_join_tokens() {
    let ctl = control(&[]);
    let root = ca::RootCa::generate().expect("root CA");
    let mut cluster = cluster_object();
    cluster
        .spec
        .as_mut()
        .and_then(|s| s.ca_config.as_mut())
        .expect("ca config")
        .signing_ca_cert
        .clear();
    cluster.root_ca.as_mut().expect("root ca").ca_cert = root.cert_pem().to_vec();
    seed(&ctl, |tx| tx.create_cluster(cluster)).await;
    let got = ctl
        .get_cluster(Request::new(api::GetClusterRequest {
            cluster_id: "cluster1".into(),
        }))
        .await
        .expect("get")
        .into_inner()
        .cluster
        .expect("cluster");
    let resp = ctl
        .update_cluster(Request::new(api::UpdateClusterRequest {
            cluster_id: got.id.clone(),
            cluster_version: version_of(&got.meta),
            spec: got.spec.clone(),
            rotation: Some(api::KeyRotation {
                worker_join_token: true,
                ..Default::default()
            }),
        }))
        .await
        .expect("rotate")
        .into_inner()
        .cluster
        .expect("cluster");
    let tokens = resp.root_ca.and_then(|r| r.join_tokens).expect("tokens");
    assert_ne!(tokens.worker, "SWMTKN-1-w");
    assert!(tokens.worker.starts_with("SWMTKN-1-"), "{}", tokens.worker);
    assert_eq!(tokens.manager, "SWMTKN-1-m");
    // The redacted spec sent back kept the private key where it was.
    let stored = ctl
        .store
        .view(|tx| tx.get_cluster("cluster1"))
        .expect("cluster");
    assert_eq!(
        stored.root_ca.map(|r| r.ca_key),
        Some(b"PRIVATE KEY".to_vec())
    );
}

#[tokio::test]
async fn removed_node_certificate_is_blacklisted_until_expiry() {
    use api::NodeRole::Worker;
    use api::node_status::State::Down;
    let ctl = control(&[]);
    let cert = ca::RootCa::generate()
        .expect("a certificate")
        .cert_pem()
        .to_vec();
    let expected = ca::CertInfo::parse(&cert).expect("parse").not_after;
    let mut w1 = node("w1", "host-w1", Worker, Down);
    w1.certificate = Some(api::Certificate {
        certificate: cert,
        ..Default::default()
    });
    seed(&ctl, |tx| {
        tx.create_node(w1)?;
        tx.create_cluster(cluster_object())
    })
    .await;
    ctl.remove_node(Request::new(api::RemoveNodeRequest {
        node_id: "w1".into(),
        force: false,
    }))
    .await
    .expect("remove");
    let cluster = ctl
        .store
        .view(|tx| tx.get_cluster("cluster1"))
        .expect("cluster");
    let entry = cluster
        .blacklisted_certificates
        .get("w1")
        .expect("blacklisted");
    assert_eq!(entry.expiry, Some(prost_types::Timestamp::from(expected)));
}

/// `service_spec(name)` with a label of `len` bytes.
fn labelled_spec(name: &str, len: usize) -> api::ServiceSpec {
    let mut spec = service_spec(name);
    spec.annotations
        .as_mut()
        .expect("annotations")
        .labels
        .insert("big".into(), "x".repeat(len));
    spec
}

#[tokio::test]
async fn a_service_whose_raft_entry_passes_swarmkits_limit_is_refused() {
    let ctl = control(&[]);
    // The entry of a stored service, measured as it was proposed (no version yet).
    let probe = create_service(&ctl, labelled_spec("svc-a", 1_500_000))
        .await
        .expect("well under the limit");
    let mut proposed = probe.clone();
    proposed.meta.as_mut().expect("meta").version = None;
    let entry = store::proposal_len(&[api::StoreAction {
        action: api::StoreActionKind::StoreActionCreate as i32,
        target: Some(api::store_action::Target::Service(proposed)),
    }]);
    // Label sizes that make the same entry `delta` bytes off the limit (timestamps vary by a few).
    let len_for = |delta: isize| {
        (1_500_000 + store::MAX_TRANSACTION_BYTES as isize - entry as isize + delta) as usize
    };

    let refused = create_service(&ctl, labelled_spec("svc-b", len_for(16))).await;
    check(
        refused,
        Code::Unknown,
        "raft: raft message is too large and can't be sent",
    );
    let listed = ctl
        .list_services(Request::new(api::ListServicesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .services;
    assert_eq!(listed.len(), 1, "nothing stored by the refused write");

    create_service(&ctl, labelled_spec("svc-c", len_for(-16)))
        .await
        .expect("just under the limit");

    // An update that keeps the previous spec doubles the entry: refused, the service unchanged.
    let current = get_service(&ctl, &probe.id).await;
    let update = ctl
        .update_service(Request::new(api::UpdateServiceRequest {
            service_id: probe.id.clone(),
            service_version: current.meta.as_ref().and_then(|m| m.version),
            spec: Some(labelled_spec("svc-a", 1_400_000)),
            ..Default::default()
        }))
        .await;
    check(
        update,
        Code::Unknown,
        "raft: raft message is too large and can't be sent",
    );
    assert_eq!(get_service(&ctl, &probe.id).await, current);
}
