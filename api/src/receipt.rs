//! Erasure receipts, signed with Ed25519 so that anyone holding the published key can check
//! them without trusting Lethe's API: the receipt's exact bytes travel base64-encoded next to
//! the signature.
//!
//! What a receipt certifies (DESIGN §11): whether anything of the subject was found at all,
//! the identity closure that was searched (rounds and hops across stores, identity kinds and
//! counts, never values), per store the kinds it was searched with, what it erased and that
//! querying it again found nothing left, and every collection kept masked or retained with
//! the legal basis the data map states.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use chrono::{DateTime, Utc};
use lethe_common::datamap::{DataMap, EraseStrategy, Store};
use lethe_common::ids::{RequestId, StoreName, TenantId};
use lethe_common::messages::TaskKind;

use crate::closure::Closure;
use crate::requests::{RequestRow, TaskRow};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
pub(crate) const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The id of a raw Ed25519 public key: the first 8 bytes of its SHA-256, hex.
pub(crate) fn key_id_of(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

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
        let key_id = key_id_of(pair.public_key().as_ref());
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

    /// Signs `bytes` as they are (audit checkpoints); the signature, base64.
    pub fn sign_bytes(&self, bytes: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(bytes).as_ref())
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    pub fn raw_public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
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

/// The content of an erasure receipt (version 2: `found`, `closure`, `hops`, `searched_with`
/// and `kept` were added to version 1).
#[derive(Debug, Serialize)]
pub struct Receipt {
    version: u32,
    request_id: RequestId,
    tenant_id: TenantId,
    kind: &'static str,
    /// A dry run: `counts` are what the erasure would delete or mask; nothing was changed
    /// (so `remaining` is absent). Present only on dry runs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    subject_hash: String,
    received_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    /// Whether any store held anything of the subject; `false` certifies that the identities,
    /// and every identity they led to, matched nothing anywhere.
    found: Option<bool>,
    /// Values per identity kind the stores were searched with, after the closure.
    identities: BTreeMap<String, u64>,
    /// Every resolve round, per store: kinds searched with, new kinds found.
    closure: Option<Closure>,
    /// The hops of the closure: in which round which store turned which kinds into which new
    /// ones.
    hops: Vec<Hop>,
    stores: Vec<ReceiptStore>,
    /// Collections kept, masked or whole, and why.
    kept: Vec<Kept>,
    issued_at: DateTime<Utc>,
}

/// One derivation step of the closure.
#[derive(Debug, Serialize)]
struct Hop {
    round: u32,
    store: String,
    from: BTreeMap<String, u64>,
    to: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct ReceiptStore {
    store: String,
    task: String,
    /// Values per identity kind the store was searched with.
    searched_with: BTreeMap<String, u64>,
    counts: BTreeMap<String, u64>,
    remaining: Option<i64>,
    finished_at: Option<DateTime<Utc>>,
}

/// A collection the erasure keeps.
#[derive(Debug, Serialize)]
struct Kept {
    store: String,
    collection: String,
    /// `mask` (the rows stay with the named fields overwritten) or `retain` (unchanged).
    handling: &'static str,
    /// The masked fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    masked: Vec<String>,
    /// The legal basis the data map states (`retain`); absent when it states none.
    legal_basis: Option<String>,
}

impl Receipt {
    /// The receipt of the completed erasure `row`, whose tasks are `tasks`, under `map`.
    pub fn build(row: &RequestRow, tasks: Vec<TaskRow>, map: &DataMap, now: DateTime<Utc>) -> Self {
        let closure = row.closure.as_ref().map(|j| j.0.clone());
        let identities = closure
            .as_ref()
            .map(|c| c.identities.clone())
            .unwrap_or_default();
        let hops = closure
            .iter()
            .flat_map(|c| &c.rounds)
            .flat_map(|round| {
                round
                    .stores
                    .iter()
                    .filter(|(_, hop)| !hop.found.is_empty())
                    .map(|(store, hop)| Hop {
                        round: round.round,
                        store: store.clone(),
                        from: hop.searched.clone(),
                        to: hop.found.clone(),
                    })
            })
            .collect();
        let stores = tasks
            .into_iter()
            .filter(|t| t.kind == TaskKind::Erase)
            .map(|t| {
                let kinds = StoreName::parse(&t.store)
                    .map(|name| lethe_common::coverage::search_kinds(map, &name))
                    .unwrap_or_default();
                ReceiptStore {
                    searched_with: identities
                        .iter()
                        .filter(|(kind, _)| kinds.contains(*kind))
                        .map(|(kind, n)| (kind.clone(), *n))
                        .collect(),
                    store: t.store,
                    task: t.kind.as_str().to_owned(),
                    counts: t.counts.0,
                    remaining: t.remaining,
                    finished_at: t.finished_at,
                }
            })
            .collect();
        Receipt {
            version: 2,
            request_id: row.id,
            tenant_id: row.tenant_id,
            kind: "erasure",
            dry_run: row.dry_run,
            subject_hash: row.identity_hash.clone(),
            received_at: row.received_at,
            completed_at: row.completed_at,
            found: row.found,
            identities,
            closure,
            hops,
            stores,
            kept: kept(map),
            issued_at: now,
        }
    }
}

/// Every collection of `map` that an erasure keeps, masked or whole.
fn kept(map: &DataMap) -> Vec<Kept> {
    map.stores
        .iter()
        .flat_map(|(name, store)| match store {
            Store::Postgres(sql) | Store::Mysql(sql) => sql
                .collections
                .iter()
                .filter_map(|c| {
                    let (handling, masked) = match &c.erase {
                        EraseStrategy::Delete => return None,
                        EraseStrategy::Retain => ("retain", Vec::new()),
                        EraseStrategy::Mask(columns) => ("mask", columns.keys().cloned().collect()),
                    };
                    Some(Kept {
                        store: name.as_str().to_owned(),
                        collection: c.table.clone(),
                        handling,
                        masked,
                        legal_basis: c.retain.clone(),
                    })
                })
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
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
