//! What start-up checks before connecting: the policies, the schedule and the stores whose
//! log tables are pruned.

use crate::settings::RetentionSettings;
use lethe_common::Settings;
use lethe_common::datamap::DataMap;
use lethe_common::ids::StoreName;
use lethe_common::privacy::IdentityHasher;
use lethe_common::schedule::Schedule;
use lethe_stores::{self as stores, ServedStore};
use lethe_stores::{Connector, LogTableRef};
use secrecy::SecretString;
use uuid::Uuid;

/// Everything start-up checks before connecting: the policies, the schedule, the data map and
/// the credentials of the stores whose log tables this process prunes.
pub struct Plan {
    /// `[retention]`.
    pub settings: RetentionSettings,
    /// When runs start by themselves.
    pub schedule: Schedule,
    /// The backups' key prefix (`backups.prefix`).
    pub backups_prefix: String,
    /// The stores whose log tables are pruned, with their log tables.
    pub logs: Vec<LogStore>,
}

/// A store with log tables.
pub struct LogStore {
    /// The store.
    pub store: StoreName,
    /// Its connector.
    pub connector: Connector,
    /// Its log tables.
    pub tables: Vec<LogTableRef>,
}

impl Plan {
    /// Checks the configuration; every error names the key at fault.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let retention: RetentionSettings = settings.section()?;
        let schedule = Schedule::parse(&retention.schedule)
            .map_err(|e| anyhow::anyhow!("retention.schedule: {e}"))?;
        let map = DataMap::load(&settings.data_map_path()?)?;
        let wanted: Vec<String> = if retention.stores.is_empty() {
            map.stores
                .iter()
                .filter(|(_, store)| has_log_tables(store))
                .map(|(name, _)| name.to_string())
                .collect()
        } else {
            retention.stores.clone()
        };
        let served: Vec<ServedStore> = if wanted.is_empty() {
            Vec::new()
        } else {
            stores::served(&map, &wanted, settings)?
        };
        // Log pruning never hashes; a deployment without `[privacy]` still prunes.
        let hasher = IdentityHasher::new(match &settings.privacy {
            Some(privacy) => privacy.hash_key.clone(),
            None => SecretString::from(format!("{}{}", Uuid::new_v4(), Uuid::new_v4())),
        });
        let mut logs = Vec::new();
        for store in &served {
            let connector = Connector::new(store, hasher.clone())?;
            let tables = connector.log_tables();
            if !tables.is_empty() {
                logs.push(LogStore {
                    store: store.name.clone(),
                    connector,
                    tables,
                });
            }
        }
        if let Some(reason) = &retention.backups_max_age_override
            && retention.backups_max_age > crate::settings::BACKUP_CEILING
        {
            tracing::warn!(
                backups_max_age_s = retention.backups_max_age.as_secs(),
                reason = %reason,
                "backups are kept longer than the 7-day ceiling (retention.backups_max_age_override)"
            );
        }
        Ok(Self {
            settings: retention,
            schedule,
            backups_prefix: settings.backups_prefix()?,
            logs,
        })
    }
}

fn has_log_tables(store: &lethe_common::datamap::Store) -> bool {
    use lethe_common::datamap::Store;
    match store {
        Store::Postgres(sql) | Store::Mysql(sql) => sql.collections.iter().any(|c| c.log.is_some()),
        Store::Redis(_) | Store::S3(_) | Store::Http(_) => false,
    }
}
