//! Bearer-token authentication for ExecService and SessionAdmin.
//!
//! Tokens come from `--auth-token-file`: one per line, blank lines and `#`
//! comments ignored, several at once so they can be rotated. The file is
//! re-read on SIGHUP; a reload that fails keeps the old tokens. Clients send
//! `authorization: Bearer <token>`. The check runs in an interceptor, before
//! any handler (so before anything is spawned), compares in constant time,
//! and never logs a token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
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

    /// The interceptor body: Ok for a request with a valid bearer token.
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (Bearer token)")
        })?;
        let value = header.as_bytes();
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        if self.accepts(token) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
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

    #[test]
    fn accepts_any_listed_token_and_ignores_comments() {
        let (_d, s) = store("# rotation\nalpha\n\n  beta  \n");
        assert!(s.check(request(Some("Bearer alpha"))).is_ok());
        assert!(s.check(request(Some("Bearer beta"))).is_ok());
        for bad in [
            None,
            Some("Bearer gamma"),
            Some("alpha"),
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("Basic YWxwaGE="),
        ] {
            let err = s.check(request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(
                !err.message().contains("alpha"),
                "token leaked: {}",
                err.message()
            );
        }
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
