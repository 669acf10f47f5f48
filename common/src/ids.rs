//! Typed identifiers of Lethe's own objects, so a request id cannot be passed where a tenant id
//! is expected. They are not personal data and may be logged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7), so ids sort by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A data-subject request.
    RequestId
);
uuid_id!(
    /// A tenant: one API client organisation whose requests are kept apart from all others.
    TenantId
);
uuid_id!(
    /// An API key.
    ApiKeyId
);
uuid_id!(
    /// One backup of one store.
    BackupId
);

/// The name of a store in the data map: lowercase letters, digits, `_` and `-`, so that it is
/// a valid NATS subject token and durable-consumer name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoreName(String);

/// Names that a store may not take because they mean something else on the task subjects,
/// or name Lethe's own data (its ledger, backed up as a store, and its tombstones).
const RESERVED_STORE_NAMES: &[&str] = &["assemble", "run", "all", LEDGER_STORE, "tombstones"];

/// The name under which the backup daemon backs up Lethe's own ledger, as if it were a store.
pub const LEDGER_STORE: &str = "ledger";

impl StoreName {
    /// Checks a store name.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "store name must be 1 to 64 characters, got {}",
                name.len()
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "store name `{name}` may hold only lowercase letters, digits, `_` and `-`"
            ));
        }
        if RESERVED_STORE_NAMES.contains(&name) {
            return Err(format!("store name `{name}` is reserved"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The ledger's name among the stores backed up ([`LEDGER_STORE`], which no data-map store
    /// may take).
    pub fn ledger() -> Self {
        Self(LEDGER_STORE.to_owned())
    }

    /// Whether this is the ledger.
    pub fn is_ledger(&self) -> bool {
        self.0 == LEDGER_STORE
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StoreName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<StoreName> for String {
    fn from(value: StoreName) -> Self {
        value.0
    }
}

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StoreName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_must_be_subject_tokens() {
        assert!(StoreName::parse("accounts").is_ok());
        assert!(StoreName::parse("chat-eu_1").is_ok());
        assert!(StoreName::parse("Accounts").is_err());
        assert!(StoreName::parse("a.b").is_err());
        assert!(StoreName::parse("a*").is_err());
        assert!(StoreName::parse("assemble").is_err());
        assert!(StoreName::parse("ledger").is_err());
        assert!(StoreName::parse("").is_err());
    }

    #[test]
    fn request_ids_sort_by_creation() {
        let first = RequestId::new();
        let second = RequestId::new();
        assert!(first < second);
    }
}
