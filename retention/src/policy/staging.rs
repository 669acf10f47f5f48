//! Staging leftovers of requests no longer open, grouped by request.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use lethe_common::s3 as s3util;
use uuid::Uuid;

use super::keys::{STAGING_PREFIX, key_prefix, request_in};
use super::report::{Section, StagingItem};
use super::{Retention, before, earliest};
use crate::catalog;

impl Retention {
    pub(super) async fn staging(&self, now: DateTime<Utc>, dry: bool) -> Section<StagingItem> {
        let mut section = Section::default();
        let cutoff = before(now, self.plan.settings.staging_max_age);
        let objects =
            match s3util::list_objects_modified_under(&self.s3, &self.bucket, STAGING_PREFIX).await
            {
                Ok(objects) => objects,
                Err(error) => {
                    section.errors.push(format!(
                        "cannot list `{STAGING_PREFIX}`: {}",
                        s3util::TransferError::from_sdk("listing staging", &error)
                    ));
                    return section;
                }
            };
        let ids: Vec<Uuid> = objects
            .iter()
            .filter_map(|o| request_in(&o.key, STAGING_PREFIX))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let states: BTreeMap<Uuid, catalog::RequestState> =
            match catalog::request_states(&self.pool, &ids).await {
                Ok(states) => states.into_iter().map(|s| (s.id, s)).collect(),
                Err(error) => {
                    section.error("cannot read the requests", error);
                    return section;
                }
            };
        // Grouped by request: keys deeper than the request's prefix can name a subject's files.
        let mut groups: BTreeMap<String, Vec<s3util::StoredObject>> = BTreeMap::new();
        let mut oldest: Option<DateTime<Utc>> = None;
        for object in objects {
            let request = request_in(&object.key, STAGING_PREFIX);
            let open = request
                .and_then(|id| states.get(&id))
                .is_some_and(|s| s.open);
            let old = object.last_modified.is_some_and(|t| t <= cutoff);
            if old && !open {
                groups
                    .entry(key_prefix(&object.key))
                    .or_default()
                    .push(object);
            } else {
                oldest = earliest(oldest, object.last_modified);
            }
        }
        section.oldest_left = oldest;
        for (prefix, objects) in groups {
            let size: u64 = objects.iter().map(|o| o.size).sum();
            let newest = objects.iter().filter_map(|o| o.last_modified).max();
            let request = request_in(&prefix, STAGING_PREFIX);
            if !dry {
                let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
                if let Err(error) = s3util::delete_keys(&self.s3, &self.bucket, &keys).await {
                    section.errors.push(format!("staging `{prefix}`: {error}"));
                    continue;
                }
                let tenant = request.and_then(|id| states.get(&id)).map(|s| s.tenant_id);
                let recorded = catalog::record_objects_deleted(
                    &self.pool,
                    "retention.staging_deleted",
                    tenant,
                    request,
                    serde_json::json!({ "prefix": prefix, "objects": objects.len(), "bytes": size }),
                    now,
                )
                .await;
                if let Err(error) = recorded {
                    section
                        .errors
                        .push(format!("cannot record the deletion of `{prefix}`: {error}"));
                }
                tracing::info!(prefix = %prefix, objects = objects.len(), bytes = size, "staging leftovers deleted");
            }
            section.deleted += objects.len() as u64;
            section.bytes += size;
            section.items.push(StagingItem {
                prefix,
                objects: objects.len() as u64,
                bytes: size,
                newest,
            });
        }
        section
    }
}
