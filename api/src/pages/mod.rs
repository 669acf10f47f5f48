//! What the operator console and the privacy center share: security headers, cookies, CSRF
//! tokens, the page shell, the embedded assets and HTML error pages.

pub mod assets;
pub mod cookies;
pub mod csrf;
pub mod error;
pub mod headers;
pub mod layout;

use std::sync::Arc;

use lethe_common::privacy::IdentityHasher;

use crate::privacy::{limits::RateLimits, mailer::Mailer};
use crate::settings::PagesSettings;

/// What the pages share beyond the API's state.
#[derive(Clone)]
pub struct Pages {
    /// The pages' settings.
    pub settings: Arc<PagesSettings>,
    /// Keys the MACs of sessions and CSRF tokens (the deployment's privacy hash key, with a
    /// purpose label per use, so no second secret has to be configured).
    pub signer: IdentityHasher,
    /// Sends the privacy center's mails.
    pub mailer: Mailer,
    /// The privacy center's rate limits.
    pub limits: RateLimits,
}

impl Pages {
    /// Whether cookies get `Secure`: when the public address is https.
    pub fn secure_cookies(&self) -> bool {
        self.settings.public_url.scheme() == "https"
    }
}

/// The console's and privacy center's routes, with the security headers on every response.
pub fn router() -> axum::Router<crate::AppState> {
    crate::console::router()
        .merge(crate::privacy::router())
        .merge(assets::router())
        .layer(axum::middleware::from_fn(headers::secure))
}
