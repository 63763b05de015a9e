//! Token files, guards and owners.

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

fn with_two(first: &str, second: &str) -> Request<()> {
    let mut r = Request::new(());
    r.metadata_mut()
        .append("authorization", first.parse().unwrap());
    r.metadata_mut()
        .append("authorization", second.parse().unwrap());
    r
}

/// One right and one wrong token, in either order: nothing is admitted,
/// and the answer says why without naming either.
#[test]
fn two_authorization_entries_are_refused_as_ambiguous() {
    let (_d, s) = store("right-token\n");
    let (_a, admin) = store("admin-token\n");
    for (first, second) in [
        ("Bearer right-token", "Bearer wrong-token"),
        ("Bearer wrong-token", "Bearer right-token"),
        ("Bearer right-token", "Bearer right-token"),
    ] {
        let err = ExecGuard::new(s.clone())
            .call(with_two(first, second))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("ambiguous"), "{}", err.message());
        assert!(!err.message().contains("token-"), "{}", err.message());
        let err = AdminGuard::new(Some(&s), Some(&admin))
            .unwrap()
            .call(with_two(first, second))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    // Any case of the scheme, whitespace around the token.
    let mut guard = ExecGuard::new(s);
    for ok in [
        "bearer right-token",
        "BEARER  right-token ",
        "Bearer\tright-token",
    ] {
        assert!(guard.call(request(Some(ok))).is_ok(), "{ok:?}");
    }
}

/// With mutual TLS the certificate is part of the owner: the same token
/// from another certificate is another client.
#[test]
fn the_client_certificate_is_part_of_the_owner() {
    let (_d, s) = store("shared-token\n");
    let mut guard = ExecGuard::new(s);
    let with_cert = |der: &[u8]| {
        let mut r = request(Some("Bearer shared-token"));
        r.extensions_mut().insert(ClientCertificate::from_der(der));
        r
    };
    let plain = owner(&guard.call(request(Some("Bearer shared-token"))).unwrap()).unwrap();
    let alice = owner(&guard.call(with_cert(b"alice-cert")).unwrap()).unwrap();
    let bob = owner(&guard.call(with_cert(b"bob-cert")).unwrap()).unwrap();
    assert!(plain != alice && alice != bob && plain != bob);
    assert!(alice == owner(&guard.call(with_cert(b"alice-cert")).unwrap()).unwrap());
    assert!(plain == Owner::of_token(b"shared-token"));
    let mut ext = http::Extensions::new();
    ext.insert(ClientCertificate::from_der(b"alice-cert"));
    assert!(alice == Owner::of_request(b"shared-token", &ext));
}

/// Without an admin file an exec token is admitted to the admin API for
/// its own sessions only; admin tokens see everything.
#[test]
fn exec_tokens_get_their_own_sessions_on_the_admin_api() {
    let (_e, exec) = store("exec-1\n");
    let (_a, admin) = store("admin-1\n");
    let rights = |r: Request<()>| r.extensions().get::<AdminRights>().cloned();
    let mut scoped = AdminGuard::new(Some(&exec), None).unwrap();
    let admitted = scoped.call(request(Some("Bearer exec-1"))).unwrap();
    assert_eq!(
        rights(admitted),
        Some(AdminRights::Own(Owner::of_token(b"exec-1")))
    );
    let mut full = AdminGuard::new(Some(&exec), Some(&admin)).unwrap();
    let admitted = full.call(request(Some("Bearer admin-1"))).unwrap();
    assert_eq!(rights(admitted), Some(AdminRights::All));
}

#[test]
fn short_tokens_are_found_by_their_guessing_strength() {
    assert_eq!(estimated_bits(&[b'a'; 32]), 128, "32 hex digits");
    assert_eq!(estimated_bits(&[b'a'; 31]), 124);
    assert_eq!(estimated_bits(b"ZZZZZZZZZZZZZZZZZZZZZZ"), 132, "22 base64");
    assert!(
        estimated_bits(b"!!!!!!!!!!!!!!!!!!!!") >= 128,
        "20 printable"
    );
    let file = "# comment\n0123456789abcdef\n\n  0123456789abcdef0123456789abcdef  \nshort-one\n";
    assert_eq!(weak_tokens(file), vec![(2, 64), (5, 54)]);
}
