//! Processors reached over HTTP (data-map kind `http`): what collect, erase, rectify and
//! restrict do in a payment or e-mail service's API, as the data map declares it.
//!
//! Every flow starts from the lookup (`resolve`): its request filled with each combination of
//! the subject's values (each as filed and normalised), paged through; the records found are
//! the subject's. Requests whose templates name `{id}` are made once per record found; the
//! others once per combination of the subject's values.
//!
//! - **collect** writes the records found, then each `collect` lookup's records per record
//!   found, into the sink, one collection per lookup;
//! - **erase** makes the `erase` request, then the lookup again: anything still found makes the
//!   task transient (retried), so `remaining` of a done erasure is zero;
//! - **rectify** and **restrict** / **object** make their requests per record found.
//!
//! Failures: connection errors, timeouts, `408` and `5xx` are transient, as for any store; a
//! `429` is waited for (see [`client`]); any other status the data map does not expect fails
//! the task with the status and the processor's error code, never its body.
//!
//! | module | job |
//! | --- | --- |
//! | `client` | the connection: base URL, credentials, pacing, `Retry-After`, sending |
//! | `request` | a request template filled with values; the label logs name it by |
//! | `lookup` | finding records: paging, JSON pointers, de-duplication |

mod client;
mod lookup;
mod request;

use std::collections::BTreeMap;

use serde_json::Value as Json;

use lethe_common::datamap::{Action, HttpStore, RECORD_ID, RequestSpec};
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::worker::TaskError;

pub use client::HttpHandle;

use crate::connector::{CollectSink, Flag};
use crate::values::{MAX_VALUES, combinations, still_holds, too_many, with_spellings};
use client::Answer;
use lookup::Found;
use request::{Prepared, toml_to_json};

/// A processor.
pub(crate) struct HttpConnector {
    store: StoreName,
    handle: HttpHandle,
    spec: HttpStore,
}

/// How an action's answer was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acted {
    /// Done: counted.
    Done,
    /// The record was gone already: done, not counted.
    Gone,
}

impl HttpConnector {
    pub(crate) fn new(store: StoreName, handle: HttpHandle, spec: HttpStore) -> Self {
        Self {
            store,
            handle,
            spec,
        }
    }

    /// The records the lookup finds for the subject.
    async fn found(&self, identities: &Identities) -> Result<Vec<Found>, TaskError> {
        let spelled = with_spellings(identities, &self.spec.matching);
        let names = identity_placeholders(&self.spec.resolve.request);
        let fillings = combinations(&names, &spelled);
        if fillings.len() > MAX_VALUES {
            return Err(too_many(&self.store, "lookups"));
        }
        let found = self.find_all(&self.spec.resolve, &fillings).await?;
        if found.len() > MAX_VALUES {
            return Err(too_many(&self.store, "records"));
        }
        Ok(found)
    }

    /// Makes `action` for the subject: per record found when it names `{id}`, else once per
    /// filling of its identity placeholders. Returns how many records it changed.
    async fn act(
        &self,
        action: &Action,
        found: &[Found],
        identities: &Identities,
        body: Option<&BTreeMap<String, toml::Value>>,
        extra: Option<&BTreeMap<String, Json>>,
    ) -> Result<u64, TaskError> {
        let spelled = with_spellings(identities, &self.spec.matching);
        let names = identity_placeholders(&action.request);
        let fillings = combinations(&names, &spelled);
        let mut changed = 0u64;
        if action.request.per_record() {
            for record in found {
                let Some(id) = record.id.as_deref() else {
                    continue;
                };
                // A record-level request with identity placeholders too is made once (with
                // the first filling): the record is the target, the values only decorate it.
                let mut values = fillings.first().cloned().unwrap_or_default();
                values.insert(RECORD_ID, id);
                if self.act_once(action, &values, body, extra).await? == Acted::Done {
                    changed += 1;
                }
            }
        } else if !found.is_empty() {
            let mut done = false;
            for values in &fillings {
                done |= self.act_once(action, values, body, extra).await? == Acted::Done;
            }
            if done {
                changed = u64::try_from(found.len()).unwrap_or(u64::MAX);
            }
        }
        Ok(changed)
    }

    async fn act_once(
        &self,
        action: &Action,
        values: &BTreeMap<&str, &str>,
        body: Option<&BTreeMap<String, toml::Value>>,
        extra: Option<&BTreeMap<String, Json>>,
    ) -> Result<Acted, TaskError> {
        let Some(request) = Prepared::new(&action.request, values, body, extra) else {
            return Ok(Acted::Gone);
        };
        let answer = self.handle.send(&self.store, &request).await?;
        if action.gone.contains(&answer.status) {
            return Ok(Acted::Gone);
        }
        let done = if action.done.is_empty() {
            (200..300).contains(&answer.status)
        } else {
            action.done.contains(&answer.status)
        };
        if !done {
            return Err(self.refused(&request.label, &answer));
        }
        if let Some(check) = &action.done_field {
            let expected = toml_to_json(&check.equals);
            let holds = answer
                .body
                .as_ref()
                .and_then(|b| b.pointer(&check.pointer))
                .is_some_and(|v| *v == expected);
            if !holds {
                // The processor accepted the request without confirming it: ask again later
                // (the lookup afterwards decides whether anything remains).
                return Err(TaskError::Transient(anyhow::anyhow!(
                    "store `{}`: `{}` answered {} without `{}` confirming it",
                    self.store,
                    request.label,
                    answer.status,
                    check.pointer
                )));
            }
        }
        Ok(Acted::Done)
    }

    /// The error of an answer the data map does not expect: transient for `408` and `5xx`,
    /// else permanent with the status and the processor's error code (never its body).
    fn refused(&self, label: &str, answer: &Answer) -> TaskError {
        let code = self.error_code(answer);
        let with_code = code
            .as_deref()
            .map(|c| format!(" (error code `{c}`)"))
            .unwrap_or_default();
        let message = format!(
            "store `{}`: `{label}` answered {}{with_code}",
            self.store, answer.status
        );
        if answer.status == 408 || answer.status >= 500 {
            TaskError::Transient(anyhow::anyhow!("{message}"))
        } else {
            TaskError::Permanent {
                code: "processor_refused",
                reason: message,
            }
        }
    }

    fn unreadable(&self, label: &str) -> TaskError {
        TaskError::Permanent {
            code: "processor_answer_invalid",
            reason: format!(
                "store `{}`: `{label}` answered with a body that is not JSON",
                self.store
            ),
        }
    }

    /// The processor's error code, where the data map's `error_code` (or `/error/code`, then
    /// `/code`) finds a short token: anything else could be text quoting personal data.
    fn error_code(&self, answer: &Answer) -> Option<String> {
        let body = answer.body.as_ref()?;
        let pointers: Vec<&str> = match &self.spec.error_code {
            Some(pointer) => vec![pointer.as_str()],
            None => vec!["/error/code", "/code"],
        };
        pointers.into_iter().find_map(|p| {
            let code = body.pointer(p)?.as_str()?;
            let token = !code.is_empty()
                && code.len() <= 64
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            token.then(|| code.to_owned())
        })
    }

    /// Streams the records found, then each `collect` lookup's records, into `sink`.
    pub(crate) async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        let found = self.found(identities).await?;
        let mut counts = BTreeMap::new();
        sink.begin(&self.spec.resolve.name).await?;
        for record in &found {
            sink.record(&self.json(&record.record)?).await?;
        }
        sink.end().await?;
        counts.insert(
            self.spec.resolve.name.clone(),
            u64::try_from(found.len()).unwrap_or(u64::MAX),
        );
        let spelled = with_spellings(identities, &self.spec.matching);
        for lookup in &self.spec.collect {
            let names = identity_placeholders(&lookup.request);
            let fillings = combinations(&names, &spelled);
            let mut per_record: Vec<BTreeMap<&str, &str>> = Vec::new();
            if lookup.request.per_record() {
                for record in &found {
                    if let Some(id) = record.id.as_deref() {
                        let mut values = fillings.first().cloned().unwrap_or_default();
                        values.insert(RECORD_ID, id);
                        per_record.push(values);
                    }
                }
            } else if !found.is_empty() {
                per_record = fillings;
            }
            let records = self.find_all(lookup, &per_record).await?;
            sink.begin(&lookup.name).await?;
            for record in &records {
                sink.record(&self.json(&record.record)?).await?;
            }
            sink.end().await?;
            counts.insert(
                lookup.name.clone(),
                u64::try_from(records.len()).unwrap_or(u64::MAX),
            );
        }
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    fn json(&self, record: &Json) -> Result<Vec<u8>, TaskError> {
        serde_json::to_vec(record).map_err(|_| TaskError::Permanent {
            code: "store_error",
            reason: format!("store `{}`: a record cannot be written as JSON", self.store),
        })
    }

    /// Erases the records found, then looks again: anything still found is a transient
    /// failure. `counts` holds the records erased (zero for a subject already erased). A dry
    /// run only looks: `counts` holds the records an erasure would send requests for.
    pub(crate) async fn erase(
        &self,
        identities: &Identities,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let found = self.found(identities).await?;
        if dry_run {
            return Ok(self.would_change(&found));
        }
        let erased = self
            .act(&self.spec.erase, &found, identities, None, None)
            .await?;
        let left = self.found(identities).await?;
        if !left.is_empty() {
            let remaining = u64::try_from(left.len()).unwrap_or(u64::MAX);
            return Err(still_holds(
                &self.store,
                remaining,
                &[format!("{}: {remaining}", self.spec.resolve.name)],
            ));
        }
        tracing::debug!(store = %self.store, erased, "processor erasure checked");
        Ok(TaskReport {
            counts: BTreeMap::from([(self.spec.resolve.name.clone(), erased)]),
            remaining: Some(0),
            ..TaskReport::default()
        })
    }

    /// A dry run's report: every record found would get its requests (a processor's API
    /// cannot say in advance which of them would change nothing).
    fn would_change(&self, found: &[Found]) -> TaskReport {
        TaskReport {
            counts: BTreeMap::from([(
                self.spec.resolve.name.clone(),
                u64::try_from(found.len()).unwrap_or(u64::MAX),
            )]),
            ..TaskReport::default()
        }
    }

    /// Sends the corrected values of the fields this processor declares, per record found.
    pub(crate) async fn rectify(
        &self,
        identities: &Identities,
        changes: &BTreeMap<String, Json>,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let Some(rectify) = &self.spec.rectify else {
            return Ok(TaskReport::default());
        };
        let fields: BTreeMap<String, Json> = rectify
            .fields
            .iter()
            .filter_map(|(field, target)| Some((target.clone(), changes.get(field)?.clone())))
            .collect();
        if fields.is_empty() {
            return Ok(TaskReport::default());
        }
        let found = self.found(identities).await?;
        if dry_run {
            return Ok(self.would_change(&found));
        }
        let changed = self
            .act(&rectify.action, &found, identities, None, Some(&fields))
            .await?;
        Ok(TaskReport {
            counts: BTreeMap::from([(self.spec.resolve.name.clone(), changed)]),
            ..TaskReport::default()
        })
    }

    /// Sets or lifts a restriction or objection on every record found.
    pub(crate) async fn set_flag(
        &self,
        identities: &Identities,
        flag: Flag,
        value: bool,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let requests = match flag {
            Flag::Restrict => &self.spec.restrict,
            Flag::Object => &self.spec.object,
        };
        let Some(requests) = requests else {
            return Ok(TaskReport::default());
        };
        let body = if value {
            None
        } else {
            match &requests.lift {
                Some(lift) => Some(lift),
                // Nothing says how to lift it here: left to the operator.
                None => return Ok(TaskReport::default()),
            }
        };
        let found = self.found(identities).await?;
        if dry_run {
            return Ok(self.would_change(&found));
        }
        let changed = self
            .act(&requests.set, &found, identities, body, None)
            .await?;
        Ok(TaskReport {
            counts: BTreeMap::from([(self.spec.resolve.name.clone(), changed)]),
            ..TaskReport::default()
        })
    }
}

/// The identity placeholders of a request (`{id}` aside), in order.
fn identity_placeholders(request: &RequestSpec) -> Vec<String> {
    request
        .placeholders()
        .into_iter()
        .filter(|p| p != RECORD_ID)
        .collect()
}
