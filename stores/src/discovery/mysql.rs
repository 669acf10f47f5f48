//! MariaDB and MySQL: the tables of `DATABASE()` from `information_schema`, with a sample of
//! rows. Every catalog text is cast to `CHAR`: some servers describe them as binary.

use sqlx::{MySqlPool, Row as _};

use super::{Catalog, Column, ColumnKind, DiscoveryError, ForeignKey, Index, Table};
use crate::sql::Dialect;

fn kind(data_type: &str, column_type: &str) -> ColumnKind {
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => ColumnKind::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => ColumnKind::Integer,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => ColumnKind::Text,
        "uuid" => ColumnKind::Uuid,
        "datetime" | "timestamp" | "date" => ColumnKind::Time,
        _ => ColumnKind::Other,
    }
}

pub(super) async fn read(pool: &MySqlPool) -> Result<Catalog, DiscoveryError> {
    let sql = |e: sqlx::Error| DiscoveryError::sql("reading the MariaDB catalog", &e);
    let rows = sqlx::query(
        "SELECT CAST(c.TABLE_NAME AS CHAR), CAST(c.COLUMN_NAME AS CHAR), \
                CAST(c.COLUMN_TYPE AS CHAR), CAST(c.DATA_TYPE AS CHAR), CAST(c.IS_NULLABLE AS CHAR) \
         FROM information_schema.COLUMNS c \
         JOIN information_schema.TABLES t \
           ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' \
         ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?;
    let mut tables: Vec<Table> = Vec::new();
    for row in rows {
        let table: String = row.try_get(0).map_err(sql)?;
        let column_type: String = row.try_get(2).map_err(sql)?;
        let data_type: String = row.try_get(3).map_err(sql)?;
        let nullable: String = row.try_get(4).map_err(sql)?;
        let column = Column {
            name: row.try_get(1).map_err(sql)?,
            kind: kind(
                &data_type.to_ascii_lowercase(),
                &column_type.to_ascii_lowercase(),
            ),
            type_name: column_type,
            nullable: nullable.eq_ignore_ascii_case("YES"),
            samples: Default::default(),
        };
        match tables.last_mut() {
            Some(last) if last.name == table => last.columns.push(column),
            _ => tables.push(Table {
                name: table,
                columns: vec![column],
                primary_key: Vec::new(),
                foreign_keys: Vec::new(),
                indexes: Vec::new(),
                rows_sampled: 0,
            }),
        }
    }
    // One row per column of each key: grouped by constraint.
    let key_rows = sqlx::query(
        "SELECT CAST(k.TABLE_NAME AS CHAR), CAST(k.CONSTRAINT_NAME AS CHAR), \
                CAST(k.COLUMN_NAME AS CHAR), CAST(k.REFERENCED_TABLE_NAME AS CHAR), \
                CAST(k.REFERENCED_COLUMN_NAME AS CHAR), CAST(r.DELETE_RULE AS CHAR) \
         FROM information_schema.KEY_COLUMN_USAGE k \
         JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
           ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME \
          AND r.TABLE_NAME = k.TABLE_NAME \
         WHERE k.TABLE_SCHEMA = DATABASE() AND k.REFERENCED_TABLE_NAME IS NOT NULL \
         ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?;
    let mut keys: Vec<(String, String, ForeignKey)> = Vec::new();
    for row in key_rows {
        let table: String = row.try_get(0).map_err(sql)?;
        let name: String = row.try_get(1).map_err(sql)?;
        let column: String = row.try_get(2).map_err(sql)?;
        let parent_column: String = row.try_get(4).map_err(sql)?;
        match keys.last_mut() {
            Some((t, n, key)) if *t == table && *n == name => {
                key.columns.push(column);
                key.parent_columns.push(parent_column);
            }
            _ => {
                let rule: String = row.try_get(5).map_err(sql)?;
                keys.push((
                    table,
                    name,
                    ForeignKey {
                        columns: vec![column],
                        parent: row.try_get(3).map_err(sql)?,
                        parent_columns: vec![parent_column],
                        cascades: rule.eq_ignore_ascii_case("CASCADE"),
                    },
                ));
            }
        }
    }
    let index_rows = sqlx::query(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(INDEX_NAME AS CHAR), \
                CAST(NON_UNIQUE AS SIGNED), CAST(COLUMN_NAME AS CHAR) \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?;
    let mut indexes: Vec<(String, String, Index)> = Vec::new();
    for row in index_rows {
        let table: String = row.try_get(0).map_err(sql)?;
        let name: String = row.try_get(1).map_err(sql)?;
        // An expression index (MySQL 8) has no column.
        let Some(column) = row.try_get::<Option<String>, _>(3).map_err(sql)? else {
            continue;
        };
        match indexes.last_mut() {
            Some((t, n, index)) if *t == table && *n == name => index.columns.push(column),
            _ => {
                let non_unique: i64 = row.try_get(2).map_err(sql)?;
                indexes.push((
                    table,
                    name,
                    Index {
                        columns: vec![column],
                        unique: non_unique == 0,
                    },
                ));
            }
        }
    }
    for (table, name, index) in &indexes {
        if name == "PRIMARY"
            && let Some(t) = tables.iter_mut().find(|t| t.name == *table)
        {
            t.primary_key = index.columns.clone();
        }
    }
    super::attach(
        &mut tables,
        keys.into_iter().map(|(t, _, k)| (t, k)).collect(),
        indexes.into_iter().map(|(t, _, i)| (t, i)).collect(),
    );
    for table in &mut tables {
        sample(pool, table).await?;
    }
    Ok(Catalog { tables })
}

/// Reads the first rows of `table`'s integer, text and UUID columns, as text.
async fn sample(pool: &MySqlPool, table: &mut Table) -> Result<(), DiscoveryError> {
    let sql = |e: sqlx::Error| DiscoveryError::sql("sampling a MariaDB table", &e);
    let Some((sampled, query)) = super::sample_query(Dialect::Mysql, table) else {
        return Ok(());
    };
    let rows = sqlx::query(&query).fetch_all(pool).await.map_err(sql)?;
    let mut values: Vec<Vec<String>> = vec![Vec::new(); sampled.len()];
    for row in &rows {
        for (slot, values) in values.iter_mut().enumerate() {
            values.extend(row.try_get::<Option<String>, _>(slot).map_err(sql)?);
        }
    }
    super::file_samples(table, &sampled, rows.len(), values);
    Ok(())
}
