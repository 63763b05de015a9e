//! DNS-rebinding guard for the HTTP doors on TCP listeners without tokens.
//!
//! A token-less TCP listener (loopback, asked for explicitly) trusts
//! whoever can connect. A web page cannot connect to it directly, but with
//! DNS rebinding (`attacker.example` first resolving to the attacker, then
//! to 127.0.0.1) the browser sends the page's requests there as
//! same-origin ones, Origin and Host both naming the attacker's domain.
//! What such requests cannot fake is a Host that is an address or
//! `localhost`: so, without tokens, HTTP requests on TCP listeners must
//! name execd by an IP address, `localhost`, or a host listed in
//! `--web-allowed-origins`. With tokens a rebound page has no token to
//! send; unix sockets are not reachable from browsers; gRPC is not routed
//! here. Refused: 403 with a JSON body.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::transport::Connection;

/// Hosts a token-less TCP listener answers to, besides addresses and
/// `localhost`.
#[derive(Clone)]
struct Allowed {
    hosts: Arc<Vec<String>>,
}

/// Wraps the HTTP doors with the guard, when the server has no tokens.
pub fn guard(routes: axum::Router, tokens: bool, allowed_origins: &[String]) -> axum::Router {
    if tokens {
        return routes;
    }
    let hosts = allowed_origins
        .iter()
        .filter_map(|o| o.split_once("://").map(|(_, rest)| strip_port(rest)))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let allowed = Allowed {
        hosts: Arc::new(hosts),
    };
    routes.layer(axum::middleware::from_fn_with_state(allowed, check))
}

async fn check(State(allowed): State<Allowed>, req: Request, next: Next) -> Response {
    let over_tcp = !req.extensions().get::<Connection>().is_some_and(|c| c.unix);
    if over_tcp {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default();
        if !acceptable(host, &allowed.hosts) {
            let shown: String = host.chars().take(128).collect();
            return super::json_error(
                http::StatusCode::FORBIDDEN,
                &format!(
                    "Host {shown:?} is not accepted: without tokens, execd answers HTTP only to IP addresses, localhost and the hosts of --web-allowed-origins (a guard against DNS rebinding)"
                ),
            );
        }
    }
    next.run(req).await
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
