//! Where execd listens: TCP addresses and unix sockets (`unix:/path`).
//!
//! A unix socket is the default and the safe choice: its file mode decides
//! who may connect. So it is created with that mode from the first moment
//! (the umask is narrowed around `bind`, no chmod window), its directory is
//! created 0700 when missing, a symlink in its place is refused, and on
//! shutdown the path is removed only while it is still the socket this
//! process created (a successor may already have replaced it).
//!
//! An existing socket directory must be safe to put the socket in: owned
//! by root or by execd's own user, and writable by its owner only.
//! Anyone else who can write there could replace the socket with their own
//! and collect the tokens of every client that connects, so execd refuses
//! to start with such a directory instead of trusting it.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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
    #[error("{0} is a symbolic link; refusing to create the socket through it")]
    Symlink(PathBuf),
    #[error("another server is already listening on {0}")]
    SocketInUse(PathBuf),
    #[error("creating the socket directory {path} failed: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing the socket directory {path}: {problem}, so someone else could replace the socket with their own; use a directory owned by root or execd's user and writable only by it (chown root {path}; chmod 0700 {path}), or another --listen path")]
    UnsafeDirectory { path: PathBuf, problem: String },
}

/// The socket file this process created: removed on shutdown only if the
/// path still names this inode.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time: a freed inode number is reused at
    /// once, so the time tells our socket from a successor's.
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl SocketFile {
    /// Removes the path if it is still our socket.
    pub(crate) fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if identity(&meta) == self.identity => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => {
                tracing::info!(path = %self.path.display(), "socket path now belongs to another server; left in place")
            }
            Err(_) => {}
        }
    }
}

/// A bound listener: a TCP port or a unix socket.
pub struct Listener(pub(crate) Bound);

/// What a [`Listener`] is bound to (opaque outside the crate: the socket
/// file's bookkeeping is the server's business).
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
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
            return bind_unix(addr, path, socket_mode).await;
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
        Ok(Listener(Bound::Tcp(listener)))
    }

    /// The socket file to remove on shutdown, for unix listeners.
    pub(crate) fn socket_file(&self) -> Option<&SocketFile> {
        match &self.0 {
            Bound::Tcp(_) => None,
            Bound::Unix(_, file) => Some(file),
        }
    }

    /// The address clients connect to, in `--listen` syntax.
    pub fn local_addr(&self) -> String {
        match &self.0 {
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Bound::Unix(_, file) => format!("unix:{}", file.path.display()),
        }
    }
}

/// Refuses a socket directory that anyone but root or this process's user
/// owns, or that its group or others may write (see the module header).
fn check_socket_dir(dir: &Path) -> Result<(), ListenError> {
    // Followed if a symlink (/var/run → /run): what counts is where the
    // socket will be.
    let meta = std::fs::metadata(dir).map_err(|source| ListenError::Directory {
        path: dir.to_path_buf(),
        source,
    })?;
    let unsafe_dir = |problem: String| ListenError::UnsafeDirectory {
        path: dir.to_path_buf(),
        problem,
    };
    let us = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != us {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not root or execd's uid {us}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its group or others may write to it (mode {:04o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

async fn bind_unix(addr: &str, path: PathBuf, socket_mode: u32) -> Result<Listener, ListenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ListenError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    check_socket_dir(dir)?;
    remove_stale_socket(&path).await?;
    // The socket gets its mode at creation: the umask takes away every
    // bit the mode does not grant. The umask is process-wide, which is
    // acceptable here because listeners are bound at start, before any
    // session could create a file.
    let mask = nix::sys::stat::Mode::from_bits_truncate((!socket_mode & 0o777) as libc::mode_t);
    let previous = nix::sys::stat::umask(mask);
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(|source| ListenError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let meta = std::fs::symlink_metadata(&path).map_err(|source| ListenError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    Ok(Listener(Bound::Unix(
        listener,
        SocketFile {
            path,
            identity: identity(&meta),
        },
    )))
}

async fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(ListenError::Symlink(path.to_path_buf()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn socket_gets_its_mode_at_creation_and_a_missing_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/execd/execd.sock");
        let listener = Listener::bind_with_mode(&format!("unix:{}", path.display()), 0o660)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        drop(listener);
    }

    #[tokio::test]
    async fn symlink_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"precious").unwrap();
        let path = dir.path().join("execd.sock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = Listener::bind(&format!("unix:{}", path.display()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ListenError::Symlink(_)), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    /// A socket directory others could write to, or someone else's, is
    /// refused with the reason; a root-or-our own 0700/0755 one is fine.
    #[tokio::test]
    async fn an_unsafe_socket_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).unwrap();
        let addr = format!("unix:{}", sockets.join("execd.sock").display());
        for mode in [0o777, 0o1777, 0o770, 0o722] {
            std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Listener::bind(&addr).await.err().unwrap();
            assert!(
                matches!(err, ListenError::UnsafeDirectory { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("may write"), "{err}");
        }
        for mode in [0o700, 0o755] {
            std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(mode)).unwrap();
            drop(Listener::bind(&addr).await.unwrap());
        }
        // Someone else's directory (only root can hand one over here).
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&sockets, Some(12345), None).unwrap();
            let err = Listener::bind(&addr).await.err().unwrap();
            assert!(err.to_string().contains("owned by uid 12345"), "{err}");
        }
    }

    #[tokio::test]
    async fn only_our_own_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("execd.sock");
        let addr = format!("unix:{}", path.display());
        let Listener(Bound::Unix(first, file)) = Listener::bind(&addr).await.unwrap() else {
            panic!("unix listener expected");
        };
        // A successor replaced the socket (ours is stale once closed).
        drop(first);
        let successor = Listener::bind(&addr).await.unwrap();
        file.remove();
        assert!(path.exists(), "the successor's socket must stay");
        let Listener(Bound::Unix(_, theirs)) = successor else {
            panic!("unix listener expected");
        };
        theirs.remove();
        assert!(!path.exists());
    }
}
