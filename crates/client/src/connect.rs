//! Reaching execd: the address syntax every client takes, TLS material,
//! the bearer-token interceptor, and the tonic channel built from them.
//!
//! Addresses are `host:port`, `http://host:port`, `https://host:port` or
//! `unix:/path`. A unix socket is always plaintext (execd guards it with
//! the socket's file mode), so TLS there is refused rather than ignored;
//! a TCP address switches to `https` as soon as TLS material is given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Everything that can go wrong between an `--addr` and a channel.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad address {addr:?}: {reason}")]
    BadAddr { addr: String, reason: String },
    #[error("bad address {addr:?}")]
    InvalidUri {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{addr} is a unix socket, which execd serves in plaintext: TLS does not apply")]
    TlsOverUnix { addr: String },
    #[error("{addr} asks for https but no CA certificate was given to verify execd with")]
    HttpsWithoutCa { addr: String },
    #[error("TLS setup failed")]
    TlsSetup(#[source] tonic::transport::Error),
    #[error("cannot connect to execd at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no token (only blank lines and # comments)")]
    NoToken { path: PathBuf },
    #[error("the token has characters not allowed in gRPC metadata")]
    BadToken,
}

/// Where execd listens, as a client's `--addr` spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP listener: `authority` is `host:port`; `https` when the address
    /// named that scheme.
    Tcp { authority: String, https: bool },
}

impl FromStr for Addr {
    type Err = ConnectError;

    fn from_str(addr: &str) -> Result<Addr, ConnectError> {
        let bad = |reason: &str| ConnectError::BadAddr {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = addr.strip_prefix("unix:") {
            // gRPC also writes `unix:///abs/path`; it names the same socket.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("no socket path after unix:"));
            }
            return Ok(Addr::Unix(path.into()));
        }
        let (https, rest) = match addr.split_once("://") {
            None => (false, addr),
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some(_) => return Err(bad("the scheme is not http://, https:// or unix:")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected host:port"));
        }
        Ok(Addr::Tcp {
            authority: authority.to_string(),
            https,
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
            Addr::Tcp { authority, https } => {
                let scheme = if *https { "https" } else { "http" };
                write!(f, "{scheme}://{authority}")
            }
        }
    }
}

/// TLS material: the CA that signed execd's certificate, and optionally a
/// client certificate and key for mutual TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl Tls {
    /// From PEM bytes; `identity` is (certificate chain, private key).
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Tls {
        Tls {
            ca: Certificate::from_pem(ca),
            identity: identity.map(|(cert, key)| Identity::from_pem(cert, key)),
        }
    }

    /// Reads the PEM files; `identity` is (certificate chain, private key).
    pub fn read(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Tls, ConnectError> {
        let ca = read_file("the CA certificate", ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((
                read_file("the client certificate", cert)?,
                read_file("the client key", key)?,
            )),
            None => None,
        };
        Ok(Tls::from_pem(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        ))
    }

    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(self.ca.clone());
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Adds `authorization: Bearer <token>` to every call when it holds a
/// token (execd's `--auth-token-file`); passes calls through otherwise.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer, ConnectError> {
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ConnectError::BadToken)?;
        // Keeps the token out of Debug output and out of HPACK's table.
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }

    /// The first line of `path` that is neither blank nor a `#` comment,
    /// the format of execd's own token files.
    pub fn from_file(path: &Path) -> Result<Bearer, ConnectError> {
        let text = read_file("the token file", path)?;
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| ConnectError::NoToken {
                path: path.to_path_buf(),
            })
            .and_then(Bearer::new)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// [`Connector::large_windows`]: the HTTP/2 stream window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// [`Connector::large_windows`]: the HTTP/2 connection window (several
/// streams at full speed).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// [`Connector::large_windows`]: the largest frame accepted (execd's own).
pub const MAX_FRAME: u32 = 1024 * 1024;

/// A channel to be: the address with its TLS settings, tunable before
/// connecting (windows, timeouts, keepalive).
#[derive(Clone, Debug)]
pub struct Connector {
    addr: Addr,
    endpoint: Endpoint,
}

impl Connector {
    pub fn new(addr: &Addr, tls: Option<&Tls>) -> Result<Connector, ConnectError> {
        let shown = addr.to_string();
        let uri = match (addr, tls) {
            (Addr::Unix(_), Some(_)) => return Err(ConnectError::TlsOverUnix { addr: shown }),
            (Addr::Tcp { https: true, .. }, None) => {
                return Err(ConnectError::HttpsWithoutCa { addr: shown })
            }
            (Addr::Unix(path), None) => match path.to_str() {
                Some(path) => format!("unix:{path}"),
                // tonic takes the path as a string; a lossy one would name
                // another socket.
                None => {
                    return Err(ConnectError::BadAddr {
                        addr: shown,
                        reason: "the socket path is not UTF-8".into(),
                    })
                }
            },
            (Addr::Tcp { authority, .. }, Some(_)) => format!("https://{authority}"),
            (Addr::Tcp { authority, .. }, None) => format!("http://{authority}"),
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|source| ConnectError::InvalidUri {
            addr: shown,
            source,
        })?;
        let endpoint = match tls {
            Some(tls) => endpoint
                .tls_config(tls.client_config())
                .map_err(ConnectError::TlsSetup)?,
            None => endpoint,
        };
        Ok(Connector {
            addr: addr.clone(),
            endpoint,
        })
    }

    /// HTTP/2 settings for a client that takes bulk output: frames as
    /// large as execd sends, so that a 256 KiB output message is one frame
    /// instead of sixteen (the default limit is 16 KiB), and windows twice
    /// the defaults, so that execd rarely waits for this side's window
    /// updates. The stream window bounds what the client buffers per
    /// stream (4 MiB).
    pub fn large_windows(self) -> Connector {
        self.tune(|endpoint| {
            endpoint
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
        })
    }

    /// Adjusts the endpoint before connecting.
    pub fn tune(self, tune: impl FnOnce(Endpoint) -> Endpoint) -> Connector {
        Connector {
            endpoint: tune(self.endpoint),
            addr: self.addr,
        }
    }

    /// Connects now, so an unreachable execd is reported here rather than
    /// on the first call.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        self.endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Connect {
                addr: self.addr.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(authority: &str, https: bool) -> Addr {
        Addr::Tcp {
            authority: authority.into(),
            https,
        }
    }

    #[test]
    fn parses_every_address_form() {
        let parse = |s: &str| s.parse::<Addr>().ok();
        let socket = Addr::Unix("/run/execd/execd.sock".into());
        for (given, wanted) in [
            ("127.0.0.1:50051", tcp("127.0.0.1:50051", false)),
            ("http://node1:50051/", tcp("node1:50051", false)),
            ("https://node1:50051", tcp("node1:50051", true)),
            ("unix:/run/execd/execd.sock", socket.clone()),
            ("unix:///run/execd/execd.sock", socket),
        ] {
            assert_eq!(parse(given), Some(wanted), "{given:?}");
        }
        for bad in ["unix:", "ftp://host:1", "", "http://", "host:1/path"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tls_is_refused_where_it_cannot_apply() {
        let tls = Tls::from_pem(b"", None);
        let unix = Addr::Unix("/tmp/x.sock".into());
        assert!(matches!(
            Connector::new(&unix, Some(&tls)),
            Err(ConnectError::TlsOverUnix { .. })
        ));
        assert!(matches!(
            Connector::new(&tcp("h:1", true), None),
            Err(ConnectError::HttpsWithoutCa { .. })
        ));
        assert!(Connector::new(&unix, None).is_ok());
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        assert!(matches!(Bearer::new("a\nb"), Err(ConnectError::BadToken)));
        assert!(Bearer::new("s3cret").is_ok());
    }
}
