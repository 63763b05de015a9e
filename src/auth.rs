//! Bearer-token authentication for ExecService and SessionAdmin.
//!
//! Tokens come from `--auth-token-file` (exec) and optionally
//! `--admin-token-file` (admin): one per line, blank lines and `#` comments
//! ignored, several at once so they can be rotated. The files are re-read on
//! SIGHUP; a reload that fails keeps the old tokens. Clients send
//! `authorization: Bearer <token>`. The checks run in interceptors, before
//! any handler (so before anything is spawned), compare in constant time,
//! and never log a token.
//!
//! Exec and admin rights differ: an exec client may run commands, but only
//! an operator should read every session's command line or close other
//! clients' sessions. With an admin token file, the admin API takes only
//! its tokens and answers an exec token with PERMISSION_DENIED (it is
//! known, just not allowed there). Without one, the exec tokens also open
//! the admin API, as before.
//!
//! The exec check also tags each request with an [`Owner`], a keyed hash of
//! its token, which the session registry counts sessions under
//! (`--max-sessions-per-token`), so one client cannot take every slot.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

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
        parse(path, &text)
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

    /// Whether `presented` is one of the tokens. Every token is compared in
    /// full, in constant time per byte, whatever matches.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let tokens = self.current();
        let mut ok = subtle::Choice::from(0u8);
        for token in tokens.iter() {
            ok |= token.as_slice().ct_eq(presented);
        }
        ok.into()
    }
}

/// The bearer token a request carries.
fn bearer<T>(request: &Request<T>) -> Result<&[u8], Status> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata (Bearer token)"))?;
    let value = header.as_bytes();
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))
}

fn invalid_token() -> Status {
    Status::unauthenticated("invalid token")
}

/// Who started a session, as the registry counts it: a hash of the bearer
/// token keyed with a random per-process key, so it names the token within
/// this process without revealing it (or anything usable elsewhere). It is
/// still derived from a secret, so it is never logged or listed either.
#[derive(Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn of_token(token: &[u8]) -> Owner {
        // One key for the process, so a token keeps its owner (and its
        // sessions' count) across SIGHUP reloads.
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let hash = KEY.get_or_init(Default::default).hash_one(token);
        Owner(format!("token-{hash:016x}"))
    }

    pub fn into_key(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner(…)")
    }
}

/// Interceptor for ExecService: admits requests with an exec token and
/// tags them with their [`Owner`].
#[derive(Clone)]
pub struct ExecGuard {
    tokens: TokenStore,
}

impl ExecGuard {
    pub fn new(tokens: TokenStore) -> Self {
        ExecGuard { tokens }
    }
}

impl Interceptor for ExecGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer(&request)?;
        if !self.tokens.accepts(token) {
            return Err(invalid_token());
        }
        let owner = Owner::of_token(token);
        request.extensions_mut().insert(owner);
        Ok(request)
    }
}

/// Interceptor for SessionAdmin.
#[derive(Clone)]
pub struct AdminGuard {
    admin: TokenStore,
    /// Exec tokens, recognised only to answer them with PERMISSION_DENIED.
    exec: Option<TokenStore>,
}

impl AdminGuard {
    /// The guard for the configured token files: admin tokens when given
    /// (exec tokens then refused), else the exec tokens, else none (open,
    /// like ExecService).
    pub fn new(exec: Option<&TokenStore>, admin: Option<&TokenStore>) -> Option<Self> {
        match (admin, exec) {
            (Some(admin), exec) => Some(AdminGuard {
                admin: admin.clone(),
                exec: exec.cloned(),
            }),
            (None, Some(exec)) => Some(AdminGuard {
                admin: exec.clone(),
                exec: None,
            }),
            (None, None) => None,
        }
    }
}

impl Interceptor for AdminGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer(&request)?;
        if self.admin.accepts(token) {
            return Ok(request);
        }
        if self.exec.as_ref().is_some_and(|exec| exec.accepts(token)) {
            return Err(Status::permission_denied(
                "this token may open exec sessions but not use the admin API (that needs a token from --admin-token-file)",
            ));
        }
        Err(invalid_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(text: &str) -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let store = TokenStore::load(&path).unwrap();
        (dir, store)
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    fn owner(r: &Request<()>) -> Option<Owner> {
        r.extensions().get::<Owner>().cloned()
    }

    #[test]
    fn accepts_any_listed_token_and_ignores_comments() {
        let (_d, s) = store("# rotation\nalpha\n\n  beta  \n");
        let mut guard = ExecGuard::new(s);
        let alpha = guard.call(request(Some("Bearer alpha"))).unwrap();
        let beta = guard.call(request(Some("Bearer beta"))).unwrap();
        // Each token is its own owner, the same on every request, and the
        // key does not contain the token.
        let (a, b) = (owner(&alpha).unwrap(), owner(&beta).unwrap());
        assert_ne!(a, b);
        assert!(a == owner(&guard.call(request(Some("Bearer alpha"))).unwrap()).unwrap());
        assert!(!a.clone().into_key().contains("alpha"));
        assert_eq!(format!("{a:?}"), "Owner(…)");
        for bad in [
            None,
            Some("Bearer gamma"),
            Some("alpha"),
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("Basic YWxwaGE="),
        ] {
            let err = guard.call(request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(
                !err.message().contains("alpha"),
                "token leaked: {}",
                err.message()
            );
        }
    }

    #[test]
    fn admin_tokens_are_separate_from_exec_tokens() {
        let (_e, exec) = store("exec-1\n");
        let (_a, admin) = store("admin-1\n");
        let mut guard = AdminGuard::new(Some(&exec), Some(&admin)).unwrap();
        assert!(guard.call(request(Some("Bearer admin-1"))).is_ok());
        let err = guard.call(request(Some("Bearer exec-1"))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        for bad in [None, Some("Bearer nope"), Some("Bearer admin-")] {
            let err = guard.call(request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        // Admin tokens do not open exec sessions.
        let err = ExecGuard::new(exec.clone())
            .call(request(Some("Bearer admin-1")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // Without an admin file the exec tokens keep working for admin.
        let mut guard = AdminGuard::new(Some(&exec), None).unwrap();
        assert!(guard.call(request(Some("Bearer exec-1"))).is_ok());
        assert!(AdminGuard::new(None, None).is_none());
        // An admin file alone guards only the admin API.
        let mut guard = AdminGuard::new(None, Some(&admin)).unwrap();
        assert!(guard.call(request(Some("Bearer admin-1"))).is_ok());
    }

    #[test]
    fn reload_swaps_tokens_and_keeps_old_on_error() {
        let (dir, s) = store("old\n");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(s.reload().unwrap(), 1);
        assert!(!s.accepts(b"old"));
        assert!(s.accepts(b"new"));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(s.reload().is_err());
        assert!(
            s.accepts(b"new"),
            "a failed reload keeps the tokens in force"
        );
    }

    #[test]
    fn empty_or_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "\n# only comments\n").unwrap();
        assert!(matches!(TokenStore::load(&path), Err(AuthError::Empty(_))));
        std::fs::write(&path, "has space\n").unwrap();
        assert!(matches!(
            TokenStore::load(&path),
            Err(AuthError::BadToken { line: 1, .. })
        ));
    }
}
