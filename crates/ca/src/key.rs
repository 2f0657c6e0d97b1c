//! A node's own key pair and the CSR it sends to the CA. The key never leaves the node.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::CaError;

/// An ECDSA P-256 key, PEM (PKCS#8).
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A new random key.
    pub fn generate() -> Result<NodeKey, CaError> {
        Ok(NodeKey {
            key: KeyPair::generate()?,
        })
    }

    /// A key read back from PEM.
    pub fn from_pem(pem: &str) -> Result<NodeKey, CaError> {
        Ok(NodeKey {
            key: KeyPair::from_pem(pem)?,
        })
    }

    /// The key, PEM (PKCS#8, `PRIVATE KEY` block).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key bits, to compare with an issued certificate's.
    pub fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    /// A CSR for this key. Its subject is a placeholder: the CA decides the real one.
    pub fn csr_pem(&self) -> Result<String, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-node");
        params.distinguished_name = dn;
        Ok(params.serialize_request(&self.key)?.pem()?)
    }
}
