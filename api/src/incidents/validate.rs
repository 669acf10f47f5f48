//! Checks of the breach register's inputs.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ApiError;

/// Longest description, cause or measures text.
const MAX_TEXT: usize = 4000;

pub(super) fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(ApiError::unprocessable(
            "invalid_value",
            field,
            format!("`{field}` must be 1 to {MAX_TEXT} characters"),
        ));
    }
    Ok(())
}

pub(super) fn check_time(
    field: &str,
    at: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    // A few minutes of clock skew between the operator's machine and Lethe are tolerated.
    if at > now + chrono::Duration::minutes(5) {
        return Err(ApiError::unprocessable(
            "invalid_value",
            field,
            format!("`{field}` is in the future"),
        ));
    }
    if let Some(start) = not_before
        && at < start
    {
        return Err(ApiError::unprocessable(
            "invalid_value",
            field,
            format!("`{field}` is before the incident was detected"),
        ));
    }
    Ok(())
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}
