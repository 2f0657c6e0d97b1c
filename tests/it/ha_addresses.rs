//! Network addresses survive a leader change (issue 17, item 3): on a three-manager cluster the
//! allocator hands out VIPs, task addresses and node attachments; the leader is SIGKILLed; under
//! the new leader every address is still held by the same object, and what it allocates next
//! repeats none of them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ha_cluster::Cluster;
use crate::harness::wait_for;

/// Bound of every wait (the machine is shared).
const LIMIT: Duration = Duration::from_secs(90);

/// Every address handed out, (network ID, address) -> owner (`service:`, `task:` or `node:` and
/// its ID), and the number of NEW tasks of the listed services; None when the manager does not
/// answer, or holds an address twice (returned as Err).
type Addresses = BTreeMap<(String, String), String>;

fn read_addresses(socket: &std::path::Path) -> Option<Result<(Addresses, usize), String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = ca::control_channel(socket).ok()?;
        let mut client = api::control_client::ControlClient::new(channel);
        let limit = Duration::from_secs(10);
        let services = tokio::time::timeout(
            limit,
            client.list_services(api::ListServicesRequest::default()),
        )
        .await
        .ok()?
        .ok()?
        .into_inner()
        .services;
        let tasks =
            tokio::time::timeout(limit, client.list_tasks(api::ListTasksRequest::default()))
                .await
                .ok()?
                .ok()?
                .into_inner()
                .tasks;
        let nodes =
            tokio::time::timeout(limit, client.list_nodes(api::ListNodesRequest::default()))
                .await
                .ok()?
                .ok()?
                .into_inner()
                .nodes;
        let mut all = Addresses::new();
        let mut insert =
            |key: (String, String), owner: String| match all.insert(key.clone(), owner.clone()) {
                Some(other) => Err(format!("{key:?} held by {other} and {owner}")),
                None => Ok(()),
            };
        let attachment_keys = |attachments: &[api::NetworkAttachment]| -> Vec<(String, String)> {
            attachments
                .iter()
                .flat_map(|a| {
                    let id = a.network.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                    a.addresses
                        .iter()
                        .map(move |addr| (id.clone(), addr.clone()))
                })
                .collect()
        };
        let mut new_tasks = 0;
        let result = (|| {
            for s in &services {
                for vip in s.endpoint.iter().flat_map(|e| &e.virtual_ips) {
                    insert(
                        (vip.network_id.clone(), vip.addr.clone()),
                        format!("service:{}", s.id),
                    )?;
                }
            }
            for t in &tasks {
                let state = t.status.as_ref().map_or(0, |s| s.state);
                if state < api::TaskState::Pending as i32 {
                    new_tasks += 1;
                }
                if state <= api::TaskState::Running as i32 {
                    for key in attachment_keys(&t.networks) {
                        insert(key, format!("task:{}", t.id))?;
                    }
                }
            }
            for n in &nodes {
                for key in attachment_keys(&n.attachments) {
                    insert(key, format!("node:{}", n.id))?;
                }
            }
            Ok(())
        })();
        Some(result.map(|()| (all, new_tasks)))
    })
}

/// Waits until the cluster's leader lists `count` addresses and no NEW task; panics on an
/// address held twice.
fn wait_addresses(c: &mut Cluster, count: usize, what: &str) -> Addresses {
    wait_for(what, LIMIT, || {
        let l = c.try_leader(Duration::from_secs(5))?;
        match read_addresses(&c.managers[l].socket())? {
            Ok((all, 0)) if all.len() == count => Some(all),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        }
    })
}

fn ctl_ok(c: &mut Cluster, args: &[&str]) {
    let l = c.leader(LIMIT);
    let out = c.managers[l].ctl(args);
    assert_eq!(out.code, 0, "swarmctl {args:?}: {}", out.stderr);
}

/// Services whose tasks fit no node, so their tasks stay PENDING with their addresses (no task
/// churn from an executor moves the addresses under the test).
fn create_service(c: &mut Cluster, name: &str, replicas: &str) {
    ctl_ok(
        c,
        &[
            "service",
            "create",
            "--name",
            name,
            "--image",
            "img",
            "--replicas",
            replicas,
            "--network",
            "net",
            "--constraint",
            "node.labels.nowhere==true",
        ],
    );
}

#[test]
fn ha_addresses_survive_a_leader_kill_and_none_is_handed_out_twice() {
    let mut c = Cluster::start(3, 100);
    ctl_ok(
        &mut c,
        &[
            "network",
            "create",
            "--name",
            "net",
            "--subnet",
            "10.20.0.0/24",
        ],
    );
    create_service(&mut c, "web", "5");
    create_service(&mut c, "api", "3");
    // 3 nodes on ingress, 2 VIPs on net, 8 task addresses on net.
    let before = wait_addresses(&mut c, 13, "13 addresses under the first leader");
    assert_eq!(
        before.values().filter(|o| o.starts_with("node:")).count(),
        3,
        "every node on ingress: {before:?}"
    );

    let old = c.leader(LIMIT);
    c.kill(old);
    wait_for("a new leader", LIMIT, || {
        c.try_leader(Duration::from_secs(5)).filter(|&l| l != old)
    });
    let kept = wait_addresses(&mut c, 13, "the same 13 addresses under the new leader");
    assert_eq!(kept, before, "a leader change moved an address");

    // What the new leader allocates next is new.
    create_service(&mut c, "more", "4");
    let after = wait_addresses(&mut c, 18, "18 addresses after a new service");
    for (address, owner) in &before {
        assert_eq!(after.get(address), Some(owner), "{address:?} moved");
    }
    c.restart(old).expect("the killed manager restarts");
}
