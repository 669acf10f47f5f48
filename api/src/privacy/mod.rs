//! The privacy center (`/privacy/{tenant}`): a data subject files a request with a plain form;
//! it waits, verifying, until the emailed link is followed, and is filed only then.

pub mod limits;
pub mod mailer;
pub mod routes;
pub mod store;
pub mod sweeper;
pub mod token;

use axum::Router;
use axum::routing::get;

use crate::AppState;

/// The privacy center's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/privacy/{tenant}", get(routes::form).post(routes::submit))
        .route("/privacy/{tenant}/sent", get(routes::sent))
        .route(
            "/privacy/{tenant}/confirm/{token}",
            get(routes::confirm_page).post(routes::confirm),
        )
        .route("/privacy/{tenant}/download/{token}", get(routes::download))
}
