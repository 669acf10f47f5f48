//! The coordinator's side of tombstones (`lethe_common::tombstone`): every completed change
//! lands in Lethe's bucket, encrypted to the backup recipients, before the ledger records the
//! request completed. The object is written inside the completing transaction, before it
//! commits: if the write fails, the transaction rolls back and the result is applied again
//! later (the request stays in progress), so no completed change lacks its tombstone. A crash
//! after the write and before the commit leaves a tombstone of a change the stores already
//! made; the result's second application writes it again (same request, later time), and a
//! restore replays each request once.

use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use lethe_common::Settings;
use lethe_common::openpgp::Recipients;
use lethe_common::s3::Client;
use lethe_common::tombstone::{self, Change, Tombstone};

use crate::requests::RequestRow;

/// Writes tombstones: the recipients' public certificates and Lethe's bucket.
#[derive(Clone)]
pub struct Tombstones {
    recipients: Arc<Recipients>,
    s3: Client,
    bucket: String,
}

impl Tombstones {
    /// With `api.tombstones` on (the default), the recipients of `backups.recipients`, checked:
    /// the api refuses to start without one, or with one that is expired, revoked, unusable or
    /// holding secret key material. `None` when tombstones are off.
    pub fn from_settings(settings: &Settings, enabled: bool) -> anyhow::Result<Option<Self>> {
        if !enabled {
            tracing::warn!(
                "api.tombstones is off: completed changes leave no tombstone, so a restore \
                 after losing the ledger cannot replay them"
            );
            return Ok(None);
        }
        let recipients = tombstone::recipients(settings).context(
            "api.tombstones is on: tombstones are encrypted to backups.recipients, which must \
             name the operators' public certificates (or set api.tombstones = false)",
        )?;
        let s3 = settings.require_s3()?;
        Ok(Some(Self {
            recipients: Arc::new(recipients),
            s3: lethe_common::s3::client(s3),
            bucket: s3.bucket.clone(),
        }))
    }

    /// Writes the tombstone of `request`, completed at `completed_at`, if its kind changes the
    /// stores (access and portability leave none). This is the one place a tombstone is
    /// written: a request that changes nothing for real (a dry run) must not get here.
    pub async fn write(
        &self,
        request: &RequestRow,
        tenant: &str,
        completed_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let Some(kind) = Change::of_request_kind(request.kind().as_str()) else {
            return Ok(());
        };
        let changes = request
            .params
            .0
            .get("changes")
            .and_then(|c| c.as_object())
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let tombstone = Tombstone {
            format: tombstone::FORMAT,
            request_id: request.id.0,
            tenant_id: request.tenant_id.0,
            tenant: Some(tenant.to_owned()),
            kind,
            completed_at,
            identities: request
                .identities
                .as_ref()
                .map(|j| j.0.clone())
                .unwrap_or_default(),
            changes,
        };
        self.recipients
            .check_now()
            .context("cannot write the tombstone")?;
        let sealed = tombstone.seal(&self.recipients)?;
        let key = tombstone.key();
        lethe_common::s3::put(&self.s3, &self.bucket, &key, sealed.into())
            .await
            .context("cannot write the tombstone")?;
        tracing::debug!(request.id = %request.id, object.key = %key, "tombstone written");
        metrics::counter!("lethe_tombstones_written_total", "kind" => kind.as_str()).increment(1);
        Ok(())
    }
}
