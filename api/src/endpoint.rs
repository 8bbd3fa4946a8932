//! How clients reach the keeper: `https://HOST:PORT` (TLS over TCP), `http://HOST:PORT`
//! (plaintext, loopback only) or `unix:/PATH` (a Unix-domain socket, plaintext or TLS,
//! also `unix:///PATH`; a relative path is taken from the client's working directory).
//! A [`Dial`] is an endpoint and its [`ClientTls`].
//!
//! A Unix socket lets forwarders, application hosts and the keeper live in different
//! network namespaces of one machine: each namespace has its own loopback, but they
//! share the filesystem, so `unix:/run/tarp/keeper.sock` reaches the keeper from all of
//! them. The keeper's listener parses its `listen` setting with the same helpers.

use std::path::PathBuf;

/// The longest Unix socket path the kernel takes (`sun_path` less its final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The path of a `unix:` address, `None` when it is not one. `unix:///run/k.sock` and
/// `unix:/run/k.sock` name the same file.
pub fn unix_path(s: &str) -> Option<&str> {
    s.strip_prefix("unix://")
        .or_else(|| s.strip_prefix("unix:"))
}

/// Checks a socket path: not empty, no NUL, short enough for `sun_path`, a file.
pub fn check_socket_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty socket path after \"unix:\"".into());
    }
    if path.contains('\0') {
        return Err("socket path contains a NUL byte".into());
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path is {} bytes long; the limit is {MAX_SOCKET_PATH}",
            path.len()
        ));
    }
    if path.ends_with('/') {
        return Err(format!("{path:?} names a directory, not a socket file"));
    }
    Ok(PathBuf::from(path))
}

/// The server name a client checks on the keeper's certificate when it dials a Unix
/// socket (or when told no other): `tarp-keeper certs keeper` puts it in.
pub const KEEPER_SERVER_NAME: &str = "tarp-keeper";

/// TLS for a client: the CA that signed the keeper's certificate, the client's own
/// certificate and key (its identity: a node, an application or an operator), and the
/// name to check on the keeper's certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The client's certificate and key (PEM), if it has one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name checked on the keeper's certificate (`None`: the endpoint's host, or
    /// [`KEEPER_SERVER_NAME`] over a Unix socket).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the PEM files. The error names the file and is one line.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        server_name: Option<&str>,
    ) -> Result<ClientTls, String> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("certificate", c)?, read("key", k)?)),
            (None, None) => None,
            _ => {
                return Err("a client certificate needs its key, and a key its certificate".into())
            }
        };
        Ok(ClientTls {
            ca_pem: read("CA", ca)?,
            identity,
            server_name: server_name.map(str::to_string),
        })
    }
}

/// Where a client dials the keeper, and with which TLS (none: plaintext, which
/// [`connect`] allows to loopback and Unix sockets only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// `https://HOST:PORT`, `http://127.0.0.1:PORT` or `unix:/PATH`.
    pub endpoint: String,
    /// TLS, required for `https://`, optional over a Unix socket.
    pub tls: Option<ClientTls>,
}

impl Dial {
    /// Plaintext to `endpoint`.
    pub fn plain(endpoint: impl Into<String>) -> Dial {
        Dial {
            endpoint: endpoint.into(),
            tls: None,
        }
    }

    /// TLS to `endpoint`.
    pub fn tls(endpoint: impl Into<String>, tls: ClientTls) -> Dial {
        Dial {
            endpoint: endpoint.into(),
            tls: Some(tls),
        }
    }
}

impl From<&str> for Dial {
    fn from(s: &str) -> Dial {
        Dial::plain(s)
    }
}

impl From<&String> for Dial {
    fn from(s: &String) -> Dial {
        Dial::plain(s.as_str())
    }
}

impl From<String> for Dial {
    fn from(s: String) -> Dial {
        Dial::plain(s)
    }
}

impl From<&Dial> for Dial {
    fn from(d: &Dial) -> Dial {
        d.clone()
    }
}

impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.tls, unix_path(&self.endpoint)) {
            (Some(_), Some(_)) => write!(f, "{} (TLS)", self.endpoint),
            _ => f.write_str(&self.endpoint),
        }
    }
}

#[cfg(feature = "client")]
mod dial {
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

    use super::{check_socket_path, unix_path, ClientTls, Dial, KEEPER_SERVER_NAME};

    /// What is wrong with a client endpoint.
    pub enum EndpointError {
        /// Not an endpoint at all.
        Invalid(String),
        /// Could not connect.
        Connect(tonic::transport::Error),
    }

    fn tls_config(tls: &ClientTls, default_name: Option<&str>) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = tls.server_name.as_deref().or(default_name) {
            c = c.domain_name(name);
        }
        c
    }

    /// True for a host that is this machine's loopback.
    fn is_loopback(host: &str) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
    }

    /// Dials a keeper at `https://HOST:PORT` (TLS), `http://HOST:PORT` (plaintext,
    /// loopback only) or `unix:/PATH` (plaintext or TLS). The channel reconnects by
    /// itself (over the same transport) when the connection drops.
    pub async fn connect(
        dial: impl Into<Dial>,
        connect_timeout: Duration,
    ) -> Result<Channel, EndpointError> {
        let dial = dial.into();
        let endpoint = dial.endpoint.as_str();
        let tune = |ep: Endpoint| {
            ep.connect_timeout(connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        };
        if let Some(path) = unix_path(endpoint) {
            let path: Arc<Path> = check_socket_path(path)
                .map_err(EndpointError::Invalid)?
                .into();
            // The URI only fills in the :authority header (and, with TLS, asks the
            // connector for it); the connector ignores its address.
            let ep = match &dial.tls {
                None => tune(Endpoint::from_static("http://localhost")),
                Some(tls) => tune(Endpoint::from_static("https://localhost"))
                    .tls_config(tls_config(tls, Some(KEEPER_SERVER_NAME)))
                    .map_err(|e| EndpointError::Invalid(format!("TLS: {e}")))?,
            };
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
            });
            return ep
                .connect_with_connector(connector)
                .await
                .map_err(EndpointError::Connect);
        }
        let expected = "expected https://HOST:PORT, http://127.0.0.1:PORT or unix:/PATH";
        let ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| EndpointError::Invalid(format!("{e}; {expected}")))?;
        let host = ep.uri().host().unwrap_or_default().to_string();
        let ep = match (ep.uri().scheme_str(), &dial.tls) {
            (Some("https"), Some(tls)) => tune(ep)
                .tls_config(tls_config(tls, None))
                .map_err(|e| EndpointError::Invalid(format!("TLS: {e}")))?,
            (Some("https"), None) => {
                return Err(EndpointError::Invalid(
                    "https:// needs the keeper's CA (tarpctl --ca or TARP_CA; a forwarder's [keeper_tls] ca)".into(),
                ))
            }
            (Some("http"), Some(_)) => {
                return Err(EndpointError::Invalid(
                    "TLS is configured but the endpoint is http://; use https://".into(),
                ))
            }
            (Some("http"), None) if !is_loopback(&host) => {
                return Err(EndpointError::Invalid(format!(
                    "plaintext to {host} is refused: only to loopback or a Unix socket; use https:// with a CA"
                )))
            }
            (Some("http"), None) => tune(ep),
            _ => return Err(EndpointError::Invalid(expected.into())),
        };
        ep.connect().await.map_err(EndpointError::Connect)
    }
}
#[cfg(feature = "client")]
pub use dial::{connect, EndpointError};

#[cfg(all(test, feature = "client"))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn client_endpoints_are_checked() {
        for (bad, why) in [
            ("unix:", "empty socket path"),
            ("127.0.0.1:50551", "expected https://HOST:PORT"),
            ("ftp://127.0.0.1:1", "expected https://HOST:PORT"),
            ("http://bad host", "expected https://HOST:PORT"),
            (
                "http://192.0.2.1:50551",
                "plaintext to 192.0.2.1 is refused",
            ),
            ("https://192.0.2.1:50551", "https:// needs the keeper's CA"),
        ] {
            match connect(bad, Duration::from_secs(1)).await {
                Err(EndpointError::Invalid(e)) => assert!(e.contains(why), "{bad:?}: {e}"),
                Err(EndpointError::Connect(e)) => panic!("{bad:?}: connect error {e}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("unix:{}", dir.path().join("none.sock").display());
        assert!(matches!(
            connect(&missing, Duration::from_secs(1)).await,
            Err(EndpointError::Connect(_))
        ));
    }
}
