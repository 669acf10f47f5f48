//! A data-map request filled with values: the path with each value percent-encoded as one path
//! segment, the query and body values as they are (encoded by the client), and the label that
//! stands for it in logs and errors: the method and the path *template*, never a filled one.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use lethe_common::datamap::{BodyEncoding, RequestSpec, render};

/// A request ready to send.
pub(crate) struct Prepared {
    /// The method.
    pub method: reqwest::Method,
    /// The path after the base URL, values encoded.
    pub path: String,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// Content type and bytes of the body.
    pub body: Option<(&'static str, Vec<u8>)>,
    /// `METHOD /path/{template}`: what logs and errors name.
    pub label: String,
}

/// Fields added to a request's own body (a rectification's corrected values).
pub(crate) type ExtraBody<'a> = &'a BTreeMap<String, Json>;

impl Prepared {
    /// `spec` filled with `values` (identity and `id` placeholders), with `body` instead of its
    /// own body fields when given, and `extra` fields besides; `None` when a placeholder has no
    /// value.
    pub(crate) fn new(
        spec: &RequestSpec,
        values: &BTreeMap<&str, &str>,
        body: Option<&BTreeMap<String, toml::Value>>,
        extra: Option<ExtraBody<'_>>,
    ) -> Option<Self> {
        let encoded: BTreeMap<&str, String> = values
            .iter()
            .map(|(k, v)| (*k, encode_segment(v)))
            .collect();
        let encoded_refs: BTreeMap<&str, &str> =
            encoded.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = render(&spec.path, &encoded_refs)?;
        let mut query = Vec::with_capacity(spec.query.len());
        for (name, template) in &spec.query {
            query.push((name.clone(), render(template, values)?));
        }
        let mut fields: BTreeMap<String, Json> = BTreeMap::new();
        for (name, value) in body.unwrap_or(&spec.body) {
            fields.insert(name.clone(), fill(value, values)?);
        }
        if let Some(extra) = extra {
            fields.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let body = if fields.is_empty() {
            None
        } else {
            Some(match spec.encoding {
                BodyEncoding::Json => ("application/json", serde_json::to_vec(&fields).ok()?),
                BodyEncoding::Form => ("application/x-www-form-urlencoded", form(&fields)),
            })
        };
        Some(Self {
            method: reqwest::Method::from_bytes(spec.method.as_bytes()).ok()?,
            path,
            query,
            body,
            label: format!("{} {}", spec.method, spec.path),
        })
    }

    /// The same request with one more query parameter (a page or cursor).
    pub(crate) fn with_query(&self, name: &str, value: String) -> Self {
        let mut query: Vec<(String, String)> = self
            .query
            .iter()
            .filter(|(k, _)| k != name)
            .cloned()
            .collect();
        query.push((name.to_owned(), value));
        Self {
            method: self.method.clone(),
            path: self.path.clone(),
            query,
            body: self.body.clone(),
            label: self.label.clone(),
        }
    }
}

/// A body value of the data map as JSON, its text templates filled.
fn fill(value: &toml::Value, values: &BTreeMap<&str, &str>) -> Option<Json> {
    Some(match value {
        toml::Value::String(template) => Json::String(render(template, values)?),
        other => toml_to_json(other),
    })
}

/// A TOML value as JSON (dates as their text).
pub(crate) fn toml_to_json(value: &toml::Value) -> Json {
    match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(n) => Json::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Form fields: text as it is, `null` as empty (Stripe's way of clearing a field), anything
/// else as its JSON text.
fn form(fields: &BTreeMap<String, Json>) -> Vec<u8> {
    let mut out = String::new();
    for (name, value) in fields {
        if !out.is_empty() {
            out.push('&');
        }
        let text = match value {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            other => other.to_string(),
        };
        out.push_str(&encode_form(name));
        out.push('=');
        out.push_str(&encode_form(&text));
    }
    out.into_bytes()
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a value stays one path
/// segment (`a/b` cannot reach another resource).
pub(crate) fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn encode_form(value: &str) -> String {
    encode_segment(value).replace("%20", "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> RequestSpec {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn values_fill_the_path_as_one_segment_and_the_query_as_given() {
        let spec = spec(
            r#"method = "GET"
               path = "/v1/contacts/{email}"
               query = { email = "{email}", limit = "10" }"#,
        );
        let values = BTreeMap::from([("email", "a/b+c@x.org")]);
        let prepared = Prepared::new(&spec, &values, None, None).unwrap();
        assert_eq!(prepared.path, "/v1/contacts/a%2Fb%2Bc%40x.org");
        assert!(
            prepared
                .query
                .contains(&("email".into(), "a/b+c@x.org".into()))
        );
        assert_eq!(prepared.label, "GET /v1/contacts/{email}");
        assert!(Prepared::new(&spec, &BTreeMap::new(), None, None).is_none());
    }

    #[test]
    fn bodies_are_json_or_form_with_extra_fields() {
        let form_spec = spec(
            r#"method = "POST"
               path = "/v1/customers/{id}"
               encoding = "form"
               body = { "metadata[restricted]" = "true" }"#,
        );
        let values = BTreeMap::from([("id", "cus_1")]);
        let extra = BTreeMap::from([("phone".to_owned(), Json::Null)]);
        let prepared = Prepared::new(&form_spec, &values, None, Some(&extra)).unwrap();
        let (kind, body) = prepared.body.unwrap();
        assert_eq!(kind, "application/x-www-form-urlencoded");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "metadata%5Brestricted%5D=true&phone="
        );
        let json_spec = spec(
            r#"method = "PATCH"
               path = "/c/{id}"
               body = { unsubscribed = true }"#,
        );
        let prepared = Prepared::new(&json_spec, &values, None, None).unwrap();
        let (kind, body) = prepared.body.unwrap();
        assert_eq!(kind, "application/json");
        assert_eq!(body, br#"{"unsubscribed":true}"#);
    }
}
