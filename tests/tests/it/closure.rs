//! The identity closure, end to end: resolution runs until no new identity appears, across
//! stores and hops, every store is erased with the closed set, and the receipt says what was
//! searched, through which hops, and whether anything was found. Checked with the stores' own
//! clients, not through Lethe.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use lethe_sample::count_in_stores;
use lethe_tests::Services;
use lethe_tests::e2e::{Deployment, Options};
use serde_json::{Value, json};

/// How long one request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn receipt(deployment: &Deployment, id: &str) -> Result<Value> {
    let (status, signed) = deployment
        .get(&format!("/v1/requests/{id}/receipt"))
        .await?;
    ensure!(status == 200, "receipt: {status} {signed}");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(signed["payload"].as_str().context("payload")?)?;
    Ok(serde_json::from_slice(&payload)?)
}

async fn redis_exists(deployment: &Deployment, key: &str) -> Result<bool> {
    let mut redis = deployment.stores.sessions.connection.clone();
    let full = format!("{}{key}", deployment.stores.sessions.prefix);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&full)
        .query_async(&mut redis)
        .await?;
    Ok(exists == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_by_phone_leaves_nothing_of_the_subject_in_any_store_the_email_keyed_redis_key_included()
-> Result<()> {
    let mut deployment = Deployment::create(&Services::from_env(), Options::default()).await?;
    deployment.start_all().await?;
    let s = deployment.subject(5);
    let email_key = format!("last_seen:{}", s.identities.email);
    ensure!(
        redis_exists(&deployment, &email_key).await?,
        "the seeded subject has no last_seen key"
    );
    let before = count_in_stores(&deployment.stores).await?;

    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"phone": s.identities.phone}}))
        .await?;
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    // Nothing of the subject is left: every record they had is gone (invoices stay, masked).
    ensure!(
        !redis_exists(&deployment, &email_key).await?,
        "last_seen:{{email}} survived an erasure by phone"
    );
    for key in s.redis_keys() {
        ensure!(
            !redis_exists(&deployment, &key).await?,
            "a Redis key of the subject is left"
        );
    }
    let after = count_in_stores(&deployment.stores).await?;
    let theirs = s.counts();
    for (store, collection, count) in before.iter() {
        let expected = if (store, collection) == ("accounts", "invoices") {
            count
        } else {
            count - theirs.get(store, collection)
        };
        ensure!(
            after.get(store, collection) == expected,
            "{store}.{collection}: {} left, expected {expected}",
            after.get(store, collection)
        );
    }
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1 OR phone = $2")
            .bind(&s.identities.email)
            .bind(&s.identities.phone)
            .fetch_one(&deployment.stores.accounts)
            .await?;
    ensure!(users == 0, "the users row is left");
    let files = &deployment.stores.files;
    for prefix in [
        format!("{}avatars/{}/", deployment.options.files_prefix, s.user.id),
        format!(
            "{}attachments/{}/",
            deployment.options.files_prefix, s.user.id
        ),
    ] {
        let left = lethe_sample::list_keys(&files.client, &files.bucket, &prefix).await?;
        ensure!(
            left.is_empty(),
            "{} objects of the subject left",
            left.len()
        );
    }

    // The status and the receipt say what was found and what was searched.
    ensure!(view["found"] == true, "{view}");
    let receipt = receipt(&deployment, &id).await?;
    ensure!(receipt["found"] == true, "{receipt}");
    let sessions = receipt["stores"]
        .as_array()
        .context("stores")?
        .iter()
        .find(|s| s["store"] == "sessions")
        .context("no sessions store in the receipt")?;
    ensure!(
        sessions["searched_with"]["email"] == 1 && sessions["searched_with"]["user_id"] == 1,
        "{receipt}"
    );
    ensure!(
        receipt["kept"]
            .as_array()
            .context("kept")?
            .iter()
            .any(|k| k["collection"] == "invoices"
                && k["legal_basis"].as_str().is_some_and(|b| b.contains("tax"))),
        "{receipt}"
    );
    let text = receipt.to_string();
    ensure!(
        !text.contains(&s.identities.email) && !text.contains(&s.identities.phone),
        "the receipt holds an identifier"
    );

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

/// Three stores chained: accounts derives `user_id` from `email`, chat derives `account_id`
/// from `user_id`, and sessions and files keep data under `account_id` only.
fn two_hop_map(deployment: &Deployment) -> String {
    let options = &deployment.options;
    format!(
        r#"
identities = ["email", "user_id", "account_id"]

[stores.accounts]
kind = "postgres"
url_env = "ACCOUNTS_DATABASE_URL"
[[stores.accounts.collections]]
table = "hop_users"
match = {{ email = "email" }}
provides = {{ user_id = "id" }}
erase = "delete"

[stores.chat]
kind = "mysql"
url_env = "CHAT_DATABASE_URL"
[[stores.chat.collections]]
table = "hop_accounts"
match = {{ user_id = "user_id" }}
provides = {{ account_id = "id" }}
erase = "delete"

[stores.sessions]
kind = "redis"
url_env = "SESSIONS_REDIS_URL"
key_prefix = "{redis_prefix}"
keys = ["acct:{{account_id}}"]

[stores.files]
kind = "s3"
bucket = "{bucket}"
prefixes = ["{files_prefix}hop/{{account_id}}/"]
"#,
        redis_prefix = options.redis_prefix,
        bucket = options.files_bucket,
        files_prefix = options.files_prefix,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hop_derivation_across_three_stores_is_erased_completely_and_the_receipt_lists_the_hops()
-> Result<()> {
    let options = Options {
        subjects: 0,
        ..Options::default()
    };
    let mut deployment = Deployment::create(&Services::from_env(), options).await?;
    sqlx::query("CREATE TABLE hop_users (id bigint PRIMARY KEY, email text NOT NULL)")
        .execute(&deployment.stores.accounts)
        .await?;
    sqlx::query("INSERT INTO hop_users VALUES (41, 'hop@example.org'), (42, 'other@example.org')")
        .execute(&deployment.stores.accounts)
        .await?;
    sqlx::query("CREATE TABLE hop_accounts (id bigint PRIMARY KEY, user_id bigint NOT NULL)")
        .execute(&deployment.stores.chat)
        .await?;
    sqlx::query("INSERT INTO hop_accounts VALUES (9001, 41), (9002, 42)")
        .execute(&deployment.stores.chat)
        .await?;
    let mut redis = deployment.stores.sessions.connection.clone();
    for account in ["9001", "9002"] {
        let () = redis::cmd("SET")
            .arg(format!(
                "{}acct:{account}",
                deployment.stores.sessions.prefix
            ))
            .arg("x")
            .query_async(&mut redis)
            .await?;
    }
    let files = deployment.stores.files.clone();
    for account in ["9001", "9002"] {
        files
            .client
            .put_object()
            .bucket(&files.bucket)
            .key(format!(
                "{}hop/{account}/a.txt",
                deployment.options.files_prefix
            ))
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
            .await?;
    }
    std::fs::write(
        deployment.dir().join("datamap.toml"),
        two_hop_map(&deployment),
    )?;
    deployment.start_all().await?;

    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": "hop@example.org"}}))
        .await?;
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    // The subject is gone from all three hops; the other subject is untouched.
    let users: Vec<i64> = sqlx::query_scalar("SELECT id FROM hop_users ORDER BY id")
        .fetch_all(&deployment.stores.accounts)
        .await?;
    ensure!(users == vec![42], "hop_users: {users:?}");
    let accounts: Vec<i64> = sqlx::query_scalar("SELECT id FROM hop_accounts ORDER BY id")
        .fetch_all(&deployment.stores.chat)
        .await?;
    ensure!(accounts == vec![9002], "hop_accounts: {accounts:?}");
    ensure!(
        !redis_exists(&deployment, "acct:9001").await?,
        "acct:9001 left"
    );
    ensure!(
        redis_exists(&deployment, "acct:9002").await?,
        "acct:9002 gone"
    );
    let prefix = |account: &str| format!("{}hop/{account}/", deployment.options.files_prefix);
    let left = lethe_sample::list_keys(&files.client, &files.bucket, &prefix("9001")).await?;
    ensure!(left.is_empty(), "the subject's objects are left");
    let other = lethe_sample::list_keys(&files.client, &files.bucket, &prefix("9002")).await?;
    ensure!(other.len() == 1, "the other subject's object is gone");

    // Two rounds: accounts turned the email into a user id, then chat the user id into an
    // account id; the receipt lists both hops, kinds and counts only.
    ensure!(view["found"] == true, "{view}");
    let receipt = receipt(&deployment, &id).await?;
    let hops = receipt["hops"].as_array().context("hops")?;
    ensure!(
        hops.iter().any(|h| h["round"] == 1
            && h["store"] == "accounts"
            && h["from"] == json!({"email": 1})
            && h["to"] == json!({"user_id": 1})),
        "{receipt}"
    );
    ensure!(
        hops.iter().any(|h| h["round"] == 2
            && h["store"] == "chat"
            && h["from"] == json!({"user_id": 1})
            && h["to"] == json!({"account_id": 1})),
        "{receipt}"
    );
    ensure!(
        receipt["identities"] == json!({"account_id": 1, "email": 1, "user_id": 1}),
        "{receipt}"
    );
    ensure!(receipt["closure"]["complete"] == true, "{receipt}");

    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_unknown_to_every_store_completes_with_found_false_in_status_and_receipt()
-> Result<()> {
    let mut deployment = Deployment::create(&Services::from_env(), Options::default()).await?;
    deployment.start_all().await?;
    let before = count_in_stores(&deployment.stores).await?;

    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": "nobody.at.all@example.invalid"}}))
        .await?;
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    ensure!(view["found"] == false, "{view}");
    let receipt = receipt(&deployment, &id).await?;
    ensure!(receipt["found"] == false, "{receipt}");
    let after = count_in_stores(&deployment.stores).await?;
    ensure!(
        before.to_string() == after.to_string(),
        "the stores changed:\n{before}\n{after}"
    );

    // A subject with data, for contrast, is found.
    let s = deployment.subject(3);
    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": s.identities.email}}))
        .await?;
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    ensure!(view["found"] == true, "{view}");

    deployment.cleanup().await
}
