//! The signer over a raft-less store (or one whose proposer takes a while, as an fsync does):
//! parallel signing, batched recording, failures kept to their own node.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::issuance_status::State as IssuanceState;
use ca::{CertInfo, NodeKey, RootCa};
use store::{By, MemoryStore, ProposeError, Proposer};
use tokio_util::sync::CancellationToken;

use super::CaSigner;
use crate::bootstrap::bootstrap;
use crate::security_tests::bootstrap_info;

const WAIT: Duration = Duration::from_secs(60);

/// Commits after a pause, as raft does after its fsync, and counts the entries that answered a
/// certificate request.
pub(crate) struct SlowProposer {
    store: Mutex<Option<MemoryStore>>,
    index: Mutex<u64>,
    /// Per raft entry that carried any, its node creates and its answered requests.
    entries: Mutex<Vec<(usize, usize)>>,
}

impl SlowProposer {
    /// A proposer for `store`, which it sets as the store's proposer.
    pub(crate) fn install(store: &MemoryStore) -> Arc<SlowProposer> {
        let p = Arc::new(SlowProposer {
            store: Mutex::new(Some(store.clone())),
            index: Mutex::new(0),
            entries: Mutex::new(Vec::new()),
        });
        store.set_proposer(p.clone());
        p
    }

    /// Node creates per raft entry that had any.
    pub(crate) fn creates(&self) -> Vec<usize> {
        let entries = self.entries.lock().expect("lock");
        entries.iter().map(|e| e.0).filter(|&n| n > 0).collect()
    }

    /// Answered requests per raft entry that had any.
    fn answers(&self) -> Vec<usize> {
        let entries = self.entries.lock().expect("lock");
        entries.iter().map(|e| e.1).filter(|&n| n > 0).collect()
    }
}

impl Proposer for SlowProposer {
    fn propose(
        &self,
        actions: Vec<api::StoreAction>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + '_>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let node = |a: &&api::StoreAction| match &a.target {
                Some(api::store_action::Target::Node(n)) => Some((a.action, n.certificate.clone())),
                _ => None,
            };
            let created = actions
                .iter()
                .filter(|a| {
                    node(a).is_some_and(|n| n.0 == api::StoreActionKind::StoreActionCreate as i32)
                })
                .count();
            let answered = actions
                .iter()
                .filter(|a| node(a).is_some_and(|n| n.1.is_some_and(|c| !c.certificate.is_empty())))
                .count();
            self.entries.lock().expect("lock").push((created, answered));
            let index = {
                let mut index = self.index.lock().expect("lock");
                *index += 1;
                *index
            };
            let store = self.store.lock().expect("lock").clone().expect("store set");
            store
                .apply_committed(index, actions)
                .map_err(|e| ProposeError::Other(e.to_string()))?;
            Ok(index)
        })
    }
}

/// A bootstrapped cluster in a raft-less store.
pub(crate) struct Fixture {
    pub(crate) store: MemoryStore,
    pub(crate) root: RootCa,
    cluster_id: String,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn fixture() -> Fixture {
    let root = RootCa::generate().expect("root");
    let (node_id, cluster_id) = (api::naming::new_id(), api::naming::new_id());
    let store = MemoryStore::new(None);
    let info = bootstrap_info(&root, &node_id, &cluster_id, Vec::new());
    bootstrap(&store, &info).await.expect("bootstrap");
    Fixture {
        store,
        root,
        cluster_id,
        shutdown: CancellationToken::new(),
    }
}

/// A joining node as IssueNodeCertificate records it: PENDING with its CSR.
fn joining(id: &str, csr: Vec<u8>) -> api::Node {
    api::Node {
        id: id.into(),
        role: api::NodeRole::Worker as i32,
        spec: Some(api::NodeSpec {
            membership: api::node_spec::Membership::Accepted as i32,
            ..Default::default()
        }),
        certificate: Some(api::Certificate {
            role: api::NodeRole::Worker as i32,
            csr,
            status: Some(api::IssuanceStatus {
                state: IssuanceState::Pending as i32,
                err: String::new(),
            }),
            certificate: Vec::new(),
            cn: id.into(),
        }),
        ..Default::default()
    }
}

impl Fixture {
    fn start_signer(&self) {
        let signer = CaSigner::new(self.store.clone(), self.cluster_id.clone(), None);
        tokio::spawn(signer.run(self.shutdown.clone()));
    }

    /// Waits until none of `ids` is pending; returns their certificate entries.
    async fn answers(&self, ids: &[String]) -> Vec<api::Certificate> {
        testkit::wait::wait_for(WAIT, &self.store, "every request answered", |tx| {
            let certs: Vec<_> = ids
                .iter()
                .filter_map(|id| tx.get_node(id)?.certificate)
                .collect();
            let open = certs
                .iter()
                .filter(|c| super::pending_request_state(c).is_some())
                .count();
            (open == 0 && certs.len() == ids.len())
                .then_some(certs)
                .ok_or(format!("{open} of {} still pending", ids.len()))
        })
        .await
    }
}

fn state(cert: &api::Certificate) -> i32 {
    cert.status.as_ref().map_or(0, |s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_distinct_valid_certificates_in_few_entries() {
    let f = fixture().await;
    let proposer = SlowProposer::install(&f.store);
    let keys: Vec<NodeKey> = (0..48).map(|_| NodeKey::generate().expect("key")).collect();
    let nodes: Vec<api::Node> = keys
        .iter()
        .map(|k| {
            let csr = k.csr_pem().expect("csr").into_bytes();
            joining(&api::naming::new_id(), csr)
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    // Half are pending before the signer starts, half arrive while it works.
    let (before, after) = nodes.split_at(nodes.len() / 2);
    assert!(
        f.store
            .batch(before, |tx, n| tx.create_node(n.clone()))
            .await
            .is_empty()
    );
    f.start_signer();
    for n in after {
        let n = n.clone();
        f.store
            .update(move |tx| tx.create_node(n))
            .await
            .expect("create");
    }

    let certs = f.answers(&ids).await;
    let mut serials = HashSet::new();
    for ((cert, id), key) in certs.iter().zip(&ids).zip(&keys) {
        assert_eq!(state(cert), IssuanceState::Issued as i32, "node {id}");
        assert!(
            f.root.has_issued(&cert.certificate),
            "node {id}: not the root's"
        );
        let info = CertInfo::parse(&cert.certificate).expect("certificate");
        assert_eq!(info.node_id, *id);
        assert_eq!(info.cluster_id, f.cluster_id);
        assert_eq!(info.role, api::NodeRole::Worker);
        assert_eq!(
            info.public_key_raw,
            key.public_key_raw(),
            "node {id}: another key"
        );
        serials.insert(cert.certificate.clone());
    }
    assert_eq!(serials.len(), ids.len(), "every certificate is its own");
    let answers = proposer.answers();
    assert_eq!(
        answers.iter().sum::<usize>(),
        ids.len(),
        "each answered once"
    );
    assert!(
        answers.len() < ids.len(),
        "{} requests answered in {} raft entries ({answers:?}): none was batched",
        ids.len(),
        answers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_failure_fails_only_its_own_node() {
    let f = fixture().await;
    let good: Vec<api::Node> = (0..6)
        .map(|_| {
            let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
            joining(&api::naming::new_id(), csr.into_bytes())
        })
        .collect();
    let bad = joining(
        "badcsr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".to_vec(),
    );
    let mut all = good.clone();
    all.insert(3, bad);
    f.start_signer();
    for n in all {
        f.store
            .update(move |tx| tx.create_node(n))
            .await
            .expect("create");
    }
    let mut ids: Vec<String> = good.iter().map(|n| n.id.clone()).collect();
    ids.push("badcsr".into());
    let certs = f.answers(&ids).await;
    let (failed, issued) = certs.split_last().expect("answers");
    assert_eq!(state(failed), IssuanceState::Failed as i32);
    assert!(failed.certificate.is_empty());
    let err = failed
        .status
        .as_ref()
        .map(|s| s.err.clone())
        .unwrap_or_default();
    assert!(!err.is_empty(), "a failure says why");
    for cert in issued {
        assert_eq!(state(cert), IssuanceState::Issued as i32);
        assert!(f.root.has_issued(&cert.certificate));
    }
    assert_eq!(
        f.store.view(|tx| tx.find_nodes(By::All)).len(),
        ids.len() + 1,
        "no node is removed or added"
    );
}
