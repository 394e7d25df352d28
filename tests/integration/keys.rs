//! Every key type the server accepts, with keys `openssl` generates and the
//! real binary: HS256 (`--auth-secret`), RS256 and EdDSA
//! (`--auth-public-key`), and a JSON Web Key Set holding both with their
//! `kid`s (`--auth-jwks`) for rotation. Each accepts a token its key signed
//! and refuses one another key signed (401).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crdt_hub::auth::{Claims, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::support::{ServerProcess, sqlite_url, temp_dir};

/// A private key `openssl genpkey` made, with its public half.
struct KeyPair {
    private_pem: Vec<u8>,
    public: PathBuf,
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

fn generate(dir: &Path, name: &str, algorithm: &[&str]) -> KeyPair {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_arg = private.to_str().unwrap();
    let mut args = vec!["genpkey", "-quiet", "-out", private_arg];
    args.extend_from_slice(algorithm);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_arg,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    KeyPair {
        private_pem: std::fs::read(&private).unwrap(),
        public,
    }
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
const ED25519: &[&str] = &["-algorithm", "ed25519"];

fn encoding_key(algorithm: Algorithm, pair: &KeyPair) -> EncodingKey {
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pair.private_pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pair.private_pem).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn claims() -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Claims {
        exp: now + 600,
        nbf: None,
        rooms: vec!["keys".into()],
        role: Role::Write,
        sub: Some("key-test".into()),
        jti: None,
    }
}

fn sign(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims(), key).unwrap()
}

/// What an upgrade into room `keys` with `token` gets.
async fn upgrade(server: &ServerProcess, token: &str) -> u16 {
    let url = format!("{}?token={token}", server.url("keys"));
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_rs256_and_eddsa_tokens_are_accepted_and_wrong_signatures_refused() {
    let dir = temp_dir();
    let db = temp_dir();

    let secret = "a-secret-of-some-length-0123456789";
    let server = ServerProcess::start(&sqlite_url(db.path()), &["--auth-secret", secret]).await;
    let good = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(secret.as_bytes()),
    );
    let bad = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-0123456789"),
    );
    assert_eq!(upgrade(&server, &good).await, 101, "HS256");
    assert_eq!(upgrade(&server, &bad).await, 401, "HS256, wrong secret");
    server.terminate().await;

    for (name, algorithm, kind) in [
        ("rsa", Algorithm::RS256, RSA),
        ("ed25519", Algorithm::EdDSA, ED25519),
    ] {
        let pair = generate(dir.path(), name, kind);
        let other = generate(dir.path(), &format!("{name}-other"), kind);
        let server = ServerProcess::start(
            &sqlite_url(db.path()),
            &["--auth-public-key", pair.public.to_str().unwrap()],
        )
        .await;
        let good = sign(algorithm, None, &encoding_key(algorithm, &pair));
        let bad = sign(algorithm, None, &encoding_key(algorithm, &other));
        assert_eq!(upgrade(&server, &good).await, 101, "{name}");
        assert_eq!(upgrade(&server, &bad).await, 401, "{name}, wrong key");
        // HS256 signed with the public key as its secret: the algorithm
        // confusion attack; the key is for its own algorithm only.
        let confused = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(&std::fs::read(&pair.public).unwrap()),
        );
        assert_eq!(
            upgrade(&server, &confused).await,
            401,
            "{name}, HS256 confusion"
        );
        server.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_picks_keys_by_kid_so_that_keys_can_rotate() {
    let dir = temp_dir();
    let db = temp_dir();
    let old = generate(dir.path(), "old", RSA);
    let new = generate(dir.path(), "new", ED25519);
    let stranger = generate(dir.path(), "stranger", ED25519);
    let jwk = |pair: &KeyPair, algorithm, kid: &str| {
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key(algorithm, pair), algorithm)
                .unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![
            jwk(&old, Algorithm::RS256, "2026-old"),
            jwk(&new, Algorithm::EdDSA, "2026-new"),
        ],
    };
    let jwks = dir.path().join("keys.json");
    std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
    let server = ServerProcess::start(
        &sqlite_url(db.path()),
        &["--auth-jwks", jwks.to_str().unwrap()],
    )
    .await;

    let with = |pair: &KeyPair, algorithm, kid: Option<&str>| {
        sign(algorithm, kid, &encoding_key(algorithm, pair))
    };
    assert_eq!(
        upgrade(&server, &with(&old, Algorithm::RS256, Some("2026-old"))).await,
        101,
        "the old key, named"
    );
    assert_eq!(
        upgrade(&server, &with(&new, Algorithm::EdDSA, Some("2026-new"))).await,
        101,
        "the new key, named"
    );
    assert_eq!(
        upgrade(&server, &with(&new, Algorithm::EdDSA, None)).await,
        101,
        "no kid: tried against the keys of its algorithm"
    );
    assert_eq!(
        upgrade(&server, &with(&new, Algorithm::EdDSA, Some("2026-old"))).await,
        401,
        "a kid naming another key"
    );
    assert_eq!(
        upgrade(
            &server,
            &with(&stranger, Algorithm::EdDSA, Some("2026-new"))
        )
        .await,
        401,
        "a key the set does not hold"
    );
    assert_eq!(
        upgrade(&server, &with(&stranger, Algorithm::EdDSA, Some("unknown"))).await,
        401,
        "an unknown kid"
    );
    let (status, logs) = server.terminate().await;
    assert!(status.success(), "{logs}");

    // A file that is not a key set stops the server at start, saying so.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{\"keys\": 7}").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .args(["serve", "--bind", "127.0.0.1:0", "--auth-jwks"])
        .arg(&broken)
        .arg("--database-url")
        .arg(sqlite_url(db.path()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a JSON Web Key Set"), "{stderr}");
}
