//! The real services the end-to-end tests run against, read from the environment.

use std::env;

use lethe_sample::S3Options;
use redis::aio::ConnectionManager;

/// Where the shared test services listen. Every field has a default matching the local stack
/// (`scripts/`), overridable from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Services {
    /// PostgreSQL admin URL (`LETHE_TEST_PG_URL`): databases are created through it.
    pub pg_url: String,
    /// MariaDB admin URL (`LETHE_TEST_MYSQL_URL`).
    pub mysql_url: String,
    /// Redis URL (`LETHE_TEST_REDIS_URL`).
    pub redis_url: String,
    /// Shared NATS server (`LETHE_TEST_NATS_URL`).
    pub nats_url: String,
    /// S3-compatible service (`LETHE_TEST_S3_ENDPOINT`, `LETHE_TEST_S3_ACCESS_KEY`,
    /// `LETHE_TEST_S3_SECRET_KEY`, `LETHE_TEST_S3_REGION`).
    pub s3: S3Options,
}

impl Services {
    /// Reads the services from the environment, with the local stack's defaults.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Self {
            pg_url: var(
                "LETHE_TEST_PG_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            mysql_url: var("LETHE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
            redis_url: var("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            nats_url: var("LETHE_TEST_NATS_URL", "nats://127.0.0.1:4223"),
            s3: S3Options {
                endpoint: var("LETHE_TEST_S3_ENDPOINT", "http://127.0.0.1:9000"),
                access_key_id: var("LETHE_TEST_S3_ACCESS_KEY", "lethe"),
                secret_access_key: var("LETHE_TEST_S3_SECRET_KEY", "lethe-local-secret"),
                region: var("LETHE_TEST_S3_REGION", "us-east-1"),
            },
        }
    }

    /// An S3 client for the test S3 service.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        lethe_sample::s3_client(&self.s3)
    }

    /// A Redis connection to the test Redis.
    pub async fn redis(&self) -> anyhow::Result<ConnectionManager> {
        Ok(lethe_sample::redis_connection(&self.redis_url).await?)
    }

    /// The PostgreSQL URL of database `name` on the test server.
    pub fn pg_database_url(&self, name: &str) -> String {
        with_database(&self.pg_url, name)
    }

    /// The MariaDB URL of database `name` on the test server.
    pub fn mysql_database_url(&self, name: &str) -> String {
        with_database(&self.mysql_url, name)
    }
}

/// `url` with its path (the database) replaced by `/name`, keeping user, host and query.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after any '@' (a password may contain '/').
    let at = before_query.rfind('@').map_or(0, |i| i + 1);
    let authority_end = before_query[at..]
        .find('/')
        .map_or(before_query.len(), |i| at + i);
    let authority = &before_query[..authority_end];
    let mut out = if scheme.is_empty() {
        format!("{authority}/{name}")
    } else {
        format!("{scheme}://{authority}/{name}")
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1_a"),
            "postgres://postgres@127.0.0.1:5432/t1_a"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306", "t1_b"),
            "mysql://root@127.0.0.1:3306/t1_b"
        );
        assert_eq!(
            with_database("postgres://u:p/w@h/db?sslmode=disable", "x"),
            "postgres://u:p/w@h/x?sslmode=disable"
        );
    }
}
