//! A unix-socket proxy a test can cut: what a dropped connection, or a
//! vanished server socket, looks like from either side.

use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

pub struct UnixProxy {
    /// Ends the connections open now; new ones are still forwarded.
    connections: std::sync::Mutex<CancellationToken>,
    /// Ends everything and removes the socket.
    stopped: CancellationToken,
}

impl UnixProxy {
    /// Forwards connections on `path` to `target`.
    pub fn start(path: &Path, target: PathBuf) -> std::sync::Arc<UnixProxy> {
        let listener = UnixListener::bind(path).expect("bind the proxy socket");
        let proxy = std::sync::Arc::new(UnixProxy {
            connections: std::sync::Mutex::new(CancellationToken::new()),
            stopped: CancellationToken::new(),
        });
        let (this, path) = (proxy.clone(), path.to_path_buf());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                    _ = this.stopped.cancelled() => break,
                };
                let cut = this.current().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = UnixStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
            this.cut();
            drop(listener);
            let _ = std::fs::remove_file(&path);
        });
        proxy
    }

    fn current(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every open connection at once (no close, no reset: gone).
    pub fn cut(&self) {
        let mut current = self.current();
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Drops every connection and refuses new ones.
    pub fn stop(&self) {
        self.stopped.cancel();
    }
}
