//! Browser tests' support: Debian's Chromium, headless, driven through its WebDriver
//! (`chromedriver`, started per test on a free port) with fantoccini; the local mail catcher's
//! HTTP API (maildev); and a cookie-keeping HTTP client that logs in to the console the way a
//! browser does (for header, CSRF and status checks, and for the benchmark).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Chromium's flags: headless in a fresh profile, and nothing that reaches for the network
/// (the machines have none, and a test must not depend on it).
const CHROMIUM_ARGS: [&str; 12] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1280,900",
    "--hide-scrollbars",
];

/// A headless Chromium session. Dropping it kills chromedriver (and with it the browser).
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts chromedriver and a browser session in a fresh profile.
    pub async fn start() -> Result<Self> {
        let driver_bin =
            std::env::var("LETHE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let port = free_port()?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {driver_bin} (install chromium-driver: scripts/stack services)"
                )
            })?;
        let profile = tempfile::Builder::new()
            .prefix("lethe-chromium-")
            .tempdir()?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let binary =
            std::env::var("LETHE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "args": args, "binary": binary }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(error = %error, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => bail!("cannot open a Chromium session through chromedriver: {error}"),
            }
        };
        Ok(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("while opening {url}"))
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css} on the page"))?;
        Ok(element.text().await?)
    }

    /// Types `text` into the field matching `css`.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css} on the page"))?;
        element.send_keys(text).await?;
        Ok(())
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no {css} on the page"))?;
        element.click().await?;
        Ok(())
    }

    /// Waits until the text of `css` satisfies `ok` (without navigating), or fails after `timeout`.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if ok(&text) {
                return Ok(text);
            }
            ensure!(
                Instant::now() < deadline,
                "{css} is still {text:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The current address.
    pub async fn url(&self) -> Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.client.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Logs in to the console at `api` with `key`.
    pub async fn login(&self, api: &str, key: &str) -> Result<()> {
        self.goto(&format!("{api}/console/login")).await?;
        self.fill("#key", key).await?;
        self.click("#login").await?;
        self.wait_text("h1", Duration::from_secs(10), |t| t == "Dashboard")
            .await?;
        Ok(())
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// The local mail catcher's HTTP API (`LETHE_TEST_MAIL_API`, maildev's `GET /email`).
pub struct MailCatcher {
    api: String,
    http: reqwest::Client,
    // Mails that were there before: another test's or an earlier run's.
    seen: std::collections::HashSet<String>,
}

impl MailCatcher {
    /// From the environment, with the local stack's default; ignores the mails already there.
    pub async fn from_env() -> Result<Self> {
        let mut catcher = Self {
            api: std::env::var("LETHE_TEST_MAIL_API")
                .unwrap_or_else(|_| "http://127.0.0.1:1080".to_owned()),
            http: reqwest::Client::new(),
            seen: Default::default(),
        };
        catcher.seen = catcher
            .mails()
            .await?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        Ok(catcher)
    }

    async fn mails(&self) -> Result<Vec<Value>> {
        Ok(self
            .http
            .get(format!("{}/email", self.api))
            .send()
            .await
            .context("the mail catcher does not answer (scripts/stack services starts it)")?
            .json()
            .await?)
    }

    /// The SMTP address the api should send to (`LETHE_TEST_SMTP`, host:port).
    pub fn smtp() -> (String, u16) {
        let value =
            std::env::var("LETHE_TEST_SMTP").unwrap_or_else(|_| "127.0.0.1:1025".to_owned());
        let (host, port) = value.rsplit_once(':').unwrap_or(("127.0.0.1", "1025"));
        (host.to_owned(), port.parse().unwrap_or(1025))
    }

    /// Waits for a mail to `to` whose subject is `subject` and whose text contains `marker`;
    /// returns its text.
    pub async fn wait_for(
        &self,
        to: &str,
        subject: &str,
        marker: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails().await?;
            let found = mails.iter().rev().find(|m| {
                !m["id"].as_str().is_some_and(|id| self.seen.contains(id))
                    && m["subject"] == subject
                    && m["to"].as_array().is_some_and(|to_list| {
                        to_list.iter().any(|t| {
                            t["address"]
                                .as_str()
                                .is_some_and(|a| a.eq_ignore_ascii_case(to))
                        })
                    })
                    && m["text"].as_str().is_some_and(|t| t.contains(marker))
            });
            if let Some(mail) = found {
                return Ok(mail["text"].as_str().unwrap_or_default().to_owned());
            }
            ensure!(
                Instant::now() < deadline,
                "no {subject:?} mail with {marker:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The first link in `text` whose path contains `part`, as a path (the test reaches the api at
/// its own address, whatever `public_url` says).
pub fn link_path(text: &str, part: &str) -> Option<String> {
    text.split_whitespace()
        .filter(|w| w.starts_with("http"))
        .filter_map(|w| url::Url::parse(w).ok())
        .find(|u| u.path().contains(part))
        .map(|u| u.path().to_owned())
}

/// A console session over plain HTTP: what a browser sends, without the browser.
pub struct ConsoleClient {
    /// The api's address.
    pub api: String,
    /// A client that does not follow redirects.
    pub http: reqwest::Client,
    cookies: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// The CSRF token in a page's form.
pub fn csrf_token(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().map(str::to_owned)
}

impl ConsoleClient {
    /// A client without a session.
    pub fn new(api: &str) -> Result<Self> {
        Ok(Self {
            api: api.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            cookies: Default::default(),
        })
    }

    /// Logs in with `key`.
    pub async fn login(api: &str, key: &str) -> Result<Self> {
        let client = Self::new(api)?;
        let (_, _, page) = client.get("/console/login").await?;
        let token = csrf_token(&page).context("the login page has no CSRF token")?;
        let (status, _, _) = client
            .post_form("/console/login", &[("csrf", token.as_str()), ("key", key)])
            .await?;
        ensure!(status == 303, "login answered {status}");
        Ok(client)
    }

    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().map(|c| c.clone()).unwrap_or_default();
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&self, headers: &reqwest::header::HeaderMap) {
        for value in headers.get_all(reqwest::header::SET_COOKIE) {
            let Some((pair, _)) = value
                .to_str()
                .ok()
                .map(|v| v.split_once(';').unwrap_or((v, "")))
            else {
                continue;
            };
            if let (Some((name, value)), Ok(mut cookies)) =
                (pair.split_once('='), self.cookies.lock())
            {
                cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    /// `GET <api><path>`: status, headers and body.
    pub async fn get(&self, path: &str) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.keep(&headers);
        Ok((status, headers, response.text().await?))
    }

    /// `POST <api><path>` of a form: status, headers and body.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!("{}{path}", self.api))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.keep(&headers);
        Ok((status, headers, response.text().await?))
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
