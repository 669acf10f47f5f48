//! The sample data: deterministic, counted right, refusing to seed over data.

use anyhow::Result;
use futures::future::try_join3;
use lethe_sample::{
    COLLECTIONS, Error, SeedOptions, count_in_stores, expected_counts, seed, subject,
};
use lethe_tests::digest::sample_digest;
use lethe_tests::{Namespace, Services, sample_stores};
use redis::AsyncCommands as _;
use sqlx::Row as _;

#[tokio::test]
async fn seeding_is_deterministic_for_a_seed() -> Result<()> {
    // Arrange: three namespaces.
    let services = Services::from_env();
    let first = Namespace::create(&services).await?;
    let second = Namespace::create(&services).await?;
    let other = Namespace::create(&services).await?;
    let (first_stores, second_stores, other_stores) = try_join3(
        sample_stores(&first),
        sample_stores(&second),
        sample_stores(&other),
    )
    .await?;

    // Act: the same seed twice, another seed once.
    try_join3(
        seed(&first_stores, &SeedOptions::new(50, 7)),
        seed(&second_stores, &SeedOptions::new(50, 7)),
        seed(&other_stores, &SeedOptions::new(50, 8)),
    )
    .await?;
    let (first_digest, second_digest, other_digest) = try_join3(
        sample_digest(&first_stores),
        sample_digest(&second_stores),
        sample_digest(&other_stores),
    )
    .await?;

    // Assert: every collection is digested, identical for the same seed, different otherwise.
    let collections: Vec<String> = COLLECTIONS
        .iter()
        .flat_map(|(store, cs)| cs.iter().map(move |c| format!("{store}.{c}")))
        .collect();
    let mut digested: Vec<String> = first_digest.keys().cloned().collect();
    let mut wanted = collections.clone();
    digested.sort();
    wanted.sort();
    assert_eq!(digested, wanted);
    assert_eq!(first_digest, second_digest);
    for collection in &collections {
        assert_ne!(
            first_digest[collection], other_digest[collection],
            "{collection} is the same under another seed"
        );
    }

    for ns in [first, second, other] {
        ns.cleanup().await?;
    }
    Ok(())
}

#[tokio::test]
async fn seeded_counts_match_the_stores() -> Result<()> {
    // Arrange
    let ns = Namespace::create(&Services::from_env()).await?;
    let stores = sample_stores(&ns).await?;
    let (subjects, seed_value) = (50, 3);

    // Act
    let report = seed(&stores, &SeedOptions::new(subjects, seed_value)).await?;
    let in_stores = count_in_stores(&stores).await?;

    // Assert: reported == stored == expected, in total and for one subject.
    let expected = expected_counts(subjects, seed_value);
    assert_eq!(report.counts, expected);
    assert_eq!(in_stores, expected);
    assert!(expected.iter().all(|(_, _, n)| n > 0), "{expected}");
    assert_eq!(report.subjects, subjects);

    let one = subject(seed_value, 7);
    let rows = |table: &'static str| {
        let accounts = stores.accounts.clone();
        async move {
            let sql = format!("SELECT count(*) FROM {table} WHERE user_id = $1");
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(7_i64)
                .fetch_one(&accounts)
                .await
        }
    };
    assert_eq!(rows("invoices").await? as usize, one.invoices.len());
    assert_eq!(rows("access_log").await? as usize, one.access_log.len());
    let own_messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE author_id = ?")
        .bind(7_i64)
        .fetch_one(&stores.chat)
        .await?;
    assert_eq!(own_messages as usize, one.own_messages().count());
    let all_messages: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id \
         WHERE c.user_id = ?",
    )
    .bind(7_i64)
    .fetch_one(&stores.chat)
    .await?;
    assert_eq!(all_messages as usize, one.messages.len());

    ns.cleanup().await
}

#[tokio::test]
async fn seeding_thousands_of_subjects_spans_many_statements_and_chunks() -> Result<()> {
    // Arrange: enough subjects for several generator chunks and full multi-row INSERTs,
    // where parents and children reach their statement size at different times.
    let ns = Namespace::create(&Services::from_env()).await?;
    let stores = sample_stores(&ns).await?;
    let subjects = 2_500;

    // Act
    let report = seed(&stores, &SeedOptions::new(subjects, 11)).await?;

    // Assert
    let expected = expected_counts(subjects, 11);
    assert!(expected.get("chat", "messages") > 2 * 5_000, "{expected}");
    assert_eq!(report.counts, expected);
    assert_eq!(count_in_stores(&stores).await?, expected);

    ns.cleanup().await
}

#[tokio::test]
async fn seeding_refuses_stores_that_hold_data_unless_asked_to_reset() -> Result<()> {
    // Arrange: stores already seeded.
    let ns = Namespace::create(&Services::from_env()).await?;
    let stores = sample_stores(&ns).await?;
    seed(&stores, &SeedOptions::new(20, 1)).await?;

    // Act
    let refused = seed(&stores, &SeedOptions::new(30, 2)).await;
    let reset = seed(
        &stores,
        &SeedOptions {
            reset: true,
            ..SeedOptions::new(30, 2)
        },
    )
    .await?;

    // Assert: refused without touching the data; with reset, exactly the new data set.
    assert!(
        matches!(refused, Err(Error::NotEmpty { .. })),
        "{refused:?}"
    );
    assert_eq!(reset.counts, expected_counts(30, 2));
    assert_eq!(count_in_stores(&stores).await?, expected_counts(30, 2));

    ns.cleanup().await
}

#[tokio::test]
async fn the_stores_hold_exactly_what_the_generator_describes() -> Result<()> {
    // Arrange
    let ns = Namespace::create(&Services::from_env()).await?;
    let stores = sample_stores(&ns).await?;
    let expected = subject(5, 9);

    // Act
    seed(&stores, &SeedOptions::new(10, 5)).await?;

    // Assert: a user row, a message, the session hash, the objects.
    let user = sqlx::query(
        "SELECT email, phone, first_name, last_name, company, avatar_key, country, created_at \
         FROM users WHERE id = $1",
    )
    .bind(9_i64)
    .fetch_one(&stores.accounts)
    .await?;
    assert_eq!(user.get::<String, _>("email"), expected.identities.email);
    assert_eq!(user.get::<String, _>("phone"), expected.identities.phone);
    assert_eq!(
        user.get::<String, _>("first_name"),
        expected.user.first_name
    );
    assert_eq!(user.get::<String, _>("last_name"), expected.user.last_name);
    assert_eq!(
        user.get::<Option<String>, _>("company"),
        expected.user.company
    );
    assert_eq!(
        user.get::<Option<String>, _>("avatar_key"),
        expected.user.avatar_key
    );
    assert_eq!(
        user.get::<chrono::DateTime<chrono::Utc>, _>("created_at"),
        expected.user.created_at
    );

    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM messages WHERE author_id = ? ORDER BY id")
            .bind(9_i64)
            .fetch_all(&stores.chat)
            .await?;
    let generated: Vec<String> = expected.own_messages().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, generated);

    let mut redis = stores.sessions.connection.clone();
    let prefix = &stores.sessions.prefix;
    let token: Option<String> = redis.hget(format!("{prefix}session:9"), "token").await?;
    assert_eq!(token, expected.session.as_ref().map(|s| s.token.clone()));
    let pages: Vec<String> = redis.lrange(format!("{prefix}visits:9"), 0, -1).await?;
    assert_eq!(pages, expected.page_visits);
    let last_seen: Option<String> = redis
        .get(format!("{prefix}last_seen:{}", expected.identities.email))
        .await?;
    assert!(last_seen.is_some());

    for file in &expected.files {
        let object = stores
            .files
            .client
            .get_object()
            .bucket(&stores.files.bucket)
            .key(format!("{}{}", stores.files.prefix, file.key))
            .send()
            .await?;
        let body = object.body.collect().await?.into_bytes();
        assert_eq!(body.as_ref(), file.content().as_slice(), "{}", file.key);
    }

    ns.cleanup().await
}
