//! Collection: the subject's rows of every collection, streamed as JSON into a sink.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use lethe_common::messages::Identities;
use lethe_common::worker::TaskError;

use super::resolve::expand;
use crate::connector::CollectSink;
use crate::sql::plan::Plan;
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;

/// Why a collection stopped.
pub(crate) enum CollectFailure {
    /// The database failed.
    Store(Failure),
    /// The sink failed.
    Sink(TaskError),
    /// The database returned a row of this collection that is not one line of JSON.
    NotOneLine(String),
}

impl From<Failure> for CollectFailure {
    fn from(failure: Failure) -> Self {
        CollectFailure::Store(failure)
    }
}

impl From<TaskError> for CollectFailure {
    fn from(error: TaskError) -> Self {
        CollectFailure::Sink(error)
    }
}

/// Streams the subject's rows of every collection into `sink` (a cursor, never a whole table
/// in memory), after following the store's own derivations; returns the rows per collection.
pub(crate) async fn collect_in<S: Session, K: CollectSink>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    tenant: Option<&str>,
    sink: &mut K,
) -> Result<BTreeMap<String, u64>, CollectFailure> {
    let identities = expand(session, plan, given, tenant).await?.all;
    let mut counts = BTreeMap::new();
    for collection in &plan.collections {
        sink.begin(&collection.name).await?;
        let mut rows = 0u64;
        if let Some(matcher) = Matcher::new(collection, &identities, tenant) {
            let statement = queries::select_json(S::DIALECT, collection, &matcher);
            let mut stream = session.json_rows(&statement);
            while let Some(row) = stream.next().await {
                let row = row.during("reading rows", Some(&collection.name))?;
                // The database escapes line breaks inside JSON strings; a raw one would break
                // the record framing downstream.
                if row.as_bytes().contains(&b'\n') {
                    return Err(CollectFailure::NotOneLine(collection.name.clone()));
                }
                sink.record(row.as_bytes()).await?;
                rows += 1;
            }
        }
        sink.end().await?;
        counts.insert(collection.name.clone(), rows);
    }
    Ok(counts)
}
