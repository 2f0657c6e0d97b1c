//! The root rotation subsystem over a raft-less store, on a paused clock: rotations started through
//! UpdateCluster, nodes asked to rotate, the CA signer simulated, the root swapped.

use std::sync::Arc;

use api::control_server::Control;
use api::issuance_status::State;
use tonic::Request;

use super::*;
use crate::controlapi::{ControlApi, RaftMembers};

const CLUSTER_ID: &str = "cluster1";

struct NoMembers;

impl RaftMembers for NoMembers {
    fn manager_status(&self, _: &str) -> Option<api::ManagerStatus> {
        None
    }
    fn is_member(&self, _: &str) -> bool {
        false
    }
}

fn csr() -> Vec<u8> {
    let key = ca::NodeKey::generate().expect("node key");
    key.csr_pem().expect("csr").into_bytes()
}

fn issue(signer: &ca::SigningCa, node_id: &str) -> Vec<u8> {
    signer
        .issue(
            &csr(),
            node_id,
            api::NodeRole::Worker,
            CLUSTER_ID,
            ca::MIN_NODE_CERT_EXPIRY,
        )
        .expect("issue")
}

/// A node with a certificate record in `state` holding `cert` (`None`: no record at all).
fn node(id: &str, record: Option<(State, Vec<u8>)>) -> api::Node {
    api::Node {
        id: id.to_string(),
        certificate: record.map(|(state, certificate)| api::Certificate {
            status: Some(api::IssuanceStatus {
                state: state as i32,
                err: String::new(),
            }),
            certificate,
            csr: csr(),
            cn: id.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cluster(root: &ca::RootCa) -> api::Cluster {
    api::Cluster {
        id: CLUSTER_ID.to_string(),
        spec: Some(api::ClusterSpec {
            annotations: Some(api::Annotations {
                name: DEFAULT_CLUSTER_NAME.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        root_ca: Some(api::RootCa {
            ca_cert: root.cert_pem().to_vec(),
            ca_key: root.key_pem().expect("key").to_vec(),
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

/// A store holding `cluster` and `nodes`, with the subsystem running on it.
async fn start(cluster: api::Cluster, nodes: Vec<api::Node>) -> (MemoryStore, CancellationToken) {
    let store = MemoryStore::new(None);
    store
        .update(|tx| tx.create_cluster(cluster))
        .await
        .expect("seed cluster");
    let errors = store.batch(&nodes, |tx, n| tx.create_node(n.clone())).await;
    assert!(errors.is_empty(), "seed nodes: {errors:?}");
    let shutdown = CancellationToken::new();
    tokio::spawn(RootRotation::new(store.clone()).run(shutdown.clone()));
    (store, shutdown)
}

fn root_ca(store: &MemoryStore) -> api::RootCa {
    store
        .view(|tx| tx.get_cluster(CLUSTER_ID))
        .and_then(|c| c.root_ca)
        .expect("root ca")
}

fn state_of(store: &MemoryStore, id: &str) -> Option<State> {
    let node = store.view(|tx| tx.get_node(id))?;
    let state = node.certificate?.status?.state;
    State::try_from(state).ok()
}

/// Sets `force_rotate` through UpdateCluster, as `swarmctl cluster update --rotate-ca` does.
async fn force_rotate(store: &MemoryStore, n: u64) {
    let ctl = ControlApi::new(store.clone(), Arc::new(NoMembers));
    let cluster = store
        .view(|tx| tx.get_cluster(CLUSTER_ID))
        .expect("cluster");
    let mut spec = cluster.spec.clone().expect("spec");
    spec.ca_config
        .get_or_insert_with(Default::default)
        .force_rotate = n;
    ctl.update_cluster(Request::new(api::UpdateClusterRequest {
        cluster_id: cluster.id.clone(),
        cluster_version: cluster.meta.and_then(|m| m.version),
        spec: Some(spec),
        rotation: None,
    }))
    .await
    .expect("update cluster");
}

/// What the CA signer does: signs every PENDING, RENEW or ROTATE node with the cluster's current
/// signing CA and marks it ISSUED.
async fn sign_requests(store: &MemoryStore) {
    let signer = ca::SigningCa::for_cluster(&root_ca(store)).expect("signer");
    store
        .update(|tx| {
            for mut node in tx.find_nodes(By::All) {
                let Some(cert) = node.certificate.as_mut() else {
                    continue;
                };
                let status = cert.status.get_or_insert_with(Default::default);
                if ![State::Pending, State::Renew, State::Rotate]
                    .iter()
                    .any(|s| *s as i32 == status.state)
                {
                    continue;
                }
                status.state = State::Issued as i32;
                cert.certificate = issue(&signer, &node.id);
                tx.update_node(node)?;
            }
            Ok(())
        })
        .await
        .expect("sign");
}

/// Waits (virtual time, checked after every store commit) until `pred` holds; fails after a
/// virtual minute, naming `what`.
async fn wait_until(store: &MemoryStore, what: &str, pred: impl Fn(&MemoryStore) -> bool) {
    let minute = Duration::from_secs(60);
    testkit::wait_for(minute, store, what, |_| pred(store).then_some(())).await;
}

#[tokio::test(start_paused = true)]
async fn rotation_completes_once_every_node_holds_a_new_certificate() {
    let old = ca::RootCa::generate().expect("root");
    let old_signer =
        ca::SigningCa::for_cluster(&cluster(&old).root_ca.expect("root")).expect("signer");
    let before = cluster(&old);
    let old_tokens = before
        .root_ca
        .clone()
        .and_then(|r| r.join_tokens)
        .expect("tokens");
    let (store, shutdown) = start(
        before,
        vec![
            node("m1", Some((State::Issued, issue(&old_signer, "m1")))),
            node("w1", Some((State::Issued, issue(&old_signer, "w1")))),
            node("w2", Some((State::Pending, Vec::new()))),
            node("w3", None),
        ],
    )
    .await;

    info!("--- start a rotation");
    force_rotate(&store, 1).await;
    let rotation = root_ca(&store).root_rotation.expect("rotation started");
    wait_until(&store, "m1 and w1 asked to rotate", |s| {
        state_of(s, "m1") == Some(State::Rotate) && state_of(s, "w1") == Some(State::Rotate)
    })
    .await;
    assert_eq!(
        state_of(&store, "w2"),
        Some(State::Pending),
        "pending left alone"
    );
    assert_eq!(
        state_of(&store, "w3"),
        None,
        "no certificate record, nothing to ask"
    );
    tokio::time::sleep(PASS_INTERVAL * 5).await;
    assert!(
        root_ca(&store).root_rotation.is_some(),
        "nodes with old certificates hold the rotation up"
    );

    info!("--- the CA signer re-issues every certificate under the new root");
    sign_requests(&store).await;
    wait_until(&store, "the rotation to complete", |s| {
        root_ca(s).root_rotation.is_none()
    })
    .await;
    let root = root_ca(&store);
    let next = ca::RootCa::from_pem(&rotation.ca_cert, Some(&rotation.ca_key)).expect("new root");
    assert_eq!(root.ca_cert, rotation.ca_cert);
    assert_eq!(root.ca_key, rotation.ca_key);
    assert_eq!(root.ca_cert_hash, next.cert_hash());
    assert_ne!(root.ca_cert_hash, old.cert_hash());
    assert_eq!(root.last_forced_rotation, 1);
    let tokens = root.join_tokens.expect("tokens");
    for (new, old_token) in [
        (&tokens.worker, &old_tokens.worker),
        (&tokens.manager, &old_tokens.manager),
    ] {
        let parsed = ca::ParsedToken::parse(new).expect("token");
        assert!(parsed.matches_root(&next), "new digest");
        assert_ne!(
            parsed.secret,
            ca::ParsedToken::parse(old_token).expect("old").secret
        );
    }
    assert_ne!(tokens.worker, tokens.manager);
    // The signer now signs with the new root alone.
    let signer = ca::SigningCa::for_cluster(&root_ca(&store)).expect("signer");
    assert_eq!(signer.root().cert_pem(), next.cert_pem());
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn nodes_are_asked_to_rotate_in_batches() {
    let old = ca::RootCa::generate().expect("root");
    let signer = ca::SigningCa::for_cluster(&cluster(&old).root_ca.expect("root")).expect("signer");
    let cert = issue(&signer, "n");
    let nodes = (0..ROTATE_BATCH + 5)
        .map(|i| node(&format!("n{i:02}"), Some((State::Issued, cert.clone()))))
        .collect();
    let (store, shutdown) = start(cluster(&old), nodes).await;
    let rotating = |s: &MemoryStore| {
        s.view(|tx| tx.find_nodes(By::All))
            .iter()
            .filter(|n| {
                n.certificate
                    .as_ref()
                    .and_then(|c| c.status.as_ref())
                    .map(|s| s.state)
                    == Some(State::Rotate as i32)
            })
            .count()
    };
    force_rotate(&store, 1).await;
    wait_until(&store, "a first batch", |s| rotating(s) > 0).await;
    assert_eq!(rotating(&store), ROTATE_BATCH);
    wait_until(&store, "every node asked", |s| {
        rotating(s) == ROTATE_BATCH + 5
    })
    .await;
    shutdown.cancel();
}

/// Nodes whose objects together exceed one raft entry (large descriptions) are all asked in one
/// pass: written in one transaction, the request would be refused at every pass.
#[tokio::test(start_paused = true)]
async fn large_nodes_are_asked_to_rotate_in_transactions_that_fit() {
    let old = ca::RootCa::generate().expect("root");
    let signer = ca::SigningCa::for_cluster(&cluster(&old).root_ca.expect("root")).expect("signer");
    let cert = issue(&signer, "n");
    let ids: Vec<String> = (0..6).map(|i| format!("big{i}")).collect();
    let nodes = ids
        .iter()
        .map(|id| {
            let mut n = node(id, Some((State::Issued, cert.clone())));
            let mut description = api::NodeDescription::default();
            description.engine.get_or_insert_default().labels.insert(
                "payload".into(),
                "x".repeat(store::MAX_TRANSACTION_BYTES / 4),
            );
            n.description = Some(description);
            n
        })
        .collect();
    let (store, shutdown) = start(cluster(&old), nodes).await;
    force_rotate(&store, 1).await;
    wait_until(&store, "every large node asked to rotate", |s| {
        ids.iter().all(|id| state_of(s, id) == Some(State::Rotate))
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_replaced_rotation_completes_with_the_last_root() {
    let old = ca::RootCa::generate().expect("root");
    let old_signer =
        ca::SigningCa::for_cluster(&cluster(&old).root_ca.expect("root")).expect("signer");
    let (store, shutdown) = start(
        cluster(&old),
        vec![node("w1", Some((State::Issued, issue(&old_signer, "w1"))))],
    )
    .await;
    force_rotate(&store, 1).await;
    wait_until(&store, "w1 asked to rotate", |s| {
        state_of(s, "w1") == Some(State::Rotate)
    })
    .await;
    let first = ca::SigningCa::for_cluster(&root_ca(&store)).expect("first rotation");

    info!("--- a second rotation replaces the first before w1 renews");
    force_rotate(&store, 2).await;
    let second = root_ca(&store).root_rotation.expect("second rotation");
    assert_ne!(second.ca_cert, first.root().cert_pem());
    store
        .update(|tx| {
            let mut w1 = tx.get_node("w1").expect("w1");
            let cert = w1.certificate.as_mut().expect("record");
            cert.certificate = issue(&first, "w1");
            cert.status = Some(api::IssuanceStatus {
                state: State::Issued as i32,
                err: String::new(),
            });
            tx.update_node(w1)
        })
        .await
        .expect("stale issue");
    wait_until(&store, "w1 asked again", |s| {
        state_of(s, "w1") == Some(State::Rotate)
    })
    .await;
    assert!(root_ca(&store).root_rotation.is_some());

    sign_requests(&store).await;
    wait_until(&store, "the rotation to complete", |s| {
        root_ca(s).root_rotation.is_none()
    })
    .await;
    assert_eq!(root_ca(&store).ca_cert, second.ca_cert);
    shutdown.cancel();
}
