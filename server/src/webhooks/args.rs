//! The `serve` flags of webhooks.

use std::time::Duration;

use clap::Args;

use super::{Endpoint, EndpointError, EventFilter, UnknownEvent, WebhookConfig};
use crate::units::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// POST signed JSON events about rooms to this URL (http:// or
    /// https://), at least once, from an outbox in the database. Without
    /// it no webhook is sent.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Signs every webhook: X-Crdt-Hub-Signature: sha256=HEX, the hex
    /// HMAC-SHA256 of the raw body under this secret.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// The events to send, a comma list (document.changed, room.loaded,
    /// room.unloaded, connection.opened, connection.closed,
    /// version.created, room.restored, room.deleted), or all.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_EVENTS", default_value = "all", value_parser = EventFilter::parse)]
    pub webhook_events: EventFilter,

    /// document.changed is sent once a room has been quiet this long...
    #[arg(long, env = "CRDT_HUB_WEBHOOK_DEBOUNCE", default_value = "2s", value_parser = parse_duration)]
    pub webhook_debounce: Duration,

    /// ...or at the latest this long after the first change it reports,
    /// while edits go on.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_MAX_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_max_wait: Duration,

    /// Longest one delivery attempt may take; then it counts as failed and
    /// is retried.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// An event still undelivered after this long is dead-lettered
    /// (`crdt-hub webhooks list --failed`, `redeliver`), and a dead letter
    /// is deleted after as long again.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,

    /// document.changed also carries the document's content, as
    /// GET /api/rooms/{room}/json renders it (`"json"`; null when the room
    /// has unloaded meanwhile). Bodies grow with the documents.
    #[arg(long, env = "CRDT_HUB_WEBHOOK_INCLUDE_JSON")]
    pub webhook_include_json: bool,

    /// Deliveries in flight at once, each to a different room (a room's
    /// events go one after the other, in order).
    #[arg(long, env = "CRDT_HUB_WEBHOOK_CONCURRENCY", default_value = "16")]
    pub webhook_concurrency: usize,

    /// Largest wait between two attempts at one event (exponential backoff
    /// with full jitter from 1s up to this).
    #[arg(long, env = "CRDT_HUB_WEBHOOK_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub webhook_retry_max: Duration,

    /// Events held in memory while the database cannot take them; past
    /// this, new ones are dropped (logged, and counted as
    /// crdt_hub_webhook_deliveries_total{result="dropped"}).
    #[arg(long, env = "CRDT_HUB_WEBHOOK_MAX_QUEUED", default_value = "100000")]
    pub webhook_max_queued: usize,
}

/// Why the webhook flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookArgsError {
    #[error("--webhook-url: {0}")]
    Url(#[from] EndpointError),
    #[error("--webhook-events: {0}")]
    Events(#[from] UnknownEvent),
    #[error("--webhook-secret is set but --webhook-url is not")]
    SecretWithoutUrl,
    #[error("--webhook-secret must not be empty")]
    EmptySecret,
    #[error("{0} must be more than 0")]
    Zero(&'static str),
}

impl WebhookArgs {
    /// `None` without `--webhook-url`.
    ///
    /// # Errors
    /// [`WebhookArgsError`] naming the flag that is wrong.
    pub fn webhook_config(&self) -> Result<Option<WebhookConfig>, WebhookArgsError> {
        let Some(url) = &self.webhook_url else {
            if self.webhook_secret.is_some() {
                return Err(WebhookArgsError::SecretWithoutUrl);
            }
            return Ok(None);
        };
        if self.webhook_secret.as_deref() == Some("") {
            return Err(WebhookArgsError::EmptySecret);
        }
        for (flag, value) in [
            ("--webhook-timeout", self.webhook_timeout),
            ("--webhook-max-age", self.webhook_max_age),
            ("--webhook-max-wait", self.webhook_max_wait),
            ("--webhook-retry-max", self.webhook_retry_max),
        ] {
            if value.is_zero() {
                return Err(WebhookArgsError::Zero(flag));
            }
        }
        if self.webhook_concurrency == 0 {
            return Err(WebhookArgsError::Zero("--webhook-concurrency"));
        }
        if self.webhook_max_queued == 0 {
            return Err(WebhookArgsError::Zero("--webhook-max-queued"));
        }
        Ok(Some(WebhookConfig {
            endpoint: Endpoint::parse(url)?,
            secret: self.webhook_secret.clone(),
            events: self.webhook_events.clone(),
            debounce: self.webhook_debounce,
            // Never shorter than the debounce it bounds.
            max_wait: self.webhook_max_wait.max(self.webhook_debounce),
            timeout: self.webhook_timeout,
            include_json: self.webhook_include_json,
            max_age: self.webhook_max_age,
            concurrency: self.webhook_concurrency,
            retry_base: Duration::from_secs(1).min(self.webhook_retry_max),
            retry_cap: self.webhook_retry_max,
            max_queued: self.webhook_max_queued,
        }))
    }
}
