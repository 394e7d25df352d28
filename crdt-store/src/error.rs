use crate::RoomName;

/// Everything that can go wrong in storage, with its cause kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://path")]
    UnsupportedUrl(String),

    #[error("database error")]
    Database(#[from] sqlx::Error),

    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Bytes that do not decode as a Yjs update: a stored snapshot or log
    /// entry, or the state handed to `write_snapshot` (`what` says which).
    /// Reported, never overwritten: the operation changes nothing, and the
    /// operator decides what to do with stored bytes.
    #[error("Yjs data of room {room} is corrupt: {what}")]
    Corrupt {
        room: RoomName,
        what: String,
        #[source]
        source: Option<yrs::encoding::read::Error>,
    },

    #[error("a stored room name is invalid")]
    InvalidRoomName(#[from] crate::InvalidRoomName),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database
    /// was unreachable, restarting, busy or chose this transaction as a
    /// deadlock victim), as opposed to a permanent fault.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient(e),
            StoreError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => is_transient(e),
            _ => false,
        }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // Connection exceptions (08…), serialization failure and
                // deadlock (40…), too many connections (53300), lock not
                // available (55P03), shutdown and restart (57P01…57P03).
                code.starts_with("08")
                    || code.starts_with("40")
                    || matches!(code, "53300" | "55P03" | "57P01" | "57P02" | "57P03")
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite reports extended result codes; the primary code is
                // the low byte. SQLITE_BUSY (5) and SQLITE_LOCKED (6), with
                // all their variants (BUSY_SNAPSHOT, BUSY_TIMEOUT, …).
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}
