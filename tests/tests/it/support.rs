//! What the foundation tests share: settings for a test's namespace, and a way to run the
//! real binaries.

use std::path::{Path, PathBuf};
use std::process::Output;

use lethe_common::Settings;
use lethe_tests::{Namespace, Services};

/// The configuration text of a deployment living in `ns`: its own NATS prefix, ledger and
/// bucket, every daemon on a free port.
pub fn settings_toml(
    services: &Services,
    ns: &Namespace,
    ledger_url: Option<&str>,
    bucket: Option<&str>,
    data_map: Option<&Path>,
) -> String {
    let mut text = String::new();
    if let Some(path) = data_map {
        text.push_str(&format!("data_map = {:?}\n", path.display().to_string()));
    }
    text.push_str(&format!(
        "[privacy]\nhash_key = \"test-hash-key-0123456789abcdef0123456789\"\n\n\
         [nats]\nurl = {:?}\nprefix = {:?}\nack_wait = \"2s\"\nmax_deliver = 3\n\n",
        services.nats_url,
        ns.nats_prefix(),
    ));
    if let Some(url) = ledger_url {
        text.push_str(&format!("[ledger]\nurl = {url:?}\n\n"));
    }
    if let Some(bucket) = bucket {
        text.push_str(&format!(
            "[s3]\nendpoint = {:?}\nbucket = {bucket:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n\n",
            services.s3.endpoint, services.s3.access_key_id, services.s3.secret_access_key,
        ));
    }
    text.push_str(
        "[api]\nlisten = \"127.0.0.1:0\"\nreceipt_signing_key = \"dGVzdC1yZWNlaXB0LWtleS0wMTIzNDU2Nzg5YWJjZGU=\"\n\n",
    );
    for daemon in ["eraser", "exporter", "backup", "retention"] {
        text.push_str(&format!("[{daemon}]\nlisten = \"127.0.0.1:0\"\n\n"));
    }
    text.push_str(&format!(
        "[backups]\nrecipients = [{:?}]\nschedule = {{ default = \"off\" }}\n\n",
        lethe_tests::backup_support::fixture_recipient()
            .display()
            .to_string(),
    ));
    text
}

/// Parses configuration text (no environment overrides).
pub fn settings(text: &str) -> Settings {
    Settings::from_toml(text).unwrap_or_else(|e| panic!("test settings are invalid: {e}\n{text}"))
}

/// Writes `text` to a file in a fresh temporary directory and returns its path.
pub fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The path of a workspace binary (built by the test command before the tests run).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs a workspace binary with `args` and extra environment, without LETHE__ overrides
/// inherited from the caller.
pub fn run_binary(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(binary(name));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("LETHE__")
            || key.ends_with("_DATABASE_URL")
            || key.ends_with("_REDIS_URL")
        {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}
