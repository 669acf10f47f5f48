//! The breach register's census: how many distinct subjects one store holds, per tenant.
//! Counts only: the statement returns one row per tenant, never an identifier.
//!
//! Method, for a relational store:
//!
//! 1. The **key identity** is the identity the collection declaring `tenant` provides (or, if it
//!    provides none, the first it is matched by; of several collections declaring `tenant`, the
//!    first that provides an identity); without a `tenant` collection, the identity
//!    that the most collections of the store are matched by.
//! 2. The store's **subjects** are the distinct non-null values of that identity across every
//!    collection that has a column for it (`UNION` of the columns, as text so the types of the
//!    columns need not agree). Collections without such a column are named in `method` and not
//!    counted.
//! 3. Each subject is **attributed** to the tenant that the `tenant` collection's row with the
//!    same key names. Subjects without such a row, or whose tenant is null or blank, are
//!    `unattributed`; without a `tenant` collection, every subject is.
//!
//! Key-value and object stores (Redis, S3) are not counted: their keys name subjects but no
//! tenant, and counting them would mean listing every key. The reply says so.

use std::collections::BTreeMap;

use lethe_common::datamap::{Collection, Store};
use lethe_common::messages::CensusReply;

use crate::connection::{ServedStore, StoreConnection};
use crate::sql::Dialect;

/// The statement that counts one SQL store, and how it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CensusPlan {
    statement: String,
    method: String,
    attributed: bool,
}

/// The column of `identity` in `collection`, derived (`provides`) or matched.
fn column_of<'c>(collection: &'c Collection, identity: &str) -> Option<&'c str> {
    collection
        .provides
        .get(identity)
        .or_else(|| collection.matches.get(identity))
        .map(String::as_str)
}

/// The identity that the most collections have a column for (ties: the first by name).
fn most_common_identity(collections: &[Collection]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for collection in collections {
        for identity in collection.matches.keys().chain(collection.provides.keys()) {
            *counts.entry(identity.as_str()).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(identity, _)| identity.to_owned())
}

fn plan(dialect: Dialect, collections: &[Collection]) -> Option<CensusPlan> {
    let text = match dialect {
        Dialect::Postgres => "text",
        Dialect::Mysql => "CHAR",
    };
    // Several collections may name their rows' tenant (a tenant-scoped deployment filters
    // each by it); subjects are attributed through the one holding accounts: the first that
    // provides an identity, else the first.
    let tenant_collection = collections
        .iter()
        .find(|c| c.tenant.is_some() && !c.provides.is_empty())
        .or_else(|| collections.iter().find(|c| c.tenant.is_some()));
    let identity = match tenant_collection {
        Some(t) => t
            .provides
            .keys()
            .next()
            .or_else(|| t.matches.keys().next())
            .cloned()?,
        None => most_common_identity(collections)?,
    };
    let mut selects = Vec::new();
    let mut counted = Vec::new();
    let mut skipped = Vec::new();
    for collection in collections {
        match column_of(collection, &identity) {
            Some(column) => {
                let column = dialect.ident(column);
                selects.push(format!(
                    "SELECT CAST({column} AS {text}) AS subject FROM {} WHERE {column} IS NOT NULL",
                    dialect.table(&collection.table)
                ));
                counted.push(collection.table.clone());
            }
            None => skipped.push(collection.table.clone()),
        }
    }
    if selects.is_empty() {
        return None;
    }
    let subjects = selects.join(" UNION ");
    let (statement, attribution) = match tenant_collection {
        Some(t) => {
            let key = dialect.ident(column_of(t, &identity)?);
            let tenant = dialect.ident(t.tenant.as_deref()?);
            (
                format!(
                    "SELECT x.tenant, count(DISTINCT s.subject) FROM ({subjects}) s \
                     LEFT JOIN (SELECT CAST({key} AS {text}) AS subject, CAST({tenant} AS {text}) AS tenant \
                     FROM {table}) x ON x.subject = s.subject GROUP BY x.tenant",
                    table = dialect.table(&t.table),
                ),
                format!(
                    "attributed through {}.{}",
                    t.table,
                    t.tenant.as_deref().unwrap_or_default()
                ),
            )
        }
        None => (
            format!("SELECT CAST(NULL AS {text}), count(*) FROM ({subjects}) s"),
            "no collection names the tenant: every subject is unattributed".to_owned(),
        ),
    };
    let mut method = format!(
        "distinct `{identity}` across {}; {attribution}",
        counted.join(", ")
    );
    if !skipped.is_empty() {
        method.push_str(&format!(
            "; not counted (no `{identity}` column): {}",
            skipped.join(", ")
        ));
    }
    Some(CensusPlan {
        statement,
        method,
        attributed: tenant_collection.is_some(),
    })
}

/// Folds the statement's rows into a reply: blank and null tenants are unattributed.
fn fold(store: &str, plan: CensusPlan, rows: Vec<(Option<String>, i64)>) -> CensusReply {
    let mut reply = CensusReply {
        store: store.to_owned(),
        counted: true,
        attributed: plan.attributed,
        method: plan.method,
        ..CensusReply::default()
    };
    for (tenant, count) in rows {
        let count = u64::try_from(count).unwrap_or(0);
        match tenant.filter(|t| !t.trim().is_empty()) {
            Some(tenant) => *reply.tenants.entry(tenant).or_default() += count,
            None => reply.unattributed += count,
        }
    }
    reply
}

/// A census that could not be made, and why (never a value of the store).
fn uncounted(store: &str, method: impl Into<String>, error: Option<String>) -> CensusReply {
    CensusReply {
        store: store.to_owned(),
        counted: false,
        method: method.into(),
        error,
        ..CensusReply::default()
    }
}

/// Describes a failed census statement by kind and SQLSTATE: a server's own message could
/// quote a value.
fn describe(error: &sqlx::Error) -> String {
    match error.as_database_error().and_then(|e| e.code()) {
        Some(code) => format!("the census statement failed (SQLSTATE {code})"),
        None => match crate::sql::describe_non_database(error) {
            crate::sql::Fault::Transient(what) => format!("the store is unreachable: {what}"),
            crate::sql::Fault::Permanent { detail, .. } => detail,
        },
    }
}

/// Counts the distinct subjects `served` holds per tenant (see the module documentation for
/// the method). Failures are part of the reply (`counted = false`, `error`), so the breach
/// register records why a store has no count.
pub async fn count(served: &ServedStore) -> CensusReply {
    let store = served.name.as_str();
    match (&served.store, &served.connection) {
        (Store::Postgres(sql), StoreConnection::Postgres(pool)) => {
            count_sql(store, Dialect::Postgres, &sql.collections, pool).await
        }
        (Store::Mysql(sql), StoreConnection::Mysql(pool)) => {
            count_sql(store, Dialect::Mysql, &sql.collections, pool).await
        }
        (Store::Redis(_), _) | (Store::S3(_), _) => uncounted(
            store,
            "key-value and object stores are not counted: their keys name subjects but no tenant",
            None,
        ),
        (Store::Http(_), _) => uncounted(
            store,
            "processors are not counted: counting would mean listing every customer of the service",
            None,
        ),
        _ => uncounted(
            store,
            "not counted",
            Some("the store's connection is not of the kind its data-map entry names".to_owned()),
        ),
    }
}

/// Counts an SQL store's subjects over `pool`, of either dialect.
async fn count_sql<DB>(
    store: &str,
    dialect: Dialect,
    collections: &[Collection],
    pool: &sqlx::Pool<DB>,
) -> CensusReply
where
    DB: sqlx::Database,
    for<'r> (Option<String>, i64): sqlx::FromRow<'r, DB::Row>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let Some(plan) = plan(dialect, collections) else {
        return uncounted(store, "no collection to count", None);
    };
    match sqlx::query_as::<DB, (Option<String>, i64)>(&plan.statement)
        .fetch_all(pool)
        .await
    {
        Ok(rows) => fold(store, plan, rows),
        Err(error) => uncounted(store, plan.method, Some(describe(&error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_common::datamap::DataMap;

    fn collections(text: &str) -> Vec<Collection> {
        let map = DataMap::parse(text).unwrap_or_else(|e| panic!("{e}"));
        map.sql_collections().map(|(_, c)| c.clone()).collect()
    }

    const ACCOUNTS: &str = r#"
        identities = ["email", "user_id"]
        [stores.a]
        kind = "postgres"
        url_env = "A_URL"
        [[stores.a.collections]]
        table = "users"
        match = { email = "email" }
        provides = { user_id = "id" }
        erase = "delete"
        tenant = "company"
        [[stores.a.collections]]
        table = "invoices"
        match = { user_id = "user_id" }
        erase = "delete"
        [[stores.a.collections]]
        table = "newsletter"
        match = { email = "address" }
        erase = "delete"
    "#;

    #[test]
    fn a_store_with_a_tenant_column_attributes_every_collection_keyed_by_its_identity() {
        let plan = plan(Dialect::Postgres, &collections(ACCOUNTS)).unwrap();
        assert!(
            plan.statement
                .contains(r#"SELECT CAST("id" AS text) AS subject FROM "users""#),
            "{}",
            plan.statement
        );
        assert!(plan.statement.contains(r#"FROM "invoices""#));
        assert!(!plan.statement.contains("newsletter"));
        assert!(
            plan.statement
                .contains(r#"CAST("company" AS text) AS tenant"#)
        );
        assert!(plan.statement.contains("GROUP BY x.tenant"));
        assert!(plan.attributed);
        assert!(plan.method.contains("not counted"), "{}", plan.method);
        assert!(plan.method.contains("newsletter"), "{}", plan.method);
    }

    #[test]
    fn of_several_tenant_columns_the_census_attributes_through_the_providing_collection() {
        let text = ACCOUNTS.replace(
            "match = { user_id = \"user_id\" }\n        erase = \"delete\"",
            "match = { user_id = \"user_id\" }\n        erase = \"delete\"\n        tenant = \"customer\"",
        );
        let collections = collections(&text);
        assert_eq!(collections[1].tenant.as_deref(), Some("customer"));
        let plan = plan(Dialect::Postgres, &collections).unwrap();
        assert!(
            plan.method.contains("attributed through users.company"),
            "{}",
            plan.method
        );
    }

    #[test]
    fn a_store_without_a_tenant_column_counts_every_subject_as_unattributed() {
        let plan = plan(
            Dialect::Mysql,
            &collections(
                r#"
                identities = ["user_id"]
                [stores.chat]
                kind = "mysql"
                url_env = "CHAT_URL"
                [[stores.chat.collections]]
                table = "messages"
                match = { user_id = "author_id" }
                erase = "delete"
                [[stores.chat.collections]]
                table = "visits"
                match = { user_id = "user_id" }
                erase = "delete"
                "#,
            ),
        )
        .unwrap();
        assert!(
            plan.statement
                .starts_with("SELECT CAST(NULL AS CHAR), count(*)")
        );
        assert!(plan.statement.contains("CAST(`author_id` AS CHAR)"));
        assert!(plan.statement.contains(" UNION "));
        assert!(plan.method.contains("unattributed"));
        assert!(!plan.attributed);
    }

    #[test]
    fn blank_and_missing_tenants_are_unattributed() {
        let plan = CensusPlan {
            statement: String::new(),
            method: "m".to_owned(),
            attributed: true,
        };
        let reply = fold(
            "accounts",
            plan,
            vec![
                (Some("Acme".to_owned()), 3),
                (Some(" ".to_owned()), 2),
                (None, 4),
                (Some("Globex".to_owned()), 1),
            ],
        );
        assert!(reply.counted && reply.attributed);
        assert_eq!(reply.tenants.get("Acme"), Some(&3));
        assert_eq!(reply.tenants.get("Globex"), Some(&1));
        assert_eq!(reply.tenants.len(), 2);
        assert_eq!(reply.unattributed, 6);
    }
}
