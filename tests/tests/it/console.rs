//! The operator console and the privacy center in a real browser: Debian's headless Chromium
//! through chromedriver, against the real daemons of a deployment, with the local mail catcher
//! receiving the privacy center's mails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_tests::Services;
use lethe_tests::browser::{Browser, ConsoleClient, MailCatcher, csrf_token, link_path};
use lethe_tests::e2e::{Daemon, Deployment, Options};
use serde_json::json;

/// How long a request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the README's screenshots go (`LETHE_SCREENSHOTS=1` writes them).
fn screenshot_path(name: &str) -> Option<PathBuf> {
    std::env::var("LETHE_SCREENSHOTS")
        .is_ok_and(|v| v == "1")
        .then(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../docs/screenshots")
                .join(name)
        })
}

fn pages_config(smtp: bool, verification_ttl: &str) -> Result<(toml::Value, Option<toml::Value>)> {
    let pages: toml::Value = toml::from_str(&format!(
        "verification_ttl = {verification_ttl:?}\nsweep_interval = \"500ms\"\n"
    ))?;
    let smtp = smtp
        .then(|| {
            let (host, port) = MailCatcher::smtp();
            toml::from_str(&format!(
                "host = {host:?}\nport = {port}\nsecurity = \"none\"\nfrom = \"Privacy <privacy@lethe.test>\"\n"
            ))
        })
        .transpose()?;
    Ok((pages, smtp))
}

async fn deployment(daemons: &[Daemon], smtp: bool, verification_ttl: &str) -> Result<Deployment> {
    let mut deployment = Deployment::create(&Services::from_env(), Options::default()).await?;
    let (pages, smtp) = pages_config(smtp, verification_ttl)?;
    deployment.set_config("api", "pages", pages)?;
    if let Some(smtp) = smtp {
        deployment.set_config("api", "smtp", smtp)?;
    }
    for daemon in daemons {
        deployment.start(*daemon).await?;
    }
    Ok(deployment)
}

/// Fetches every console page and asset a logged-in key reaches: none may answer 5xx, and each
/// sends the security headers.
async fn check_pages(console: &ConsoleClient, request: &str) -> Result<()> {
    let (_, _, page) = console.get("/console").await?;
    let assets: Vec<String> = page
        .split('"')
        .filter(|s| s.starts_with("/console/assets/"))
        .map(str::to_owned)
        .collect();
    ensure!(assets.len() == 2, "the page links {assets:?}");
    let mut paths = vec![
        "/console".to_owned(),
        "/console/requests".to_owned(),
        "/console/requests?status=completed&kind=erasure&overdue=true".to_owned(),
        format!("/console/requests/{request}"),
        format!("/console/requests/{request}/live"),
        "/console/incidents".to_owned(),
        "/console/backups".to_owned(),
        "/console/login".to_owned(),
        "/privacy/e2e".to_owned(),
    ];
    paths.extend(assets);
    for path in &paths {
        let (status, headers, _) = console.get(path).await?;
        ensure!(status < 500, "{path} answered {status}");
        ensure!(status == 200, "{path} answered {status}");
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        ensure!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: CSP {csp:?}"
        );
        ensure!(
            headers.get("x-frame-options").is_some_and(|v| v == "DENY"),
            "{path}: X-Frame-Options"
        );
        ensure!(
            headers
                .get("referrer-policy")
                .is_some_and(|v| v == "no-referrer"),
            "{path}: Referrer-Policy"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_an_admin_watches_an_erasure_complete_live_sees_its_receipt_checked_and_extends_another_request()
-> Result<()> {
    let mut deployment = deployment(&Daemon::ALL, false, "24h").await?;
    let api = deployment.api()?;
    let browser = Browser::start().await?;

    // An operator logs in with the admin key and sees the dashboard.
    browser.login(&api, &deployment.key).await?;
    ensure!(
        browser.text("#chart").await.is_ok(),
        "the dashboard has its chart"
    );

    // An erasure filed through the API reaches `completed` on its page without a reload.
    let id = deployment.file_erasure(1).await?;
    browser
        .goto(&format!("{api}/console/requests/{id}"))
        .await?;
    let url = browser.url().await?;
    browser
        .wait_text("#status", REQUEST_TIMEOUT, |s| s == "completed")
        .await?;
    ensure!(browser.url().await? == url, "the page navigated");
    let signature = browser
        .wait_text("#signature", Duration::from_secs(5), |s| !s.is_empty())
        .await?;
    ensure!(signature == "Signature valid", "receipt: {signature}");
    let command = browser.text("#verify-command").await?;
    ensure!(command.contains("openssl pkeyutl -verify"), "{command}");
    if let Some(path) = screenshot_path("request.png") {
        browser.screenshot(&path).await?;
    }

    // Another request, held open (no eraser), is extended with a reason.
    deployment.stop(Daemon::Eraser)?;
    let open = deployment.file_erasure(2).await?;
    browser
        .goto(&format!("{api}/console/requests/{open}"))
        .await?;
    browser
        .fill(
            "#extend textarea[name=reason]",
            "Complex request: several linked accounts",
        )
        .await?;
    browser.click("#extend button").await?;
    let reason = browser
        .wait_text("#extension-reason", Duration::from_secs(10), |s| {
            !s.is_empty()
        })
        .await?;
    ensure!(
        reason == "Complex request: several linked accounts",
        "{reason}"
    );
    let (_, view) = deployment.get(&format!("/v1/requests/{open}")).await?;
    ensure!(view["extension"]["reason"] == reason, "{view}");

    browser.goto(&format!("{api}/console")).await?;
    if let Some(path) = screenshot_path("dashboard.png") {
        browser.screenshot(&path).await?;
    }
    browser.close().await?;

    // Every page and asset answers with the security headers, and none with a 5xx.
    let console = ConsoleClient::login(&api, &deployment.key).await?;
    check_pages(&console, &id).await?;

    // The backups page shows the next runs as the daemons planned them (schedules are off in
    // the tests' configuration).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, page) = console.get("/console/backups").await?;
        let retention = page.split("id=\"next-retention\"").nth(1).unwrap_or("");
        let stores_planned = page
            .split("id=\"never-backed-up\"")
            .nth(1)
            .is_some_and(|p| p.contains("off (on demand only)"));
        if retention.contains("off (on demand only)") && stores_planned {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the backups page shows no planned runs"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_a_tenant_key_sees_only_its_tenants_requests_and_incidents() -> Result<()> {
    let deployment = deployment(&[Daemon::Api], false, "24h").await?;
    let api = deployment.api()?;
    let other_key = deployment
        .admin(&[
            "keys",
            "create",
            "--tenant",
            "other",
            "--scopes",
            "requests:write,requests:read",
        ])
        .await?
        .trim()
        .to_owned();
    let theirs = deployment.file_erasure(3).await?;
    let (status, incident) = deployment
        .post(
            "/v1/incidents",
            &json!({"detected_at": chrono::Utc::now(), "description": "Lost laptop", "stores": ["accounts"],
                    "data_categories": ["contact details"], "tenants": ["e2e"]}),
        )
        .await?;
    ensure!(status == 201 || status == 200, "{status} {incident}");
    let incident_id = incident["id"].as_str().context("incident id")?.to_owned();
    let (status, mine) = deployment
        .http()
        .post(format!("{api}/v1/requests"))
        .bearer_auth(&other_key)
        .json(&json!({"kind": "erasure", "subject": {"email": "someone@example.net"}}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))?;
    ensure!(status == 202, "{status}");
    let mine: serde_json::Value = mine.json().await?;
    let mine = mine["id"].as_str().context("id")?.to_owned();

    let browser = Browser::start().await?;
    browser.login(&api, &other_key).await?;
    browser.goto(&format!("{api}/console/requests")).await?;
    let list = browser.text("#requests").await?;
    ensure!(list.contains(&mine), "its own request is listed: {list}");
    ensure!(
        !list.contains(&theirs),
        "another tenant's request is listed: {list}"
    );
    browser.goto(&format!("{api}/console/incidents")).await?;
    let incidents = browser.text("#incidents").await?;
    ensure!(
        !incidents.contains(&incident_id),
        "another tenant's incident is listed"
    );
    browser
        .goto(&format!("{api}/console/requests/{theirs}"))
        .await?;
    ensure!(
        browser.text("h1").await? == "Not found",
        "another tenant's request is a 404 page"
    );
    browser.close().await?;

    let console = ConsoleClient::login(&api, &other_key).await?;
    let (status, _, _) = console.get(&format!("/console/requests/{theirs}")).await?;
    ensure!(status == 404, "another tenant's request answered {status}");
    let admin = ConsoleClient::login(&api, &deployment.key).await?;
    let (status, _, page) = admin.get("/console/incidents").await?;
    ensure!(
        status == 200 && page.contains(&incident_id),
        "the admin sees the incident"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_center_an_access_request_is_filed_by_its_emailed_link_and_its_download_link_yields_the_zip()
-> Result<()> {
    let deployment = deployment(&Daemon::ALL, true, "24h").await?;
    let api = deployment.api()?;
    let email = deployment.subject(4).identities.email;
    let mail = MailCatcher::from_env().await?;
    let browser = Browser::start().await?;

    browser.goto(&format!("{api}/privacy/e2e")).await?;
    if let Some(path) = screenshot_path("privacy-center.png") {
        browser.screenshot(&path).await?;
    }
    browser.fill("input[name=email]", &email).await?;
    browser.click("button[type=submit]").await?;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Check your mail")
        .await?;
    ensure!(
        !browser.url().await?.contains('@'),
        "the address is in a URL"
    );
    // Nothing is filed before the link is followed.
    let filed: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(&deployment.ledger)
        .await?;
    ensure!(filed == 0, "a request was filed before verification");

    let text = mail
        .wait_for(
            &email,
            "Confirm your privacy request",
            "/privacy/e2e/confirm/",
            Duration::from_secs(30),
        )
        .await?;
    let confirm = link_path(&text, "/confirm/").context("no confirmation link in the mail")?;
    browser.goto(&format!("{api}{confirm}")).await?;
    browser.click("#confirm").await?;
    let id = browser
        .wait_text("#reference", Duration::from_secs(10), |t| !t.is_empty())
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    let text = mail
        .wait_for(
            &email,
            "Your data is ready",
            "/privacy/e2e/download/",
            Duration::from_secs(60),
        )
        .await?;
    let download = link_path(&text, "/download/").context("no download link in the mail")?;
    let response = deployment
        .http()
        .get(format!("{api}{download}"))
        .send()
        .await?;
    ensure!(
        response.status() == 303,
        "download answered {}",
        response.status()
    );
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("location")?
        .to_owned();
    let zip = reqwest::get(&location).await?.bytes().await?;
    ensure!(zip.starts_with(b"PK\x03\x04"), "the download is not a zip");
    browser.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_center_an_unverified_request_expires_and_a_form_without_its_csrf_token_is_refused()
-> Result<()> {
    let deployment = deployment(&[Daemon::Api], false, "2s").await?;
    let api = deployment.api()?;
    let client = ConsoleClient::new(&api)?;

    // Without its token, a form is refused.
    let (status, _, _) = client
        .post_form(
            "/privacy/e2e",
            &[("kind", "access"), ("email", "nobody@example.net")],
        )
        .await?;
    ensure!(
        status == 403,
        "a form without its CSRF token answered {status}"
    );
    let (status, _, _) = client
        .post_form("/console/login", &[("key", &deployment.key)])
        .await?;
    ensure!(
        status == 403,
        "a login without its CSRF token answered {status}"
    );

    // With it, a request waits for verification, then expires and is purged.
    let (_, headers, page) = client.get("/privacy/e2e").await?;
    ensure!(
        headers.get("x-frame-options").is_some_and(|v| v == "DENY"),
        "headers"
    );
    let token = csrf_token(&page).context("the form has no token")?;
    let (status, headers, _) = client
        .post_form(
            "/privacy/e2e",
            &[
                ("csrf", &token),
                ("kind", "erasure"),
                ("email", "expires@example.net"),
            ],
        )
        .await?;
    ensure!(status == 303, "the form answered {status}");
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ensure!(!location.contains('@'), "{location}");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy_verification")
        .fetch_one(&deployment.ledger)
        .await?;
    ensure!(waiting == 1, "{waiting} verifications wait");
    // The operator sees it as `verifying` in the requests list, without the address.
    let admin = ConsoleClient::login(&api, &deployment.key).await?;
    let (status, _, list) = admin.get("/console/requests").await?;
    ensure!(status == 200, "the requests list answered {status}");
    let verifying = list
        .split("id=\"verifying\"")
        .nth(1)
        .context("no verifying table in the requests list")?;
    ensure!(
        verifying.contains("erasure") && verifying.contains("status verifying"),
        "the verifying request is not listed"
    );
    ensure!(
        !list.contains("expires@example.net"),
        "the console shows the address"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy_verification")
            .fetch_one(&deployment.ledger)
            .await?;
        if left == 0 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the unverified request was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let filed: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(&deployment.ledger)
        .await?;
    ensure!(filed == 0, "an unverified request was filed");
    Ok(())
}
