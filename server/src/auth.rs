//! JWT authentication: who may open which room, and with what role.
//!
//! Tokens are HS256 (`--auth-secret`) or RS256/EdDSA (`--auth-public-key`,
//! PEM). Claims: `exp` (required), `rooms` (names or glob patterns such as
//! `team-a/*`), `role` (`read`, `write` or `admin`; `read` when absent, so a
//! token never grants more than it says). A token comes as `?token=` (what
//! `WebsocketProvider`'s `params` option sends) or `Authorization: Bearer`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::room::Access;

/// What a token lets its bearer do in the rooms it names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sync and awareness; document updates are dropped.
    Read,
    /// Edit.
    Write,
    /// Edit, and use the HTTP API.
    Admin,
}

impl Role {
    /// As tokens spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn access(self) -> Access {
        match self {
            Role::Read => Access::ReadOnly,
            Role::Write | Role::Admin => Access::ReadWrite,
        }
    }
}

fn default_role() -> Role {
    Role::Read
}

/// The claims crdt-hub reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch: the token is refused until
    /// then (within the leeway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Room names or glob patterns (`*`, `?`, `[…]`).
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default = "default_role")]
    pub role: Role,
    /// Who the token is for: logged, and revocable (`/api/revocations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The token's own id, revocable on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Claims {
    /// Claims that grant nothing: no room, the least role.
    pub fn none() -> Self {
        Self {
            exp: 0,
            nbf: None,
            rooms: Vec::new(),
            role: Role::Read,
            sub: None,
            jti: None,
        }
    }

    /// When a session opened with this token must end: `exp`, give or
    /// take the verifier's leeway (the same slack the upgrade got).
    pub fn session_deadline(&self, leeway: Duration) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp) + leeway
    }

    /// Whether any of the token's patterns matches `room`.
    ///
    /// Patterns are globs over the room name as a path: `*` and `?` stop at
    /// `/` (`team-a/*` covers `team-a/notes`, not `team-a/b/notes`), `**`
    /// as a whole segment spans any depth (`team-a/**`), `[…]` is a set.
    /// A character that is special (`*`, `?`, `[`) is matched literally
    /// when written inside brackets: `[*]`. An entry that is not a valid
    /// pattern (`a[b`) matches only the room of exactly that name.
    pub fn allows_room(&self, room: &str) -> bool {
        const PATH: glob::MatchOptions = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.rooms.iter().any(|pattern| {
            glob::Pattern::new(pattern).map_or(pattern == room, |p| p.matches_with(room, PATH))
        })
    }
}

/// Why a request was refused; each maps to a status and a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: pass ?token= or Authorization: Bearer")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token does not grant access to this room")]
    WrongRoom,
    #[error("access revoked ({0})")]
    Revoked(&'static str),
    #[error("this endpoint acts on every room: it needs a token whose rooms include \"**\"")]
    EveryRoom,
    #[error("this endpoint needs a token with the {} role or higher", .0.name())]
    Role(Role),
}

impl AuthError {
    /// 401 for who-are-you failures, 403 for not-allowed-here.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::Invalid(_) => 401,
            AuthError::WrongRoom
            | AuthError::Role(_)
            | AuthError::Revoked(_)
            | AuthError::EveryRoom => 403,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Invalid(_) => "invalid",
            AuthError::WrongRoom => "wrong_room",
            AuthError::Role(_) => "role",
            AuthError::Revoked(_) => "revoked",
            AuthError::EveryRoom => "every_room",
        }
    }
}

/// Why the auth configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("reading public key {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither an RSA nor an Ed25519 public key in PEM")]
    UnsupportedKey(String),
    #[error("the auth secret is empty")]
    EmptySecret,
    #[error("{0}")]
    Jwks(String),
}

/// Clock skew tolerated around `exp` and `nbf` unless `--auth-leeway` says
/// otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Verifies tokens. `None` in [`crate::app::App`] means anonymous access.
///
/// One key (`--auth-secret`, `--auth-public-key`) or several by `kid`
/// (`--auth-jwks`): a token whose header names a `kid` is checked against
/// that key only; one without is tried against every key of its algorithm,
/// so that keys can be rotated (publish the new key beside the old one,
/// switch the issuer, drop the old key once its tokens expired).
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    leeway: Duration,
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.kid.as_deref(), k.algorithm))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    ///
    /// # Errors
    /// [`AuthConfigError::EmptySecret`].
    pub fn hs256(secret: &str) -> Result<Self, AuthConfigError> {
        if secret.is_empty() {
            return Err(AuthConfigError::EmptySecret);
        }
        Ok(Self::new(vec![Key {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.as_bytes()),
        }]))
    }

    /// RS256 or EdDSA with a PEM public key, whichever the file holds.
    ///
    /// # Errors
    /// The file cannot be read or holds another kind of key.
    pub fn from_public_key_file(path: &Path) -> Result<Self, AuthConfigError> {
        let pem = std::fs::read(path).map_err(|source| AuthConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
            (key, Algorithm::EdDSA)
        } else {
            return Err(AuthConfigError::UnsupportedKey(path.display().to_string()));
        };
        Ok(Self::new(vec![Key {
            kid: None,
            algorithm,
            key,
        }]))
    }

    /// Every key of a JSON Web Key Set file (RFC 7517): RSA (RS256 unless
    /// its `alg` says otherwise), Ed25519 (EdDSA), P-256 (ES256), and
    /// symmetric `oct` keys (HS256).
    ///
    /// # Errors
    /// The file cannot be read, is not a key set, or holds no usable key.
    pub fn from_jwks_file(path: &Path) -> Result<Self, AuthConfigError> {
        let json = std::fs::read(path).map_err(|source| AuthConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&json).map_err(|e| {
            AuthConfigError::Jwks(format!("{} is not a JSON Web Key Set: {e}", path.display()))
        })?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            let algorithm = jwk_algorithm(jwk).ok_or_else(|| {
                AuthConfigError::Jwks(format!(
                    "key {:?} in {}: unsupported key type or algorithm",
                    jwk.common.key_id,
                    path.display()
                ))
            })?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                AuthConfigError::Jwks(format!(
                    "key {:?} in {}: {e}",
                    jwk.common.key_id,
                    path.display()
                ))
            })?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(AuthConfigError::Jwks(format!(
                "{} holds no key",
                path.display()
            )));
        }
        Ok(Self::new(keys))
    }

    fn new(keys: Vec<Key>) -> Self {
        Self {
            keys,
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Tolerates `leeway` of clock skew around `exp` and `nbf` (clocks
    /// drift a little between the issuer and us).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        validation.validate_aud = false;
        validation
    }

    /// Checks the signature, expiry and `nbf` of `token`.
    ///
    /// # Errors
    /// [`AuthError::Expired`], [`AuthError::NotYetValid`] or
    /// [`AuthError::Invalid`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    (Some(_), None) => self.keys.len() == 1,
                    (None, _) => true,
                }
        });
        let Some(first) = candidates.next() else {
            return Err(AuthError::Invalid(match header.kid {
                Some(kid) => format!("no {:?} key with kid {kid:?}", header.alg),
                None => format!("no {:?} key", header.alg),
            }));
        };
        let mut outcome = self.decode_with(token, first);
        for key in candidates {
            if !matches!(outcome, Err(AuthError::Invalid(_))) {
                break;
            }
            outcome = self.decode_with(token, key);
        }
        outcome
    }

    fn decode_with(&self, token: &str, key: &Key) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm))
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            })
    }
}

/// The algorithm a JSON Web Key is for: its `alg` when it names one,
/// otherwise what its key type implies.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::try_from(alg).ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
        _ => None,
    }
}

/// Finds the token in a request: `Authorization: Bearer` first, then the
/// `token` query parameter.
pub fn token_from(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(bearer) = authorization.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) {
        return Some(bearer.trim().to_string());
    }
    let query = query?;
    query_value(query, "token")
}

/// The percent-decoded value of `name` in a raw query string.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// 64 random bits for token ids, from the standard library's per-process
/// random hasher keys (no dependency for this).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    hasher.finish()
}

/// Mints an HS256 token (for `crdt-hub token`).
///
/// # Errors
/// [`AuthConfigError::EmptySecret`]; encoding itself does not fail for HS256.
pub fn mint_hs256(
    secret: &str,
    rooms: Vec<String>,
    role: Role,
    ttl: Duration,
) -> Result<String, AuthConfigError> {
    mint_hs256_for(secret, rooms, role, ttl, None)
}

/// [`mint_hs256`] for a subject (`sub`), with a fresh `jti` so that this
/// one token can be revoked.
///
/// # Errors
/// As [`mint_hs256`].
pub fn mint_hs256_for(
    secret: &str,
    rooms: Vec<String>,
    role: Role,
    ttl: Duration,
    sub: Option<String>,
) -> Result<String, AuthConfigError> {
    if secret.is_empty() {
        return Err(AuthConfigError::EmptySecret);
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs();
    let jti = format!(
        "{:016x}{:016x}",
        rand_u64(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
    );
    let claims = Claims {
        exp,
        nbf: None,
        rooms,
        role,
        sub,
        jti: Some(jti),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|_| AuthConfigError::EmptySecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let token = mint_hs256(
            "s3cret",
            vec!["team-a/*".into()],
            Role::Write,
            Duration::from_secs(60),
        )
        .unwrap();
        let claims = Verifier::hs256("s3cret").unwrap().verify(&token).unwrap();
        assert_eq!(claims.role, Role::Write);
        assert!(claims.allows_room("team-a/notes"));
        assert!(!claims.allows_room("team-b/notes"));
        assert!(matches!(
            Verifier::hs256("other").unwrap().verify(&token),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let claims = Claims {
            exp: 1_000,
            nbf: None,
            rooms: vec!["*".into()],
            role: Role::Admin,
            sub: None,
            jti: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(
            Verifier::hs256("k").unwrap().verify(&token).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn tokens_are_found_in_headers_and_queries() {
        assert_eq!(token_from(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(
            token_from(None, Some("x=1&token=a%2Eb")).as_deref(),
            Some("a.b")
        );
        assert_eq!(token_from(None, Some("x=1")), None);
    }

    fn allows(patterns: &[&str], room: &str) -> bool {
        Claims {
            exp: 0,
            nbf: None,
            rooms: patterns.iter().map(|p| p.to_string()).collect(),
            role: Role::Read,
            sub: None,
            jti: None,
        }
        .allows_room(room)
    }

    #[test]
    fn room_patterns_stop_at_slashes_and_escape_with_brackets() {
        assert!(allows(&["team-a/*"], "team-a/notes"));
        assert!(!allows(&["team-a/*"], "team-a/b/notes"), "* stops at /");
        assert!(!allows(&["team-a/?"], "team-a//"));
        assert!(
            allows(&["team-a/**"], "team-a/b/c/notes"),
            "** spans any depth"
        );
        assert!(!allows(&["team-a/**"], "team-b/notes"));
        assert!(allows(&["*"], "notes") && !allows(&["*"], "a/b"));
        // A literal special character in brackets.
        assert!(allows(&["price[*]"], "price*"));
        assert!(!allows(&["price[*]"], "prices"));
        assert!(allows(&["price*"], "prices"), "unescaped, it is a pattern");
        // Not a pattern at all: only that exact name.
        assert!(allows(&["a[b"], "a[b"));
        assert!(!allows(&["a[b"], "ab"));
    }

    #[test]
    fn tokens_not_valid_yet_are_refused_within_the_leeway() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = |nbf: u64| {
            let claims = Claims {
                exp: now + 3600,
                nbf: Some(nbf),
                rooms: vec!["*".into()],
                role: Role::Write,
                sub: None,
                jti: None,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"k"),
            )
            .unwrap()
        };
        let verifier = Verifier::hs256("k")
            .unwrap()
            .with_leeway(Duration::from_secs(5));
        assert_eq!(
            verifier.verify(&token(now + 60)).unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(
            verifier.verify(&token(now + 2)).is_ok(),
            "within the leeway"
        );
        assert!(verifier.verify(&token(now - 60)).is_ok());
    }

    #[test]
    fn role_defaults_to_read() {
        let claims: Claims = serde_json::from_str(r#"{"exp": 1, "rooms": ["a"]}"#).unwrap();
        assert_eq!(claims.role, Role::Read);
        assert_eq!(claims.role.access(), Access::ReadOnly);
    }
}
