//! Tenant scope: whether a deployment's tasks touch every row of the subject (`global`) or only
//! the filing tenant's (`tenant`), and how each place of a tenant-scoped map finds its tenant.
//!
//! A processor serving many customers holds each customer's end users apart: tenant A's
//! erasure of `ada@example.com` must not touch the `ada@example.com` who belongs to tenant B.
//! With `scope = "tenant"` every place (collection, key template, prefix template) needs a
//! **route** to the tenant its records belong to:
//!
//! - a collection declaring `tenant = "<column>"`: its rows are matched with that column equal
//!   to the filing tenant's name, in every statement;
//! - a key or prefix template with a `{tenant}` placeholder: rendered with the filing tenant;
//! - anything found only by **tenant-derived** identities: identities that only tenant-scoped
//!   rows provide (`user_id` from `users`, whose `company` names the tenant). Their values come
//!   from the tenant's own rows, so whatever they find belongs to the tenant; a request may
//!   therefore not name them itself (intake refuses it).
//!
//! Routes compose: a collection found by `user_id` is tenant-scoped, so an identity it
//! provides is tenant-derived too.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{DataMap, Store, placeholders};

/// The placeholder of key and prefix templates that stands for the filing tenant's name.
pub const TENANT_PLACEHOLDER: &str = "tenant";

/// Whose rows a deployment's tasks touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every row of the subject, whichever tenant filed the request (one controller, or
    /// tenants that share their end users).
    #[default]
    Global,
    /// Only the filing tenant's rows, keys and objects (a processor serving many controllers).
    Tenant,
}

impl DataMap {
    /// Whether tasks are confined to the filing tenant.
    pub fn tenant_scoped(&self) -> bool {
        self.scope == Scope::Tenant
    }

    /// The identities whose values only tenant-scoped rows provide (see the module
    /// documentation): a fixed point, since a collection found only by such identities is
    /// tenant-scoped and what it provides is tenant-derived in turn.
    pub fn tenant_derived(&self) -> BTreeSet<String> {
        let collections: Vec<_> = self.sql_collections().map(|(_, c)| c).collect();
        let mut scoped: Vec<bool> = collections.iter().map(|c| c.tenant.is_some()).collect();
        loop {
            let derived: BTreeSet<String> = collections
                .iter()
                .flat_map(|c| c.provides.keys())
                .filter(|identity| {
                    collections
                        .iter()
                        .zip(&scoped)
                        .filter(|(c, _)| c.provides.contains_key(*identity))
                        .all(|(_, scoped)| *scoped)
                })
                .cloned()
                .collect();
            let mut grew = false;
            for (c, scoped) in collections.iter().zip(scoped.iter_mut()) {
                if !*scoped
                    && !c.matches.is_empty()
                    && c.matches.keys().all(|i| derived.contains(i))
                {
                    *scoped = true;
                    grew = true;
                }
            }
            if !grew {
                return derived;
            }
        }
    }

    /// The problems of the map's tenancy: in a tenant-scoped map, every place without a route
    /// to its tenant; in a global one, `{tenant}` placeholders (there is no tenant to render).
    pub(super) fn tenancy_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.identities.iter().any(|i| i == TENANT_PLACEHOLDER) {
            problems.push(format!(
                "identity `{TENANT_PLACEHOLDER}` is reserved: `{{{TENANT_PLACEHOLDER}}}` in key and prefix templates stands for the filing tenant"
            ));
        }
        let tenant_scoped = self.tenant_scoped();
        let derived = self.tenant_derived();
        let derived_list = if derived.is_empty() {
            "none here: no collection with a tenant column provides an identity".to_owned()
        } else {
            derived
                .iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, store) in &self.stores {
            let templates: Vec<(&str, &String)> = match store {
                Store::Postgres(sql) | Store::Mysql(sql) => {
                    if tenant_scoped {
                        for (i, c) in sql.collections.iter().enumerate() {
                            let routed = c.tenant.is_some()
                                || (!c.matches.is_empty()
                                    && c.matches.keys().all(|m| derived.contains(m)));
                            let moves = c
                                .rectify
                                .iter()
                                .find(|(_, column)| c.tenant.as_deref() == Some(column.as_str()));
                            if let Some((field, _)) = moves {
                                problems.push(format!(
                                    "stores.{name}.collections[{i}] ({}): with scope = \"tenant\" `rectify` may not write \
                                     the tenant column (field `{field}`): a tenant could hand its user to another",
                                    c.table
                                ));
                            }
                            if !routed {
                                problems.push(format!(
                                    "stores.{name}.collections[{i}] ({}): with scope = \"tenant\" it has no way to its tenant: \
                                     declare its tenant column (`tenant = \"<column>\"`), or match it only by identities \
                                     that rows with a tenant column provide ({derived_list})",
                                    c.table
                                ));
                            }
                        }
                    }
                    Vec::new()
                }
                Store::Redis(redis) => {
                    if tenant_scoped {
                        for (what, flag) in
                            [("restrict", &redis.restrict), ("object", &redis.object)]
                        {
                            if let Some(flag) = flag
                                && !derived.contains(&flag.identity)
                            {
                                problems.push(format!(
                                    "stores.{name}.{what}: with scope = \"tenant\" the set may only hold identities \
                                     that rows with a tenant column provide ({derived_list}), not `{}`",
                                    flag.identity
                                ));
                            }
                        }
                    }
                    redis.keys.iter().map(|t| ("keys", t)).collect()
                }
                Store::S3(s3) => s3.prefixes.iter().map(|t| ("prefixes", t)).collect(),
                // The lookup finds the records every other request of a processor acts on.
                Store::Http(http) => std::iter::once(("resolve.path", &http.resolve.request.path))
                    .chain(
                        http.resolve
                            .request
                            .query
                            .values()
                            .map(|t| ("resolve.query", t)),
                    )
                    .collect(),
            };
            for (field, template) in templates {
                let names = placeholders(template).unwrap_or_default();
                let has_tenant = names.iter().any(|n| n == TENANT_PLACEHOLDER);
                let place = format!("stores.{name}.{field} `{template}`");
                if has_tenant && !tenant_scoped {
                    problems.push(format!(
                        "{place}: `{{{TENANT_PLACEHOLDER}}}` needs scope = \"tenant\" (a global deployment renders no tenant)"
                    ));
                }
                let routed =
                    has_tenant || (!names.is_empty() && names.iter().all(|n| derived.contains(n)));
                if tenant_scoped && !routed {
                    problems.push(format!(
                        "{place}: with scope = \"tenant\" it has no way to its tenant: add a `{{{TENANT_PLACEHOLDER}}}` \
                         placeholder, or name only identities that rows with a tenant column provide ({derived_list})"
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant-scoped map of three stores; `extra` is appended (more collections or stores).
    fn map(scope: &str, users_tenant: &str, extra: &str) -> Result<DataMap, String> {
        DataMap::parse(&format!(
            r#"
            identities = ["email", "user_id", "account_id"]
            scope = "{scope}"
            [stores.accounts]
            kind = "postgres"
            url_env = "A_URL"
            [[stores.accounts.collections]]
            table = "users"
            match = {{ email = "email" }}
            provides = {{ user_id = "id" }}
            erase = "delete"
            {users_tenant}
            [[stores.accounts.collections]]
            table = "invoices"
            match = {{ user_id = "user_id" }}
            provides = {{ account_id = "account_id" }}
            erase = "delete"
            [stores.sessions]
            kind = "redis"
            url_env = "S_URL"
            keys = ["session:{{user_id}}", "last_seen:{{tenant}}:{{email}}"]
            [stores.files]
            kind = "s3"
            bucket = "files"
            prefixes = ["avatars/{{account_id}}/"]
            {extra}
            "#
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn identities_that_only_tenant_rows_provide_are_tenant_derived_hop_after_hop() {
        let map = map("tenant", "tenant = \"company\"", "").unwrap_or_else(|e| panic!("{e}"));
        assert!(map.tenant_scoped());
        let derived = map.tenant_derived();
        assert!(derived.contains("user_id"), "{derived:?}");
        assert!(derived.contains("account_id"), "{derived:?}");
        assert!(!derived.contains("email"), "{derived:?}");
    }

    #[test]
    fn a_tenant_scoped_map_without_a_route_names_every_place_lacking_one() {
        let message = map("tenant", "", "").err().unwrap_or_default();
        assert!(message.contains("collections[0] (users)"), "{message}");
        assert!(message.contains("collections[1] (invoices)"), "{message}");
        assert!(message.contains("`session:{user_id}`"), "{message}");
        assert!(!message.contains("last_seen"), "{message}");
        let message = map(
            "tenant",
            "tenant = \"company\"",
            r#"
            [stores.chat]
            kind = "mysql"
            url_env = "C_URL"
            [[stores.chat.collections]]
            table = "messages"
            match = { user_id = "author_id", email = "author_email" }
            erase = "delete"
            "#,
        )
        .err()
        .unwrap_or_default();
        assert!(
            message.contains("stores.chat.collections[0] (messages)"),
            "{message}"
        );
        assert!(message.contains("no way to its tenant"), "{message}");
        assert!(!message.contains("(invoices)"), "{message}");
        let message = map(
            "tenant",
            "tenant = \"company\"\n            rectify = { company = \"company\" }",
            "",
        )
        .err()
        .unwrap_or_default();
        assert!(
            message.contains("may not write the tenant column"),
            "{message}"
        );
    }

    #[test]
    fn the_tenant_placeholder_needs_the_tenant_scope_and_is_no_identity() {
        let message = map("global", "tenant = \"company\"", "")
            .err()
            .unwrap_or_default();
        assert!(message.contains("needs scope = \"tenant\""), "{message}");
        assert!(!message.contains("not declared"), "{message}");
        let global = DataMap::parse(
            r#"
            identities = ["email"]
            [stores.s]
            kind = "redis"
            url_env = "S_URL"
            keys = ["last_seen:{email}"]
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(global.scope, Scope::Global);
    }
}
