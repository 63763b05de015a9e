//! Which listeners execd agrees to open: nothing reachable from the
//! network without TLS and a token unless explicitly allowed, and a
//! warning for every TCP listener without a token.

use super::{Cli, ConfigError};

impl Cli {
    /// Refuses a non-loopback TCP listener (exec or metrics) without TLS
    /// and a token, unless `--insecure-allow-remote`. Returns the warnings
    /// to log at start: every TCP listener without a token is one, loopback
    /// included (any local user, or any container on the host network, can
    /// connect to it).
    pub fn check_exposure(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let secured = self.tls_cert.is_some() && self.auth_token_file.is_some();
        for listen in &self.listen {
            if listen.starts_with("unix:") {
                continue;
            }
            let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
                continue; // bind reports the syntax error
            };
            if addr.ip().is_loopback() {
                if self.auth_token_file.is_none() {
                    warnings.push(format!(
                        "listening on {listen} without --auth-token-file: every local user and every container on the host network can exec as root in every container"
                    ));
                }
                continue;
            }
            if secured {
                continue;
            }
            if !self.insecure_allow_remote {
                return Err(ConfigError::InsecureRemote {
                    addr: listen.clone(),
                });
            }
            warnings.push(format!(
                "listening on {listen} without TLS and token (--insecure-allow-remote): anyone who can reach it gets a root shell in every container"
            ));
        }
        if let Some(addr) = self.metrics_listen {
            if !addr.ip().is_loopback() {
                if !self.insecure_allow_remote {
                    return Err(ConfigError::InsecureRemote {
                        addr: format!("{addr} (--metrics-listen)"),
                    });
                }
                warnings.push(format!(
                    "metrics on {addr} are reachable from the network without authentication (--insecure-allow-remote)"
                ));
            }
        }
        Ok(warnings)
    }
}
