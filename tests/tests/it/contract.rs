//! The NATS contract and the ledger schema: provisioned as designed, and idempotently.

use async_nats::jetstream::stream::RetentionPolicy;
use lethe_common::ids::StoreName;
use lethe_common::ledger::MIGRATOR;
use lethe_common::nats::{self, ConsumerSpec, Durable, Names};
use lethe_tests::{Namespace, Services};

use crate::support;

fn durables() -> Vec<Durable> {
    let accounts = StoreName::parse("accounts").unwrap();
    vec![
        Durable::Eraser(accounts.clone()),
        Durable::Exporter(accounts),
        Durable::Assembler,
        Durable::Backup,
        Durable::Retention,
        Durable::Coordinator,
    ]
}

#[tokio::test]
async fn provisioning_creates_the_designed_streams_and_consumers_and_twice_is_a_no_op() {
    let services = Services::from_env();
    let ns = Namespace::create(&services).await.unwrap();
    let settings = support::settings(&support::settings_toml(&services, &ns, None, None, None));
    let names = Names::new(&settings.nats.prefix).unwrap();
    let client = nats::connect(&settings.nats, "test").await.unwrap();
    let jetstream = async_nats::jetstream::new(client);

    for _ in 0..2 {
        nats::provision_streams(&jetstream, &names, &settings.nats)
            .await
            .unwrap();
        for durable in durables() {
            nats::provision_consumer(
                &jetstream,
                &names,
                &settings.nats,
                &ConsumerSpec { durable },
            )
            .await
            .unwrap();
        }
    }

    let mut tasks = jetstream.get_stream(names.tasks_stream()).await.unwrap();
    let info = tasks.info().await.unwrap().clone();
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.config.subjects, names.task_subjects());
    assert!(
        info.config.max_age > std::time::Duration::ZERO,
        "tasks carry identifiers: bounded age"
    );
    let first_created = info.created;
    let mut results = jetstream.get_stream(names.results_stream()).await.unwrap();
    assert_eq!(
        results.info().await.unwrap().config.retention,
        RetentionPolicy::WorkQueue
    );
    let mut events = jetstream.get_stream(names.events_stream()).await.unwrap();
    assert_eq!(
        events.info().await.unwrap().config.retention,
        RetentionPolicy::Limits
    );

    for durable in durables() {
        let stream = jetstream
            .get_stream(names.durable_stream(&durable))
            .await
            .unwrap();
        let name = names.durable_name(&durable);
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(&name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = consumer.info().await.unwrap();
        assert_eq!(
            info.config.filter_subjects,
            names.durable_subjects(&durable),
            "{name}"
        );
        assert_eq!(info.config.max_deliver, settings.nats.max_deliver, "{name}");
    }

    // A third run changes nothing: the stream is the same stream, not a recreated one.
    nats::provision_streams(&jetstream, &names, &settings.nats)
        .await
        .unwrap();
    let mut tasks = jetstream.get_stream(names.tasks_stream()).await.unwrap();
    assert_eq!(tasks.info().await.unwrap().created, first_created);

    nats::deprovision(&jetstream, &names).await.unwrap();
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn names_of_two_prefixes_never_overlap_on_one_server() {
    let services = Services::from_env();
    let (a, b) = (
        Namespace::create(&services).await.unwrap(),
        Namespace::create(&services).await.unwrap(),
    );
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    for ns in [&a, &b] {
        let settings = support::settings(&support::settings_toml(&services, ns, None, None, None));
        let names = Names::new(&settings.nats.prefix).unwrap();
        nats::provision_streams(&jetstream, &names, &settings.nats)
            .await
            .unwrap();
    }
    let names_a = Names::new(&a.nats_prefix()).unwrap();
    let names_b = Names::new(&b.nats_prefix()).unwrap();
    let stream = jetstream
        .stream_by_subject(names_a.task_subject(
            lethe_common::messages::TaskKind::Erase,
            Some(&StoreName::parse("chat").unwrap()),
        ))
        .await
        .unwrap();
    assert_eq!(stream, names_a.tasks_stream());
    assert_ne!(stream, names_b.tasks_stream());
    for names in [&names_a, &names_b] {
        nats::deprovision(&jetstream, names).await.unwrap();
    }
    a.cleanup().await.unwrap();
    b.cleanup().await.unwrap();
}

#[tokio::test]
async fn ledger_migrations_apply_cleanly_to_a_fresh_database_and_again_as_a_no_op() {
    let services = Services::from_env();
    let ns = Namespace::create(&services).await.unwrap();
    let url = ns.pg_database("ledger").await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();

    MIGRATOR.run(&pool).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in [
        "api_key",
        "audit_event",
        "backup",
        "erasure_log",
        "export",
        "outbox",
        "request",
        "task",
        "tenant",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "missing table {table}: {tables:?}"
        );
    }
    pool.close().await;
    ns.cleanup().await.unwrap();
}
