//! `check`: whether each stored room loads, and what in it waits for
//! updates that never arrived.
//!
//! A room loads when its snapshot and log decode and apply; everything
//! complete in them is then served. What waits (parts of updates whose
//! earlier part, or an id they build on, is missing) is listed with what
//! it waits for, so that an operator can find the writer that lost it.

use anyhow::{Context, bail};
use crdt_store::RoomName;
use serde_json::{Value, json};

use super::Target;
use super::database::{open, require_room};
use super::listing::{Table, human_size, print_json};
use super::progress::Progress;
use crate::persist::{self, LoadError};
use crate::room::core::StoredUpdateError;
use crate::room::held::Waiting;

/// One room's verdict.
struct Checked {
    room: RoomName,
    outcome: Result<Loaded, StoredUpdateError>,
}

struct Loaded {
    /// The integrated document, encoded.
    document_bytes: usize,
    waiting: Vec<Part>,
}

/// A part of an update that waits.
struct Part {
    bytes: usize,
    /// `(client, clock)`: it integrates further once the document has
    /// that clock of that client.
    needs: Vec<(u64, u32)>,
}

impl From<Waiting<'_>> for Part {
    fn from(waiting: Waiting<'_>) -> Self {
        Self {
            bytes: waiting.update.len(),
            needs: waiting
                .needs
                .iter()
                .map(|(client, clock)| (client.get(), *clock))
                .collect(),
        }
    }
}

/// `snapshot check [ROOM]`: fails when some room does not load.
pub async fn run(target: &Target, room: Option<&RoomName>, as_json: bool) -> anyhow::Result<()> {
    let store = open(&target.database_url).await?;
    let rooms = match room {
        Some(room) => vec![require_room(&store, room).await?.room],
        None => store.rooms().await?.into_iter().map(|r| r.room).collect(),
    };
    let progress = Progress::bar(rooms.len() as u64, "loading rooms");
    let mut checked = Vec::with_capacity(rooms.len());
    for room in rooms {
        let outcome = match persist::load_whole(&store, &room).await {
            Ok(loaded) => Ok(Loaded {
                document_bytes: crate::room::held::encode_integrated(
                    &loaded.doc.doc,
                    &yrs::StateVector::default(),
                )
                .len(),
                waiting: loaded.doc.held.waiting().map(Part::from).collect(),
            }),
            Err(LoadError::Corrupt { source, .. }) => Err(source),
            Err(e @ LoadError::Store(_)) => {
                return Err(e).with_context(|| format!("reading room {room:?}"));
            }
        };
        progress.inc();
        checked.push(Checked { room, outcome });
    }
    drop(progress);
    if as_json {
        print_json(&checked.iter().map(to_json).collect::<Vec<_>>());
    } else {
        print_table(&checked);
    }
    let failed = checked.iter().filter(|c| c.outcome.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} room(s) do not load", checked.len());
    }
    Ok(())
}

fn to_json(checked: &Checked) -> Value {
    match &checked.outcome {
        Ok(loaded) => json!({
            "room": checked.room,
            "loads": true,
            "document_bytes": loaded.document_bytes,
            "waiting": loaded.waiting.iter().map(|part| json!({
                "bytes": part.bytes,
                "needs": part.needs.iter().map(|(client, clock)| json!({
                    "client": client,
                    "clock": clock,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Err(error) => json!({
            "room": checked.room,
            "loads": false,
            "error": error.to_string(),
        }),
    }
}

fn print_table(checked: &[Checked]) {
    let mut table = Table::new(["ROOM", "LOADS", "WAITING", "WAITS FOR"]);
    for c in checked {
        let row = match &c.outcome {
            Ok(loaded) if loaded.waiting.is_empty() => {
                ["yes".to_string(), "-".to_string(), "-".to_string()]
            }
            Ok(loaded) => {
                let bytes: usize = loaded.waiting.iter().map(|p| p.bytes).sum();
                let needs: Vec<String> = loaded
                    .waiting
                    .iter()
                    .flat_map(|p| &p.needs)
                    .map(|(client, clock)| format!("client {client} clock {clock}"))
                    .collect();
                [
                    "yes".to_string(),
                    format!(
                        "{} part(s), {}",
                        loaded.waiting.len(),
                        human_size(bytes as i64)
                    ),
                    needs.join(", "),
                ]
            }
            Err(error) => ["NO".to_string(), "-".to_string(), error.to_string()],
        };
        let [loads, waiting, needs] = row;
        table.row([c.room.to_string(), loads, waiting, needs]);
    }
    table.print();
    if checked.is_empty() {
        eprintln!("no rooms stored yet");
    }
}
