//! The remote API over real mutual TLS on loopback, in process: joining with tokens, renewal,
//! role changes, and authorization of every kind of caller (spec 2.4, 4.1, 5.10).

use std::sync::Arc;
use std::time::Duration;

use api::control_client::ControlClient;
use api::control_server::Control;
use api::node_ca_client::NodeCaClient;
use ca::{CertInfo, Credential, KeyStore, NodeKey, NodeTlsMaterial, RootCa, SecurityConfig};
use dispatcher::Dispatcher;
use store::{By, MemoryStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::authz::Authorizer;
use crate::bootstrap::{BootstrapInfo, bootstrap, default_raft_config};
use crate::caserver::CaServer;
use crate::controlapi::{ControlApi, RaftMembers};
use crate::health::HealthService;
use crate::rolemanager::RoleManager;
use crate::server::{RemoteServices, serve_remote};
use crate::signer::CaSigner;

/// The one raft member is the manager itself.
pub(crate) struct OnlyMe(pub(crate) String);

impl RaftMembers for OnlyMe {
    fn manager_status(&self, _: &str) -> Option<api::ManagerStatus> {
        None
    }
    fn is_member(&self, node_id: &str) -> bool {
        node_id == self.0
    }
}

pub(crate) struct Cluster {
    pub(crate) store: MemoryStore,
    pub(crate) root: RootCa,
    pub(crate) cluster_id: String,
    pub(crate) addr: String,
    pub(crate) manager: NodeTlsMaterial,
    pub(crate) manager_id: String,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) netplane: crate::netplane::NetworkPlane,
    /// Ends the network plane's term.
    pub(crate) netplane_term: CancellationToken,
    pub(crate) shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn material(root: &RootCa, id: &str, role: api::NodeRole, org: &str) -> NodeTlsMaterial {
    let key = NodeKey::generate().expect("key");
    let cert = root
        .issue(
            key.csr_pem().expect("csr").as_bytes(),
            id,
            role,
            org,
            ca::MIN_NODE_CERT_EXPIRY,
        )
        .expect("cert");
    NodeTlsMaterial {
        root_pem: root.cert_pem().to_vec(),
        cert_pem: cert,
        key_pem: key.key_pem().into_bytes(),
    }
}

/// What a new cluster of `root` is bootstrapped with, the manager `node_id` holding `node_cert`.
pub(crate) fn bootstrap_info(
    root: &RootCa,
    node_id: &str,
    cluster_id: &str,
    node_cert: Vec<u8>,
) -> BootstrapInfo {
    BootstrapInfo {
        node_id: node_id.into(),
        cluster_id: cluster_id.into(),
        root_ca_cert: root.cert_pem().to_vec(),
        root_ca_key: root.key_pem().map(<[u8]>::to_vec),
        join_tokens: (ca::generate_join_token(root), ca::generate_join_token(root)),
        ca_cert_hash: root.cert_hash(),
        raft: default_raft_config(10, 1),
        hostname: "m1".into(),
        status_addr: "127.0.0.1".into(),
        node_cert,
        default_address_pool: Vec::new(),
        subnet_size: 0,
        unlock_key: None,
    }
}

pub(crate) async fn start() -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = RootCa::generate().expect("root");
    let (node_id, cluster_id) = (api::naming::new_id(), api::naming::new_id());
    let manager = material(&root, &node_id, api::NodeRole::Manager, &cluster_id);
    let store = MemoryStore::new(None);
    let info = bootstrap_info(&root, &node_id, &cluster_id, manager.cert_pem.clone());
    bootstrap(&store, &info).await.expect("bootstrap");
    let dir = tempfile::tempdir().expect("tempdir");
    let security =
        SecurityConfig::new(KeyStore::new(dir.path()), manager.clone()).expect("security");
    let members: Arc<dyn RaftMembers> = Arc::new(OnlyMe(node_id.clone()));
    let auth = Authorizer::new(store.clone(), cluster_id.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        node_id.clone(),
        dispatcher::Config::default(),
    );
    dispatcher.set_managers(vec![dispatcher::weighted_peer(&node_id, &addr)]);
    tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    let netplane =
        crate::netplane::NetworkPlane::with_debounce(store.clone(), Duration::from_millis(10));
    let netplane_term = shutdown.child_token();
    tokio::spawn(netplane.clone().run(netplane_term.clone()));
    tokio::spawn(serve_remote(
        listener,
        security.remote_tls(),
        RemoteServices {
            control: ControlApi::new(store.clone(), members.clone()),
            ca: CaServer::new(store.clone(), auth.clone()),
            health: HealthService::new("Raft"),
            dispatcher: dispatcher::DispatcherService::remote(dispatcher.clone()),
            watch: crate::watchapi::WatchService::new(store.clone(), None, shutdown.clone()),
            netplane: crate::netplane::NetworkPlaneService::remote(netplane.clone()),
            logs: crate::logbroker::LogBrokerService::remote(crate::logbroker::LogBroker::new(
                store.clone(),
            )),
            raft: None,
            join: None,
            auth,
            proxy: None,
        },
        shutdown.clone(),
    ));
    tokio::spawn(CaSigner::new(store.clone(), cluster_id.clone(), None).run(shutdown.clone()));
    tokio::spawn(RoleManager::new(store.clone(), members).run(shutdown.clone()));
    Cluster {
        store,
        root,
        cluster_id,
        addr,
        manager,
        manager_id: node_id,
        dispatcher,
        netplane,
        netplane_term,
        shutdown,
        _dir: dir,
    }
}

impl Cluster {
    pub(crate) fn tokens(&self) -> api::JoinTokens {
        self.cluster()
            .root_ca
            .and_then(|r| r.join_tokens)
            .expect("tokens")
    }

    fn cluster(&self) -> api::Cluster {
        self.store
            .view(|tx| tx.find_clusters(By::All))
            .pop()
            .expect("cluster")
    }

    fn node_count(&self) -> usize {
        self.store.view(|tx| tx.find_nodes(By::All)).len()
    }

    pub(crate) async fn join(&self, token: &str) -> Result<ca::IssuedCertificate, ca::CaError> {
        ca::request_certificate(
            &self.addr,
            self.root.cert_pem(),
            Credential::Token(token),
            api::node_spec::Availability::Active,
        )
        .await
    }

    pub(crate) fn channel(&self, client: Option<(&[u8], &[u8])>) -> tonic::transport::Channel {
        let cfg = ca::mtls_client_config(self.root.cert_pem(), client).expect("client cfg");
        ca::tls_channel(&self.addr, cfg, "swarm-manager").expect("channel")
    }

    async fn list_nodes(&self, client: Option<(&[u8], &[u8])>) -> Result<usize, tonic::Status> {
        ControlClient::new(self.channel(client))
            .list_nodes(api::ListNodesRequest::default())
            .await
            .map(|r| r.into_inner().nodes.len())
    }
}

fn rpc_status(e: ca::CaError) -> tonic::Status {
    match e {
        ca::CaError::Rpc(s) => s,
        other => panic!("expected an RPC error, got {other}"),
    }
}

#[tokio::test]
async fn tokens_decide_the_role_and_the_ca_the_subject() {
    let c = start().await;
    let tokens = c.tokens();
    assert_eq!(c.node_count(), 1);

    let worker = c.join(&tokens.worker).await.expect("worker joins");
    let info = CertInfo::parse(&worker.cert_pem).expect("cert");
    assert_eq!(info.node_id, worker.node_id);
    assert_eq!(info.ou, "swarm-worker");
    assert_eq!(info.cluster_id, c.cluster_id);
    assert_eq!(
        info.dns_names,
        vec!["swarm-worker".to_string(), worker.node_id.clone()]
    );
    let node = c
        .store
        .view(|tx| tx.get_node(&worker.node_id))
        .expect("node object");
    let spec = node.spec.clone().expect("spec");
    assert_eq!(spec.membership, api::node_spec::Membership::Accepted as i32);
    assert_eq!(spec.desired_role, api::NodeRole::Worker as i32);
    assert_eq!(node.role, api::NodeRole::Worker as i32);
    let cert = node.certificate.expect("certificate");
    assert_eq!(
        cert.status.map(|s| s.state),
        Some(api::issuance_status::State::Issued as i32)
    );
    assert_eq!(cert.cn, worker.node_id);

    let manager = c.join(&tokens.manager).await.expect("manager joins");
    let info = CertInfo::parse(&manager.cert_pem).expect("cert");
    assert_eq!(info.ou, "swarm-manager");
    assert!(info.dns_names.contains(&"swarm-ca".to_string()));

    // Asking for the manager role with the worker token still gives a worker certificate.
    let key = NodeKey::generate().expect("key");
    let cfg = ca::mtls_client_config(c.root.cert_pem(), None).expect("cfg");
    let mut client = NodeCaClient::new(ca::tls_channel(&c.addr, cfg, "swarm-ca").expect("ch"));
    #[allow(deprecated)]
    let resp = client
        .issue_node_certificate(api::IssueNodeCertificateRequest {
            role: api::NodeRole::Manager as i32,
            csr: key.csr_pem().expect("csr").into_bytes(),
            token: tokens.worker.clone(),
            availability: 0,
        })
        .await
        .expect("issue")
        .into_inner();
    let status = client
        .node_certificate_status(api::NodeCertificateStatusRequest {
            node_id: resp.node_id.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    let pem = status.certificate.expect("cert").certificate;
    assert_eq!(CertInfo::parse(&pem).expect("cert").ou, "swarm-worker");
    assert_eq!(c.node_count(), 4);
}

#[tokio::test]
async fn wrong_and_rotated_tokens_are_refused_and_leave_no_node() {
    let c = start().await;
    let tokens = c.tokens();
    let forged = format!(
        "{}0000000000000000000000000",
        &tokens.worker[..tokens.worker.len() - 25]
    );
    let err = rpc_status(c.join(&forged).await.expect_err("forged token"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "A valid join token is necessary to join this cluster"
    );
    assert_eq!(c.node_count(), 1);

    // Rotate the worker token: the old one fails at once, the manager token still works.
    let control = ControlApi::new(c.store.clone(), Arc::new(OnlyMe(String::new())));
    let cluster = c.cluster();
    control
        .update_cluster(tonic::Request::new(api::UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            cluster_version: cluster.meta.and_then(|m| m.version),
            spec: cluster.spec.clone(),
            rotation: Some(api::KeyRotation {
                worker_join_token: true,
                ..Default::default()
            }),
        }))
        .await
        .expect("rotate");
    let rotated = c.tokens();
    assert_ne!(rotated.worker, tokens.worker);
    assert_eq!(rotated.manager, tokens.manager);
    let err = rpc_status(c.join(&tokens.worker).await.expect_err("rotated token"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(c.node_count(), 1);
    c.join(&rotated.worker).await.expect("new token joins");

    // No CSR at all.
    let cfg = ca::mtls_client_config(c.root.cert_pem(), None).expect("cfg");
    let mut client = NodeCaClient::new(ca::tls_channel(&c.addr, cfg, "swarm-ca").expect("ch"));
    let err = client
        .issue_node_certificate(api::IssueNodeCertificateRequest {
            token: rotated.worker.clone(),
            ..Default::default()
        })
        .await
        .expect_err("no csr");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "InvalidArgument")
    );
    for (id, code) in [("", Code::InvalidArgument), ("nosuchnode", Code::NotFound)] {
        let err = client
            .node_certificate_status(api::NodeCertificateStatusRequest { node_id: id.into() })
            .await
            .expect_err(id);
        assert_eq!(err.code(), code, "{id:?}");
    }
    assert_eq!(c.node_count(), 2);
}

#[tokio::test]
async fn renewal_keeps_the_node_id_and_follows_role_changes() {
    let c = start().await;
    let worker = c.join(&c.tokens().worker).await.expect("join");
    let key_pem = worker.key.key_pem();
    let renewed = ca::request_certificate(
        &c.addr,
        c.root.cert_pem(),
        Credential::Certificate {
            cert_pem: &worker.cert_pem,
            key_pem: key_pem.as_bytes(),
        },
        api::node_spec::Availability::Active,
    )
    .await
    .expect("renew");
    assert_eq!(renewed.node_id, worker.node_id);
    assert_ne!(renewed.cert_pem, worker.cert_pem);
    assert_ne!(renewed.key.key_pem(), key_pem, "a renewal uses a new key");
    assert_eq!(c.node_count(), 2);

    // Promote: the role manager moves the role, and the next certificate is a manager's.
    let id = worker.node_id.clone();
    c.store
        .update(move |tx| {
            let mut node = tx.get_node(&id).expect("node");
            node.spec.as_mut().expect("spec").desired_role = api::NodeRole::Manager as i32;
            tx.update_node(node)
        })
        .await
        .expect("promote");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c
        .store
        .view(|tx| tx.get_node(&worker.node_id))
        .expect("node")
        .role
        != api::NodeRole::Manager as i32
    {
        assert!(tokio::time::Instant::now() < deadline, "role never changed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key_pem = renewed.key.key_pem();
    let promoted = ca::request_certificate(
        &c.addr,
        c.root.cert_pem(),
        Credential::Certificate {
            cert_pem: &renewed.cert_pem,
            key_pem: key_pem.as_bytes(),
        },
        api::node_spec::Availability::Active,
    )
    .await
    .expect("renew as manager");
    let info = CertInfo::parse(&promoted.cert_pem).expect("cert");
    assert_eq!(
        (info.node_id.as_str(), info.ou.as_str()),
        (worker.node_id.as_str(), "swarm-manager")
    );
}

#[tokio::test]
async fn every_caller_is_authorized_by_role_cluster_and_membership() {
    let c = start().await;
    let worker = c.join(&c.tokens().worker).await.expect("join");
    let wkey = worker.key.key_pem();
    let wauth = Some((worker.cert_pem.as_slice(), wkey.as_bytes()));

    // A manager certificate reaches Control; a worker's and none do not.
    let m = &c.manager;
    assert_eq!(
        c.list_nodes(Some((&m.cert_pem, &m.key_pem)))
            .await
            .expect("manager"),
        2
    );
    let err = c.list_nodes(wauth).await.expect_err("worker");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: [swarm-manager]"
    );
    let err = c.list_nodes(None).await.expect_err("anonymous");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().ends_with("no client certificates in request"),
        "{}",
        err.message()
    );

    // A manager certificate of the same CA but another cluster (O).
    let stranger = material(&c.root, "x1", api::NodeRole::Manager, "othercluster");
    let err = c
        .list_nodes(Some((&stranger.cert_pem, &stranger.key_pem)))
        .await
        .expect_err("other org");
    assert!(
        err.message().ends_with(&format!(
            "Permission denied: remote certificate not part of organization: {}",
            c.cluster_id
        )),
        "{}",
        err.message()
    );

    // A certificate from another CA fails the handshake itself.
    let other_root = RootCa::generate().expect("other root");
    let foreign = material(&other_root, "f1", api::NodeRole::Manager, &c.cluster_id);
    let err = c
        .list_nodes(Some((&foreign.cert_pem, &foreign.key_pem)))
        .await
        .expect_err("foreign CA");
    // Refused by the TLS handshake (the server's alert), before any RPC is looked at.
    assert_ne!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(format!("{err:?}").contains("alert"), "{err:?}");

    // A removed node's certificate stops working: it cannot renew and falls back to needing
    // a token.
    let control = ControlApi::new(c.store.clone(), Arc::new(OnlyMe(String::new())));
    control
        .remove_node(tonic::Request::new(api::RemoveNodeRequest {
            node_id: worker.node_id.clone(),
            force: true,
        }))
        .await
        .expect("remove");
    let err = rpc_status(
        ca::request_certificate(
            &c.addr,
            c.root.cert_pem(),
            Credential::Certificate {
                cert_pem: &worker.cert_pem,
                key_pem: wkey.as_bytes(),
            },
            api::node_spec::Availability::Active,
        )
        .await
        .expect_err("removed node renews"),
    );
    assert_eq!(
        err.message(),
        "A valid join token is necessary to join this cluster"
    );
    let removed = material(
        &c.root,
        &worker.node_id,
        api::NodeRole::Manager,
        &c.cluster_id,
    );
    let err = c
        .list_nodes(Some((&removed.cert_pem, &removed.key_pem)))
        .await
        .expect_err("removed manager");
    assert!(
        err.message().ends_with(&format!(
            "Permission denied: node {} was removed from swarm",
            worker.node_id
        )),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn the_raft_transport_admits_manager_certificates_only() {
    use api::raftrpc::RaftPayload;
    use api::raftrpc::raft_transport_client::RaftTransportClient;
    let c = start().await;
    let worker = c.join(&c.tokens().worker).await.expect("join");
    let wkey = worker.key.key_pem();
    let vote = |client: Option<(&[u8], &[u8])>| {
        let ch = c.channel(client);
        async move {
            RaftTransportClient::new(ch)
                .vote(RaftPayload {
                    data: b"{}".to_vec(),
                })
                .await
        }
    };
    for who in [Some((worker.cert_pem.as_slice(), wkey.as_bytes())), None] {
        let err = vote(who).await.expect_err("not a manager");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // A manager gets past the authorization (this test server mounts no raft member).
    let m = &c.manager;
    let err = vote(Some((&m.cert_pem, &m.key_pem)))
        .await
        .expect_err("no member");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn node_certificates_watch_their_network_view_and_others_are_refused() {
    use api::netplane::network_plane_client::NetworkPlaneClient;
    let c = start().await;
    let worker = c.join(&c.tokens().worker).await.expect("join");
    let wkey = worker.key.key_pem();
    // The worker's node gets an attachment on an overlay network, as the allocator gives one.
    let network = api::Network {
        id: "netw".into(),
        spec: Some(api::NetworkSpec {
            annotations: Some(api::Annotations {
                name: "front".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        driver_state: Some(api::Driver {
            name: "overlay".into(),
            options: [(
                "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                "4100".to_string(),
            )]
            .into(),
        }),
        ..Default::default()
    };
    let node_id = worker.node_id.clone();
    c.store
        .update(move |tx| {
            tx.create(network.clone())?;
            let mut node = tx.get_node(&node_id).expect("worker node");
            node.attachments = vec![api::NetworkAttachment {
                network: Some(network),
                addresses: vec!["10.0.9.2/24".into()],
                ..Default::default()
            }];
            tx.update(node)
        })
        .await
        .expect("attachment");
    let watch = |client: Option<(&[u8], &[u8])>| {
        let ch = c.channel(client);
        async move {
            let mut stream = NetworkPlaneClient::new(ch)
                .watch(api::netplane::WatchRequest::default())
                .await?
                .into_inner();
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("no view"))?
        }
    };
    let view = watch(Some((&worker.cert_pem, wkey.as_bytes())))
        .await
        .expect("worker watches")
        .expect("a view");
    assert_eq!(view.networks.len(), 1, "{view:?}");
    assert_eq!(view.networks[0].vni, 4100);
    assert_eq!(view.networks[0].node_addr, "10.0.9.2/24");
    let m = &c.manager;
    watch(Some((&m.cert_pem, &m.key_pem)))
        .await
        .expect("a manager watches too");
    let err = watch(None).await.expect_err("anonymous");
    assert_eq!(err.code(), Code::PermissionDenied);
}
