//! Bearer-token authentication for ExecService, SessionAdmin and every
//! HTTP door.
//!
//! Tokens come from `--auth-token-file` (exec) and optionally
//! `--admin-token-file` (admin): one per line, blank lines and `#` comments
//! ignored, several at once so they can be rotated. The files are re-read on
//! SIGHUP; a reload that fails keeps the old tokens. A token too short to
//! resist guessing (under 128 bits, judged by its length and alphabet) is
//! warned about when its file is read. Clients send exactly one
//! `authorization: Bearer <token>` (`bearer_token`: one parser for every
//! door). The checks run in interceptors, before any handler (so before
//! anything is spawned), compare in constant time, and never log a token;
//! refusals are counted and logged at a bounded rate (`record_failure`).
//!
//! Exec and admin rights differ: an exec client may run commands, but only
//! an operator should read every session's command line or close other
//! clients' sessions. With an admin token file, the admin API takes only
//! its tokens and answers an exec token with PERMISSION_DENIED (it is
//! known, just not allowed there). Without one, an exec token opens the
//! admin API for its own sessions only (`AdminRights::Own`).
//!
//! The exec check also tags each request with an `Owner`, a keyed hash of
//! its token (and, with mutual TLS, of the client certificate), which the
//! session registry counts sessions under (`--max-sessions-per-token`), so
//! one client cannot take every slot, and which a reattach must match.

mod bearer;
mod certificate;
mod refusals;

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub(crate) use bearer::{
    bearer_or_subprotocol, bearer_token, parse_bearer, single_header, BearerError,
};
pub(crate) use certificate::ClientCertificate;
pub use refusals::MAX_LINES_PER_SECOND;
pub(crate) use refusals::{record_failure, AuthFailure};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} holds no tokens")]
    Empty(PathBuf),
    #[error("the token file {path} line {line}: tokens must be printable ASCII without spaces")]
    BadToken { path: PathBuf, line: usize },
}

/// The accepted tokens; shared by every interceptor clone, swapped whole on
/// reload.
#[derive(Clone)]
pub struct TokenStore {
    path: PathBuf,
    tokens: Arc<RwLock<Arc<Vec<Vec<u8>>>>>,
}

/// Guessing strength below which a token is warned about.
pub(crate) const MIN_TOKEN_BITS: u32 = 128;

/// About how many bits of guessing a token resists, from its length and
/// alphabet (hex: 4 bits a character, base64: 6, any printable ASCII:
/// 6.5). A ceiling, not a measure: `aaaa…` scores like random text.
pub(crate) fn estimated_bits(token: &[u8]) -> u32 {
    let per_char_x2: u32 = if token.iter().all(u8::is_ascii_hexdigit) {
        8
    } else if token
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='))
    {
        12
    } else {
        13
    };
    u32::try_from(token.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(per_char_x2)
        / 2
}

/// Lines (1-based) of `text` whose token scores under [`MIN_TOKEN_BITS`],
/// with its score.
fn weak_tokens(text: &str) -> Vec<(usize, u32)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| (n, estimated_bits(line.as_bytes())))
        .filter(|(_, bits)| *bits < MIN_TOKEN_BITS)
        .collect()
}

fn parse(path: &Path, text: &str) -> Result<Vec<Vec<u8>>, AuthError> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::BadToken {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        tokens.push(line.as_bytes().to_vec());
    }
    if tokens.is_empty() {
        return Err(AuthError::Empty(path.to_path_buf()));
    }
    Ok(tokens)
}

impl TokenStore {
    pub fn load(path: &Path) -> Result<TokenStore, AuthError> {
        let tokens = Self::read(path)?;
        Ok(TokenStore {
            path: path.to_path_buf(),
            tokens: Arc::new(RwLock::new(Arc::new(tokens))),
        })
    }

    fn read(path: &Path) -> Result<Vec<Vec<u8>>, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let tokens = parse(path, &text)?;
        for (line, bits) in weak_tokens(&text) {
            tracing::warn!(
                path = %path.display(),
                line,
                estimated_bits = bits,
                "the token on this line is too short to resist guessing (about {bits} bits); use at least {MIN_TOKEN_BITS} bits, e.g. `openssl rand -hex 32`"
            );
        }
        Ok(tokens)
    }

    /// Re-reads the file; on error the current tokens stay in force.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tokens = Self::read(&self.path)?;
        let count = tokens.len();
        let mut guard = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(tokens);
        Ok(count)
    }

    fn current(&self) -> Arc<Vec<Vec<u8>>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Admits the credential a door read (`presented`, from [`bearer_token`]
    /// or the door's own places): the token when it is one of these, else
    /// the failure, counted in `metrics` as door `door` and logged.
    pub(crate) fn admit<T: AsRef<[u8]>>(
        &self,
        presented: Result<Option<T>, BearerError>,
        metrics: &Metrics,
        door: &'static str,
    ) -> Result<T, AuthFailure> {
        let failure = match presented {
            Ok(Some(token)) if self.accepts(token.as_ref()) => return Ok(token),
            Ok(Some(_)) => AuthFailure::Unknown,
            Ok(None) => AuthFailure::Missing,
            Err(e) => AuthFailure::Unreadable(e),
        };
        record_failure(Some(metrics), door, failure);
        Err(failure)
    }

    /// Whether `presented` is one of the tokens. Every token is compared in
    /// full, in constant time per byte, whatever matches.
    pub(crate) fn accepts(&self, presented: &[u8]) -> bool {
        let tokens = self.current();
        let mut ok = subtle::Choice::from(0u8);
        for token in tokens.iter() {
            ok |= token.as_slice().ct_eq(presented);
        }
        ok.into()
    }
}

/// The bearer token of a gRPC request's metadata (exactly one
/// `authorization` entry).
fn grpc_bearer<T>(request: &Request<T>) -> Result<&[u8], AuthFailure> {
    let fields = request.metadata().get_all("authorization");
    parse_bearer(fields.iter().map(|v| v.as_bytes()))?.ok_or(AuthFailure::Missing)
}

/// Who started a session, as the registry counts it and a reattach must
/// match: a hash of the bearer token (with mutual TLS, together with the
/// client certificate) keyed with a random per-process key, so it names
/// the credential within this process without revealing it (or anything
/// usable elsewhere). It is still derived from a secret, so it is never
/// logged or listed either. Every door derives it the same way, so a
/// session started through one door is the same client's on another.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Owner(String);

impl Owner {
    /// The owner of `token` on a connection without a client certificate.
    #[cfg(test)]
    pub(crate) fn of_token(token: &[u8]) -> Owner {
        Owner::of(token, None)
    }

    /// The owner of `token` presented over a connection with `cert`.
    pub(crate) fn of(token: &[u8], cert: Option<&ClientCertificate>) -> Owner {
        // One key for the process, so a token keeps its owner (and its
        // sessions' count) across SIGHUP reloads; two of them for 128 bits.
        static KEYS: OnceLock<[std::collections::hash_map::RandomState; 2]> = OnceLock::new();
        let keys = KEYS.get_or_init(Default::default);
        let credential = (token, cert.map(ClientCertificate::fingerprint));
        let (a, b) = (keys[0].hash_one(credential), keys[1].hash_one(credential));
        Owner(format!("token-{a:016x}{b:016x}"))
    }

    /// The owner of `token` on a request with these extensions (which
    /// hold the client certificate, if any).
    pub(crate) fn of_request(token: &[u8], extensions: &http::Extensions) -> Owner {
        Owner::of(token, extensions.get::<ClientCertificate>())
    }

    pub(crate) fn into_key(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner(…)")
    }
}

/// Where refusals are counted: the server's metrics (when wired) under
/// the door's name.
#[derive(Clone)]
struct Reporting {
    metrics: Option<Arc<Metrics>>,
    door: &'static str,
}

impl Reporting {
    fn refuse(&self, failure: AuthFailure) -> Status {
        record_failure(self.metrics.as_deref(), self.door, failure);
        failure.status()
    }
}

/// Interceptor for ExecService (and the CRI RuntimeService): admits
/// requests with an exec token and tags them with their [`Owner`].
#[derive(Clone)]
pub(crate) struct ExecGuard {
    tokens: TokenStore,
    report: Reporting,
}

impl ExecGuard {
    pub(crate) fn new(tokens: TokenStore) -> Self {
        ExecGuard {
            tokens,
            report: Reporting {
                metrics: None,
                door: "grpc",
            },
        }
    }

    /// Counts refusals in `metrics` as door `door` (`grpc`, `cri`).
    pub(crate) fn reporting(mut self, metrics: Arc<Metrics>, door: &'static str) -> Self {
        self.report = Reporting {
            metrics: Some(metrics),
            door,
        };
        self
    }
}

impl Interceptor for ExecGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = grpc_bearer(&request).map_err(|f| self.report.refuse(f))?;
        if !self.tokens.accepts(token) {
            return Err(self.report.refuse(AuthFailure::Unknown));
        }
        let owner = Owner::of(token, request.extensions().get::<ClientCertificate>());
        request.extensions_mut().insert(owner);
        Ok(request)
    }
}

/// What an admitted admin request may see and do (a request extension;
/// absent when the server has no tokens at all: everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminRights {
    /// An admin token: every session.
    All,
    /// An exec token on a server without admin tokens: the sessions this
    /// owner started, nothing of anyone else's.
    Own(Owner),
}

/// Interceptor for SessionAdmin.
#[derive(Clone)]
pub(crate) struct AdminGuard {
    admin: TokenStore,
    /// Exec tokens, recognised only to answer them with PERMISSION_DENIED.
    exec: Option<TokenStore>,
    /// The accepted tokens are exec tokens: each sees its own sessions.
    own_only: bool,
    report: Reporting,
}

impl AdminGuard {
    /// The guard for the configured token files: admin tokens when given
    /// (exec tokens then refused), else the exec tokens, each limited to
    /// its own sessions, else none (open, like ExecService).
    pub(crate) fn new(exec: Option<&TokenStore>, admin: Option<&TokenStore>) -> Option<Self> {
        let (admin, exec, own_only) = match (admin, exec) {
            (Some(admin), exec) => (admin.clone(), exec.cloned(), false),
            (None, Some(exec)) => (exec.clone(), None, true),
            (None, None) => return None,
        };
        Some(AdminGuard {
            admin,
            exec,
            own_only,
            report: Reporting {
                metrics: None,
                door: "admin",
            },
        })
    }

    /// Counts refusals in `metrics` (door `admin`).
    pub(crate) fn reporting(mut self, metrics: Arc<Metrics>) -> Self {
        self.report.metrics = Some(metrics);
        self
    }
}

impl Interceptor for AdminGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = grpc_bearer(&request).map_err(|f| self.report.refuse(f))?;
        if self.admin.accepts(token) {
            let rights = if self.own_only {
                AdminRights::Own(Owner::of(
                    token,
                    request.extensions().get::<ClientCertificate>(),
                ))
            } else {
                AdminRights::All
            };
            request.extensions_mut().insert(rights);
            return Ok(request);
        }
        if self.exec.as_ref().is_some_and(|exec| exec.accepts(token)) {
            return Err(self.report.refuse(AuthFailure::Forbidden));
        }
        Err(self.report.refuse(AuthFailure::Unknown))
    }
}

#[cfg(test)]
mod tests;
