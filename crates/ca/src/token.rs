//! Join tokens: `SWMTKN-1-<root CA digest, base36, 50 chars>-<secret, base36, 25 chars>`
//! (spec 5.10). The digest lets a joiner check the CA it talks to before it sends anything
//! secret; the secret decides the role. Tokens are compared in constant time.

use std::fmt;

use api::naming::base36;

use crate::{CaError, RootCa};

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const DIGEST_WIDTH: usize = 50;
const SECRET_WIDTH: usize = 25;

/// A new token for `root`: the root's digest and 16 fresh random bytes.
pub fn generate_join_token(root: &RootCa) -> String {
    let mut secret = [0u8; 16];
    rand::fill(&mut secret);
    format!(
        "{PREFIX}-{VERSION}-{}-{}",
        base36(&root.digest(), DIGEST_WIDTH),
        base36(&secret, SECRET_WIDTH)
    )
}

/// A token taken apart. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The root CA digest part, as written (base36).
    pub digest: String,
    /// The secret part (base36).
    pub secret: String,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn is_base36(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

impl ParsedToken {
    /// Parses `SWMTKN-1-<digest>-<secret>`; anything else is `invalid join token`.
    pub fn parse(token: &str) -> Result<ParsedToken, CaError> {
        let parts: Vec<&str> = token.split('-').collect();
        match parts.as_slice() {
            [PREFIX, VERSION, digest, secret]
                if digest.len() == DIGEST_WIDTH
                    && secret.len() == SECRET_WIDTH
                    && is_base36(digest)
                    && is_base36(secret) =>
            {
                Ok(ParsedToken {
                    digest: digest.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(CaError::InvalidToken),
        }
    }

    /// Whether the token's digest is that of `root`.
    pub fn matches_root(&self, root: &RootCa) -> bool {
        tokens_equal(&self.digest, &base36(&root.digest(), DIGEST_WIDTH))
    }
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        assert_eq!(parts[2].len(), 50);
        assert_eq!(parts[3].len(), 25);
        let parsed = ParsedToken::parse(&t).expect("parse");
        assert!(parsed.matches_root(&root));
        let other = RootCa::generate().expect("root");
        assert!(!parsed.matches_root(&other));
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
    fn malformed_tokens_are_invalid() {
        for bad in [
            "",
            "SWMTKN-1",
            "SWMTKN-2-abc-def",
            "SWMTKN-1-short-0000000000000000000000000",
            &format!("SWMTKN-1-{}-{}", "A".repeat(50), "0".repeat(25)),
            &format!("XWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25)),
        ] {
            assert!(
                matches!(ParsedToken::parse(bad), Err(CaError::InvalidToken)),
                "{bad}"
            );
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
    }
}
