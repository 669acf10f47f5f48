//! `audit verify` against checkpoints: every checkpoint's signature first, then the chain
//! recomputed from its start must pass through each checkpoint's hash and reach the last.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use sqlx::PgPool;

use super::{Found, VerifyingKey};
use crate::audit::{self, Anchor, Verification};

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The chain holds, and agrees with every checkpoint given.
    Intact {
        /// Events checked.
        sealed: u64,
        /// Events not sealed yet.
        unsealed: u64,
        /// Checkpoints checked (after removing duplicates).
        checkpoints: usize,
        /// The latest of them: position and time.
        latest: Option<(i64, String)>,
    },
    /// Tampering or damage: what and where, for the operator.
    Tampered(String),
}

/// Checks every checkpoint's signature with `key`, then seals what is pending and checks the
/// chain from its start against the checkpoints. A checkpoint that is not signed by the key,
/// and two signed checkpoints stating different hashes for the same position, are tampering
/// too.
pub async fn verify_chain(
    pool: &PgPool,
    key: &VerifyingKey,
    found: &[Found],
) -> anyhow::Result<Report> {
    let mut anchors: BTreeMap<i64, (Anchor, &Found)> = BTreeMap::new();
    for item in found {
        let checkpoint = &item.checkpoint;
        if let Err(why) = key.check(checkpoint) {
            return Ok(Report::Tampered(format!(
                "the checkpoint of position {} from {} is not valid: {why}",
                checkpoint.chain_pos, item.source
            )));
        }
        let Ok(hash) = hex::decode(&checkpoint.head_hash) else {
            return Ok(Report::Tampered(format!(
                "the checkpoint of position {} from {} has a head hash that is not hex",
                checkpoint.chain_pos, item.source
            )));
        };
        let anchor = Anchor {
            hash,
            at: checkpoint.at,
        };
        match anchors.get(&checkpoint.chain_pos) {
            Some((other, first)) if other.hash != anchor.hash => {
                return Ok(Report::Tampered(format!(
                    "two signed checkpoints state different heads for position {} ({} and {}): \
                     the chain was rewritten between them",
                    checkpoint.chain_pos, first.source, item.source
                )));
            }
            Some(_) => {}
            None => {
                anchors.insert(checkpoint.chain_pos, (anchor, item));
            }
        }
    }
    while audit::seal(pool).await? > 0 {}
    let positions: BTreeMap<i64, Anchor> = anchors
        .iter()
        .map(|(pos, (anchor, _))| (*pos, anchor.clone()))
        .collect();
    let when = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(SecondsFormat::Secs, true);
    Ok(match audit::verify_against(pool, &positions).await? {
        Verification::Intact { sealed, unsealed } => Report::Intact {
            sealed,
            unsealed,
            checkpoints: anchors.len(),
            latest: anchors
                .last_key_value()
                .map(|(pos, (anchor, _))| (*pos, when(anchor.at))),
        },
        Verification::Broken {
            chain_pos,
            seq,
            problem,
        } => Report::Tampered(format!(
            "audit chain broken at chain position {chain_pos} (event seq {seq}): {problem}"
        )),
        Verification::Cut {
            ends_at,
            anchored,
            anchored_at,
        } => {
            let source = anchors
                .get(&anchored)
                .map_or_else(String::new, |(_, f)| format!(" (from {})", f.source));
            Report::Tampered(format!(
                "audit chain cut: it ends at position {ends_at}, but the signed checkpoint of {}{source} \
                 states position {anchored}: events were removed from its end",
                when(anchored_at)
            ))
        }
    })
}
