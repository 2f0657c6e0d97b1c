//! The hasher of the tables' ID maps and sets: IDs are short strings hashed on every read and
//! write, where SipHash would cost more than the rest of a lookup. Multiply-rotate over 8-byte
//! words with a per-process random seed, and a folded multiply at the end so that the low bits
//! hashbrown picks buckets with depend on every byte.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

const K: u64 = 0x517c_c1b7_2722_0a95;
const FOLD: u64 = 0x9e37_79b9_7f4a_7c15;

static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0x5eed_u64));

/// Builds the store's fast hashers of object IDs (short strings) and small numbers; for callers'
/// own maps keyed by IDs, too (`HashMap<String, V, IdHash>`). Seeded once per process.
#[derive(Debug, Clone, Copy)]
pub struct IdHash {
    seed: u64,
}

impl Default for IdHash {
    fn default() -> Self {
        IdHash { seed: *SEED }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

/// The hasher [`IdHash`] builds: multiply-rotate over 8-byte words, folded at the end.
#[derive(Debug)]
pub struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The length keeps zero padding from making `"ab"` and `"ab\0"` alike.
        self.add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in chunks.by_ref() {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        let wide = u128::from(self.0) * u128::from(FOLD);
        (wide as u64) ^ ((wide >> 64) as u64)
    }
}

/// A map keyed by ID.
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHash>;
/// A set of IDs (or rows).
pub(crate) type IdSet<K> = HashSet<K, IdHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_reaches_the_low_bits() {
        let hash = |s: &str| IdHash::default().hash_one(s);
        let buckets: HashSet<u64> = (0..1000)
            .map(|i| hash(&format!("task{i:04}")) & 0x3ff)
            .collect();
        assert!(
            buckets.len() > 550,
            "{} buckets of 1024 used",
            buckets.len()
        );
        assert_ne!(hash("ab"), hash("ab\0"));
    }
}
