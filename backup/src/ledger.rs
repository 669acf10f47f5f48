//! Lethe's own ledger, backed up like any PostgreSQL store (`pg_dump` of `ledger.url`, the same
//! compression, encryption, manifest, catalog row and retention), under the store name
//! `ledger`, which no data-map store may take. It is backed up by every backup process that
//! serves every store (`backup.stores` empty) or names `ledger` in `backup.stores`, on
//! `backups.schedule.ledger` (or the default). Its restore is a plain `pg_restore` into an
//! empty database: nothing is replayed into a ledger.

use lethe_common::Settings;
use lethe_common::datamap::{SqlStore, Store};
use lethe_common::ids::{LEDGER_STORE, StoreName};
use lethe_stores::{self as stores, ServedStore};

/// The credential name under which the ledger's URL reaches the store connector.
const LEDGER_URL: &str = "LETHE_BACKUP_LEDGER_URL";

/// Whether a process serving `wanted` (`backup.stores`; empty: every store) backs up the
/// ledger.
pub fn wanted(wanted: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w == LEDGER_STORE)
}

/// The data-map stores among `wanted`: `None` for every store of the data map, `Some(list)`
/// otherwise (possibly empty, when only the ledger is named).
pub fn data_stores(wanted: &[String]) -> Option<Vec<String>> {
    if wanted.is_empty() {
        return None;
    }
    Some(
        wanted
            .iter()
            .filter(|w| *w != LEDGER_STORE)
            .cloned()
            .collect(),
    )
}

/// The ledger as a PostgreSQL store with no collections, reached at `ledger.url`.
pub fn served(settings: &Settings) -> anyhow::Result<ServedStore> {
    let url = settings.require_ledger()?.url.clone();
    let settings = settings.clone().with_credential(LEDGER_URL, url);
    let name = StoreName::ledger();
    let store = Store::Postgres(SqlStore {
        url_env: LEDGER_URL.to_owned(),
        collections: Vec::new(),
        matching: Default::default(),
        scope: Default::default(),
    });
    let connection = stores::connect(&name, &store, &settings)?;
    let url = stores::store_url(&name, &store, &settings)?;
    Ok(ServedStore {
        name,
        store,
        connection,
        url,
    })
}
