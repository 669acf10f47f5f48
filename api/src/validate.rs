//! Strict validation of a new request against the data map. Every error names the field; none
//! quotes the value.

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::datamap::DataMap;
use lethe_common::messages::Identities;

use crate::error::ApiError;
use crate::model::{NewRequest, RequestKind};
use crate::webhooks::OutboundPolicy;

/// Longest identity value accepted.
const MAX_VALUE_LEN: usize = 320;
/// Most values per identity.
const MAX_VALUES: usize = 16;

/// A new request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// What is asked for.
    pub kind: RequestKind,
    /// The subject's identities.
    pub identities: Identities,
    /// For rectification, the field changes.
    pub changes: BTreeMap<String, serde_json::Value>,
    /// The client's reason.
    pub reason: Option<String>,
    /// Where to report the outcome.
    pub callback_url: Option<String>,
}

/// Checks `body` against `map`.
pub fn validate(body: NewRequest, map: &DataMap) -> Result<ValidRequest, ApiError> {
    if body.subject.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_subject",
            "subject",
            "give at least one identity of the data subject",
        ));
    }
    let declared: BTreeSet<&str> = map.identities.iter().map(String::as_str).collect();
    let matching = map.matching();
    // In a tenant-scoped deployment these identities count as the tenant's only because their
    // values come from the tenant's own rows; a value given by a client could be anyone's.
    let tenant_derived = if map.tenant_scoped() {
        map.tenant_derived()
    } else {
        BTreeSet::new()
    };
    let mut identities = Identities::new();
    for (name, values) in body.subject {
        let field = format!("subject.{name}");
        if !declared.contains(name.as_str()) {
            return Err(ApiError::unprocessable(
                "unknown_identity",
                field,
                format!(
                    "`{name}` is not an identity of the data map (known: {})",
                    map.identities.join(", ")
                ),
            ));
        }
        if tenant_derived.contains(&name) {
            return Err(ApiError::unprocessable(
                "derived_identity",
                field,
                format!(
                    "`{name}` is derived from the tenant's own records in this tenant-scoped \
                     deployment and cannot be given; name the subject by another identity"
                ),
            ));
        }
        let values: Vec<String> = values
            .into_texts()
            .into_iter()
            .map(|v| v.trim().to_owned())
            .collect();
        if values.is_empty() || values.len() > MAX_VALUES {
            return Err(ApiError::unprocessable(
                "invalid_identity",
                field,
                format!("give 1 to {MAX_VALUES} values"),
            ));
        }
        for value in &values {
            check_value(&name, value)
                .map_err(|why| ApiError::unprocessable(why.0, field.clone(), why.1))?;
        }
        // The normalised spelling goes beside the value as filed: stores compare normalised
        // values, key and prefix templates try both.
        let mut values = matching.spellings(&name, &values);
        values.sort();
        values.dedup();
        identities.insert(name, values);
    }

    let changes = body.changes.unwrap_or_default();
    if body.kind == RequestKind::Rectification {
        if changes.is_empty() {
            return Err(ApiError::unprocessable(
                "missing_changes",
                "changes",
                "a rectification names the fields to change and their new values",
            ));
        }
        let fields = map.rectifiable_fields();
        for (field, value) in &changes {
            if !fields.contains(field.as_str()) {
                return Err(ApiError::unprocessable(
                    "unknown_field",
                    format!("changes.{field}"),
                    format!(
                        "`{field}` is not a rectifiable field of the data map (known: {})",
                        fields.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let fits = match value {
                serde_json::Value::String(text) => text.chars().count() <= 1000,
                serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)
                | serde_json::Value::Null => true,
                _ => false,
            };
            if !fits {
                return Err(ApiError::unprocessable(
                    "invalid_value",
                    format!("changes.{field}"),
                    "a new value is a string of at most 1000 characters, a number, a boolean or null",
                ));
            }
        }
    } else if !changes.is_empty() {
        return Err(ApiError::unprocessable(
            "unexpected_changes",
            "changes",
            "only a rectification takes `changes`",
        ));
    }

    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 2000)
    {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "reason",
            "at most 2000 characters",
        ));
    }
    if let Some(url) = &body.callback_url {
        let parsed = url::Url::parse(url).map_err(|_| {
            ApiError::unprocessable(
                "invalid_callback_url",
                "callback_url",
                "not an absolute URL",
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || url.len() > 2000 {
            return Err(ApiError::unprocessable(
                "invalid_callback_url",
                "callback_url",
                "use an https URL of at most 2000 characters",
            ));
        }
    }
    Ok(ValidRequest {
        kind: body.kind,
        identities,
        changes,
        reason: body.reason,
        callback_url: body.callback_url,
    })
}

/// Checks the callback URL of `valid` against the outbound URL policy, resolving its host:
/// a tenant must not make Lethe POST into the operator's own network. The message says why,
/// never quoting the URL. Delivery checks again (DNS answers change).
pub async fn check_callback(valid: &ValidRequest, policy: &OutboundPolicy) -> Result<(), ApiError> {
    let Some(url) = &valid.callback_url else {
        return Ok(());
    };
    policy.check(url).await.map(|_| ()).map_err(|refusal| {
        ApiError::unprocessable("invalid_callback_url", "callback_url", refusal.to_string())
    })
}

struct Why(&'static str, &'static str);

fn check_value(identity: &str, value: &str) -> Result<(), Why> {
    if value.is_empty() {
        return Err(Why("invalid_identity", "an identity value is empty"));
    }
    if value.chars().count() > MAX_VALUE_LEN || value.chars().any(char::is_control) {
        return Err(Why(
            "invalid_identity",
            "an identity value is longer than 320 characters or holds control characters",
        ));
    }
    if identity == "email" && !is_email(value) {
        return Err(Why("invalid_email", "not a valid email address"));
    }
    if identity == "phone" && !is_phone(value) {
        return Err(Why(
            "invalid_phone",
            "not a valid phone number (international form, e.g. +44 20 7946 0000)",
        ));
    }
    Ok(())
}

/// A pragmatic check (RFC 5321 lengths, one `@`, a dotted domain, no spaces): strict enough
/// to catch mistakes, lenient enough for every address a store holds.
fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && value.len() <= 254
        && !local.contains('@')
        && !value.chars().any(char::is_whitespace)
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

fn is_phone(value: &str) -> bool {
    let digits: String = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    (6..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;

    fn map() -> DataMap {
        DataMap::parse(
            r#"
            identities = ["email", "phone", "user_id"]
            [stores.accounts]
            kind = "postgres"
            url_env = "A"
            [[stores.accounts.collections]]
            table = "users"
            match = { email = "email", phone = "phone" }
            provides = { user_id = "id" }
            erase = "delete"
            rectify = { first_name = "first_name" }
            "#,
        )
        .unwrap()
    }

    fn check(body: &str) -> Result<ValidRequest, (&'static str, Option<String>)> {
        let body: NewRequest = parse(body.as_bytes()).map_err(|e| match e {
            ApiError::Invalid { code, field, .. } => (code, field),
            other => panic!("{other:?}"),
        })?;
        validate(body, &map()).map_err(|e| match e {
            ApiError::Invalid { code, field, .. } => (code, field),
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn a_valid_erasure_normalises_its_identities() {
        let valid =
            check(r#"{"kind":"erasure","subject":{"email":" ada@example.com ","user_id":42}}"#)
                .unwrap();
        assert_eq!(valid.identities["email"], vec!["ada@example.com"]);
        assert_eq!(valid.identities["user_id"], vec!["42"]);
        let valid = check(
            r#"{"kind":"erasure","subject":{"email":"Ada@Example.COM","phone":"+44 20 7946 0000"}}"#,
        )
        .unwrap();
        assert_eq!(
            valid.identities["email"],
            vec!["Ada@Example.COM", "ada@example.com"]
        );
        assert_eq!(
            valid.identities["phone"],
            vec!["+44 20 7946 0000", "+442079460000"]
        );
    }

    #[test]
    fn each_class_of_bad_input_has_its_code_and_field() {
        let cases = [
            (
                r#"{"kind":"erasure","subject":{}}"#,
                "empty_subject",
                "subject",
            ),
            (
                r#"{"kind":"erasure","subject":{"ssn":"1"}}"#,
                "unknown_identity",
                "subject.ssn",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"not-an-email"}}"#,
                "invalid_email",
                "subject.email",
            ),
            (
                r#"{"kind":"erasure","subject":{"phone":"call me"}}"#,
                "invalid_phone",
                "subject.phone",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":""}}"#,
                "invalid_identity",
                "subject.email",
            ),
            (
                r#"{"kind":"rectification","subject":{"user_id":"1"}}"#,
                "missing_changes",
                "changes",
            ),
            (
                r#"{"kind":"rectification","subject":{"user_id":"1"},"changes":{"salary":1}}"#,
                "unknown_field",
                "changes.salary",
            ),
            (
                r#"{"kind":"erasure","subject":{"user_id":"1"},"changes":{"first_name":"A"}}"#,
                "unexpected_changes",
                "changes",
            ),
            (
                r#"{"kind":"erasure","subject":{"user_id":"1"},"callback_url":"ftp://x"}"#,
                "invalid_callback_url",
                "callback_url",
            ),
            (
                r#"{"kind":"erasure","subject":{"user_id":"1"},"extra":true}"#,
                "unknown_field",
                "extra",
            ),
        ];
        for (body, code, field) in cases {
            assert_eq!(
                check(body).err(),
                Some((code, Some(field.to_owned()))),
                "{body}"
            );
        }
    }
}
