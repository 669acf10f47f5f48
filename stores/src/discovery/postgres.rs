//! PostgreSQL: the tables of `current_schema()` from `pg_catalog`, with a sample of rows.

use sqlx::{PgPool, Row as _};

use super::{Catalog, Column, ColumnKind, DiscoveryError, ForeignKey, Index, Table};
use crate::sql::Dialect;

fn kind(base_type: &str) -> ColumnKind {
    match base_type {
        "int2" | "int4" | "int8" => ColumnKind::Integer,
        "text" | "varchar" | "bpchar" | "citext" | "name" | "inet" | "cidr" => ColumnKind::Text,
        "uuid" => ColumnKind::Uuid,
        "bool" => ColumnKind::Boolean,
        "timestamp" | "timestamptz" | "date" => ColumnKind::Time,
        _ => ColumnKind::Other,
    }
}

pub(super) async fn read(pool: &PgPool) -> Result<Catalog, DiscoveryError> {
    let sql = |e: sqlx::Error| DiscoveryError::sql("reading the PostgreSQL catalog", &e);
    let rows = sqlx::query(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                COALESCE(bt.typname, t.typname)::text, NOT a.attnotnull \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
           AND n.nspname = current_schema() \
         ORDER BY c.relname, a.attnum",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?;
    let mut tables: Vec<Table> = Vec::new();
    for row in rows {
        let table: String = row.try_get(0).map_err(sql)?;
        let base: String = row.try_get(3).map_err(sql)?;
        let column = Column {
            name: row.try_get(1).map_err(sql)?,
            type_name: row.try_get(2).map_err(sql)?,
            kind: kind(&base),
            nullable: row.try_get(4).map_err(sql)?,
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
    let keys = sqlx::query(
        "SELECT cc.relname::text, pc.relname::text, con.confdeltype = 'c', \
           ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_constraint con \
         JOIN pg_class cc ON cc.oid = con.conrelid \
         JOIN pg_namespace cn ON cn.oid = cc.relnamespace \
         JOIN pg_class pc ON pc.oid = con.confrelid \
         WHERE con.contype = 'f' AND cn.nspname = current_schema() \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?
    .into_iter()
    .map(|row| {
        Ok((
            row.try_get(0)?,
            ForeignKey {
                parent: row.try_get(1)?,
                cascades: row.try_get(2)?,
                columns: row.try_get(3)?,
                parent_columns: row.try_get(4)?,
            },
        ))
    })
    .collect::<Result<Vec<(String, ForeignKey)>, sqlx::Error>>()
    .map_err(sql)?;
    let mut primary: Vec<(String, Vec<String>)> = Vec::new();
    let indexes = sqlx::query(
        "SELECT t.relname::text, i.indisunique, i.indisprimary, \
           ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o) \
         FROM pg_index i \
         JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = current_schema() ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .map_err(sql)?
    .into_iter()
    .map(|row| {
        let table: String = row.try_get(0)?;
        let columns: Vec<String> = row.try_get(3)?;
        if row.try_get::<bool, _>(2)? {
            primary.push((table.clone(), columns.clone()));
        }
        Ok((
            table,
            Index {
                columns,
                unique: row.try_get(1)?,
            },
        ))
    })
    .collect::<Result<Vec<(String, Index)>, sqlx::Error>>()
    .map_err(sql)?;
    super::attach(&mut tables, keys, indexes);
    for (table, columns) in primary {
        if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
            t.primary_key = columns;
        }
    }
    for table in &mut tables {
        sample(pool, table).await?;
    }
    Ok(Catalog { tables })
}

/// Reads the first rows of `table`'s integer, text and UUID columns, as text.
async fn sample(pool: &PgPool, table: &mut Table) -> Result<(), DiscoveryError> {
    let sql = |e: sqlx::Error| DiscoveryError::sql("sampling a PostgreSQL table", &e);
    let Some((sampled, query)) = super::sample_query(Dialect::Postgres, table) else {
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
