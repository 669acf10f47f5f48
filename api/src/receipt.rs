//! Erasure receipts, signed with Ed25519 so that anyone holding the published key can check
//! them without trusting Lethe's API: the receipt's exact bytes travel base64-encoded next to
//! the signature.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Signs receipts.
pub struct ReceiptSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiptSigner({})", self.key_id)
    }
}

/// A receipt key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "api.receipt_signing_key must be 32 random bytes in base64 (e.g. `head -c 32 /dev/urandom | base64`)"
)]
pub struct BadKey;

/// A signed document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Signed {
    /// The receipt, for reading.
    #[schema(value_type = Object)]
    pub receipt: serde_json::Value,
    /// The exact signed bytes of the receipt, base64.
    pub payload: String,
    /// The Ed25519 signature of `payload`'s bytes, base64.
    pub signature: String,
    /// Always `Ed25519`.
    pub algorithm: &'static str,
    /// Which key signed (see `GET /v1/receipt-key`).
    pub key_id: String,
}

/// The public half of the receipt key.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicKey {
    /// Always `Ed25519`.
    pub algorithm: &'static str,
    /// The key's id.
    pub key_id: String,
    /// The raw 32-byte public key, base64.
    pub public_key: String,
    /// The key as a PEM `PUBLIC KEY`, for `openssl pkeyutl -verify -pubin -rawin`.
    pub public_key_pem: String,
}

impl ReceiptSigner {
    /// A signer from a base64 32-byte seed.
    pub fn from_seed(seed: &SecretString) -> Result<Self, BadKey> {
        let seed = STANDARD
            .decode(seed.expose_secret().trim())
            .map_err(|_| BadKey)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| BadKey)?;
        let key_id = hex::encode(&Sha256::digest(pair.public_key().as_ref())[..8]);
        Ok(Self { pair, key_id })
    }

    /// Signs `receipt`.
    pub fn sign<T: Serialize>(&self, receipt: &T) -> Result<Signed, serde_json::Error> {
        let bytes = serde_json::to_vec(receipt)?;
        let signature = self.pair.sign(&bytes);
        Ok(Signed {
            receipt: serde_json::from_slice(&bytes)?,
            payload: STANDARD.encode(&bytes),
            signature: STANDARD.encode(signature.as_ref()),
            algorithm: "Ed25519",
            key_id: self.key_id.clone(),
        })
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        let raw = self.pair.public_key().as_ref();
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(raw);
        PublicKey {
            algorithm: "Ed25519",
            key_id: self.key_id.clone(),
            public_key: STANDARD.encode(raw),
            public_key_pem: format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(der)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    #[test]
    fn a_receipt_verifies_with_the_published_key_and_not_when_altered() {
        let signer =
            ReceiptSigner::from_seed(&SecretString::from(STANDARD.encode([7u8; 32]))).unwrap();
        let signed = signer
            .sign(&serde_json::json!({"request_id": "r", "remaining": 0}))
            .unwrap();
        let key = STANDARD.decode(signer.public_key().public_key).unwrap();
        let payload = STANDARD.decode(&signed.payload).unwrap();
        let signature = STANDARD.decode(&signed.signature).unwrap();
        let verifier = UnparsedPublicKey::new(&ED25519, key);
        assert!(verifier.verify(&payload, &signature).is_ok());
        let mut altered = payload.clone();
        altered[5] ^= 1;
        assert!(verifier.verify(&altered, &signature).is_err());
        assert!(ReceiptSigner::from_seed(&SecretString::from("short")).is_err());
    }
}
