//! The privacy center's pages: the form, "check your mail", the link's confirmation, and the
//! download of an access result. The address travels only in form bodies and mails, never in a
//! URL; every answer is the same whether or not Lethe knows the address.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use lethe_common::ids::{ApiKeyId, TenantId};
use maud::{Markup, html};
use serde::Deserialize;

use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::keys::{Principal, Scope};
use crate::model::{IdentityValues, NewRequest, RequestKind, ScalarValue};
use crate::pages::csrf::{self, Csrf};
use crate::pages::error::PageError;
use crate::pages::layout;
use crate::privacy::{store, token};
use crate::requests::Intake;
use crate::validate;

/// The kinds a person may ask for, with how the form words them.
const KINDS: [(&str, &str); 6] = [
    ("access", "Get a copy of my data (access)"),
    (
        "portability",
        "Get my data in a portable format (portability)",
    ),
    ("erasure", "Delete my data (erasure)"),
    ("rectification", "Correct my data (rectification)"),
    (
        "restriction",
        "Restrict the processing of my data (restriction)",
    ),
    (
        "objection",
        "Object to the processing of my data (objection)",
    ),
];

async fn tenant_of(state: &AppState, name: &str) -> Result<TenantId, PageError> {
    store::tenant(&state.pool, name)
        .await?
        .ok_or(PageError::Api(ApiError::NotFound))
}

/// `GET /privacy/{tenant}`: the form.
pub async fn form(
    State(state): State<AppState>,
    csrf: Csrf,
    Path(tenant): Path<String>,
) -> Result<Response, PageError> {
    tenant_of(&state, &tenant).await?;
    let fields = state.planner.map().rectifiable_fields();
    let body = html! {
        h1 { "Your data, your rights" }
        p { "Choose what you would like us to do and give the email address you use with us. "
            "We send a link to that address; your request is filed once you follow it (within 24 hours)." }
        form.stack method="post" action={"/privacy/" (tenant)} {
            input type="hidden" name=(csrf::FIELD) value=(csrf.token);
            fieldset {
                legend { "I would like to" }
                @for (i, (value, label)) in KINDS.iter().enumerate() {
                    label.radio {
                        input type="radio" name="kind" value=(value) required checked[i == 0];
                        (label)
                    }
                }
            }
            label { "Email address" input type="email" name="email" required maxlength="254" autocomplete="email"; }
            @if !fields.is_empty() {
                label { "For a correction: the field"
                    select name="field" {
                        option value="" { "—" }
                        @for field in &fields { option value=(field) { (field) } }
                    }
                }
                label { "and its correct value" input type="text" name="value" maxlength="500"; }
            }
            button type="submit" { "Send me the link" }
        }
    };
    Ok((csrf.headers(), layout::bare("Privacy center", body)).into_response())
}

/// The form's fields.
#[derive(Debug, Deserialize)]
pub struct Submission {
    csrf: Option<String>,
    kind: String,
    email: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// `POST /privacy/{tenant}`: records the pending request, mails its link, answers "check your
/// mail" (the same page whatever happened to the address).
pub async fn submit(
    State(state): State<AppState>,
    Path(tenant_name): Path<String>,
    parts: Parts,
    Form(form): Form<Submission>,
) -> Result<Response, PageError> {
    csrf::check(&state, &parts.headers, form.csrf.as_deref())?;
    let tenant = tenant_of(&state, &tenant_name).await?;
    let settings = &state.pages.settings;
    if let Some(ip) = client_ip(&parts) {
        let key = state
            .pages
            .signer
            .mac(&[b"privacy-ip\0", ip.to_string().as_bytes()]);
        if !state
            .pages
            .limits
            .allow(key, settings.limit_per_ip, settings.limit_window)
        {
            metrics::counter!("lethe_privacy_center_limited_total", "by" => "ip").increment(1);
            return Err(PageError::RateLimited);
        }
    }
    let email = form.email.trim().to_lowercase();
    let Some((kind, _)) = KINDS.iter().find(|(k, _)| *k == form.kind) else {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "kind",
            "choose one of the listed requests",
        )
        .into());
    };
    if !plausible_email(&email) {
        return Err(
            ApiError::unprocessable("invalid_value", "email", "give an email address").into(),
        );
    }
    let changes = match (form.field.as_deref(), form.value.as_deref()) {
        (Some(field), Some(value)) if *kind == "rectification" && !field.is_empty() => {
            Some(serde_json::json!({ field: value }))
        }
        _ if *kind == "rectification" => {
            return Err(ApiError::unprocessable(
                "missing_changes",
                "field",
                "for a correction, choose the field and give its correct value",
            )
            .into());
        }
        _ => None,
    };
    let address_key = state
        .pages
        .signer
        .mac(&[b"privacy-address\0", email.as_bytes()]);
    if state.pages.limits.allow(
        address_key,
        settings.limit_per_address,
        settings.limit_window,
    ) {
        let link_token = token::new();
        let ttl = chrono::Duration::from_std(settings.verification_ttl)
            .unwrap_or(chrono::Duration::hours(24));
        let id = store::insert(
            &state.pool,
            tenant,
            kind,
            &email,
            changes,
            &token::digest(&link_token),
            Utc::now() + ttl,
        )
        .await?;
        let link = token::link(
            &settings.public_url,
            &format!("privacy/{tenant_name}/confirm/{link_token}"),
        );
        let body = format!(
            "Someone, hopefully you, asked us through our privacy center to handle this request:\n\n    {kind}\n\n\
             To confirm it, open this link within 24 hours:\n\n    {link}\n\n\
             If you did not ask for this, ignore this mail: nothing happens and we forget the request.\n"
        );
        match state
            .pages
            .mailer
            .send(&email, "Confirm your privacy request", body)
            .await
        {
            Ok(()) => {
                metrics::counter!("lethe_privacy_center_links_sent_total").increment(1);
                tracing::info!(verification.id = %id, tenant.id = %tenant, "privacy center link sent");
            }
            Err(error) => {
                tracing::error!(verification.id = %id, error = %format!("{error:#}"), "cannot send a privacy center link");
            }
        }
    } else {
        // The same answer as when sending, so a limit reveals nothing about the address.
        metrics::counter!("lethe_privacy_center_limited_total", "by" => "address").increment(1);
    }
    Ok(Redirect::to(&format!("/privacy/{tenant_name}/sent")).into_response())
}

/// `GET /privacy/{tenant}/sent`.
pub async fn sent(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Markup, PageError> {
    tenant_of(&state, &tenant).await?;
    Ok(layout::bare(
        "Check your mail",
        html! {
            h1 { "Check your mail" }
            p.notice { "If the address you gave is valid, a link to confirm your request is on its way. "
                "Follow it within 24 hours; until then nothing is done." }
            p { a href={"/privacy/" (tenant)} { "Back to the privacy center" } }
        },
    ))
}

/// `GET /privacy/{tenant}/confirm/{token}`: a button, so a mail scanner that opens links does
/// not file requests by itself.
pub async fn confirm_page(
    State(state): State<AppState>,
    csrf: Csrf,
    Path((tenant_name, link_token)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let tenant = tenant_of(&state, &tenant_name).await?;
    let pending = store::by_token(&state.pool, tenant, &token::digest(&link_token))
        .await?
        .ok_or(PageError::Api(ApiError::NotFound))?;
    let body = html! {
        h1 { "Confirm your request" }
        @if let Some(id) = pending.request_id {
            p.notice { "This request was filed. Its reference is " code { (id) } "." }
        } @else {
            p { "You asked us for: " strong #kind { (pending.kind) } "." }
            form method="post" action={"/privacy/" (tenant_name) "/confirm/" (link_token)} {
                input type="hidden" name=(csrf::FIELD) value=(csrf.token);
                button #confirm type="submit" { "Confirm and file my request" }
            }
        }
    };
    Ok((csrf.headers(), layout::bare("Confirm your request", body)).into_response())
}

/// The confirmation's field.
#[derive(Debug, Deserialize)]
pub struct Confirmation {
    csrf: Option<String>,
}

/// `POST /privacy/{tenant}/confirm/{token}`: files the request (once, however often posted).
pub async fn confirm(
    State(state): State<AppState>,
    Path((tenant_name, link_token)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<Confirmation>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let tenant = tenant_of(&state, &tenant_name).await?;
    let pending = store::by_token(&state.pool, tenant, &token::digest(&link_token))
        .await?
        .ok_or(PageError::Api(ApiError::NotFound))?;
    let id = match pending.request_id {
        Some(id) => id,
        None => file(&state, &pending).await?,
    };
    let body = html! {
        h1 { "Your request was filed" }
        p.notice #filed { "Thank you. Your request's reference is " code #reference { (id) } ". "
            @if matches!(pending.kind.as_str(), "access" | "portability") {
                "We will mail you a download link when your data is ready."
            } @else {
                "We carry it out in every system that holds your data."
            }
        }
    };
    Ok(layout::bare("Request filed", body).into_response())
}

/// Files a verified request through the API's own intake.
async fn file(
    state: &AppState,
    pending: &store::Pending,
) -> Result<lethe_common::ids::RequestId, PageError> {
    let kind: RequestKind = serde_json::from_value(serde_json::Value::String(pending.kind.clone()))
        .map_err(|e| PageError::from(anyhow::Error::new(e)))?;
    let changes = pending
        .changes
        .as_ref()
        .and_then(|c| c.0.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        });
    let body = NewRequest {
        kind,
        subject: BTreeMap::from([(
            "email".to_owned(),
            IdentityValues::One(ScalarValue::Text(pending.email.clone())),
        )]),
        changes,
        reason: Some("filed through the privacy center".to_owned()),
        callback_url: None,
    };
    let valid = validate::validate(body, state.planner.map())?;
    let intake = Intake {
        pool: &state.pool,
        names: &state.names,
        planner: &state.planner,
        hasher: &state.hasher,
        outbox: &state.outbox,
        tenants: &state.tenants,
    };
    let key = format!("privacy-center:{}", pending.id);
    let (accepted, _) = intake
        .accept(pending.tenant_id, valid, Some(&key), None)
        .await?;
    store::verified(&state.pool, pending.id, accepted.id).await?;
    metrics::counter!("lethe_requests_total", "kind" => accepted.kind.as_str(), "status" => "received").increment(1);
    tracing::info!(request.id = %accepted.id, verification.id = %pending.id, "privacy center request filed");
    Ok(accepted.id)
}

/// `GET /privacy/{tenant}/download/{token}`: the access result, through the API's own
/// download (a redirect to a short-lived link).
pub async fn download(
    State(state): State<AppState>,
    Path((tenant_name, download_token)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let tenant = tenant_of(&state, &tenant_name).await?;
    let request = store::download(&state.pool, tenant, &token::digest(&download_token))
        .await?
        .ok_or(PageError::Api(ApiError::NotFound))?;
    // The token stands for the person's right to this one export: act as a reader of its tenant.
    let caller = Caller(Principal {
        key_id: ApiKeyId(Uuid::nil()),
        tenant_id: tenant,
        scopes: vec![Scope::RequestsRead],
    });
    Ok(crate::export::download(State(state.clone()), caller, Path(request.to_string())).await?)
}
