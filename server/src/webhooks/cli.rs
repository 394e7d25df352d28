//! `crdt-hub webhooks list|redeliver`: the outbox, straight from the
//! database (like `crdt-hub snapshot`), so it works with the server down.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use crdt_store::{Redeliver, WebhookRecord};

use crate::units::parse_duration;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

/// The server's database (the same flag as `serve`'s; not shared with it
/// so that this module does not depend on the command line's).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Where the server stores documents and its webhook outbox.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://crdt-hub.db")]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// The newest webhook events and where they stand.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only dead-lettered events and those whose last attempt failed.
        #[arg(long)]
        failed: bool,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Most events shown.
        #[arg(long, default_value = "100")]
        limit: usize,
    },
    /// Sends events again: one by its number (the first column of `list`),
    /// or every failed one. A running server picks them up within a second.
    Redeliver {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The event's number.
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<i64>,
        /// Every dead-lettered event, and every pending one that failed
        /// (sent now rather than after its backoff).
        #[arg(long)]
        all_failed: bool,
        /// How long the redelivered events are tried before they are
        /// dead-lettered again (the server's --webhook-max-age).
        #[arg(long, env = "CRDT_HUB_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
        webhook_max_age: Duration,
    },
}

/// Runs the subcommand; errors are printed by the caller.
///
/// # Errors
/// The database cannot be opened or read.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WebhooksCommand::List {
            database,
            failed,
            json,
            limit,
        } => {
            let store = open(&database).await?;
            let records = store
                .webhooks(failed, limit)
                .await
                .context("reading the webhook outbox")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", table(&records));
            }
            Ok(ExitCode::SUCCESS)
        }
        WebhooksCommand::Redeliver {
            database,
            id,
            all_failed,
            webhook_max_age,
        } => {
            let store = open(&database).await?;
            let which = match id {
                Some(id) if !all_failed => Redeliver::One(id),
                _ => Redeliver::AllFailed,
            };
            let now = chrono::Utc::now();
            let expires = now + chrono::Duration::from_std(webhook_max_age).unwrap_or_default();
            let count = store
                .redeliver_webhooks(which, now, expires)
                .await
                .context("updating the webhook outbox")?;
            match (which, count) {
                (Redeliver::One(id), 0) => {
                    eprintln!("no webhook event number {id} (see `crdt-hub webhooks list`)");
                    Ok(ExitCode::FAILURE)
                }
                _ => {
                    println!("{count} event(s) queued for delivery");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

async fn open(database: &DatabaseArgs) -> anyhow::Result<std::sync::Arc<dyn crdt_store::Store>> {
    let url = &database.database_url;
    crdt_store::connect(url)
        .await
        .with_context(|| format!("opening {}", crdt_store::redact(url)))
}

fn table(records: &[WebhookRecord]) -> String {
    let mut out = format!(
        "{:>8}  {:<9}  {:>8}  {:<20}  {:<24}  {:<20}  {}\n",
        "NUMBER", "STATE", "ATTEMPTS", "EVENT", "ROOM", "CREATED", "LAST ERROR"
    );
    for r in records {
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>8}  {:<9}  {:>8}  {:<20}  {:<24}  {:<20}  {}\n",
            r.id,
            state,
            r.attempts,
            r.event,
            r.room,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}
