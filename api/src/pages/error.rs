//! Errors of the pages, answered as HTML pages (an API error keeps its status and message).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::error::ApiError;
use crate::pages::layout;

/// What a page handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A form without its valid CSRF token.
    #[error("forged or expired form")]
    Csrf,
    /// Too many requests from one address or client.
    #[error("rate limited")]
    RateLimited,
    /// What the API would have answered.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        Self::Api(ApiError::from(error))
    }
}

impl From<anyhow::Error> for PageError {
    fn from(error: anyhow::Error) -> Self {
        Self::Api(ApiError::Internal(error))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form was not sent from this site, or it expired. Go back, reload and try again."
                    .to_owned(),
            ),
            PageError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "Please wait a while before trying again.".to_owned(),
            ),
            PageError::Api(error) => {
                if let ApiError::Internal(error) = error {
                    tracing::error!(error = %format!("{error:#}"), "internal error on a page");
                }
                let (status, problem) = error.problem();
                let detail = if status == StatusCode::NOT_FOUND {
                    "There is no such page, or it is not yours to see.".to_owned()
                } else {
                    problem.detail
                };
                (status, problem.title, detail)
            }
        };
        let body = layout::bare(
            title,
            html! {
                h1 { (title) }
                p.problem { (detail) }
                p { a href="/console" { "Back" } }
            },
        );
        (status, body).into_response()
    }
}
