//! What a token grants in one room: the checks every way into a room
//! shares (a y-websocket upgrade's `?token=`, a Hocuspocus provider's
//! token message).

use std::time::SystemTime;

use crdt_store::RoomName;

use crate::app::App;
use crate::auth::{AuthError, Claims};
use crate::metrics;
use crate::room::Access;
use crate::sessions::Holder;

/// What a token grants in one room.
pub struct Grant {
    pub access: Access,
    /// Who the token is for (with authentication on).
    pub holder: Holder,
    /// When the token stops granting access (`exp` plus the leeway).
    pub deadline: Option<SystemTime>,
}

impl Grant {
    /// Everything, to anyone: authentication is off.
    pub fn open() -> Self {
        Self {
            access: Access::ReadWrite,
            holder: Holder::default(),
            deadline: None,
        }
    }
}

/// What verified `claims` grant in `room`, checked as for any upgrade.
///
/// # Errors
/// The room is not the token's, or the token has (all but) expired.
pub fn grant_in_room(app: &App, claims: &Claims, room: &RoomName) -> Result<Grant, AuthError> {
    if !claims.allows_room(room.as_str()) {
        return Err(AuthError::WrongRoom);
    }
    let leeway = app.auth.as_ref().map(|v| v.leeway()).unwrap_or_default();
    let deadline = claims.session_deadline(leeway);
    if deadline <= SystemTime::now() {
        // The verifier counts in whole seconds; a session would end the
        // moment it began.
        return Err(AuthError::Expired);
    }
    Ok(Grant {
        access: claims.role.access(),
        holder: Holder {
            sub: claims.sub.as_deref().map(Into::into),
            jti: claims.jti.as_deref().map(Into::into),
        },
        deadline: Some(deadline),
    })
}

/// What `token` grants in `room` for a multiplexed (Hocuspocus) socket,
/// whose tokens come in its messages, one per document. A refusal is
/// counted and logged as an upgrade's is.
///
/// # Errors
/// Why the token does not open the room.
pub fn grant_for_token(app: &App, token: &str, room: &RoomName) -> Result<Grant, AuthError> {
    let Some(verifier) = &app.auth else {
        return Ok(Grant::open());
    };
    let refused = |error: AuthError, claims: Option<&Claims>| {
        metrics::auth_refused(error.metric_label());
        tracing::info!(
            reason = error.metric_label(),
            sub = claims.and_then(|c| c.sub.as_deref()).unwrap_or("-"),
            room = room.as_str(),
            "document refused: {error}"
        );
        error
    };
    if token.is_empty() {
        return Err(refused(AuthError::Missing, None));
    }
    let claims = verifier.verify(token).map_err(|e| refused(e, None))?;
    if let Some(kind) = app.revocations.revoked(&claims) {
        return Err(refused(AuthError::Revoked(kind.as_str()), Some(&claims)));
    }
    grant_in_room(app, &claims, room).map_err(|e| refused(e, Some(&claims)))
}
