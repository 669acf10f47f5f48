//! Export delivery: `GET /v1/requests/{id}/export` answers with a redirect to a short-lived
//! presigned URL of the archive in Lethe's bucket, so the archive never passes through the
//! api. A link is valid for `api.export_link_ttl`, and never past the export's own expiry
//! (`api.export_ttl` after it was assembled).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use lethe_common::Settings;
use lethe_common::ids::RequestId;
use lethe_common::s3;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::Caller;
use crate::keys::Scope;
use crate::model::{RequestKind, RequestStatus};
use crate::requests;

/// Where exports are, and how long their download links live.
#[derive(Clone)]
pub struct Exports {
    client: Option<s3::Client>,
    bucket: String,
    link_ttl: Duration,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("bucket", &self.bucket)
            .field("link_ttl", &self.link_ttl)
            .finish_non_exhaustive()
    }
}

impl Exports {
    /// From Lethe's `[s3]` settings (whose credentials sign the links) and the lifetime of a
    /// link. Without an `[s3]` section downloads answer 503.
    pub fn new(settings: &Settings, link_ttl: Duration) -> Self {
        Self {
            client: settings.s3.as_ref().map(s3::client),
            bucket: settings
                .s3
                .as_ref()
                .map(|s| s.bucket.clone())
                .unwrap_or_default(),
            link_ttl,
        }
    }
}

/// Download a request's export: a redirect to a presigned URL of the zip archive.
#[utoipa::path(
    get, path = "/v1/requests/{id}/export", tag = "requests",
    params(("id" = String, Path, description = "Request id")),
    responses(
        (status = 303, description = "See Other: `Location` is a download URL of the archive, valid for `api.export_link_ttl`"),
        (status = 404, description = "No such request, or another tenant's", body = Problem),
        (status = 409, description = "`no_export` (not an access or portability request, or it did not complete), `export_not_ready`, `export_expired`", body = Problem),
        (status = 503, description = "Export storage is not configured", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::RequestsRead)?;
    let id: RequestId = id.parse().map_err(|_| ApiError::NotFound)?;
    let request = requests::fetch(&state.pool, caller.0.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !matches!(
        request.kind(),
        RequestKind::Access | RequestKind::Portability
    ) {
        return Err(ApiError::Conflict {
            code: "no_export",
            detail: "exports exist for access and portability requests only".to_owned(),
        });
    }
    let export: Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT object_key, expires_at, deleted_at FROM export WHERE request_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    let Some((key, expires_at, deleted_at)) = export else {
        return Err(
            if matches!(
                request.status(),
                RequestStatus::Failed | RequestStatus::Cancelled
            ) {
                ApiError::Conflict {
                    code: "no_export",
                    detail: "the request did not complete, so nothing was exported".to_owned(),
                }
            } else {
                ApiError::Conflict {
                    code: "export_not_ready",
                    detail: "the export is still being assembled; try again later".to_owned(),
                }
            },
        );
    };
    let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
    if deleted_at.is_some() || left < Duration::from_secs(1) {
        return Err(ApiError::Conflict {
            code: "export_expired",
            detail: "the export has expired and was or will be deleted; file a new request"
                .to_owned(),
        });
    }
    let Some(client) = &state.exports.client else {
        return Err(ApiError::Unavailable("export storage".to_owned()));
    };
    let url = s3::presign_get(
        client,
        &state.exports.bucket,
        &key,
        state.exports.link_ttl.min(left),
        Some(&format!("{id}.zip")),
    )
    .await
    .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    let location = HeaderValue::from_str(&url).map_err(|_| {
        ApiError::Internal(anyhow::anyhow!("a presigned URL is not a header value"))
    })?;
    tracing::info!(request.id = %id, "export download link handed out");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}
