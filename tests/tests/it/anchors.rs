//! Audit anchors: signed checkpoints of the audit chain's head on the events stream, in every
//! backup's manifest and in a file an operator keeps; `lethe-api audit verify` checks the
//! chain against them. Without them, someone who can write the ledger can rewrite the chain
//! from its first event (with consistent hashes) or cut its end unnoticed; with them, both are
//! reported.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use lethe_common::anchors::Checkpoint;
use lethe_tests::Services;
use lethe_tests::e2e::{Daemon, Deployment, Options};

/// A deployment whose audit chain has a few requests' worth of events, anchored three ways:
/// the api's checkpoint on the events stream, a backup's manifest, and a file.
struct Anchored {
    deployment: Deployment,
    /// What `lethe-api audit checkpoint` printed, kept as an operator would.
    file: PathBuf,
    /// The manifest's checkpoint.
    from_backup: Checkpoint,
}

async fn anchored() -> Result<Anchored> {
    let services = Services::from_env();
    let mut deployment = Deployment::create(
        &services,
        Options {
            subjects: 4,
            ..Options::default()
        },
    )
    .await?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;
    for i in 1..=3 {
        let id = deployment.file_erasure(i).await?;
        deployment
            .wait_completed(&id, Duration::from_secs(60))
            .await?;
    }

    // A backup asks the api for a checkpoint and writes it into its manifest.
    let backup = deployment
        .command(Daemon::Backup)?
        .args(["run", "--store", "accounts"])
        .output()
        .await?;
    ensure!(
        backup.status.success(),
        "lethe-backup run: {}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&backup.stdout)?;
    let manifest_key = summary["manifest_key"].as_str().context("manifest_key")?;
    let manifest = deployment
        .ns()
        .services()
        .s3_client()
        .get_object()
        .bucket(&deployment.bucket)
        .key(manifest_key)
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    let from_backup: Checkpoint = serde_json::from_value(manifest["audit_checkpoint"].clone())
        .with_context(|| format!("the manifest has no checkpoint: {manifest}"))?;
    let sealed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_event WHERE chain_pos IS NOT NULL")
            .fetch_one(&deployment.ledger)
            .await?;
    ensure!(
        from_backup.chain_pos > 0 && from_backup.chain_pos <= sealed,
        "the manifest's checkpoint is at {} of {sealed} sealed events",
        from_backup.chain_pos
    );

    // One more request, then a checkpoint an operator keeps in a file.
    let id = deployment.file_erasure(4).await?;
    deployment
        .wait_completed(&id, Duration::from_secs(60))
        .await?;
    let printed = deployment.admin(&["audit", "checkpoint"]).await?;
    let file = deployment.dir().join("checkpoints.ndjson");
    std::fs::write(&file, &printed)?;
    let kept: Checkpoint = serde_json::from_str(printed.trim())?;
    ensure!(
        kept.chain_pos > from_backup.chain_pos,
        "the later checkpoint ({}) is not past the backup's ({})",
        kept.chain_pos,
        from_backup.chain_pos
    );
    Ok(Anchored {
        deployment,
        file,
        from_backup,
    })
}

/// `lethe-api --config <config> audit verify <args>`: whether it succeeded, and its standard
/// output and error together.
async fn verify(deployment: &Deployment, args: &[&str]) -> Result<(bool, String)> {
    let output = deployment
        .command(Daemon::Api)?
        .args(["audit", "verify"])
        .args(args)
        .output()
        .await?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Seals again every event from the first on, as someone who rewrote the chain would: the
/// links and hashes are consistent, so the chain alone checks out.
async fn reseal_from_the_start(deployment: &Deployment) -> Result<()> {
    sqlx::query("UPDATE audit_event SET chain_pos = NULL, prev_hash = NULL, hash = NULL")
        .execute(&deployment.ledger)
        .await?;
    while lethe_api::audit::seal(&deployment.ledger).await? > 0 {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untampered_chain_verifies_against_its_checkpoints_from_files_events_and_backups()
-> Result<()> {
    let Anchored {
        deployment,
        file,
        from_backup,
    } = anchored().await?;

    // Anyone can check a checkpoint with the published key and openssl.
    let (_, key) = deployment.get("/v1/receipt-key").await?;
    let check = deployment.dir().join("checkpoint");
    std::fs::create_dir_all(&check)?;
    std::fs::write(
        check.join("key.pem"),
        key["public_key_pem"].as_str().context("pem")?,
    )?;
    std::fs::write(check.join("payload"), from_backup.payload())?;
    std::fs::write(
        check.join("sig"),
        base64::engine::general_purpose::STANDARD.decode(&from_backup.signature)?,
    )?;
    let openssl = Command::new("openssl")
        .current_dir(&check)
        .args([
            "pkeyutl", "-verify", "-pubin", "-inkey", "key.pem", "-rawin",
        ])
        .args(["-in", "payload", "-sigfile", "sig"])
        .output()?;
    ensure!(
        openssl.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&openssl.stderr)
    );

    let file = file.display().to_string();
    let pem = check.join("key.pem").display().to_string();
    let (ok, out) = verify(
        &deployment,
        &[
            "--checkpoints",
            &file,
            "--from-events",
            "--from-backups",
            "--public-key",
            &pem,
        ],
    )
    .await?;
    ensure!(ok, "audit verify failed on an untampered chain: {out}");
    ensure!(
        out.contains("audit chain intact") && out.contains("signed checkpoint"),
        "{out}"
    );
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_rewritten_from_its_first_event_is_reported_given_checkpoints() -> Result<()> {
    let Anchored {
        mut deployment,
        file,
        ..
    } = anchored().await?;
    // Nobody signs the forged chain afterwards.
    deployment.stop(Daemon::Api)?;

    sqlx::query(
        "UPDATE audit_event SET detail = detail || '{\"note\": \"rewritten\"}'::jsonb
         WHERE chain_pos = 1",
    )
    .execute(&deployment.ledger)
    .await?;
    reseal_from_the_start(&deployment).await?;

    // The chain alone checks out: this is what the checkpoints are for.
    let (ok, out) = verify(&deployment, &[]).await?;
    ensure!(ok && out.contains("audit chain intact"), "{out}");
    for args in [
        vec!["--from-backups"],
        vec!["--from-events"],
        vec!["--checkpoints", file.to_str().context("path")?],
    ] {
        let (ok, out) = verify(&deployment, &args).await?;
        ensure!(
            !ok,
            "audit verify {args:?} accepted a rewritten chain: {out}"
        );
        ensure!(
            out.contains("the chain was rewritten"),
            "audit verify {args:?}: {out}"
        );
    }
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_whose_last_events_were_deleted_is_reported_given_checkpoints() -> Result<()> {
    let Anchored {
        mut deployment,
        file,
        from_backup,
    } = anchored().await?;
    deployment.stop(Daemon::Api)?;

    // Cut the chain back to before the backup's checkpoint.
    let deleted = sqlx::query("DELETE FROM audit_event WHERE chain_pos >= $1")
        .bind(from_backup.chain_pos - 1)
        .execute(&deployment.ledger)
        .await?
        .rows_affected();
    ensure!(deleted >= 2, "{deleted} events deleted");

    let (ok, out) = verify(&deployment, &[]).await?;
    ensure!(ok && out.contains("audit chain intact"), "{out}");
    for args in [
        vec!["--from-backups"],
        vec!["--from-events"],
        vec!["--checkpoints", file.to_str().context("path")?],
    ] {
        let (ok, out) = verify(&deployment, &args).await?;
        ensure!(!ok, "audit verify {args:?} accepted a cut chain: {out}");
        ensure!(
            out.contains("audit chain cut") && out.contains("removed from its end"),
            "audit verify {args:?}: {out}"
        );
    }

    // A forged checkpoint (signed by another key) is reported, not trusted.
    let forged = deployment.dir().join("forged.json");
    let mut other = from_backup.clone();
    other.chain_pos = 1;
    std::fs::write(&forged, serde_json::to_vec(&other)?)?;
    let (ok, out) = verify(
        &deployment,
        &["--checkpoints", forged.to_str().context("path")?],
    )
    .await?;
    ensure!(
        !ok && out.contains("is not valid") && out.contains("does not match"),
        "{out}"
    );
    deployment.cleanup().await
}
