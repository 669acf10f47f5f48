//! Tenant scope, end to end: two tenants each have an end user with the same email in every
//! store (PostgreSQL, MariaDB, Redis, S3). In a tenant-scoped deployment, one tenant's export
//! and erasure touch only its own user, checked with the stores' own clients before and after;
//! in a global one, an erasure takes both. The data map check refuses a tenant-scoped map
//! with a collection that has no way to its tenant.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_tests::Services;
use lethe_tests::e2e::{Daemon, Deployment, Options};
use lethe_tests::exporter_support::inspect_archive;
use serde_json::json;

/// How long one request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The email both tenants' end users have.
const EMAIL: &str = "ada@example.org";

/// One tenant's end user: its tenant name, user id and the markers its records carry.
struct EndUser {
    tenant: &'static str,
    id: i64,
    marker: &'static str,
}

/// Tenant `e2e` is the deployment's own (its key files by default).
const ALPHA: EndUser = EndUser {
    tenant: "e2e",
    id: 1,
    marker: "alpha-marker",
};
const BETA: EndUser = EndUser {
    tenant: "beta",
    id: 2,
    marker: "beta-marker",
};

/// The data map over the test's tables. Tenant-scoped: `ten_users.company` names the tenant,
/// invoices and messages are found by the user id the tenant's users rows provide, and the
/// Redis key and S3 prefix keyed by email carry `{tenant}`. Global: the same without the
/// tenant placeholders (a global deployment renders no tenant).
fn map(deployment: &Deployment, scope: &str) -> String {
    let options = &deployment.options;
    let (keys, prefixes) = if scope == "tenant" {
        (
            r#"["session:{user_id}", "last_seen:{tenant}:{email}"]"#.to_owned(),
            format!(
                r#"["{p}avatars/{{user_id}}/", "{p}docs/{{tenant}}/{{email}}/"]"#,
                p = options.files_prefix
            ),
        )
    } else {
        (
            r#"["session:{user_id}"]"#.to_owned(),
            format!(r#"["{p}avatars/{{user_id}}/"]"#, p = options.files_prefix),
        )
    };
    format!(
        r#"
identities = ["email", "user_id"]
scope = "{scope}"

[stores.accounts]
kind = "postgres"
url_env = "ACCOUNTS_DATABASE_URL"
[[stores.accounts.collections]]
table = "ten_users"
match = {{ email = "email" }}
provides = {{ user_id = "id" }}
erase = "delete"
tenant = "company"
rectify = {{ note = "note" }}
restrict = {{ column = "restricted" }}
[[stores.accounts.collections]]
table = "ten_invoices"
match = {{ user_id = "user_id" }}
erase = "delete"

[stores.chat]
kind = "mysql"
url_env = "CHAT_DATABASE_URL"
[[stores.chat.collections]]
table = "ten_messages"
match = {{ user_id = "author_id" }}
erase = "delete"

[stores.sessions]
kind = "redis"
url_env = "SESSIONS_REDIS_URL"
key_prefix = "{redis_prefix}"
keys = {keys}

[stores.files]
kind = "s3"
bucket = "{bucket}"
prefixes = {prefixes}
"#,
        redis_prefix = options.redis_prefix,
        bucket = options.files_bucket,
    )
}

/// The Redis keys and S3 object keys of `user` (without the namespace's prefixes).
fn redis_keys(user: &EndUser) -> [String; 2] {
    [
        format!("session:{}", user.id),
        format!("last_seen:{}:{EMAIL}", user.tenant),
    ]
}

fn object_keys(deployment: &Deployment, user: &EndUser) -> [String; 2] {
    let p = &deployment.options.files_prefix;
    [
        format!("{p}avatars/{}/avatar.png", user.id),
        format!("{p}docs/{}/{EMAIL}/notes.txt", user.tenant),
    ]
}

/// A deployment (not started) whose stores hold both tenants' end users of [`EMAIL`], and a
/// key of tenant `beta`.
async fn two_tenants(scope: &str) -> Result<(Deployment, String)> {
    let options = Options {
        subjects: 0,
        ..Options::default()
    };
    let deployment = Deployment::create(&Services::from_env(), options).await?;
    let accounts = &deployment.stores.accounts;
    sqlx::query(
        "CREATE TABLE ten_users (id bigint PRIMARY KEY, email text NOT NULL, company text, note text, \
         restricted boolean NOT NULL DEFAULT false)",
    )
    .execute(accounts)
    .await?;
    sqlx::query(
        "CREATE TABLE ten_invoices (id bigint PRIMARY KEY, user_id bigint NOT NULL, billing_name text)",
    )
    .execute(accounts)
    .await?;
    sqlx::query(
        "CREATE TABLE ten_messages (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, body TEXT NOT NULL)",
    )
    .execute(&deployment.stores.chat)
    .await?;
    let mut redis = deployment.stores.sessions.connection.clone();
    let files = deployment.stores.files.clone();
    for user in [&ALPHA, &BETA] {
        sqlx::query("INSERT INTO ten_users (id, email, company, note) VALUES ($1, $2, $3, $4)")
            .bind(user.id)
            .bind(EMAIL)
            .bind(user.tenant)
            .bind(user.marker)
            .execute(accounts)
            .await?;
        sqlx::query("INSERT INTO ten_invoices VALUES ($1, $2, $3)")
            .bind(100 + user.id)
            .bind(user.id)
            .bind(user.marker)
            .execute(accounts)
            .await?;
        sqlx::query("INSERT INTO ten_messages VALUES (?, ?, ?)")
            .bind(200 + user.id)
            .bind(user.id)
            .bind(user.marker)
            .execute(&deployment.stores.chat)
            .await?;
        for key in redis_keys(user) {
            let () = redis::cmd("SET")
                .arg(format!("{}{key}", deployment.stores.sessions.prefix))
                .arg(user.marker)
                .query_async(&mut redis)
                .await?;
        }
        for key in object_keys(&deployment, user) {
            files
                .client
                .put_object()
                .bucket(&files.bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(
                    user.marker.as_bytes().to_vec(),
                ))
                .send()
                .await?;
        }
    }
    std::fs::write(
        deployment.dir().join("datamap.toml"),
        map(&deployment, scope),
    )?;
    let beta_key = deployment
        .admin(&[
            "keys",
            "create",
            "--tenant",
            BETA.tenant,
            "--scopes",
            "requests:write,requests:read",
        ])
        .await?
        .trim()
        .to_owned();
    ensure!(beta_key.starts_with("lethe_"), "keys create printed no key");
    Ok((deployment, beta_key))
}

/// Everything the stores hold of `user`, read with the stores' own clients: rows as JSON,
/// keys and objects with their values.
async fn records_of(deployment: &Deployment, user: &EndUser) -> Result<Vec<String>> {
    let accounts = &deployment.stores.accounts;
    let mut records: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(u)::text FROM ten_users u WHERE id = $1
         UNION ALL SELECT row_to_json(i)::text FROM ten_invoices i WHERE user_id = $1",
    )
    .bind(user.id)
    .fetch_all(accounts)
    .await?;
    let messages: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, body FROM ten_messages WHERE author_id = ?")
            .bind(user.id)
            .fetch_all(&deployment.stores.chat)
            .await?;
    records.extend(
        messages
            .iter()
            .map(|(id, body)| format!("message {id}: {body}")),
    );
    let mut redis = deployment.stores.sessions.connection.clone();
    for key in redis_keys(user) {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{}{key}", deployment.stores.sessions.prefix))
            .query_async(&mut redis)
            .await?;
        if let Some(value) = value {
            records.push(format!("key {key}: {value}"));
        }
    }
    let files = &deployment.stores.files;
    for key in object_keys(deployment, user) {
        let dir = key.rsplit_once('/').map_or("", |(dir, _)| dir);
        for found in
            lethe_sample::list_keys(&files.client, &files.bucket, &format!("{dir}/")).await?
        {
            let body = files
                .client
                .get_object()
                .bucket(&files.bucket)
                .key(&found)
                .send()
                .await?
                .body
                .collect()
                .await?
                .into_bytes();
            records.push(format!(
                "object {found}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    records.sort();
    Ok(records)
}

/// Files `body` with `key` (a tenant's), returning the request id.
async fn file_as(
    deployment: &mut Deployment,
    key: &str,
    body: serde_json::Value,
) -> Result<String> {
    let own = std::mem::replace(&mut deployment.key, key.to_owned());
    let filed = deployment.file(&body).await;
    let id = match filed {
        Ok(id) => deployment
            .wait_completed(&id, REQUEST_TIMEOUT)
            .await
            .map(|_| id),
        Err(error) => Err(error),
    };
    deployment.key = own;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_tenant_scope_a_tenant_s_export_and_erasure_touch_only_its_own_user_of_an_email()
-> Result<()> {
    let (mut deployment, beta_key) = two_tenants("tenant").await?;
    deployment.start_all().await?;
    let alpha_before = records_of(&deployment, &ALPHA).await?;
    let beta_before = records_of(&deployment, &BETA).await?;
    ensure!(
        alpha_before.len() == 7 && beta_before.len() == 7,
        "seeded: {alpha_before:#?} {beta_before:#?}"
    );

    // A user id is the tenant's only as its own rows provide it: a client may not give one.
    let (status, answer) = deployment
        .post(
            "/v1/requests",
            &json!({"kind": "erasure", "subject": {"user_id": BETA.id}}),
        )
        .await?;
    ensure!(
        status == 422 && answer["code"] == "derived_identity",
        "{status} {answer}"
    );

    // Tenant e2e's export holds its own user's records and nothing of beta's.
    let id = deployment
        .file(&json!({"kind": "access", "subject": {"email": EMAIL}}))
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    let redirect = deployment
        .http()
        .get(format!("{}/v1/requests/{id}/export", deployment.api()?))
        .bearer_auth(&deployment.key)
        .send()
        .await?;
    ensure!(redirect.status() == 303, "export: {}", redirect.status());
    let location = redirect
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    let archive = reqwest::get(&location).await?.bytes().await?;
    let report = inspect_archive(&archive)?;
    ensure!(report.problems.is_empty(), "{:?}", report.problems);
    let exported = serde_json::to_string(&report.json)?;
    ensure!(
        exported.matches(ALPHA.marker).count() == 5,
        "alpha's rows and keys are not all exported: {exported}"
    );
    ensure!(
        !exported.contains(BETA.marker),
        "beta's records exported: {exported}"
    );
    let files: Vec<&String> = report.files.keys().collect();
    ensure!(files.len() == 2, "exported objects: {files:?}");
    ensure!(
        files
            .iter()
            .all(|f| !f.contains("/avatars/2/") && !f.contains("/docs/beta/")),
        "beta's objects exported: {files:?}"
    );

    // Its rectification and restriction change its own user's row only.
    let own_key = deployment.key.clone();
    for body in [
        json!({"kind": "rectification", "subject": {"email": EMAIL}, "changes": {"note": "corrected"}}),
        json!({"kind": "restriction", "subject": {"email": EMAIL}}),
    ] {
        file_as(&mut deployment, &own_key, body).await?;
    }
    let (note, restricted): (String, bool) =
        sqlx::query_as("SELECT note, restricted FROM ten_users WHERE id = $1")
            .bind(ALPHA.id)
            .fetch_one(&deployment.stores.accounts)
            .await?;
    ensure!(
        note == "corrected" && restricted,
        "alpha's row: {note} {restricted}"
    );
    ensure!(
        records_of(&deployment, &BETA).await? == beta_before,
        "beta's records changed"
    );

    // Tenant e2e's erasure takes its own user and leaves beta's exactly as it was.
    let id = file_as(
        &mut deployment,
        &own_key,
        json!({"kind": "erasure", "subject": {"email": EMAIL}}),
    )
    .await?;
    let (_, view) = deployment.get(&format!("/v1/requests/{id}")).await?;
    ensure!(view["found"] == true, "{view}");
    let alpha_after = records_of(&deployment, &ALPHA).await?;
    ensure!(
        alpha_after.is_empty(),
        "alpha's records left: {alpha_after:#?}"
    );
    ensure!(
        records_of(&deployment, &BETA).await? == beta_before,
        "beta's records changed"
    );

    // Beta's own erasure afterwards takes beta's user.
    file_as(
        &mut deployment,
        &beta_key,
        json!({"kind": "erasure", "subject": {"email": EMAIL}}),
    )
    .await?;
    let beta_after = records_of(&deployment, &BETA).await?;
    ensure!(
        beta_after.is_empty(),
        "beta's records left: {beta_after:#?}"
    );

    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_global_scope_an_erasure_takes_every_tenant_s_user_of_the_email() -> Result<()> {
    let (mut deployment, _) = two_tenants("global").await?;
    deployment.start_all().await?;

    let own_key = deployment.key.clone();
    file_as(
        &mut deployment,
        &own_key,
        json!({"kind": "erasure", "subject": {"email": EMAIL}}),
    )
    .await?;

    // Both users go from the stores the global map names (the tenant-keyed key and prefix are
    // not in it, so one of each per user stays).
    for user in [&ALPHA, &BETA] {
        let left = records_of(&deployment, user).await?;
        let expected = vec![
            format!("key last_seen:{}:{EMAIL}: {}", user.tenant, user.marker),
            format!(
                "object {}docs/{}/{EMAIL}/notes.txt: {}",
                deployment.options.files_prefix, user.tenant, user.marker
            ),
        ];
        ensure!(left == expected, "{} left: {left:#?}", user.tenant);
    }

    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_map_check_refuses_a_tenant_scoped_map_with_a_collection_lacking_a_tenant_route()
-> Result<()> {
    let (deployment, _) = two_tenants("tenant").await?;
    // Messages found by an author email as well: that email could be another tenant's user's.
    let text = map(&deployment, "tenant").replace(
        r#"match = { user_id = "author_id" }"#,
        r#"match = { user_id = "author_id", email = "author_email" }"#,
    );
    std::fs::write(deployment.dir().join("datamap.toml"), text)?;

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        deployment.command(Daemon::Eraser)?.arg("coverage").output(),
    )
    .await
    .context("lethe-eraser coverage did not finish")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "the map was accepted: {stderr}");
    ensure!(
        stderr.contains("stores.chat.collections[0] (ten_messages)")
            && stderr.contains("no way to its tenant"),
        "{stderr}"
    );
    ensure!(!stderr.contains("ten_invoices"), "{stderr}");

    deployment.cleanup().await
}
