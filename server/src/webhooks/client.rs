//! One webhook POST over HTTP/1.1 (hyper), or HTTPS through rustls with
//! the system's root certificates. A fresh connection per request: a
//! webhook goes out at most every `--webhook-debounce` per room, so pooling
//! would save little and would add a connection's state to reason about.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where webhooks go, checked once at start.
#[derive(Clone)]
pub struct Endpoint {
    uri: Uri,
    /// `host:port`, for connecting.
    address: String,
    /// `Some` for https.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("uri", &self.uri).finish()
    }
}

/// Why `--webhook-url` was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not a URL like https://example.com/hooks")]
    NotAUrl(String, #[source] http::uri::InvalidUri),
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: the host is not a valid TLS server name")]
    ServerName(String),
    #[error("no root certificates for https (set SSL_CERT_FILE to a PEM bundle): {0}")]
    Roots(String),
}

/// What one attempt came to, when it did not get a 2xx.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
}

impl AttemptError {
    /// The label of `crdt_hub_webhook_deliveries_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Status(_) => "status",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Connect(_) | AttemptError::Tls(_) | AttemptError::Http(_) => "error",
        }
    }
}

/// Bundles looked for when `SSL_CERT_FILE` is not set (Debian/Ubuntu,
/// Fedora/RHEL, Alpine share the first; macOS has the last).
const ROOT_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

impl Endpoint {
    /// # Errors
    /// [`EndpointError`] for anything but an http(s) URL with a host, or
    /// for https without readable root certificates.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| EndpointError::NotAUrl(url.to_string(), e))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(EndpointError::Scheme(url.to_string())),
        };
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| EndpointError::NoHost(url.to_string()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // IPv6 literals keep their brackets in `host()`.
        let address = format!("{host}:{port}");
        let tls = if https {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|_| EndpointError::ServerName(url.to_string()))?;
            Some((connector()?, name))
        } else {
            None
        };
        Ok(Self { uri, address, tls })
    }

    /// POSTs `body` with `headers`; `Ok` for any 2xx.
    ///
    /// # Errors
    /// `AttemptError`: another status, a timeout, a refused connection.
    pub async fn post(
        &self,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, AttemptError> {
        match tokio::time::timeout(timeout, self.post_unbounded(headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Timeout(timeout)),
        }
    }

    async fn post_unbounded(
        &self,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, AttemptError> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(AttemptError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.send(tcp, headers, body).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(AttemptError::Tls)?;
                self.send(stream, headers, body).await
            }
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, AttemptError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(AttemptError::Http)?;
        // Drives the connection; it ends with the request (or the timeout
        // that drops this future, and with it the task's only purpose).
        let driver = tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_string();
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.address.clone(), |a| a.to_string());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("crdt-hub/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .expect("a request of valid parts");
        let result = sender.send_request(request).await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                // Read (and drop) the body so the receiver is not cut off
                // mid-response; it is not ours to keep.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(status.as_u16())
                } else {
                    Err(AttemptError::Status(status.as_u16()))
                }
            }
            Err(e) => Err(AttemptError::Http(e)),
        };
        driver.abort();
        outcome
    }
}

fn connector() -> Result<tokio_rustls::TlsConnector, EndpointError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = std::env::var("SSL_CERT_FILE").ok().or_else(|| {
        ROOT_BUNDLES
            .iter()
            .find(|path| std::path::Path::new(path).exists())
            .map(|path| (*path).to_string())
    });
    let path = path.ok_or_else(|| EndpointError::Roots("no CA bundle found".to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| EndpointError::Roots(format!("{path}: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| EndpointError::Roots(format!("{path}: {e}")))?;
        // A bundle may hold certificates rustls does not take; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(EndpointError::Roots(format!(
            "{path}: no usable certificate"
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EndpointError::Roots(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_and_refuses_others() {
        let endpoint = Endpoint::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(endpoint.address, "127.0.0.1:9000");
        assert_eq!(
            Endpoint::parse("http://example.com/").unwrap().address,
            "example.com:80"
        );
        assert!(matches!(
            Endpoint::parse("ftp://example.com/"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("not a url"),
            Err(EndpointError::NotAUrl(..))
        ));
        assert!(matches!(
            Endpoint::parse("/hooks"),
            Err(EndpointError::Scheme(_))
        ));
    }
}
