//! The plan and the statements, checked without a database.

use lethe_common::datamap::{Collection, DataMap, Mask, Matching, Normalization};
use lethe_common::ids::StoreName;

use super::dialect::Dialect;
use super::plan::build_plan;
use super::queries::log_statements;
use super::schema::{ColumnInfo, Family, LiveSchema};
use super::statement::{Bind, KeyValues, MatchPart, Matcher, Sql, Statement, TenantCondition};

fn column(name: &str, type_name: &str, family: Family, nullable: bool) -> ColumnInfo {
    ColumnInfo {
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        family,
        nullable,
        max_chars: type_name
            .strip_prefix("varchar(")
            .and_then(|n| n.trim_end_matches(')').parse().ok()),
    }
}

fn table(name: &str) -> (String, String) {
    ("public".to_owned(), name.to_owned())
}

/// users <- access_log (foreign key), invoices <- users too.
fn live() -> LiveSchema {
    let mut live = LiveSchema {
        default_schema: "public".to_owned(),
        ..LiveSchema::default()
    };
    live.tables.insert(
        table("users"),
        vec![
            column("id", "bigint", Family::Integer, false),
            column("email", "text", Family::Text, false),
            column("restricted", "boolean", Family::Boolean, false),
        ],
    );
    live.tables.insert(
        table("invoices"),
        vec![
            column("id", "bigint", Family::Integer, false),
            column("user_id", "bigint", Family::Integer, true),
            column("billing_name", "varchar(40)", Family::Text, true),
            column("amount", "bigint", Family::Integer, false),
        ],
    );
    live.tables.insert(
        table("access_log"),
        vec![
            column("user_id", "bigint", Family::Integer, false),
            column("ip", "text", Family::Text, false),
        ],
    );
    live.foreign_keys = vec![
        (table("access_log"), table("users")),
        (table("invoices"), table("users")),
    ];
    live
}

fn collections(text: &str) -> Vec<Collection> {
    let map = DataMap::parse(text).unwrap_or_else(|e| panic!("{e}"));
    match map.stores.into_values().next() {
        Some(lethe_common::datamap::Store::Postgres(sql)) => sql.collections,
        _ => panic!("expected one postgres store"),
    }
}

fn store() -> StoreName {
    StoreName::parse("accounts").unwrap_or_else(|e| panic!("{e}"))
}

const GOOD: &str = r#"
    identities = ["email", "user_id"]
    [stores.accounts]
    kind = "postgres"
    url_env = "A_URL"
    [[stores.accounts.collections]]
    table = "users"
    match = { email = "email" }
    provides = { user_id = "id" }
    erase = "delete"
    restrict = { column = "restricted" }
    [[stores.accounts.collections]]
    table = "invoices"
    match = { user_id = "user_id" }
    erase = { mask = { billing_name = "redact" } }
    retain = "tax law"
    [[stores.accounts.collections]]
    table = "access_log"
    match = { user_id = "user_id" }
    erase = "delete"
"#;

#[test]
fn deletions_run_children_first_whatever_the_data_map_order() {
    let plan = build_plan(
        Dialect::Postgres,
        &store(),
        &collections(GOOD),
        &Matching::default(),
        &live(),
    )
    .unwrap_or_else(|p| panic!("{p:?}"));
    let names: Vec<&str> = plan
        .delete_order
        .iter()
        .map(|&i| plan.collections[i].name.as_str())
        .collect();
    assert_eq!(names, ["access_log", "users"]);
}

#[test]
fn a_cycle_of_foreign_keys_falls_back_to_data_map_order() {
    let mut live = live();
    live.foreign_keys
        .push((table("users"), table("access_log")));
    let plan = build_plan(
        Dialect::Postgres,
        &store(),
        &collections(GOOD),
        &Matching::default(),
        &live,
    )
    .unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(plan.delete_order, [0, 2]);
}

#[test]
fn every_mismatch_with_the_live_schema_is_listed() {
    let text = r#"
        identities = ["email", "user_id"]
        [stores.accounts]
        kind = "postgres"
        url_env = "A_URL"
        [[stores.accounts.collections]]
        table = "nope"
        match = { email = "email" }
        erase = "delete"
        [[stores.accounts.collections]]
        table = "invoices"
        match = { email = "user_id" }
        erase = { mask = { billing_name = "hash", amount = "null", gone = "redact" } }
        retain = "tax law"
        restrict = { column = "user_id" }
    "#;
    let problems = build_plan(
        Dialect::Postgres,
        &store(),
        &collections(text),
        &Matching::default(),
        &live(),
    )
    .err()
    .unwrap_or_default()
    .join("\n");
    for expected in [
        "table `nope` does not exist in schema `public`",
        "column `user_id` (match `email`) is bigint, but `email` values are text",
        "column `billing_name` (mask hash) is varchar(40); the hash mask writes 64",
        "column `amount` (mask null) is NOT NULL",
        "column `gone` (mask redact) does not exist in table `invoices`",
        "column `user_id` (restrict) is bigint; a flag must be boolean",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in:\n{problems}"
        );
    }
}

#[test]
fn integer_columns_only_meet_canonical_integers() {
    let values: Vec<String> = ["7", "007", "+7", "x@y", "", "8", "7"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        KeyValues::for_column(Family::Integer, &values),
        Some(KeyValues::Ints(vec![7, 8]))
    );
    assert_eq!(
        KeyValues::for_column(Family::Integer, &["a".to_owned()]),
        None
    );
    assert_eq!(
        KeyValues::for_column(
            Family::Uuid,
            &["6F9619FF-8B86-D011-B42D-00C04FC964FF".into()]
        ),
        Some(KeyValues::Uuids(vec![
            "6f9619ff-8b86-d011-b42d-00c04fc964ff".to_owned()
        ]))
    );
}

fn delete_statement(dialect: Dialect) -> Statement {
    let matcher = Matcher {
        parts: vec![
            MatchPart {
                column: dialect.ident("email"),
                normalization: Normalization::Email,
                values: KeyValues::Texts(vec!["a".into(), "b".into()]),
            },
            MatchPart {
                column: dialect.ident("user_id"),
                normalization: Normalization::None,
                values: KeyValues::Ints(vec![7]),
            },
        ],
        tenant: None,
    };
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM ")
        .push(&dialect.table("app.users"))
        .push(" WHERE ");
    sql.push_match(&matcher, None);
    sql.finish()
}

#[test]
fn log_batches_bind_the_cut_off_and_repeat_the_time_condition() {
    let before = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let pg = log_statements(Dialect::Postgres, "app.access_log", "at", before, 500);
    assert!(
        pg.delete_batch
            .sql
            .starts_with("DELETE FROM \"app\".\"access_log\"")
    );
    assert!(pg.delete_batch.sql.contains("LIMIT 500"));
    assert_eq!(
        pg.delete_batch
            .sql
            .matches("\"at\" < CAST($1 AS timestamptz)")
            .count(),
        2
    );
    assert!(!pg.delete_batch.sql.contains("2025"));
    assert_eq!(
        pg.delete_batch.binds,
        vec![Bind::Text(Some("2025-01-02 03:04:05.000000+00".into()))]
    );
    let my = log_statements(Dialect::Mysql, "visits", "at", before, 7);
    assert_eq!(
        my.delete_batch.sql,
        "DELETE FROM `visits` WHERE `at` < ? ORDER BY `at` LIMIT 7"
    );
    assert_eq!(
        my.count.binds,
        vec![Bind::Text(Some("2025-01-02 03:04:05.000000".into()))]
    );
}

#[test]
fn values_are_bound_never_spliced_in_either_dialect() {
    let pg = delete_statement(Dialect::Postgres);
    assert_eq!(
        pg.sql,
        r#"DELETE FROM "app"."users" WHERE (lower("email") = ANY($1) OR "user_id" = ANY($2))"#
    );
    assert_eq!(
        pg.binds,
        [
            Bind::Texts(vec!["a".into(), "b".into()]),
            Bind::Ints(vec![7])
        ]
    );
    let my = delete_statement(Dialect::Mysql);
    assert_eq!(
        my.sql,
        "DELETE FROM `app`.`users` WHERE (`email` IN (?, ?) OR `user_id` IN (?))"
    );
    assert_eq!(
        my.binds,
        [
            Bind::Text(Some("a".into())),
            Bind::Text(Some("b".into())),
            Bind::Int(7)
        ]
    );
}

#[test]
fn a_tenant_scoped_match_binds_the_tenant_on_the_tenant_column() {
    for (dialect, expected) in [
        (
            Dialect::Postgres,
            r#"(lethe_t."email" = ANY($1)) AND lethe_t."company" = $2"#,
        ),
        (
            Dialect::Mysql,
            "(lethe_t.`email` IN (?)) AND lethe_t.`company` = ?",
        ),
    ] {
        let matcher = Matcher {
            parts: vec![MatchPart {
                column: dialect.ident("email"),
                normalization: Normalization::None,
                values: KeyValues::Texts(vec!["a".into()]),
            }],
            tenant: Some(TenantCondition {
                column: dialect.ident("company"),
                name: "Acme; DROP TABLE users".into(),
            }),
        };
        let mut sql = Sql::new(dialect);
        sql.push_match(&matcher, Some("lethe_t"));
        let statement = sql.finish();
        assert_eq!(statement.sql, expected);
        assert_eq!(
            statement.binds.last(),
            Some(&Bind::Text(Some("Acme; DROP TABLE users".into())))
        );
    }
}

#[test]
fn masked_values_are_recognised_so_masks_apply_once() {
    assert_eq!(
        Dialect::Postgres.masked("\"c\"", Mask::Hash),
        "(\"c\" IS NULL OR \"c\" ~ '^[0-9a-f]{64}$')"
    );
    assert_eq!(
        Dialect::Mysql.masked("`c`", Mask::Redact),
        "(`c` IS NULL OR `c` = '[redacted]')"
    );
    assert_eq!(Dialect::Mysql.masked("`c`", Mask::Null), "`c` IS NULL");
}

#[test]
fn phones_are_compared_by_their_digits_against_every_spelling() {
    let matching = Matching {
        phone_region: Some("GB".to_owned()),
        ..Matching::default()
    };
    let text = GOOD
        .replace(
            r#"["email", "user_id"]"#,
            r#"["email", "phone", "user_id"]"#,
        )
        .replace(
            "match = { email = \"email\" }",
            "match = { email = \"email\", phone = \"phone\" }",
        );
    let mut live = live();
    if let Some(users) = live.tables.get_mut(&table("users")) {
        users.push(column("phone", "text", Family::Text, true));
    }
    let collection = build_plan(
        Dialect::Postgres,
        &store(),
        &collections(&text),
        &matching,
        &live,
    )
    .unwrap_or_else(|p| panic!("{p:?}"));
    let users = &collection.collections[0];
    let identities = std::collections::BTreeMap::from([
        ("phone".to_owned(), vec!["020 7946 0000".to_owned()]),
        ("email".to_owned(), vec!["Ada@Example.COM".to_owned()]),
    ]);
    let matcher = Matcher::new(users, &identities, None).unwrap_or_else(|| panic!("no matcher"));
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let mut sql = Sql::new(dialect);
        sql.push_match(&matcher, None);
        let text = sql.finish().sql;
        assert!(text.contains("'[^0-9+]'"), "{text}");
    }
    let phone = matcher
        .parts
        .iter()
        .find(|p| p.normalization == Normalization::Phone)
        .unwrap_or_else(|| panic!("no phone part"));
    let KeyValues::Texts(spellings) = &phone.values else {
        panic!("phones are text")
    };
    assert!(spellings.iter().any(|s| s == "+442079460000"));
    assert!(spellings.iter().any(|s| s == "02079460000"));
    let email = matcher
        .parts
        .iter()
        .find(|p| p.normalization == Normalization::Email)
        .unwrap_or_else(|| panic!("no email part"));
    assert_eq!(
        email.values,
        KeyValues::Texts(vec!["ada@example.com".into()])
    );
}

#[test]
fn a_batch_deletes_with_one_statement_over_every_subject_and_tags_each_row_with_its_first_subject()
{
    use super::batch_queries::{Owners, delete_rows_owned};
    use lethe_common::messages::Identities;
    let plan = build_plan(
        Dialect::Postgres,
        &store(),
        &collections(GOOD),
        &Matching::default(),
        &live(),
    )
    .unwrap_or_else(|p| panic!("{p:?}"));
    let users = &plan.collections[0];
    let subject = |email: &str| Identities::from([("email".to_owned(), vec![email.to_owned()])]);
    let subjects = [
        subject("A@example.com"),
        Identities::from([("user_id".to_owned(), vec!["7".to_owned()])]),
        subject("b@example.com"),
        subject("a@example.com"),
    ];
    let owners = Owners::new(users, &subjects).unwrap_or_else(|| panic!("no owners"));
    let statement = delete_rows_owned(Dialect::Postgres, users, &owners);
    assert!(
        statement.sql.ends_with(
            r#"WHERE (lower("email") = ANY($1)) RETURNING CAST(CASE WHEN (lower("email") = ANY($2)) THEN 0 WHEN (lower("email") = ANY($3)) THEN 2 WHEN (lower("email") = ANY($4)) THEN 3 END AS text)"#
        ),
        "{}",
        statement.sql
    );
    let texts = |v: &[&str]| Bind::Texts(v.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(
        statement.binds,
        [
            texts(&["a@example.com", "b@example.com"]),
            texts(&["a@example.com"]),
            texts(&["b@example.com"]),
            texts(&["a@example.com"]),
        ]
    );
}
