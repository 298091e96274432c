//! The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket, or
//! over TLS to `--server URL` with a bearer token.
//!
//! One connection per request: the CLI makes a handful of requests per
//! invocation, and a fresh connection keeps the failure modes simple.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon cannot be reached (exit code 3).
    #[error("{0}")]
    Unreachable(String),
    /// The daemon answered with an error (its JSON error message).
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The exchange failed midway or the answer is malformed.
    #[error("{0}")]
    Protocol(String),
    /// The client's own setup (CA file, URL) is wrong.
    #[error("{0}")]
    Setup(String),
}

/// Where the daemon is.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tls {
        host: String,
        port: u16,
        server_name: rustls_pki_types::ServerName<'static>,
        connector: TlsConnector,
        token: Option<String>,
    },
}

/// A client of one daemon.
#[derive(Clone)]
pub struct Client {
    target: Target,
}

/// A response whose body has not been read yet.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Incoming,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn unix(socket: PathBuf) -> Self {
        Client {
            target: Target::Unix(socket),
        }
    }

    /// A client of `https://HOST:PORT`, trusting `ca_file` (PEM) or the system's roots.
    pub fn tls(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| ClientError::Setup(format!("--server {url:?} is not a URL: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(ClientError::Setup(format!(
                "--server {url:?}: the daemon's TCP listener speaks TLS only; use https://HOST:PORT"
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| ClientError::Setup(format!("--server {url:?} names no host")))?
            .to_owned();
        let port = parsed.port().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = rustls_pki_types::ServerName::try_from(bare)
            .map_err(|e| ClientError::Setup(format!("--server host {host:?}: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(ca) => {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let certs = CertificateDer::pem_file_iter(ca).map_err(|e| {
                    ClientError::Setup(format!("cannot read --ca-file {}: {e}", ca.display()))
                })?;
                for c in certs {
                    let c = c.map_err(|e| {
                        ClientError::Setup(format!("--ca-file {}: {e}", ca.display()))
                    })?;
                    roots.add(c).map_err(|e| {
                        ClientError::Setup(format!("--ca-file {}: {e}", ca.display()))
                    })?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Setup(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        Ok(Client {
            target: Target::Tls {
                host,
                port,
                server_name,
                connector,
                token,
            },
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        match &self.target {
            Target::Unix(p) => ClientError::Unreachable(format!(
                "cannot reach the ferry daemon at {} ({e}); start it with `ferry daemon --state-dir DIR` \
                 (or `systemctl start ferry`), or point --socket / FERRY_SOCKET at its socket",
                p.display()
            )),
            Target::Tls { host, port, .. } => ClientError::Unreachable(format!(
                "cannot reach the ferry daemon at https://{host}:{port} ({e}); is it running with --listen, and is --ca-file its CA?"
            )),
        }
    }

    /// Sends a request; `body` is sent as JSON.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
            .unwrap_or_default();
        let mut req = http::Request::builder().method(method).uri(path);
        req = req.header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        match &self.target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let req = req
                    .header(http::header::HOST, "ferry")
                    .body(Full::new(bytes))
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.exchange(stream, req).await
            }
            Target::Tls {
                host,
                port,
                server_name,
                connector,
                token,
            } => {
                let tcp = tokio::net::TcpStream::connect((
                    host.trim_start_matches('[').trim_end_matches(']'),
                    *port,
                ))
                .await
                .map_err(|e| self.unreachable(e))?;
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                let mut req = req.header(http::header::HOST, format!("{host}:{port}"));
                if let Some(t) = token {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let req = req
                    .body(Full::new(bytes))
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.exchange(tls, req).await
            }
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Reply, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(Reply {
            status: resp.status().as_u16(),
            body: resp.into_body(),
        })
    }

    /// Sends a request and reads a JSON answer; a non-2xx answer is [`ClientError::Api`].
    pub async fn json(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let reply = self.send(method, path, body).await?;
        let status = reply.status;
        let bytes = reply
            .body
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!(
                "the daemon's answer (HTTP {status}) is not JSON: {e}"
            ))
        })?;
        check(status, value)
    }
}

/// Turns a non-2xx answer into an error carrying the daemon's message.
pub fn check(status: u16, value: Value) -> Result<Value, ClientError> {
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the daemon answered HTTP {status}"));
    Err(ClientError::Api { status, message })
}

/// Reads a whole error body into a [`ClientError::Api`].
pub async fn error_of(reply: Reply) -> ClientError {
    let status = reply.status;
    let bytes = reply
        .body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    check(status, value)
        .err()
        .unwrap_or(ClientError::Protocol(format!("unexpected HTTP {status}")))
}

/// Percent-encodes a path segment (a clone name).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
