//! Keyed hashes that stand in for a data subject's identifiers wherever Lethe must refer to a
//! subject without holding the identifier: log lines, metrics, minimised ledger rows.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Computes HMAC-SHA256 digests of identifiers under the deployment's secret key. Without the
/// key a digest cannot be reversed by hashing candidate emails or phone numbers.
#[derive(Clone)]
pub struct IdentityHasher {
    key: SecretString,
}

impl std::fmt::Debug for IdentityHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityHasher([REDACTED])")
    }
}

impl IdentityHasher {
    /// A hasher with the given key.
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    /// The hex digest of one identity, bound to its name so that the same string as an email
    /// and as a user id hash differently.
    pub fn digest(&self, identity: &str, value: &str) -> String {
        hex::encode(self.mac(&[identity.as_bytes(), b"\0", value.as_bytes()]))
    }

    /// A short digest for log lines (the first 16 hex characters): enough to correlate lines,
    /// too short to be worth attacking.
    pub fn log_tag(&self, identity: &str, value: &str) -> String {
        let mut digest = self.digest(identity, value);
        digest.truncate(16);
        digest
    }

    /// The raw MAC of the concatenated parts.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts a key of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.key.expose_secret().as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_key_identity_and_value() {
        let a = IdentityHasher::new(SecretString::from("a".repeat(32)));
        let b = IdentityHasher::new(SecretString::from("b".repeat(32)));
        let x = a.digest("email", "x@example.com");
        assert_eq!(x, a.digest("email", "x@example.com"));
        assert_ne!(x, b.digest("email", "x@example.com"));
        assert_ne!(x, a.digest("phone", "x@example.com"));
        assert!(!x.contains("example"));
        assert_eq!(a.log_tag("email", "x@example.com").len(), 16);
    }
}
