//! Cross-site WebSocket hijacking guard: a layer over every door that
//! refuses WebSocket upgrades from another origin.
//!
//! A browser lets any page open a WebSocket to any server, sending its own
//! `Origin`; without a token (the loopback default) that would give every
//! web site its visitor's root shells. So an upgrade whose `Origin` is not
//! the origin of the server itself (compared with the request's `Host`) or
//! one of `--web-allowed-origins` gets 403. Requests without `Origin` (CLIs,
//! kube clients, other servers) are not browsers' and pass.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;

/// An origin reduced to what is compared: `scheme://host:port`, lowercase,
/// with the scheme's default port written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into lowercase host and port.
fn split_host(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Parses an `Origin` header value (or a `--web-allowed-origins` entry):
/// `http(s)://host[:port]`, nothing after; `None` for anything else
/// (including the `null` origin of sandboxed pages).
pub(crate) fn parse(value: &str) -> Option<Origin> {
    let (scheme, rest) = value.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = default_port(&scheme)?;
    let (host, port) = split_host(rest.strip_suffix('/').unwrap_or(rest))?;
    Some(Origin {
        scheme,
        host,
        port: port.unwrap_or(default),
    })
}

/// The clap value parser of `--web-allowed-origins`: the normalized form.
pub fn parse_allowed(value: &str) -> Result<String, String> {
    parse(value)
        .map(|o| o.to_string())
        .ok_or_else(|| format!("{value:?} is not an origin like https://host:port"))
}

/// Whether `origin` is the server's own, as the request's `Host` names it.
/// The connection's scheme is not known here (TLS ends below the router),
/// so a `Host` without a port takes the default port of the origin's
/// scheme, and an explicit port must match.
fn same_origin(origin: &Origin, host: &str) -> bool {
    match split_host(host) {
        Some((h, port)) => h == origin.host && port.unwrap_or(origin.port) == origin.port,
        None => false,
    }
}

fn is_upgrade(req: &Request) -> bool {
    let websocket = req
        .headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    // HTTP/2 WebSockets (RFC 8441) are CONNECT requests.
    websocket || req.method() == http::Method::CONNECT
}

fn request_host(req: &Request) -> Option<String> {
    let headers: &HeaderMap = req.headers();
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// The reason an upgrade is refused, or `None` when it may go on.
pub(crate) fn check(req: &Request, allowed: &[String]) -> Option<String> {
    if !is_upgrade(req) {
        return None;
    }
    foreign_origin(req, allowed).map(|why| format!("WebSocket upgrade refused: {why}"))
}

/// Why the request's `Origin` is foreign (neither this server's own, as
/// its `Host` names it, nor one of `allowed`); `None` when it has no
/// `Origin` or an acceptable one.
pub(crate) fn foreign_origin(req: &Request, allowed: &[String]) -> Option<String> {
    let value = req.headers().get(http::header::ORIGIN)?;
    let Some(origin) = value.to_str().ok().and_then(parse) else {
        return Some("unreadable Origin".into());
    };
    let own = request_host(req).is_some_and(|host| same_origin(&origin, &host));
    if own || allowed.contains(&origin.to_string()) {
        return None;
    }
    Some(format!(
        "origin {origin} is neither this server's nor in --web-allowed-origins"
    ))
}

/// The layer's function (`axum::middleware::from_fn_with_state`).
pub(crate) async fn guard(
    State(allowed): State<Vec<String>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&req, &allowed) {
        None => next.run(req).await,
        Some(reason) => {
            tracing::info!(%reason, "cross-origin WebSocket refused");
            crate::doors::json_error(http::StatusCode::FORBIDDEN, &reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(origin: Option<&str>, host: &str) -> Request {
        let mut b = Request::builder()
            .uri("/api/v1/namespaces/default/pods/p/exec")
            .header("host", host)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn origins_parse_and_normalize() {
        assert_eq!(
            parse("HTTP://LocalHost:8080").unwrap().to_string(),
            "http://localhost:8080"
        );
        assert_eq!(
            parse("https://a.example").unwrap().to_string(),
            "https://a.example:443"
        );
        assert_eq!(
            parse("http://[::1]:3000/").unwrap().to_string(),
            "http://[::1]:3000"
        );
        for bad in [
            "null",
            "file://x",
            "http://",
            "http://a:b",
            "http://u@a",
            "a.example",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(parse_allowed("https://ok.example").is_ok());
        assert!(parse_allowed("ok.example").is_err());
    }

    #[test]
    fn same_origin_passes_others_are_refused() {
        let none: Vec<String> = Vec::new();
        assert!(check(&upgrade(None, "127.0.0.1:5000"), &none).is_none());
        assert!(check(
            &upgrade(Some("http://127.0.0.1:5000"), "127.0.0.1:5000"),
            &none
        )
        .is_none());
        assert!(check(&upgrade(Some("https://ex.example"), "ex.example"), &none).is_none());
        assert!(check(
            &upgrade(Some("http://127.0.0.1:5001"), "127.0.0.1:5000"),
            &none
        )
        .is_some());
        assert!(check(
            &upgrade(Some("http://evil.example"), "127.0.0.1:5000"),
            &none
        )
        .is_some());
        assert!(check(&upgrade(Some("null"), "127.0.0.1:5000"), &none).is_some());
        let allowed = vec![parse_allowed("http://evil.example").unwrap()];
        assert!(check(
            &upgrade(Some("http://evil.example"), "127.0.0.1:5000"),
            &allowed
        )
        .is_none());
        // Not an upgrade: plain requests are not this guard's business.
        let plain = Request::builder()
            .uri("/")
            .header("origin", "http://evil.example")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(check(&plain, &none).is_none());
    }
}
