//! Request extractors: the bearer key and a strict JSON body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::error::ApiError;
use crate::keys::{self, Principal, Scope};

type Entries = HashMap<Vec<u8>, (Principal, Instant)>;

/// Recently checked keys, so a client's burst costs one ledger lookup. Entries live for a
/// short time: a revoked key stops working within that time.
#[derive(Clone)]
pub struct KeyCache {
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

impl KeyCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    fn get(&self, digest: &[u8]) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(principal, _)| principal.clone())
    }

    fn put(&self, digest: Vec<u8>, principal: Principal) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 10_000 {
                entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            }
            entries.insert(digest, (principal, Instant::now()));
        }
    }
}

/// The caller, authenticated by `Authorization: Bearer <key>`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Fails with 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    PgPool: FromRef<S>,
    KeyCache: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthenticated)?;
        let cache = KeyCache::from_ref(state);
        let digest = keys::digest(secret);
        if let Some(principal) = cache.get(&digest) {
            return Ok(Caller(principal));
        }
        let pool = PgPool::from_ref(state);
        let principal = keys::authenticate(&pool, secret)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        cache.put(digest, principal.clone());
        Ok(Caller(principal))
    }
}

/// A JSON body parsed strictly: `application/json` only, within the size limit, unknown
/// fields refused. Errors name the field and the position, never the value.
#[derive(Debug)]
pub struct StrictJson<T>(pub T);

/// The configured body limit, shared with the extractor.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S, T> FromRequest<S> for StrictJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    BodyLimit: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = BodyLimit::from_ref(state).0;
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::TooLarge(limit))?;
        parse(&body).map(StrictJson)
    }
}

/// Parses `body` as `T`, describing a failure without quoting the input.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = match parsed {
        Ok(value) => value,
        Err(error) => return Err(describe(error)),
    };
    deserializer.end().map_err(|_| {
        ApiError::bad_request("malformed_json", None, "trailing data after the JSON body")
    })?;
    Ok(value)
}

fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = error.path().to_string();
    let field = (path != ".").then(|| path.clone());
    let inner = error.into_inner();
    let position = format!("line {}, column {}", inner.line(), inner.column());
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "malformed_json",
            None,
            format!("the body is not valid JSON ({position})"),
        ),
        Category::Data => {
            let message = inner.to_string();
            if let Some(name) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                // The path already ends with the unknown key.
                let field = field.unwrap_or_else(|| name.to_owned());
                ApiError::unprocessable(
                    "unknown_field",
                    field.clone(),
                    format!("unknown field `{field}`"),
                )
            } else if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                ApiError::unprocessable("missing_field", name, format!("missing field `{name}`"))
            } else {
                // serde's message may quote the submitted value; say only where and what kind.
                let field = field.unwrap_or_else(|| "(body)".to_owned());
                ApiError::unprocessable(
                    "invalid_value",
                    field.clone(),
                    format!("`{field}` has a value of the wrong type or form ({position})"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewRequest;

    fn code_and_field(body: &str) -> (&'static str, Option<String>, String) {
        match parse::<NewRequest>(body.as_bytes()) {
            Err(ApiError::Invalid {
                code,
                field,
                detail,
                ..
            }) => (code, field, detail),
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_without_quoting_the_value() {
        let (code, field, _) =
            code_and_field(r#"{"kind":"erasure","subject":{"email":"a@b.c"},"colour":"red"}"#);
        assert_eq!((code, field.as_deref()), ("unknown_field", Some("colour")));
        let (code, _, _) = code_and_field(r#"{"kind":"erasure","#);
        assert_eq!(code, "malformed_json");
        let (code, field, detail) =
            code_and_field(r#"{"kind":"forget-me-secret@example.com","subject":{}}"#);
        assert_eq!((code, field.as_deref()), ("invalid_value", Some("kind")));
        assert!(!detail.contains("secret@example.com"), "{detail}");
        let (code, field, _) = code_and_field(r#"{"subject":{}}"#);
        assert_eq!((code, field.as_deref()), ("missing_field", Some("kind")));
    }
}
