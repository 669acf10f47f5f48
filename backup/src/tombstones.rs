//! Reading tombstones back for a replay: listed by the time in their names, decrypted with the
//! operator's key (the secret key file or their own `gpg`, as for backups), parsed.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Stdio;

use chrono::{DateTime, Utc};
use lethe_common::openpgp::SecretKeys;
use lethe_common::s3::{self as s3util, Client};
use lethe_common::tombstone::{self, Tombstone};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::restore::Decrypt;

/// A tombstone is a few hundred bytes: this holds any of them whole.
const BUFFER: usize = 1 << 20;

/// Opens tombstones with the operator's key.
pub enum Opener {
    /// The secret keys of a file.
    Keys(Box<SecretKeys>),
    /// The operator's `gpg` and its agent.
    Gpg(PathBuf),
}

impl Opener {
    /// The opener of `decrypt` (`gpg` is the program run for [`Decrypt::Gpg`]).
    pub fn new(decrypt: &Decrypt, gpg: PathBuf) -> anyhow::Result<Self> {
        Ok(match decrypt {
            Decrypt::SecretKey { path, passphrase } => {
                use secrecy::ExposeSecret as _;
                Opener::Keys(Box::new(SecretKeys::load(
                    path,
                    passphrase.as_ref().map(|p| p.expose_secret()),
                )?))
            }
            Decrypt::Gpg => Opener::Gpg(gpg),
        })
    }

    /// The plaintext of one sealed tombstone.
    async fn open(&mut self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Opener::Keys(keys) => {
                let mut plaintext = Vec::new();
                keys.decrypt(sealed, BUFFER)?.read_to_end(&mut plaintext)?;
                Ok(plaintext)
            }
            Opener::Gpg(program) => {
                let mut child = Command::new(&*program)
                    .args(["--batch", "--quiet", "--no-tty", "--decrypt"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
                let mut stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("gpg has no standard input"))?;
                let body = sealed.to_vec();
                let feed = tokio::spawn(async move {
                    stdin.write_all(&body).await?;
                    stdin.shutdown().await
                });
                let output = child.wait_with_output().await?;
                feed.await??;
                if !output.status.success() {
                    anyhow::bail!(
                        "gpg --decrypt failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
                Ok(output.stdout)
            }
        }
    }
}

/// What a replay reads of the tombstones.
#[derive(Debug, Default)]
pub struct Read {
    /// Every tombstone completed at or after the time asked for, in order of completion.
    pub tombstones: Vec<Tombstone>,
    /// Objects under the prefix whose names are no tombstone's (left alone).
    pub foreign: usize,
}

/// Every tombstone completed at or after `since`, decrypted, in order of completion (the
/// request id breaks ties). A tombstone that cannot be read fails the whole read: a replay that
/// skipped one could leave a change undone.
pub async fn since(
    s3: &Client,
    bucket: &str,
    since: DateTime<Utc>,
    opener: &mut Opener,
) -> anyhow::Result<Read> {
    let keys = s3util::list_keys_under(s3, bucket, tombstone::PREFIX)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list the tombstones: {}",
                s3util::TransferError::from_sdk("listing tombstones", &e)
            )
        })?;
    let mut read = Read::default();
    let mut wanted = Vec::new();
    for key in keys {
        match tombstone::key_parts(&key) {
            Some((at, id)) if at >= since => wanted.push((at, id, key)),
            Some(_) => {}
            None => read.foreign += 1,
        }
    }
    wanted.sort();
    for (_, _, key) in wanted {
        let sealed = s3util::get_small(s3, bucket, &key).await?;
        let plaintext = opener
            .open(&sealed)
            .await
            .map_err(|e| anyhow::anyhow!("cannot decrypt the tombstone {key}: {e:#}"))?;
        let tombstone = Tombstone::parse(&plaintext)
            .map_err(|e| anyhow::anyhow!("the tombstone {key}: {e:#}"))?;
        read.tombstones.push(tombstone);
    }
    Ok(read)
}
