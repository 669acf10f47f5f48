//! `lethe-bench`, interrupted, leaves nothing behind: no daemon, no database, no stream, no
//! bucket.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use lethe_tests::Services;
use lethe_tests::process::binaries_dir;
use sqlx::{Connection as _, MySqlConnection, PgConnection};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// What the benchmark announced on stderr before it was interrupted.
#[derive(Default)]
struct Announced {
    namespaces: Vec<String>,
    files: Option<String>,
}

impl Announced {
    fn read(&mut self, line: &str) {
        if let Some(rest) = line
            .strip_prefix("deployment: namespace ")
            .or_else(|| line.strip_prefix("sample stores: namespace "))
        {
            let (name, files) = rest.split_once(", files in ").unwrap_or((rest, ""));
            self.namespaces.push(name.trim().to_owned());
            if !files.is_empty() {
                self.files = Some(files.trim().to_owned());
            }
        }
    }
}

#[tokio::test]
async fn an_interrupted_benchmark_stops_its_daemons_and_removes_its_namespaces() {
    // Arrange: a small erasure benchmark whose paced run lasts long enough to be interrupted.
    let services = Services::from_env();
    let mut bench = tokio::process::Command::new(binaries_dir().unwrap().join("lethe-bench"))
        .args("erasure --subjects 120 --burst 10 --paced 100 --rate 2".split(' '))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(bench.stderr.take().unwrap()).lines();
    let mut announced = Announced::default();
    let running = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            announced.read(&line);
            if line.starts_with("latency:") {
                return;
            }
        }
        panic!("lethe-bench ended before its paced run");
    });
    running
        .await
        .expect("lethe-bench did not reach its paced run");
    assert_eq!(
        announced.namespaces.len(),
        2,
        "sample stores and deployment"
    );
    let files = announced.files.clone().expect("the deployment's directory");
    assert!(!daemons_of(&files).is_empty(), "the daemons run meanwhile");

    // Act: SIGTERM, as `timeout` sends it.
    let pid = bench.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(300), async {
        // Keep reading stderr so the benchmark never blocks on a full pipe.
        while let Ok(Some(_)) = lines.next_line().await {}
        bench.wait().await.unwrap()
    })
    .await
    .expect("lethe-bench did not exit after SIGTERM");

    // Assert: it says it was interrupted, and nothing of it is left.
    assert_eq!(exit.code(), Some(130));
    assert!(daemons_of(&files).is_empty(), "a daemon still runs");
    for ns in &announced.namespaces {
        assert_eq!(pg_databases(&services, ns).await, Vec::<String>::new());
        assert_eq!(mysql_databases(&services, ns).await, Vec::<String>::new());
        assert_eq!(buckets(&services, ns).await, Vec::<String>::new());
        assert_eq!(streams(&services, ns).await, Vec::<String>::new());
    }
}

/// Processes whose command line names a file in `dir` (the daemons' configuration).
fn daemons_of(dir: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(dir) {
            found.push(pid);
        }
    }
    found
}

async fn pg_databases(services: &Services, ns: &str) -> Vec<String> {
    let mut admin = PgConnection::connect(&services.pg_url).await.unwrap();
    sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
        .bind(ns)
        .fetch_all(&mut admin)
        .await
        .unwrap()
}

async fn mysql_databases(services: &Services, ns: &str) -> Vec<String> {
    let mut admin = MySqlConnection::connect(&services.mysql_url).await.unwrap();
    sqlx::query_scalar(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name LIKE CONCAT(?, '%')",
    )
    .bind(ns)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

async fn buckets(services: &Services, ns: &str) -> Vec<String> {
    let listed = services.s3_client().list_buckets().send().await.unwrap();
    listed
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|name| name.starts_with(ns))
        .map(str::to_owned)
        .collect()
}

async fn streams(services: &Services, ns: &str) -> Vec<String> {
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let prefix = ns.to_uppercase();
    jetstream
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .filter(|name| std::future::ready(name.starts_with(&prefix)))
        .collect()
        .await
}
