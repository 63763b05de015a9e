//! Where execd listens: a TCP address or a unix socket (`unix:/path`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--listen {0:?} is neither host:port nor unix:/path")]
    BadAddress(String),
    #[error("binding {addr} failed: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a file that is not a socket is in the way at {0}")]
    NotASocket(PathBuf),
    #[error("another server is already listening on {0}")]
    SocketInUse(PathBuf),
    #[error("setting permissions of {path} failed: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the server stops.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`: `host:port` or `unix:/path`. A stale socket file left by
    /// a previous run is replaced; a live one is an error.
    pub async fn bind(addr: &str) -> Result<Listener, ListenError> {
        Self::bind_with_mode(addr, 0o600).await
    }

    /// Like [`Listener::bind`], with the unix socket's file mode.
    pub async fn bind_with_mode(addr: &str, socket_mode: u32) -> Result<Listener, ListenError> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if path.as_os_str().is_empty() {
                return Err(ListenError::BadAddress(addr.to_string()));
            }
            remove_stale_socket(&path).await?;
            let listener = UnixListener::bind(&path).map_err(|source| ListenError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(socket_mode)).map_err(
                |source| ListenError::Permissions {
                    path: path.clone(),
                    source,
                },
            )?;
            return Ok(Listener::Unix(listener, path));
        }
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| ListenError::BadAddress(addr.to_string()))?;
        let listener = TcpListener::bind(sock)
            .await
            .map_err(|source| ListenError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Listener::Tcp(listener))
    }

    /// The address clients connect to, in `--listen` syntax.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

async fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    // Someone answering means a live server owns it.
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(ListenError::SocketInUse(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}
