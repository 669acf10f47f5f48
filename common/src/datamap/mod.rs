//! The data map: where each store keeps personal data, how a subject is found in it, and what
//! erasure, rectification, restriction and objection do there (DESIGN §3; the README is the
//! reference for the format).
//!
//! [`DataMap::load`] parses and checks the map on its own (identities, derivations, cycles,
//! strategies, templates); checks against the live schemas are done by the connectors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::ids::StoreName;

mod http;
mod normalize;
mod tenancy;

pub use http::{
    Action, BodyEncoding, FieldCheck, FlagRequests, HttpAuth, HttpStore, Lookup, MAX_PAGES,
    Pagination, RECORD_ID, Rectify, RequestSpec,
};
pub use normalize::{Matching, Normalization};
pub use tenancy::{Scope, TENANT_PLACEHOLDER};

/// The whole map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMap {
    /// Every identity name: the ones clients give (email, phone) and the ones stores derive
    /// (user_id).
    pub identities: Vec<String>,
    /// How each identity's values are normalised before they are compared (`email`, `phone`,
    /// `none`); an identity not named here goes by its name ([`Normalization::by_name`]).
    #[serde(default)]
    pub normalize: BTreeMap<String, Normalization>,
    /// The region (ISO 3166, `GB`) in which phone numbers written nationally are read.
    pub phone_region: Option<String>,
    /// Whether tasks touch every row of the subject or only the filing tenant's; `global` when
    /// absent.
    #[serde(default)]
    pub scope: Scope,
    /// The stores by name.
    pub stores: BTreeMap<StoreName, Store>,
}

/// One store.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Store {
    /// A PostgreSQL database.
    Postgres(SqlStore),
    /// A MySQL or MariaDB database.
    Mysql(SqlStore),
    /// A Redis database.
    Redis(RedisStore),
    /// An S3 bucket.
    S3(S3Store),
    /// A processor reached over its HTTP API.
    Http(Box<HttpStore>),
}

/// A relational store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStore {
    /// Environment variable holding the connection URL (credentials stay out of files).
    pub url_env: String,
    /// The tables holding personal data.
    pub collections: Vec<Collection>,
    /// The map's normalisation of identities (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub matching: Matching,
    /// The map's tenant scope (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub scope: Scope,
}

/// One table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// Table name, optionally schema-qualified (`billing.invoices`).
    pub table: String,
    /// How rows of the subject are found: identity name -> column.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    /// Identities this table derives for other stores: identity name -> column.
    #[serde(default)]
    pub provides: BTreeMap<String, String>,
    /// What erasure does.
    pub erase: EraseStrategy,
    /// The legal basis for keeping rows (required with `erase = "retain"`, and documenting a
    /// mask that keeps the rows).
    pub retain: Option<String>,
    /// Rectifiable fields: field name in requests -> column.
    #[serde(default)]
    pub rectify: BTreeMap<String, String>,
    /// How a restriction of processing is recorded.
    pub restrict: Option<FlagColumn>,
    /// How an objection to processing is recorded.
    pub object: Option<FlagColumn>,
    /// Marks a log table, whose old rows retention deletes.
    pub log: Option<LogTable>,
    /// The column naming the tenant (the SaaS company's business customer, by its Lethe tenant
    /// name) each row belongs to. With `scope = "tenant"`, every statement on the collection
    /// adds `column = <the filing tenant>`; the breach register's census attributes subjects
    /// through it (through the first such collection that provides an identity).
    pub tenant: Option<String>,
}

/// What erasure does to a collection's matching rows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum EraseStrategy {
    /// Delete the rows.
    Delete,
    /// Keep the rows unchanged (exported, not erased), under the stated `retain` basis.
    Retain,
    /// Overwrite columns and keep the rows.
    Mask(BTreeMap<String, Mask>),
}

/// How one masked column is overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    /// `NULL`.
    Null,
    /// The text `[redacted]`.
    Redact,
    /// A keyed hash of the old value (still joinable, no longer readable).
    Hash,
    /// Random text.
    Random,
}

/// A boolean column set to record restriction or objection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagColumn {
    /// The column.
    pub column: String,
}

/// A log table with a timestamp column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogTable {
    /// Column holding each row's time.
    pub timestamp: String,
    /// Rows older than this many days are deleted by retention.
    #[serde(default = "LogTable::default_max_age_days")]
    pub max_age_days: u32,
}

impl LogTable {
    fn default_max_age_days() -> u32 {
        365
    }
}

/// A Redis store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    /// Environment variable holding the connection URL.
    pub url_env: String,
    /// Prepended to every key (lets several applications or tests share a database).
    #[serde(default)]
    pub key_prefix: String,
    /// Key templates, e.g. `session:{user_id}`; every key they name is the subject's.
    pub keys: Vec<String>,
    /// Restriction recorded by adding the subject to a set.
    pub restrict: Option<FlagSet>,
    /// Objection recorded by adding the subject to a set.
    pub object: Option<FlagSet>,
    /// The map's normalisation of identities (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub matching: Matching,
    /// The map's tenant scope (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub scope: Scope,
}

/// A Redis set that records a flag by holding the subject's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSet {
    /// The set's key (after the store's key prefix).
    pub set: String,
    /// Which identity is added.
    pub identity: String,
}

/// An S3 bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Store {
    /// The bucket.
    pub bucket: String,
    /// Prefix templates, e.g. `avatars/{user_id}/`; every object under them is the subject's.
    pub prefixes: Vec<String>,
    /// Environment variable with the endpoint URL; unset means Lethe's own `[s3]` endpoint.
    pub endpoint_env: Option<String>,
    /// Environment variable with the access key id; unset means Lethe's own.
    pub access_key_id_env: Option<String>,
    /// Environment variable with the secret key; unset means Lethe's own.
    pub secret_access_key_env: Option<String>,
    /// The map's normalisation of identities (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub matching: Matching,
    /// The map's tenant scope (filled in by [`DataMap::parse`]).
    #[serde(skip)]
    pub scope: Scope,
}

/// A data map that cannot be used: every problem found, one per line.
#[derive(Debug, thiserror::Error)]
pub enum DataMapError {
    /// The file could not be read.
    #[error("cannot read the data map {path}: {source}")]
    Read {
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a data map.
    #[error("the data map {path} is malformed: {message}")]
    Parse {
        /// Its path.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The map parsed but is inconsistent.
    #[error("the data map has {} problem(s):\n{}", .0.len(), Problems(.0))]
    Invalid(Vec<String>),
}

struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl DataMap {
    /// Reads, parses and checks the map at `path`.
    pub fn load(path: &Path) -> Result<Self, DataMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataMapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            DataMapError::Parse { message, .. } => DataMapError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks a map given as TOML text.
    pub fn parse(text: &str) -> Result<Self, DataMapError> {
        let mut map: DataMap = toml::from_str(text).map_err(|e| DataMapError::Parse {
            path: "(text)".into(),
            message: e.to_string(),
        })?;
        // Each store carries the map's normalisation, so a connector built from its entry
        // alone compares values as the whole map says.
        let matching = map.matching();
        let scope = map.scope;
        for store in map.stores.values_mut() {
            match store {
                Store::Postgres(sql) | Store::Mysql(sql) => {
                    sql.matching = matching.clone();
                    sql.scope = scope;
                }
                Store::Redis(redis) => {
                    redis.matching = matching.clone();
                    redis.scope = scope;
                }
                Store::S3(s3) => {
                    s3.matching = matching.clone();
                    s3.scope = scope;
                }
                Store::Http(http) => {
                    http.matching = matching.clone();
                    http.scope = scope;
                }
            }
        }
        let problems = map.problems();
        if problems.is_empty() {
            Ok(map)
        } else {
            Err(DataMapError::Invalid(problems))
        }
    }

    /// How the map's identities are normalised.
    pub fn matching(&self) -> Matching {
        Matching {
            rules: self.normalize.clone(),
            phone_region: self.phone_region.clone(),
        }
    }

    /// Every inconsistency, described with where it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let declared: BTreeSet<&str> = self.identities.iter().map(String::as_str).collect();
        if self.identities.is_empty() {
            problems.push("`identities` is empty: declare at least one identity".to_owned());
        }
        if declared.len() != self.identities.len() {
            problems.push("`identities` lists a name twice".to_owned());
        }
        for identity in &self.identities {
            if !is_identifier(identity) {
                problems.push(format!(
                    "identity `{identity}` must be lowercase letters, digits and `_`"
                ));
            }
        }
        problems.extend(self.matching().problems(&declared));
        if self.stores.is_empty() {
            problems.push("no stores are defined under [stores]".to_owned());
        }
        let mut check_identity = |problems: &mut Vec<String>, identity: &str, place: &str| {
            if !declared.contains(identity) {
                problems.push(format!(
                    "{place} uses identity `{identity}`, which is not declared in `identities`"
                ));
            }
        };
        for (name, store) in &self.stores {
            match store {
                Store::Postgres(sql) | Store::Mysql(sql) => {
                    check_env_name(
                        &mut problems,
                        &format!("stores.{name}.url_env"),
                        &sql.url_env,
                    );
                    if sql.collections.is_empty() {
                        problems.push(format!("stores.{name} has no collections"));
                    }
                    for (i, c) in sql.collections.iter().enumerate() {
                        let place = format!("stores.{name}.collections[{i}] ({})", c.table);
                        check_collection(&mut problems, &place, c, &mut check_identity);
                    }
                }
                Store::Redis(redis) => {
                    check_env_name(
                        &mut problems,
                        &format!("stores.{name}.url_env"),
                        &redis.url_env,
                    );
                    if redis.keys.is_empty() {
                        problems.push(format!("stores.{name}.keys is empty"));
                    }
                    for template in &redis.keys {
                        let place = format!("stores.{name}.keys `{template}`");
                        check_template(&mut problems, &place, template, false, &mut check_identity);
                    }
                    for (what, flag) in [("restrict", &redis.restrict), ("object", &redis.object)] {
                        if let Some(flag) = flag {
                            check_identity(
                                &mut problems,
                                &flag.identity,
                                &format!("stores.{name}.{what}"),
                            );
                        }
                    }
                }
                Store::S3(s3) => {
                    if s3.bucket.is_empty() {
                        problems.push(format!("stores.{name}.bucket is empty"));
                    }
                    if s3.prefixes.is_empty() {
                        problems.push(format!("stores.{name}.prefixes is empty"));
                    }
                    for template in &s3.prefixes {
                        let place = format!("stores.{name}.prefixes `{template}`");
                        check_template(&mut problems, &place, template, true, &mut check_identity);
                    }
                }
                Store::Http(http) => {
                    problems.extend(http::problems(name.as_str(), http, &mut check_identity));
                }
            }
        }
        problems.extend(self.tenancy_problems());
        if let Some(cycle) = self.derivation_cycle() {
            problems.push(format!(
                "identities derive from each other in a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        problems
    }

    /// Edges `from -> to` where a collection matched by `from` provides `to`.
    fn derivations(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for collection in self.sql_collections().map(|(_, c)| c) {
            for from in collection.matches.keys() {
                for to in collection.provides.keys() {
                    edges.entry(from).or_default().insert(to);
                }
            }
        }
        edges
    }

    fn derivation_cycle(&self) -> Option<Vec<String>> {
        let edges = self.derivations();
        fn visit<'a>(
            node: &'a str,
            edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|n| *n == node) {
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|s| (*s).to_owned()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node);
            for next in edges.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node);
            None
        }
        let mut done = BTreeSet::new();
        for node in edges.keys() {
            if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
                return Some(cycle);
            }
        }
        None
    }

    /// Every SQL collection with its store's name.
    pub fn sql_collections(&self) -> impl Iterator<Item = (&StoreName, &Collection)> {
        self.stores.iter().flat_map(|(name, store)| match store {
            Store::Postgres(sql) | Store::Mysql(sql) => sql
                .collections
                .iter()
                .map(move |c| (name, c))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }

    /// The identities a store derives for others (non-empty means it is resolved first and,
    /// on erasure, erased last).
    pub fn provided_by(&self, store: &StoreName) -> BTreeSet<&str> {
        match self.stores.get(store) {
            Some(Store::Postgres(sql) | Store::Mysql(sql)) => sql
                .collections
                .iter()
                .flat_map(|c| c.provides.keys().map(String::as_str))
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Every rectifiable field name, across stores.
    pub fn rectifiable_fields(&self) -> BTreeSet<&str> {
        let processors = self.stores.values().filter_map(|store| match store {
            Store::Http(http) => http.rectify.as_ref(),
            _ => None,
        });
        self.sql_collections()
            .flat_map(|(_, c)| c.rectify.keys().map(String::as_str))
            .chain(processors.flat_map(|r| r.fields.keys().map(String::as_str)))
            .collect()
    }
}

type IdentityCheck<'a> = dyn FnMut(&mut Vec<String>, &str, &str) + 'a;

fn check_collection(
    problems: &mut Vec<String>,
    place: &str,
    c: &Collection,
    check_identity: &mut IdentityCheck<'_>,
) {
    if !is_sql_name(&c.table) {
        problems.push(format!(
            "{place}: table name `{}` is not a plain SQL identifier",
            c.table
        ));
    }
    if c.matches.is_empty() {
        problems.push(format!(
            "{place}: `match` is empty; say which identity finds the rows"
        ));
    }
    let columns = c
        .matches
        .iter()
        .chain(&c.provides)
        .chain(&c.rectify)
        .map(|(_, column)| column.as_str())
        .chain(c.restrict.iter().map(|f| f.column.as_str()))
        .chain(c.object.iter().map(|f| f.column.as_str()))
        .chain(c.log.iter().map(|l| l.timestamp.as_str()))
        .chain(c.tenant.iter().map(String::as_str));
    for column in columns {
        if !is_identifier_loose(column) {
            problems.push(format!(
                "{place}: column `{column}` is not a plain SQL identifier"
            ));
        }
    }
    for identity in c.matches.keys() {
        check_identity(problems, identity, &format!("{place} match"));
    }
    for identity in c.provides.keys() {
        check_identity(problems, identity, &format!("{place} provides"));
    }
    match &c.erase {
        EraseStrategy::Retain if c.retain.as_deref().is_none_or(str::is_empty) => {
            problems.push(format!(
                "{place}: erase = \"retain\" needs `retain` to state the legal basis"
            ));
        }
        EraseStrategy::Mask(columns) if columns.is_empty() => {
            problems.push(format!("{place}: `mask` names no column"));
        }
        EraseStrategy::Mask(columns) => {
            for column in columns.keys() {
                if !is_identifier_loose(column) {
                    problems.push(format!(
                        "{place}: column `{column}` is not a plain SQL identifier"
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(log) = &c.log
        && log.max_age_days == 0
    {
        problems.push(format!("{place}: log.max_age_days must be at least 1"));
    }
}

fn check_template(
    problems: &mut Vec<String>,
    place: &str,
    template: &str,
    is_prefix: bool,
    check_identity: &mut IdentityCheck<'_>,
) {
    match placeholders(template) {
        Err(message) => problems.push(format!("{place}: {message}")),
        Ok(names) if names.is_empty() => problems.push(format!(
            "{place}: names no identity placeholder like {{user_id}}"
        )),
        Ok(names) => {
            // `{tenant}` is the filing tenant, not an identity (checked with the scope).
            for name in names.iter().filter(|n| *n != TENANT_PLACEHOLDER) {
                check_identity(problems, name, place);
            }
        }
    }
    if is_prefix && !template.ends_with('/') {
        // Without the slash, user 1's prefix would also cover user 10's objects.
        problems.push(format!("{place}: a prefix must end with `/`"));
    }
}

fn check_env_name(problems: &mut Vec<String>, place: &str, name: &str) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        problems.push(format!(
            "{place}: `{name}` is not an environment variable name (A-Z, 0-9, _)"
        ));
    }
}

/// The identity names in a `{name}` template, in order.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let name = &after[..close];
        if !is_identifier(name) {
            return Err(format!("`{{{name}}}` is not an identity placeholder"));
        }
        names.push(name.to_owned());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray `}}` in `{template}`"));
    }
    Ok(names)
}

/// Fills a template with one value per placeholder.
pub fn render(template: &str, values: &BTreeMap<&str, &str>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        out.push_str(values.get(&after[..close])?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_identifier_loose(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_sql_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_identifier_loose(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../config/datamap.toml");

    #[test]
    fn the_sample_data_map_is_valid() {
        let map = DataMap::parse(SAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert!(map.stores.len() >= 4);
        let accounts = StoreName::parse("accounts").unwrap();
        assert!(map.provided_by(&accounts).contains("user_id"));
    }

    fn problems_of(text: &str) -> String {
        match DataMap::parse(text) {
            Ok(_) => panic!("expected the map to be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_problem_is_listed_in_one_message() {
        let message = problems_of(
            r#"
            identities = ["email", "user_id"]
            [stores.a]
            kind = "postgres"
            url_env = "A_URL"
            [[stores.a.collections]]
            table = "users"
            match = { email = "email" }
            provides = { account_id = "id" }
            erase = "retain"
            [stores.b]
            kind = "s3"
            bucket = "files"
            prefixes = ["avatars/{user_idd}"]
            "#,
        );
        assert!(message.contains("account_id"), "{message}");
        assert!(message.contains("legal basis"), "{message}");
        assert!(message.contains("user_idd"), "{message}");
        assert!(message.contains("must end with `/`"), "{message}");
    }

    #[test]
    fn derivation_cycles_are_refused() {
        let message = problems_of(
            r#"
            identities = ["email", "user_id"]
            [stores.a]
            kind = "postgres"
            url_env = "A_URL"
            [[stores.a.collections]]
            table = "users"
            match = { email = "email" }
            provides = { user_id = "id" }
            erase = "delete"
            [stores.b]
            kind = "mysql"
            url_env = "B_URL"
            [[stores.b.collections]]
            table = "profiles"
            match = { user_id = "uid" }
            provides = { email = "mail" }
            erase = "delete"
            "#,
        );
        assert!(message.contains("cycle"), "{message}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let message = problems_of("identities = [\"email\"]\n[stores.a]\nkind = \"oracle\"\n");
        assert!(message.contains("oracle"), "{message}");
        let message = problems_of(
            "identities = [\"email\"]\nfoo = 1\n[stores.a]\nkind = \"s3\"\nbucket = \"b\"\nprefixes = [\"x/{email}/\"]\n",
        );
        assert!(message.contains("foo"), "{message}");
    }

    #[test]
    fn a_tenant_column_must_be_a_plain_name_and_may_be_declared_on_several_collections() {
        let map = |users: &str, invoices: &str| {
            format!(
                r#"
                identities = ["email", "user_id"]
                [stores.a]
                kind = "postgres"
                url_env = "A_URL"
                [[stores.a.collections]]
                table = "users"
                match = {{ email = "email" }}
                provides = {{ user_id = "id" }}
                erase = "delete"
                {users}
                [[stores.a.collections]]
                table = "invoices"
                match = {{ user_id = "user_id" }}
                erase = "delete"
                {invoices}
                "#
            )
        };
        let parsed =
            DataMap::parse(&map("tenant = \"company\"", "")).unwrap_or_else(|e| panic!("{e}"));
        let (_, users) = parsed.sql_collections().next().unwrap();
        assert_eq!(users.tenant.as_deref(), Some("company"));
        DataMap::parse(&map("tenant = \"company\"", "tenant = \"customer\""))
            .unwrap_or_else(|e| panic!("{e}"));
        let message = problems_of(&map("tenant = \"company; drop\"", ""));
        assert!(message.contains("not a plain SQL identifier"), "{message}");
    }

    #[test]
    fn templates_render_with_identity_values() {
        let values = BTreeMap::from([("user_id", "7")]);
        assert_eq!(render("session:{user_id}", &values).unwrap(), "session:7");
        assert_eq!(render("x:{email}", &values), None);
        assert!(placeholders("a{b").is_err());
    }
}
