//! `crdt-hub snapshot …`: list, export, import and restore the versions of
//! stored rooms, against the same database as the server (or, for the
//! current document, imports and restores, through a running server's
//! HTTP API with `--server`).

mod backup;
mod check;
mod client;
mod database;
mod export;
mod import;
mod listing;
mod progress;
mod restore;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use crdt_store::{RoomName, SnapshotId};

pub use backup::{BACKUP_FORMAT, Backup};

const EXAMPLES: &str = "\
Examples:
  crdt-hub snapshot rooms                               stored rooms, newest change first
  crdt-hub snapshot list notes --json                   the versions of room \"notes\" as JSON
  crdt-hub snapshot export notes -o notes.ybin          the current document as a Yjs update
  crdt-hub snapshot export notes --version 42 --format msgpack -o v42.msgpack
  crdt-hub snapshot export notes --format json          the content as JSON, on stdout
  crdt-hub snapshot import notes-copy notes.ybin        merge a file into a room
  crdt-hub snapshot restore notes --version 42          roll \"notes\" back to version 42
  crdt-hub snapshot restore notes --version 42 --server http://127.0.0.1:1234
                                                        the same, live: clients see it at once
  crdt-hub snapshot check                               does every stored room load; what waits

Every restore first saves the current state as a version; restoring that
version undoes the restore. Use --server whenever a server is running: a
restore or import written to the database directly reaches that server's
clients only after the room was unloaded (--room-idle-timeout).";

/// Manage versions (snapshots) of stored rooms.
#[derive(Debug, Args)]
#[command(
    // `--version ID` picks a version: no `--version` flag printing ours.
    disable_version_flag = true,
    long_about = "Manage the versions of stored rooms: list them, export a version or the \
                  current document (Yjs update, msgpack backup or JSON), import a file into a \
                  room (a CRDT merge), and restore a room to an earlier version (a new edit on \
                  top of the current state, so connected clients converge to the version \
                  without reloading and nothing is lost).",
    after_help = EXAMPLES
)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,

    /// Where documents are stored: sqlite://PATH or postgres://USER@HOST:PORT/DB
    /// (the server's --database-url).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite://crdt-hub.db"
    )]
    pub database_url: String,

    /// A running server's base URL (http://HOST:PORT): imports and restores go
    /// through its HTTP API, so connected clients see them at once; `export`
    /// without --version reads its live document.
    #[arg(long, global = true, env = "CRDT_HUB_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token for --server when it requires authentication (an admin token).
    #[arg(
        long,
        global = true,
        env = "CRDT_HUB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stored rooms: name, last change, number of versions, stored size.
    #[command(after_help = "Example:\n  crdt-hub snapshot rooms --json")]
    Rooms {
        /// A JSON array of {room, updated_at, snapshots, size, updates} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A room's versions, newest first: id, creation time, size, update
    /// count, and which version a restore brought back.
    #[command(
        after_help = "Example:\n  crdt-hub snapshot list notes\n  crdt-hub snapshot list notes --json"
    )]
    List {
        /// The room, as clients name it (not percent-encoded).
        room: String,
        /// A JSON array of {id, room, created_at, size, updates, restored_from}.
        #[arg(long)]
        json: bool,
    },
    /// Write a version, or the current document, to a file or stdout.
    #[command(
        disable_version_flag = true,
        long_about = "Write a version, or without --version the current document (latest \
                      version plus every update after it, or the live document of --server), \
                      to a file or stdout. Formats: ybin, the raw Yjs v1 update \
                      (Y.applyUpdate loads it); msgpack, a backup envelope {format, room, \
                      version, created_at, state_vector, state} that `import` reads back; \
                      json, the content as JSON. Binary output is not written to a terminal.",
        after_help = "Examples:\n  crdt-hub snapshot export notes -o notes.ybin\n  \
                      crdt-hub snapshot export notes --version 42 --format msgpack > v42.msgpack\n  \
                      crdt-hub snapshot export notes --format json"
    )]
    Export {
        /// The room, as clients name it (not percent-encoded).
        room: String,
        /// A version id (see `list`); default: the current document.
        #[arg(long)]
        version: Option<SnapshotId>,
        #[arg(long, value_enum, default_value = "ybin")]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Merge a ybin or msgpack file into a room (a CRDT merge: nothing in
    /// the room is overwritten).
    #[command(
        long_about = "Merge a file written by `export` (ybin or msgpack, detected from its \
                      content) into a room, creating the room if needed. This is a CRDT merge: \
                      content already in the room stays, content from the file is added, and \
                      importing the same file twice changes nothing. The file is validated \
                      before anything is written.",
        after_help = "Examples:\n  crdt-hub snapshot import notes-copy notes.ybin\n  \
                      crdt-hub snapshot import notes v42.msgpack --server http://127.0.0.1:1234"
    )]
    Import {
        /// The room, as clients name it (not percent-encoded).
        room: String,
        /// A file written by `export` (ybin or msgpack).
        file: PathBuf,
    },
    /// Whether each stored room loads, and what in it waits for updates
    /// that never arrived.
    #[command(
        long_about = "Load every stored room (or one) the way the server does and report \
                      whether it loads, and what in it waits: parts of updates whose earlier \
                      part, or an item they build on, never reached the server. Everything \
                      complete is served either way; a waiting part joins the document once \
                      the update it needs arrives (for example when its writer reconnects). \
                      Exits non-zero when some room does not load at all.",
        after_help = "Examples:\n  crdt-hub snapshot check\n  crdt-hub snapshot check notes --json"
    )]
    Check {
        /// One room, as clients name it; default: every stored room.
        room: Option<String>,
        /// A JSON array of {room, loads, document_bytes, waiting: [{bytes,
        /// needs: [{client, clock}]}]} (or {room, loads: false, error}).
        #[arg(long)]
        json: bool,
    },
    /// Bring a room's content back to a version, as a new edit.
    #[command(
        disable_version_flag = true,
        long_about = "Bring a room's content back to one of its versions. The restore is a new \
                      edit on top of the current state that deletes what came later and \
                      re-inserts what was deleted since, so clients converge to the version \
                      without reloading. The state before the restore is saved as a version \
                      first (restore it to undo), and the result is saved as a version marked \
                      `restored_from`. With --server the room is restored live; without it the \
                      database is changed directly (a running server's clients see that only \
                      after the room is reloaded).",
        after_help = "Examples:\n  crdt-hub snapshot restore notes --version 42\n  \
                      crdt-hub snapshot restore notes --version 42 --into notes-v42\n  \
                      crdt-hub snapshot restore notes --version 42 --server http://127.0.0.1:1234"
    )]
    Restore {
        /// The room, as clients name it (not percent-encoded).
        room: String,
        /// The version to bring back (see `list`).
        #[arg(long)]
        version: SnapshotId,
        /// Restore the version's content into this room instead.
        #[arg(long, value_name = "ROOM")]
        into: Option<String>,
        /// Versions kept per room (the server's --keep-snapshots); older ones are pruned.
        #[arg(long, env = "CRDT_HUB_KEEP_SNAPSHOTS", default_value = "20")]
        keep_snapshots: usize,
    },
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The raw Yjs v1 update.
    Ybin,
    /// A msgpack backup envelope with the state and its metadata.
    Msgpack,
    /// The document's content as JSON.
    Json,
}

/// Runs a `snapshot` subcommand; errors are printed to stderr.
pub async fn run(args: SnapshotArgs) -> ExitCode {
    match dispatch(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: SnapshotArgs) -> anyhow::Result<()> {
    let target = Target {
        database_url: args.database_url,
        server: args
            .server
            .map(|url| client::ServerClient::new(&url, args.token))
            .transpose()?,
    };
    match args.command {
        SnapshotCommand::Rooms { json } => listing::rooms(&target, json).await,
        SnapshotCommand::List { room, json } => {
            listing::versions(&target, &parse_room(&room)?, json).await
        }
        SnapshotCommand::Export {
            room,
            version,
            format,
            output,
        } => {
            export::run(
                &target,
                &parse_room(&room)?,
                version,
                format,
                output.as_deref(),
            )
            .await
        }
        SnapshotCommand::Check { room, json } => {
            let room = room.as_deref().map(parse_room).transpose()?;
            check::run(&target, room.as_ref(), json).await
        }
        SnapshotCommand::Import { room, file } => {
            import::run(&target, &parse_room(&room)?, &file).await
        }
        SnapshotCommand::Restore {
            room,
            version,
            into,
            keep_snapshots,
        } => {
            let into = into.as_deref().map(parse_room).transpose()?;
            restore::run(
                &target,
                &parse_room(&room)?,
                version,
                into,
                keep_snapshots.max(1),
            )
            .await
        }
    }
}

/// Where a command reads and writes.
struct Target {
    database_url: String,
    server: Option<client::ServerClient>,
}

fn parse_room(name: &str) -> anyhow::Result<RoomName> {
    RoomName::parse(name).map_err(|e| anyhow::anyhow!("invalid room name {name:?}: {e}"))
}
