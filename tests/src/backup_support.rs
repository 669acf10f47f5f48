//! A test bed for the backup worker: the eraser's bed (sample stores, data map, NATS streams)
//! plus a ledger, Lethe's bucket, a throwaway GnuPG home with an operator key made by `gpg`
//! itself, and the backup daemon's configuration; and a Redis server to load restored RDBs.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lethe_common::Settings;
use sqlx::PgPool;

use crate::Services;
use crate::eraser_support::{EraserBed, HASH_KEY};

/// The public certificate of a second recipient, whose secret key nobody kept (ed25519 with a
/// cv25519 encryption subkey, made by gpg 2.2, no expiry): every backup of the bed is encrypted
/// to it too, and tests that only start the backup daemon configure it as their recipient.
pub const FIXTURE_RECIPIENT: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----

mDMEawOs5BYJKwYBBAHaRw8BAQdAO87f2Fo13dvxSJaJ5EEysRuBVxNtWdNbKyWs
WV+QyTC0KExldGhlIHRlc3QgcmVjaXBpZW50IDx0ZXN0c0BleGFtcGxlLm9yZz6I
kAQTFggAOBYhBF2D6+srhIBJgS4OJ2rglfyXP4eSBQJrA6zkAhsDBQsJCAcCBhUK
CQgLAgQWAgMBAh4BAheAAAoJEGrglfyXP4eS7gsBAJdcTqUU+oJsaD64GS9UgpUw
Cc2ZxEeFbbFF9fvUMNXfAQCBGfxhjuM9mK1pJPEHWHfBvO8bVzaQOqAFmvl5xf3P
Dbg4BGsDrOQSCisGAQQBl1UBBQEBB0BudtPHRh0TqXeReytv7ZdCYzzoDSvttD/u
TKqXgzJoYAMBCAeIeAQYFggAIBYhBF2D6+srhIBJgS4OJ2rglfyXP4eSBQJrA6zk
AhsMAAoJEGrglfyXP4eSHHABAPDNmEd1B/ZZdWTgmcJnRnHgeqQ96ib/FjfkZ2kY
+MYfAQC7Z2kgCiq1/oPCfERahp2OXF9WxZLdTkoHLwsS7vuWBw==
=Gtwx
-----END PGP PUBLIC KEY BLOCK-----
";

/// The fingerprint of [`FIXTURE_RECIPIENT`].
pub const FIXTURE_FINGERPRINT: &str = "5D83EBEB2B848049812E0E276AE095FC973F8792";

/// [`FIXTURE_RECIPIENT`] in a file, for `backups.recipients`: one file in the temporary
/// directory shared by every test process (written by rename, so readers never see half of it).
pub fn fixture_recipient() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("lethe-test-recipient-{FIXTURE_FINGERPRINT}.asc"));
        if std::fs::read_to_string(&path).is_ok_and(|text| text == FIXTURE_RECIPIENT) {
            return path;
        }
        let written = tempfile::NamedTempFile::new_in(&dir)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, FIXTURE_RECIPIENT.as_bytes())?;
                Ok(file)
            })
            .and_then(|file| file.persist(&path).map_err(|e| e.error));
        if let Err(error) = written {
            panic!("cannot write {}: {error}", path.display());
        }
        path
    })
    .clone()
}

/// How `gpg` makes the operator's key in tests: GnuPG's defaults (an RSA primary key and an
/// RSA encryption subkey with 2.2), no passphrase.
pub const OPERATOR: &str = "Ops <ops@example.org>";

/// A throwaway GnuPG home (`GNUPGHOME`); its agent is stopped on drop.
pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    /// An empty home. It lives under `/tmp` with a short name: gpg-agent's socket path must stay
    /// short.
    pub fn new() -> Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("lethe-gpg-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { home })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `gpg --batch` in this home.
    pub fn command(&self) -> Command {
        let mut command = Command::new("gpg");
        command.env("GNUPGHOME", self.home()).arg("--batch");
        command
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let output = self.command().args(args).stdin(Stdio::null()).output()?;
        if !output.status.success() {
            bail!(
                "gpg {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Generates a key for `uid` with gpg's defaults, expiring after `expire` (`0`: never),
    /// optionally as if the clock said `faked_time` (`20200101T000000`); returns its
    /// fingerprint.
    pub fn generate(&self, uid: &str, expire: &str, faked_time: Option<&str>) -> Result<String> {
        let mut args = vec!["--passphrase", ""];
        if let Some(time) = faked_time {
            args.extend(["--faked-system-time", time]);
        }
        args.extend(["--quick-gen-key", uid, "default", "default", expire]);
        self.run(&args)?;
        self.fingerprint(uid)
    }

    /// The fingerprint of `uid`'s primary key.
    pub fn fingerprint(&self, uid: &str) -> Result<String> {
        let output = self.run(&["--with-colons", "--list-keys", uid])?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_owned())
            })
            .context("gpg listed no fingerprint")
    }

    /// Writes `uid`'s public certificate (ASCII-armored) to `path`.
    pub fn export_public(&self, uid: &str, path: &Path) -> Result<()> {
        let output = self.run(&["--armor", "--export", uid])?;
        std::fs::write(path, output.stdout)?;
        Ok(())
    }

    /// Writes `uid`'s secret key (ASCII-armored) to `path`.
    pub fn export_secret(&self, uid: &str, path: &Path) -> Result<()> {
        let output = self.run(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--export-secret-keys",
            uid,
        ])?;
        std::fs::write(path, output.stdout)?;
        Ok(())
    }

    /// Revokes `fingerprint` with the revocation certificate gpg stored when it made the key.
    pub fn revoke(&self, fingerprint: &str) -> Result<()> {
        let stored = self
            .home()
            .join("openpgp-revocs.d")
            .join(format!("{fingerprint}.rev"));
        // gpg guards the stored certificate with a leading colon against accidental imports.
        let text = std::fs::read_to_string(&stored)?.replace(":-----BEGIN", "-----BEGIN");
        let file = self.home().join("revocation.asc");
        std::fs::write(&file, text)?;
        self.run(&["--import", &file.display().to_string()])?;
        Ok(())
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The sample stores and everything the backup worker needs around them.
pub struct BackupBed {
    /// The eraser's bed: namespace, sample stores, data map, NATS streams, variables.
    pub bed: EraserBed,
    /// The ledger's URL.
    pub ledger_url: String,
    /// The ledger.
    pub ledger: PgPool,
    /// Lethe's bucket, where backups go.
    pub bucket: String,
    /// The operator's GnuPG home.
    pub gpg: Gpg,
    /// The operator key's fingerprint.
    pub fingerprint: String,
    /// Its public certificate, the backup worker's recipient.
    pub public_key: PathBuf,
    /// Its secret key, for restores.
    pub secret_key: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    data_map: PathBuf,
}

impl BackupBed {
    /// Creates the sample stores (empty), the ledger (migrated), Lethe's bucket, the operator
    /// key, and a configuration with the schedule off.
    pub async fn create(services: &Services) -> Result<Self> {
        let bed = EraserBed::create(services).await?;
        let ledger_url = bed.ns().pg_database("ledger").await?;
        let ledger = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&ledger_url)
            .await?;
        lethe_common::ledger::MIGRATOR.run(&ledger).await?;
        let bucket = bed.ns().bucket("lethe").await?;
        let data_map = bed.settings(1)?.data_map_path()?;
        let gpg = Gpg::new()?;
        let fingerprint = gpg.generate(OPERATOR, "0", None)?;
        let dir = tempfile::tempdir()?;
        let public_key = dir.path().join("ops.asc");
        let secret_key = dir.path().join("ops.key");
        gpg.export_public(OPERATOR, &public_key)?;
        gpg.export_secret(OPERATOR, &secret_key)?;
        let config = dir.path().join("lethe.toml");
        let mut this = Self {
            bed,
            ledger_url,
            ledger,
            bucket,
            gpg,
            fingerprint,
            public_key,
            secret_key,
            dir,
            config,
            data_map,
        };
        let text = this.settings_text(r#"schedule = { default = "off" }"#);
        this.write_config(&text)?;
        Ok(this)
    }

    /// A scratch directory of the bed.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the binary is run with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The configuration text: the bed's data map, NATS prefix, ledger and bucket, the
    /// operator's certificate as recipient, and `backups_extra` lines in `[backups]`.
    pub fn settings_text(&self, backups_extra: &str) -> String {
        let services = self.bed.ns().services();
        format!(
            r#"data_map = {map:?}

[privacy]
hash_key = "{HASH_KEY}"

[nats]
url = {nats:?}
prefix = {prefix:?}
ack_wait = "5s"
max_deliver = 3

[ledger]
url = {ledger:?}

[s3]
endpoint = {endpoint:?}
region = {region:?}
bucket = {bucket:?}
access_key_id = {key:?}
secret_access_key = {secret:?}

[backup]
listen = "127.0.0.1:0"
drain_timeout = "20s"

[backups]
recipients = [{recipient:?}, {fixture:?}]
progress_interval = "2s"
{backups_extra}
"#,
            map = self.data_map.display().to_string(),
            nats = services.nats_url,
            prefix = self.bed.ns().nats_prefix(),
            ledger = self.ledger_url,
            endpoint = services.s3.endpoint,
            region = services.s3.region,
            bucket = self.bucket,
            key = services.s3.access_key_id,
            secret = services.s3.secret_access_key,
            recipient = self.public_key.display().to_string(),
            fixture = fixture_recipient().display().to_string(),
        )
    }

    /// Replaces the configuration file.
    pub fn write_config(&mut self, text: &str) -> Result<()> {
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// The settings of the configuration file.
    pub fn settings(&self) -> Result<Settings> {
        let text = std::fs::read_to_string(&self.config)?;
        let mut settings = Settings::from_toml(&text)?;
        settings.credentials = self.bed.credentials().clone();
        Ok(settings)
    }

    /// Runs `lethe-backup --config <bed config> <args>` as an operator would, with the
    /// operator's GnuPG home and the bed's store variables.
    pub fn run_cli(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        Ok(self.cli_command(args, env)?.output()?)
    }

    /// The command [`BackupBed::run_cli`] runs, to spawn it instead.
    pub fn cli_command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Command> {
        let mut command = Command::new(binary("lethe-backup")?);
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("GNUPGHOME", self.gpg.home())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("LETHE__") {
                command.env_remove(key);
            }
        }
        command.envs(self.bed.credential_env());
        for (key, value) in env {
            command.env(key, value);
        }
        Ok(command)
    }

    /// Reads an object of Lethe's bucket.
    pub async fn object(&self, key: &str) -> Result<Vec<u8>> {
        let object = self
            .bed
            .ns()
            .services()
            .s3_client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await?;
        Ok(object.body.collect().await?.into_bytes().to_vec())
    }

    /// Replaces an object of Lethe's bucket.
    pub async fn put_object(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.bed
            .ns()
            .services()
            .s3_client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into())
            .send()
            .await?;
        Ok(())
    }

    /// Removes everything the bed made.
    pub async fn cleanup(self) -> Result<()> {
        self.ledger.close().await;
        self.bed.cleanup().await
    }
}

/// The path of a workspace binary (built before the tests run, as `scripts/test` does).
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = crate::process::binaries_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A private `redis-server` on a free port, loading `dump.rdb` from a directory (a restored
/// RDB); killed on drop.
pub struct RedisServer {
    child: std::process::Child,
    /// Its URL.
    pub url: String,
}

impl RedisServer {
    /// Starts it on `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let client = redis::Client::open(server.url.as_str())?;
        for _ in 0..200 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server on {} did not answer", dir.display())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
