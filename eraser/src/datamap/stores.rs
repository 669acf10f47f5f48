//! The stores `datamap suggest` reads: `--store NAME=URL` (or `NAME=env:VARIABLE`, which keeps
//! the URL off the command line and names the variable in the draft), connected with the
//! eraser's own connections and read through `lethe_stores::discovery`.

use anyhow::{Context as _, bail};
use lethe_common::Settings;
use lethe_common::datamap::{Matching, RedisStore, S3Store, SqlStore, Store};
use lethe_common::ids::StoreName;
use lethe_stores::StoreConnection;
use lethe_stores::discovery::{read_catalog, sample_objects, sample_redis_keys};
use secrecy::{ExposeSecret as _, SecretString};

use super::draft::Discovered;

/// One `--store` argument.
#[derive(Debug, Clone)]
pub struct StoreArg {
    /// The store's name in the draft.
    pub name: StoreName,
    /// The variable the draft names for its URL.
    pub url_env: String,
    url: SecretString,
}

impl std::str::FromStr for StoreArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, url) = text
            .split_once('=')
            .ok_or("write a store as NAME=URL or NAME=env:VARIABLE")?;
        let name = StoreName::parse(name).map_err(|e| e.to_string())?;
        let (url_env, url) = match url.strip_prefix("env:") {
            Some(variable) => (
                variable.to_owned(),
                std::env::var(variable)
                    .map_err(|_| format!("environment variable {variable} is not set"))?,
            ),
            None => (
                format!("{}_URL", name.as_str().to_uppercase().replace('-', "_")),
                url.to_owned(),
            ),
        };
        Ok(Self {
            name,
            url_env,
            url: SecretString::from(url),
        })
    }
}

/// Connects to every store of `args` and reads it. `prefixes` gives a Redis store's key
/// prefix (`NAME=PREFIX`); an S3 store's prefix is the path of its `s3://bucket/prefix/` URL.
pub async fn discover(
    args: &[StoreArg],
    prefixes: &[(String, String)],
    settings: &Settings,
) -> anyhow::Result<Vec<Discovered>> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let url = arg.url.expose_secret();
        let scheme = url.split("://").next().unwrap_or_default();
        let matching = Matching::default();
        let store = match scheme {
            "postgres" | "postgresql" => Store::Postgres(SqlStore {
                url_env: arg.url_env.clone(),
                collections: Vec::new(),
                matching,
                scope: Default::default(),
            }),
            "mysql" | "mariadb" => Store::Mysql(SqlStore {
                url_env: arg.url_env.clone(),
                collections: Vec::new(),
                matching,
                scope: Default::default(),
            }),
            "redis" | "rediss" => Store::Redis(RedisStore {
                url_env: arg.url_env.clone(),
                key_prefix: String::new(),
                keys: Vec::new(),
                restrict: None,
                object: None,
                matching,
                scope: Default::default(),
            }),
            "s3" => {
                let path = url.trim_start_matches("s3://");
                let bucket = path.split('/').next().unwrap_or_default().to_owned();
                Store::S3(S3Store {
                    bucket,
                    prefixes: Vec::new(),
                    endpoint_env: None,
                    access_key_id_env: None,
                    secret_access_key_env: None,
                    matching,
                    scope: Default::default(),
                })
            }
            _ => bail!(
                "store `{}`: the URL's scheme must be postgres, mysql, redis or s3",
                arg.name
            ),
        };
        // The credential goes in as the variable the draft names, as the eraser reads it.
        let settings = settings
            .clone()
            .with_credential(arg.url_env.clone(), arg.url.clone());
        let connection = lethe_stores::connect(&arg.name, &store, &settings)?;
        let name = arg.name.as_str().to_owned();
        let read = match (&store, &connection) {
            (Store::Postgres(_) | Store::Mysql(_), _) => Discovered::Sql {
                kind: if matches!(store, Store::Postgres(_)) {
                    "postgres"
                } else {
                    "mysql"
                },
                url_env: arg.url_env.clone(),
                catalog: read_catalog(&connection)
                    .await
                    .with_context(|| format!("store `{name}`"))?,
                name,
            },
            (Store::Redis(_), StoreConnection::Redis(handle)) => {
                let key_prefix = prefixes
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                Discovered::Redis {
                    keys: sample_redis_keys(handle, &key_prefix)
                        .await
                        .with_context(|| format!("store `{name}`"))?,
                    url_env: arg.url_env.clone(),
                    key_prefix,
                    name,
                }
            }
            (Store::S3(s3), StoreConnection::S3(client)) => {
                let path = url.trim_start_matches("s3://");
                let prefix = path
                    .split_once('/')
                    .map(|(_, p)| p.to_owned())
                    .unwrap_or_default();
                Discovered::S3 {
                    keys: sample_objects(client, &s3.bucket, &prefix)
                        .await
                        .with_context(|| format!("store `{name}`"))?,
                    bucket: s3.bucket.clone(),
                    prefix,
                    name,
                }
            }
            _ => bail!("store `{name}`: its connection is not of its kind"),
        };
        out.push(read);
    }
    Ok(out)
}
