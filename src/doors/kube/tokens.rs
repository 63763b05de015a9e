//! Single-use streaming tokens: what CRI `Exec`/`Attach` hand out inside
//! their URL, and what the WebSocket request on that URL redeems.
//!
//! A token is 128 random bits and is the only capability the streaming URL
//! needs (kubelet's streaming server works the same way), so it is never
//! logged, is removed on first use, and expires after `--stream-token-ttl`.
//! At most `MAX_PENDING` tokens are outstanding, and at most
//! [`MAX_PENDING_PER_OWNER`] for one bearer token: a client calling Exec in
//! a loop without connecting gets RESOURCE_EXHAUSTED instead of growing
//! execd's memory, and cannot take every slot from the other clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use super::StreamRequest;

/// Most tokens outstanding at once.
pub(crate) const MAX_PENDING: usize = 1000;

/// Most tokens outstanding at once for one owner (bearer token). Without
/// `--auth-token-file` every caller is the same anonymous owner, so only
/// `MAX_PENDING` applies then (like `--max-sessions-per-token`).
pub const MAX_PENDING_PER_OWNER: usize = 64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("{MAX_PENDING} streaming URLs are outstanding (unused and not yet expired); use or let some expire first")]
    TooMany,
    #[error("{MAX_PENDING_PER_OWNER} streaming URLs of this token are outstanding (unused and not yet expired); use or let some expire first")]
    TooManyForOwner,
    #[error(
        "execd has no streaming base URL: it listens on no TCP address; set --stream-base-url"
    )]
    NoBaseUrl,
}

struct Pending {
    expires: Instant,
    request: StreamRequest,
}

/// The token store, shared by the CRI service (issues) and the HTTP door
/// (redeems). Cheap to clone.
#[derive(Clone)]
pub(crate) struct StreamTokens {
    inner: Arc<Mutex<HashMap<String, Pending>>>,
    ttl: Duration,
    base_url: Option<Arc<str>>,
    gauge: Gauge,
}

impl StreamTokens {
    /// `base_url` without a trailing slash; `None` when there is none (then
    /// issuing fails with [`TokenError::NoBaseUrl`]).
    pub(crate) fn new(base_url: Option<String>, ttl: Duration, gauge: Gauge) -> Self {
        StreamTokens {
            inner: Arc::default(),
            ttl,
            base_url: base_url.map(|u| Arc::from(u.trim_end_matches('/'))),
            gauge,
        }
    }

    /// Stores `request` under a fresh token and returns its absolute URL,
    /// `<base>/<path>/<token>` (`path` is `exec` or `attach`).
    pub(crate) fn issue(&self, path: &str, request: StreamRequest) -> Result<String, TokenError> {
        let base = self.base_url.as_deref().ok_or(TokenError::NoBaseUrl)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        self.gauge.set(map.len() as i64);
        if map.len() >= MAX_PENDING {
            return Err(TokenError::TooMany);
        }
        // A scan of at most MAX_PENDING entries under the lock: cheaper
        // than keeping a second map in step with every expiry.
        if !request.owner.is_empty()
            && map
                .values()
                .filter(|p| p.request.owner == request.owner)
                .count()
                >= MAX_PENDING_PER_OWNER
        {
            return Err(TokenError::TooManyForOwner);
        }
        map.insert(
            token.clone(),
            Pending {
                expires: now + self.ttl,
                request,
            },
        );
        self.gauge.set(map.len() as i64);
        Ok(format!("{base}/{path}/{token}"))
    }

    /// Takes the request stored under `token` for `path`, if it is there
    /// and not expired. The token is gone afterwards either way.
    pub(crate) fn redeem(&self, path: &str, token: &str) -> Option<StreamRequest> {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        let pending = map.remove(token);
        self.gauge.set(map.len() as i64);
        pending
            .map(|p| p.request)
            .filter(|r| r.kind.as_str() == path)
    }

    /// Drops expired tokens (so the gauge follows expiry too).
    pub(crate) fn sweep(&self) {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        self.gauge.set(map.len() as i64);
    }

    /// Sweeps every second until `shutdown`.
    pub(crate) async fn sweep_until(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock leaves a consistent map (every
        // operation is a single insert/remove/retain): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The base URL derived from the listeners: the first TCP one, `https`
/// under TLS. A wildcard address is not reachable as such, so it becomes
/// loopback (set `--stream-base-url` for remote clients).
pub(crate) fn default_base_url(listeners: &[crate::Listener], tls: bool) -> Option<String> {
    let scheme = if tls { "https" } else { "http" };
    listeners.iter().find_map(|l| match &l.0 {
        crate::listener::Bound::Tcp(tcp) => {
            let mut addr = tcp.local_addr().ok()?;
            if addr.ip().is_unspecified() {
                let loopback: std::net::IpAddr = if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                addr.set_ip(loopback);
            }
            Some(format!("{scheme}://{addr}"))
        }
        crate::listener::Bound::Unix(..) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use execd_session::{Door, SessionKind};

    fn request(kind: SessionKind) -> StreamRequest {
        StreamRequest {
            door: Door::Cri,
            kind,
            container_id: "c".into(),
            command: vec!["true".into()],
            instance_id: String::new(),
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
            owner: String::new(),
            session_id: None,
        }
    }

    #[test]
    fn tokens_are_single_use_bounded_and_expire() {
        let gauge = Gauge::default();
        let tokens = StreamTokens::new(
            Some("http://h:1/".into()),
            // Long enough that none expires while 1000 are issued on a
            // busy machine.
            Duration::from_secs(2),
            gauge.clone(),
        );
        let url = tokens.issue("exec", request(SessionKind::Exec)).unwrap();
        let token = url.strip_prefix("http://h:1/exec/").unwrap();
        assert_eq!(token.len(), 32);
        assert_eq!(gauge.get(), 1);
        assert!(tokens.redeem("attach", token).is_none(), "wrong path");
        let url = tokens.issue("exec", request(SessionKind::Exec)).unwrap();
        let token = url.rsplit('/').next().unwrap();
        assert!(tokens.redeem("exec", token).is_some());
        assert!(tokens.redeem("exec", token).is_none(), "used twice");
        for _ in 0..MAX_PENDING {
            tokens.issue("exec", request(SessionKind::Exec)).unwrap();
        }
        assert_eq!(
            tokens.issue("exec", request(SessionKind::Exec)),
            Err(TokenError::TooMany)
        );
        std::thread::sleep(Duration::from_millis(2100));
        tokens.sweep();
        assert_eq!(gauge.get(), 0, "expired tokens leave the gauge");
        let none = StreamTokens::new(None, Duration::from_secs(1), Gauge::default());
        assert_eq!(
            none.issue("exec", request(SessionKind::Exec)),
            Err(TokenError::NoBaseUrl)
        );
    }

    #[test]
    fn each_owner_has_its_own_share() {
        let tokens = StreamTokens::new(
            Some("http://h:1".into()),
            Duration::from_secs(600),
            Gauge::default(),
        );
        let owned = |owner: &str| StreamRequest {
            owner: owner.into(),
            ..request(SessionKind::Exec)
        };
        let mut urls = Vec::new();
        for _ in 0..MAX_PENDING_PER_OWNER {
            urls.push(tokens.issue("exec", owned("token-a")).unwrap());
        }
        assert_eq!(
            tokens.issue("exec", owned("token-a")),
            Err(TokenError::TooManyForOwner)
        );
        // Another owner, and the anonymous one, still get theirs.
        tokens.issue("exec", owned("token-b")).unwrap();
        for _ in 0..MAX_PENDING_PER_OWNER + 1 {
            tokens.issue("exec", owned("")).unwrap();
        }
        // A used URL gives its slot back.
        let token = urls[0].rsplit('/').next().unwrap();
        assert!(tokens.redeem("exec", token).is_some());
        tokens.issue("exec", owned("token-a")).unwrap();
    }
}
