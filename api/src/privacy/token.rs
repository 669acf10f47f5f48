//! The secrets in the privacy center's links: random, URL-safe, and kept in the ledger only as
//! their SHA-256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use url::Url;

/// A new 256-bit token.
pub fn new() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the ledger keeps of a token.
pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// `base` joined with `path` (a relative path under the public address).
pub fn link(base: &Url, path: &str) -> String {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    base.join(path)
        .map_or_else(|_| format!("{base}{path}"), String::from)
}
