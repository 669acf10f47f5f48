//! Record counts per store and collection.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The sample's stores and their collections, in data-map order. Sessions count Redis keys per
/// key family, files count objects per top-level folder.
pub const COLLECTIONS: &[(&str, &[&str])] = &[
    ("accounts", &["users", "invoices", "access_log"]),
    ("chat", &["conversations", "messages", "visits"]),
    ("sessions", &["session", "last_seen", "visits"]),
    ("files", &["avatars", "attachments"]),
];

/// How many records each collection of each store holds.
///
/// [`Counts::zero`] lists every collection of [`COLLECTIONS`], so two `Counts` compare equal
/// only if every collection matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    stores: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counts {
    /// Every collection of the sample, at zero.
    pub fn zero() -> Self {
        let mut counts = Self::default();
        for (store, collections) in COLLECTIONS {
            for collection in *collections {
                counts.set(store, collection, 0);
            }
        }
        counts
    }

    /// The count of one collection (zero if absent).
    pub fn get(&self, store: &str, collection: &str) -> u64 {
        self.stores
            .get(store)
            .and_then(|c| c.get(collection))
            .copied()
            .unwrap_or(0)
    }

    /// Sets the count of one collection.
    pub fn set(&mut self, store: &str, collection: &str, count: u64) {
        self.stores
            .entry(store.to_string())
            .or_default()
            .insert(collection.to_string(), count);
    }

    /// Adds to the count of one collection.
    pub fn add(&mut self, store: &str, collection: &str, count: u64) {
        *self
            .stores
            .entry(store.to_string())
            .or_default()
            .entry(collection.to_string())
            .or_default() += count;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Counts) {
        for (store, collection, count) in other.iter() {
            self.add(store, collection, count);
        }
    }

    /// Only the collections of `store`, the others at zero (for comparing one store).
    pub fn only(&self, store: &str) -> Counts {
        let mut counts = Counts::zero();
        for (s, collection, count) in self.iter() {
            if s == store {
                counts.set(s, collection, count);
            }
        }
        counts
    }

    /// `(store, collection, count)`: the sample's collections in [`COLLECTIONS`] order, then
    /// any other in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        let known = |store: &str, collection: &str| {
            COLLECTIONS.iter().enumerate().find_map(|(si, (s, cs))| {
                (*s == store)
                    .then(|| cs.iter().position(|c| *c == collection).map(|ci| (si, ci)))
                    .flatten()
            })
        };
        let mut all: Vec<(&str, &str, u64)> = self
            .stores
            .iter()
            .flat_map(|(store, collections)| {
                collections
                    .iter()
                    .map(move |(collection, count)| (store.as_str(), collection.as_str(), *count))
            })
            .collect();
        all.sort_by_key(|(s, c, _)| (known(s, c).unwrap_or((usize::MAX, usize::MAX)), *s, *c));
        all.into_iter()
    }

    /// The sum of one store's collections.
    pub fn store_total(&self, store: &str) -> u64 {
        self.stores.get(store).map_or(0, |c| c.values().sum())
    }

    /// The sum of every collection.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, _, n)| n).sum()
    }
}

/// A plain-text table: store, collection, count, with a total line.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<10} {:<14} {:>12}", "store", "collection", "count")?;
        for (store, collection, count) in self.iter() {
            writeln!(f, "{store:<10} {collection:<14} {count:>12}")?;
        }
        write!(f, "{:<10} {:<14} {:>12}", "total", "", self.total())
    }
}
