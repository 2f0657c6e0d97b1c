//! Each filter of the pipeline, its explanation text and the order of several explanations.

use super::*;

#[tokio::test(start_paused = true)]
async fn nodes_not_ready_or_not_active_take_nothing() {
    use api::node_spec::Availability;
    let (store, running) = cluster(vec![
        down(node("n1")),
        availability(node("n2"), Availability::Drain),
        availability(node("n3"), Availability::Pause),
    ])
    .await;
    put_tasks(&store, vec![task("t", "s")]).await;
    wait_err(
        &store,
        "t",
        "no suitable node (3 nodes not available for new tasks)",
    )
    .await;

    edit_node(&store, "n3", |n| {
        n.spec.as_mut().unwrap().availability = Availability::Active as i32;
    })
    .await;
    assert_eq!(wait_assigned(&store, &["t"]).await["t"], "n3");
    let t = get_task(&store, "t");
    assert_eq!(err(&t), "", "err cleared on assignment");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_single_node_is_counted_in_the_singular() {
    let (store, running) = cluster(vec![down(node("n1"))]).await;
    put_tasks(&store, vec![task("t", "s")]).await;
    wait_err(
        &store,
        "t",
        "no suitable node (1 node not available for new tasks)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_node_at_all_gives_the_bare_explanation() {
    let (store, running) = cluster(vec![]).await;
    put_tasks(&store, vec![task("t", "s")]).await;
    wait_err(&store, "t", "no suitable node").await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reservations_are_accounted_and_freed() {
    let (store, running) = cluster(vec![resources(node("n1"), CPU, 2 * GIB)]).await;
    put_tasks(
        &store,
        vec![
            reserve(task("t1", "s"), CPU / 2, GIB),
            reserve(task("t2", "s"), CPU / 2, GIB),
            reserve(task("t3", "s"), CPU / 2, GIB),
        ],
    )
    .await;
    wait_assigned(&store, &["t1", "t2"]).await;
    wait_err(
        &store,
        "t3",
        "no suitable node (insufficient resources on 1 node)",
    )
    .await;

    // A task that ends gives its reservation back.
    set_task_state(&store, "t1", api::TaskState::Complete).await;
    assert_eq!(wait_assigned(&store, &["t3"]).await["t3"], "n1");

    // A deleted task too; a node that grows takes more.
    put_tasks(&store, vec![reserve(task("t4", "s"), CPU, 0)]).await;
    wait_err(
        &store,
        "t4",
        "no suitable node (insufficient resources on 1 node)",
    )
    .await;
    store.update(|tx| tx.delete_task("t2")).await.unwrap();
    wait_err(
        &store,
        "t4",
        "no suitable node (insufficient resources on 1 node)",
    )
    .await;
    edit_node(&store, "n1", |n| {
        n.description
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .nano_cpus = 2 * CPU;
    })
    .await;
    assert_eq!(wait_assigned(&store, &["t4"]).await["t4"], "n1");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_already_running_hold_their_reservations_at_start() {
    let store = new_store();
    put_services(&store, vec![service("s")]).await;
    put_nodes(
        &store,
        vec![
            resources(node("n1"), CPU, GIB),
            resources(node("n2"), CPU, GIB),
        ],
    )
    .await;
    put_tasks(
        &store,
        vec![
            on_node(
                reserve(task("old", "s"), CPU, 0),
                "n1",
                api::TaskState::Running,
            ),
            reserve(task("new", "s"), CPU, 0),
        ],
    )
    .await;
    let running = Running::start(&store).await;
    assert_eq!(wait_assigned(&store, &["new"]).await["new"], "n2");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn generic_resources_are_claimed_by_name_or_count() {
    let named = |v: &str| api::GenericResource {
        resource: Some(api::generic_resource::Resource::NamedResourceSpec(
            api::NamedGenericResource {
                kind: "gpu".into(),
                value: v.into(),
            },
        )),
    };
    let mut n1 = node("n1");
    n1.description.as_mut().unwrap().resources = Some(api::Resources {
        generic: vec![named("gpu0"), named("gpu1")],
        ..Default::default()
    });
    let (store, running) = cluster(vec![n1]).await;
    let wants_gpu = |id: &str| {
        let mut t = task(id, "s");
        spec_mut(&mut t).resources = Some(Box::new(api::ResourceRequirements {
            reservations: Some(api::Resources {
                generic: vec![api::GenericResource {
                    resource: Some(api::generic_resource::Resource::DiscreteResourceSpec(
                        api::DiscreteGenericResource {
                            kind: "gpu".into(),
                            value: 1,
                        },
                    )),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }));
        t
    };
    put_tasks(&store, vec![wants_gpu("a"), wants_gpu("b"), wants_gpu("c")]).await;
    wait_assigned(&store, &["a", "b"]).await;
    wait_err(
        &store,
        "c",
        "no suitable node (insufficient resources on 1 node)",
    )
    .await;
    let mut given: Vec<_> = ["a", "b"]
        .iter()
        .flat_map(|id| get_task(&store, id).assigned_generic_resources)
        .collect();
    given.sort_by_key(|g| format!("{g:?}"));
    assert_eq!(given, vec![named("gpu0"), named("gpu1")]);

    set_task_state(&store, "a", api::TaskState::Failed).await;
    wait_assigned(&store, &["c"]).await;
    let a_had = get_task(&store, "a").assigned_generic_resources;
    assert_eq!(get_task(&store, "c").assigned_generic_resources, a_had);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn plugins_must_be_installed() {
    let (store, running) = cluster(vec![
        plugins(
            node("n1"),
            &[("Volume", "flocker:latest"), ("Network", "weave")],
        ),
        plugins(node("n2"), &[("Network", "weave")]),
        plugins(node("n3"), &[("Volume", "other")]),
    ])
    .await;
    let mut v = task("v", "s");
    if let Some(api::task_spec::Runtime::Container(c)) = spec_mut(&mut v).runtime.as_mut() {
        c.mounts.push(api::Mount {
            r#type: api::mount::Type::Volume as i32,
            target: "/data".into(),
            volume_options: Some(api::mount::VolumeOptions {
                driver_config: Some(api::Driver {
                    name: "flocker".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut net = task("net", "s");
    net.networks.push(api::NetworkAttachment {
        network: Some(api::Network {
            id: "overlay1".into(),
            driver_state: Some(api::Driver {
                name: "weave".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut missing = task("missing", "s3");
    missing.networks.push(api::NetworkAttachment {
        network: Some(api::Network {
            driver_state: Some(api::Driver {
                name: "calico".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    put_tasks(&store, vec![v]).await;
    assert_eq!(wait_assigned(&store, &["v"]).await["v"], "n1");
    put_services(&store, vec![service("s2")]).await;
    net.service_id = "s2".into();
    put_tasks(&store, vec![net]).await;
    let on = wait_assigned(&store, &["net"]).await;
    assert!(on["net"] == "n1" || on["net"] == "n2", "{on:?}");
    put_services(&store, vec![service("s3")]).await;
    put_tasks(&store, vec![missing]).await;
    wait_err(
        &store,
        "missing",
        "no suitable node (missing plugin on 3 nodes)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn log_driver_is_only_checked_on_nodes_reporting_log_plugins() {
    let (store, running) = cluster(vec![
        plugins(node("n1"), &[("Log", "syslog"), ("Log", "json-file")]),
        plugins(node("n2"), &[("Network", "bridge")]),
    ])
    .await;
    let with_log = |id: &str, name: &str| {
        let mut t = task(id, "s");
        spec_mut(&mut t).log_driver = Some(Box::new(api::Driver {
            name: name.into(),
            ..Default::default()
        }));
        t
    };
    // n2 reports no log plugin at all, so it passes; n1 lacks gelf.
    put_tasks(&store, vec![with_log("gelf", "gelf")]).await;
    assert_eq!(wait_assigned(&store, &["gelf"]).await["gelf"], "n2");
    edit_node(&store, "n2", |n| {
        n.status.as_mut().unwrap().state = api::node_status::State::Down as i32;
    })
    .await;
    put_services(&store, vec![service("s2")]).await;
    let mut again = with_log("gelf2", "gelf");
    again.service_id = "s2".into();
    put_tasks(&store, vec![again]).await;
    wait_err(
        &store,
        "gelf2",
        "no suitable node (1 node not available for new tasks; missing plugin on 1 node)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn constraints_select_nodes() {
    let (store, running) = cluster(vec![
        label(node("n1"), "zone", "east"),
        label(node("n2"), "zone", "west"),
        engine_label(node("n3"), "disk", "ssd"),
    ])
    .await;
    put_tasks(
        &store,
        vec![constraint(task("east", "s"), "node.labels.zone==east")],
    )
    .await;
    assert_eq!(wait_assigned(&store, &["east"]).await["east"], "n1");

    put_services(&store, vec![service("s2"), service("s3")]).await;
    let mut ssd = constraint(task("ssd", "s2"), "engine.labels.disk == SSD");
    ssd = constraint(ssd, "node.hostname!=n1");
    put_tasks(&store, vec![ssd]).await;
    assert_eq!(wait_assigned(&store, &["ssd"]).await["ssd"], "n3");

    let nowhere = constraint(task("nowhere", "s3"), "node.labels.zone==north");
    put_tasks(&store, vec![nowhere]).await;
    wait_err(
        &store,
        "nowhere",
        "no suitable node (scheduling constraints not satisfied on 3 nodes)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn platforms_match_with_architecture_aliases() {
    let (store, running) = cluster(vec![
        platform(node("x86"), "x86_64", "linux"),
        platform(node("arm"), "aarch64", "linux"),
        node("unknown"),
    ])
    .await;
    let on = |id: &str, service: &str, platforms: &[(&str, &str)]| {
        let mut t = task(id, service);
        placement_mut(&mut t).platforms = platforms
            .iter()
            .map(|(a, os)| api::Platform {
                architecture: (*a).into(),
                os: (*os).into(),
            })
            .collect();
        t
    };
    put_services(&store, vec![service("s2"), service("s3"), service("s4")]).await;
    put_tasks(
        &store,
        vec![
            on("amd", "s", &[("amd64", "linux")]),
            on("arm64", "s2", &[("arm64", "")]),
            on("win", "s3", &[("amd64", "windows"), ("", "darwin")]),
        ],
    )
    .await;
    let placed = wait_assigned(&store, &["amd", "arm64"]).await;
    assert_eq!(placed["amd"], "x86");
    assert_eq!(placed["arm64"], "arm");
    wait_err(
        &store,
        "win",
        "no suitable node (unsupported platform on 3 nodes)",
    )
    .await;
    // No platform requested: anything goes, even a node that reports none.
    put_tasks(&store, vec![task("any", "s4")]).await;
    assert_eq!(wait_assigned(&store, &["any"]).await["any"], "unknown");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn host_ports_are_taken_per_node() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    put_tasks(
        &store,
        vec![
            host_port(task("a", "s"), 8080),
            host_port(task("b", "s"), 8080),
            host_port(task("c", "s"), 8080),
        ],
    )
    .await;
    let placed = wait_assigned(&store, &["a", "b"]).await;
    assert_ne!(placed["a"], placed["b"]);
    wait_err(
        &store,
        "c",
        "no suitable node (host-mode port already in use on 2 nodes)",
    )
    .await;

    // The port is free again once the task holding it stops.
    set_task_state(&store, "a", api::TaskState::Shutdown).await;
    assert_eq!(wait_assigned(&store, &["c"]).await["c"], placed["a"]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn max_replicas_limits_tasks_per_node() {
    let (store, running) = cluster(vec![node("n1"), node("n2")]).await;
    let limited = |id: &str| {
        let mut t = task(id, "s");
        placement_mut(&mut t).max_replicas = 1;
        t
    };
    put_tasks(&store, vec![limited("a"), limited("b"), limited("c")]).await;
    let placed = wait_assigned(&store, &["a", "b"]).await;
    assert_ne!(placed["a"], placed["b"]);
    wait_err(
        &store,
        "c",
        "no suitable node (max replicas per node limit exceed)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn explanations_list_the_most_frequent_failure_first() {
    let (store, running) = cluster(vec![
        down(node("n1")),
        resources(label(node("n2"), "zone", "east"), CPU, GIB),
        resources(label(node("n3"), "zone", "east"), CPU, GIB),
        resources(node("n4"), 4 * CPU, GIB),
        resources(node("n5"), 4 * CPU, GIB),
        resources(node("n6"), 4 * CPU, GIB),
    ])
    .await;
    let t = constraint(
        reserve(task("t", "s"), 2 * CPU, 0),
        "node.labels.zone==east",
    );
    put_tasks(&store, vec![t]).await;
    wait_err(
        &store,
        "t",
        "no suitable node (scheduling constraints not satisfied on 3 nodes; insufficient \
         resources on 2 nodes; 1 node not available for new tasks)",
    )
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn equal_counts_keep_pipeline_order() {
    let (store, running) = cluster(vec![
        down(node("n1")),
        resources(node("n2"), 0, 0),
        resources(label(node("n3"), "zone", "west"), 4 * CPU, GIB),
    ])
    .await;
    let t = constraint(reserve(task("t", "s"), CPU, 0), "node.labels.zone!=west");
    put_tasks(&store, vec![t]).await;
    wait_err(
        &store,
        "t",
        "no suitable node (1 node not available for new tasks; insufficient resources on 1 node; \
         scheduling constraints not satisfied on 1 node)",
    )
    .await;
    running.stop().await;
}
