//! The API's one error type: client errors as JSON problem documents (RFC 9457) with a stable
//! `code` and, where it applies, the offending `field`; internal errors logged once and
//! answered with an opaque 500. No message ever quotes a submitted value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// A problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:lethe:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the class of problem.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub detail: String,
    /// The offending field, as a dotted path into the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is wrong.
    #[error("{code}: {detail}")]
    Invalid {
        /// HTTP status: 400 for malformed input, 422 for well-formed but unacceptable input.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// Explanation.
        detail: String,
        /// Offending field.
        field: Option<String>,
    },
    /// No valid key.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The key lacks a scope.
    #[error("missing scope {0}")]
    Forbidden(&'static str),
    /// Nothing there (or not this tenant's).
    #[error("not found")]
    NotFound,
    /// The request conflicts with the current state.
    #[error("{code}: {detail}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        detail: String,
    },
    /// The body exceeds the limit.
    #[error("body too large")]
    TooLarge(usize),
    /// Not JSON.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A dependency is down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for a well-formed but unacceptable value.
    pub fn unprocessable(
        code: &'static str,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail: detail.into(),
            field: Some(field.into()),
        }
    }

    /// A 400 for malformed input.
    pub fn bad_request(
        code: &'static str,
        field: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::Invalid {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
            field,
        }
    }

    /// The status and problem details this error answers with (the pages render them as HTML).
    pub fn problem(&self) -> (StatusCode, Problem) {
        let (status, title, code, detail, field) = match self {
            ApiError::Invalid {
                status,
                code,
                detail,
                field,
            } => (
                *status,
                "Invalid request",
                *code,
                detail.clone(),
                field.clone(),
            ),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "unauthenticated",
                "send a valid API key as `Authorization: Bearer <key>`".to_owned(),
                None,
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                "missing_scope",
                format!("this API key lacks the `{scope}` scope"),
                None,
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "not_found",
                "no such resource".to_owned(),
                None,
            ),
            ApiError::Conflict { code, detail } => (
                StatusCode::CONFLICT,
                "Conflict",
                *code,
                detail.clone(),
                None,
            ),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                "body_too_large",
                format!("the body exceeds the limit of {limit} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`".to_owned(),
                None,
            ),
            ApiError::Unavailable(what) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "unavailable",
                format!("{what} is unavailable; retry later"),
                None,
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "internal",
                "an internal error occurred; it has been logged".to_owned(),
                None,
            ),
        };
        (
            status,
            Problem {
                kind: format!("urn:lethe:problem:{code}"),
                title,
                status: status.as_u16(),
                code,
                detail,
                field,
            },
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::warn!(error = %error, "ledger unavailable");
                ApiError::Unavailable("the ledger".to_owned())
            }
            _ => ApiError::Internal(error.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(error) = &self {
            tracing::error!(error = %format!("{error:#}"), "internal error");
        }
        let (status, problem) = self.problem();
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
