//! `lethe-eraser datamap suggest` and `datamap check` on a schema that is not the sample's (a
//! shop in PostgreSQL, a help desk in MariaDB, a Redis cache and a media bucket), and dry runs:
//! the draft is accepted by the check, an erasure with it leaves nothing of the subject, a dry
//! run counts what the erasure then does and changes nothing, and no sampled value appears in
//! the draft or in the tools' output.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_common::datamap::{DataMap, EraseStrategy, Store};
use lethe_tests::Services;
use lethe_tests::digest::{mysql_table_digests, pg_table_digests, redis_digests, s3_digests};
use lethe_tests::e2e::{Daemon, Deployment, Options};
use serde_json::{Value, json};
use sqlx::{MySqlPool, PgPool};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Customers seeded; the subject is customer [`SUBJECT`].
const CUSTOMERS: i64 = 6;
const SUBJECT: i64 = 3;

const SHOP: &str = "
CREATE TABLE customers (id bigserial PRIMARY KEY, email text NOT NULL, phone text,
    full_name text, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX customers_email_idx ON customers (email);
CREATE TABLE addresses (id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id), street text, postcode text, city text);
CREATE INDEX ON addresses (customer_id);
CREATE TABLE products (id bigserial PRIMARY KEY, title text NOT NULL, price_cents int NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id), status text NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz);
CREATE INDEX ON orders (customer_id);
CREATE TABLE order_items (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id),
    product_id bigint NOT NULL REFERENCES products(id), quantity int NOT NULL);
CREATE INDEX ON order_items (order_id);
CREATE TABLE shipments (id bigserial PRIMARY KEY,
    order_item_id bigint NOT NULL REFERENCES order_items(id), carrier text NOT NULL,
    recipient_name text, tracking text);
CREATE INDEX ON shipments (order_item_id);
CREATE TABLE payments (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
    amount_cents int NOT NULL, cardholder_name text, billing_email text,
    paid_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON payments (customer_id);
CREATE TABLE access_log (id bigserial PRIMARY KEY, customer_id bigint, ip text NOT NULL,
    path text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON access_log (at);
";

const SUPPORT: [&str; 5] = [
    "CREATE TABLE tickets (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_email VARCHAR(255) NOT NULL,
        subject VARCHAR(200) NOT NULL, opened_at DATETIME NOT NULL, INDEX (customer_email))",
    "CREATE TABLE ticket_messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, ticket_id BIGINT NOT NULL,
        body TEXT NOT NULL, sent_at DATETIME NOT NULL, FOREIGN KEY (ticket_id) REFERENCES tickets(id))",
    "CREATE TABLE newsletter_subscribers (id BIGINT AUTO_INCREMENT PRIMARY KEY,
        email VARCHAR(255) NOT NULL, first_name VARCHAR(100), subscribed_at DATETIME NOT NULL,
        INDEX (email))",
    "CREATE TABLE loyalty_points (customer_id BIGINT PRIMARY KEY, points INT NOT NULL)",
    "CREATE TABLE faq (id INT PRIMARY KEY, question TEXT NOT NULL, answer TEXT NOT NULL)",
];

/// One seeded customer's values (every one of them personal data).
struct Customer {
    email: String,
    phone: String,
    name: String,
    first_name: String,
    street: String,
    postcode: String,
    ip: String,
}

fn customer(id: i64) -> Customer {
    let first = ["Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances"][(id - 1) as usize % 6];
    Customer {
        email: format!("{}.tester{id}@shop.example", first.to_lowercase()),
        phone: format!("+44 20 7946 00{id:02}"),
        name: format!("{first} Quillfeather{id}"),
        first_name: first.to_owned(),
        street: format!("{id} Larkspur Crescent"),
        postcode: format!("ZX{id} 9QQ"),
        ip: format!("198.51.100.{}", 40 + id),
    }
}

/// The values of a customer the test scans for (numbers stand alone too often to scan for).
fn scanned(c: &Customer) -> Vec<String> {
    vec![
        c.email.clone(),
        c.phone.clone(),
        c.name.clone(),
        c.street.clone(),
        c.postcode.clone(),
        c.ip.clone(),
    ]
}

struct Shop {
    pg: PgPool,
    mysql: MySqlPool,
    redis: redis::aio::ConnectionManager,
    key_prefix: String,
    s3: aws_sdk_s3::Client,
    bucket: String,
    shop_url: String,
    support_url: String,
}

async fn create_shop(deployment: &Deployment) -> Result<Shop> {
    let ns = deployment.ns();
    let shop_url = ns.pg_database("shop").await?;
    let support_url = ns.mysql_database("support").await?;
    let bucket = ns.bucket("media").await?;
    let pg = PgPool::connect(&shop_url).await?;
    let mysql = MySqlPool::connect(&support_url).await?;
    sqlx::raw_sql(SHOP).execute(&pg).await?;
    for statement in SUPPORT {
        sqlx::query(statement).execute(&mysql).await?;
    }
    let services = ns.services();
    let shop = Shop {
        pg,
        mysql,
        redis: services.redis().await?,
        key_prefix: format!("{}shop:", ns.redis_prefix()),
        s3: services.s3_client(),
        bucket,
        shop_url,
        support_url,
    };
    seed(&shop).await?;
    Ok(shop)
}

async fn seed(shop: &Shop) -> Result<()> {
    for title in ["Mug", "Teapot", "Kettle"] {
        sqlx::query("INSERT INTO products (title, price_cents) VALUES ($1, 1200)")
            .bind(title)
            .execute(&shop.pg)
            .await?;
    }
    sqlx::query("INSERT INTO faq VALUES (1, 'How do I pay?', 'By card, at checkout.')")
        .execute(&shop.mysql)
        .await?;
    let mut redis = shop.redis.clone();
    for id in 1..=CUSTOMERS {
        let c = customer(id);
        sqlx::query("INSERT INTO customers (id, email, phone, full_name) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(&c.email)
            .bind(&c.phone)
            .bind(&c.name)
            .execute(&shop.pg)
            .await?;
        sqlx::query("INSERT INTO addresses (customer_id, street, postcode, city) VALUES ($1, $2, $3, 'Lowtown')")
            .bind(id)
            .bind(&c.street)
            .bind(&c.postcode)
            .execute(&shop.pg)
            .await?;
        for _ in 0..2 {
            let order: i64 = sqlx::query_scalar(
                "INSERT INTO orders (customer_id, status) VALUES ($1, 'shipped') RETURNING id",
            )
            .bind(id)
            .fetch_one(&shop.pg)
            .await?;
            let item: i64 = sqlx::query_scalar(
                "INSERT INTO order_items (order_id, product_id, quantity) VALUES ($1, 1, 2) RETURNING id",
            )
            .bind(order)
            .fetch_one(&shop.pg)
            .await?;
            sqlx::query("INSERT INTO shipments (order_item_id, carrier, recipient_name, tracking) VALUES ($1, 'parcelco', $2, 'trk-001')")
                .bind(item)
                .bind(&c.name)
                .execute(&shop.pg)
                .await?;
        }
        sqlx::query("INSERT INTO payments (customer_id, amount_cents, cardholder_name, billing_email) VALUES ($1, 2400, $2, $3)")
            .bind(id)
            .bind(&c.name)
            .bind(&c.email)
            .execute(&shop.pg)
            .await?;
        for path in ["/", "/cart", "/checkout"] {
            sqlx::query("INSERT INTO access_log (customer_id, ip, path) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(&c.ip)
                .bind(path)
                .execute(&shop.pg)
                .await?;
        }
        let ticket = sqlx::query(
            "INSERT INTO tickets (customer_email, subject, opened_at) VALUES (?, 'parcel is late', NOW())",
        )
        .bind(&c.email)
        .execute(&shop.mysql)
        .await?
        .last_insert_id();
        for body in [
            format!(
                "hello, my parcel has not arrived; write to {} please",
                c.email
            ),
            "any news on this?".to_owned(),
        ] {
            sqlx::query(
                "INSERT INTO ticket_messages (ticket_id, body, sent_at) VALUES (?, ?, NOW())",
            )
            .bind(ticket)
            .bind(body)
            .execute(&shop.mysql)
            .await?;
        }
        sqlx::query("INSERT INTO newsletter_subscribers (email, first_name, subscribed_at) VALUES (?, ?, NOW())")
            .bind(&c.email)
            .bind(&c.first_name)
            .execute(&shop.mysql)
            .await?;
        sqlx::query("INSERT INTO loyalty_points (customer_id, points) VALUES (?, ?)")
            .bind(id)
            .bind(id * 10)
            .execute(&shop.mysql)
            .await?;
        let p = &shop.key_prefix;
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(format!("{p}session:{id}"))
            .arg("token")
            .arg(format!("tok{id}"))
            .ignore()
            .cmd("RPUSH")
            .arg(format!("{p}cart:{id}"))
            .arg("1")
            .arg("2")
            .ignore()
            .cmd("SET")
            .arg(format!("{p}prefs:{}", c.email))
            .arg("dark")
            .ignore()
            .query_async(&mut redis)
            .await?;
        for key in [
            format!("avatars/{id}/face.png"),
            format!("receipts/{id}/2026-11.pdf"),
        ] {
            shop.s3
                .put_object()
                .bucket(&shop.bucket)
                .key(key)
                .body(format!("bytes of {id}").into_bytes().into())
                .send()
                .await?;
        }
    }
    let _: () = redis::cmd("SET")
        .arg(format!("{}stats:daily", shop.key_prefix))
        .arg("42")
        .query_async(&mut redis)
        .await?;
    shop.s3
        .put_object()
        .bucket(&shop.bucket)
        .key("public/logo.png")
        .body(b"logo".to_vec().into())
        .send()
        .await?;
    sqlx::query("SELECT setval('customers_id_seq', 100)")
        .execute(&shop.pg)
        .await?;
    Ok(())
}

async fn digests(shop: &Shop) -> Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for (t, d) in pg_table_digests(&shop.pg).await? {
        all.insert(format!("shop.{t}"), d);
    }
    for (t, d) in mysql_table_digests(&shop.mysql).await? {
        all.insert(format!("support.{t}"), d);
    }
    let mut redis = shop.redis.clone();
    for (t, d) in redis_digests(&mut redis, &shop.key_prefix).await? {
        all.insert(format!("cache.{t}"), d);
    }
    for (t, d) in s3_digests(&shop.s3, &shop.bucket, "").await? {
        all.insert(format!("media.{t}"), d);
    }
    Ok(all)
}

/// Fails naming the text and the kind of value, never the value, if `text` holds any seeded
/// customer's value.
fn assert_no_sampled_value(what: &str, text: &str) {
    for id in 1..=CUSTOMERS {
        let c = customer(id);
        for (kind, value) in ["email", "phone", "name", "street", "postcode", "ip"]
            .iter()
            .zip(scanned(&c))
        {
            assert!(
                !text.contains(&value),
                "{what} holds customer {id}'s {kind}"
            );
        }
    }
}

/// The personal data the schema holds, as (store, table, column): every place the test
/// seeded a value of a customer into, and the tables whose rows are a customer's.
const PERSONAL: [(&str, &str, &str); 15] = [
    ("shop", "customers", "email"),
    ("shop", "customers", "phone"),
    ("shop", "customers", "full_name"),
    ("shop", "addresses", "street"),
    ("shop", "addresses", "postcode"),
    ("shop", "orders", "customer_id"),
    ("shop", "order_items", "order_id"),
    ("shop", "shipments", "recipient_name"),
    ("shop", "payments", "cardholder_name"),
    ("shop", "payments", "billing_email"),
    ("shop", "access_log", "ip"),
    ("support", "tickets", "customer_email"),
    ("support", "ticket_messages", "body"),
    ("support", "newsletter_subscribers", "email"),
    ("support", "loyalty_points", "customer_id"),
];

/// The personal columns no collection of `map` deletes or masks.
fn missed(map: &DataMap) -> Vec<String> {
    PERSONAL
        .iter()
        .filter(|(store, table, column)| {
            let collection = map
                .sql_collections()
                .find(|(s, c)| s.as_str() == *store && c.table == *table);
            match collection.map(|(_, c)| &c.erase) {
                None => true,
                Some(EraseStrategy::Delete) => false,
                Some(EraseStrategy::Mask(masks)) => !masks.contains_key(*column),
                Some(EraseStrategy::Retain) => true,
            }
        })
        .map(|(s, t, c)| format!("{s}.{t}.{c}"))
        .collect()
}

async fn eraser_tool(deployment: &Deployment, args: &[&str]) -> Result<(bool, String, String)> {
    let output = deployment
        .command(Daemon::Eraser)?
        .args(args)
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

fn erase_counts(view: &Value) -> BTreeMap<String, Value> {
    view["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["task"] == "erase")
        .map(|t| {
            (
                t["store"].as_str().unwrap_or_default().to_owned(),
                t["counts"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggested_data_map_passes_the_check_and_its_erasure_leaves_nothing_of_the_subject_after_a_dry_run_that_counted_the_same()
-> Result<()> {
    let mut deployment = Deployment::create(
        &Services::from_env(),
        Options {
            subjects: 0,
            ..Options::default()
        },
    )
    .await?;
    let shop = create_shop(&deployment).await?;
    deployment.set_env("SHOP_DATABASE_URL", &shop.shop_url);
    deployment.set_env("SUPPORT_DATABASE_URL", &shop.support_url);
    deployment.set_env(
        "CACHE_REDIS_URL",
        &deployment.ns().services().redis_url.clone(),
    );
    let map_path = deployment.dir().join("datamap.toml");

    // Suggest.
    let media = format!("media=s3://{}", shop.bucket);
    let prefix = format!("cache={}", shop.key_prefix);
    let map_arg = map_path.display().to_string();
    let (ok, _, summary) = eraser_tool(
        &deployment,
        &[
            "datamap",
            "suggest",
            "--store",
            "shop=env:SHOP_DATABASE_URL",
            "--store",
            "support=env:SUPPORT_DATABASE_URL",
            "--store",
            "cache=env:CACHE_REDIS_URL",
            "--store",
            &media,
            "--key-prefix",
            &prefix,
            "--out",
            &map_arg,
        ],
    )
    .await?;
    ensure!(ok, "datamap suggest failed: {summary}");
    let draft = std::fs::read_to_string(&map_path)?;
    assert_no_sampled_value("the draft", &draft);
    assert_no_sampled_value("the summary of datamap suggest", &summary);
    let map = DataMap::parse(&draft).map_err(|e| anyhow::anyhow!("{e}\n{draft}"))?;
    assert_eq!(
        missed(&map),
        Vec::<String>::new(),
        "the draft missed columns:\n{draft}"
    );
    let payments = map
        .sql_collections()
        .find(|(_, c)| c.table == "payments")
        .map(|(_, c)| c.clone())
        .context("payments")?;
    assert!(matches!(payments.erase, EraseStrategy::Mask(_)), "{draft}");
    assert!(
        payments
            .retain
            .as_deref()
            .is_some_and(|r| r.contains("TODO")),
        "{draft}"
    );
    let log = map
        .sql_collections()
        .find(|(_, c)| c.table == "access_log")
        .and_then(|(_, c)| c.log.clone())
        .context("access_log is drafted as a log table")?;
    assert_eq!(log.timestamp, "at");
    let shipments = map
        .sql_collections()
        .find(|(_, c)| c.table == "shipments")
        .map(|(_, c)| c.clone())
        .context("shipments (three foreign-key hops from customers)")?;
    assert_eq!(
        shipments.matches.keys().collect::<Vec<_>>(),
        ["order_item_id"],
        "{draft}"
    );
    match map
        .stores
        .get(&lethe_common::ids::StoreName::parse("cache").unwrap())
    {
        Some(Store::Redis(redis)) => assert_eq!(
            redis.keys.iter().collect::<BTreeSet<_>>(),
            [
                "cart:{customer_id}",
                "prefs:{email}",
                "session:{customer_id}"
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
            "{draft}"
        ),
        _ => panic!("no Redis store in the draft:\n{draft}"),
    }
    match map
        .stores
        .get(&lethe_common::ids::StoreName::parse("media").unwrap())
    {
        Some(Store::S3(s3)) => assert_eq!(
            s3.prefixes,
            ["avatars/{customer_id}/", "receipts/{customer_id}/"],
            "{draft}"
        ),
        _ => panic!("no S3 store in the draft:\n{draft}"),
    }

    // Check.
    let (ok, report, errors) = eraser_tool(&deployment, &["datamap", "check"]).await?;
    assert!(
        ok,
        "datamap check refused the draft:\n{report}\n{errors}\n{draft}"
    );
    assert_no_sampled_value("the output of datamap check", &report);
    assert!(report.contains("shop.shipments: email -> customer_id (shop.customers) -> order_id (shop.orders) -> order_item_id (shop.order_items)"), "{report}");

    // A key family the map does not cover is named by the check.
    let wishlist = format!("{}wishlist:{SUBJECT}", shop.key_prefix);
    let mut redis = shop.redis.clone();
    let _: () = redis::cmd("SET")
        .arg(&wishlist)
        .arg("teapot")
        .query_async(&mut redis)
        .await?;
    let (ok, report, _) = eraser_tool(&deployment, &["datamap", "check"]).await?;
    assert!(!ok, "{report}");
    assert!(
        report.contains("sampled key(s) shaped `wishlist:{customer_id}` name an identity"),
        "{report}"
    );
    let _: () = redis::cmd("DEL")
        .arg(&wishlist)
        .query_async(&mut redis)
        .await?;

    // A dry run changes nothing.
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;
    let subject = customer(SUBJECT);
    let before = digests(&shop).await?;
    let dry = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": subject.email}, "dry_run": true}))
        .await?;
    let dry_view = deployment.wait_completed(&dry, REQUEST_TIMEOUT).await?;
    assert_eq!(dry_view["dry_run"], true);
    assert_eq!(digests(&shop).await?, before, "the dry run changed a store");
    let (status, receipt) = deployment
        .get(&format!("/v1/requests/{dry}/receipt"))
        .await?;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["receipt"]["dry_run"], true, "{receipt}");
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasure_log WHERE request_id = $1::uuid")
            .bind(&dry)
            .fetch_one(&deployment.ledger)
            .await?;
    assert_eq!(recorded, 0, "a dry run is never replayed after a restore");
    let console =
        lethe_tests::browser::ConsoleClient::login(&deployment.api()?, &deployment.key).await?;
    let (status, _, page) = console.get(&format!("/console/requests/{dry}")).await?;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"dry-run\""),
        "the console does not show the dry run"
    );
    let (_, _, listing) = console.get("/console/requests").await?;
    assert!(
        listing.contains("(dry run)"),
        "the console's listing does not mark the dry run"
    );

    // The erasure does what the dry run counted, and leaves nothing of the subject.
    let real = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": subject.email}}))
        .await?;
    let real_view = deployment.wait_completed(&real, REQUEST_TIMEOUT).await?;
    assert_eq!(real_view["dry_run"], false);
    let (_, _, page) = console.get(&format!("/console/requests/{real}")).await?;
    assert!(
        !page.contains("id=\"dry-run\""),
        "the console shows an erasure as a dry run"
    );
    let counted = erase_counts(&dry_view);
    assert_eq!(counted.len(), 4, "{dry_view}");
    assert_eq!(
        counted,
        erase_counts(&real_view),
        "dry run:\n{dry_view}\nerasure:\n{real_view}"
    );
    let deleted: u64 = counted
        .values()
        .flat_map(|c| c.as_object().into_iter().flatten())
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(deleted > 20, "{dry_view}");
    assert_ne!(digests(&shop).await?, before);

    let mut left: Vec<String> = Vec::new();
    for (table, column) in [
        ("customers", "id"),
        ("addresses", "customer_id"),
        ("orders", "customer_id"),
        ("payments", "customer_id"),
        ("access_log", "customer_id"),
    ] {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {column} = $1"))
                .bind(SUBJECT)
                .fetch_one(&shop.pg)
                .await?;
        if n > 0 {
            left.push(format!("shop.{table}: {n}"));
        }
    }
    let items: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_items WHERE order_id NOT IN (SELECT id FROM orders)",
    )
    .fetch_one(&shop.pg)
    .await?;
    let shipped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM shipments WHERE order_item_id NOT IN (SELECT id FROM order_items)",
    )
    .fetch_one(&shop.pg)
    .await?;
    ensure!(items == 0 && shipped == 0);
    let loyalty: i64 =
        sqlx::query_scalar("SELECT count(*) FROM loyalty_points WHERE customer_id = ?")
            .bind(SUBJECT)
            .fetch_one(&shop.mysql)
            .await?;
    if loyalty > 0 {
        left.push(format!("support.loyalty_points: {loyalty}"));
    }
    // Every row of every table, as text, searched for the subject's values.
    for table in [
        "customers",
        "addresses",
        "orders",
        "order_items",
        "shipments",
        "payments",
        "access_log",
        "products",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&shop.pg)
            .await?;
        let hits = rows
            .iter()
            .filter(|r| scanned(&subject).iter().any(|v| r.contains(v)))
            .count();
        if hits > 0 {
            left.push(format!(
                "shop.{table}: {hits} row(s) holding the subject's values"
            ));
        }
    }
    for (table, columns) in [
        ("tickets", "customer_email, subject"),
        ("ticket_messages", "body"),
        ("newsletter_subscribers", "email, COALESCE(first_name, '')"),
        ("faq", "question, answer"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT CAST(CONCAT_WS('|', {columns}) AS CHAR) FROM {table}"
        ))
        .fetch_all(&shop.mysql)
        .await?;
        let hits = rows
            .iter()
            .filter(|r| scanned(&subject).iter().any(|v| r.contains(v)))
            .count();
        if hits > 0 {
            left.push(format!(
                "support.{table}: {hits} row(s) holding the subject's values"
            ));
        }
    }
    let mut redis = shop.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", shop.key_prefix))
        .query_async(&mut redis)
        .await?;
    let subject_keys: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with(&format!(":{SUBJECT}")) || k.contains(&subject.email))
        .collect();
    if !subject_keys.is_empty() {
        left.push(format!("cache: {} key(s)", subject_keys.len()));
    }
    let objects = lethe_sample::list_keys(&shop.s3, &shop.bucket, "").await?;
    let subject_objects = objects
        .iter()
        .filter(|k| k.contains(&format!("/{SUBJECT}/")))
        .count();
    if subject_objects > 0 {
        left.push(format!("media: {subject_objects} object(s)"));
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the erasure left data of the subject"
    );
    // Everyone else is still there.
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&shop.pg)
        .await?;
    assert_eq!(others, CUSTOMERS - 1);
    assert_eq!(keys.len() as i64, 3 * (CUSTOMERS - 1) + 1);
    assert_eq!(objects.len() as i64, 2 * (CUSTOMERS - 1) + 1);

    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datamap_check_names_a_table_whose_collection_was_removed_as_uncovered_personal_data()
-> Result<()> {
    let deployment = Deployment::create(
        &Services::from_env(),
        Options {
            subjects: 5,
            ..Options::default()
        },
    )
    .await?;
    let map_path = deployment.dir().join("datamap.toml");
    let (ok, report, errors) = eraser_tool(&deployment, &["datamap", "check"]).await?;
    assert!(
        ok,
        "the check refused the sample data map:\n{report}\n{errors}"
    );
    assert!(!report.contains("table `invoices`"), "{report}\n{errors}");

    let mut map: toml::Table = toml::from_str(&std::fs::read_to_string(&map_path)?)?;
    let collections = map["stores"]["accounts"]["collections"]
        .as_array()
        .context("accounts collections")?
        .iter()
        .filter(|c| c["table"].as_str() != Some("invoices"))
        .cloned()
        .collect();
    map["stores"]["accounts"]
        .as_table_mut()
        .context("accounts")?
        .insert("collections".into(), toml::Value::Array(collections));
    std::fs::write(&map_path, toml::to_string(&map)?)?;

    let (ok, report, errors) = eraser_tool(&deployment, &["datamap", "check"]).await?;
    assert!(
        !ok,
        "the check passed a map missing invoices:\n{report}\n{errors}"
    );
    assert!(
        report.contains("uncovered personal data: table `invoices` column `billing_name`"),
        "{report}\n{errors}"
    );
    assert!(
        report.contains("table `invoices` has a foreign key"),
        "{report}"
    );
    let leaks = lethe_tests::e2e::LeakScanner::new(&deployment.subjects())
        .scan(std::path::Path::new("datamap check"), &report);
    assert!(leaks.is_empty(), "{leaks:?}");
    deployment.cleanup().await
}

#[tokio::test]
async fn dry_run_rectification_restriction_and_erasure_tasks_count_what_the_real_ones_change_and_change_nothing()
-> Result<()> {
    use lethe_common::messages::{TaskKind, TaskMessage};
    use lethe_tests::digest::sample_digest;
    use lethe_tests::eraser_support::{EraserBed, identities_of, identity, task};

    // Arrange: the sample stores, the sessions store recording restrictions in a set too.
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(12, 31).await?;
    let mut map: toml::Table = toml::from_str(&bed.sample_map()?)?;
    if let Some(sessions) = map["stores"]["sessions"].as_table_mut() {
        sessions.insert(
            "restrict".into(),
            toml::toml! { set = "restricted" identity = "user_id" }.into(),
        );
    }
    bed.write_map(&toml::to_string(&map)?)?;
    let s = lethe_sample::subject(31, 4);
    let everyone = identities_of(&s);
    let user = identity("user_id", s.user.id.to_string());
    let rectify = |dry: bool| -> Result<TaskMessage> {
        let mut t = task(TaskKind::Rectify, "accounts", everyone.clone())?;
        t.params = json!({"changes": {"first_name": "Renamed"}, "dry_run": dry});
        Ok(t)
    };
    let dry = |mut t: TaskMessage| {
        t.params = json!({"dry_run": true});
        t
    };
    let mut tasks = vec![rectify(true)?];
    tasks.push(dry(task(TaskKind::Restrict, "accounts", everyone.clone())?));
    tasks.push(dry(task(TaskKind::Restrict, "sessions", user.clone())?));
    for store in ["chat", "sessions", "files", "accounts"] {
        tasks.push(dry(task(TaskKind::Erase, store, everyone.clone())?));
    }
    let before = sample_digest(&bed.stores).await?;

    // Act: the dry runs, then the same tasks for real.
    let dry_results = crate::eraser::run_tasks(&bed, &tasks).await?;
    let after_dry = sample_digest(&bed.stores).await?;
    let real: Vec<TaskMessage> = tasks
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.request_id = lethe_common::ids::RequestId::new();
            if let Some(params) = t.params.as_object_mut() {
                params.remove("dry_run");
            }
            t
        })
        .collect();
    // Erase last: the rectification and restriction must find the subject.
    let mut real_results = Vec::new();
    for t in &real {
        real_results.extend(crate::eraser::run_tasks(&bed, std::slice::from_ref(t)).await?);
    }

    // Assert
    assert_eq!(after_dry, before, "a dry run changed a store");
    for ((t, dry), real) in tasks.iter().zip(&dry_results).zip(&real_results) {
        let counted = &crate::eraser::done(dry)?.counts;
        assert_eq!(
            counted,
            &crate::eraser::done(real)?.counts,
            "{} in {:?}",
            t.task,
            t.store
        );
        assert_eq!(crate::eraser::done(dry)?.remaining, None);
    }
    let total = |results: &[lethe_common::messages::TaskResult]| -> u64 {
        results
            .iter()
            .filter_map(|r| crate::eraser::done(r).ok())
            .flat_map(|r| r.counts.values())
            .sum()
    };
    assert!(total(&dry_results) > 10, "{dry_results:?}");
    assert_ne!(sample_digest(&bed.stores).await?, before);
    bed.cleanup().await
}
