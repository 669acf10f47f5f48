//! Console login: an API key is checked once and exchanged for a signed session cookie
//! (`lethe_session`, HttpOnly, SameSite=Strict, Secure over TLS). The cookie names the key, not
//! its secret; every page load re-reads the key, so a revoked key logs its sessions out.

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use lethe_common::ids::{ApiKeyId, TenantId};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

use crate::AppState;
use crate::extract::Caller;
use crate::keys::{self, Principal, Scope};
use crate::pages::cookies;
use crate::pages::csrf::{self, Csrf};
use crate::pages::error::PageError;
use crate::pages::layout;

/// The session cookie's name.
pub const COOKIE: &str = "lethe_session";

/// A logged-in operator: the key's rights, its tenant, and the page's CSRF token.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The key's tenant and scopes.
    pub principal: Principal,
    /// The tenant's name.
    pub tenant_name: String,
    /// The CSRF token for the page's forms.
    pub csrf: Csrf,
}

impl Operator {
    /// Whether the key may see every tenant.
    pub fn is_admin(&self) -> bool {
        self.principal.has(Scope::Admin)
    }

    /// Who is logged in, as the navigation shows it.
    pub fn label(&self) -> String {
        let scope = if self.is_admin() { "admin" } else { "tenant" };
        format!("{} ({scope})", self.tenant_name)
    }

    /// The API caller this operator is for `tenant`: an admin acts in any tenant, anyone else
    /// only in their own (another tenant then simply finds nothing).
    pub fn caller_in(&self, tenant: TenantId) -> Caller {
        let mut principal = self.principal.clone();
        if self.is_admin() {
            principal.tenant_id = tenant;
        }
        Caller(principal)
    }

    /// The API caller in the key's own tenant.
    pub fn caller(&self) -> Caller {
        Caller(self.principal.clone())
    }
}

fn sign(state: &AppState, key: ApiKeyId, expires: i64) -> String {
    let mac =
        state
            .pages
            .signer
            .mac(&[b"lethe-session\0", key.0.as_bytes(), &expires.to_be_bytes()]);
    format!(
        "{}.{expires}.{}",
        key.0.simple(),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

fn open(state: &AppState, value: &str) -> Option<ApiKeyId> {
    let mut parts = value.split('.');
    let key = ApiKeyId(Uuid::parse_str(parts.next()?).ok()?);
    let expires: i64 = parts.next()?.parse().ok()?;
    let _ = parts.next()?;
    let expected = sign(state, key, expires);
    let same = expected.len() == value.len()
        && expected
            .bytes()
            .zip(value.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (same && expires > Utc::now().timestamp()).then_some(key)
}

/// The key behind a session, if still valid: its principal and tenant name.
async fn principal(
    state: &AppState,
    key: ApiKeyId,
) -> Result<Option<(Principal, String)>, PageError> {
    let row: Option<(TenantId, Vec<String>, String)> = sqlx::query_as(
        "SELECT k.tenant_id, k.scopes, t.name FROM api_key k JOIN tenant t ON t.id = k.tenant_id
         WHERE k.id = $1 AND k.revoked_at IS NULL",
    )
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    let Some((tenant_id, scopes, name)) = row else {
        return Ok(None);
    };
    let scopes = scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("a key holds an unknown scope: {e}"))?;
    Ok(Some((
        Principal {
            key_id: key,
            tenant_id,
            scopes,
        },
        name,
    )))
}

/// Pages behind the login redirect there.
pub struct ToLogin(Response);

impl IntoResponse for ToLogin {
    fn into_response(self) -> Response {
        self.0
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ToLogin;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ToLogin> {
        let csrf = Csrf::from_request_parts(parts, state)
            .await
            .map_err(|e| ToLogin(e.into_response()))?;
        let key = cookies::get(&parts.headers, COOKIE).and_then(|value| open(state, value));
        let found = match key {
            Some(key) => principal(state, key)
                .await
                .map_err(|e| ToLogin(e.into_response()))?,
            None => None,
        };
        match found {
            Some((principal, tenant_name)) => Ok(Self {
                principal,
                tenant_name,
                csrf,
            }),
            None => Err(ToLogin(Redirect::to("/console/login").into_response())),
        }
    }
}

/// `GET /console/login`.
pub async fn login_page(csrf: Csrf) -> Response {
    login_form(&csrf, None)
}

fn login_form(csrf: &Csrf, problem: Option<&str>) -> Response {
    let body = html! {
        h1 { "Lethe console" }
        @if let Some(problem) = problem { p.problem #problem { (problem) } }
        form.stack method="post" action="/console/login" {
            input type="hidden" name=(csrf::FIELD) value=(csrf.token);
            label { "API key" input #key type="password" name="key" required autocomplete="off"; }
            button #login type="submit" { "Log in" }
        }
        p.muted { "Your key stays in this form: the console keeps a signed session cookie that names the key, not its secret." }
    };
    (csrf.headers(), layout::bare("Log in", body)).into_response()
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct Login {
    csrf: Option<String>,
    key: String,
}

/// `POST /console/login`.
pub async fn login(
    State(state): State<AppState>,
    csrf: Csrf,
    headers: HeaderMap,
    Form(form): Form<Login>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let Some(principal) = keys::authenticate(&state.pool, form.key.trim()).await? else {
        metrics::counter!("lethe_console_logins_total", "outcome" => "refused").increment(1);
        return Ok((
            axum::http::StatusCode::UNAUTHORIZED,
            login_form(&csrf, Some("This key is unknown or revoked.")),
        )
            .into_response());
    };
    let ttl = state.pages.settings.session_ttl.as_secs() as i64;
    let value = sign(&state, principal.key_id, Utc::now().timestamp() + ttl);
    let cookie = cookies::set(
        COOKIE,
        &value,
        "/console",
        ttl,
        state.pages.secure_cookies(),
    );
    metrics::counter!("lethe_console_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(key.id = %principal.key_id.0, tenant.id = %principal.tenant_id, "console login");
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct Logout {
    csrf: Option<String>,
}

/// `POST /console/logout`.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Logout>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let cookie = cookies::set(COOKIE, "", "/console", 0, state.pages.secure_cookies());
    let mut response = Redirect::to("/console/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
