//! The `crdt-hub` command: parse the command line, start the runtime, run
//! the subcommand. In the library so that the `crdt-hub` binary and the
//! test crate's copy of it (`tests/`, which runs the server as a process)
//! are one program.

use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{App, AppConfig};
use crate::auth::Verifier;
use crate::cli::{Cli, Command, DatabaseArgs, ServeArgs};
use crate::cli_security::TokenArgs;
use crate::logging;
use crate::room::{RoomConfig, RoomThreads};
use crate::server::{self, Outcome};
use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

/// Parses the command line, starts the runtime and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Serve(args) = &cli.command
        && let Some(threads) = args.worker_threads
    {
        runtime.worker_threads(threads.get());
    }
    let runtime = match runtime.build() {
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
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Token(args) => token(args),
        Command::Snapshot(args) => Ok(crate::snapshot::run(args).await),
        Command::Webhooks(args) => crate::webhooks::cli::run(args).await,
    }
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let token =
        crate::auth::mint_hs256_for(&args.auth_secret, args.rooms, args.role, args.ttl, args.sub)
            .context("minting the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The token verifier the flags ask for; `None` serves anonymously.
fn verifier(args: &ServeArgs) -> anyhow::Result<Option<Arc<Verifier>>> {
    let auth = &args.auth;
    let verifier = match (&auth.auth_secret, &auth.auth_public_key, &auth.auth_jwks) {
        (Some(secret), _, _) => Some(Verifier::hs256(secret).context("--auth-secret")?),
        (None, Some(path), _) => {
            Some(Verifier::from_public_key_file(path).context("--auth-public-key")?)
        }
        (None, None, Some(path)) => Some(Verifier::from_jwks_file(path).context("--auth-jwks")?),
        (None, None, None) => None,
    }
    .map(|verifier| verifier.with_leeway(args.auth.auth_leeway));
    if verifier.is_none() {
        if args.auth.require_auth {
            anyhow::bail!(
                "--require-auth is set but none of --auth-secret, --auth-public-key and --auth-jwks is given"
            );
        }
        warn!(
            "no authentication configured: anyone who can reach this port can read and write every room (set --auth-secret or --auth-public-key)"
        );
    }
    Ok(verifier.map(Arc::new))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Before any socket or database file is opened: each takes a descriptor.
    crate::nofile::raise_and_log();
    let webhooks = args.webhooks.webhook_config()?;
    let url = &args.database.database_url;
    let options = crdt_store::StoreOptions {
        sqlite_cache_bytes: args.sqlite_cache_size,
    };
    let store = crdt_store::connect_with(url, &options)
        .await
        .with_context(|| format!("opening storage at {}", crdt_store::redact(url)))?;
    info!(backend = store.backend(), url = %crdt_store::redact(url), "storage ready");
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let auth = verifier(&args)?;
    let tls = match (&args.tls.tls_cert, &args.tls.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::acceptor(cert, key).context("loading TLS certificate and key")?)
        }
        _ => None,
    };
    let cluster = match &args.cluster.redis_url {
        Some(url) => {
            let ca = match &args.cluster.redis_ca_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("--redis-ca-file {}", path.display()))?,
                ),
                None => None,
            };
            let cluster = crate::cluster::Cluster::new(
                url,
                args.cluster.redis_cluster,
                args.cluster.cluster_config(),
                ca,
            )
            .context("--redis-url")?;
            info!(node = cluster.node(), prefix = %cluster.config().prefix, "cluster mode: rooms are shared through Redis");
            Some(cluster)
        }
        None => None,
    };
    let threads = RoomThreads::start(args.room_threads).context("starting room threads")?;
    if threads.count() > 0 {
        info!(
            room_threads = threads.count(),
            "rooms and their connections run on threads of their own (--room-threads)"
        );
    }
    let (app, journal_task) = App::build(
        store,
        AppConfig {
            room: RoomConfig {
                threads,
                ..args.room_config()
            },
            journal: args.journal_config(),
            connection: args.connection_config(),
            http: args.http_limits(),
            limits: args.limits.limits_config(args.max_message_size),
            room_max_connections: args.limits.max_connections_per_room.max(1),
            max_message_size: args.max_message_size,
            auth,
            allowed_origins: args.auth.allowed_origins.clone(),
            tls: tls.clone(),
            revocation_refresh: args.revocation_refresh,
            cluster,
            webhooks,
        },
    )
    .await?;
    let signals = server::shutdown_signal().context("installing signal handlers")?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!(%addr, "listening; clients connect to {scheme}://{addr}/ROOM");
    match server::run(listener, app, journal_task, signals).await {
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
