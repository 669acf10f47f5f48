//! The two SQL dialects: quoting of names and the expressions that differ between PostgreSQL
//! and MariaDB (casts, patterns, "already masked" tests).

use lethe_common::datamap::{Mask, Normalization};

/// What a `redact` mask writes.
pub(crate) const REDACTED: &str = "[redacted]";
/// A `hash` mask writes 64 lowercase hex digits (HMAC-SHA256); a `random` mask 32.
pub(crate) const HASH_PATTERN: &str = "^[0-9a-f]{64}$";
pub(crate) const RANDOM_PATTERN: &str = "^[0-9a-f]{32}$";

/// The SQL spoken by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    /// A quoted identifier. Names come from the data map, where they are checked to be plain
    /// identifiers; quoting keeps reserved words usable and the text inert.
    pub(crate) fn ident(self, name: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// A quoted, possibly schema-qualified table name.
    pub(crate) fn table(self, name: &str) -> String {
        name.split('.')
            .map(|part| self.ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    pub(crate) fn as_text(self, expression: &str) -> String {
        match self {
            Dialect::Postgres => format!("CAST({expression} AS text)"),
            Dialect::Mysql => format!("CAST({expression} AS CHAR)"),
        }
    }

    pub(crate) fn matches_pattern(self, expression: &str, pattern: &str) -> String {
        match self {
            Dialect::Postgres => format!("{expression} ~ '{pattern}'"),
            Dialect::Mysql => format!("{expression} REGEXP '{pattern}'"),
        }
    }

    /// A match column as its identity is normalised, for comparing with normalised values.
    /// Emails: PostgreSQL compares `lower(column)` (an expression index `(lower(email))` serves
    /// it); MariaDB's default collations already compare case-insensitively, so the column is
    /// compared as it is and its ordinary index serves. Phones: every character but digits and
    /// `+` removed, compared with each spelling of the number (`+44...`, `0044...`, `0...`).
    pub(crate) fn normalized(self, column: &str, normalization: Normalization) -> String {
        match (self, normalization) {
            (_, Normalization::None) | (Dialect::Mysql, Normalization::Email) => column.to_owned(),
            (Dialect::Postgres, Normalization::Email) => format!("lower({column})"),
            (Dialect::Postgres, Normalization::Phone) => {
                format!("regexp_replace({column}, '[^0-9+]', '', 'g')")
            }
            (Dialect::Mysql, Normalization::Phone) => {
                format!("REGEXP_REPLACE({column}, '[^0-9+]', '')")
            }
        }
    }

    pub(crate) fn random_text(self) -> &'static str {
        match self {
            Dialect::Postgres => "md5(random()::text)",
            Dialect::Mysql => "MD5(RAND())",
        }
    }

    pub(crate) fn distinct_from(self, left: &str, right: &str) -> String {
        match self {
            Dialect::Postgres => format!("{left} IS DISTINCT FROM {right}"),
            Dialect::Mysql => format!("NOT ({left} <=> {right})"),
        }
    }

    /// The "already masked" test of one column: what the mask writes (NULL counts as masked
    /// for every mask: there is nothing left to hide).
    pub(crate) fn masked(self, column: &str, mask: Mask) -> String {
        match mask {
            Mask::Null => format!("{column} IS NULL"),
            Mask::Redact => format!("({column} IS NULL OR {column} = '{REDACTED}')"),
            Mask::Hash => format!(
                "({column} IS NULL OR {})",
                self.matches_pattern(column, HASH_PATTERN)
            ),
            Mask::Random => format!(
                "({column} IS NULL OR {})",
                self.matches_pattern(column, RANDOM_PATTERN)
            ),
        }
    }
}
