//! The OpenAPI document, generated from the handlers and their types so it cannot drift.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{export, incidents, routes};

/// Lethe's API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lethe", description = "Data-subject requests (GDPR Art. 15-21) across every store, with receipts."),
    paths(routes::create, routes::list, routes::show, routes::cancel, routes::extend, routes::receipt, export::download, routes::receipt_key,
        incidents::open, incidents::list, incidents::show, incidents::update, incidents::estimate, incidents::notify, incidents::acknowledge, incidents::close),
    modifiers(&BearerAuth),
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
