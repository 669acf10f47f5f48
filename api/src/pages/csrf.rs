//! CSRF tokens: a random `lethe_csrf` cookie (HttpOnly, SameSite=Strict) and, in every form,
//! the keyed MAC of that cookie. A forged cross-site post has neither; a planted cookie is
//! useless without the deployment's key.

use axum::extract::FromRequestParts;
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use crate::AppState;
use crate::pages::cookies;
use crate::pages::error::PageError;

/// The CSRF cookie's name.
pub const COOKIE: &str = "lethe_csrf";
/// The form field carrying the token.
pub const FIELD: &str = "csrf";

/// The request's CSRF cookie (minted when absent) and the token forms must carry.
#[derive(Debug, Clone)]
pub struct Csrf {
    /// The token to put in forms.
    pub token: String,
    /// A `Set-Cookie` to send when the cookie was just minted.
    pub set_cookie: Option<HeaderValue>,
}

impl Csrf {
    /// The `Set-Cookie` headers to send with the page.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = &self.set_cookie {
            headers.insert(SET_COOKIE, value.clone());
        }
        headers
    }
}

fn token_for(state: &AppState, cookie: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        state
            .pages
            .signer
            .mac(&[b"lethe-csrf\0", cookie.as_bytes()]),
    )
}

impl FromRequestParts<AppState> for Csrf {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        if let Some(cookie) = cookies::get(&parts.headers, COOKIE).filter(|c| c.len() >= 16) {
            return Ok(Self {
                token: token_for(state, cookie),
                set_cookie: None,
            });
        }
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let cookie = URL_SAFE_NO_PAD.encode(bytes);
        let header = cookies::set(
            COOKIE,
            &cookie,
            "/",
            12 * 3600,
            state.pages.secure_cookies(),
        );
        Ok(Self {
            token: token_for(state, &cookie),
            set_cookie: HeaderValue::from_str(&header).ok(),
        })
    }
}

/// Refuses a post whose form token does not match its cookie (403 page).
pub fn check(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<(), PageError> {
    let cookie = cookies::get(headers, COOKIE).ok_or(PageError::Csrf)?;
    let expected = token_for(state, cookie);
    let given = token.ok_or(PageError::Csrf)?;
    let same = expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same { Ok(()) } else { Err(PageError::Csrf) }
}

/// A form that carries nothing but its CSRF token (a button: cancel, notify, close).
#[derive(Debug, serde::Deserialize)]
pub struct TokenOnly {
    /// The token.
    pub csrf: Option<String>,
}
