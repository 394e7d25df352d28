//! A webhook receiver for the tests: a small HTTP/1.1 server on loopback
//! (or HTTPS, with the tests' own CA) that checks each request's signature with the `hmac` crate, records it,
//! and answers as told (200, a failure status, or never).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the receiver does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// Answers 503 to this many requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Hook {
    pub event: String,
    pub delivery: String,
    pub body: serde_json::Value,
    /// Whether X-Crdt-Hub-Signature matched the body under the secret.
    pub signed: bool,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

pub struct Receiver {
    pub addr: SocketAddr,
    https: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    secret: String,
    answer: Mutex<Answer>,
    hooks: Mutex<Vec<Hook>>,
    arrived: Notify,
}

impl Receiver {
    pub async fn start(secret: &str, answer: Answer) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), secret, answer).await
    }

    pub async fn start_on(addr: SocketAddr, secret: &str, answer: Answer) -> Self {
        Self::listen(addr, secret, answer, None).await
    }

    /// An https receiver, its certificate (for 127.0.0.1) from `pki`.
    pub async fn start_tls(secret: &str, answer: Answer, pki: &crate::support::TestPki) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::listen(
            "127.0.0.1:0".parse().unwrap(),
            secret,
            answer,
            Some(acceptor),
        )
        .await
    }

    async fn listen(
        addr: SocketAddr,
        secret: &str,
        answer: Answer,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            secret: secret.to_string(),
            answer: Mutex::new(answer),
            hooks: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let serving = shared.clone();
        let https = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                match tls.clone() {
                    None => {
                        tokio::spawn(serve(stream, shared));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, shared).await;
                            }
                        });
                    }
                }
            }
        });
        Self {
            addr,
            https,
            shared,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/hooks", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn hooks(&self) -> Vec<Hook> {
        self.shared.hooks.lock().unwrap().clone()
    }

    /// Accepted requests of `event`.
    pub fn accepted(&self, event: &str) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|hook| hook.accepted && hook.event == event)
            .collect()
    }

    /// Waits (up to `within`) until `done` holds of the requests so far.
    pub async fn until(&self, what: &str, within: Duration, done: impl Fn(&[Hook]) -> bool) {
        let waited = tokio::time::timeout(within, async {
            loop {
                let arrived = self.shared.arrived.notified();
                if done(&self.hooks()) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), arrived).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "waiting for {what}; received {:#?}",
            self.hooks()
        );
    }

    /// Stops listening (connections are then refused).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve(stream: impl AsyncRead + AsyncWrite + Unpin, shared: Arc<Shared>) {
    let mut reader = BufReader::new(stream);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    let header = |name: &str| {
        headers.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(shared.secret.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signed = header("x-crdt-hub-signature") == Some(format!("sha256={expected}"));
    let answer = {
        let mut answer = shared.answer.lock().unwrap();
        let now = *answer;
        if let Answer::FailFirst(n) = now {
            *answer = if n <= 1 {
                Answer::Ok
            } else {
                Answer::FailFirst(n - 1)
            };
        }
        now
    };
    let accepted = answer == Answer::Ok;
    shared.hooks.lock().unwrap().push(Hook {
        event: header("x-crdt-hub-event").unwrap_or_default(),
        delivery: header("x-crdt-hub-delivery").unwrap_or_default(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        signed,
        accepted,
    });
    shared.arrived.notify_waiters();
    let status = match answer {
        Answer::Ok => "200 OK",
        Answer::FailFirst(_) => "503 Service Unavailable",
        Answer::Hang => {
            // Hold the socket open without answering.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
    };
    let mut stream = reader.into_inner();
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
