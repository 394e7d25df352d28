//! The webhook outbox: events written before they are acknowledged, and
//! delivered from here by whichever node claims them (see
//! `migrations/*/…_webhook_outbox.sql`).
//!
//! Both schemas have the same columns and types (times in milliseconds
//! since the epoch) and SQLite accepts `$N` parameters, so one set of
//! statements serves both backends; only claiming differs (Postgres skips
//! rows another node has locked, SQLite has one writer at a time).

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

/// An event to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewWebhookEvent {
    /// Unique; sent as `X-Crdt-Hub-Delivery` on every attempt.
    pub event_id: String,
    /// `document.changed`, `room.loaded`, …
    pub event: String,
    pub room: String,
    /// The exact JSON body sent (and signed).
    pub body: String,
    pub created_at: DateTime<Utc>,
    /// A failed attempt after this dead-letters the event.
    pub expires_at: DateTime<Utc>,
}

/// An event claimed for delivery: the claimer has it until its lease ends.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub room: String,
    pub body: String,
    /// Attempts including this one.
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookState {
    Pending,
    Delivered,
    /// Failed past its expiry; kept for inspection and redelivery.
    Dead,
}

/// One outbox row, for `crdt-hub webhooks list`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub room: String,
    pub state: WebhookState,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Which events `redeliver_webhooks` puts back in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeliver {
    One(i64),
    /// Every dead-lettered event, and every pending one that has failed
    /// (retried now instead of after its backoff).
    AllFailed,
}

pub(crate) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(crate) fn time(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: i64,
    event_id: String,
    event: String,
    room: String,
    body: String,
    attempts: i64,
    created_at: i64,
    expires_at: i64,
}

impl From<DeliveryRow> for WebhookDelivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            event: row.event,
            room: row.room,
            body: row.body,
            attempts: row.attempts,
            created_at: time(row.created_at),
            expires_at: time(row.expires_at),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RecordRow {
    id: i64,
    event_id: String,
    event: String,
    room: String,
    state: String,
    attempts: i64,
    created_at: i64,
    next_attempt_at: i64,
    finished_at: Option<i64>,
    last_error: Option<String>,
}

impl From<RecordRow> for WebhookRecord {
    fn from(row: RecordRow) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            event: row.event,
            room: row.room,
            state: match row.state.as_str() {
                "delivered" => WebhookState::Delivered,
                "dead" => WebhookState::Dead,
                _ => WebhookState::Pending,
            },
            attempts: row.attempts,
            created_at: time(row.created_at),
            next_attempt_at: time(row.next_attempt_at),
            finished_at: row.finished_at.map(time),
            last_error: row.last_error,
        }
    }
}

pub(crate) const INSERT: &str = "INSERT INTO webhook_outbox \
    (event_id, event, room, body, created_at, next_attempt_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (event_id) DO NOTHING";

/// Inserts one [`NewWebhookEvent`] through `$executor` (an event id
/// already there is left as it is).
macro_rules! insert_event {
    ($event:expr, $executor:expr) => {
        sqlx::query($crate::outbox::INSERT)
            .bind(&$event.event_id)
            .bind(&$event.event)
            .bind(&$event.room)
            .bind(&$event.body)
            .bind($crate::outbox::millis($event.created_at))
            .bind($crate::outbox::millis($event.expires_at))
            .execute($executor)
            .await?
    };
}
pub(crate) use insert_event;

/// The events that may be sent now: pending, due, not leased by a live
/// claim, and first in line for their room (nothing older of the room is
/// pending), so a room's events go out in order, one at a time. `{lock}`
/// is `FOR UPDATE SKIP LOCKED` on Postgres: two nodes claiming at once
/// each skip what the other is taking.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE webhook_outbox SET leased_until = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT o.id FROM webhook_outbox o \
                 WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
                   AND (o.leased_until IS NULL OR o.leased_until <= $1) \
                   AND NOT EXISTS (SELECT 1 FROM webhook_outbox e \
                       WHERE e.room = o.room AND e.state = 'pending' AND e.id < o.id) \
                 ORDER BY o.id LIMIT $3 ",
            $lock,
            ") RETURNING id, event_id, event, room, body, attempts, created_at, expires_at"
        )
    };
}
pub(crate) use claim_sql;

pub(crate) const DELIVERED: &str = "UPDATE webhook_outbox \
    SET state = 'delivered', finished_at = $2, leased_until = NULL, last_error = NULL \
    WHERE id = $1 AND state = 'pending'";

/// `$3`: the next attempt's time; `$4`: dead-letter instead.
pub(crate) const FAILED: &str = "UPDATE webhook_outbox \
    SET last_error = $2, next_attempt_at = $3, leased_until = NULL, \
        state = CASE WHEN $4 THEN 'dead' ELSE 'pending' END, \
        finished_at = CASE WHEN $4 THEN $3 ELSE NULL END \
    WHERE id = $1 AND state = 'pending'";

pub(crate) const PRUNE: &str = "DELETE FROM webhook_outbox \
    WHERE (state = 'delivered' AND finished_at < $1) OR (state = 'dead' AND finished_at < $2)";

pub(crate) const LIST_ALL: &str = "SELECT id, event_id, event, room, state, attempts, created_at, \
    next_attempt_at, finished_at, last_error FROM webhook_outbox ORDER BY id DESC LIMIT $1";

pub(crate) const LIST_FAILED: &str = "SELECT id, event_id, event, room, state, attempts, \
    created_at, next_attempt_at, finished_at, last_error FROM webhook_outbox \
    WHERE state = 'dead' OR (state = 'pending' AND last_error IS NOT NULL) \
    ORDER BY id DESC LIMIT $1";

pub(crate) const REDELIVER_ONE: &str = "UPDATE webhook_outbox \
    SET state = 'pending', next_attempt_at = $2, expires_at = $3, leased_until = NULL, \
        finished_at = NULL \
    WHERE id = $1";

pub(crate) const REDELIVER_FAILED: &str = "UPDATE webhook_outbox \
    SET state = 'pending', next_attempt_at = $1, expires_at = $2, leased_until = NULL, \
        finished_at = NULL \
    WHERE state = 'dead' OR (state = 'pending' AND last_error IS NOT NULL)";

pub(crate) const PENDING: &str = "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'";

/// [`crate::WebhookOutbox`] for a backend `$store` whose pool is
/// `self.pool` and whose claim statement is `$claim`.
macro_rules! outbox_methods {
    ($store:ty, $claim:expr) => {
        #[async_trait::async_trait]
        impl $crate::WebhookOutbox for $store {
            async fn enqueue_webhooks(
                &self,
                events: &[$crate::NewWebhookEvent],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                for event in events {
                    $crate::outbox::insert_event!(event, &mut *tx);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_webhooks(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                limit: usize,
            ) -> Result<Vec<$crate::WebhookDelivery>, StoreError> {
                let rows: Vec<$crate::outbox::DeliveryRow> = sqlx::query_as($claim)
                    .bind($crate::outbox::millis(now))
                    .bind($crate::outbox::millis(lease_until))
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                let mut claimed: Vec<$crate::WebhookDelivery> =
                    rows.into_iter().map(Into::into).collect();
                claimed.sort_by_key(|delivery| delivery.id);
                Ok(claimed)
            }

            async fn webhook_delivered(
                &self,
                id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query($crate::outbox::DELIVERED)
                    .bind(id)
                    .bind($crate::outbox::millis(now))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn webhook_failed(
                &self,
                id: i64,
                error: &str,
                retry: $crate::WebhookRetry,
            ) -> Result<(), StoreError> {
                let (at, dead) = match retry {
                    $crate::WebhookRetry::At(at) => (at, false),
                    $crate::WebhookRetry::DeadLetter(now) => (now, true),
                };
                sqlx::query($crate::outbox::FAILED)
                    .bind(id)
                    .bind(error)
                    .bind($crate::outbox::millis(at))
                    .bind(dead)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn prune_webhooks(
                &self,
                delivered_before: chrono::DateTime<chrono::Utc>,
                dead_before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query($crate::outbox::PRUNE)
                    .bind($crate::outbox::millis(delivered_before))
                    .bind($crate::outbox::millis(dead_before))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn webhooks(
                &self,
                failed_only: bool,
                limit: usize,
            ) -> Result<Vec<$crate::WebhookRecord>, StoreError> {
                let sql = if failed_only {
                    $crate::outbox::LIST_FAILED
                } else {
                    $crate::outbox::LIST_ALL
                };
                let rows: Vec<$crate::outbox::RecordRow> = sqlx::query_as(sql)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn redeliver_webhooks(
                &self,
                which: $crate::Redeliver,
                now: chrono::DateTime<chrono::Utc>,
                expires_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, StoreError> {
                let done = match which {
                    $crate::Redeliver::One(id) => {
                        sqlx::query($crate::outbox::REDELIVER_ONE)
                            .bind(id)
                            .bind($crate::outbox::millis(now))
                            .bind($crate::outbox::millis(expires_at))
                            .execute(&self.pool)
                            .await?
                    }
                    $crate::Redeliver::AllFailed => {
                        sqlx::query($crate::outbox::REDELIVER_FAILED)
                            .bind($crate::outbox::millis(now))
                            .bind($crate::outbox::millis(expires_at))
                            .execute(&self.pool)
                            .await?
                    }
                };
                Ok(done.rows_affected())
            }

            async fn unreported_changes(
                &self,
                filter: $crate::UnreportedFilter<'_>,
                limit: usize,
            ) -> Result<Vec<$crate::UnreportedChanges>, StoreError> {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows: Vec<$crate::unreported::UnreportedRow> = match filter {
                    $crate::UnreportedFilter::Due {
                        quiet_since,
                        waiting_since,
                    } => {
                        sqlx::query_as($crate::unreported::DUE)
                            .bind($crate::outbox::millis(quiet_since))
                            .bind($crate::outbox::millis(waiting_since))
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    $crate::UnreportedFilter::Room(room) => {
                        sqlx::query_as($crate::unreported::ROOM)
                            .bind(room)
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn report_changes(
                &self,
                changes: &$crate::UnreportedChanges,
                event: &$crate::NewWebhookEvent,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                let taken = sqlx::query($crate::unreported::TAKE)
                    .bind(&changes.room)
                    .bind(changes.updates)
                    .bind(changes.generation)
                    .bind($crate::outbox::millis(event.created_at))
                    .execute(&mut *tx)
                    .await?;
                if taken.rows_affected() == 0 {
                    return Ok(false);
                }
                $crate::outbox::insert_event!(event, &mut *tx);
                tx.commit().await?;
                Ok(true)
            }

            async fn pending_webhooks(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar($crate::outbox::PENDING)
                    .fetch_one(&self.pool)
                    .await?)
            }
        }
    };
}
pub(crate) use outbox_methods;

/// What to do with an event whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRetry {
    /// Try again at this time.
    At(DateTime<Utc>),
    /// Give up (it is past its expiry): dead-letter it, at this time.
    DeadLetter(DateTime<Utc>),
}
