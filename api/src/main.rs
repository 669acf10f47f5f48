//! `lethe-api`: the HTTP API and coordinator, and the administration of tenants and keys.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lethe_api::audit::Verification;
use lethe_api::keys::{self, Scope};
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
    /// link (exit status 1 when the chain is broken).
    Verify,
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
            command: AuditCommand::Verify,
        } => {
            let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
            while lethe_api::audit::seal(&pool)
                .await
                .context("while sealing")?
                > 0
            {}
            match lethe_api::audit::verify(&pool)
                .await
                .context("while verifying")?
            {
                Verification::Intact { sealed, unsealed } => {
                    println!(
                        "audit chain intact: {sealed} events checked, {unsealed} not yet sealed"
                    );
                    Ok(())
                }
                Verification::Broken {
                    chain_pos,
                    seq,
                    problem,
                } => anyhow::bail!(
                    "audit chain broken at chain position {chain_pos} (event seq {seq}): {problem}"
                ),
            }
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
