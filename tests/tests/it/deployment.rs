//! The container deployment, `compose.yaml` and the `Dockerfile`, describes a system that can
//! work: every daemon is built from the one Dockerfile, runs a binary the workspace builds,
//! has a health check on the port it listens on, and is configured only with keys Lethe knows
//! and the store variables the data map names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lethe_common::Settings;
use lethe_tests::e2e::Daemon;
use lethe_tests::process::binaries_dir;
use serde_norway::Value;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// compose.yaml with its anchors and merge keys (`<<: *lethe`) resolved.
fn compose() -> Value {
    let text = std::fs::read_to_string(repository().join("compose.yaml")).unwrap();
    let mut compose: Value = serde_norway::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    compose
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "compose.yaml has no service `{name}`");
    service
}

/// A service's environment as name -> value (values as the strings compose passes).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(mapping) = service["environment"].as_mapping() else {
        return BTreeMap::new();
    };
    mapping
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("environment value {other:?} is not a scalar"),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// A command or test as a list of strings.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{value:?} is not a list"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A value of a `LETHE__` variable as figment reads it: TOML when it parses as such (arrays,
/// numbers, booleans), else a string.
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// config/lethe.toml with a service's `LETHE__SECTION__KEY` overrides applied, as the daemon
/// loads it.
fn settings_with(environment: &BTreeMap<String, String>) -> Settings {
    let text = std::fs::read_to_string(repository().join("config/lethe.toml")).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    for (name, value) in environment {
        let Some(path) = name.strip_prefix("LETHE__") else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let (last, sections) = keys.split_last().unwrap();
        let mut table = &mut config;
        for section in sections {
            table = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name}: `{section}` is not a section"));
        }
        table.insert(last.clone(), env_value(value));
    }
    Settings::from_toml(&toml::to_string(&config).unwrap())
        .unwrap_or_else(|e| panic!("the overrides {environment:?} do not fit: {e}"))
}

/// Every `url_env` the sample data map names, by store, and the variables of a processor's
/// `auth`.
fn data_map_variables() -> BTreeSet<String> {
    let map: toml::Table = toml::from_str(lethe_tests::SAMPLE_DATAMAP).unwrap();
    let stores: Vec<&toml::Value> = map["stores"].as_table().unwrap().values().collect();
    let urls = stores
        .iter()
        .filter_map(|store| store.get("url_env").and_then(|v| v.as_str()));
    let auth = stores
        .iter()
        .filter_map(|store| store.get("auth").and_then(|a| a.as_table()))
        .flat_map(|auth| auth.values().filter_map(|v| v.as_table()))
        .flat_map(|method| {
            method
                .iter()
                .filter(|(key, _)| key.ends_with("_env"))
                .filter_map(|(_, v)| v.as_str())
        });
    urls.chain(auth).map(str::to_owned).collect()
}

#[test]
fn every_daemon_is_built_from_the_dockerfile_runs_a_real_binary_and_checks_its_health_on_its_port()
{
    let compose = compose();
    let dockerfile = std::fs::read_to_string(repository().join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.trim_start().starts_with("FROM "))
            .count()
            >= 2,
        "the Dockerfile is not multi-stage"
    );
    let exposed: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let binaries = binaries_dir().unwrap();

    for daemon in Daemon::ALL {
        let name = daemon.section();
        let service = service(&compose, name);
        assert_eq!(
            service["build"]["dockerfile"].as_str(),
            Some("Dockerfile"),
            "{name} is not built from the Dockerfile"
        );
        assert_eq!(service["build"]["context"].as_str(), Some("."), "{name}");
        let command = strings(&service["command"]);
        assert_eq!(command[0], daemon.binary(), "{name} runs another binary");
        assert!(
            binaries.join(&command[0]).is_file(),
            "{name}: the workspace builds no {}",
            command[0]
        );
        assert!(
            dockerfile.contains(&command[0]),
            "{name}: the Dockerfile does not put {} in the image",
            command[0]
        );

        let environment = environment(service);
        let listen = environment
            .get(&daemon.listen_key())
            .unwrap_or_else(|| panic!("{name}: no {}", daemon.listen_key()));
        let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{name} listens on {listen}: unreachable from its container's network"
        );
        assert!(
            exposed.contains(&port),
            "the Dockerfile does not expose {port} ({name})"
        );
        let test = strings(&service["healthcheck"]["test"]);
        assert!(
            test.iter()
                .any(|t| t == &format!("http://127.0.0.1:{port}/healthz")),
            "{name}'s health check {test:?} does not ask its /healthz on port {port}"
        );
        assert_eq!(test[0], "CMD", "{name}");
        assert!(
            dockerfile.contains(&format!(" {} ", test[1])),
            "{name}'s health check runs {}, which the image does not install",
            test[1]
        );
        if daemon == Daemon::Api {
            let ports = strings(&service["ports"]);
            assert!(
                ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
                "the api publishes {ports:?}, not its port {port}"
            );
        }
        for dependency in ["nats", "postgres", "mariadb", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "{name} does not wait for {dependency}"
            );
        }
    }
    let seed = strings(&service(&compose, "seed")["command"]);
    assert!(binaries.join(&seed[0]).is_file(), "no {}", seed[0]);
    assert!(dockerfile.contains(&seed[0]), "the image lacks {}", seed[0]);
}

#[test]
fn every_variable_compose_sets_names_a_real_configuration_key_or_a_data_map_store() {
    let compose = compose();
    let variables = data_map_variables();
    let datamap: toml::Table = toml::from_str(lethe_tests::SAMPLE_DATAMAP).unwrap();
    let files_bucket = datamap["stores"]["files"]["bucket"].as_str().unwrap();
    let buckets = strings(&service(&compose, "minio-buckets")["command"]).join(" ");

    for daemon in Daemon::ALL {
        let name = daemon.section();
        let service = service(&compose, name);
        let environment = environment(service);
        // Unknown keys stop a daemon at start-up: the settings parse only if every override
        // names a real key with a value of the right type.
        let settings = settings_with(&environment);
        for (key, value) in &environment {
            if key.starts_with("LETHE__") {
                continue;
            }
            if key == "LETHE_CONFIG" {
                assert_eq!(value, "/etc/lethe/lethe.toml");
                let mounts = strings(&service["volumes"]);
                assert!(
                    mounts.iter().any(|m| m.starts_with("./config:/etc/lethe")),
                    "{name} does not mount ./config at /etc/lethe: {mounts:?}"
                );
                continue;
            }
            assert!(
                variables.contains(key),
                "{name} sets {key}, which no store of the data map names (url_env): {variables:?}"
            );
        }
        for variable in &variables {
            assert!(
                environment.contains_key(variable),
                "{name} lacks {variable}, which the data map names"
            );
        }
        // The services the URLs point at exist and listen where said.
        for (url, host, port) in [
            (settings.nats.url.clone(), "nats", 4222),
            (
                secrecy::ExposeSecret::expose_secret(&settings.ledger.as_ref().unwrap().url)
                    .to_owned(),
                "postgres",
                5432,
            ),
            (
                settings.s3.as_ref().unwrap().endpoint.clone().unwrap(),
                "minio",
                9000,
            ),
            (environment["CHAT_DATABASE_URL"].clone(), "mariadb", 3306),
            (environment["SESSIONS_REDIS_URL"].clone(), "redis", 6379),
            (
                environment["ACCOUNTS_DATABASE_URL"].clone(),
                "postgres",
                5432,
            ),
            (environment["PAYMENTS_API_URL"].clone(), "processor", 8090),
        ] {
            assert!(
                url.contains(&format!("@{host}:{port}"))
                    || url.contains(&format!("//{host}:{port}")),
                "{name}: {host}:{port} is not where {url} points"
            );
            assert!(compose["services"][host].is_mapping(), "no service {host}");
        }
        let s3 = settings.s3.as_ref().unwrap();
        assert!(
            buckets.contains(&format!("local/{}", s3.bucket)),
            "minio-buckets does not create Lethe's bucket {}",
            s3.bucket
        );
    }
    assert!(
        buckets.contains(&format!("local/{files_bucket}")),
        "minio-buckets does not create the files store's bucket"
    );
    assert!(
        strings(&service(&compose, "nats")["command"])
            .iter()
            .any(|a| a == "--jetstream" || a == "-js"),
        "NATS runs without JetStream"
    );
    for infrastructure in ["nats", "postgres", "mariadb", "redis", "minio"] {
        assert!(
            service(&compose, infrastructure)["healthcheck"]["test"].is_sequence(),
            "{infrastructure} has no health check"
        );
    }
}
