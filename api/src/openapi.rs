//! The OpenAPI document, generated from the handlers and their types so it cannot drift.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{export, incidents, routes};

/// Lethe's API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lethe", description = "Data-subject requests (GDPR Art. 15-21) across every store, with receipts."),
    paths(routes::create, routes::list, routes::show, routes::cancel, routes::extend, routes::receipt, export::download, routes::receipt_key,
        incidents::open, incidents::list, incidents::show, incidents::update, incidents::estimate, incidents::notify, incidents::acknowledge, incidents::close),
    modifiers(&BearerAuth, &ProblemResponses),
    tags((name = "requests", description = "Data-subject requests"), (name = "receipts", description = "Checking receipts"), (name = "incidents", description = "The breach register: incidents, deadlines, tenant notifications"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Declares the error answers every operation can give, as RFC 9457 problem documents
/// (`application/problem+json`, schema `Problem`): the extractors and the router give them
/// whatever the handler, so declaring them once here keeps every operation complete (the
/// fuzzing test checks that no answer is undeclared).
struct ProblemResponses;

/// The media type of every error answer.
const PROBLEM: &str = "application/problem+json";

impl ProblemResponses {
    /// The statuses `operation` can answer besides its own: 401/403 where a key is needed,
    /// 503 when the ledger is down, 404 for a path id, 400/413/415/422 for a body, 400/422 for
    /// query parameters.
    fn statuses(operation: &Operation) -> Vec<(&'static str, &'static str)> {
        let mut statuses = Vec::new();
        let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
        let parameters = operation.parameters.as_deref().unwrap_or_default();
        let has = |place: ParameterIn| {
            parameters
                .iter()
                .any(|p| std::mem::discriminant(&p.parameter_in) == std::mem::discriminant(&place))
        };
        if secured {
            statuses.push((
                "401",
                "`unauthenticated`: no key, or an unknown or revoked one",
            ));
            statuses.push((
                "403",
                "`missing_scope`: the key lacks the operation's scope",
            ));
            statuses.push(("503", "`unavailable`: the ledger is down"));
        }
        if has(ParameterIn::Path) {
            statuses.push(("404", "`not_found`: no such resource, or another tenant's"));
        }
        if operation.request_body.is_some() {
            statuses.push(("400", "`malformed_json`: the body is not JSON"));
            statuses.push(("413", "`body_too_large`: over `api.body_limit_bytes`"));
            statuses.push(("415", "`unsupported_media_type`: not `application/json`"));
            statuses.push((
                "422",
                "well-formed but unacceptable (`code` and `field` say what)",
            ));
        }
        if has(ParameterIn::Query) {
            statuses.push(("400", "a query parameter is malformed"));
            statuses.push((
                "422",
                "`invalid_query`, `invalid_cursor`: a query parameter is unacceptable",
            ));
        }
        statuses
    }
}

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in Self::statuses(operation) {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            RefOr::T(ResponseBuilder::new().description(description).build())
                        });
                }
                // Every 4xx and 5xx answer is a problem document, whatever the handler's
                // annotation said (utoipa writes `application/json` for a body).
                for (status, response) in &mut operation.responses.responses {
                    let (Some(first), RefOr::T(response)) = (status.chars().next(), response)
                    else {
                        continue;
                    };
                    if matches!(first, '4' | '5') {
                        response.content.clear();
                        response.content.insert(PROBLEM.to_owned(), problem());
                    }
                }
            }
        }
    }
}
