//! Who may hold a connection slot, so that no group of clients can take
//! every one of them:
//!
//! - TCP listeners and unix sockets draw from separate pools of
//!   `max_connections` each: a flood over the network cannot keep out
//!   node-local clients, whom the socket's file mode already vouches for.
//! - One client address holds at most `max_per_peer` TCP connections; a
//!   new connection over that is closed at once. IPv6 addresses count per
//!   /64 (what one host or customer usually gets, so address hopping does
//!   not help), and every loopback address counts as one (127/8 is all the
//!   same host).
//! - With exec tokens configured, a TCP connection is *unproven* until one
//!   of its requests carries a valid token (exec or admin, in
//!   `authorization: Bearer`) or is upgraded: every door answers 101 only
//!   after its own credential check (a token in a header, query or
//!   subprotocol, or a single-use CRI streaming URL). Connections whose
//!   requests were all refused stay unproven. At most `max_unproven` of
//!   them are open at once; a new one past that evicts the oldest unproven
//!   connection (GOAWAY, dropped shortly after). So clients without a
//!   token hold at most that many slots however many addresses they use,
//!   while no new connection is refused for it: a real client's fresh
//!   connection is the youngest, and proves itself with its first request.
//!   Unix sockets and servers without tokens have nothing to prove.
//!
//! Every count is held by a [`Ticket`] that lives as long as the
//! connection's socket, an upgraded WebSocket or hijacked stream included.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::TokenStore;

/// `--max-connections-per-ip` when not given: a quarter of
/// `--max-connections`.
pub(crate) fn default_max_per_peer(max_connections: usize) -> usize {
    max_connections / 4
}

/// `--max-unauthenticated-connections` when not given: an eighth of
/// `--max-connections`.
pub(crate) fn default_max_unproven(max_connections: usize) -> usize {
    max_connections / 8
}

/// A client address over its connection cap.
#[derive(Debug, thiserror::Error)]
#[error("{peer} already holds {max} connections (--max-connections-per-ip)")]
pub(crate) struct PeerOverCap {
    pub(crate) peer: IpAddr,
    pub(crate) max: usize,
}

/// A lock that a panicking holder did not leave unusable: every critical
/// section here leaves the maps consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the per-address cap counts connections under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    V4(Ipv4Addr),
    /// The /64 network of an IPv6 address.
    V6Net(u64),
    Loopback,
}

impl PeerKey {
    fn of(ip: IpAddr) -> PeerKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() {
            return PeerKey::Loopback;
        }
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            IpAddr::V6(v6) => PeerKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The valid-token check that proves a connection.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    /// Exec tokens: without them every client may exec, and there is
    /// nothing to prove.
    pub(crate) exec: Option<TokenStore>,
    pub(crate) admin: Option<TokenStore>,
}

impl Credentials {
    fn required(&self) -> bool {
        self.exec.is_some()
    }

    /// Whether `headers` carry a token of either file, read by the one
    /// bearer parser every door uses ([`crate::auth::bearer_token`]): what
    /// a door would refuse (two `Authorization` fields, another scheme)
    /// proves nothing here either. Only a proof for slot accounting: the
    /// doors still run their own checks.
    fn presented(&self, headers: &http::HeaderMap) -> bool {
        let Ok(Some(token)) = crate::auth::bearer_token(headers) else {
            return false;
        };
        [&self.exec, &self.admin]
            .into_iter()
            .flatten()
            .any(|store| store.accepts(token))
    }
}

/// The slot pools and counts every accept loop shares.
#[derive(Clone)]
pub(crate) struct Admission {
    tcp: Arc<Semaphore>,
    unix: Arc<Semaphore>,
    max_per_peer: usize,
    peers: Arc<Mutex<HashMap<PeerKey, usize>>>,
    /// `None` when there is nothing to prove (no exec tokens).
    unproven: Option<Arc<Unproven>>,
    credentials: Credentials,
}

impl Admission {
    pub(crate) fn new(
        max_connections: usize,
        max_per_peer: usize,
        max_unproven: usize,
        credentials: Credentials,
    ) -> Admission {
        let max_connections = max_connections.max(1);
        Admission {
            tcp: Arc::new(Semaphore::new(max_connections)),
            unix: Arc::new(Semaphore::new(max_connections)),
            max_per_peer: max_per_peer.max(1),
            peers: Arc::default(),
            unproven: credentials.required().then(|| {
                Arc::new(Unproven {
                    max: max_unproven.max(1),
                    open: Mutex::default(),
                })
            }),
            credentials,
        }
    }

    /// The pool a listener's connections take their slot from.
    pub(crate) fn pool(&self, unix: bool) -> &Arc<Semaphore> {
        if unix {
            &self.unix
        } else {
            &self.tcp
        }
    }

    /// Admits an accepted connection holding `slot`: `peer` is its address
    /// (`None` on a unix socket). Refused when the address is over its cap.
    pub(crate) fn admit(
        &self,
        slot: OwnedSemaphorePermit,
        peer: Option<IpAddr>,
    ) -> Result<Ticket, PeerOverCap> {
        let Some(ip) = peer else {
            return Ok(Ticket {
                _slot: slot,
                _peer: None,
                standing: Standing::proven(),
            });
        };
        let key = PeerKey::of(ip);
        {
            let mut peers = lock(&self.peers);
            let count = peers.entry(key).or_insert(0);
            if *count >= self.max_per_peer {
                return Err(PeerOverCap {
                    peer: ip,
                    max: self.max_per_peer,
                });
            }
            *count += 1;
        }
        let peer = PeerCount {
            key,
            peers: self.peers.clone(),
        };
        let standing = match &self.unproven {
            None => Standing::proven(),
            Some(unproven) => {
                let evicted = CancellationToken::new();
                let entry = unproven.register(evicted.clone());
                Arc::new(Standing {
                    proven: AtomicBool::new(false),
                    entry: Mutex::new(Some(entry)),
                    evicted,
                    credentials: self.credentials.clone(),
                })
            }
        };
        Ok(Ticket {
            _slot: slot,
            _peer: Some(peer),
            standing,
        })
    }
}

/// An admitted connection's counts; dropping it frees them.
pub(crate) struct Ticket {
    _slot: OwnedSemaphorePermit,
    _peer: Option<PeerCount>,
    pub(crate) standing: Arc<Standing>,
}

/// One connection counted under its address.
struct PeerCount {
    key: PeerKey,
    peers: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

impl Drop for PeerCount {
    fn drop(&mut self) {
        let mut peers = lock(&self.peers);
        if let Some(count) = peers.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                peers.remove(&self.key);
            }
        }
    }
}

/// Whether a connection has proven itself, and its place among the
/// unproven ones until it has.
pub(crate) struct Standing {
    proven: AtomicBool,
    entry: Mutex<Option<UnprovenEntry>>,
    /// Cancelled when newer unproven connections pushed this one out.
    evicted: CancellationToken,
    credentials: Credentials,
}

impl Standing {
    fn proven() -> Arc<Standing> {
        Arc::new(Standing {
            proven: AtomicBool::new(true),
            entry: Mutex::new(None),
            evicted: CancellationToken::new(),
            credentials: Credentials::default(),
        })
    }

    pub(crate) fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// The connection passed a credential check: it leaves the unproven
    /// ones for good.
    pub(crate) fn prove(&self) {
        if !self.proven.swap(true, Ordering::Relaxed) {
            let entry = lock(&self.entry).take();
            drop(entry);
        }
    }

    /// Looks at a request before any door does: one with a valid token
    /// proves its connection. Returns whether the connection is proven.
    pub(crate) fn note_request(&self, headers: &http::HeaderMap) -> bool {
        if self.is_proven() {
            return true;
        }
        if self.credentials.presented(headers) {
            self.prove();
            return true;
        }
        false
    }

    /// Fires when this (unproven) connection is to make room.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

/// The open unproven connections, oldest first.
struct Unproven {
    max: usize,
    open: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Unproven {
    /// Counts a new connection, evicting the oldest ones past the budget.
    fn register(self: &Arc<Self>, evicted: CancellationToken) -> UnprovenEntry {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut pushed_out = Vec::new();
        {
            let mut open = lock(&self.open);
            open.insert(id, evicted);
            while open.len() > self.max {
                match open.pop_first() {
                    Some((_, oldest)) => pushed_out.push(oldest),
                    None => break,
                }
            }
        }
        if !pushed_out.is_empty() {
            tracing::debug!(
                evicted = pushed_out.len(),
                max = self.max,
                "unauthenticated connections over --max-unauthenticated-connections; closing the oldest"
            );
        }
        for token in pushed_out {
            token.cancel();
        }
        UnprovenEntry {
            id,
            registry: self.clone(),
        }
    }
}

/// One connection counted as unproven; dropped when it proves itself or
/// closes.
struct UnprovenEntry {
    id: u64,
    registry: Arc<Unproven>,
}

impl Drop for UnprovenEntry {
    fn drop(&mut self) {
        lock(&self.registry.open).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir, token: &str) -> TokenStore {
        let path = dir.path().join(token);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        TokenStore::load(&path).unwrap()
    }

    fn slot(pool: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        pool.clone().try_acquire_owned().unwrap()
    }

    #[test]
    fn peers_are_grouped_by_host() {
        let key = |s: &str| PeerKey::of(s.parse().unwrap());
        assert_eq!(key("127.0.0.1"), key("127.9.8.7"));
        assert_eq!(key("::1"), key("127.0.0.1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn the_per_peer_cap_frees_with_its_connections() {
        let admission = Admission::new(10, 2, 10, Credentials::default());
        let pool = admission.pool(false).clone();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = admission.admit(slot(&pool), Some(ip)).unwrap();
        let _b = admission.admit(slot(&pool), Some(ip)).unwrap();
        assert!(admission.admit(slot(&pool), Some(ip)).is_err());
        let other = "10.0.0.2".parse().ok();
        assert!(admission.admit(slot(&pool), other).is_ok());
        drop(a);
        assert!(admission.admit(slot(&pool), Some(ip)).is_ok());
        // Unix sockets have no address to cap.
        let unix = admission.pool(true).clone();
        for _ in 0..5 {
            assert!(admission.admit(slot(&unix), None).is_ok());
        }
    }

    #[test]
    fn the_oldest_unproven_connection_makes_room_and_proven_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials {
            exec: Some(store(&dir, "exec-token")),
            admin: Some(store(&dir, "admin-token")),
        };
        let admission = Admission::new(100, 100, 2, credentials);
        let pool = admission.pool(false).clone();
        let ip = "10.0.0.1".parse().ok();
        let proven = admission.admit(slot(&pool), ip).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer exec-token".parse().unwrap());
        assert!(proven.standing.note_request(&headers));
        let first = admission.admit(slot(&pool), ip).unwrap();
        let refused = admission.admit(slot(&pool), ip).unwrap();
        headers.insert("authorization", "Bearer wrong".parse().unwrap());
        assert!(!refused.standing.note_request(&headers));
        assert!(!first.standing.evicted().is_cancelled());
        let third = admission.admit(slot(&pool), ip).unwrap();
        assert!(first.standing.evicted().is_cancelled(), "oldest goes");
        assert!(!refused.standing.evicted().is_cancelled());
        assert!(!third.standing.evicted().is_cancelled());
        // What the doors refuse proves nothing: two fields (one of them
        // right), another scheme.
        headers.append("authorization", "Bearer exec-token".parse().unwrap());
        assert!(!refused.standing.note_request(&headers));
        headers.insert("authorization", "Basic exec-token".parse().unwrap());
        assert!(!refused.standing.note_request(&headers));
        // An admin token proves a connection too, read as every door reads
        // it (any case, any whitespace).
        headers.insert("authorization", "bEaReR\tadmin-token ".parse().unwrap());
        assert!(refused.standing.note_request(&headers));
        for _ in 0..5 {
            drop(admission.admit(slot(&pool), ip).unwrap());
        }
        assert!(!proven.standing.evicted().is_cancelled());
        assert!(!refused.standing.evicted().is_cancelled());
    }

    #[test]
    fn without_exec_tokens_every_connection_is_proven() {
        let admission = Admission::new(10, 10, 1, Credentials::default());
        let pool = admission.pool(false).clone();
        let ticket = admission
            .admit(slot(&pool), "10.0.0.1".parse().ok())
            .unwrap();
        assert!(ticket.standing.note_request(&http::HeaderMap::new()));
    }
}
