//! Tenants and their API keys. A key is shown once, when created; the ledger keeps only its
//! prefix (to find it) and the SHA-256 of the whole key (to check it).

use std::fmt;
use std::str::FromStr;

use lethe_common::ids::{ApiKeyId, TenantId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// File requests.
    RequestsWrite,
    /// Read requests, receipts and exports.
    RequestsRead,
    /// Administer: extend deadlines, incidents.
    Admin,
}

impl Scope {
    /// The scope's name in keys and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RequestsWrite => "requests:write",
            Scope::RequestsRead => "requests:read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "requests:write" => Ok(Scope::RequestsWrite),
            "requests:read" => Ok(Scope::RequestsRead),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}` (expected requests:write, requests:read or admin)"
            )),
        }
    }
}

/// A new key: its secret text (shown once) and what the ledger stores.
#[derive(Debug)]
pub struct NewKey {
    /// The id of the key.
    pub id: ApiKeyId,
    /// The full key: `lethe_<prefix>_<secret>`.
    pub secret: String,
    /// The prefix shown in listings.
    pub prefix: String,
}

const KEY_PREFIX: &str = "lethe_";

/// Generates a key.
pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut prefix);
    rng.fill_bytes(&mut secret);
    let prefix = hex::encode(prefix);
    NewKey {
        id: ApiKeyId::new(),
        secret: format!("{KEY_PREFIX}{prefix}_{}", hex::encode(secret)),
        prefix,
    }
}

/// The stored digest of a key.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The prefix of a presented key, if it has the shape of one.
pub fn prefix_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(KEY_PREFIX)?;
    let (prefix, body) = rest.split_once('_')?;
    (prefix.len() == 12 && body.len() == 48).then_some(prefix)
}

/// Finds the tenant named `name`, creating it (with a random webhook secret) if needed.
pub async fn ensure_tenant(pool: &PgPool, name: &str) -> sqlx::Result<TenantId> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let id: TenantId = sqlx::query_scalar(
        "INSERT INTO tenant (id, name, webhook_secret) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(TenantId::new())
    .bind(name)
    .bind(hex::encode(secret))
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Creates a key for `tenant` with `scopes` and returns it (the only time its secret exists).
pub async fn create(
    pool: &PgPool,
    tenant: TenantId,
    name: &str,
    scopes: &[Scope],
) -> sqlx::Result<NewKey> {
    let key = generate();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query(
        "INSERT INTO api_key (id, tenant_id, name, prefix, secret_sha256, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.id)
    .bind(tenant)
    .bind(name)
    .bind(&key.prefix)
    .bind(digest(&key.secret))
    .bind(&scopes)
    .execute(pool)
    .await?;
    Ok(key)
}

/// Revokes the key with `prefix`; returns whether a live key was revoked.
pub async fn revoke(pool: &PgPool, prefix: &str) -> sqlx::Result<bool> {
    let revoked = sqlx::query(
        "UPDATE api_key SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(revoked > 0)
}

/// A key that checked out: whose it is and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key.
    pub key_id: ApiKeyId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the key has `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Checks a presented key against the ledger. `None` for a malformed, unknown or revoked key.
pub async fn authenticate(pool: &PgPool, secret: &str) -> sqlx::Result<Option<Principal>> {
    let Some(prefix) = prefix_of(secret) else {
        return Ok(None);
    };
    let row: Option<(ApiKeyId, TenantId, Vec<u8>, Vec<String>)> = sqlx::query_as(
        "SELECT id, tenant_id, secret_sha256, scopes FROM api_key
         WHERE prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    let Some((key_id, tenant_id, stored, scopes)) = row else {
        return Ok(None);
    };
    if !constant_time_eq(&stored, &digest(secret)) {
        return Ok(None);
    }
    // A scope this version does not know fails the check instead of being dropped unseen.
    let scopes = scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| sqlx::Error::Decode(error.into()))?;
    Ok(Some(Principal {
        key_id,
        tenant_id,
        scopes,
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate();
        assert_eq!(prefix_of(&key.secret), Some(key.prefix.as_str()));
        assert!(prefix_of("lethe_short_x").is_none());
        assert!(prefix_of("Bearer nonsense").is_none());
        assert_ne!(generate().secret, key.secret);
    }

    #[test]
    fn scopes_parse_from_their_names() {
        assert_eq!("admin".parse::<Scope>().unwrap(), Scope::Admin);
        assert!("root".parse::<Scope>().is_err());
    }
}
