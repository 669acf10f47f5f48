//! The operator console (`/console`): server-rendered pages over the API's own handlers, shown
//! to a logged-in key within its tenant and scopes (an admin key sees every tenant).

pub mod backups;
pub mod chart;
pub mod dashboard;
pub mod incidents;
pub mod request;
pub mod requests;
pub mod session;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(dashboard::show))
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/requests", get(requests::list))
        .route("/console/requests/{id}", get(request::show))
        .route("/console/requests/{id}/live", get(request::live))
        .route("/console/requests/{id}/cancel", post(request::cancel))
        .route("/console/requests/{id}/extend", post(request::extend))
        .route("/console/incidents", get(incidents::list))
        .route("/console/incidents/{id}/notify", post(incidents::notify))
        .route("/console/incidents/{id}/close", post(incidents::close))
        .route("/console/backups", get(backups::show))
}
