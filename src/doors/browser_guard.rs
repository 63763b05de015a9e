//! What a web page can reach on a TCP listener without tokens: nothing.
//!
//! A token-less TCP listener (loopback, asked for explicitly) trusts
//! whoever can connect, and every browser on the host can connect. This
//! guard sits in front of **every** route on such a listener — gRPC,
//! CRI, admin, health, reflection, every HTTP door and the 404 — and
//! refuses what only a browser acting for another site sends:
//!
//! - **DNS rebinding.** `attacker.example` first resolves to the attacker,
//!   then to 127.0.0.1; the browser then sends the page's requests here as
//!   same-origin ones, Origin and Host both naming the attacker's domain.
//!   What such requests cannot fake is a Host that is an address or
//!   `localhost`: so a request must name execd by an IP address,
//!   `localhost`, or a host of `--web-allowed-origins` (HTTP/2's
//!   `:authority` counts as its Host).
//! - **Cross-site requests.** A page may send "simple" requests (a
//!   `text/plain` POST, a GET) anywhere without a CORS preflight; the
//!   browser marks them with `Origin` and `Sec-Fetch-Site`. A request whose
//!   `Origin` is neither execd's own nor an allowed one, or that the
//!   browser calls `cross-site` or `same-site` (another port of localhost
//!   is the same site), is refused unless its Origin is allowed.
//!
//! With tokens a page has no token to send; unix sockets are not
//! reachable from browsers. Refused: 403 with a JSON body, logged at debug
//! and counted (`door="guard"`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::web::origin;
use crate::metrics::Metrics;
use crate::transport::Connection;

/// What the guard compares with.
#[derive(Clone)]
struct Allowed {
    /// Hosts a token-less TCP listener answers to, besides addresses and
    /// `localhost`.
    hosts: Arc<Vec<String>>,
    /// `--web-allowed-origins`, normalized.
    origins: Arc<Vec<String>>,
    metrics: Arc<Metrics>,
}

/// Wraps `app` (every route and the fallback) with the guard, when the
/// server has no tokens.
pub(crate) fn guard(
    app: axum::Router,
    tokens: bool,
    allowed_origins: &[String],
    metrics: Arc<Metrics>,
) -> axum::Router {
    if tokens {
        return app;
    }
    let hosts = allowed_origins
        .iter()
        .filter_map(|o| o.split_once("://").map(|(_, rest)| strip_port(rest)))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let allowed = Allowed {
        hosts: Arc::new(hosts),
        origins: Arc::new(allowed_origins.to_vec()),
        metrics,
    };
    app.layer(axum::middleware::from_fn_with_state(allowed, check))
}

async fn check(State(allowed): State<Allowed>, req: Request, next: Next) -> Response {
    let over_tcp = !req.extensions().get::<Connection>().is_some_and(|c| c.unix);
    if !over_tcp {
        return next.run(req).await;
    }
    match refusal(&req, &allowed) {
        None => next.run(req).await,
        Some((reason, message)) => super::refuse(
            &allowed.metrics,
            &req,
            "guard",
            reason,
            http::StatusCode::FORBIDDEN,
            &message,
        ),
    }
}

/// The metric reason and the client's message, when `req` is refused.
fn refusal(req: &Request, allowed: &Allowed) -> Option<(&'static str, String)> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or_default();
    if !acceptable(host, &allowed.hosts) {
        let shown: String = host.chars().take(128).collect();
        return Some((
            "host",
            format!(
                "Host {shown:?} is not accepted: without tokens, execd answers only to IP addresses, localhost and the hosts of --web-allowed-origins (a guard against DNS rebinding)"
            ),
        ));
    }
    if let Some(why) = origin::foreign_origin(req, &allowed.origins) {
        return Some((
            "origin",
            format!(
                "request refused: {why} (without tokens, execd refuses requests from other sites)"
            ),
        ));
    }
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let origin_allowed = req
        .headers()
        .get(http::header::ORIGIN)
        .is_some_and(|_| origin::foreign_origin(req, &allowed.origins).is_none());
    if matches!(site, Some(s) if s.eq_ignore_ascii_case("cross-site") || s.eq_ignore_ascii_case("same-site"))
        && !origin_allowed
    {
        return Some((
            "cross-site",
            "request refused: the browser marked it as sent by another site (Sec-Fetch-Site), and without tokens execd refuses those".to_string(),
        ));
    }
    None
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h).unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn acceptable(host: &str, allowed: &[String]) -> bool {
    let name = strip_port(host).to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_localhost_pass_names_do_not() {
        let allowed = vec!["terminal.internal".to_string()];
        for ok in [
            "127.0.0.1:50051",
            "[::1]:50051",
            "localhost:50051",
            "LOCALHOST",
            "10.1.2.3",
            "terminal.internal:8443",
        ] {
            assert!(acceptable(ok, &allowed), "{ok}");
        }
        for bad in [
            "rb.attacker.example:50051",
            "attacker.example",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!acceptable(bad, &allowed), "{bad}");
        }
    }
}
