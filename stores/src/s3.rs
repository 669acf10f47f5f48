//! S3: every object under the data map's prefix templates rendered for the task's values,
//! listed page by page and deleted 1,000 per request (or handed to a collect sink to copy). In
//! a bucket that keeps versions, an erasure deletes every version and delete marker under the
//! prefixes by version id (a plain delete would only add a marker over the old data), counts
//! them, and its verification lists versions, not just current objects.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures::{StreamExt as _, TryStreamExt as _};

use lethe_common::datamap::S3Store;
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::s3::{ObjectVersion, TransferError};
use lethe_common::worker::TaskError;

use crate::connector::{CollectSink, SourceObject};
use crate::values::{
    MAX_VALUES, Rendered, erased, render_all, still_holds, too_many, with_spellings,
};

/// An S3 bucket.
pub(crate) struct S3Connector {
    store: StoreName,
    client: aws_sdk_s3::Client,
    spec: S3Store,
    /// Whether the bucket keeps versions, asked once.
    versioned: tokio::sync::OnceCell<bool>,
}

impl S3Connector {
    pub(crate) fn new(store: StoreName, client: aws_sdk_s3::Client, spec: S3Store) -> Self {
        Self {
            store,
            client,
            spec,
            versioned: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the bucket keeps old versions and delete markers, which an erasure must
    /// delete too (asked once per process: versioning, once enabled, is never off again).
    async fn keeps_versions(&self) -> Result<bool, TaskError> {
        self.versioned
            .get_or_try_init(|| async {
                lethe_common::s3::bucket_keeps_versions(&self.client, &self.spec.bucket)
                    .await
                    .map_err(|e| self.error("reading the bucket's versioning", &e))
            })
            .await
            .copied()
    }

    /// Every version and delete marker under `prefix`.
    async fn list_versions(
        &self,
        prefix: &str,
        action: &str,
    ) -> Result<Vec<ObjectVersion>, TaskError> {
        lethe_common::s3::list_versions_under(&self.client, &self.spec.bucket, prefix)
            .await
            .map_err(|e| self.error(action, &e))
    }

    /// What is under `prefix`: its objects, or in a versioned bucket every version and delete
    /// marker (each deleted by its version id, so nothing of it stays behind).
    async fn entries(
        &self,
        prefix: &str,
        versioned: bool,
        action: &str,
    ) -> Result<Vec<ObjectVersion>, TaskError> {
        if versioned {
            return Box::pin(self.list_versions(prefix, action)).await;
        }
        Ok(self
            .list(prefix, action)
            .await?
            .into_iter()
            .map(|key| ObjectVersion {
                key,
                version_id: None,
            })
            .collect())
    }

    /// Classifies an SDK error by its kind, HTTP status and S3 error code only: the request
    /// (and so a message quoting it) holds the subject's prefix.
    fn error<E: ProvideErrorMetadata, R>(&self, action: &str, error: &SdkError<E, R>) -> TaskError {
        let failure = TransferError::from_sdk("S3 request", error);
        let construction = matches!(error, SdkError::ConstructionFailure(_));
        self.failure(action, failure, construction)
    }

    /// A failed S3 call as a task error: transient if trying again may succeed.
    fn failure(&self, action: &str, failure: TransferError, construction: bool) -> TaskError {
        let place = format!(
            "store `{}`, bucket `{}`: {action} failed",
            self.store, self.spec.bucket
        );
        if failure.retryable {
            TaskError::Transient(anyhow::anyhow!("{}", failure.detail).context(place))
        } else {
            let code = if construction {
                "store_config"
            } else {
                "store_error"
            };
            TaskError::Permanent {
                code,
                reason: format!("{place}: {}", failure.detail),
            }
        }
    }

    /// The subject's prefixes per template.
    fn prefixes(&self, identities: &Identities) -> Result<Vec<(String, Vec<String>)>, TaskError> {
        // A value holding `/` would reach into a folder the template does not name (a user id
        // `7/x` into user 7's subfolder): such values cannot be the subject's here.
        let identities: Identities = with_spellings(identities, &self.spec.matching)
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().filter(|v| !v.contains('/')).cloned().collect(),
                )
            })
            .collect();
        let mut all = Vec::with_capacity(self.spec.prefixes.len());
        let mut total = 0;
        for template in &self.spec.prefixes {
            let prefixes = render_all(template, &identities);
            total += prefixes.len();
            if total > MAX_VALUES {
                return Err(too_many(&self.store, "prefixes"));
            }
            all.push((template.clone(), prefixes));
        }
        Ok(all)
    }

    async fn list(&self, prefix: &str, action: &str) -> Result<Vec<String>, TaskError> {
        lethe_common::s3::list_keys_under(&self.client, &self.spec.bucket, prefix)
            .await
            .map_err(|e| self.error(action, &e))
    }

    async fn delete(&self, versions: &[ObjectVersion]) -> Result<(), TaskError> {
        lethe_common::s3::delete_versions(&self.client, &self.spec.bucket, versions)
            .await
            .map_err(|failure| self.failure("deleting objects", failure, false))
    }

    /// Hands every object under the subject's prefixes to `sink`, each once (prefixes of
    /// different templates may overlap), per template in data-map order.
    pub(crate) async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        let prefixes = self.prefixes(identities)?;
        let shares_lethe_credentials = self.spec.endpoint_env.is_none()
            && self.spec.access_key_id_env.is_none()
            && self.spec.secret_access_key_env.is_none();
        let mut seen = BTreeSet::new();
        let mut counts = BTreeMap::new();
        for (template, prefixes) in &prefixes {
            sink.begin(template).await?;
            let mut found = 0u64;
            for prefix in prefixes {
                let objects =
                    lethe_common::s3::list_objects_under(&self.client, &self.spec.bucket, prefix)
                        .await
                        .map_err(|e| self.error("listing objects", &e))?;
                for object in objects {
                    if !seen.insert(object.key.clone()) {
                        continue;
                    }
                    sink.object(SourceObject {
                        client: &self.client,
                        bucket: &self.spec.bucket,
                        key: &object.key,
                        size: object.size,
                        e_tag: object.e_tag.as_deref(),
                        shares_lethe_credentials,
                    })
                    .await?;
                    found += 1;
                }
            }
            sink.end().await?;
            counts.insert(template.clone(), found);
        }
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// Deletes every object (every version, in a versioned bucket) under the subject's
    /// prefixes; a `dry_run` counts them and deletes nothing.
    pub(crate) async fn erase(
        &self,
        identities: &Identities,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let prefixes = self.prefixes(identities)?;
        // Boxed: the SDK's futures nested in the worker loop's overflow the compiler's layout
        // depth otherwise.
        let versioned = Box::pin(self.keeps_versions()).await?;
        let mut counts = BTreeMap::new();
        // Only prefixes that held objects are listed again: for an empty one, the first listing
        // already is the check.
        let mut to_verify = Vec::new();
        for (template, prefixes) in &prefixes {
            let mut deleted = 0u64;
            for prefix in prefixes {
                let keys = self.entries(prefix, versioned, "listing objects").await?;
                if !keys.is_empty() && !dry_run {
                    self.delete(&keys).await?;
                    to_verify.push((template, prefix));
                }
                deleted += keys.len() as u64;
            }
            counts.insert(template.clone(), deleted);
        }
        if dry_run {
            return Ok(TaskReport {
                counts,
                ..TaskReport::default()
            });
        }
        let mut left_by_template: BTreeMap<&String, u64> = BTreeMap::new();
        for (template, prefix) in to_verify {
            let left = self
                .entries(prefix, versioned, "verifying the erasure")
                .await?
                .len() as u64;
            if left > 0 {
                *left_by_template.entry(template).or_insert(0) += left;
            }
        }
        let remaining: u64 = left_by_template.values().sum();
        if remaining > 0 {
            let names: Vec<String> = left_by_template
                .iter()
                .map(|(template, left)| format!("{template}: {left}"))
                .collect();
            return Err(still_holds(&self.store, remaining, &names));
        }
        Ok(TaskReport {
            counts,
            remaining: Some(0),
            ..TaskReport::default()
        })
    }
}

/// Listings at once in a batch of erasures.
const BATCH_LISTINGS: usize = 16;

/// A batch of erasures: every subject's prefixes listed at once (a few at a time), the objects
/// of all deleted together (1,000 per `DeleteObjects`), and the prefixes that held objects
/// listed again. An object under two subjects' prefixes is counted for the first, as erasing
/// them one after the other would.
impl S3Connector {
    pub(crate) async fn erase_batch(
        &self,
        subjects: &[&Identities],
    ) -> Result<Vec<Result<TaskReport, TaskError>>, TaskError> {
        let prefixed: Vec<Result<Rendered, TaskError>> =
            subjects.iter().map(|i| self.prefixes(i)).collect();
        let versioned = Box::pin(self.keeps_versions()).await?;
        // (subject, template, prefix), in the order the single tasks would visit them.
        let places: Vec<(usize, &String, &String)> = prefixed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
            .flat_map(|(i, p)| {
                p.iter().flat_map(move |(template, prefixes)| {
                    prefixes.iter().map(move |p| (i, template, p))
                })
            })
            .collect();
        let prefixes: Vec<&String> = places.iter().map(|(_, _, prefix)| *prefix).collect();
        let listed = self
            .list_all(&prefixes, versioned, "listing objects")
            .await?;
        let mut seen: BTreeSet<(String, Option<String>)> = BTreeSet::new();
        let mut doomed = Vec::new();
        let mut counts: Vec<BTreeMap<String, u64>> = prefixed
            .iter()
            .map(|p| match p {
                Ok(p) => p.iter().map(|(t, _)| (t.clone(), 0)).collect(),
                Err(_) => BTreeMap::new(),
            })
            .collect();
        let mut to_verify = Vec::new();
        for ((subject, template, prefix), entries) in places.iter().zip(listed) {
            // Every prefix that held objects is listed again, for each subject it is one of.
            if !entries.is_empty() {
                to_verify.push((*subject, *template, *prefix));
            }
            let mut fresh = 0u64;
            for entry in entries {
                if seen.insert((entry.key.clone(), entry.version_id.clone())) {
                    fresh += 1;
                    doomed.push(entry);
                }
            }
            *counts[*subject].entry((*template).clone()).or_insert(0) += fresh;
        }
        if !doomed.is_empty() {
            self.delete(&doomed).await?;
        }
        let prefixes: Vec<&String> = to_verify.iter().map(|(_, _, prefix)| *prefix).collect();
        let left: Vec<u64> = self
            .list_all(&prefixes, versioned, "verifying the erasure")
            .await?
            .iter()
            .map(|entries| entries.len() as u64)
            .collect();
        let mut remaining: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); subjects.len()];
        for ((subject, template, _), left) in to_verify.iter().zip(left) {
            if left > 0 {
                *remaining[*subject].entry((*template).clone()).or_insert(0) += left;
            }
        }
        Ok(prefixed
            .into_iter()
            .zip(counts)
            .zip(remaining)
            .map(|((prefixed, counts), remaining)| {
                prefixed?;
                erased(&self.store, counts, &remaining)
            })
            .collect())
    }

    /// What is under each of `prefixes`, in order, [`BATCH_LISTINGS`] listings at a time.
    async fn list_all(
        &self,
        prefixes: &[&String],
        versioned: bool,
        action: &str,
    ) -> Result<Vec<Vec<ObjectVersion>>, TaskError> {
        // A new listing starts as soon as one ends (not chunk after chunk), in order.
        let listings: Vec<_> = prefixes
            .iter()
            .map(|prefix| Box::pin(self.entries(prefix, versioned, action)))
            .collect();
        futures::stream::iter(listings)
            .buffered(BATCH_LISTINGS)
            .try_collect()
            .await
    }

    /// Whether the bucket answers now.
    pub(crate) async fn reachable(&self) -> bool {
        self.client
            .head_bucket()
            .bucket(&self.spec.bucket)
            .send()
            .await
            .is_ok()
    }
}
