//! `lethe-api`: the HTTP API and coordinator, and the administration of tenants and keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lethe_api::anchors;
use lethe_api::keys::{self, Scope};
use lethe_api::receipt::ReceiptSigner;
use lethe_common::cli::{ConfigArg, report};
use lethe_common::{ledger, shutdown};

/// Lethe api: files data-subject requests, coordinates the workers, reports status.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and run the coordinator (the default).
    Serve,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Print the secret that signs a tenant's webhooks (header `Lethe-Signature`).
    WebhookSecret {
        /// The tenant's name.
        #[arg(long)]
        tenant: String,
    },
    /// Set the URL where the tenant's incident notifications are sent (breach register).
    WebhookUrl {
        /// The tenant's name.
        #[arg(long)]
        tenant: String,
        /// An http(s) URL.
        #[arg(long)]
        url: url::Url,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Seal pending events, then recompute the whole hash chain and report the first broken
    /// link; given signed checkpoints (audit anchors), also report a chain rewritten from its
    /// first event or cut at its end (exit status 1 when anything does not hold).
    Verify {
        /// A file of signed checkpoints (repeatable): one checkpoint, an `audit.checkpoint`
        /// event, a backup manifest, an array of these, or one per line (as `audit checkpoint`
        /// prints them).
        #[arg(long = "checkpoints", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Also check against the latest checkpoint on the events stream.
        #[arg(long)]
        from_events: bool,
        /// Also check against the checkpoint in every backup manifest in Lethe's bucket.
        #[arg(long)]
        from_backups: bool,
        /// The receipt key's public half (PEM, as `GET /v1/receipt-key` gives it in
        /// `public_key_pem`) to check the checkpoints' signatures with; by default the public
        /// half of `api.receipt_signing_key`.
        #[arg(long, value_name = "PEM")]
        public_key: Option<PathBuf>,
    },
    /// Make a signed checkpoint of the chain's head now, publish it on the events stream and
    /// print it (one JSON line: append it to a file kept away from the ledger).
    Checkpoint,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key (and its tenant, if new). Prints the key once, on standard output.
    Create {
        /// The tenant's name.
        #[arg(long)]
        tenant: String,
        /// A name for the key, to recognise it later.
        #[arg(long, default_value = "default")]
        name: String,
        /// Comma-separated scopes: requests:write, requests:read, admin.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "requests:write,requests:read"
        )]
        scopes: Vec<Scope>,
    },
    /// Revoke a key by its prefix (the 12 characters after `lethe_`).
    Revoke {
        /// The key's prefix.
        prefix: String,
    },
}

/// The receipt signer of `[api]`, which also signs audit checkpoints.
fn receipt_signer(settings: &lethe_common::Settings) -> anyhow::Result<ReceiptSigner> {
    let api: lethe_api::settings::ApiSettings = settings.section()?;
    let seed = api
        .receipt_signing_key
        .as_ref()
        .context("api.receipt_signing_key is required to sign and check audit checkpoints")?;
    Ok(ReceiptSigner::from_seed(seed)?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let code = report(run(Cli::parse()).await);
    // After the report, so its error line is exported too.
    lethe_common::telemetry::shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.config.load()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = shutdown::on_signal();
            lethe_api::App::build(&settings).await?.run(shutdown).await
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    checkpoints,
                    from_events,
                    from_backups,
                    public_key,
                },
        } => {
            let key = match &public_key {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    anchors::VerifyingKey::from_pem(&text)
                        .map_err(|why| anyhow::anyhow!("--public-key {}: {why}", path.display()))?
                }
                None => anchors::VerifyingKey::of(&receipt_signer(&settings)?),
            };
            let mut found = Vec::new();
            for path in &checkpoints {
                found.extend(anchors::from_file(path)?);
            }
            if from_events {
                found.extend(anchors::from_events(&settings).await?);
            }
            if from_backups {
                found.extend(anchors::from_backups(&settings).await?);
            }
            let asked = !checkpoints.is_empty() || from_events || from_backups;
            anyhow::ensure!(
                !asked || !found.is_empty(),
                "no audit checkpoint found where asked (--from-events, --from-backups)"
            );
            if !asked {
                eprintln!(
                    "note: no checkpoints given (--checkpoints, --from-events, --from-backups): \
                     a chain rewritten from its first event or cut at its end goes unnoticed"
                );
            }
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            match anchors::verify_chain(&pool, &key, &found)
                .await
                .context("while verifying")?
            {
                anchors::Report::Intact {
                    sealed,
                    unsealed,
                    checkpoints,
                    latest,
                } => {
                    let anchored = match latest {
                        Some((position, at)) => format!(
                            "; agrees with {checkpoints} signed checkpoint(s), the latest at position {position} ({at})"
                        ),
                        None => String::new(),
                    };
                    println!(
                        "audit chain intact: {sealed} events checked, {unsealed} not yet sealed{anchored}"
                    );
                    Ok(())
                }
                anchors::Report::Tampered(what) => anyhow::bail!("{what}"),
            }
        }
        Command::Audit {
            command: AuditCommand::Checkpoint,
        } => {
            let signer = receipt_signer(&settings)?;
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            let names = lethe_common::nats::Names::new(&settings.nats.prefix)?;
            let client = lethe_common::nats::connect(&settings.nats, "lethe-api-audit").await?;
            let publisher = lethe_common::nats::Publisher::new(client, names);
            let checkpoint = anchors::make_and_publish(&pool, &signer, &publisher)
                .await?
                .context("the audit chain has no sealed event yet")?;
            println!("{}", serde_json::to_string(&checkpoint)?);
            Ok(())
        }
        Command::Tenants {
            command: TenantsCommand::WebhookSecret { tenant },
        } => {
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            let secret: Option<Option<String>> =
                sqlx::query_scalar("SELECT webhook_secret FROM tenant WHERE name = $1")
                    .bind(&tenant)
                    .fetch_optional(&pool)
                    .await
                    .context("while reading the tenant")?;
            match secret.flatten() {
                Some(secret) => {
                    println!("{secret}");
                    Ok(())
                }
                None => anyhow::bail!("no tenant named {tenant}"),
            }
        }
        Command::Tenants {
            command: TenantsCommand::WebhookUrl { tenant, url },
        } => {
            // The same policy as every delivery: refused here rather than at the first incident.
            let api: lethe_api::settings::ApiSettings = settings.section()?;
            let policy = lethe_api::webhooks::OutboundPolicy::new(&api.outbound)
                .map_err(|why| anyhow::anyhow!("api.outbound.allow_hosts: {why}"))?;
            if let Err(refusal) = policy.check(url.as_str()).await {
                anyhow::bail!(
                    "--url is refused by the outbound URL policy ([api.outbound]): {refusal}"
                );
            }
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            let updated = sqlx::query("UPDATE tenant SET webhook_url = $2 WHERE name = $1")
                .bind(&tenant)
                .bind(url.as_str())
                .execute(&pool)
                .await
                .context("while storing the webhook URL")?
                .rows_affected();
            anyhow::ensure!(updated > 0, "no tenant named {tenant}");
            eprintln!("incident notifications of tenant {tenant} go to {url}");
            Ok(())
        }
        Command::Keys { command } => {
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            match command {
                KeysCommand::Create {
                    tenant,
                    name,
                    scopes,
                } => {
                    let tenant_id = keys::ensure_tenant(&pool, &tenant)
                        .await
                        .context("while creating the tenant")?;
                    let key = keys::create(&pool, tenant_id, &name, &scopes)
                        .await
                        .context("while storing the key")?;
                    eprintln!(
                        "created key {} for tenant {tenant} ({tenant_id}) with scopes {}; it is shown only now:",
                        key.prefix,
                        scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    println!("{}", key.secret);
                    Ok(())
                }
                KeysCommand::Revoke { prefix } => {
                    if keys::revoke(&pool, &prefix)
                        .await
                        .context("while revoking")?
                    {
                        eprintln!("revoked key {prefix}");
                        Ok(())
                    } else {
                        anyhow::bail!("no live key has prefix {prefix}")
                    }
                }
            }
        }
    }
}
