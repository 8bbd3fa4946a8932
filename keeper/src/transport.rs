//! Where the keeper listens: TCP, or a Unix-domain socket (the client side, and the
//! endpoint syntax both share, is [`tarp_api::endpoint`]).
//!
//! A Unix socket lets forwarders, application hosts and the keeper live in different
//! network namespaces of one machine: each namespace has its own loopback, but they
//! share the filesystem, so `unix:/run/tarp/keeper.sock` reaches the keeper from all
//! of them.
//!
//! * Server side, [`ListenAddr`] is the `[keeper] listen` value (`127.0.0.1:50551` or
//!   `unix:/run/tarp/keeper.sock`) and [`Listener`] the socket bound to it.
//! * Client side, every endpoint (`AppClient::connect`, `ForwarderSession::connect`,
//!   `tarpctl --keeper`) is `http://HOST:PORT` or `unix:/PATH` (also `unix:///PATH`; a
//!   relative path is taken from the client's working directory).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tarp_api::endpoint::{check_socket_path, unix_path};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// The permissions the keeper gives a socket file it creates: owner and group may
/// connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Where the keeper listens: the `[keeper] listen` setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// TCP, e.g. `127.0.0.1:50551` (port 0: any free port).
    Tcp(SocketAddr),
    /// A Unix-domain socket file, e.g. `unix:/run/tarp/keeper.sock`.
    Unix(PathBuf),
}

impl ListenAddr {
    /// The endpoint a client on this machine dials to reach a keeper listening here:
    /// `http://ADDR:PORT` or `unix:/PATH`.
    pub fn endpoint(&self) -> String {
        match self {
            ListenAddr::Tcp(a) => format!("http://{a}"),
            ListenAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 50551)))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    /// `IP:PORT` (`127.0.0.1:50551`, `[::1]:50551`) or `unix:PATH`. The error is a
    /// one-line reason.
    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = unix_path(s) {
            return check_socket_path(path).map(ListenAddr::Unix);
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is neither IP:PORT (e.g. 127.0.0.1:50551) nor unix:/PATH (e.g. unix:/run/tarp/keeper.sock)")
        })
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Tcp(a)
    }
}

/// A socket file the keeper created; removed when this is dropped, unless it was
/// replaced meanwhile (another keeper took over the path).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

/// A bound socket for [`Server::start`](crate::server::Server::start): TCP or Unix.
///
/// [`Listener::bind`] binds a [`ListenAddr`]; a `tokio` [`TcpListener`] converts with
/// `into()`, a [`UnixListener`] with `try_into()`.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    /// Set for a Unix socket file that [`Listener::bind`] created.
    file: Option<SocketFile>,
}

/// The bound socket itself.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Removes the socket file it holds when dropped, if that file is still ours.
#[derive(Debug)]
pub(crate) struct SocketFileGuard(#[allow(dead_code)] Option<SocketFile>);

impl Listener {
    /// Binds `addr`. For a Unix socket: creates the parent folder if need be, removes a
    /// stale socket file left by a keeper that did not stop cleanly (but refuses a
    /// path that is not a socket, or on which something still listens), and gives the
    /// new file mode [`SOCKET_MODE`]. The file is removed when the server stops, or when
    /// this listener is dropped unused.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        Ok(match addr {
            ListenAddr::Tcp(a) => Listener {
                socket: Socket::Tcp(TcpListener::bind(a).await?),
                file: None,
            },
            ListenAddr::Unix(path) => {
                let (listener, file) = bind_unix(path).await?;
                Listener {
                    socket: Socket::Unix(listener, path.clone()),
                    file: Some(file),
                }
            }
        })
    }

    /// The address it is bound to (for TCP port 0: the port chosen).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Socket::Unix(_, p) => Ok(ListenAddr::Unix(p.clone())),
        }
    }

    pub(crate) fn into_parts(self) -> (Socket, SocketFileGuard) {
        (self.socket, SocketFileGuard(self.file))
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener {
            socket: Socket::Tcp(l),
            file: None,
        }
    }
}

impl TryFrom<UnixListener> for Listener {
    type Error = io::Error;

    /// A listener bound elsewhere: its socket file is left to whoever created it.
    fn try_from(l: UnixListener) -> io::Result<Self> {
        let path = l
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an unnamed or abstract Unix socket is not shared across network namespaces; bind a path",
                )
            })?;
        Ok(Listener {
            socket: Socket::Unix(l, path),
            file: None,
        })
    }
}

async fn bind_unix(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use: something listens on it", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("removing stale socket {}: {e}", path.display()),
                    )
                })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("probing existing socket {}: {e}", path.display()),
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok((listener, file))
}

/// Gives a socket file the keeper listens on its configured mode and group (the
/// trust of a Unix socket is who may open it).
pub fn restrict_socket(path: &Path, mode: u32, group: Option<&str>) -> io::Result<()> {
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)
            .map_err(io::Error::from)?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no group named {name:?}"))
            })?;
        nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("chown {} to group {name}: {e}", path.display()),
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parses_and_prints() {
        let tcp: ListenAddr = "127.0.0.1:50551".parse().unwrap();
        assert_eq!(tcp, ListenAddr::default());
        assert_eq!(tcp.to_string(), "127.0.0.1:50551");
        assert_eq!(tcp.endpoint(), "http://127.0.0.1:50551");
        let v6: ListenAddr = "[::1]:7".parse().unwrap();
        assert_eq!(v6.endpoint(), "http://[::1]:7");
        for s in ["unix:/run/tarp/keeper.sock", "unix:///run/tarp/keeper.sock"] {
            let u: ListenAddr = s.parse().unwrap();
            assert_eq!(u, ListenAddr::Unix("/run/tarp/keeper.sock".into()));
            assert_eq!(u.to_string(), "unix:/run/tarp/keeper.sock");
            assert_eq!(u.endpoint(), "unix:/run/tarp/keeper.sock");
        }
        assert_eq!(
            "unix:keeper.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("keeper.sock".into())
        );
        for bad in [
            "",
            "50551",
            "localhost:50551",
            "http://127.0.0.1:50551",
            "unix:",
            "unix://",
            "unix:/run/tarp/",
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(long.parse::<ListenAddr>().unwrap_err().contains("limit"));
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_refuses_live_or_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/tarp/k.sock");
        let addr = ListenAddr::Unix(path.clone());
        // Parent folders are created; mode 0660; removed when dropped.
        let l = Listener::bind(&addr).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert_eq!(l.local_addr().unwrap(), addr);
        // Something listens there: refused, and the live socket is left alone.
        let e = Listener::bind(&addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(path.exists());
        drop(l);
        assert!(!path.exists());
        // A stale socket (its listener gone, the file left behind) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = Listener::bind(&addr).await.unwrap();
        drop(l);
        // A regular file is not a socket: refused, left alone.
        std::fs::write(&path, "not a socket").unwrap();
        let e = Listener::bind(&addr).await.unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_replaced_socket_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.sock");
        let first = Listener::bind(&ListenAddr::Unix(path.clone()))
            .await
            .unwrap();
        // Someone else took over the path.
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(first);
        assert!(path.exists());
    }
}
