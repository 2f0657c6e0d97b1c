//! Authorization of remote RPCs by certificate role (spec 4.1-4.2), from one table shaped like
//! SwarmKit's `tls_authorization` proto options: each served method either lets anyone in (a
//! joining node has no certificate yet) or names the roles (certificate OUs) that may call it. A
//! caller with a role must also present a certificate of this cluster (O) whose node (CN) was not
//! removed. The check runs as a tower layer in front of every service on the remote port, so no
//! handler can forget it; a method missing from the table is refused. For a call another manager
//! forwarded to this leader ([`crate::proxy`]) the caller checked is the original one named in
//! the forwarding headers, which only a manager certificate of this cluster may send.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ca::{CertInfo, MANAGER_ROLE, WORKER_ROLE};
use store::{By, MemoryStore};
use tonic::Status;
use tonic::codegen::http;

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a certificate (SwarmKit's `insecure: true`).
    Insecure,
    /// Callers whose certificate OU is one of these roles.
    Roles(&'static [&'static str]),
}

const MANAGERS: Access = Access::Roles(&[MANAGER_ROLE]);
const NODES: Access = Access::Roles(&[WORKER_ROLE, MANAGER_ROLE]);

/// Every method served on the remote API, by gRPC path, with who may call it. Services added
/// later add their rows here.
pub const TABLE: &[(&str, Access)] = &[
    (
        "/docker.swarmkit.v1.CA/GetRootCACertificate",
        Access::Insecure,
    ),
    ("/docker.swarmkit.v1.CA/GetUnlockKey", MANAGERS),
    (
        "/docker.swarmkit.v1.NodeCA/IssueNodeCertificate",
        Access::Insecure,
    ),
    (
        "/docker.swarmkit.v1.NodeCA/NodeCertificateStatus",
        Access::Insecure,
    ),
    ("/docker.swarmkit.v1.Health/Check", MANAGERS),
    ("/docker.swarmkit.v1.Dispatcher/Session", NODES),
    ("/docker.swarmkit.v1.Dispatcher/Heartbeat", NODES),
    ("/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus", NODES),
    ("/docker.swarmkit.v1.Dispatcher/UpdateVolumeStatus", NODES),
    ("/docker.swarmkit.v1.Dispatcher/Tasks", NODES),
    ("/docker.swarmkit.v1.Dispatcher/Assignments", NODES),
    ("/swarmkit.netplane.v1.NetworkPlane/Watch", NODES),
    ("/docker.swarmkit.v1.Logs/SubscribeLogs", MANAGERS),
    ("/docker.swarmkit.v1.LogBroker/ListenSubscriptions", NODES),
    ("/docker.swarmkit.v1.LogBroker/PublishLogs", NODES),
    ("/docker.swarmkit.v1.Control/GetNode", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListNodes", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateNode", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveNode", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetTask", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListTasks", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveTask", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetService", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListServices", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateService", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateService", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveService", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListServiceStatuses", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetNetwork", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListNetworks", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateNetwork", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveNetwork", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetCluster", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListClusters", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateCluster", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetSecret", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateSecret", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListSecrets", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateSecret", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveSecret", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetConfig", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateConfig", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListConfigs", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateConfig", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveConfig", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetExtension", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateExtension", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveExtension", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetResource", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateResource", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListResources", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateResource", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveResource", MANAGERS),
    ("/docker.swarmkit.v1.Control/CreateVolume", MANAGERS),
    ("/docker.swarmkit.v1.Control/GetVolume", MANAGERS),
    ("/docker.swarmkit.v1.Control/UpdateVolume", MANAGERS),
    ("/docker.swarmkit.v1.Control/ListVolumes", MANAGERS),
    ("/docker.swarmkit.v1.Control/RemoveVolume", MANAGERS),
    ("/docker.swarmkit.v1.Watch/Watch", MANAGERS),
    ("/swarmkit.raftrpc.v1.RaftTransport/AppendEntries", MANAGERS),
    ("/swarmkit.raftrpc.v1.RaftTransport/Vote", MANAGERS),
    (
        "/swarmkit.raftrpc.v1.RaftTransport/InstallSnapshot",
        MANAGERS,
    ),
    ("/swarmkit.raftrpc.v1.RaftJoin/Join", MANAGERS),
];

/// The services the remote API serves, by full name (`package.Service`): the unit test checks
/// that each of their methods has a row.
pub const SERVED_SERVICES: &[&str] = &[
    "docker.swarmkit.v1.CA",
    "docker.swarmkit.v1.NodeCA",
    "docker.swarmkit.v1.Health",
    "docker.swarmkit.v1.Control",
    "docker.swarmkit.v1.Dispatcher",
    "docker.swarmkit.v1.Watch",
    "swarmkit.netplane.v1.NetworkPlane",
    "docker.swarmkit.v1.Logs",
    "docker.swarmkit.v1.LogBroker",
    "swarmkit.raftrpc.v1.RaftTransport",
    "swarmkit.raftrpc.v1.RaftJoin",
];

/// Who may call `path`; `None` for a method that is not in the table.
pub fn access(path: &str) -> Option<Access> {
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// Go's `%v` of a string slice: `[a b]`.
fn go_list(items: &[&str]) -> String {
    format!("[{}]", items.join(" "))
}

/// grpc-go's text of a status, as SwarmKit nests one error in another.
fn nested(status: &Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// Checks a caller's certificate against `roles`, this cluster's ID and the removed nodes, and
/// returns its node ID (SwarmKit's AuthorizeForwardedRoleAndOrg for a direct call).
pub fn authorize(
    peer: Option<&CertInfo>,
    roles: &[&str],
    cluster_id: &str,
    removed: &BTreeMap<String, api::BlacklistedCertificate>,
) -> Result<String, Status> {
    let inner = match peer {
        None => Status::permission_denied("no client certificates in request"),
        Some(cert) if !roles.contains(&cert.ou.as_str()) => Status::permission_denied(format!(
            "Permission denied: remote certificate not part of OUs: {}",
            go_list(roles)
        )),
        Some(cert) if removed.contains_key(&cert.node_id) => Status::permission_denied(format!(
            "Permission denied: node {} was removed from swarm",
            cert.node_id
        )),
        Some(cert) if cert.cluster_id != cluster_id => Status::permission_denied(format!(
            "Permission denied: remote certificate not part of organization: {cluster_id}"
        )),
        Some(cert) => return Ok(cert.node_id.clone()),
    };
    Err(Status::permission_denied(format!(
        "Permission denied: unauthorized peer role: {}",
        nested(&inner)
    )))
}

/// What the checks need: the cluster ID and the store holding the removed nodes.
pub struct Authorizer {
    store: MemoryStore,
    cluster_id: String,
}

impl Authorizer {
    /// Checks against `cluster_id` and the blacklist in `store`'s cluster object.
    pub fn new(store: MemoryStore, cluster_id: String) -> Arc<Authorizer> {
        Arc::new(Authorizer { store, cluster_id })
    }

    /// The cluster ID callers' certificates must carry.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// [`authorize`] against this cluster. The cluster object is read shared, not copied: this
    /// runs on every remote call, heartbeats included.
    pub fn authorize(&self, peer: Option<&CertInfo>, roles: &[&str]) -> Result<String, Status> {
        let cluster = self.store.view(|tx| {
            tx.find_shared::<api::Cluster>(By::Name(crate::bootstrap::DEFAULT_CLUSTER_NAME))
                .into_iter()
                .next()
        });
        let none = BTreeMap::new();
        let removed = cluster
            .as_deref()
            .map_or(&none, |c| &c.blacklisted_certificates);
        authorize(peer, roles, &self.cluster_id, removed)
    }

    /// Settles who the caller is (see [`Authorizer::resolve_forwarded`]), then checks it against
    /// the method's row.
    fn check<B>(&self, req: &mut http::Request<B>) -> Result<(), Status> {
        self.resolve_forwarded(req);
        let path = req.uri().path();
        match access(path) {
            None => Err(Status::unimplemented(format!("unknown method {path}"))),
            Some(Access::Insecure) => Ok(()),
            Some(Access::Roles(roles)) => {
                let peer = ca::peer_cert_info_http(req.extensions());
                self.authorize(peer.as_ref(), roles).map(drop)
            }
        }
    }

    /// A request another manager forwarded (SwarmKit's AuthorizeForwardedRoleAndOrg): its
    /// forwarding headers name the original caller, believed only when the connection's own
    /// certificate is a manager of this cluster that was not removed; the caller is then recorded
    /// as a [`ca::ForwardedPeer`] for the handlers. From anyone else the headers are stripped and
    /// the connection's certificate is the caller.
    pub fn resolve_forwarded<B>(&self, req: &mut http::Request<B>) {
        req.extensions_mut().remove::<ca::ForwardedPeer>();
        if !ca::is_forwarded(req.headers()) {
            ca::strip_forwarded(req.headers_mut());
            return;
        }
        let direct = ca::tls_peer_cert_info_http(req.extensions());
        if self.authorize(direct.as_ref(), &[MANAGER_ROLE]).is_err() {
            tracing::debug!(
                method = req.uri().path(),
                "ignoring forwarded identity from a caller that is not a manager of this cluster"
            );
            ca::strip_forwarded(req.headers_mut());
            return;
        }
        let fwd = ca::forwarded_peer(req.headers());
        req.extensions_mut().insert(fwd);
    }
}

/// Tower layer running [`Authorizer`] before every request.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Authorizer>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the gRPC routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authorizer>,
}

/// The future of a boxed tower service call.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.check(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::debug!(method = req.uri().path(), "refused: {}", status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    use super::*;

    /// `package.Service -> methods` of every service in the proto files.
    fn proto_methods() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("proto dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            let mut package = String::new();
            let mut service = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("package ") {
                    package = rest.trim_end_matches(';').trim().to_string();
                } else if let Some(rest) = line.strip_prefix("service ") {
                    service = rest
                        .split_whitespace()
                        .next()
                        .map(|s| format!("{package}.{s}"));
                } else if let (Some(s), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
                    let name = rest.split('(').next().expect("name").trim().to_string();
                    out.entry(s.clone()).or_default().insert(name);
                }
            }
        }
        out
    }

    #[test]
    fn every_served_method_has_a_row_and_every_row_a_method() {
        let protos = proto_methods();
        assert!(
            protos["docker.swarmkit.v1.Control"].len() > 40,
            "{protos:?}"
        );
        for service in SERVED_SERVICES {
            for method in &protos[*service] {
                let path = format!("/{service}/{method}");
                assert!(access(&path).is_some(), "no authorization row for {path}");
            }
        }
        for (path, _) in TABLE {
            let (service, method) = path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .expect("path shape");
            assert!(
                protos.get(service).is_some_and(|m| m.contains(method)),
                "row {path} names no proto method"
            );
        }
        let unique: BTreeSet<_> = TABLE.iter().map(|(p, _)| p).collect();
        assert_eq!(unique.len(), TABLE.len(), "duplicate rows");
    }

    #[test]
    fn workers_reach_only_what_swarmkit_lets_them() {
        assert_eq!(
            access("/docker.swarmkit.v1.NodeCA/IssueNodeCertificate"),
            Some(Access::Insecure)
        );
        assert_eq!(
            access("/docker.swarmkit.v1.CA/GetRootCACertificate"),
            Some(Access::Insecure)
        );
        for (path, a) in TABLE {
            if path.contains(".Control/") || path.ends_with("GetUnlockKey") {
                assert_eq!(*a, MANAGERS, "{path}");
            }
        }
        for (path, a) in TABLE {
            if path.starts_with("/swarmkit.raftrpc.v1.") {
                assert_eq!(*a, MANAGERS, "{path}");
            }
        }
        for (path, a) in TABLE {
            if path.contains(".Dispatcher/") || path.starts_with("/swarmkit.netplane.v1.") {
                assert_eq!(*a, Access::Roles(&[WORKER_ROLE, MANAGER_ROLE]), "{path}");
            }
        }
        assert_eq!(access("/docker.swarmkit.v1.Control/Nope"), None);
    }

    fn cert(id: &str, ou: &str, org: &str) -> CertInfo {
        CertInfo {
            node_id: id.into(),
            role: if ou == MANAGER_ROLE {
                api::NodeRole::Manager
            } else {
                api::NodeRole::Worker
            },
            ou: ou.into(),
            cluster_id: org.into(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
            is_ca: false,
            public_key_raw: Vec::new(),
            dns_names: Vec::new(),
        }
    }

    #[test]
    fn authorize_gives_swarmkit_messages() {
        let mut removed = BTreeMap::new();
        removed.insert("gone".to_string(), api::BlacklistedCertificate::default());
        let m = [MANAGER_ROLE];
        let ok = authorize(Some(&cert("n1", MANAGER_ROLE, "c1")), &m, "c1", &removed);
        assert_eq!(ok.expect("manager"), "n1");

        let cases = [
            (
                None,
                "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = no client certificates in request",
            ),
            (
                Some(cert("w1", WORKER_ROLE, "c1")),
                "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: [swarm-manager]",
            ),
            (
                Some(cert("gone", MANAGER_ROLE, "c1")),
                "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: node gone was removed from swarm",
            ),
            (
                Some(cert("n2", MANAGER_ROLE, "other")),
                "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of organization: c1",
            ),
        ];
        for (peer, want) in cases {
            let err = authorize(peer.as_ref(), &m, "c1", &removed).expect_err(want);
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert_eq!(err.message(), want);
        }
        let both = [WORKER_ROLE, MANAGER_ROLE];
        let w = authorize(Some(&cert("w1", WORKER_ROLE, "c1")), &both, "c1", &removed);
        assert_eq!(w.expect("worker"), "w1");
    }
}
