//! The key manager (leader only; spec 5.9, SwarmKit manager/keymanager): keeps the network
//! bootstrap keys that agents use to secure the data plane, three per subsystem
//! (`networking:gossip` and `networking:ipsec`), 16 random bytes each, AES_128_GCM, in the
//! cluster object, where the dispatcher finds them and pushes them to every agent in its session
//! messages. Each key carries a lamport time from the cluster's `encryption_key_lamport_clock`,
//! which every new key advances by one, so agents tell a newer key from an older one.
//!
//! On becoming leader it creates the keys a subsystem lacks (on a new cluster all six, the clock
//! starting at a random value below 65536 as SwarmKit's does); a later leader finds them in the
//! store and carries on from them and from the stored clock, regenerating nothing. Every 12 h of
//! a term it rotates: per subsystem the key with the lowest lamport time goes and a new one is
//! appended, so agents still hold the previous keys while the new one spreads. As in SwarmKit
//! the period counts from the start of the term, so a leader change starts it again. A rotation
//! that cannot be written (the term is ending, say) is tried again after [`RETRY_AFTER`]
//! rather than a whole period later (ours: SwarmKit waits for its next tick).
//!
//! Key bytes are never logged: `api::EncryptionKey`'s `Debug` leaves them out.

use std::time::Duration;

use store::{By, MemoryStore, StoreError, WatchFilter};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::bootstrap::DEFAULT_CLUSTER_NAME;

/// The subsystem that secures the gossip between agents.
pub const SUBSYSTEM_GOSSIP: &str = "networking:gossip";
/// The subsystem that encrypts overlay data traffic.
pub const SUBSYSTEM_IPSEC: &str = "networking:ipsec";
/// The subsystems that get keys, in the order their keys are stored.
pub const SUBSYSTEMS: [&str; 2] = [SUBSYSTEM_GOSSIP, SUBSYSTEM_IPSEC];
/// Length of a key in bytes (AES-128).
pub const KEY_LEN: usize = 16;
/// Keys kept per subsystem.
pub const KEYRING_SIZE: usize = 3;
/// Time between rotations (SwarmKit's DefaultKeyRotationInterval).
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Pause before a rotation that failed is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why the key manager stopped.
#[derive(Debug, thiserror::Error)]
pub enum KeyManagerError {
    /// The store's event stream ended.
    #[error("store watch closed")]
    WatchClosed,
    /// The keys could not be written.
    #[error("storing the network bootstrap keys failed: {0}")]
    Store(#[from] StoreError),
}

/// Leader-only subsystem that creates and rotates the network bootstrap keys.
#[derive(Debug)]
pub struct KeyManager {
    store: MemoryStore,
    interval: Duration,
}

impl KeyManager {
    /// A key manager over `store` rotating every [`ROTATION_INTERVAL`].
    pub fn new(store: MemoryStore) -> Self {
        Self::with_interval(store, ROTATION_INTERVAL)
    }

    /// A key manager rotating every `interval` (tests shorten it).
    pub fn with_interval(store: MemoryStore, interval: Duration) -> Self {
        KeyManager { store, interval }
    }

    /// Creates the missing keys (once the cluster object exists), then rotates them every
    /// interval until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KeyManagerError> {
        // Watch before the first look, so a cluster created in between is not missed; a
        // transaction that changes nothing proposes nothing, so trying on each event is cheap.
        let mut watcher = self.store.watch(WatchFilter::none().clusters());
        while !self.ensure_keys().await? {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                event = watcher.recv() => if event.is_none() {
                    return Err(KeyManagerError::WatchClosed);
                },
            }
        }
        drop(watcher);
        let mut ticks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A failed rotation is retried with the clock it started from, so a write that did
        // commit although its answer was an error is not followed by a second rotation.
        let mut retry: Option<(Instant, u64)> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => retry = self.rotate_or_retry(self.clock()).await,
                () = tokio::time::sleep_until(retry.map_or_else(Instant::now, |r| r.0)), if retry.is_some() => {
                    let seen = retry.map(|r| r.1);
                    retry = self.rotate_or_retry(seen).await;
                }
            }
        }
    }

    /// The stored key clock (None without a cluster object).
    fn clock(&self) -> Option<u64> {
        self.store.view(|tx| {
            tx.find_clusters(By::Name(DEFAULT_CLUSTER_NAME))
                .first()
                .map(|c| KeyRing::of(c).clock)
        })
    }

    /// Rotates unless the clock moved on from `seen`; on failure logs it and answers when to try
    /// again, with the clock the attempt started from.
    async fn rotate_or_retry(&self, seen: Option<u64>) -> Option<(Instant, u64)> {
        match self.rotate(seen).await {
            Ok(()) => None,
            Err(e) => {
                error!(
                    "rotating the network bootstrap keys failed: {e}; retrying in {RETRY_AFTER:?}"
                );
                seen.map(|clock| (Instant::now() + RETRY_AFTER, clock))
            }
        }
    }

    /// Tops every subsystem up to [`KEYRING_SIZE`] keys. False while there is no cluster object.
    async fn ensure_keys(&self) -> Result<bool, KeyManagerError> {
        Ok(match self.change(KeyRing::top_up).await? {
            None => false,
            Some((0, _)) => true,
            Some((created, clock)) => {
                info!(
                    keys = created,
                    lamport_clock = clock,
                    "created network bootstrap keys"
                );
                true
            }
        })
    }

    /// Replaces the oldest key of each subsystem with a new one, if the clock is still `seen`
    /// (a ring whose clock moved on was rotated already).
    async fn rotate(&self, seen: Option<u64>) -> Result<(), KeyManagerError> {
        let rotate = move |ring: &mut KeyRing| {
            if Some(ring.clock) == seen {
                ring.rotate()
            } else {
                0
            }
        };
        if let Some((rotated, clock)) = self.change(rotate).await?
            && rotated > 0
        {
            info!(lamport_clock = clock, "rotated the network bootstrap keys");
        }
        Ok(())
    }

    /// Applies `f` to the cluster's key ring and writes it back if `f` added keys: how many it
    /// added and the clock after, or None when there is no cluster object.
    async fn change(
        &self,
        f: impl FnOnce(&mut KeyRing) -> usize + Send,
    ) -> Result<Option<(usize, u64)>, StoreError> {
        self.store
            .update(|tx| {
                let Some(mut cluster) = tx
                    .find_clusters(By::Name(DEFAULT_CLUSTER_NAME))
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let mut ring = KeyRing::of(&cluster);
                let added = f(&mut ring);
                let clock = ring.clock;
                if added > 0 {
                    ring.store_in(&mut cluster);
                    tx.update_cluster(cluster)?;
                }
                Ok(Some((added, clock)))
            })
            .await
    }
}

/// The cluster's keys and clock, being changed.
struct KeyRing {
    clock: u64,
    keys: Vec<api::EncryptionKey>,
}

impl KeyRing {
    /// The ring the cluster holds. The clock is never behind a stored key's time; a cluster with
    /// no key and no clock starts from a random skew below 65536, as SwarmKit's does.
    fn of(cluster: &api::Cluster) -> KeyRing {
        let newest = cluster
            .network_bootstrap_keys
            .iter()
            .map(|k| k.lamport_time)
            .max();
        let clock = match (cluster.encryption_key_lamport_clock, newest) {
            (0, None) => u64::from(rand::random::<u16>()),
            (clock, newest) => clock.max(newest.unwrap_or(0)),
        };
        KeyRing {
            clock,
            keys: cluster.network_bootstrap_keys.clone(),
        }
    }

    fn store_in(self, cluster: &mut api::Cluster) {
        cluster.encryption_key_lamport_clock = self.clock;
        cluster.network_bootstrap_keys = self.keys;
    }

    /// A new random key of `subsystem` at the next lamport time.
    fn new_key(&mut self, subsystem: &str) -> api::EncryptionKey {
        let mut key = vec![0u8; KEY_LEN];
        rand::fill(key.as_mut_slice());
        self.clock += 1;
        api::EncryptionKey {
            subsystem: subsystem.to_string(),
            algorithm: api::encryption_key::Algorithm::Aes128Gcm as i32,
            key,
            lamport_time: self.clock,
        }
    }

    fn count(&self, subsystem: &str) -> usize {
        self.keys
            .iter()
            .filter(|k| k.subsystem == subsystem)
            .count()
    }

    /// Adds keys to each subsystem short of [`KEYRING_SIZE`]; answers how many.
    fn top_up(&mut self) -> usize {
        let mut created = 0;
        for subsystem in SUBSYSTEMS {
            while self.count(subsystem) < KEYRING_SIZE {
                let key = self.new_key(subsystem);
                self.insert(key);
                created += 1;
            }
        }
        created
    }

    /// Per subsystem: drops the oldest keys until one more fits in [`KEYRING_SIZE`], then adds
    /// a new one; answers how many were added.
    fn rotate(&mut self) -> usize {
        for subsystem in SUBSYSTEMS {
            while self.count(subsystem) >= KEYRING_SIZE {
                let oldest = self
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| k.subsystem == subsystem)
                    .min_by_key(|(_, k)| k.lamport_time)
                    .map(|(i, _)| i);
                if let Some(i) = oldest {
                    self.keys.remove(i);
                }
            }
            let key = self.new_key(subsystem);
            self.insert(key);
        }
        SUBSYSTEMS.len()
    }

    /// Puts `key` after the last key of its subsystem, so the keys stay grouped by subsystem
    /// in [`SUBSYSTEMS`]' order, oldest first.
    fn insert(&mut self, key: api::EncryptionKey) {
        let rank = |s: &str| SUBSYSTEMS.iter().position(|x| *x == s);
        let mine = rank(&key.subsystem);
        let at = self
            .keys
            .iter()
            .rposition(|k| rank(&k.subsystem) <= mine && rank(&k.subsystem).is_some())
            .map_or(0, |i| i + 1);
        self.keys.insert(at, key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Creates the default cluster object, with no key, in `store`.
    async fn create_cluster(store: &MemoryStore) {
        let cluster = api::Cluster {
            id: "cluster".into(),
            spec: Some(api::ClusterSpec {
                annotations: Some(api::Annotations {
                    name: DEFAULT_CLUSTER_NAME.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        store
            .update(move |tx| tx.create_cluster(cluster))
            .await
            .expect("create cluster");
    }

    async fn cluster_store() -> MemoryStore {
        let store = MemoryStore::new(None);
        create_cluster(&store).await;
        store
    }

    fn cluster(store: &MemoryStore) -> api::Cluster {
        store.view(|tx| tx.get_cluster("cluster")).expect("cluster")
    }

    /// (subsystem, lamport time) of the cluster's keys, in stored order.
    fn times(store: &MemoryStore) -> Vec<(String, u64)> {
        cluster(store)
            .network_bootstrap_keys
            .iter()
            .map(|k| (k.subsystem.clone(), k.lamport_time))
            .collect()
    }

    /// Runs a key manager until `check` returns, then stops it.
    async fn running<T>(
        store: &MemoryStore,
        interval: Duration,
        check: impl std::future::Future<Output = T>,
    ) -> T {
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(KeyManager::with_interval(store.clone(), interval).run(shutdown.clone()));
        let out = check.await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops when told")
            .expect("no panic")
            .expect("a clean stop");
        out
    }

    /// Waits (virtual time, up to two default intervals) until the cluster satisfies `f`.
    async fn until(store: &MemoryStore, what: &str, f: impl Fn(&api::Cluster) -> bool) {
        tokio::time::timeout(2 * ROTATION_INTERVAL, async {
            while !f(&cluster(store)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// The subsystem of each key of a full ring, in stored order.
    fn grouped() -> Vec<&'static str> {
        SUBSYSTEMS.iter().flat_map(|s| [*s; KEYRING_SIZE]).collect()
    }

    fn cluster_missing(store: &MemoryStore) -> bool {
        store.view(|tx| tx.get_cluster("cluster")).is_none()
    }

    fn full(c: &api::Cluster) -> bool {
        c.network_bootstrap_keys.len() == SUBSYSTEMS.len() * KEYRING_SIZE
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_cluster_gets_three_keys_per_subsystem() {
        let store = cluster_store().await;
        running(&store, ROTATION_INTERVAL, until(&store, "keys", full)).await;
        let c = cluster(&store);
        let keys = &c.network_bootstrap_keys;
        let subsystems: Vec<&str> = keys.iter().map(|k| k.subsystem.as_str()).collect();
        assert_eq!(subsystems, grouped());
        for k in keys {
            assert_eq!(k.key.len(), KEY_LEN);
            assert_eq!(
                k.algorithm,
                api::encryption_key::Algorithm::Aes128Gcm as i32
            );
        }
        let distinct: BTreeSet<&[u8]> = keys.iter().map(|k| k.key.as_slice()).collect();
        assert_eq!(distinct.len(), 6, "every key is its own random bytes");
        // Consecutive lamport times from a random start below 65536 + 1; the clock is the last.
        let first = keys[0].lamport_time;
        assert!((1..=65536).contains(&first), "{first}");
        let lamport: Vec<u64> = keys.iter().map(|k| k.lamport_time).collect();
        assert_eq!(lamport, (first..first + 6).collect::<Vec<_>>());
        assert_eq!(c.encryption_key_lamport_clock, first + 5);
    }

    #[tokio::test(start_paused = true)]
    async fn each_interval_replaces_the_oldest_key_of_each_subsystem_and_advances_the_clock() {
        let store = cluster_store().await;
        let interval = Duration::from_secs(3600);
        running(&store, interval, async {
            until(&store, "keys", full).await;
            let created = cluster(&store);
            let t0 = created.encryption_key_lamport_clock - 5;
            // Nothing changes before the interval is up.
            tokio::time::sleep(interval - Duration::from_secs(1)).await;
            assert_eq!(cluster(&store), created);

            let clock = created.encryption_key_lamport_clock;
            until(&store, "a rotation", |c| {
                c.encryption_key_lamport_clock == clock + 2
            })
            .await;
            let g = SUBSYSTEM_GOSSIP.to_string();
            let i = SUBSYSTEM_IPSEC.to_string();
            assert_eq!(
                times(&store),
                vec![
                    (g.clone(), t0 + 1),
                    (g.clone(), t0 + 2),
                    (g.clone(), t0 + 6),
                    (i.clone(), t0 + 4),
                    (i.clone(), t0 + 5),
                    (i.clone(), t0 + 7),
                ]
            );
            // The surviving keys are the same keys.
            let now = cluster(&store).network_bootstrap_keys;
            assert_eq!(now[0], created.network_bootstrap_keys[1]);
            assert_eq!(now[4], created.network_bootstrap_keys[5]);

            until(&store, "a second rotation", |c| {
                c.encryption_key_lamport_clock == clock + 4
            })
            .await;
            assert_eq!(
                times(&store),
                vec![
                    (g.clone(), t0 + 2),
                    (g.clone(), t0 + 6),
                    (g, t0 + 8),
                    (i.clone(), t0 + 5),
                    (i.clone(), t0 + 7),
                    (i, t0 + 9),
                ]
            );
        })
        .await;
    }

    /// A restarted key manager (a new term, or another manager taking over the same store)
    /// keeps the stored keys and clock and rotates on from them.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_keeps_the_stored_keys_and_continues_the_clock() {
        let store = cluster_store().await;
        let interval = Duration::from_secs(3600);
        running(&store, interval, until(&store, "keys", full)).await;
        let created = cluster(&store);

        // The next term: nothing is regenerated, even after a while.
        running(&store, interval, async {
            tokio::time::sleep(interval / 2).await;
            assert_eq!(cluster(&store), created);
        })
        .await;

        // A term that lasts an interval rotates on from the stored clock.
        let clock = created.encryption_key_lamport_clock;
        running(&store, interval, async {
            until(&store, "a rotation", |c| {
                c.encryption_key_lamport_clock == clock + 2
            })
            .await;
        })
        .await;
        let rotated = cluster(&store).network_bootstrap_keys;
        assert_eq!(rotated[0], created.network_bootstrap_keys[1]);
        assert_eq!(rotated[2].lamport_time, clock + 1);
        assert_eq!(rotated[5].lamport_time, clock + 2);
    }

    /// A subsystem short of keys (say, a cluster written by a version with fewer) is topped up
    /// after the clock; the keys it has stay.
    #[tokio::test(start_paused = true)]
    async fn missing_keys_are_added_after_the_stored_clock() {
        let store = cluster_store().await;
        let mut c = cluster(&store);
        let kept = api::EncryptionKey {
            subsystem: SUBSYSTEM_IPSEC.into(),
            algorithm: api::encryption_key::Algorithm::Aes128Gcm as i32,
            key: vec![9; KEY_LEN],
            lamport_time: 40,
        };
        c.network_bootstrap_keys = vec![kept.clone()];
        c.encryption_key_lamport_clock = 41;
        store
            .update(move |tx| tx.update_cluster(c))
            .await
            .expect("update");
        running(&store, ROTATION_INTERVAL, until(&store, "keys", full)).await;
        let g = SUBSYSTEM_GOSSIP.to_string();
        let i = SUBSYSTEM_IPSEC.to_string();
        assert_eq!(
            times(&store),
            vec![
                (g.clone(), 42),
                (g.clone(), 43),
                (g, 44),
                (i.clone(), 40),
                (i.clone(), 45),
                (i, 46),
            ]
        );
        assert_eq!(cluster(&store).network_bootstrap_keys[3], kept);
        assert_eq!(cluster(&store).encryption_key_lamport_clock, 46);
    }

    /// Started before the cluster object exists (a leader that has not bootstrapped yet), it
    /// waits for it.
    #[tokio::test(start_paused = true)]
    async fn keys_are_created_once_the_cluster_object_appears() {
        let store = MemoryStore::new(None);
        running(&store, ROTATION_INTERVAL, async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(cluster_missing(&store));
            create_cluster(&store).await;
            until(&store, "keys", full).await;
        })
        .await;
    }

    #[test]
    fn key_bytes_are_not_in_debug_output() {
        let key = api::EncryptionKey {
            subsystem: SUBSYSTEM_GOSSIP.into(),
            algorithm: 0,
            key: vec![0xab; KEY_LEN],
            lamport_time: 7,
        };
        let shown = format!(
            "{key:?} {:?}",
            api::Cluster {
                network_bootstrap_keys: vec![key.clone()],
                ..Default::default()
            }
        );
        assert!(
            shown.contains("networking:gossip") && shown.contains('7'),
            "{shown}"
        );
        assert!(!shown.contains("171"), "{shown}");
    }
}
