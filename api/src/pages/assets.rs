//! The console's stylesheet and script, embedded in the binary (no front-end build chain, no
//! files to deploy next to it) and served with a long cache lifetime under a versioned path.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Where the stylesheet is served (versioned with the crate, so caches never serve an old one).
pub const STYLE_PATH: &str = concat!(
    "/console/assets/",
    env!("CARGO_PKG_VERSION"),
    "/console.css"
);
/// Where the script is served.
pub const SCRIPT_PATH: &str = concat!("/console/assets/", env!("CARGO_PKG_VERSION"), "/console.js");

const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

fn asset(body: &'static str, kind: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400, immutable"),
            ),
        ],
        body,
    )
}

/// The asset routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            STYLE_PATH,
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
}
