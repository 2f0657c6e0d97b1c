//! The network bootstrap keys the managers push in session messages (spec 5.9; SwarmKit's
//! agent.go hands them to its executor's `SetNetworkBootstrapKeys`): the data plane secures
//! gossip and overlay traffic with them. The agent holds the latest set in memory only, never in
//! the task database nor in a log, and passes it to the executor whenever a message brings a key
//! it does not hold yet (by lamport time, as SwarmKit's agent compares them). Key bytes are zeroed
//! once the last holder drops them.

use std::sync::Arc;

use zeroize::Zeroize;

/// One network bootstrap key. Its bytes are zeroed when it is dropped, and it has no `Debug`,
/// so that it cannot be logged by mistake.
pub struct NetworkKey(api::EncryptionKey);

impl NetworkKey {
    /// The subsystem the key serves (`networking:gossip`, `networking:ipsec`).
    pub fn subsystem(&self) -> &str {
        &self.0.subsystem
    }

    /// The key's algorithm (`api::encryption_key::Algorithm`; AES_128_GCM is 0).
    pub fn algorithm(&self) -> i32 {
        self.0.algorithm
    }

    /// The key's bytes.
    pub fn key(&self) -> &[u8] {
        &self.0.key
    }

    /// The key's lamport time: a newer key has a higher one.
    pub fn lamport_time(&self) -> u64 {
        self.0.lamport_time
    }
}

impl Drop for NetworkKey {
    fn drop(&mut self) {
        self.0.key.zeroize();
    }
}

/// A set of keys as the managers sent it, shared between the agent and the executor.
pub type NetworkKeys = Arc<[NetworkKey]>;

/// The latest keys the agent received.
#[derive(Default)]
pub(crate) struct HeldKeys {
    keys: Option<NetworkKeys>,
}

impl HeldKeys {
    /// Takes the keys of a session message. A message without keys changes nothing; one that
    /// brings a lamport time not held replaces the set, which is returned for the executor.
    pub(crate) fn take(&mut self, sent: Vec<api::EncryptionKey>) -> Option<NetworkKeys> {
        // Wrapped at once, so that bytes not kept are zeroed too.
        let sent: NetworkKeys = sent.into_iter().map(NetworkKey).collect();
        if sent.is_empty() {
            return None;
        }
        let held = self.keys.as_deref().unwrap_or_default();
        let news = sent
            .iter()
            .any(|k| !held.iter().any(|h| h.lamport_time() == k.lamport_time()));
        if !news {
            return None;
        }
        self.keys = Some(sent.clone());
        Some(sent)
    }

    /// The keys held now, if any came.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<&NetworkKeys> {
        self.keys.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(subsystem: &str, lamport_time: u64, byte: u8) -> api::EncryptionKey {
        api::EncryptionKey {
            subsystem: subsystem.into(),
            algorithm: api::encryption_key::Algorithm::Aes128Gcm as i32,
            key: vec![byte; 16],
            lamport_time,
        }
    }

    fn times(keys: &NetworkKeys) -> Vec<(String, u64)> {
        keys.iter()
            .map(|k| (k.subsystem().to_string(), k.lamport_time()))
            .collect()
    }

    #[test]
    fn a_set_with_a_new_lamport_time_replaces_the_held_keys_and_others_change_nothing() {
        let mut held = HeldKeys::default();
        assert!(held.take(vec![]).is_none(), "no keys: nothing to hand over");
        assert!(held.current().is_none());

        let first = vec![
            key("networking:gossip", 1, 1),
            key("networking:gossip", 2, 2),
            key("networking:ipsec", 3, 3),
        ];
        let got = held.take(first.clone()).expect("new keys");
        assert_eq!(
            times(&got),
            vec![
                ("networking:gossip".to_string(), 1),
                ("networking:gossip".to_string(), 2),
                ("networking:ipsec".to_string(), 3),
            ]
        );
        assert_eq!(got[2].key(), &[3; 16]);
        assert_eq!(got[2].algorithm(), 0);

        // The same set again (another node change, say), or none: nothing new.
        assert!(held.take(first.clone()).is_none());
        assert!(held.take(vec![]).is_none());
        assert_eq!(held.current().map(times), Some(times(&got)));

        // A rotation: a new lamport time replaces the whole set.
        let rotated = vec![
            key("networking:gossip", 2, 2),
            key("networking:gossip", 4, 4),
            key("networking:ipsec", 3, 3),
        ];
        let got = held.take(rotated).expect("rotated keys");
        assert_eq!(got[1].lamport_time(), 4);
        assert_eq!(got[1].key(), &[4; 16]);
        assert_eq!(held.current().map(|k| k.len()), Some(3));
    }
}
