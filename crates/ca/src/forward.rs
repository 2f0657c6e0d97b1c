//! The caller's identity across a manager-to-leader hop (SwarmKit's `ca/forward.go`): a manager
//! that forwards a call to the leader names the original caller in request metadata
//! (`forwarded_cert` = `true`, the caller's CN, O and OUs, blank for an anonymous caller, and its
//! address). The leader's authorization layer believes that metadata only from a manager
//! certificate of its cluster and then records the caller as a [`ForwardedPeer`] extension, which
//! [`crate::peer_cert_info`] prefers over the connection's own certificate; anyone else's
//! forwarding headers are stripped.

use std::time::SystemTime;

use tonic::codegen::http::{HeaderMap, HeaderValue};

use crate::{CertInfo, MANAGER_ROLE};

/// `true` on a forwarded request.
pub const FORWARDED_KEY: &str = "forwarded_cert";
/// The original caller's CN (node ID).
pub const FORWARDED_CN_KEY: &str = "forwarded_cert_cn";
/// The original caller's OU (role), one value per OU.
pub const FORWARDED_OU_KEY: &str = "forwarded_cert_ou";
/// The original caller's O (cluster ID).
pub const FORWARDED_ORG_KEY: &str = "forwarded_cert_org";
/// The original caller's address as the forwarding manager saw it.
pub const REMOTE_ADDR_KEY: &str = "remote_addr";
/// Set by the forwarding manager to the address it got the call from; a call that carries it is
/// not forwarded again (no loops).
pub const REDIRECT_KEY: &str = "redirect";

const ALL_KEYS: [&str; 5] = [
    FORWARDED_KEY,
    FORWARDED_CN_KEY,
    FORWARDED_OU_KEY,
    FORWARDED_ORG_KEY,
    REMOTE_ADDR_KEY,
];

/// The original caller of a forwarded request, as the leader accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedPeer {
    /// `None` for a caller that presented no certificate (a node joining with a token).
    pub cert: Option<CertInfo>,
    /// The caller's address (`ip:port`), when the forwarding manager knew it.
    pub remote_addr: Option<String>,
}

/// Whether `headers` say the request was forwarded by another manager.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(FORWARDED_KEY).iter();
    matches!((values.next(), values.next()), (Some(v), None) if v == "true")
}

/// The forwarded caller `headers` describe (call only after checking that the direct peer is a
/// manager of this cluster): blank CN means anonymous.
pub fn forwarded_peer(headers: &HeaderMap) -> ForwardedPeer {
    let text = |key: &str| {
        headers
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let cn = text(FORWARDED_CN_KEY);
    let ou = headers
        .get_all(FORWARDED_OU_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .find(|v| !v.is_empty())
        .unwrap_or_default()
        .to_string();
    let cert = (!cn.is_empty()).then(|| CertInfo {
        node_id: cn,
        role: if ou == MANAGER_ROLE {
            api::NodeRole::Manager
        } else {
            api::NodeRole::Worker
        },
        ou,
        cluster_id: text(FORWARDED_ORG_KEY),
        not_before: SystemTime::UNIX_EPOCH,
        not_after: SystemTime::UNIX_EPOCH,
        is_ca: false,
        public_key_raw: Vec::new(),
        dns_names: Vec::new(),
    });
    let addr = text(REMOTE_ADDR_KEY);
    ForwardedPeer {
        cert,
        remote_addr: (!addr.is_empty()).then_some(addr),
    }
}

/// Removes every forwarding header (from a caller whose forwarding is not believed, or before
/// adding this manager's own).
pub fn strip_forwarded(headers: &mut HeaderMap) {
    for key in ALL_KEYS {
        headers.remove(key);
    }
}

/// Replaces the forwarding headers with ones naming `caller` (none: anonymous) at `remote_addr`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    caller: Option<&CertInfo>,
    remote_addr: Option<&str>,
) {
    strip_forwarded(headers);
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(FORWARDED_KEY, HeaderValue::from_static("true"));
    let (cn, ou, org) = caller.map_or(("", "", ""), |c| {
        (c.node_id.as_str(), c.ou.as_str(), c.cluster_id.as_str())
    });
    headers.insert(FORWARDED_CN_KEY, value(cn));
    headers.insert(FORWARDED_ORG_KEY, value(org));
    if !ou.is_empty() {
        headers.insert(FORWARDED_OU_KEY, value(ou));
    }
    if let Some(addr) = remote_addr {
        headers.insert(REMOTE_ADDR_KEY, value(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(id: &str, ou: &str) -> CertInfo {
        CertInfo {
            node_id: id.into(),
            role: api::NodeRole::Worker,
            ou: ou.into(),
            cluster_id: "c1".into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            is_ca: false,
            public_key_raw: Vec::new(),
            dns_names: Vec::new(),
        }
    }

    #[test]
    fn forwarded_identity_round_trips_and_strips() {
        let mut h = HeaderMap::new();
        assert!(!is_forwarded(&h));
        h.insert(FORWARDED_CN_KEY, HeaderValue::from_static("forged"));
        set_forwarded(
            &mut h,
            Some(&cert("w1", "swarm-worker")),
            Some("10.0.0.1:5"),
        );
        assert!(is_forwarded(&h));
        let p = forwarded_peer(&h);
        let c = p.cert.expect("caller");
        assert_eq!(
            (c.node_id.as_str(), c.ou.as_str(), c.cluster_id.as_str()),
            ("w1", "swarm-worker", "c1")
        );
        assert_eq!(c.role, api::NodeRole::Worker);
        assert_eq!(p.remote_addr.as_deref(), Some("10.0.0.1:5"));

        set_forwarded(&mut h, None, None);
        let p = forwarded_peer(&h);
        assert_eq!(
            p,
            ForwardedPeer {
                cert: None,
                remote_addr: None
            }
        );

        strip_forwarded(&mut h);
        assert!(!is_forwarded(&h));
        assert!(h.get(FORWARDED_CN_KEY).is_none());
        // Two values of the flag are not a forwarded request.
        h.append(FORWARDED_KEY, HeaderValue::from_static("true"));
        h.append(FORWARDED_KEY, HeaderValue::from_static("true"));
        assert!(!is_forwarded(&h));
    }
}
