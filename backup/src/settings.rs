//! The backup daemon's own section of the configuration file, `[backups]` (its worker
//! section, `[backup]`, has the shape every worker's has).

use std::path::PathBuf;
use std::time::Duration;

use lethe_common::config::{DEFAULT_BACKUPS_PREFIX, Section};
use serde::Deserialize;

pub use lethe_common::openpgp::SeipdVersion;

/// A size in bytes, written as a whole number of bytes or with a binary unit (`8MiB`,
/// `512 KiB`, `1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `8MiB`, `512 KiB`, `1GiB`, `4096` or `4096B`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size (write e.g. 8MiB or 8388608)"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// The programs the backup daemon runs: names looked up on `PATH`, or absolute paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupTools {
    /// PostgreSQL dumps.
    pub pg_dump: PathBuf,
    /// PostgreSQL restores.
    pub pg_restore: PathBuf,
    /// MariaDB / MySQL dumps.
    pub mariadb_dump: PathBuf,
    /// MariaDB / MySQL restores (the command-line client).
    pub mariadb: PathBuf,
    /// Redis RDB transfers.
    pub redis_cli: PathBuf,
    /// The Redis server a restore starts on the restored RDB to replay erasures.
    pub redis_server: PathBuf,
    /// GnuPG, for decrypting with the operator's agent (`--gpg`).
    pub gpg: PathBuf,
}

impl Default for BackupTools {
    fn default() -> Self {
        Self {
            pg_dump: "pg_dump".into(),
            pg_restore: "pg_restore".into(),
            mariadb_dump: "mariadb-dump".into(),
            mariadb: "mariadb".into(),
            redis_cli: "redis-cli".into(),
            redis_server: "redis-server".into(),
            gpg: "gpg".into(),
        }
    }
}

/// The backup daemon's backups (`[backups]`). The `[backup]` section holds its operations
/// address, the stores it backs up and its drain timeout, as for every worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsSettings {
    /// Files holding the operators' OpenPGP certificates (public keys only, ASCII-armored or
    /// binary; a file may hold several), relative to the configuration file. Every backup is
    /// encrypted to every one of them. The daemon refuses to start without one, or with one
    /// that is expired, revoked, unusable for encryption, or holding secret key material.
    pub recipients: Vec<PathBuf>,
    /// The packet format of the encrypted data.
    pub seipd: SeipdVersion,
    /// When each store is backed up: store name (or `default`, for every store not named) ->
    /// an interval (`24h`), a cron expression evaluated in UTC (`30 2 * * *`), or `off`.
    pub schedule: std::collections::BTreeMap<String, String>,
    /// How long a backup is kept: its `expires_at` is its start plus this.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Key prefix of backups and manifests in Lethe's bucket.
    pub prefix: String,
    /// Size of the first multipart-upload parts; later parts grow so that any backup stays
    /// under S3's 10,000-part limit. At least 5 MiB.
    pub part_size: ByteSize,
    /// Parts uploaded at once (memory holds this many parts plus the one being filled).
    pub upload_concurrency: usize,
    /// zstd compression level (1-19).
    pub zstd_level: i32,
    /// zstd worker threads (0: compress on the pipeline's own thread).
    pub zstd_workers: u32,
    /// Backups this process runs at once.
    pub concurrency: usize,
    /// How often a running backup logs its progress.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// The programs run.
    pub tools: BackupTools,
}

impl Default for BackupsSettings {
    fn default() -> Self {
        Self {
            recipients: Vec::new(),
            seipd: SeipdVersion::default(),
            schedule: std::collections::BTreeMap::from([("default".to_owned(), "24h".to_owned())]),
            max_age: Duration::from_secs(7 * 24 * 3600),
            prefix: DEFAULT_BACKUPS_PREFIX.to_owned(),
            part_size: ByteSize(8 << 20),
            upload_concurrency: 2,
            zstd_level: 3,
            zstd_workers: 2,
            concurrency: 1,
            progress_interval: Duration::from_secs(30),
            tools: BackupTools::default(),
        }
    }
}

impl Section for BackupsSettings {
    const KEY: &'static str = "backups";

    fn absent() -> Self {
        Self::default()
    }
}
