//! The sample payment processor (`lethe-sample-processor`) run as a process beside a
//! [`Deployment`]: its own store seeded with the deployment's subjects, its log in the
//! deployment's directory (so the privacy scan reads it too), its API for checking what it
//! holds, and its fault hooks.

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::SAMPLE_DATAMAP;
use crate::e2e::Deployment;
use crate::process::DaemonProcess;

/// The secret key the processor is started with (the deployment's `PAYMENTS_API_KEY`).
pub const API_KEY: &str = "sk_test_lethe_tests";

/// A running sample processor.
pub struct Processor {
    process: DaemonProcess,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
}

impl Processor {
    /// Starts the processor with its store seeded with `deployment`'s subjects (one customer
    /// each, a charge per invoice); waits for its `/healthz`.
    pub async fn start(deployment: &Deployment) -> Result<Self> {
        let data = deployment.dir().join("processor.json");
        let subjects = deployment.subjects().len().to_string();
        let seed = deployment.seed().to_string();
        let env = [
            ("LETHE_PROCESSOR_DATA", data.display().to_string()),
            ("LETHE_PROCESSOR_SUBJECTS", subjects),
            ("LETHE_PROCESSOR_SEED", seed),
            ("LETHE_PROCESSOR_API_KEY", API_KEY.to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let process = DaemonProcess::start(
            "lethe-sample-processor",
            deployment.config_path(),
            "LETHE_PROCESSOR_LISTEN",
            &env,
            deployment.dir(),
        )
        .await?;
        Ok(Self {
            url: format!("http://{}", process.address),
            process,
            http: reqwest::Client::new(),
        })
    }

    /// Adds the sample data map's `payments` store to `deployment`'s data map, reaching the
    /// processor at `url` (its own, or a proxy's in front of it), for daemons started
    /// afterwards.
    pub fn join(&self, deployment: &mut Deployment, url: &str) -> Result<()> {
        let shipped: toml::Table = toml::from_str(SAMPLE_DATAMAP)?;
        let payments = shipped["stores"]
            .get("payments")
            .context("config/datamap.toml has no payments store")?
            .clone();
        let path = deployment.dir().join("datamap.toml");
        let mut map: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
        map.get_mut("stores")
            .and_then(|s| s.as_table_mut())
            .context("the deployment's data map has no stores")?
            .insert("payments".to_owned(), payments);
        std::fs::write(&path, toml::to_string(&map)?)?;
        deployment.set_env("PAYMENTS_API_URL", url);
        deployment.set_env("PAYMENTS_API_KEY", API_KEY);
        Ok(())
    }

    /// Makes the next `count` API calls (of `method`, when given) answer `status`, with
    /// `Retry-After: retry_after` when given.
    pub async fn fail_next(
        &self,
        status: u16,
        count: u32,
        retry_after: Option<u32>,
        method: Option<&str>,
    ) -> Result<()> {
        let mut plan = json!({ "status": status, "count": count });
        if let Some(seconds) = retry_after {
            plan["retry_after"] = json!(seconds);
        }
        if let Some(method) = method {
            plan["method"] = json!(method);
        }
        let response = self
            .http
            .post(format!("{}/admin/faults", self.url))
            .json(&plan)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "POST /admin/faults: {}",
            response.status()
        );
        Ok(())
    }

    /// `{"calls", "faulted", "plan"}`.
    pub async fn stats(&self) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/admin/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The customers the processor lists under `email`, through its own API.
    pub async fn customers(&self, email: &str) -> Result<Vec<Value>> {
        let answer: Value = self
            .http
            .get(format!("{}/v1/customers", self.url))
            .query(&[("email", email), ("limit", "100")])
            .bearer_auth(API_KEY)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer["data"].as_array().cloned().unwrap_or_default())
    }

    /// Stops the processor (SIGTERM); fails unless it exits cleanly.
    pub fn stop(self) -> Result<()> {
        ensure!(
            self.process.stop()?,
            "lethe-sample-processor did not exit cleanly"
        );
        Ok(())
    }
}
