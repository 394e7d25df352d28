//! Revoked subjects and tokens: refused at the upgrade and at the API, and
//! their live sessions closed (4403), until the time the revocation names.
//!
//! Revocations live in the database, so that they survive a restart and
//! every node of a cluster (which shares the database) enforces them. Each
//! node keeps the ones in force in memory, checked at every upgrade and API
//! request without a query, and reloads them every `--revocation-refresh`:
//! a revocation made through another node closes this node's sessions
//! within that interval; one made through this node closes them at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crdt_store::{Revocation, RevocationKind, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Claims;
use crate::close;
use crate::sessions::Sessions;

/// The revocations in force, as this node knows them.
pub struct Revocations {
    store: Arc<dyn Store>,
    active: RwLock<HashMap<(RevocationKind, String), Revocation>>,
    /// Wakes [`keep_fresh`] before its interval is up (another node of the
    /// cluster announced a revocation).
    reload: tokio::sync::Notify,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("active", &self.active.read().map(|a| a.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// Empty until the first [`Self::refresh`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            active: RwLock::default(),
            reload: tokio::sync::Notify::new(),
        }
    }

    /// Makes [`keep_fresh`] reload now rather than at its next interval.
    pub fn reload_soon(&self) {
        self.reload.notify_one();
    }

    /// What revokes a token with these claims now, if anything.
    pub fn revoked(&self, claims: &Claims) -> Option<RevocationKind> {
        let active = self.active.read().expect("not poisoned");
        if active.is_empty() {
            return None;
        }
        let now = Utc::now();
        let hit = |kind, value: &Option<String>| {
            value.as_ref().is_some_and(|value| {
                active
                    .get(&(kind, value.clone()))
                    .is_some_and(|r| r.until > now)
            })
        };
        if hit(RevocationKind::Sub, &claims.sub) {
            Some(RevocationKind::Sub)
        } else if hit(RevocationKind::Jti, &claims.jti) {
            Some(RevocationKind::Jti)
        } else {
            None
        }
    }

    /// Stores `revocation` and enforces it here at once: this node's
    /// sessions it covers are closed. Returns how many.
    ///
    /// # Errors
    /// The store's; nothing is enforced then.
    pub async fn revoke(
        &self,
        revocation: Revocation,
        sessions: &Sessions,
    ) -> Result<usize, StoreError> {
        self.store.revoke(&revocation).await?;
        let closed =
            sessions.close_revoked(revocation.kind, &revocation.value, close::ACCESS_REVOKED);
        info!(
            kind = revocation.kind.as_str(),
            value = %revocation.value,
            until = %revocation.until,
            closed,
            "access revoked"
        );
        self.active
            .write()
            .expect("not poisoned")
            .insert((revocation.kind, revocation.value.clone()), revocation);
        Ok(closed)
    }

    /// The revocations in force, as of the last refresh or revoke.
    pub fn list(&self) -> Vec<Revocation> {
        let now = Utc::now();
        let mut list: Vec<Revocation> = self
            .active
            .read()
            .expect("not poisoned")
            .values()
            .filter(|r| r.until > now)
            .cloned()
            .collect();
        list.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        list
    }

    /// Reloads the revocations in force from the database; returns those
    /// this node did not know (other nodes made them).
    ///
    /// # Errors
    /// The store's; what was known stays in force.
    pub async fn refresh(&self, now: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError> {
        let stored = self.store.revocations(now).await?;
        let mut active = self.active.write().expect("not poisoned");
        let fresh: Vec<Revocation> = stored
            .iter()
            .filter(|r| {
                active
                    .get(&(r.kind, r.value.clone()))
                    .is_none_or(|known| known.until != r.until)
            })
            .cloned()
            .collect();
        *active = stored
            .into_iter()
            .map(|r| ((r.kind, r.value.clone()), r))
            .collect();
        Ok(fresh)
    }
}

/// Reloads the revocations every `interval` until `shutdown`, closing this
/// node's sessions that revocations made elsewhere cover.
pub async fn keep_fresh(
    revocations: Arc<Revocations>,
    sessions: Arc<Sessions>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = revocations.reload.notified() => {}
        }
        match revocations.refresh(Utc::now()).await {
            Ok(fresh) => {
                for revocation in fresh {
                    let closed = sessions.close_revoked(
                        revocation.kind,
                        &revocation.value,
                        close::ACCESS_REVOKED,
                    );
                    if closed > 0 {
                        info!(
                            kind = revocation.kind.as_str(),
                            value = %revocation.value,
                            closed,
                            "sessions closed for a revocation made elsewhere"
                        );
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "reloading revocations failed; the known ones stay in force")
            }
        }
    }
}
