//! Stores of kind `http`: processors (payment, e-mail, help-desk services) reached over their
//! HTTP APIs, described declaratively. The base URL and the credentials come from environment
//! variables; per action the data map says which requests to make, with path, query and body
//! templates over the subject's identities (`{email}`) and, for requests made per record found,
//! the record's id (`{id}`, read from the lookup's answer by a JSON pointer).
//!
//! The README's section on the data map documents every key; `config/processors/` holds two
//! worked examples, parsed by the tests below.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use super::{Matching, Scope, TENANT_PLACEHOLDER, check_env_name, placeholders};

/// The placeholder standing for the id of a record the lookup found.
pub const RECORD_ID: &str = "id";

/// A processor's API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStore {
    /// Environment variable holding the base URL (`https://api.stripe.com`).
    pub url_env: String,
    /// How requests authenticate; none when absent.
    pub auth: Option<HttpAuth>,
    /// Headers sent with every request (an API version, say). Never credentials: those come
    /// from the environment through `auth`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time one request may take.
    #[serde(default = "HttpStore::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests per second this process sends at most (the processor's rate limit).
    pub requests_per_second: Option<u32>,
    /// Longest `Retry-After` a task waits for in place; a longer one puts the task back on the
    /// queue for that long instead.
    #[serde(default = "HttpStore::default_max_wait", with = "humantime_serde")]
    pub max_retry_wait: Duration,
    /// JSON pointer to the error code in a refusal's body (`/error/code`): the only part of a
    /// refusal Lethe reports (the body itself may quote personal data).
    pub error_code: Option<String>,
    /// How the subject's records are found: by collect, by erase (then once more, to check
    /// that nothing remains), rectify and restrict.
    pub resolve: Lookup,
    /// Further records collected for each record found (`GET /v1/charges?customer={id}`).
    #[serde(default)]
    pub collect: Vec<Lookup>,
    /// How one record (a path naming `{id}`), or the subject, is erased.
    pub erase: Action,
    /// How fields are corrected.
    pub rectify: Option<Rectify>,
    /// How a restriction of processing is set and lifted.
    pub restrict: Option<FlagRequests>,
    /// How an objection to processing is set and lifted.
    pub object: Option<FlagRequests>,
    /// The map's normalisation of identities (filled in by [`super::DataMap::parse`]).
    #[serde(skip)]
    pub matching: Matching,
    /// The map's tenant scope (filled in by [`super::DataMap::parse`]).
    #[serde(skip)]
    pub scope: Scope,
}

impl HttpStore {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    fn default_max_wait() -> Duration {
        Duration::from_secs(10)
    }

    /// The identities the lookup searches with (its placeholders, `{id}` and `{tenant}`
    /// aside).
    pub fn search_kinds(&self) -> BTreeSet<String> {
        self.resolve
            .request
            .placeholders()
            .into_iter()
            .filter(|p| p != RECORD_ID && p != TENANT_PLACEHOLDER)
            .collect()
    }
}

/// How requests authenticate. Every secret is read from the environment variable named.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The variable holding the token.
        token_env: String,
    },
    /// `Authorization: Basic base64(<user>:<password>)`.
    Basic {
        /// The variable holding the user name.
        username_env: String,
        /// The variable holding the password (may be unset: an empty password).
        password_env: Option<String>,
    },
    /// A header `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path and
    /// query>.<body>")>`.
    Hmac {
        /// The header's name.
        header: String,
        /// The variable holding the secret.
        secret_env: String,
    },
}

impl HttpAuth {
    /// Every environment variable it names, with its data-map key.
    pub fn variables(&self) -> Vec<(&'static str, &str)> {
        match self {
            HttpAuth::Bearer { token_env } => vec![("auth.bearer.token_env", token_env)],
            HttpAuth::Basic {
                username_env,
                password_env,
            } => {
                let mut out = vec![("auth.basic.username_env", username_env.as_str())];
                if let Some(password) = password_env {
                    out.push(("auth.basic.password_env", password));
                }
                out
            }
            HttpAuth::Hmac { secret_env, .. } => vec![("auth.hmac.secret_env", secret_env)],
        }
    }
}

/// One request: method, path and query templates, and a body for the methods that send one.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestSpec {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    #[serde(default = "RequestSpec::default_method")]
    pub method: String,
    /// Path template after the base URL (`/v1/customers/{id}`); values are percent-encoded.
    pub path: String,
    /// Query parameters: name -> template (`{ email = "{email}", limit = "100" }`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Body fields: name -> template or constant (`true`, `3`), sent as `encoding` says.
    #[serde(default)]
    pub body: BTreeMap<String, toml::Value>,
    /// How a body is sent: `json` (default) or `form` (`application/x-www-form-urlencoded`).
    #[serde(default)]
    pub encoding: BodyEncoding,
}

impl RequestSpec {
    fn default_method() -> String {
        "GET".to_owned()
    }

    /// Every placeholder of its path, query and text body values.
    pub fn placeholders(&self) -> BTreeSet<String> {
        self.templates()
            .flat_map(|t| placeholders(t).unwrap_or_default())
            .collect()
    }

    /// Every template it holds.
    fn templates(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str())
            .chain(self.query.values().map(String::as_str))
            .chain(self.body.values().filter_map(toml::Value::as_str))
    }

    /// Whether it is made once per record found (its templates name `{id}`).
    pub fn per_record(&self) -> bool {
        self.placeholders().contains(RECORD_ID)
    }
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// A JSON object.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// A request that lists records, and where they are in its answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Lookup {
    /// The collection's name in counts and exports (`customers`).
    pub name: String,
    /// The request.
    #[serde(flatten)]
    pub request: RequestSpec,
    /// JSON pointer to the records in an answer: an array, or one object (`""`: the whole
    /// answer). A record that is not an object is kept as it is.
    #[serde(default)]
    pub records: String,
    /// JSON pointer to a record's id inside it (`/id`), for the requests made per record.
    #[serde(default = "Lookup::default_id")]
    pub id: String,
    /// Statuses that mean "no such record" (an empty answer, not a failure).
    #[serde(default = "Lookup::default_not_found")]
    pub not_found: Vec<u16>,
    /// How further pages are asked for; one page when absent.
    pub pagination: Option<Pagination>,
    /// Keys no field takes (serde cannot refuse them where fields are flattened): reported as
    /// problems, so a typo is refused as anywhere else in the map.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Lookup {
    fn default_id() -> String {
        "/id".to_owned()
    }

    fn default_not_found() -> Vec<u16> {
        vec![404]
    }
}

/// How a lookup pages through its records. Paging stops at an empty page, when `more` is
/// false or the next cursor is missing, and after [`MAX_PAGES`] pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "style", rename_all = "lowercase", deny_unknown_fields)]
pub enum Pagination {
    /// A cursor passed in query parameter `param`: read from the answer at `next`, or, without
    /// `next`, the id of the page's last record (Stripe's `starting_after`).
    Cursor {
        /// The query parameter.
        param: String,
        /// JSON pointer to the next cursor in an answer.
        next: Option<String>,
        /// JSON pointer to a boolean saying more pages follow (`/has_more`).
        more: Option<String>,
    },
    /// A page number passed in query parameter `param`, from `start`.
    Page {
        /// The query parameter.
        param: String,
        /// The first page's number.
        #[serde(default = "Pagination::default_start")]
        start: u64,
        /// JSON pointer to a boolean saying more pages follow.
        more: Option<String>,
    },
}

impl Pagination {
    fn default_start() -> u64 {
        1
    }
}

/// Most pages one lookup reads: a bound on what a processor that always says "more" costs.
pub const MAX_PAGES: usize = 100;

/// A request that changes something, and how its answer is read.
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    /// The request.
    #[serde(flatten)]
    pub request: RequestSpec,
    /// Statuses that mean done; any 2xx when empty.
    #[serde(default)]
    pub done: Vec<u16>,
    /// A field of the answer that must hold a value for the action to be done
    /// (`{ pointer = "/deleted", equals = true }`).
    pub done_field: Option<FieldCheck>,
    /// Statuses that mean the record is already gone (done, nothing counted).
    #[serde(default = "Lookup::default_not_found")]
    pub gone: Vec<u16>,
    /// Keys no field takes, reported as problems (see [`Lookup::unknown`]).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A field of an answer and the value it must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldCheck {
    /// JSON pointer.
    pub pointer: String,
    /// The value.
    pub equals: toml::Value,
}

/// How fields are corrected: the request, and which request fields it may carry.
#[derive(Debug, Clone, Deserialize)]
pub struct Rectify {
    /// The request; its body gets the corrected fields besides its own.
    #[serde(flatten)]
    pub action: Action,
    /// Field in rectification requests -> the processor's body field.
    pub fields: BTreeMap<String, String>,
}

/// How a flag (restriction, objection) is set and lifted.
#[derive(Debug, Clone, Deserialize)]
pub struct FlagRequests {
    /// The request that sets it.
    #[serde(flatten)]
    pub set: Action,
    /// The body fields that lift it (sent with the same request instead of `body`); without
    /// them a lift changes nothing here.
    pub lift: Option<BTreeMap<String, toml::Value>>,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Every problem of the `http` store `name`, with where it is. `check_identity` refuses
/// placeholders the map does not declare.
pub(super) fn problems(
    name: &str,
    store: &HttpStore,
    check_identity: &mut dyn FnMut(&mut Vec<String>, &str, &str),
) -> Vec<String> {
    let mut problems = Vec::new();
    check_env_name(
        &mut problems,
        &format!("stores.{name}.url_env"),
        &store.url_env,
    );
    if let Some(auth) = &store.auth {
        for (key, variable) in auth.variables() {
            check_env_name(&mut problems, &format!("stores.{name}.{key}"), variable);
        }
        if let HttpAuth::Hmac { header, .. } = auth
            && !is_header_name(header)
        {
            problems.push(format!(
                "stores.{name}.auth.hmac.header: `{header}` is not a header name"
            ));
        }
    }
    for header in store.headers.keys() {
        if !is_header_name(header) {
            problems.push(format!(
                "stores.{name}.headers: `{header}` is not a header name"
            ));
        }
    }
    if store.requests_per_second == Some(0) {
        problems.push(format!(
            "stores.{name}.requests_per_second must be at least 1"
        ));
    }
    if let Some(pointer) = &store.error_code {
        check_pointer(&mut problems, &format!("stores.{name}.error_code"), pointer);
    }
    let mut check_request =
        |problems: &mut Vec<String>, place: &str, request: &RequestSpec, id_allowed: bool| {
            if !METHODS.contains(&request.method.as_str()) {
                problems.push(format!(
                    "{place}.method: `{}` is not one of {}",
                    request.method,
                    METHODS.join(", ")
                ));
            }
            if !request.path.starts_with('/') {
                problems.push(format!("{place}.path: must start with `/`"));
            }
            if request.path.contains('?') {
                problems.push(format!(
                    "{place}.path: put query parameters in `query`, not in the path"
                ));
            }
            for template in request.templates() {
                match placeholders(template) {
                    Err(message) => problems.push(format!("{place}: {message}")),
                    Ok(names) => {
                        for placeholder in names {
                            if placeholder == RECORD_ID {
                                if !id_allowed {
                                    problems.push(format!(
                                        "{place}: `{{id}}` names a found record's id; the lookup \
                                         itself cannot use it"
                                    ));
                                }
                            } else if placeholder != TENANT_PLACEHOLDER {
                                // `{tenant}` is checked with the map's scope (tenancy).
                                check_identity(problems, &placeholder, place);
                            }
                        }
                    }
                }
            }
        };
    let resolve = format!("stores.{name}.resolve");
    check_request(&mut problems, &resolve, &store.resolve.request, false);
    if store.resolve.request.method != "GET" {
        problems.push(format!(
            "{resolve}.method: the lookup is asked again after an erasure, so it must be a GET"
        ));
    }
    if store.search_kinds().is_empty() {
        problems.push(format!(
            "{resolve}: names no identity placeholder like {{email}}"
        ));
    }
    let mut names = BTreeSet::new();
    for (i, lookup) in std::iter::once(&store.resolve)
        .chain(&store.collect)
        .enumerate()
    {
        let place = if i == 0 {
            resolve.clone()
        } else {
            format!("stores.{name}.collect[{}]", i - 1)
        };
        if i > 0 {
            check_request(&mut problems, &place, &lookup.request, true);
        }
        if !names.insert(lookup.name.as_str()) || !is_collection_name(&lookup.name) {
            problems.push(format!(
                "{place}.name: `{}` must be a unique name of lowercase letters, digits, `_` and `-`",
                lookup.name
            ));
        }
        check_unknown(&mut problems, &place, &lookup.unknown);
        check_pointer(&mut problems, &format!("{place}.records"), &lookup.records);
        check_pointer(&mut problems, &format!("{place}.id"), &lookup.id);
        match &lookup.pagination {
            Some(Pagination::Cursor { next, more, .. }) => {
                for (key, pointer) in [("next", next), ("more", more)] {
                    if let Some(pointer) = pointer {
                        check_pointer(&mut problems, &format!("{place}.pagination.{key}"), pointer);
                    }
                }
            }
            Some(Pagination::Page {
                more: Some(pointer),
                ..
            }) => check_pointer(&mut problems, &format!("{place}.pagination.more"), pointer),
            Some(Pagination::Page { more: None, .. }) | None => {}
        }
    }
    let actions = [
        ("erase", Some(&store.erase)),
        ("rectify", store.rectify.as_ref().map(|r| &r.action)),
        ("restrict", store.restrict.as_ref().map(|f| &f.set)),
        ("object", store.object.as_ref().map(|f| &f.set)),
    ];
    for (key, action) in actions {
        let Some(action) = action else { continue };
        let place = format!("stores.{name}.{key}");
        check_request(&mut problems, &place, &action.request, true);
        check_unknown(&mut problems, &place, &action.unknown);
        if action.request.method == "GET" {
            problems.push(format!("{place}.method: an action cannot be a GET"));
        }
        if let Some(check) = &action.done_field {
            check_pointer(
                &mut problems,
                &format!("{place}.done_field.pointer"),
                &check.pointer,
            );
        }
        for status in action.done.iter().chain(&action.gone) {
            if !(100..=599).contains(status) {
                problems.push(format!("{place}: {status} is not an HTTP status"));
            }
        }
    }
    if let Some(rectify) = &store.rectify
        && rectify.fields.is_empty()
    {
        problems.push(format!("stores.{name}.rectify.fields names no field"));
    }
    problems
}

fn check_unknown(problems: &mut Vec<String>, place: &str, unknown: &BTreeMap<String, toml::Value>) {
    for key in unknown.keys() {
        problems.push(format!("{place}: unknown key `{key}`"));
    }
}

fn check_pointer(problems: &mut Vec<String>, place: &str, pointer: &str) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        problems.push(format!(
            "{place}: `{pointer}` is not a JSON pointer (it starts with `/`, or is empty for the whole answer)"
        ));
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_collection_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use crate::datamap::{DataMap, Store};

    const STRIPE: &str = include_str!("../../../config/processors/stripe.toml");
    const MAILING: &str = include_str!("../../../config/processors/mailing.toml");

    fn with_identities(fragment: &str) -> String {
        format!("identities = [\"email\", \"phone\", \"user_id\"]\n{fragment}")
    }

    #[test]
    fn the_worked_examples_are_valid_data_map_fragments() {
        for (fragment, name) in [(STRIPE, "payments"), (MAILING, "mailing")] {
            let map = DataMap::parse(&with_identities(fragment)).unwrap_or_else(|e| panic!("{e}"));
            let store = map.stores.keys().find(|s| s.as_str() == name);
            let Some(Store::Http(http)) = store.and_then(|s| map.stores.get(s)) else {
                panic!("{name} is not an http store");
            };
            assert!(http.search_kinds().contains("email"), "{name}");
            assert!(http.erase.request.per_record(), "{name}");
        }
    }

    #[test]
    fn requests_are_checked_where_they_are() {
        let map = r#"
            identities = ["email"]
            [stores.p]
            kind = "http"
            url_env = "p_url"
            [stores.p.resolve]
            name = "Customers"
            method = "POST"
            path = "v1/customers?email={email}"
            records = "data"
            [stores.p.erase]
            method = "GET"
            path = "/v1/customers/{id}/{phone}"
            gone_statuses = [404]
        "#;
        let message = match DataMap::parse(map) {
            Ok(_) => panic!("expected the map to be refused"),
            Err(e) => e.to_string(),
        };
        for expected in [
            "stores.p.url_env",
            "stores.p.resolve.name",
            "must be a GET",
            "must start with `/`",
            "in `query`",
            "stores.p.resolve.records",
            "an action cannot be a GET",
            "`phone`",
            "stores.p.erase: unknown key `gone_statuses`",
        ] {
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }
}
