//! The CA and NodeCA services of the remote API (spec 5.10, SwarmKit ca/server.go): the root CA
//! certificate for joiners, certificate requests (a join token creates a Node object, a valid
//! node certificate renews for that node) and the status call that waits until the CA signer has
//! answered a request. Signing itself is the leader's [`crate::signer::CaSigner`]. The Node objects
//! of joins arriving together share raft entries through the store's group commit.

use std::sync::Arc;

use api::issuance_status::State as IssuanceState;
use ca::{MANAGER_ROLE, WORKER_ROLE};
use store::{By, Event, MemoryStore, StoreError, WatchFilter};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::authz::Authorizer;
use crate::bootstrap::DEFAULT_CLUSTER_NAME;

/// Times a freshly drawn node ID may collide before the request fails.
const ID_RETRIES: usize = 3;

/// Serves CA and NodeCA from the store.
#[derive(Clone)]
pub struct CaServer {
    store: MemoryStore,
    auth: Arc<Authorizer>,
}

fn code_only(code: tonic::Code) -> Status {
    // SwarmKit answers some refusals with the code's name as the whole message.
    Status::new(code, format!("{code:?}"))
}

fn is_final(state: i32) -> bool {
    [
        IssuanceState::Issued as i32,
        IssuanceState::Failed as i32,
        IssuanceState::Rotate as i32,
    ]
    .contains(&state)
}

fn cert_state(node: &api::Node) -> i32 {
    node.certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .map_or(0, |s| s.state)
}

fn store_error(e: StoreError) -> Status {
    crate::controlapi::store_status(e)
}

impl CaServer {
    /// Serves `store`'s cluster, checking renewing callers with `auth`.
    pub fn new(store: MemoryStore, auth: Arc<Authorizer>) -> CaServer {
        CaServer { store, auth }
    }

    fn cluster(&self) -> Option<api::Cluster> {
        self.store.view(|tx| {
            tx.find_clusters(By::Name(DEFAULT_CLUSTER_NAME))
                .into_iter()
                .next()
        })
    }

    /// A renewal: the node keeps its ID; its certificate entry becomes RENEW with the new CSR and
    /// the node's current role, for the signer to pick up.
    async fn renew(
        &self,
        node_id: String,
        csr: Vec<u8>,
    ) -> Result<api::IssueNodeCertificateResponse, Status> {
        let id = node_id.clone();
        let membership = self
            .store
            .update(move |tx| {
                let Some(mut node) = tx.get_node(&id) else {
                    return Err(StoreError::NotFound {
                        kind: store::Kind::Node,
                        id: id.clone(),
                    });
                };
                node.certificate = Some(api::Certificate {
                    role: node.role,
                    csr,
                    status: Some(api::IssuanceStatus {
                        state: IssuanceState::Renew as i32,
                        err: String::new(),
                    }),
                    certificate: Vec::new(),
                    cn: node.id.clone(),
                });
                let membership = node.spec.as_ref().map_or(0, |s| s.membership);
                tx.update_node(node)?;
                Ok(membership)
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => Status::not_found(format!(
                    "node {node_id} not found when attempting to renew certificate"
                )),
                e => store_error(e),
            })?;
        info!(node.id = %node_id, "certificate renewal requested");
        Ok(api::IssueNodeCertificateResponse {
            node_id,
            node_membership: membership,
        })
    }

    /// A first certificate: the token decides the role (never the request), and a Node object
    /// with a fresh ID records the request.
    async fn join(
        &self,
        token: &str,
        csr: Vec<u8>,
        availability: i32,
    ) -> Result<api::IssueNodeCertificateResponse, Status> {
        let cluster = self
            .cluster()
            .ok_or_else(|| Status::unavailable("the cluster is not ready yet"))?;
        let tokens = cluster
            .root_ca
            .as_ref()
            .and_then(|r| r.join_tokens.clone())
            .unwrap_or_default();
        // Both comparisons always run, so timing tells nothing about which token matched.
        let manager = !tokens.manager.is_empty() && ca::tokens_equal(&tokens.manager, token);
        let worker = !tokens.worker.is_empty() && ca::tokens_equal(&tokens.worker, token);
        let role = match (manager, worker) {
            (true, _) => api::NodeRole::Manager,
            (false, true) => api::NodeRole::Worker,
            (false, false) => {
                return Err(Status::invalid_argument(
                    "A valid join token is necessary to join this cluster",
                ));
            }
        };
        for attempt in 0..=ID_RETRIES {
            let node_id = api::naming::new_id();
            let node = api::Node {
                id: node_id.clone(),
                role: role as i32,
                spec: Some(api::NodeSpec {
                    desired_role: role as i32,
                    membership: api::node_spec::Membership::Accepted as i32,
                    availability,
                    ..Default::default()
                }),
                certificate: Some(api::Certificate {
                    role: role as i32,
                    csr: csr.clone(),
                    status: Some(api::IssuanceStatus {
                        state: IssuanceState::Pending as i32,
                        err: String::new(),
                    }),
                    certificate: Vec::new(),
                    cn: node_id.clone(),
                }),
                vxlanudp_port: cluster.vxlanudp_port,
                ..Default::default()
            };
            match self.store.update(move |tx| tx.create_node(node)).await {
                Ok(()) => {
                    info!(node.id = %node_id, node.role = ca::role_ou(role), "new node joined: certificate requested");
                    return Ok(api::IssueNodeCertificateResponse {
                        node_id,
                        node_membership: api::node_spec::Membership::Accepted as i32,
                    });
                }
                Err(StoreError::Exists { .. }) if attempt < ID_RETRIES => {
                    debug!("randomly drawn node ID collided with an existing one, drawing again");
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

#[tonic::async_trait]
impl api::ca_server::Ca for CaServer {
    async fn get_root_ca_certificate(
        &self,
        _: Request<api::GetRootCaCertificateRequest>,
    ) -> Result<Response<api::GetRootCaCertificateResponse>, Status> {
        let certificate = self
            .cluster()
            .and_then(|c| c.root_ca)
            .map(|r| r.ca_cert)
            .ok_or_else(|| Status::unavailable("the cluster is not ready yet"))?;
        Ok(Response::new(api::GetRootCaCertificateResponse {
            certificate,
        }))
    }

    async fn get_unlock_key(
        &self,
        _: Request<api::GetUnlockKeyRequest>,
    ) -> Result<Response<api::GetUnlockKeyResponse>, Status> {
        let cluster = self
            .cluster()
            .ok_or_else(|| Status::unavailable("the cluster is not ready yet"))?;
        let autolock = cluster
            .spec
            .as_ref()
            .and_then(|s| s.encryption_config.as_ref())
            .is_some_and(|e| e.auto_lock_managers);
        let unlock_key = cluster
            .unlock_keys
            .iter()
            .find(|k| autolock && k.subsystem == MANAGER_ROLE)
            .map(|k| k.key.clone())
            .unwrap_or_default();
        Ok(Response::new(api::GetUnlockKeyResponse {
            unlock_key,
            version: cluster.meta.and_then(|m| m.version),
        }))
    }
}

#[tonic::async_trait]
impl api::node_ca_server::NodeCa for CaServer {
    async fn issue_node_certificate(
        &self,
        req: Request<api::IssueNodeCertificateRequest>,
    ) -> Result<Response<api::IssueNodeCertificateResponse>, Status> {
        let peer = ca::peer_cert_info(&req);
        let req = req.into_inner();
        if req.csr.is_empty() {
            return Err(code_only(tonic::Code::InvalidArgument));
        }
        // A caller with a valid certificate of this cluster renews for its own node.
        if peer.is_some()
            && let Ok(node_id) = self
                .auth
                .authorize(peer.as_ref(), &[WORKER_ROLE, MANAGER_ROLE])
        {
            return self.renew(node_id, req.csr).await.map(Response::new);
        }
        self.join(&req.token, req.csr, req.availability)
            .await
            .map(Response::new)
    }

    async fn node_certificate_status(
        &self,
        req: Request<api::NodeCertificateStatusRequest>,
    ) -> Result<Response<api::NodeCertificateStatusResponse>, Status> {
        let node_id = req.into_inner().node_id;
        if node_id.is_empty() {
            return Err(code_only(tonic::Code::InvalidArgument));
        }
        let (node, mut watcher) = self
            .store
            .view_and_watch(WatchFilter::none().nodes(), |tx| tx.get_node(&node_id));
        let node = node.ok_or_else(|| code_only(tonic::Code::NotFound))?;
        let respond = |node: &api::Node| {
            let cert = node.certificate.clone().unwrap_or_default();
            Response::new(api::NodeCertificateStatusResponse {
                status: cert.status.clone(),
                certificate: Some(cert),
            })
        };
        if is_final(cert_state(&node)) {
            return Ok(respond(&node));
        }
        // Pending or renewing: wait for the signer (the client's deadline bounds this).
        loop {
            match watcher.recv().await {
                Some(ev @ Event::Object { .. }) => {
                    if let Some(n) = ev.object_as::<api::Node>()
                        && n.id == node_id
                        && is_final(cert_state(n))
                    {
                        return Ok(respond(n));
                    }
                }
                Some(_) => {}
                None => return Err(Status::unavailable("the store stopped")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use api::node_ca_server::NodeCa;

    use super::*;

    fn pending(id: &str) -> api::Node {
        api::Node {
            id: id.into(),
            certificate: Some(api::Certificate {
                csr: b"csr".to_vec(),
                status: Some(api::IssuanceStatus {
                    state: IssuanceState::Pending as i32,
                    err: String::new(),
                }),
                cn: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// On tokio's paused clock, time moves only when every task waits on a timer: an answer
    /// that came from a poll or a debounce would show as virtual time passed.
    #[tokio::test(start_paused = true)]
    async fn status_answers_when_the_certificate_is_committed() {
        let store = MemoryStore::new(None);
        for id in ["n1", "n2"] {
            let node = pending(id);
            store
                .update(|tx| tx.create_node(node))
                .await
                .expect("create");
        }
        let server = CaServer::new(store.clone(), Authorizer::new(store.clone(), "c".into()));
        let call = tokio::spawn(async move {
            server
                .node_certificate_status(Request::new(api::NodeCertificateStatusRequest {
                    node_id: "n1".into(),
                }))
                .await
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished(), "a pending request is not answered");
        let answer = |id: &'static str, state: IssuanceState| {
            store.update(move |tx| {
                let mut node = tx.get_node(id).expect("node");
                let cert = node.certificate.as_mut().expect("entry");
                cert.certificate = b"signed".to_vec();
                cert.status = Some(api::IssuanceStatus {
                    state: state as i32,
                    err: String::new(),
                });
                tx.update_node(node)
            })
        };
        // Another node's answer is not this one's.
        answer("n2", IssuanceState::Issued)
            .await
            .expect("answer n2");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished(), "answered with another node's entry");

        answer("n1", IssuanceState::Issued)
            .await
            .expect("answer n1");
        let committed = tokio::time::Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("answered")
            .expect("no panic")
            .expect("status")
            .into_inner();
        assert_eq!(
            committed.elapsed(),
            Duration::ZERO,
            "the answer waited for a timer after the commit"
        );
        assert_eq!(
            resp.status.map(|s| s.state),
            Some(IssuanceState::Issued as i32)
        );
        assert_eq!(
            resp.certificate.map(|c| c.certificate),
            Some(b"signed".to_vec())
        );
    }

    fn worker_token(store: &MemoryStore) -> String {
        store
            .view(|tx| tx.find_clusters(By::All))
            .pop()
            .and_then(|c| c.root_ca)
            .and_then(|r| r.join_tokens)
            .map(|t| t.worker)
            .expect("worker token")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_joins_are_created_together_each_with_its_own_node() {
        let f = crate::signer::tests::fixture().await;
        let proposer = crate::signer::tests::SlowProposer::install(&f.store);
        let server = CaServer::new(
            f.store.clone(),
            Authorizer::new(f.store.clone(), "c".into()),
        );
        let token = worker_token(&f.store);
        let joins: Vec<_> = (0..24)
            .map(|i| {
                let (server, token) = (server.clone(), token.clone());
                tokio::spawn(async move {
                    let req = api::IssueNodeCertificateRequest {
                        csr: format!("csr {i}").into_bytes(),
                        token,
                        ..Default::default()
                    };
                    server.issue_node_certificate(Request::new(req)).await
                })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for (i, join) in joins.into_iter().enumerate() {
            let resp = join.await.expect("no panic").expect("joined").into_inner();
            let node = f.store.view(|tx| tx.get_node(&resp.node_id)).expect("node");
            assert_eq!(cert_state(&node), IssuanceState::Pending as i32);
            let cert = node.certificate.expect("entry");
            assert_eq!(cert.csr, format!("csr {i}").into_bytes(), "its own node");
            ids.insert(resp.node_id);
        }
        assert_eq!(ids.len(), 24);
        let creates = proposer.creates();
        assert_eq!(creates.iter().sum::<usize>(), 24);
        assert!(
            creates.len() < 24,
            "24 joins created in {} raft entries ({creates:?}): none was batched",
            creates.len()
        );
    }
}
