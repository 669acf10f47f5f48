//! The public half of the receipt key, which checks checkpoints' signatures.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lethe_common::anchors::Checkpoint;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::receipt::{ReceiptSigner, SPKI_PREFIX, key_id_of};

/// Checks that a checkpoint was signed with the receipt key.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    raw: Vec<u8>,
    key_id: String,
}

impl VerifyingKey {
    /// The public half of the configured signing key.
    pub fn of(signer: &ReceiptSigner) -> Self {
        Self::from_raw(signer.raw_public_key())
    }

    /// A raw 32-byte Ed25519 public key.
    fn from_raw(raw: Vec<u8>) -> Self {
        let key_id = key_id_of(&raw);
        Self { raw, key_id }
    }

    /// A PEM `PUBLIC KEY` (Ed25519 SubjectPublicKeyInfo), as `GET /v1/receipt-key` gives it in
    /// `public_key_pem` and `openssl pkey -pubout` writes it.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let body: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PUBLIC KEY-----")
            .collect();
        if body.is_empty() {
            return Err("no PEM `PUBLIC KEY` block".to_owned());
        }
        let der = STANDARD
            .decode(body)
            .map_err(|_| "the PEM block is not base64".to_owned())?;
        match der.strip_prefix(SPKI_PREFIX.as_slice()) {
            Some(raw) if raw.len() == 32 => Ok(Self::from_raw(raw.to_vec())),
            _ => Err("not an Ed25519 public key".to_owned()),
        }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `checkpoint` was signed by this key; the error says what does not hold.
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        if checkpoint.key_id != self.key_id {
            return Err(format!(
                "signed by key {}, not by this receipt key ({})",
                checkpoint.key_id, self.key_id
            ));
        }
        let signature = STANDARD
            .decode(&checkpoint.signature)
            .map_err(|_| "its signature is not base64".to_owned())?;
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(&checkpoint.payload(), &signature)
            .map_err(|_| "its signature does not match its content".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use secrecy::SecretString;

    use super::*;

    fn signer() -> ReceiptSigner {
        ReceiptSigner::from_seed(&SecretString::from(STANDARD.encode([7u8; 32]))).unwrap()
    }

    fn signed(signer: &ReceiptSigner, chain_pos: i64) -> Checkpoint {
        let at = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
        let head_hash = "cd".repeat(32);
        Checkpoint {
            chain_pos,
            signature: signer.sign_bytes(&Checkpoint::signed_bytes(chain_pos, &head_hash, at)),
            head_hash,
            at,
            key_id: signer.key_id().to_owned(),
        }
    }

    #[test]
    fn a_checkpoint_checks_against_the_published_pem_and_not_once_changed() {
        let signer = signer();
        let key = VerifyingKey::from_pem(&signer.public_key().public_key_pem).unwrap();
        assert_eq!(key.key_id(), signer.key_id());
        let checkpoint = signed(&signer, 9);
        assert_eq!(key.check(&checkpoint), Ok(()));
        let moved = Checkpoint {
            chain_pos: 10,
            ..checkpoint.clone()
        };
        assert!(key.check(&moved).unwrap_err().contains("does not match"));
        let other =
            ReceiptSigner::from_seed(&SecretString::from(STANDARD.encode([8u8; 32]))).unwrap();
        assert!(
            key.check(&signed(&other, 9))
                .unwrap_err()
                .contains("not by this receipt key")
        );
    }

    #[test]
    fn a_pem_that_is_no_ed25519_key_is_refused() {
        assert!(VerifyingKey::from_pem("hello").is_err());
        let rsa_like = "-----BEGIN PUBLIC KEY-----\nMAoGCCqGSM49AwEH\n-----END PUBLIC KEY-----\n";
        assert!(VerifyingKey::from_pem(rsa_like).is_err());
    }
}
