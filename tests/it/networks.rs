//! Overlay network IPAM through swarmctl against a real swarmd: subnets from the default pool or
//! the user's, what `network create` refuses (with nothing stored), and a cluster whose ingress
//! network is larger than a /24 (swarmd's default address pool flags, or `network create
//! --ingress` after removing the default one); the addresses `service inspect`, `task inspect`
//! and `node inspect` show.

use std::time::Duration;

use crate::harness::{Swarmd, wait_for};

const LIMIT: Duration = Duration::from_secs(20);

/// The `Subnet` and `Gateway` lines of a network's inspect, once the allocator has written them.
fn wait_subnet(d: &Swarmd, network: &str) -> (String, String) {
    wait_for(&format!("network {network} allocated"), LIMIT, || {
        let out = d.ctl(&["network", "inspect", network]).ok().to_string();
        let field = |name: &str| {
            out.lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split_once(": "))
                .map(|(_, v)| v.trim().to_string())
        };
        Some((field("Subnet")?, field("Gateway")?))
    })
}

fn pair(subnet: &str, gateway: &str) -> (String, String) {
    (subnet.to_string(), gateway.to_string())
}

#[test]
fn network_create_refuses_what_could_never_be_allocated_and_stores_nothing() {
    let d = Swarmd::start();
    assert_eq!(wait_subnet(&d, "ingress"), pair("10.0.0.0/24", "10.0.0.1"));
    d.ctl(&[
        "network",
        "create",
        "--name",
        "n1",
        "--subnet",
        "10.1.0.0/16",
    ])
    .ok();
    assert_eq!(wait_subnet(&d, "n1"), pair("10.1.0.0/16", "10.1.0.1"));
    d.ctl(&["network", "create", "--name", "n2"]).ok();
    assert_eq!(wait_subnet(&d, "n2"), pair("10.0.1.0/24", "10.0.1.1"));
    let n1 = d.ctl(&["network", "ls", "-q"]).ok().to_string();
    let before = d.ctl(&["network", "ls"]).ok().to_string();
    let n1_id = d
        .ctl(&["network", "inspect", "n1"])
        .ok()
        .lines()
        .next()
        .and_then(|l| l.split_once(": "))
        .map(|(_, id)| id.trim().to_string())
        .expect("n1's ID");
    assert!(n1.contains(&n1_id));
    let cases: &[(&[&str], String)] = &[
        (
            &["--subnet", "10.1.2.0/24"],
            format!(
                "Error: ipam configuration: subnet 10.1.2.0/24 overlaps with subnet 10.1.0.0/16 of network n1 ({n1_id})"
            ),
        ),
        (
            &["--subnet", "10.0.0.128/25"],
            "Error: ipam configuration: subnet 10.0.0.128/25 overlaps with subnet 10.0.0.0/24 of network ingress"
                .to_string(),
        ),
        (
            &["--subnet", "10.3.0.0/16", "--gateway", "10.4.0.1"],
            "Error: --gateway 10.4.0.1 is in none of the subnets given with --subnet".to_string(),
        ),
        (
            // Wider than its subnet: its network address 10.0.0.0 is outside (the control API
            // refuses such a range too, `ipam configuration: subnet ... does not contain range`).
            &["--subnet", "10.3.0.0/16", "--ip-range", "10.3.0.0/8"],
            "Error: --ip-range 10.3.0.0/8 is in none of the subnets given with --subnet".to_string(),
        ),
        (
            &["--subnet", "10.3.0.0/16", "--ip-range", "10.4.0.0/24"],
            "Error: --ip-range 10.4.0.0/24 is in none of the subnets given with --subnet".to_string(),
        ),
        (
            &["--subnet", "10.3.0.0/16", "--gateway", "10.3.0.0"],
            "Error: ipam configuration: gateway 10.3.0.0 is the network or broadcast address of subnet 10.3.0.0/16"
                .to_string(),
        ),
        (
            &["--driver", "weave"],
            "Error: plugin weave not supported".to_string(),
        ),
        (
            &["--ipam-driver", "weave"],
            "Error: plugin weave not supported".to_string(),
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["network", "create", "--name", "bad"];
        args.extend_from_slice(flags);
        let out = d.ctl(&args);
        let first = out.err().lines().next().unwrap_or("").to_string();
        // The ingress overlap names the ingress network's ID too.
        assert!(
            first.starts_with(want.as_str()),
            "swarmctl {args:?}: {first}"
        );
    }
    assert_eq!(d.ctl(&["network", "ls"]).ok(), before, "nothing was stored");
}

#[test]
fn a_default_address_pool_flag_gives_ingress_and_networks_larger_subnets() {
    let d = Swarmd::start_with(&[
        "--default-addr-pool",
        "10.20.0.0/16",
        "--default-addr-pool-mask-length",
        "19",
    ]);
    // 8190 addresses: an ingress address for each of 5000 nodes, and the services' VIPs.
    assert_eq!(
        wait_subnet(&d, "ingress"),
        pair("10.20.0.0/19", "10.20.0.1")
    );
    d.ctl(&["network", "create", "--name", "n1"]).ok();
    assert_eq!(wait_subnet(&d, "n1"), pair("10.20.32.0/19", "10.20.32.1"));
}

#[test]
fn ingress_can_be_recreated_with_a_larger_subnet() {
    let d = Swarmd::start();
    assert_eq!(wait_subnet(&d, "ingress"), pair("10.0.0.0/24", "10.0.0.1"));
    d.ctl(&["network", "rm", "ingress"]).ok();
    d.ctl(&[
        "network",
        "create",
        "--name",
        "ingress",
        "--ingress",
        "--subnet",
        "10.255.0.0/16",
    ])
    .ok();
    assert_eq!(
        wait_subnet(&d, "ingress"),
        pair("10.255.0.0/16", "10.255.0.1")
    );
    // The default pool's first /24 is free again for the next network.
    d.ctl(&["network", "create", "--name", "n1"]).ok();
    let (subnet, _) = wait_subnet(&d, "n1");
    assert!(subnet.starts_with("10.0."), "{subnet}");
}

/// What the control API holds once service `web` on `net1` is allocated: its VIPs, its task's ID
/// and attachments, and the node's ID and attachments (ingress); as (network name, addresses)
/// pairs, the addresses joined with ", ".
type Pairs = Vec<(String, String)>;

fn read_web_addresses(d: &Swarmd) -> Option<(Pairs, String, Pairs, String, Pairs)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = ca::control_channel(&d.socket()).ok()?;
        let mut client = api::control_client::ControlClient::new(channel);
        let services = client
            .list_services(api::ListServicesRequest::default())
            .await
            .ok()?
            .into_inner()
            .services;
        let networks = client
            .list_networks(api::ListNetworksRequest::default())
            .await
            .ok()?
            .into_inner()
            .networks;
        let network_name = |id: &str| {
            networks
                .iter()
                .find(|n| n.id == id)
                .and_then(|n| n.spec.as_ref()?.annotations.as_ref())
                .map(|a| a.name.clone())
        };
        let attachment_pairs = |attachments: &[api::NetworkAttachment]| -> Pairs {
            attachments
                .iter()
                .map(|a| {
                    let network = a.network.as_ref().expect("a copy of the network");
                    let name = network_name(&network.id).unwrap_or_default();
                    (name, a.addresses.join(", "))
                })
                .collect()
        };
        let vips: Pairs = services
            .first()?
            .endpoint
            .as_ref()?
            .virtual_ips
            .iter()
            .map(|v| {
                (
                    network_name(&v.network_id).unwrap_or_default(),
                    v.addr.clone(),
                )
            })
            .collect();
        let task = client
            .list_tasks(api::ListTasksRequest::default())
            .await
            .ok()?
            .into_inner()
            .tasks
            .into_iter()
            .find(|t| !t.networks.is_empty())?;
        let node = client
            .list_nodes(api::ListNodesRequest::default())
            .await
            .ok()?
            .into_inner()
            .nodes
            .pop()?;
        // The node's attachments: ingress's at once, net1's once the task is assigned to it.
        if vips.is_empty() || node.attachments.len() < 2 {
            return None;
        }
        Some((
            vips,
            task.id.clone(),
            attachment_pairs(&task.networks),
            node.id.clone(),
            attachment_pairs(&node.attachments),
        ))
    })
}

/// The `  <name> : <value>` lines of the block under the line `header` of `out`.
fn block(out: &str, header: &str) -> Pairs {
    out.lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("    "))
        .filter_map(|l| l.split_once(" : "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The process executor's node reports the overlay driver, so the task on net1 is placed there
/// (and runs on the host's network); the node gets an attachment on net1 besides ingress's.
#[test]
fn inspect_outputs_show_the_vips_and_addresses_the_control_api_holds() {
    let d = Swarmd::start_with(&["--executor", "process"]);
    d.ctl(&[
        "network",
        "create",
        "--name",
        "net1",
        "--subnet",
        "10.20.0.0/24",
    ])
    .ok();
    d.ctl(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "img",
        "--network",
        "net1",
        "--command",
        "sleep",
        "--args",
        "1000",
    ])
    .ok();
    let (vips, task, task_pairs, node, node_pairs) =
        wait_for("web's addresses on net1", LIMIT, || read_web_addresses(&d));
    let on_net1 = |pairs: &Pairs| {
        pairs.len() == 1
            && pairs[0].0 == "net1"
            && pairs[0].1.starts_with("10.20.0.")
            && pairs[0].1.ends_with("/24")
    };
    assert!(on_net1(&vips), "{vips:?}");
    assert!(on_net1(&task_pairs), "{task_pairs:?}");
    let mut names: Vec<&str> = node_pairs.iter().map(|p| p.0.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["ingress", "net1"], "{node_pairs:?}");

    let service = d.ctl(&["service", "inspect", "web"]).ok().to_string();
    assert_eq!(block(&service, "Virtual IPs:"), vips, "{service}");
    let task_out = d.ctl(&["task", "inspect", &task]).ok().to_string();
    assert_eq!(block(&task_out, "Networks:"), task_pairs, "{task_out}");
    let node_out = d.ctl(&["node", "inspect", &node]).ok().to_string();
    assert_eq!(
        block(&node_out, "Network attachments:"),
        node_pairs,
        "{node_out}"
    );
    // Objects without addresses print none of the blocks: a service on no network.
    d.ctl(&["service", "create", "--name", "plain", "--image", "img"])
        .ok();
    let plain = d.ctl(&["service", "inspect", "plain"]).ok().to_string();
    assert!(!plain.contains("Virtual IPs:"), "{plain}");
}
