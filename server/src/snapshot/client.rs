//! The HTTP side of `--server`: a few requests to a running server's API
//! (`/api/rooms/{room}/…`), over plain HTTP/1.1.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt_store::RoomName;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::TcpStream;

/// Longest one request may take (a restore of a large room computes a diff).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A server's API.
#[derive(Debug)]
pub struct ServerClient {
    /// `host:port`, for connecting and for the Host header.
    authority: String,
    /// Shown in messages.
    url: String,
    token: Option<String>,
}

impl ServerClient {
    /// # Errors
    /// When `url` is not `http://HOST[:PORT]`.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--server {url:?} is not a URL like http://127.0.0.1:1234"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "--server {url}: https is not supported by the snapshot tools; \
                 use the server's plain http address (e.g. through an SSH tunnel)"
            ),
            _ => bail!("--server {url:?} must start with http://"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--server {url:?} has no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            authority,
            url: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `/api/rooms/{room}{suffix}` with the room percent-encoded.
    pub fn room_path(room: &RoomName, suffix: &str) -> String {
        format!(
            "/api/rooms/{}{suffix}",
            utf8_percent_encode(room.as_str(), NON_ALPHANUMERIC)
        )
    }

    /// Sends one request; a non-2xx answer is an error carrying the
    /// server's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange(method.clone(), path, content_type, body),
        )
        .await
        .with_context(|| {
            format!(
                "{method} {}{path}: no answer within {REQUEST_TIMEOUT:?}",
                self.url
            )
        })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .with_context(|| format!("cannot talk HTTP to {}", self.url))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {}{path} failed", self.url))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to {method} {}{path}", self.url))?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "the server answered {}: {}",
                status_text(status),
                error_message(&body)
            );
        }
        Ok(body)
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The `error` of a JSON error body, else the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let client = ServerClient::new("http://127.0.0.1:1234/", None).unwrap();
        assert_eq!(client.authority, "127.0.0.1:1234");
        assert_eq!(client.url(), "http://127.0.0.1:1234");
        assert_eq!(
            ServerClient::new("http://hub", None).unwrap().authority,
            "hub:80"
        );
        assert!(ServerClient::new("https://hub", None).is_err());
        assert!(ServerClient::new("127.0.0.1:1234", None).is_err());
    }

    #[test]
    fn room_paths_are_one_segment() {
        let room = RoomName::parse("team/notes é").unwrap();
        assert_eq!(
            ServerClient::room_path(&room, "/state"),
            "/api/rooms/team%2Fnotes%20%C3%A9/state"
        );
    }
}
