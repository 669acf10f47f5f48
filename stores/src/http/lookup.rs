//! Finding records: a lookup request filled with every combination of the subject's values,
//! paged through, its records picked out of each answer by JSON pointer and de-duplicated by
//! their id (a customer found under two spellings of an address counts once).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use lethe_common::datamap::{Lookup, MAX_PAGES, Pagination};
use lethe_common::worker::TaskError;

use super::HttpConnector;
use super::request::Prepared;

/// A record found, with its id when the lookup's `id` pointer finds one.
pub(crate) struct Found {
    /// The record's id as text (`cus_123`, `42`).
    pub id: Option<String>,
    /// The record as the processor gave it.
    pub record: Json,
}

impl HttpConnector {
    /// Every record `lookup` finds for any of `combinations` (each a filling of its
    /// placeholders), each once.
    pub(crate) async fn find_all(
        &self,
        lookup: &Lookup,
        combinations: &[BTreeMap<&str, &str>],
    ) -> Result<Vec<Found>, TaskError> {
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for values in combinations {
            for record in self.find(lookup, values).await? {
                let id = id_of(&record, &lookup.id);
                let key = id.clone().unwrap_or_else(|| record.to_string());
                if seen.insert(key) {
                    found.push(Found { id, record });
                }
            }
        }
        Ok(found)
    }

    /// The records `lookup` filled with `values` finds, every page.
    async fn find(
        &self,
        lookup: &Lookup,
        values: &BTreeMap<&str, &str>,
    ) -> Result<Vec<Json>, TaskError> {
        let Some(first) = Prepared::new(&lookup.request, values, None, None) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        let mut request = first;
        for page in 0..MAX_PAGES {
            let answer = self.handle.send(&self.store, &request).await?;
            if lookup.not_found.contains(&answer.status) {
                break;
            }
            if !(200..300).contains(&answer.status) {
                return Err(self.refused(&request.label, &answer));
            }
            let Some(body) = answer.body else {
                return Err(self.unreadable(&request.label));
            };
            let listed = match body.pointer(&lookup.records) {
                Some(Json::Array(items)) => items.clone(),
                Some(Json::Null) | None => Vec::new(),
                Some(one) => vec![one.clone()],
            };
            if listed.is_empty() {
                break;
            }
            let last_id = listed.last().and_then(|r| id_of(r, &lookup.id));
            records.extend(listed);
            let more = |pointer: &Option<String>| {
                pointer
                    .as_ref()
                    .is_none_or(|p| body.pointer(p).and_then(Json::as_bool).unwrap_or(false))
            };
            let next = match &lookup.pagination {
                None => None,
                Some(Pagination::Cursor {
                    param,
                    next: Some(pointer),
                    more: more_pointer,
                }) => body
                    .pointer(pointer)
                    .and_then(text_of)
                    .filter(|_| more(more_pointer))
                    .map(|cursor| (param, cursor)),
                Some(Pagination::Cursor {
                    param,
                    next: None,
                    more: more_pointer,
                }) => last_id.filter(|_| more(more_pointer)).map(|id| (param, id)),
                Some(Pagination::Page {
                    param,
                    start,
                    more: more_pointer,
                }) => more(more_pointer).then(|| {
                    let page = u64::try_from(page).unwrap_or(u64::MAX);
                    (
                        param,
                        start.saturating_add(page).saturating_add(1).to_string(),
                    )
                }),
            };
            match next {
                // The first page is asked without a page number or cursor (the processor's
                // default is its first); the later ones name theirs.
                Some((param, value)) => request = request.with_query(param, value),
                None => break,
            }
        }
        Ok(records)
    }
}

/// The text of a record's id (a string or a number).
pub(crate) fn id_of(record: &Json, pointer: &str) -> Option<String> {
    record.pointer(pointer).and_then(text_of)
}

fn text_of(value: &Json) -> Option<String> {
    match value {
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
