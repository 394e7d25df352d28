//! `rooms` and `list`: what is stored, as a table or as JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use crdt_store::{RoomName, SnapshotInfo};
use serde_json::{Value, json};

use super::Target;
use super::database::{open, require_room};

/// `snapshot rooms`: every stored room, most recently changed first.
pub async fn rooms(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let store = open(&target.database_url).await?;
    let mut rooms = store.rooms().await?;
    rooms.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.room.cmp(&b.room)));
    if as_json {
        let rows: Vec<Value> = rooms
            .iter()
            .map(|room| {
                json!({
                    "room": room.room,
                    "updated_at": rfc3339(room.updated_at),
                    "snapshots": room.snapshots,
                    "size": room.size,
                    // Updates in the latest version plus those logged after it.
                    "updates": room.updates,
                })
            })
            .collect();
        print_json(&rows);
        return Ok(());
    }
    let mut table = Table::new(["ROOM", "LAST CHANGE", "VERSIONS", "SIZE", "UPDATES"]);
    for room in &rooms {
        table.row([
            room.room.to_string(),
            human_time(room.updated_at),
            room.snapshots.to_string(),
            human_size(room.size),
            room.updates.to_string(),
        ]);
    }
    table.print();
    if rooms.is_empty() {
        eprintln!("no rooms stored yet");
    }
    Ok(())
}

/// `snapshot list ROOM`: the room's versions, newest first.
pub async fn versions(target: &Target, room: &RoomName, as_json: bool) -> anyhow::Result<()> {
    let store = open(&target.database_url).await?;
    require_room(&store, room).await?;
    let versions = store.snapshots(room).await?;
    if as_json {
        let rows: Vec<Value> = versions.iter().map(version_json).collect();
        print_json(&rows);
        return Ok(());
    }
    let mut table = Table::new(["ID", "CREATED", "SIZE", "UPDATES", "RESTORED FROM"]);
    for v in &versions {
        table.row([
            v.id.to_string(),
            human_time(v.created_at),
            human_size(v.size),
            v.updates.to_string(),
            v.restored_from.map_or("-".to_string(), |id| id.to_string()),
        ]);
    }
    table.print();
    if versions.is_empty() {
        eprintln!(
            "room {room:?} has no versions yet (the server writes one when it saves the room)"
        );
    }
    Ok(())
}

fn version_json(v: &SnapshotInfo) -> Value {
    json!({
        "id": v.id,
        "room": v.room,
        "created_at": rfc3339(v.created_at),
        "size": v.size,
        "updates": v.updates,
        "restored_from": v.restored_from,
    })
}

pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn human_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `1.2 KiB`-style sizes (exact bytes below 1 KiB).
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(super) fn print_json(rows: &[Value]) {
    println!(
        "{}",
        serde_json::to_string_pretty(rows).expect("JSON values serialize")
    );
}

/// A plain left-aligned text table.
pub(super) struct Table<const N: usize> {
    header: [&'static str; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub(super) fn new(header: [&'static str; N]) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, row: [String; N]) {
        self.rows.push(row);
    }

    pub(super) fn print(&self) {
        let mut widths = self.header.map(|h| h.chars().count());
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(self.header.to_vec());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
    }
}
