//! The two SQL dialects: quoting of names and the expressions that differ between PostgreSQL
//! and MariaDB (casts, patterns, "already masked" tests).

use lethe_common::datamap::Mask;

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
