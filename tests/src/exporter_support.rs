//! A test bed for the exporter: the eraser's bed (the sample stores in a namespace, the sample
//! data map pointed at them, NATS streams, a results consumer) plus Lethe's own bucket, where
//! the exporter stages fragments and writes archives; and an inspection of an archive by
//! `unzip -t` and Python's `zipfile`, `csv` and `json`, which know nothing of Lethe.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use lethe_common::Settings;
use lethe_common::ids::RequestId;
use lethe_common::messages::{Identities, TaskKind, TaskMessage};
use lethe_common::worker::RunMode;
use lethe_exporter::App;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Services;
use crate::eraser_support::{EraserBed, SAMPLE_STORES, task};

/// How long a run of the exporter may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The sample stores, NATS streams, and Lethe's bucket.
pub struct ExporterBed {
    /// The eraser's bed: stores, data map, tasks and results.
    pub bed: EraserBed,
    /// Lethe's bucket (`<ns>-lethe`).
    pub bucket: String,
}

impl ExporterBed {
    /// Creates the bed (empty stores; seed them with `bed.seed`).
    pub async fn create(services: &Services) -> Result<Self> {
        let bed = EraserBed::create(services).await?;
        let bucket = bed.ns().bucket("lethe").await?;
        Ok(Self { bed, bucket })
    }

    /// The exporter's settings: the eraser's (data map, NATS, hash key), Lethe's bucket, an
    /// ephemeral operations port.
    pub fn settings(&self) -> Result<Settings> {
        let mut settings = self.bed.settings(4)?;
        settings
            .set("exporter.listen", "127.0.0.1:0")
            .set("exporter.concurrency", 4);
        let Some(s3) = settings.s3.as_mut() else {
            bail!("the bed's settings have no [s3] section");
        };
        s3.bucket = self.bucket.clone();
        Ok(settings)
    }

    /// The configuration file text of these settings, for the exporter binary (give it the
    /// stores' credentials with [`crate::EraserBed::credential_env`]).
    pub fn settings_toml(&self, services: &Services) -> Result<String> {
        let settings = self.settings()?;
        let Some(map) = settings.data_map.as_ref() else {
            bail!("the bed's settings name no data map");
        };
        Ok(format!(
            "data_map = {map:?}\n\
             [privacy]\nhash_key = {key:?}\n\
             [nats]\nurl = {nats:?}\nprefix = {prefix:?}\nack_wait = \"2s\"\n\
             [s3]\nendpoint = {endpoint:?}\nregion = {region:?}\nbucket = {bucket:?}\n\
             access_key_id = {access:?}\nsecret_access_key = {secret:?}\n\
             [exporter]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"\n",
            map = map.display().to_string(),
            key = crate::eraser_support::HASH_KEY,
            nats = services.nats_url,
            prefix = self.bed.ns().nats_prefix(),
            endpoint = services.s3.endpoint,
            region = services.s3.region,
            bucket = self.bucket,
            access = services.s3.access_key_id,
            secret = services.s3.secret_access_key,
        ))
    }

    /// Builds the exporter and runs it until no task is pending or in flight.
    pub async fn run_until_idle(&self) -> Result<()> {
        self.run_with(&self.settings()?).await
    }

    /// Builds an exporter with `settings` and runs it until idle.
    pub async fn run_with(&self, settings: &Settings) -> Result<()> {
        let app = App::build(settings, RunMode::UntilIdle).await?;
        tokio::time::timeout(RUN_TIMEOUT, app.run(CancellationToken::new()))
            .await
            .context("the exporter did not become idle in time")?
    }

    /// The collect tasks of `request`, one per sample store, as the coordinator issues them.
    pub fn collect_tasks(
        &self,
        request: RequestId,
        identities: &Identities,
    ) -> Result<Vec<TaskMessage>> {
        SAMPLE_STORES
            .iter()
            .map(|store| {
                let mut t = task(TaskKind::Collect, store, identities.clone())?;
                t.request_id = request;
                Ok(t)
            })
            .collect()
    }

    /// The assemble task of `request`.
    pub fn assemble_task(&self, request: RequestId, identities: &Identities) -> TaskMessage {
        TaskMessage {
            request_id: request,
            task: TaskKind::Assemble,
            store: None,
            identities: identities.clone(),
            tenant: None,
            params: Value::Null,
            generation: 0,
            issued_at: chrono::Utc::now(),
        }
    }

    /// A client of Lethe's bucket.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.bed.ns().services().s3_client()
    }

    /// The archive of `request`, if it exists.
    pub async fn archive(&self, request: RequestId) -> Result<Option<Vec<u8>>> {
        let key = lethe_exporter::staging::archive_key(request);
        match self
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(object) => Ok(Some(object.body.collect().await?.into_bytes().to_vec())),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context("while reading the archive")),
        }
    }

    /// Every key left under the staging prefix of `request`.
    pub async fn staging_keys(&self, request: RequestId) -> Result<Vec<String>> {
        Ok(lethe_common::s3::list_keys_under(
            &self.client(),
            &self.bucket,
            &lethe_exporter::staging::request_prefix(request),
        )
        .await?)
    }
}

/// What `unzip -t` and Python made of an archive.
#[derive(Debug, Clone)]
pub struct ArchiveReport {
    /// Every entry name, in archive order.
    pub names: Vec<String>,
    /// `manifest.json`.
    pub manifest: Value,
    /// Problems found: entries missing from the manifest or with a wrong size or SHA-256,
    /// a failed CRC check.
    pub problems: Vec<String>,
    /// Every `<store>/<collection>.json`, parsed, by `<store>/<collection>`.
    pub json: BTreeMap<String, Vec<Value>>,
    /// Every `<store>/<collection>.csv`, parsed (header row first), by `<store>/<collection>`.
    pub csv: BTreeMap<String, Vec<Vec<String>>>,
    /// The SHA-256 of every entry under a store's `files/`, by entry name.
    pub files: BTreeMap<String, String>,
}

const INSPECT: &str = r#"
import csv, hashlib, io, json, sys, zipfile
out = {"names": [], "manifest": None, "problems": [], "json": {}, "csv": {}, "files": {}}
with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
    if bad is not None:
        out["problems"].append("bad CRC: " + bad)
    names = z.namelist()
    out["names"] = names
    manifest = json.loads(z.read("manifest.json"))
    out["manifest"] = manifest
    listed = {f["path"]: f for f in manifest["files"]}
    for name in names:
        if name == "manifest.json":
            continue
        data = z.read(name)
        entry = listed.get(name)
        if entry is None:
            out["problems"].append("not in the manifest: " + name)
        else:
            if entry["size"] != len(data):
                out["problems"].append("wrong size in the manifest: " + name)
            if entry["sha256"] != hashlib.sha256(data).hexdigest():
                out["problems"].append("wrong SHA-256 in the manifest: " + name)
        parts = name.split("/")
        if len(parts) == 2 and name.endswith(".json"):
            out["json"][name[:-5]] = json.loads(data.decode("utf-8"))
        elif len(parts) == 2 and name.endswith(".csv"):
            out["csv"][name[:-4]] = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        elif len(parts) > 2 and parts[1] == "files":
            out["files"][name] = hashlib.sha256(data).hexdigest()
    for path in listed:
        if path not in names:
            out["problems"].append("in the manifest but not in the archive: " + path)
print(json.dumps(out))
"#;

/// Checks `archive` with `unzip -t` and reads it with Python's `zipfile`, `csv` and `json`.
pub fn inspect_archive(archive: &[u8]) -> Result<ArchiveReport> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("export.zip");
    std::fs::write(&path, archive)?;
    unzip_test(&path)?;
    let script = dir.path().join("inspect.py");
    std::fs::write(&script, INSPECT)?;
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .context("cannot run python3")?;
    ensure!(
        output.status.success(),
        "Python cannot read the archive: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).context("Python's report")?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let json = out["json"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_array().cloned().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let csv = out["csv"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let rows = v
                        .as_array()
                        .map(|rows| rows.iter().map(strings).collect())
                        .unwrap_or_default();
                    (k.clone(), rows)
                })
                .collect()
        })
        .unwrap_or_default();
    let files = out["files"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ArchiveReport {
        names: strings(&out["names"]),
        manifest: out["manifest"].clone(),
        problems: strings(&out["problems"]),
        json,
        csv,
        files,
    })
}

/// `unzip -t`: every entry's CRC checked by Info-ZIP.
fn unzip_test(path: &Path) -> Result<()> {
    let output = std::process::Command::new("unzip")
        .arg("-tq")
        .arg(path)
        .output()
        .context("cannot run unzip (apt-get install unzip)")?;
    ensure!(
        output.status.success(),
        "unzip -t refuses the archive: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
