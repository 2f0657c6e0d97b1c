//! The node key file's locking (autolock, spec 5.11): the unlock key (KEK), the PKCS#8
//! encryption of the key with it, and the raft data keys (DEKs) kept in the key's PEM headers,
//! wrapped by the KEK when there is one.
//!
//! A data key header's value is standard base64 of `[0][key]` (no KEK) or
//! `[1][nonce: 12][ChaCha20-Poly1305(KEK, key, associated data: the header name)][tag: 16]`. The key
//! body is encrypted with OpenSSL's PKCS#8 PBES2 (AES-256-CBC) under the KEK's bytes.

use std::path::Path;

use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD,
};
use base64::{Engine, alphabet};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{CaError, KeyStore};

/// SwarmKit's message for a locked manager started without its unlock key, or a wrong one.
pub const ERR_LOCKED: &str = "node is locked, and needs a valid unlock key";

/// The human form of an unlock key starts with this.
const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";

const HEADER_KEK_VERSION: &str = "kek-version";
const HEADER_DEK: &str = "raft-dek";
const HEADER_DEK_PENDING: &str = "raft-dek-pending";
const HEADER_DEK_ROTATE: &str = "raft-dek-needs-rotation";

const TAG_PLAIN: &str = "PRIVATE KEY";
const TAG_ENCRYPTED: &str = "ENCRYPTED PRIVATE KEY";

/// `SWMKEY-1-` and unpadded standard base64 (SwarmKit's `HumanReadableKey`).
pub fn format_unlock_key(key: &[u8]) -> String {
    format!("{UNLOCK_KEY_PREFIX}{}", STANDARD_NO_PAD.encode(key))
}

/// Unpadded standard base64 decoded as Go's `base64.RawStdEncoding` does, which SwarmKit's
/// `swarmd` uses: the unused low bits of the last character need not be zero.
const GO_RAW_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The bytes of a `SWMKEY-1-...` key; SwarmKit's `invalid key string` for anything else.
/// Any length is accepted here, as SwarmKit does: a key of the wrong length simply unlocks
/// nothing. As Go's decoder, line breaks inside the base64 are skipped and the last
/// character's unused bits ignored, so a key SwarmKit's `swarmd` takes is taken here too.
pub fn parse_unlock_key(text: &str) -> Result<Vec<u8>, CaError> {
    let invalid = || CaError::InvalidUnlockKey;
    let rest = text.strip_prefix(UNLOCK_KEY_PREFIX).ok_or_else(invalid)?;
    let rest: Zeroizing<String> =
        Zeroizing::new(rest.chars().filter(|c| !matches!(c, '\r' | '\n')).collect());
    GO_RAW_STD.decode(rest.as_bytes()).map_err(|_| invalid())
}

/// The raft data keys as the key file's headers hold them, unwrapped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredDataKeys {
    /// `raft-dek`.
    pub current: Option<Zeroizing<Vec<u8>>>,
    /// `raft-dek-pending`.
    pub pending: Option<Zeroizing<Vec<u8>>>,
    /// `raft-dek-needs-rotation`.
    pub needs_rotation: bool,
}

impl std::fmt::Debug for StoredDataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredDataKeys")
            .field("current", &self.current.is_some())
            .field("pending", &self.pending.is_some())
            .field("needs_rotation", &self.needs_rotation)
            .finish()
    }
}

/// The unlock key a key store locks with (`None`: unlocked) and its version.
pub(crate) struct Kek {
    key: Option<Zeroizing<Vec<u8>>>,
    version: u64,
    /// Headers saved before the key file exists (a new cluster's raft opens before its first
    /// manager writes its key): written with the key by the first `KeyStore::save`.
    pub(crate) unsaved: Option<Headers>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("locked", &self.key.is_some())
            .field("version", &self.version)
            .finish()
    }
}

/// The PKCS#8 passphrase for an unlock key: its hex form, as OpenSSL reads a passphrase up to
/// its first NUL byte and a random key holds one about every eighth time.
fn passphrase(kek: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(hex::encode(kek))
}

/// The key file's headers other than `kek-version`, in order.
pub(crate) type Headers = Vec<(String, String)>;

fn parse_err(e: impl std::fmt::Display) -> CaError {
    CaError::Parse(format!("node key file: {e}"))
}

fn locked() -> CaError {
    CaError::Locked
}

impl Kek {
    pub(crate) fn new(key: Option<Vec<u8>>) -> Kek {
        Kek {
            key: key.map(Zeroizing::new),
            version: 0,
            unsaved: None,
        }
    }

    fn cipher(&self) -> Option<LessSafeKey> {
        let key = self.key.as_ref()?;
        // A KEK of another length than 32 bytes never locked anything: it opens nothing.
        Some(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key).ok()?,
        ))
    }

    /// The headers of the key file at `path` (none if it does not exist or has none).
    pub(crate) fn read_headers(&self, path: &Path) -> Result<Headers, CaError> {
        match std::fs::read(path) {
            // A file that is no PEM holds no headers (whoever uses the key says what is wrong).
            Ok(bytes) => Ok(split_file(&bytes).map(|(_, h)| h).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(self.unsaved.clone().unwrap_or_default())
            }
            Err(source) => Err(CaError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The key file for the plain PKCS#8 key `key_pem` and `headers`: as given when there is
    /// nothing to add (no KEK, no header), else re-encoded with `kek-version` and the headers,
    /// the key encrypted with the KEK if any.
    pub(crate) fn seal_key_file(
        &self,
        key_pem: &[u8],
        headers: &Headers,
    ) -> Result<String, CaError> {
        if self.key.is_none() && headers.is_empty() {
            return String::from_utf8(key_pem.to_vec()).map_err(parse_err);
        }
        let plain = pem::parse(key_pem).map_err(parse_err)?;
        let (tag, contents) = match &self.key {
            None => (TAG_PLAIN, Zeroizing::new(plain.contents().to_vec())),
            Some(kek) => {
                let pkey = openssl::pkey::PKey::private_key_from_der(plain.contents())?;
                let der = pkey.private_key_to_pkcs8_passphrase(
                    openssl::symm::Cipher::aes_256_cbc(),
                    passphrase(kek).as_bytes(),
                )?;
                (TAG_ENCRYPTED, Zeroizing::new(der))
            }
        };
        let mut block = pem::Pem::new(tag, contents.as_slice());
        let map = block.headers_mut();
        map.add(HEADER_KEK_VERSION, &self.version.to_string())
            .map_err(parse_err)?;
        for (k, v) in headers {
            map.add(k, v).map_err(parse_err)?;
        }
        Ok(pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ))
    }

    /// The plain key PEM (no headers) of a key file; notes its `kek-version`. A locked file
    /// without this KEK, or with another, is [`CaError::Locked`].
    pub(crate) fn open_key_file(&mut self, file: &[u8]) -> Result<Vec<u8>, CaError> {
        let Ok(block) = pem::parse(file) else {
            // Not ours to judge here: whoever uses the key says what is wrong with it.
            return Ok(file.to_vec());
        };
        if let Some(v) = block.headers().get(HEADER_KEK_VERSION) {
            self.version = v.parse().map_err(parse_err)?;
        }
        let der = match block.tag() {
            TAG_ENCRYPTED => {
                let kek = self.key.as_ref().ok_or_else(locked)?;
                let pkey = openssl::pkey::PKey::private_key_from_pkcs8_passphrase(
                    block.contents(),
                    passphrase(kek).as_bytes(),
                )
                .map_err(|_| locked())?;
                Zeroizing::new(pkey.private_key_to_pkcs8()?)
            }
            _ if block.headers().iter().next().is_none() => return Ok(file.to_vec()),
            _ => Zeroizing::new(block.contents().to_vec()),
        };
        Ok(pem::encode_config(
            &pem::Pem::new(TAG_PLAIN, der.as_slice()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
        .into_bytes())
    }

    fn wrap(&self, name: &str, key: &[u8]) -> String {
        let mut out = Zeroizing::new(Vec::with_capacity(1 + 12 + key.len() + 16));
        match self.cipher() {
            None => {
                out.push(0);
                out.extend_from_slice(key);
            }
            Some(c) => {
                let nonce: [u8; 12] = rand::random();
                out.push(1);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(key);
                let tag = c
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(name.as_bytes()),
                        &mut out[13..],
                    )
                    .expect("ChaCha20-Poly1305 seals a 32-byte key");
                out.extend_from_slice(tag.as_ref());
            }
        }
        STANDARD.encode(out.as_slice())
    }

    fn unwrap(&self, name: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, CaError> {
        let raw = Zeroizing::new(STANDARD.decode(value).map_err(parse_err)?);
        match raw.split_first() {
            Some((0, key)) => Ok(Zeroizing::new(key.to_vec())),
            Some((1, rest)) if rest.len() > 12 => {
                let c = self.cipher().ok_or_else(locked)?;
                let (nonce, sealed) = rest.split_at(12);
                let nonce: [u8; 12] = nonce.try_into().expect("split at 12");
                let mut buf = Zeroizing::new(sealed.to_vec());
                let len = c
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(name.as_bytes()),
                        &mut buf,
                    )
                    .map_err(|_| locked())?
                    .len();
                buf.truncate(len);
                Ok(buf)
            }
            _ => Err(parse_err(format!("malformed {name} header"))),
        }
    }
}

/// A key file's PEM block and its headers other than `kek-version`.
fn split_file(bytes: &[u8]) -> Result<(pem::Pem, Headers), CaError> {
    let block = pem::parse(bytes).map_err(parse_err)?;
    let headers = block
        .headers()
        .iter()
        .filter(|(k, _)| *k != HEADER_KEK_VERSION)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok((block, headers))
}

impl KeyStore {
    /// Whether the key file on disk is encrypted with an unlock key.
    pub fn is_locked_on_disk(&self) -> Result<bool, CaError> {
        match std::fs::read(self.key_path()) {
            Ok(bytes) => Ok(pem::parse(&bytes).is_ok_and(|b| b.tag() == TAG_ENCRYPTED)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CaError::Io {
                path: self.key_path(),
                source,
            }),
        }
    }

    /// The raft data keys the key file holds, unwrapped with the unlock key.
    pub fn data_keys(&self) -> Result<StoredDataKeys, CaError> {
        let kek = self.kek();
        let headers = kek.read_headers(&self.key_path())?;
        let mut out = StoredDataKeys::default();
        for (k, v) in &headers {
            match k.as_str() {
                HEADER_DEK => out.current = Some(kek.unwrap(k, v)?),
                HEADER_DEK_PENDING => out.pending = Some(kek.unwrap(k, v)?),
                HEADER_DEK_ROTATE => out.needs_rotation = true,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Replaces the raft data keys in the key file's headers, durably.
    pub fn save_data_keys(&self, keys: &StoredDataKeys) -> Result<(), CaError> {
        let mut kek = self.kek();
        let mut wanted: Headers = Vec::new();
        if let Some(c) = &keys.current {
            wanted.push((HEADER_DEK.into(), kek.wrap(HEADER_DEK, c)));
        }
        if let Some(p) = &keys.pending {
            wanted.push((HEADER_DEK_PENDING.into(), kek.wrap(HEADER_DEK_PENDING, p)));
        }
        if keys.needs_rotation {
            wanted.push((HEADER_DEK_ROTATE.into(), "true".into()));
        }
        self.rewrite(&mut kek, |headers| {
            headers.retain(|(k, _)| {
                ![HEADER_DEK, HEADER_DEK_PENDING, HEADER_DEK_ROTATE].contains(&k.as_str())
            });
            headers.extend(wanted);
            Ok(())
        })
    }

    /// Locks the key file with `unlock_key` (or unlocks it with `None`) as of the cluster's
    /// `version` of it: the key is encrypted again and the data keys wrapped again. A version
    /// not above the current one changes nothing (an older cluster object seen late). Going
    /// from unlocked to locked marks the data key for rotation: whoever read the disk before
    /// holds the old one. Returns whether anything changed.
    pub fn set_unlock_key(
        &self,
        unlock_key: Option<Vec<u8>>,
        version: u64,
    ) -> Result<bool, CaError> {
        let mut kek = self.kek();
        let same = match (&kek.key, &unlock_key) {
            (None, None) => true,
            (Some(a), Some(b)) => a.len() == b.len() && openssl::memcmp::eq(a, b),
            _ => false,
        };
        if same || version <= kek.version {
            return Ok(false);
        }
        let path = self.key_path();
        let file = std::fs::read(&path).map_err(|source| CaError::Io {
            path: path.clone(),
            source,
        })?;
        let plain_pem = Zeroizing::new(kek.open_key_file(&file)?);
        let headers = kek.read_headers(&path)?;
        // Unwrap with the old KEK, wrap with the new one.
        let mut unwrapped = Vec::new();
        for (k, v) in &headers {
            let value = match k.as_str() {
                HEADER_DEK | HEADER_DEK_PENDING => Some(kek.unwrap(k, v)?),
                _ => None,
            };
            unwrapped.push((k.clone(), v.clone(), value));
        }
        let locking = kek.key.is_none() && unlock_key.is_some();
        let new = Kek {
            key: unlock_key.map(Zeroizing::new),
            version,
            unsaved: None,
        };
        let mut out: Headers = unwrapped
            .into_iter()
            .map(|(k, v, key)| match key {
                Some(key) => {
                    let wrapped = new.wrap(&k, &key);
                    (k, wrapped)
                }
                None => (k, v),
            })
            .collect();
        if locking && out.iter().any(|(k, _)| k == HEADER_DEK) {
            out.retain(|(k, _)| k != HEADER_DEK_ROTATE);
            out.push((HEADER_DEK_ROTATE.into(), "true".into()));
        }
        let sealed = new.seal_key_file(&plain_pem, &out)?;
        self.write_key_file(&sealed)?;
        *kek = new;
        Ok(true)
    }

    /// Whether this key store locks with an unlock key, and the version of it it knows.
    pub fn unlock_state(&self) -> (bool, u64) {
        let kek = self.kek();
        (kek.key.is_some(), kek.version)
    }

    /// Rewrites the key file's headers with `change`, keeping its key and KEK.
    fn rewrite(
        &self,
        kek: &mut Kek,
        change: impl FnOnce(&mut Headers) -> Result<(), CaError>,
    ) -> Result<(), CaError> {
        let path = self.key_path();
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut headers = kek.unsaved.take().unwrap_or_default();
                change(&mut headers)?;
                kek.unsaved = Some(headers);
                return Ok(());
            }
            Err(source) => return Err(CaError::Io { path, source }),
        };
        let (_, mut headers) = split_file(&file)?;
        let mut scratch = Kek {
            key: kek.key.clone(),
            version: kek.version,
            unsaved: None,
        };
        let plain_pem = Zeroizing::new(scratch.open_key_file(&file)?);
        change(&mut headers)?;
        let sealed = kek.seal_key_file(&plain_pem, &headers)?;
        self.write_key_file(&sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_key(dir: &Path, unlock: Option<Vec<u8>>) -> (KeyStore, Vec<u8>) {
        let key = crate::NodeKey::generate()
            .expect("key")
            .key_pem()
            .into_bytes();
        let ks = KeyStore::with_unlock_key(dir, unlock);
        ks.save(b"root", b"cert", &key).expect("save");
        (ks, key)
    }

    fn keys(n: u8) -> StoredDataKeys {
        StoredDataKeys {
            current: Some(Zeroizing::new(vec![n; 32])),
            pending: Some(Zeroizing::new(vec![n + 1; 32])),
            needs_rotation: false,
        }
    }

    #[test]
    fn unlock_keys_parse_as_swarmkit_does() {
        let k = [7u8; 32];
        let text = format_unlock_key(&k);
        assert!(
            text.starts_with("SWMKEY-1-") && text.len() == 9 + 43,
            "{text}"
        );
        assert_eq!(parse_unlock_key(&text).expect("parse"), k);
        for bad in [
            "",
            "SWMKEY-2-abc",
            "swmkey-1-AAAA",
            "SWMKEY-1-@@@@",
            "SWMKEY-1-AAAA=",
        ] {
            assert_eq!(
                parse_unlock_key(bad).map_err(|e| e.to_string()),
                Err("invalid key string".into()),
                "{bad}"
            );
        }
        // A well-formed key of another length parses; it unlocks nothing.
        assert_eq!(parse_unlock_key("SWMKEY-1-AAAA").expect("short").len(), 3);
        // As Go's RawStdEncoding (SwarmKit's swarmd takes both and unlocks with them): the last
        // character's unused bits are ignored, line breaks skipped, a lone last character is not.
        assert_eq!(parse_unlock_key("SWMKEY-1-AB").expect("trailing bits"), [0]);
        let split = format!("{}\r\n{}", &text[..20], &text[20..]);
        assert_eq!(parse_unlock_key(&split).expect("line break"), k);
        assert!(parse_unlock_key("SWMKEY-1-AAAAA").is_err());
    }

    #[test]
    fn data_keys_live_in_the_key_headers_and_survive_a_new_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (ks, key) = store_with_key(tmp.path(), None);
        assert_eq!(ks.data_keys().expect("none yet"), StoredDataKeys::default());
        ks.save_data_keys(&keys(1)).expect("save keys");
        let file = std::fs::read_to_string(ks.key_path()).expect("read");
        assert!(
            file.contains("raft-dek: ") && file.contains("raft-dek-pending: "),
            "{file}"
        );
        assert!(file.contains("kek-version: 0") && file.contains("BEGIN PRIVATE KEY"));
        // The node sees the plain key without headers.
        let m = ks.load().expect("load").expect("present");
        assert!(!String::from_utf8_lossy(&m.key_pem).contains("raft-dek"));
        crate::NodeKey::from_pem(std::str::from_utf8(&m.key_pem).expect("utf8")).expect("key");
        // A renewal writes a new key: the data keys stay.
        let key2 = crate::NodeKey::generate()
            .expect("key")
            .key_pem()
            .into_bytes();
        assert_ne!(key, key2);
        ks.save(b"root", b"cert", &key2).expect("save");
        assert_eq!(ks.data_keys().expect("keys"), keys(1));
    }

    #[test]
    fn locking_encrypts_the_key_and_wraps_the_data_keys_and_a_wrong_key_opens_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (ks, _) = store_with_key(tmp.path(), None);
        ks.save_data_keys(&keys(1)).expect("save keys");
        let plain = ks.load().expect("load").expect("present").key_pem;
        let mut kek = vec![9u8; 32];
        kek[3] = 0;
        assert!(ks.set_unlock_key(Some(kek.clone()), 5).expect("lock"));
        assert!(ks.is_locked_on_disk().expect("read"));
        let file = std::fs::read_to_string(ks.key_path()).expect("read");
        assert!(file.contains("BEGIN ENCRYPTED PRIVATE KEY") && file.contains("kek-version: 5"));
        // Going from unlocked to locked asks for a new data key.
        let mut want = keys(1);
        want.needs_rotation = true;
        assert_eq!(ks.data_keys().expect("keys"), want);
        // An older version of the cluster's key changes nothing.
        assert!(!ks.set_unlock_key(None, 4).expect("older"));

        let cold = |k: Option<Vec<u8>>| KeyStore::with_unlock_key(tmp.path(), k);
        for wrong in [
            None,
            Some(vec![8u8; 32]),
            Some(vec![0u8; 32]),
            Some(vec![9u8; 3]),
        ] {
            let e = cold(wrong).load().expect_err("locked");
            assert_eq!(e.to_string(), ERR_LOCKED);
        }
        let before = std::fs::read(ks.key_path()).expect("read");
        let opened = cold(Some(kek.clone()));
        let m = opened.load().expect("load").expect("present");
        assert_eq!(
            openssl::pkey::PKey::private_key_from_pem(&m.key_pem)
                .expect("key")
                .private_key_to_der()
                .expect("der"),
            openssl::pkey::PKey::private_key_from_pem(&plain)
                .expect("key")
                .private_key_to_der()
                .expect("der")
        );
        assert_eq!(opened.data_keys().expect("keys"), want);
        assert_eq!(
            std::fs::read(ks.key_path()).expect("read"),
            before,
            "reads change nothing"
        );

        // Rotating the unlock key, then unlocking: the data keys follow.
        let kek2 = vec![10u8; 32];
        assert!(
            opened
                .set_unlock_key(Some(kek2.clone()), 6)
                .expect("rotate")
        );
        assert_eq!(
            cold(Some(kek)).load().expect_err("old key").to_string(),
            ERR_LOCKED
        );
        let rotated = cold(Some(kek2));
        rotated.load().expect("new key");
        assert_eq!(rotated.data_keys().expect("keys"), want);
        assert!(rotated.set_unlock_key(None, 7).expect("unlock"));
        assert!(!rotated.is_locked_on_disk().expect("read"));
        let open = cold(None);
        open.load().expect("no key needed");
        assert_eq!(open.data_keys().expect("keys"), want);
        assert!(
            std::fs::read_to_string(ks.key_path())
                .expect("read")
                .contains("BEGIN PRIVATE KEY")
        );
    }
}
