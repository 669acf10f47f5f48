//! The privacy center's background work: purge verifications whose link was not followed in
//! time, and mail the download link of each filed access request once it finished.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::privacy::mailer::Mailer;
use crate::privacy::{store, token};

/// Runs until `shutdown`, every `interval`.
pub async fn run(
    pool: PgPool,
    mailer: Mailer,
    public_url: Url,
    interval: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match store::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(purged) => {
                metrics::counter!("lethe_privacy_center_expired_total").increment(purged);
                tracing::info!(
                    purged,
                    "unverified privacy center requests expired and were purged"
                );
            }
            Err(error) => tracing::warn!(error = %error, "cannot purge expired verifications"),
        }
        if let Err(error) = mail_downloads(&pool, &mailer, &public_url).await {
            tracing::warn!(error = %format!("{error:#}"), "cannot mail download links");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

async fn mail_downloads(pool: &PgPool, mailer: &Mailer, public_url: &Url) -> anyhow::Result<()> {
    for due in store::due_downloads(pool).await? {
        let (body, digest) = if due.status == "completed" {
            let download = token::new();
            let link = token::link(
                public_url,
                &format!("privacy/{}/download/{download}", due.tenant),
            );
            (
                format!(
                    "The copy of your data you asked for is ready. Download it here:\n\n    {link}\n\n\
                     The archive is kept for a limited time only; download it soon.\n"
                ),
                Some(token::digest(&download)),
            )
        } else {
            (
                "We could not complete your request for a copy of your data. Please contact us.\n"
                    .to_owned(),
                None,
            )
        };
        match mailer.send(&due.email, "Your data is ready", body).await {
            Ok(()) => {
                store::download_sent(pool, due.id, digest.as_deref()).await?;
                tracing::info!(verification.id = %due.id, "privacy center download link sent");
            }
            // Retried on the next sweep.
            Err(error) => {
                tracing::warn!(verification.id = %due.id, error = %format!("{error:#}"), "cannot mail a download link");
            }
        }
    }
    Ok(())
}
