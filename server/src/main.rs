use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use crdt_hub::app::App;
use crdt_hub::cli::{Cli, Command, DatabaseArgs, ServeArgs};
use crdt_hub::logging;
use crdt_hub::persist::Journal;
use crdt_hub::room::Rooms;
use crdt_hub::server::{self, Outcome};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let url = &args.database.database_url;
    let store = crdt_store::connect(url)
        .await
        .with_context(|| format!("opening storage at {}", crdt_store::redact(url)))?;
    info!(backend = store.backend(), url = %crdt_store::redact(url), "storage ready");
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (journal, journal_task) = Journal::start(store.clone(), args.journal_config());
    let app = App {
        rooms: Rooms::new(
            store.clone(),
            journal.clone(),
            args.room_config(),
            shutdown.clone(),
            tasks.clone(),
        ),
        store,
        journal,
        connection: Arc::new(args.connection_config()),
        max_message_size: args.max_message_size,
        shutdown,
        tasks,
    };
    info!(%addr, "listening; clients connect to ws://{addr}/ROOM");
    match server::run(listener, app, journal_task, server::shutdown_signal()).await {
        Outcome::Clean => Ok(ExitCode::SUCCESS),
        Outcome::SaveFailed => Ok(ExitCode::FAILURE),
    }
}

async fn migrate(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let url = &args.database_url;
    let store = crdt_store::connect(url)
        .await
        .with_context(|| format!("migrating {}", crdt_store::redact(url)))?;
    info!(backend = store.backend(), "migrations applied");
    Ok(ExitCode::SUCCESS)
}
