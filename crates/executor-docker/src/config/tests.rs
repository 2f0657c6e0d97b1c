//! The task → container mapping, checked without an engine.

use std::collections::BTreeMap;

use super::*;

fn task_with(spec: api::ContainerSpec) -> api::Task {
    api::Task {
        id: "t1".into(),
        service_id: "s1".into(),
        node_id: "n1".into(),
        slot: 2,
        service_annotations: Some(api::Annotations {
            name: "web".into(),
            ..Default::default()
        }),
        spec: Some(api::TaskSpec {
            runtime: Some(api::task_spec::Runtime::Container(Box::new(spec))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn busybox() -> api::ContainerSpec {
    api::ContainerSpec {
        image: "swarmkit-test/busybox:latest".into(),
        ..Default::default()
    }
}

fn body(task: &api::Task) -> ContainerCreateBody {
    ContainerConfig::new(task)
        .expect("valid task")
        .create_body(&[], None)
}

#[test]
fn replicated_tasks_are_named_service_slot_id() {
    let task = task_with(busybox());
    assert_eq!(ContainerConfig::new(&task).unwrap().name(), "web.2.t1");
}

#[test]
fn global_tasks_are_named_service_node_id() {
    let mut task = task_with(busybox());
    task.slot = 0;
    assert_eq!(container_name(&task), "web.n1.t1");
}

#[test]
fn an_annotated_task_name_wins() {
    let mut task = task_with(busybox());
    task.annotations = Some(api::Annotations {
        name: "custom".into(),
        ..Default::default()
    });
    assert_eq!(container_name(&task), "custom");
}

#[test]
fn a_task_without_a_container_or_image_is_fatal() {
    let mut task = task_with(busybox());
    task.spec = Some(api::TaskSpec::default());
    assert_eq!(
        ContainerConfig::new(&task).unwrap_err(),
        ExecutorError::Fatal("unsupported runtime".into())
    );
    let task = task_with(api::ContainerSpec::default());
    assert_eq!(
        ContainerConfig::new(&task).unwrap_err(),
        ExecutorError::Fatal("dockerexec: image required".into())
    );
}

#[test]
fn system_labels_override_spec_and_task_labels() {
    let mut spec = busybox();
    spec.labels = BTreeMap::from([
        ("app".to_string(), "shop".to_string()),
        ("tier".to_string(), "spec".to_string()),
        ("com.docker.swarm.task.id".to_string(), "forged".to_string()),
    ]);
    let mut task = task_with(spec);
    task.annotations = Some(api::Annotations {
        labels: BTreeMap::from([("tier".to_string(), "task".to_string())]),
        ..Default::default()
    });
    let labels = body(&task).labels.unwrap();
    let want: HashMap<String, String> = [
        ("app", "shop"),
        ("tier", "task"),
        ("com.docker.swarm.task", ""),
        ("com.docker.swarm.task.id", "t1"),
        ("com.docker.swarm.task.name", "web.2.t1"),
        ("com.docker.swarm.node.id", "n1"),
        ("com.docker.swarm.service.id", "s1"),
        ("com.docker.swarm.service.name", "web"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels, want);
    assert!(labels.contains_key(TASK_ID_LABEL) && labels.contains_key(SERVICE_NAME_LABEL));
}

#[test]
fn command_replaces_the_entrypoint_and_args_become_cmd() {
    let mut spec = busybox();
    spec.command = vec!["/bin/sh".into(), "-c".into()];
    spec.args = vec!["echo hi".into()];
    let b = body(&task_with(spec));
    assert_eq!(b.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
    assert_eq!(b.cmd, Some(vec!["echo hi".into()]));
}

#[test]
fn args_alone_keep_the_image_entrypoint() {
    let mut spec = busybox();
    spec.args = vec!["--verbose".into()];
    let b = body(&task_with(spec));
    assert_eq!(b.entrypoint, None);
    assert_eq!(b.cmd, Some(vec!["--verbose".into()]));
    let b = body(&task_with(busybox()));
    assert_eq!((b.entrypoint, b.cmd), (None, None));
}

#[test]
fn env_user_dir_hostname_and_stop_settings_pass_through() {
    let mut spec = busybox();
    spec.env = vec!["A=1".into(), "B=two".into()];
    spec.user = "nobody".into();
    spec.dir = "/tmp".into();
    spec.hostname = "box".into();
    spec.stop_signal = "SIGINT".into();
    spec.stop_grace_period = Some(prost_types::Duration {
        seconds: 3,
        nanos: 0,
    });
    let b = body(&task_with(spec));
    assert_eq!(b.env, Some(vec!["A=1".into(), "B=two".into()]));
    assert_eq!(b.user.as_deref(), Some("nobody"));
    assert_eq!(b.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(b.hostname.as_deref(), Some("box"));
    assert_eq!(b.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(b.stop_timeout, Some(3));
    assert_eq!(b.image.as_deref(), Some("swarmkit-test/busybox:latest"));
}

#[test]
fn defaults_leave_the_image_settings_alone() {
    let b = body(&task_with(busybox()));
    assert_eq!(b.env, None);
    assert_eq!(b.user, None);
    assert_eq!(b.working_dir, None);
    assert_eq!(b.stop_signal, None);
    // SwarmKit's default grace period, 10 s.
    assert_eq!(b.stop_timeout, Some(10));
    let hc = b.host_config.unwrap();
    assert_eq!((hc.memory, hc.cpu_quota, hc.mounts), (None, None, None));
}

#[test]
fn limits_become_memory_and_a_cpu_quota() {
    let mut task = task_with(busybox());
    task.spec.as_mut().unwrap().resources = Some(Box::new(api::ResourceRequirements {
        limits: Some(api::Resources {
            nano_cpus: 1_500_000_000,
            memory_bytes: 64 << 20,
            generic: Vec::new(),
        }),
        ..Default::default()
    }));
    let hc = body(&task).host_config.unwrap();
    assert_eq!(hc.memory, Some(64 << 20));
    assert_eq!(hc.cpu_period, Some(100_000));
    assert_eq!(hc.cpu_quota, Some(150_000));
}

#[test]
fn bind_volume_and_tmpfs_mounts() {
    let mut spec = busybox();
    spec.mounts = vec![
        api::Mount {
            r#type: api::mount::Type::Bind as i32,
            source: "/srv/data".into(),
            target: "/data".into(),
            readonly: true,
            ..Default::default()
        },
        api::Mount {
            r#type: api::mount::Type::Volume as i32,
            source: "cache".into(),
            target: "/cache".into(),
            ..Default::default()
        },
        api::Mount {
            r#type: api::mount::Type::Tmpfs as i32,
            target: "/scratch".into(),
            tmpfs_options: Some(api::mount::TmpfsOptions {
                size_bytes: 64 << 20,
                mode: 0o1777,
                options: "NoExec,nosuid".into(),
            }),
            ..Default::default()
        },
    ];
    let hc = body(&task_with(spec)).host_config.unwrap();
    let mounts = hc.mounts.unwrap();
    assert_eq!(
        mounts.len(),
        2,
        "tmpfs goes to HostConfig.Tmpfs: {mounts:?}"
    );
    assert_eq!(mounts[0].typ, Some(MountType::BIND));
    assert_eq!(mounts[0].source.as_deref(), Some("/srv/data"));
    assert_eq!(mounts[0].target.as_deref(), Some("/data"));
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
    assert_eq!(mounts[1].source.as_deref(), Some("cache"));
    assert_eq!(
        hc.tmpfs,
        Some(HashMap::from([(
            "/scratch".to_string(),
            "mode=1777,size=64m,noexec".to_string()
        )]))
    );
}

#[test]
fn task_files_become_read_only_binds_after_the_spec_mounts() {
    let mut spec = busybox();
    spec.mounts = vec![api::Mount {
        r#type: api::mount::Type::Volume as i32,
        source: "cache".into(),
        target: "/cache".into(),
        ..Default::default()
    }];
    let files = [(
        PathBuf::from("/dev/shm/swarmd-0/abc/t1/run/secrets/db"),
        PathBuf::from("/run/secrets/db"),
    )];
    let config = ContainerConfig::new(&task_with(spec)).expect("valid task");
    let mounts = config
        .create_body(&files, None)
        .host_config
        .unwrap()
        .mounts
        .unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[1].typ, Some(MountType::BIND));
    assert_eq!(
        mounts[1].source.as_deref(),
        Some("/dev/shm/swarmd-0/abc/t1/run/secrets/db")
    );
    assert_eq!(mounts[1].target.as_deref(), Some("/run/secrets/db"));
    assert_eq!(mounts[1].read_only, Some(true));
}

#[test]
fn hosts_entries_become_host_colon_ip() {
    let mut spec = busybox();
    spec.hosts = vec!["10.0.0.1 db alias".into(), "bad".into()];
    let hc = body(&task_with(spec)).host_config.unwrap();
    assert_eq!(hc.extra_hosts, Some(vec!["db:10.0.0.1".into()]));
}

#[test]
fn grace_periods_round_up_to_whole_seconds() {
    assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
    assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
    assert_eq!(whole_seconds(Duration::ZERO), 0);
}

fn port(
    proto: api::port_config::Protocol,
    target: u32,
    published: u32,
    host: bool,
) -> api::PortConfig {
    api::PortConfig {
        name: "p".into(),
        protocol: proto as i32,
        target_port: target,
        published_port: published,
        publish_mode: if host {
            api::port_config::PublishMode::Host
        } else {
            api::port_config::PublishMode::Ingress
        } as i32,
    }
}

#[test]
fn host_mode_ports_are_exposed_and_bound_on_the_node() {
    use api::port_config::Protocol;
    let mut task = task_with(busybox());
    task.endpoint = Some(Box::new(api::Endpoint {
        ports: vec![
            port(Protocol::Tcp, 80, 9090, true),
            port(Protocol::Udp, 53, 5353, true),
            port(Protocol::Sctp, 7, 0, true),
            // Ingress ports are the routing mesh's, not bound by the container.
            port(Protocol::Tcp, 443, 8443, false),
        ],
        ..Default::default()
    }));
    let b = body(&task);
    let mut exposed = b.exposed_ports.clone().expect("exposed ports");
    exposed.sort();
    assert_eq!(exposed, ["53/udp", "7/sctp", "80/tcp"]);
    let bindings = b
        .host_config
        .and_then(|h| h.port_bindings)
        .expect("port bindings");
    let bound = |key: &str| {
        bindings[key]
            .as_ref()
            .expect("a binding")
            .iter()
            .map(|p| (p.host_ip.clone(), p.host_port.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bindings.len(), 3);
    assert_eq!(bound("80/tcp"), [(None, Some("9090".to_string()))]);
    assert_eq!(bound("53/udp"), [(None, Some("5353".to_string()))]);
    // No published port: the engine picks one.
    assert_eq!(bound("7/sctp"), [(None, None)]);
}

#[test]
fn a_task_without_ports_or_networks_keeps_the_default_network() {
    let b = body(&task_with(busybox()));
    assert_eq!(b.exposed_ports, None);
    assert_eq!(b.networking_config, None);
    let hc = b.host_config.expect("host config");
    assert_eq!(hc.port_bindings, None);
    assert_eq!(hc.network_mode, None);
}

#[test]
fn the_container_is_created_on_its_first_network_with_its_address_and_aliases() {
    let mut task = task_with(busybox());
    let network = |id: &str, name: &str| api::Network {
        id: id.into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    task.networks = vec![
        api::NetworkAttachment {
            network: Some(network("netid1", "front")),
            addresses: vec!["10.0.1.5/24".into()],
            aliases: vec!["www".into()],
            ..Default::default()
        },
        api::NetworkAttachment {
            network: Some(network("netid2", "back")),
            addresses: vec!["10.0.2.5/24".into()],
            ..Default::default()
        },
    ];
    let config = ContainerConfig::new(&task).expect("valid task");
    let names: Vec<&str> = config
        .attachments()
        .iter()
        .map(|a| a.local_name.as_str())
        .collect();
    assert_eq!(names, ["swarmd-front-netid1", "swarmd-back-netid2"]);
    let b = config.create_body(&[], Some("swarmd-front-netid1"));
    assert_eq!(
        b.host_config.and_then(|h| h.network_mode).as_deref(),
        Some("swarmd-front-netid1")
    );
    let endpoints = b
        .networking_config
        .and_then(|n| n.endpoints_config)
        .expect("endpoints");
    // One endpoint at create (engines before API 1.44 take no more); the others are connected.
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints["swarmd-front-netid1"];
    assert_eq!(
        ep.ipam_config
            .as_ref()
            .and_then(|c| c.ipv4_address.as_deref()),
        Some("10.0.1.5")
    );
    assert_eq!(
        ep.aliases.clone().expect("aliases"),
        ["www", "web", "web.2.t1"].map(String::from)
    );
}

/// A network attachment of the kind the allocator makes: `driver` state, `ingress` or not, one
/// subnet with `gateway`.
fn attached(id: &str, driver: &str, ingress: bool, gateway: &str) -> api::NetworkAttachment {
    api::NetworkAttachment {
        network: Some(api::Network {
            id: id.into(),
            spec: Some(api::NetworkSpec {
                annotations: Some(api::Annotations {
                    name: id.into(),
                    ..Default::default()
                }),
                ingress,
                ..Default::default()
            }),
            driver_state: Some(api::Driver {
                name: driver.into(),
                ..Default::default()
            }),
            ipam: Some(api::IpamOptions {
                configs: vec![api::IpamConfig {
                    subnet: "10.0.9.0/24".into(),
                    gateway: gateway.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        addresses: vec!["10.0.9.5/24".into()],
        ..Default::default()
    }
}

#[test]
fn containers_on_swarm_networks_use_the_nodes_resolver_on_the_first_gateway() {
    let mut task = task_with(busybox());
    task.networks = vec![
        attached("ingress", "overlay", true, "10.255.0.1"),
        attached("front", "overlay", false, "10.0.1.1"),
        attached("back", "overlay", false, "10.0.2.1"),
    ];
    let hc = body(&task).host_config.expect("host config");
    assert_eq!(hc.dns, Some(vec!["10.0.1.1".to_string()]));

    // Ingress alone, or no network: the engine's default.
    task.networks.truncate(1);
    assert_eq!(body(&task).host_config.expect("hc").dns, None);
    task.networks.clear();
    assert_eq!(body(&task).host_config.expect("hc").dns, None);

    // The spec's own nameservers win.
    let mut spec = busybox();
    spec.dns_config = Some(api::container_spec::DnsConfig {
        nameservers: vec!["9.9.9.9".into()],
        ..Default::default()
    });
    let mut task = task_with(spec);
    task.networks = vec![attached("front", "overlay", false, "10.0.1.1")];
    assert_eq!(
        body(&task).host_config.expect("hc").dns,
        Some(vec!["9.9.9.9".to_string()])
    );
}

#[test]
fn on_the_data_plane_networks_with_a_vxlan_id_go_on_its_bridges() {
    let mut task = task_with(busybox());
    let mut front = attached("front", "overlay", false, "10.0.1.1");
    if let Some(d) = front.network.as_mut().and_then(|n| n.driver_state.as_mut()) {
        d.options.insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            "4101".into(),
        );
    }
    // No VXLAN ID: left on a bridge of the engine's.
    let back = attached("back", "overlay", false, "10.0.2.1");
    task.networks = vec![front, back];
    let config = ContainerConfig::new(&task).expect("config");
    assert!(!config.uses_data_plane());
    let config = config.on_data_plane();
    assert!(config.uses_data_plane());
    let bridges: Vec<Option<&str>> = config
        .attachments()
        .iter()
        .map(|a| a.bridge.as_deref())
        .collect();
    assert_eq!(bridges, [Some("swbr-4101"), None]);
    let mtu = |config: &ContainerConfig| {
        config.attachments()[0]
            .create_request()
            .options
            .expect("driver options")["com.docker.network.driver.mtu"]
            .clone()
    };
    assert_eq!(mtu(&config), "1450");

    // An encrypted network's frames cross the WireGuard tunnel: its smaller MTU.
    if let Some(d) = task.networks[0]
        .network
        .as_mut()
        .and_then(|n| n.driver_state.as_mut())
    {
        d.options.insert("encrypted".into(), String::new());
    }
    let config = ContainerConfig::new(&task).expect("config").on_data_plane();
    assert_eq!(mtu(&config), "1390");
}
