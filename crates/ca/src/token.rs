//! Join tokens: `SWMTKN-1-<root CA digest, base36, 50 chars>-<secret, base36, 25 chars>`
//! (spec 5.10); v2 tokens (`SWMTKN-2-<fips 0|1>-…`) are read but never made. The digest lets a joiner check the CA it talks to before it sends anything
//! secret; the secret decides the role. Tokens are compared in constant time.

use std::fmt;

use api::naming::base36;
use sha2::{Digest, Sha256};

use crate::{CaError, RootCa};

const PREFIX: &str = "SWMTKN";
const DIGEST_WIDTH: usize = 50;
const SECRET_WIDTH: usize = 25;

/// A new token for `root`: the root's digest and 16 fresh random bytes.
pub fn generate_join_token(root: &RootCa) -> String {
    let mut secret = [0u8; 16];
    rand::fill(&mut secret);
    format!(
        "{PREFIX}-1-{}-{}",
        base36(&root.digest(), DIGEST_WIDTH),
        base36(&secret, SECRET_WIDTH)
    )
}

/// A token taken apart. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// Token format version: 1 (`SWMTKN-1-…`) or 2 (`SWMTKN-2-<fips>-…`).
    pub version: u8,
    /// The root CA digest the token names (SHA-256 of the root certificate PEM).
    pub digest: [u8; 32],
    /// The secret part, as written (base36, 25 characters).
    pub secret: String,
    /// A v2 token of a cluster that mandates FIPS.
    pub fips: bool,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("version", &self.version)
            .field("digest", &self.digest_hex())
            .field("secret", &"<redacted>")
            .field("fips", &self.fips)
            .finish()
    }
}

/// The value of a base36 numeral (either case, as Go's `big.Int` reads it) as 32 big-endian
/// bytes; `None` for a non-digit or a value of more than 256 bits.
fn decode_base36_256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for c in s.chars() {
        let mut carry = c.to_digit(36)?;
        for b in out.iter_mut().rev() {
            let acc = u32::from(*b) * 36 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out)
}

impl ParsedToken {
    /// Parses `SWMTKN-1-<digest>-<secret>` or `SWMTKN-2-<0|1>-<digest>-<secret>`; anything
    /// else is `invalid join token`.
    pub fn parse(token: &str) -> Result<ParsedToken, CaError> {
        let parts: Vec<&str> = token.split('-').collect();
        let (version, fips, digest, secret) = match parts.as_slice() {
            [PREFIX, "1", digest, secret] => (1, false, *digest, *secret),
            [PREFIX, "2", fips @ ("0" | "1"), digest, secret] => {
                (2, *fips == "1", *digest, *secret)
            }
            _ => return Err(CaError::InvalidToken),
        };
        if digest.len() != DIGEST_WIDTH || secret.len() != SECRET_WIDTH {
            return Err(CaError::InvalidToken);
        }
        let digest = decode_base36_256(digest).ok_or(CaError::InvalidToken)?;
        Ok(ParsedToken {
            version,
            digest,
            secret: secret.to_string(),
            fips,
        })
    }

    /// The digest as lowercase hex: what `remote CA does not match fingerprint. Expected: …`
    /// shows.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// Whether the token's digest is that of `root`.
    pub fn matches_root(&self, root: &RootCa) -> bool {
        bytes_equal(&self.digest, &root.digest())
    }

    /// Whether `pem` (a root CA certificate as a remote manager sent it) has the token's digest.
    pub fn matches_pem(&self, pem: &[u8]) -> bool {
        let d = Sha256::digest(pem);
        bytes_equal(&self.digest, &d[..])
    }
}

fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    bytes_equal(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format_and_digest() {
        let root = RootCa::generate().expect("root");
        let t = generate_join_token(&root);
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4, "{t}");
        assert_eq!(&parts[..2], &["SWMTKN", "1"]);
        assert_eq!(parts[2], base36(&root.digest(), 50));
        assert_eq!(parts[3].len(), 25);
        let parsed = ParsedToken::parse(&t).expect("parse");
        assert_eq!(parsed.version, 1);
        assert!(!parsed.fips);
        assert_eq!(parsed.digest, root.digest());
        assert_eq!(parsed.secret, parts[3]);
        assert_eq!(format!("sha256:{}", parsed.digest_hex()), root.cert_hash());
        assert!(parsed.matches_root(&root));
        assert!(parsed.matches_pem(root.cert_pem()));
        let other = RootCa::generate().expect("root");
        assert!(!parsed.matches_root(&other));
        assert!(!parsed.matches_pem(other.cert_pem()));
        // Same root, new secret; same digest part.
        let t2 = generate_join_token(&root);
        assert_ne!(t, t2);
        assert_eq!(
            ParsedToken::parse(&t2).expect("parse").digest,
            parsed.digest
        );
        assert!(!format!("{parsed:?}").contains(&parsed.secret));
    }

    #[test]
    fn base36_digest_round_trips() {
        for bytes in [[0u8; 32], [0xff; 32], {
            let mut b = [0u8; 32];
            b[31] = 35;
            b[0] = 1;
            b
        }] {
            let text = base36(&bytes, 50);
            assert_eq!(decode_base36_256(&text), Some(bytes));
            assert_eq!(decode_base36_256(&text.to_uppercase()), Some(bytes));
        }
        // 36^50 - 1 is more than 256 bits.
        assert_eq!(decode_base36_256(&"z".repeat(50)), None);
        assert_eq!(decode_base36_256("12_"), None);
    }

    #[test]
    fn v2_tokens_parse() {
        let root = RootCa::generate().expect("root");
        let v1 = generate_join_token(&root);
        let rest = v1.strip_prefix("SWMTKN-1-").expect("v1 prefix");
        let fips = ParsedToken::parse(&format!("SWMTKN-2-1-{rest}")).expect("fips v2");
        assert_eq!((fips.version, fips.fips), (2, true));
        assert!(fips.matches_root(&root));
        let plain = ParsedToken::parse(&format!("SWMTKN-2-0-{rest}")).expect("v2");
        assert_eq!((plain.version, plain.fips), (2, false));
        for bad in [
            format!("SWMTKN-2-2-{rest}"),
            format!("SWMTKN-2-{rest}"),
            format!("SWMTKN-1-1-{rest}"),
        ] {
            assert!(
                matches!(ParsedToken::parse(&bad), Err(CaError::InvalidToken)),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        for bad in [
            "",
            "SWMTKN-1",
            "SWMTKN-2-abc-def",
            "SWMTKN-1-short-0000000000000000000000000",
            &format!("SWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(24)),
            &format!("SWMTKN-1-{}-{}", "#".repeat(50), "0".repeat(25)),
            &format!("SWMTKN-1-{}-{}", "z".repeat(50), "0".repeat(25)),
            &format!("XWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25)),
            &format!("SWMTKN-3-{}-{}", "0".repeat(50), "0".repeat(25)),
        ] {
            let err = ParsedToken::parse(bad).expect_err(bad);
            assert_eq!(err.to_string(), "invalid join token");
        }
        assert!(
            ParsedToken::parse(&format!("SWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25))).is_ok()
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(!tokens_equal("", "a"));
        assert!(tokens_equal("", ""));
    }
}
