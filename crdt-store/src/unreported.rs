//! Changes not yet reported in a `document.changed` webhook (see
//! `migrations/*/…_unreported_changes.sql`): counted on the room's row by
//! [`crate::Store::append_unreported`] in the transaction that stores the
//! edits, and turned into an outbox event by
//! [`crate::WebhookOutbox::report_changes`] in one transaction that takes
//! the count off again. Between the two the count is in the database, so
//! a crash at any moment loses no event; the generation check makes each
//! count reported once when several nodes look at the same rooms.

use chrono::{DateTime, Utc};

/// A room's changes waiting for their `document.changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreportedChanges {
    pub room: String,
    /// Updates appended since the last report.
    pub updates: i64,
    /// Changes with every report: what [`crate::WebhookOutbox::report_changes`]
    /// checks so that a count is reported once.
    pub generation: i64,
    /// When the first and the last of them were appended.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// Which rooms [`crate::WebhookOutbox::unreported_changes`] lists.
#[derive(Debug, Clone, Copy)]
pub enum UnreportedFilter<'a> {
    /// Rooms quiet since `quiet_since` (the debounce) or waiting since
    /// `waiting_since` (the longest wait), oldest first.
    Due {
        quiet_since: DateTime<Utc>,
        waiting_since: DateTime<Utc>,
    },
    /// This room, due or not (its changes go before an event about it).
    Room(&'a str),
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UnreportedRow {
    name: String,
    unreported_updates: i64,
    report_generation: i64,
    unreported_first_at: Option<i64>,
    unreported_last_at: Option<i64>,
}

impl From<UnreportedRow> for UnreportedChanges {
    fn from(row: UnreportedRow) -> Self {
        let first_at = row.unreported_first_at.unwrap_or_default();
        Self {
            room: row.name,
            updates: row.unreported_updates,
            generation: row.report_generation,
            first_at: crate::outbox::time(first_at),
            last_at: crate::outbox::time(row.unreported_last_at.unwrap_or(first_at)),
        }
    }
}

macro_rules! columns {
    () => {
        "SELECT name, unreported_updates, report_generation, unreported_first_at, \
         unreported_last_at FROM rooms WHERE unreported_updates > 0 "
    };
}

pub(crate) const DUE: &str = concat!(
    columns!(),
    "AND (unreported_last_at <= $1 OR unreported_first_at <= $2) \
     ORDER BY unreported_first_at LIMIT $3"
);

pub(crate) const ROOM: &str = concat!(columns!(), "AND name = $1");

/// Takes `$2` updates off room `$1`'s count if its generation is still
/// `$3`; what remains (edits appended since the count was read) waits
/// from `$4` on. Every right-hand side reads the row as it was.
pub(crate) const TAKE: &str = "UPDATE rooms SET \
        unreported_updates = unreported_updates - $2, \
        report_generation = report_generation + 1, \
        unreported_first_at = CASE WHEN unreported_updates > $2 THEN $4 ELSE NULL END, \
        unreported_last_at = CASE WHEN unreported_updates > $2 THEN unreported_last_at ELSE NULL END \
    WHERE name = $1 AND report_generation = $3 AND unreported_updates >= $2";
