//! The data-map draft: from what was read of the stores and what the classifier found, the
//! subject table, the identities, a collection per table that holds the subject's rows
//! (matched directly, or through foreign-key chains of any depth, each parent providing the
//! identity its children are matched by), erase strategies, log tables, Redis key templates and
//! S3 prefix templates, each choice with its evidence as a TOML comment. Names and counts
//! only: no sampled value reaches the text.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use lethe_stores::discovery::{Catalog, ColumnKind, Samples, Table};

use super::classify::{Category, Finding, classify};
use super::templates::{IdentityValues, Pattern, patterns};

/// What was read of one store.
#[derive(Debug)]
pub enum Discovered {
    /// A PostgreSQL (`postgres`) or MariaDB/MySQL (`mysql`) database.
    Sql {
        /// The store's name in the draft.
        name: String,
        /// `postgres` or `mysql`.
        kind: &'static str,
        /// The variable the draft names for its URL.
        url_env: String,
        /// Its tables.
        catalog: Catalog,
    },
    /// A Redis database.
    Redis {
        /// The store's name.
        name: String,
        /// The variable the draft names for its URL.
        url_env: String,
        /// The key prefix the keys were sampled under.
        key_prefix: String,
        /// Keys sampled, the prefix cut off.
        keys: Samples,
    },
    /// An S3 bucket.
    S3 {
        /// The store's name.
        name: String,
        /// The bucket.
        bucket: String,
        /// The object prefix the keys were sampled under.
        prefix: String,
        /// Object keys sampled, the prefix cut off.
        keys: Samples,
    },
}

/// Words in a table's name that make it look financial or legal: its rows are masked and kept
/// (with a `retain` the operator fills in), not deleted.
const KEPT_WORDS: [&str; 9] = [
    "payment",
    "invoice",
    "billing",
    "transaction",
    "refund",
    "tax",
    "receipt",
    "contract",
    "consent",
];
/// Words in a table's name that make it look like a log.
const LOG_WORDS: [&str; 7] = [
    "log", "event", "audit", "visit", "access", "history", "activity",
];
/// Names of a log table's timestamp column, in order of preference.
const TIMESTAMPS: [&str; 7] = [
    "at",
    "created_at",
    "occurred_at",
    "logged_at",
    "timestamp",
    "ts",
    "time",
];
/// Words in a table's name that make it the likely subject table.
const SUBJECT_WORDS: [&str; 7] = [
    "user",
    "customer",
    "account",
    "member",
    "person",
    "client",
    "subscriber",
];

/// How a drafted collection is erased.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Erase {
    Delete,
    Mask(BTreeMap<String, &'static str>),
    Retain,
}

/// One drafted collection.
#[derive(Debug, Clone)]
struct Draft {
    store: usize,
    table: String,
    matches: BTreeMap<String, (String, String)>,
    provides: BTreeMap<String, (String, String)>,
    erase: Erase,
    log: Option<String>,
    notes: Vec<String>,
}

/// The draft and a summary of what was read and decided (names and counts).
#[derive(Debug)]
pub struct Suggestion {
    /// The data map draft, TOML with comments.
    pub toml: String,
    /// What was read and drafted, for the terminal.
    pub summary: String,
}

/// `customers` -> `customer`.
fn singular(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if let Some(stem) = name.strip_suffix("ies") {
        format!("{stem}y")
    } else if name.ends_with("sses") || name.ends_with("xes") || name.ends_with("ches") {
        name[..name.len() - 2].to_owned()
    } else if let Some(stem) = name.strip_suffix('s')
        && !name.ends_with("ss")
    {
        stem.to_owned()
    } else {
        name
    }
}

fn identity_of(table: &str) -> String {
    let id: String = singular(table)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{id}_id")
}

fn has_word(name: &str, words: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    words.iter().any(|w| name.contains(w))
}

/// TOML basic string.
fn q(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

struct Sql<'a> {
    name: &'a str,
    kind: &'static str,
    url_env: &'a str,
    catalog: &'a Catalog,
    findings: BTreeMap<&'a str, Vec<Finding>>,
}

/// Drafts a data map from `stores`.
pub fn suggest(stores: &[Discovered]) -> anyhow::Result<Suggestion> {
    let sql: Vec<Sql<'_>> = stores
        .iter()
        .filter_map(|s| match s {
            Discovered::Sql {
                name,
                kind,
                url_env,
                catalog,
            } => Some(Sql {
                name,
                kind,
                url_env,
                catalog,
                findings: catalog
                    .tables
                    .iter()
                    .map(|t| (t.name.as_str(), classify(t)))
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    let (subject_store, subject) = subject_table(&sql)?;
    let subject_table = sql[subject_store]
        .catalog
        .table(&subject)
        .ok_or_else(|| anyhow::anyhow!("the subject table vanished"))?;
    let subject_id = identity_of(&subject);
    let mut identities: Vec<String> = Vec::new();
    let any = |category: Category| {
        sql.iter()
            .flat_map(|s| s.findings.values().flatten())
            .any(|f| f.category == category)
    };
    if any(Category::Email) {
        identities.push("email".to_owned());
    }
    if any(Category::Phone) {
        identities.push("phone".to_owned());
    }
    identities.push(subject_id.clone());

    let mut drafts: Vec<Draft> = Vec::new();
    // The subject table: found by email and phone, provides its key.
    let mut root = Draft {
        store: subject_store,
        table: subject.clone(),
        matches: BTreeMap::new(),
        provides: BTreeMap::new(),
        erase: Erase::Delete,
        log: None,
        notes: vec![format!(
            "the subject table: {} other table(s) point to it by foreign key",
            referrers(&sql, subject_store, &subject).len()
        )],
    };
    let findings = &sql[subject_store].findings[subject.as_str()];
    for (identity, category) in [("email", Category::Email), ("phone", Category::Phone)] {
        if let Some(f) = findings.iter().find(|f| f.category == category) {
            root.matches
                .insert(identity.to_owned(), (f.column.clone(), f.evidence.clone()));
        }
    }
    if let [pk] = subject_table.primary_key.as_slice() {
        root.provides.insert(
            subject_id.clone(),
            (
                pk.clone(),
                "its primary key, which the other tables reference".to_owned(),
            ),
        );
    }
    drafts.push(root);

    // Tables found directly: a column named like an identity, or holding emails or phones.
    for (i, store) in sql.iter().enumerate() {
        for table in &store.catalog.tables {
            if i == subject_store && table.name == subject {
                continue;
            }
            let mut matches = BTreeMap::new();
            if let Some(column) = table.column(&subject_id)
                && matches!(
                    column.kind,
                    ColumnKind::Integer | ColumnKind::Text | ColumnKind::Uuid
                )
            {
                let overlap = overlap(
                    column.samples.values(),
                    subject_table
                        .primary_key
                        .first()
                        .and_then(|pk| subject_table.column(pk))
                        .map(|c| c.samples.values())
                        .unwrap_or_default(),
                );
                matches.insert(
                    subject_id.clone(),
                    (
                        column.name.clone(),
                        format!(
                            "column `{}` is named after the identity; {overlap} of {} sampled values are sampled keys of `{subject}`",
                            column.name,
                            column.samples.len()
                        ),
                    ),
                );
            }
            for (identity, category) in [("email", Category::Email), ("phone", Category::Phone)] {
                if let Some(f) = store.findings[table.name.as_str()]
                    .iter()
                    .find(|f| f.category == category)
                {
                    matches.insert(identity.to_owned(), (f.column.clone(), f.evidence.clone()));
                }
            }
            if !matches.is_empty() {
                drafts.push(new_draft(i, table, matches));
            }
        }
    }

    // Foreign-key chains, any depth: a child of a drafted table is matched by the identity the
    // parent provides for the referenced column (the parent provides it if it did not yet).
    let mut queue: VecDeque<usize> = (0..drafts.len()).collect();
    while let Some(parent) = queue.pop_front() {
        if has_word(&drafts[parent].table, &KEPT_WORDS) {
            // Its rows are kept (masked): rows hanging from them stay with them.
            continue;
        }
        let store = drafts[parent].store;
        let parent_table = drafts[parent].table.clone();
        for child in &sql[store].catalog.tables {
            if child.name == parent_table {
                continue; // a self-reference would make a derivation cycle
            }
            for key in child
                .foreign_keys
                .iter()
                .filter(|k| k.parent == parent_table)
            {
                let ([column], [referenced]) =
                    (key.columns.as_slice(), key.parent_columns.as_slice())
                else {
                    continue;
                };
                let identity = match drafts[parent]
                    .matches
                    .iter()
                    .chain(&drafts[parent].provides)
                    .find(|(_, (c, _))| c == referenced)
                {
                    Some((identity, _)) => identity.clone(),
                    None => {
                        let identity = identity_of(&parent_table);
                        drafts[parent].provides.insert(
                            identity.clone(),
                            (
                                referenced.clone(),
                                format!("`{}` reference it by foreign key", child.name),
                            ),
                        );
                        if !identities.contains(&identity) {
                            identities.push(identity.clone());
                        }
                        identity
                    }
                };
                let evidence = format!(
                    "foreign key `{}`.`{column}` -> `{parent_table}`.`{referenced}`{}",
                    child.name,
                    if key.cascades {
                        " (ON DELETE CASCADE)"
                    } else {
                        ""
                    }
                );
                match drafts
                    .iter()
                    .position(|d| d.store == store && d.table == child.name)
                {
                    Some(existing) => {
                        drafts[existing]
                            .matches
                            .entry(identity)
                            .or_insert((column.clone(), evidence));
                    }
                    None => {
                        let matches = BTreeMap::from([(identity, (column.clone(), evidence))]);
                        drafts.push(new_draft(store, child, matches));
                        queue.push_back(drafts.len() - 1);
                    }
                }
            }
        }
    }
    for draft in &mut drafts {
        let store = &sql[draft.store];
        if let Some(table) = store.catalog.table(&draft.table) {
            strategy(draft, table, &store.findings[table.name.as_str()], store);
        }
    }

    // Identity values for naming key and prefix placeholders: the subject's first, so a
    // number both a customer id and an order id is taken for the customer's.
    let mut values: Vec<IdentityValues> = Vec::new();
    for identity in &identities {
        let mut sampled = BTreeSet::new();
        for draft in &drafts {
            let table = sql[draft.store].catalog.table(&draft.table);
            for (kind, (column, _)) in draft.matches.iter().chain(&draft.provides) {
                if kind == identity
                    && let Some(c) = table.and_then(|t| t.column(column))
                {
                    sampled.extend(c.samples.values().iter().cloned());
                }
            }
        }
        values.push(IdentityValues {
            name: identity.clone(),
            email: identity == "email",
            values: sampled,
        });
    }
    if let Some(position) = values.iter().position(|v| v.name == subject_id) {
        let subject_values = values.remove(position);
        values.insert(0, subject_values);
    }
    Ok(write(
        stores,
        &sql,
        &drafts,
        &identities,
        &subject_id,
        &values,
    ))
}

fn new_draft(store: usize, table: &Table, matches: BTreeMap<String, (String, String)>) -> Draft {
    Draft {
        store,
        table: table.name.clone(),
        matches,
        provides: BTreeMap::new(),
        erase: Erase::Delete,
        log: None,
        notes: Vec::new(),
    }
}

fn overlap(values: &[String], known: &[String]) -> usize {
    let known: BTreeSet<&String> = known.iter().collect();
    values.iter().filter(|v| known.contains(v)).count()
}

/// Tables of store `store` with a foreign key to `table`.
fn referrers<'a>(sql: &'a [Sql<'_>], store: usize, table: &str) -> BTreeSet<&'a str> {
    sql[store]
        .catalog
        .tables
        .iter()
        .filter(|t| t.name != table && t.foreign_keys.iter().any(|k| k.parent == table))
        .map(|t| t.name.as_str())
        .collect()
}

/// The table holding emails or phones that most others point to.
fn subject_table(sql: &[Sql<'_>]) -> anyhow::Result<(usize, String)> {
    let mut best: Option<((usize, usize, usize), usize, String)> = None;
    for (i, store) in sql.iter().enumerate() {
        for table in &store.catalog.tables {
            let findings = &store.findings[table.name.as_str()];
            let contact = findings
                .iter()
                .filter(|f| matches!(f.category, Category::Email | Category::Phone))
                .count();
            if contact == 0 || table.primary_key.len() != 1 {
                continue;
            }
            let score = (
                referrers(sql, i, &table.name).len(),
                usize::from(has_word(&table.name, &SUBJECT_WORDS)),
                findings.len(),
            );
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, i, table.name.clone()));
            }
        }
    }
    best.map(|(_, i, name)| (i, name)).ok_or_else(|| {
        anyhow::anyhow!(
            "no table with a primary key holds emails or phone numbers: there is no subject table to start from"
        )
    })
}

/// Decides how `draft` is erased: masked and kept (financial or legal look), a log table, or
/// deleted.
fn strategy(draft: &mut Draft, table: &Table, findings: &[Finding], store: &Sql<'_>) {
    if has_word(&table.name, &KEPT_WORDS) {
        let mut masks = BTreeMap::new();
        let personal = findings.iter().map(|f| f.column.as_str());
        let links = draft.matches.values().map(|(c, _)| c.as_str());
        for column in personal.chain(links) {
            let Some(c) = table.column(column) else {
                continue;
            };
            if c.nullable {
                masks.insert(column.to_owned(), "null");
            } else if c.kind == ColumnKind::Text {
                masks.insert(column.to_owned(), "redact");
            } else {
                draft.notes.push(format!(
                    "TODO: `{column}` is NOT NULL and not text: it can be neither nulled nor redacted; the kept rows still name the subject through it"
                ));
            }
        }
        draft.notes.push(format!(
            "kept and masked: the name `{}` looks financial or legal; state the legal basis in `retain`",
            table.name
        ));
        draft.erase = if masks.is_empty() {
            Erase::Retain
        } else {
            Erase::Mask(masks)
        };
        return;
    }
    let referenced = store.catalog.tables.iter().any(|t| {
        t.foreign_keys
            .iter()
            .any(|k| k.parent == table.name && t.name != table.name)
    });
    let time_columns: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| c.kind == ColumnKind::Time)
        .map(|c| c.name.as_str())
        .collect();
    let appended_only = table.column("updated_at").is_none() && !referenced;
    if has_word(&table.name, &LOG_WORDS) && appended_only && !time_columns.is_empty() {
        let timestamp = TIMESTAMPS
            .iter()
            .find(|t| time_columns.contains(t))
            .copied()
            .unwrap_or(time_columns[0]);
        let indexed = table
            .indexes
            .iter()
            .any(|i| i.columns.first().is_some_and(|c| c == timestamp));
        draft.notes.push(format!(
            "a log table: named like one, timestamp column `{timestamp}`{}, no `updated_at`, no table references it",
            if indexed { " (indexed)" } else { " (not indexed: retention would scan the table)" }
        ));
        draft.log = Some(timestamp.to_owned());
    }
}

fn write(
    stores: &[Discovered],
    sql: &[Sql<'_>],
    drafts: &[Draft],
    identities: &[String],
    subject_id: &str,
    values: &[IdentityValues],
) -> Suggestion {
    let mut out = String::new();
    let mut summary = String::new();
    let _ = writeln!(
        out,
        "# Data map drafted by `lethe-eraser datamap suggest` from the live stores.\n\
         # Every choice carries its evidence (names and counts; no value was written here).\n\
         # Review it: fill in every TODO, then run `lethe-eraser datamap check`.\n"
    );
    let _ = writeln!(
        out,
        "identities = [{}]",
        identities
            .iter()
            .map(|i| q(i))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let normalize: Vec<String> = identities
        .iter()
        .map(|i| {
            let rule = match i.as_str() {
                "email" => "email",
                "phone" => "phone",
                _ => "none",
            };
            format!("{i} = {}", q(rule))
        })
        .collect();
    let _ = writeln!(out, "normalize = {{ {} }}", normalize.join(", "));
    let _ = writeln!(
        out,
        "# phone_region = \"GB\"   # TODO: the region of phone numbers written nationally, if any"
    );
    let _ = writeln!(
        out,
        "# `{subject_id}` is the key of the subject table; the other *_id identities are provided by\n\
         # tables other tables reference, so chains of foreign keys of any depth are followed."
    );
    for (i, store) in sql.iter().enumerate() {
        let mine: Vec<&Draft> = drafts.iter().filter(|d| d.store == i).collect();
        let _ = writeln!(
            summary,
            "store `{}` ({}): {} table(s) read, {} collection(s) drafted, {} column(s) flagged as personal data",
            store.name,
            store.kind,
            store.catalog.tables.len(),
            mine.len(),
            store.findings.values().map(Vec::len).sum::<usize>()
        );
        if mine.is_empty() {
            let _ = writeln!(
                out,
                "\n# store `{}`: no table holds the subject's data",
                store.name
            );
            continue;
        }
        let _ = writeln!(
            out,
            "\n[stores.{}]\nkind = {}\nurl_env = {}",
            store.name,
            q(store.kind),
            q(store.url_env)
        );
        for draft in &mine {
            write_collection(&mut out, store, draft);
        }
        let unmapped: Vec<String> = store
            .catalog
            .tables
            .iter()
            .filter(|t| !mine.iter().any(|d| d.table == t.name))
            .map(|t| {
                let flagged = store.findings[t.name.as_str()].len();
                if flagged == 0 {
                    format!("`{}`", t.name)
                } else {
                    format!("`{}` (TODO: {flagged} column(s) look personal but nothing links them to the subject)", t.name)
                }
            })
            .collect();
        if !unmapped.is_empty() {
            let _ = writeln!(
                out,
                "\n# Not mapped (no personal data found, no link to the subject): {}",
                unmapped.join(", ")
            );
        }
    }
    for store in stores {
        match store {
            Discovered::Redis {
                name,
                url_env,
                key_prefix,
                keys,
            } => {
                let found = patterns(keys.values(), ':', false, values);
                let _ = writeln!(
                    summary,
                    "store `{name}` (redis): {} key(s) sampled, {} key template(s) drafted",
                    keys.len(),
                    found.iter().filter(|p| p.is_subjects()).count()
                );
                write_keys(
                    &mut out,
                    name,
                    "redis",
                    keys.len(),
                    &found,
                    |out, templates| {
                        let _ = writeln!(out, "url_env = {}", q(url_env));
                        let _ = writeln!(out, "key_prefix = {}", q(key_prefix));
                        let _ = writeln!(out, "keys = [{templates}]");
                    },
                );
            }
            Discovered::S3 {
                name,
                bucket,
                prefix,
                keys,
            } => {
                let found: Vec<Pattern> = patterns(keys.values(), '/', true, values)
                    .into_iter()
                    .map(|mut p| {
                        p.template = format!("{prefix}{}", p.template);
                        p
                    })
                    .collect();
                let _ = writeln!(
                    summary,
                    "store `{name}` (s3): {} object(s) sampled, {} prefix template(s) drafted",
                    keys.len(),
                    found.iter().filter(|p| p.is_subjects()).count()
                );
                write_keys(
                    &mut out,
                    name,
                    "s3",
                    keys.len(),
                    &found,
                    |out, templates| {
                        let _ = writeln!(out, "bucket = {}", q(bucket));
                        let _ = writeln!(out, "prefixes = [{templates}]");
                    },
                );
            }
            Discovered::Sql { .. } => {}
        }
    }
    Suggestion { toml: out, summary }
}

fn write_collection(out: &mut String, store: &Sql<'_>, draft: &Draft) {
    let table = store.catalog.table(&draft.table);
    let _ = writeln!(out, "\n[[stores.{}.collections]]", store.name);
    for note in &draft.notes {
        let _ = writeln!(out, "# {note}");
    }
    for (identity, (column, evidence)) in &draft.matches {
        let indexed = table.is_some_and(|t| {
            t.indexes
                .iter()
                .any(|i| i.columns.first().is_some_and(|c| c == column))
        });
        let index = if store.kind == "postgres" && (identity == "email" || identity == "phone") {
            // PostgreSQL compares the normalised column, which a plain index does not serve.
            " (TODO: create the expression index the README's data map section shows)"
        } else if indexed {
            " (indexed)"
        } else {
            " (TODO: no index starts with it; an erasure scans the table)"
        };
        let _ = writeln!(out, "# match {identity}: {evidence}{index}");
    }
    for (identity, (column, evidence)) in &draft.provides {
        let _ = writeln!(out, "# provides {identity} = `{column}`: {evidence}");
    }
    if let Some(findings) = store.findings.get(draft.table.as_str()) {
        for f in findings {
            let _ = writeln!(
                out,
                "# personal data, {}: {}",
                f.category.as_str(),
                f.evidence
            );
        }
    }
    let _ = writeln!(out, "table = {}", q(&draft.table));
    let pairs = |map: &BTreeMap<String, (String, String)>| {
        map.iter()
            .map(|(k, (c, _))| format!("{k} = {}", q(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "match = {{ {} }}", pairs(&draft.matches));
    if !draft.provides.is_empty() {
        let _ = writeln!(out, "provides = {{ {} }}", pairs(&draft.provides));
    }
    match &draft.erase {
        Erase::Delete => {
            let _ = writeln!(out, "erase = \"delete\"");
        }
        Erase::Retain => {
            let _ = writeln!(out, "erase = \"retain\"\nretain = \"TODO: legal basis\"");
        }
        Erase::Mask(masks) => {
            let masks: Vec<String> = masks
                .iter()
                .map(|(c, m)| format!("{c} = {}", q(m)))
                .collect();
            let _ = writeln!(
                out,
                "erase = {{ mask = {{ {} }} }}\nretain = \"TODO: legal basis\"",
                masks.join(", ")
            );
        }
    }
    if let Some(timestamp) = &draft.log {
        let _ = writeln!(
            out,
            "log = {{ timestamp = {}, max_age_days = 365 }}",
            q(timestamp)
        );
    }
}

fn write_keys(
    out: &mut String,
    name: &str,
    kind: &str,
    sampled: usize,
    found: &[Pattern],
    body: impl FnOnce(&mut String, &str),
) {
    let subjects: Vec<&Pattern> = found.iter().filter(|p| p.is_subjects()).collect();
    if subjects.is_empty() {
        let _ = writeln!(
            out,
            "\n# store `{name}` ({kind}): none of {sampled} sampled key(s) names an identity"
        );
        return;
    }
    let _ = writeln!(out, "\n[stores.{name}]\nkind = {}", q(kind));
    for p in found {
        if p.is_subjects() {
            let evidence: Vec<String> = p
                .evidence
                .iter()
                .map(|(identity, hits, total)| {
                    format!("{hits} of {total} sampled values are sampled `{identity}` values")
                })
                .collect();
            let _ = writeln!(
                out,
                "# `{}`: {} key(s) sampled; {}",
                p.template,
                p.keys,
                evidence.join("; ")
            );
        } else {
            let _ = writeln!(
                out,
                "# not mapped: `{}` ({} key(s) sampled; no identity in it)",
                p.template, p.keys
            );
        }
    }
    let templates: Vec<String> = subjects.iter().map(|p| q(&p.template)).collect();
    body(out, &templates.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_become_identity_names() {
        assert_eq!(identity_of("customers"), "customer_id");
        assert_eq!(identity_of("addresses"), "address_id");
        assert_eq!(identity_of("categories"), "category_id");
        assert_eq!(identity_of("order_items"), "order_item_id");
    }
}
