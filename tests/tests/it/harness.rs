//! The harness itself: namespaces leave nothing behind, private NATS servers restart.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use lethe_common::datamap::DataMap;
use lethe_tests::{
    Namespace, NatsServer, SAMPLE_DATAMAP, Services, sample_datamap, sample_options,
};
use redis::AsyncCommands as _;
use sqlx::Connection as _;

async fn pg_database_exists(services: &Services, name: &str) -> Result<bool> {
    let mut conn = sqlx::PgConnection::connect(&services.pg_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    Ok(exists)
}

async fn mysql_database_exists(services: &Services, name: &str) -> Result<bool> {
    let mut conn = sqlx::MySqlConnection::connect(&services.mysql_url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await?;
    Ok(n > 0)
}

async fn bucket_exists(services: &Services, bucket: &str) -> bool {
    services
        .s3_client()
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn namespace_cleanup_leaves_nothing_behind() -> Result<()> {
    // Arrange: one of everything, with data in it.
    let services = Services::from_env();
    let ns = Namespace::create(&services).await?;
    let name = ns.name().to_string();
    let pg_url = ns.pg_database("ledger").await?;
    let mysql_url = ns.mysql_database("chat").await?;
    let bucket = ns.bucket("files").await?;
    let prefix = ns.redis_prefix();
    sqlx::raw_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .execute(&mut sqlx::PgConnection::connect(&pg_url).await?)
        .await?;
    // An open connection must not keep the database alive.
    let _open = sqlx::MySqlConnection::connect(&mysql_url).await?;
    let mut redis = services.redis().await?;
    let () = redis.set(format!("{prefix}a"), "1").await?;
    let () = redis.set(format!("{prefix}b:c"), "2").await?;
    services
        .s3_client()
        .put_object()
        .bucket(&bucket)
        .key("x/y.txt")
        .body(b"hello".to_vec().into())
        .send()
        .await?;
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = hook_ran.clone();
    ns.on_cleanup(move |_services| async move {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    });

    // Act
    ns.cleanup().await?;

    // Assert
    assert!(!pg_database_exists(&services, &format!("{name}_ledger")).await?);
    assert!(!mysql_database_exists(&services, &format!("{name}_chat")).await?);
    let left: Vec<String> = lethe_sample::scan(&mut redis, &format!("{name}:*")).await?;
    assert!(left.is_empty(), "{left:?}");
    assert!(!bucket_exists(&services, &bucket).await);
    assert!(hook_ran.load(Ordering::SeqCst));
    Ok(())
}

#[tokio::test]
async fn a_namespace_dropped_without_cleanup_is_cleaned_up_anyway() -> Result<()> {
    // Arrange
    let services = Services::from_env();
    let ns = Namespace::create(&services).await?;
    let name = ns.name().to_string();
    ns.pg_database("accounts").await?;
    let bucket = ns.bucket("files").await?;

    // Act: what a panicking test does.
    drop(ns);

    // Assert
    assert!(!pg_database_exists(&services, &format!("{name}_accounts")).await?);
    assert!(!bucket_exists(&services, &bucket).await);
    Ok(())
}

#[tokio::test]
async fn a_test_that_panics_leaves_nothing_behind() -> Result<()> {
    // Arrange
    let services = Services::from_env();
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();

    // Act: a task that creates resources, then panics before cleaning up.
    let task_services = services.clone();
    let outcome = tokio::spawn(async move {
        let ns = Namespace::create(&task_services).await?;
        let _ = name_tx.send(ns.name().to_string());
        ns.mysql_database("chat").await?;
        ns.redis_prefix();
        panic!("simulated test failure");
        #[allow(unreachable_code)]
        Ok::<_, anyhow::Error>(ns)
    })
    .await;

    // Assert
    assert!(outcome.is_err_and(|e| e.is_panic()));
    let name = name_rx.await?;
    assert!(!mysql_database_exists(&services, &format!("{name}_chat")).await?);
    Ok(())
}

#[tokio::test]
async fn the_sample_data_map_points_at_the_namespace() -> Result<()> {
    // Arrange
    let ns = Namespace::create(&Services::from_env()).await?;
    let options = sample_options(&ns).await?;

    // Act
    let text = sample_datamap(&options)?;
    let map: toml::Table = toml::from_str(&text)?;

    // Assert: still a valid data map, pointed at the namespace.
    DataMap::parse(&text)?;
    let stores = &map["stores"];
    assert_eq!(
        stores["sessions"]["key_prefix"].as_str(),
        Some(format!("{}:", ns.name()).as_str())
    );
    assert_eq!(
        stores["files"]["bucket"].as_str(),
        Some(options.files_bucket.as_str())
    );
    assert_eq!(
        stores["accounts"]["url_env"].as_str(),
        Some("ACCOUNTS_DATABASE_URL")
    );
    ns.cleanup().await
}

#[test]
fn the_shipped_sample_data_map_is_valid() -> Result<()> {
    let map = DataMap::parse(SAMPLE_DATAMAP)?;
    let stores: Vec<String> = map.stores.keys().map(|s| s.to_string()).collect();
    assert_eq!(
        stores,
        ["accounts", "chat", "files", "payments", "sessions"]
    );
    Ok(())
}

fn greets_with_jetstream(url: &str) -> bool {
    let addr = url.trim_start_matches("nats://");
    let Ok(stream) = TcpStream::connect(addr) else {
        return false;
    };
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.contains("\"jetstream\":true")
}

#[tokio::test]
async fn a_private_nats_server_restarts_on_the_same_port_with_its_store() -> Result<()> {
    // Arrange
    let mut server = NatsServer::start().await?;
    let url = server.url();
    let dir = server.store_dir();
    assert!(greets_with_jetstream(&url));

    // Act / Assert: down after stop, back on the same URL after restart.
    server.stop()?;
    assert!(!server.is_running());
    assert!(!greets_with_jetstream(&url));
    server.restart().await?;
    assert_eq!(server.url(), url);
    assert!(greets_with_jetstream(&url));
    assert!(dir.join("jetstream").exists(), "{}", dir.display());

    // Dropping it stops it and removes its files.
    drop(server);
    assert!(!greets_with_jetstream(&url));
    assert!(!dir.exists());
    Ok(())
}
