//! How clients reach the keeper: `http://HOST:PORT` (TCP) or `unix:/PATH` (a Unix-domain
//! socket, also `unix:///PATH`; a relative path is taken from the client's working
//! directory).
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

#[cfg(feature = "client")]
mod dial {
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::transport::{Channel, Endpoint, Uri};

    use super::{check_socket_path, unix_path};

    /// What is wrong with a client endpoint.
    pub enum EndpointError {
        /// Not an endpoint at all.
        Invalid(String),
        /// Could not connect.
        Connect(tonic::transport::Error),
    }

    /// Dials a keeper at `http://HOST:PORT` (or `https://`) or `unix:/PATH`. The channel
    /// reconnects by itself (over the same transport) when the connection drops.
    pub async fn connect(
        endpoint: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, EndpointError> {
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
            // The URI only fills in the :authority header; the connector ignores it.
            let ep = tune(Endpoint::from_static("http://localhost"));
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
            });
            return ep
                .connect_with_connector(connector)
                .await
                .map_err(EndpointError::Connect);
        }
        let ep = Endpoint::from_shared(endpoint.to_string()).map_err(|e| {
            EndpointError::Invalid(format!("{e}; expected http://HOST:PORT or unix:/PATH"))
        })?;
        match ep.uri().scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(EndpointError::Invalid(
                    "expected http://HOST:PORT or unix:/PATH".into(),
                ))
            }
        }
        tune(ep).connect().await.map_err(EndpointError::Connect)
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
            ("127.0.0.1:50551", "expected http://HOST:PORT or unix:/PATH"),
            (
                "ftp://127.0.0.1:1",
                "expected http://HOST:PORT or unix:/PATH",
            ),
            ("http://bad host", "expected http://HOST:PORT or unix:/PATH"),
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
