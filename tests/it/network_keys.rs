//! The network bootstrap keys (spec 5.9) as a worker receives them: the leader's key manager
//! creates three per subsystem, the dispatcher pushes them in the worker's session messages, and
//! a new leader keeps the same keys. The control API redacts the keys, so the test reads them
//! where an agent does: it opens a Dispatcher session with a real worker's certificate (the
//! worker stopped first, so its own agent's session does not compete) and reads the first
//! session message.

use std::time::Duration;

use crate::ha_cluster::{Cluster, JOIN_LIMIT};
use crate::harness::{Swarmd, tls_material, wait_for};

const WORKER_READY: &str = "worker node is ready";
/// Bound of one session attempt.
const CALL: Duration = Duration::from_secs(10);

/// (subsystem, algorithm, lamport time, key bytes) of each key, in the order sent.
type Keys = Vec<(String, i32, u64, Vec<u8>)>;

/// The keys in the first session message the manager at `addr` sends the node whose TLS
/// material is in `state_dir`; Err with the reason when the session cannot be opened.
fn session_keys(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    state_dir: &std::path::Path,
) -> Result<Keys, String> {
    let material = tls_material(state_dir);
    rt.block_on(async {
        let cfg = ca::mtls_client_config(
            &material.root_pem,
            Some((&material.cert_pem, &material.key_pem)),
        )
        .map_err(|e| e.to_string())?;
        let channel = ca::tls_channel(addr, cfg, "swarm-manager").map_err(|e| e.to_string())?;
        let mut client = api::dispatcher_client::DispatcherClient::new(channel);
        let first = tokio::time::timeout(CALL, async {
            let mut stream = client
                .session(api::SessionRequest {
                    description: Some(api::NodeDescription {
                        hostname: "worker-1".into(),
                        ..Default::default()
                    }),
                    session_id: String::new(),
                })
                .await?
                .into_inner();
            stream.message().await
        })
        .await
        .map_err(|_| "no session message in time".to_string())?
        .map_err(|s| format!("{s:?}"))?
        .ok_or("the session stream ended")?;
        Ok(first
            .network_bootstrap_keys
            .into_iter()
            .map(|k| (k.subsystem, k.algorithm, k.lamport_time, k.key))
            .collect())
    })
}

/// What the keys show without their bytes, for messages.
fn shown(keys: &Keys) -> Vec<(&str, u64)> {
    keys.iter().map(|k| (k.0.as_str(), k.2)).collect()
}

#[test]
fn a_worker_gets_three_keys_per_subsystem_and_a_new_leader_keeps_them() {
    let mut c = Cluster::start(3, 100);
    let leader = c.leader(JOIN_LIMIT);
    let (worker_token, _) = c.managers[leader].join_tokens();
    let (mut w, code) = Swarmd::start_node(
        &[
            "--join-addr",
            &c.addrs[leader],
            "--join-token",
            &worker_token,
            "--hostname",
            "worker-1",
        ],
        WORKER_READY,
        JOIN_LIMIT,
    );
    assert_eq!(code, None, "worker exited; log:\n{}", w.log());
    assert_eq!(
        w.stop(),
        Some(0),
        "the worker stops cleanly; log:\n{}",
        w.log()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();

    let keys = session_keys(&rt, &c.addrs[leader], &w.state_dir()).expect("a session");
    let subsystems: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(
        subsystems,
        [
            "networking:gossip",
            "networking:gossip",
            "networking:gossip",
            "networking:ipsec",
            "networking:ipsec",
            "networking:ipsec",
        ],
        "{:?}",
        shown(&keys)
    );
    assert!(
        keys.iter().all(|k| k.1 == 0),
        "AES_128_GCM: {:?}",
        shown(&keys)
    );
    assert!(keys.iter().all(|k| k.3.len() == 16), "16 bytes each");
    let first = keys[0].2;
    let lamport: Vec<u64> = keys.iter().map(|k| k.2).collect();
    assert_eq!(
        lamport,
        (first..first + 6).collect::<Vec<_>>(),
        "one clock, one tick a key"
    );
    let distinct: std::collections::BTreeSet<&[u8]> = keys.iter().map(|k| k.3.as_slice()).collect();
    assert_eq!(distinct.len(), 6, "six different random keys");

    // The leader goes; the next one serves the keys it found in the store, not new ones.
    c.kill(leader);
    let next = wait_for("a new leader", JOIN_LIMIT, || {
        c.try_leader(Duration::from_secs(5))
            .filter(|&l| l != leader)
    });
    let again = wait_for("a session with the new leader", JOIN_LIMIT, || {
        session_keys(&rt, &c.addrs[next], &w.state_dir()).ok()
    });
    assert!(
        again == keys,
        "the new leader's keys differ: {:?}",
        shown(&again)
    );
    drop(w);
}
