//! Multi-row statements for appending a batch to SQLite.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement to it and the result back: two thread wake-ups per statement.
//! One INSERT per row made the journal's connection thread a fifth of the
//! server's CPU at 5,000 updates/s. A batch goes in as a few multi-row
//! statements instead, of a few fixed sizes so that sqlx's prepared-statement
//! cache holds a handful of them.

use std::sync::OnceLock;

/// Rows per statement, largest first; a batch is cut greedily into these,
/// so a batch of up to 511 rows takes at most nine statements. 256 rows of
/// seven parameters stay far below SQLite's limit of 32,766.
const SIZES: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// The sizes of the statements that together take `rows` rows, largest first.
pub(crate) fn statement_sizes(mut rows: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let size = SIZES.into_iter().find(|&size| size <= rows)?;
        rows -= size;
        Some(size)
    })
}

/// A statement made of `head`, `rows` copies of `row` joined by commas, and
/// `tail`; built once per size.
struct Statements {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
    built: [OnceLock<String>; SIZES.len()],
}

impl Statements {
    const fn new(head: &'static str, row: &'static str, tail: &'static str) -> Self {
        Self {
            head,
            row,
            tail,
            built: [const { OnceLock::new() }; SIZES.len()],
        }
    }

    /// # Panics
    /// When `rows` is not one of [`SIZES`]: callers take sizes from
    /// [`statement_sizes`].
    fn for_rows(&self, rows: usize) -> &str {
        let index = SIZES
            .iter()
            .position(|&size| size == rows)
            .expect("a size from statement_sizes");
        self.built[index].get_or_init(|| {
            let mut sql = String::from(self.head);
            for i in 0..rows {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(self.row);
            }
            sql.push_str(self.tail);
            sql
        })
    }
}

static INSERT_UPDATES: Statements = Statements::new(
    "INSERT INTO updates (room, update_count, data, created_at) VALUES ",
    "(?, ?, ?, ?)",
    "",
);

static UPSERT_ROOMS: Statements = Statements::new(
    "INSERT INTO rooms (name, created_at, updated_at, update_count, \
         unreported_updates, unreported_first_at, unreported_last_at) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?)",
    " ON CONFLICT (name) DO UPDATE SET \
         updated_at = excluded.updated_at, \
         update_count = rooms.update_count + excluded.update_count, \
         unreported_updates = rooms.unreported_updates + excluded.unreported_updates, \
         unreported_first_at = CASE WHEN rooms.unreported_updates > 0 \
             THEN rooms.unreported_first_at ELSE excluded.unreported_first_at END, \
         unreported_last_at = COALESCE(excluded.unreported_last_at, rooms.unreported_last_at)",
);

/// Inserts `rows` log rows (bind room, update_count, data, created_at per
/// row).
pub(crate) fn insert_updates(rows: usize) -> &'static str {
    INSERT_UPDATES.for_rows(rows)
}

/// Creates or touches `rows` rooms (bind name, created_at, updated_at,
/// added update count, added unreported count, and the unreported
/// changes' time or NULL twice, per row).
pub(crate) fn upsert_rooms(rows: usize) -> &'static str {
    UPSERT_ROOMS.for_rows(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_few_statements_of_fixed_sizes() {
        assert_eq!(statement_sizes(0).count(), 0);
        assert_eq!(statement_sizes(1).collect::<Vec<_>>(), [1]);
        assert_eq!(statement_sizes(7).collect::<Vec<_>>(), [4, 2, 1]);
        assert_eq!(
            statement_sizes(600).collect::<Vec<_>>(),
            [256, 256, 64, 16, 8]
        );
        for rows in 0..1000 {
            assert_eq!(statement_sizes(rows).sum::<usize>(), rows);
        }
    }

    #[test]
    fn statements_have_one_parameter_group_per_row() {
        let sql = insert_updates(4);
        assert_eq!(sql.matches("(?, ?, ?, ?)").count(), 4);
        assert!(sql.ends_with("(?, ?, ?, ?)"));
        assert_eq!(upsert_rooms(1).matches("(?, ?, ?, ?, ?, ?, ?)").count(), 1);
    }
}
