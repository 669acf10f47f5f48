//! Tenant names by id, for the tasks that carry the filing tenant (a tenant-scoped data map
//! matches rows by the tenant's name). No command renames a tenant, so each name is read from
//! the ledger once per process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use lethe_common::ids::TenantId;

/// A process-wide cache of tenant names.
#[derive(Debug, Clone, Default)]
pub struct TenantNames(Arc<RwLock<HashMap<TenantId, String>>>);

impl TenantNames {
    /// The name of tenant `id`, from the cache or the ledger.
    pub async fn get<'e, E>(&self, executor: E, id: TenantId) -> sqlx::Result<String>
    where
        E: sqlx::PgExecutor<'e>,
    {
        // A poisoned lock only loses the cache: the ledger answers instead.
        if let Some(name) = self.0.read().ok().and_then(|names| names.get(&id).cloned()) {
            return Ok(name);
        }
        let name: String = sqlx::query_scalar("SELECT name FROM tenant WHERE id = $1")
            .bind(id)
            .fetch_one(executor)
            .await?;
        if let Ok(mut names) = self.0.write() {
            names.insert(id, name.clone());
        }
        Ok(name)
    }
}
