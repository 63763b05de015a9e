//! The server configuration built from the flags: files read (tokens,
//! TLS material) and every setting handed to the session manager, the
//! transport and the doors.

use std::path::PathBuf;
use std::time::Duration;

use execd_session::{BackendConfig, LifecycleConfig, Limits, ManagerConfig, ReattachConfig};

use super::{BackendChoice, Cli, ConfigError};

/// TLS material, read at start.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// With a client CA, clients must present a certificate it signed.
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Everything `run` needs besides the listener and the shutdown token.
#[derive(Clone)]
pub struct ServerConfig {
    /// Bearer tokens; `None` accepts every client (loopback/unix default).
    pub auth: Option<crate::auth::TokenStore>,
    /// Admin API tokens; `None`: the admin API takes the `auth` tokens.
    pub admin_auth: Option<crate::auth::TokenStore>,
    pub tls: Option<TlsConfig>,
    pub manager: ManagerConfig,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How often the engine is probed for gRPC health.
    pub health_interval: Duration,
    pub max_message_size: usize,
    pub start_timeout: Duration,
    pub shutdown_grace: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    /// TCP connections per client address; `None`: a quarter of
    /// `max_connections`.
    pub max_connections_per_ip: Option<usize>,
    /// With tokens: TCP connections that have not presented one yet;
    /// `None`: an eighth of `max_connections`.
    pub max_unauthenticated_connections: Option<usize>,
    /// GOAWAY to a connection without open requests for this long.
    pub idle_connection_timeout: Option<Duration>,
    pub max_streams_per_connection: u32,
    pub max_pending_starts: usize,
    pub max_health_watches: usize,
    pub handshake_timeout: Duration,
    /// CRI streaming: base of the URLs Exec/Attach return; `None` derives
    /// it from the first TCP listener.
    pub stream_base_url: Option<String>,
    /// CRI streaming: lifetime of an unused streaming URL.
    pub stream_token_ttl: Duration,
    /// The browser terminal and the WebSocket origin guard.
    pub web: crate::doors::web::WebConfig,
    /// `/terminal/ws`: the container label that names instances, if any.
    pub terminal_instance_label: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth: None,
            admin_auth: None,
            tls: None,
            manager: ManagerConfig::default(),
            metrics_listen: None,
            health_interval: Duration::from_secs(5),
            max_message_size: 4 * 1024 * 1024,
            start_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: None,
            max_unauthenticated_connections: None,
            idle_connection_timeout: Some(Duration::from_secs(60)),
            max_streams_per_connection: 256,
            max_pending_starts: 256,
            max_health_watches: 64,
            handshake_timeout: Duration::from_secs(10),
            stream_base_url: None,
            stream_token_ttl: Duration::from_secs(60),
            web: crate::doors::web::WebConfig::default(),
            terminal_instance_label: None,
        }
    }
}

impl Cli {
    fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|source| ConfigError::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        })
    }

    /// The server configuration, with token and TLS files read.
    pub fn load_server_config(&self) -> Result<ServerConfig, ConfigError> {
        let mut config = self.server_config();
        config.manager.backend = self.backend_config()?;
        if let Some(path) = &self.auth_token_file {
            config.auth = Some(crate::auth::TokenStore::load(path)?);
        }
        if let Some(path) = &self.admin_token_file {
            config.admin_auth = Some(crate::auth::TokenStore::load(path)?);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig {
                cert_pem: Self::read("--tls-cert", cert)?,
                key_pem: Self::read("--tls-key", key)?,
                client_ca_pem: match &self.tls_client_ca {
                    Some(ca) => Some(Self::read("--tls-client-ca", ca)?),
                    None => None,
                },
            });
        }
        Ok(config)
    }

    /// What runs the sessions: `--host-exec`, or the backend `--backend`
    /// names, with its socket resolved and its setup checked.
    pub(crate) fn backend_config(&self) -> Result<BackendConfig, ConfigError> {
        match self.backend {
            BackendChoice::Cli => Ok(self.plain_backend()),
            BackendChoice::EngineApi if self.host_exec => Err(ConfigError::Backend(
                "host-exec mode has no container engine; drop --host-exec or use --backend cli"
                    .into(),
            )),
            BackendChoice::EngineApi => {
                let socket = match &self.engine_socket {
                    Some(path) => path.clone(),
                    None => match std::env::var("DOCKER_HOST") {
                        Ok(host) => match host.strip_prefix("unix://") {
                            Some(path) => PathBuf::from(path),
                            None => {
                                return Err(ConfigError::Backend(format!(
                                    "DOCKER_HOST={host} is not a unix socket; set --engine-socket"
                                )))
                            }
                        },
                        Err(_) => PathBuf::from("/var/run/docker.sock"),
                    },
                };
                Ok(BackendConfig::EngineApi { socket })
            }
            BackendChoice::Oci if self.host_exec => Err(ConfigError::OciBackend(
                "host-exec mode has no containers; drop --host-exec or use --backend cli".into(),
            )),
            BackendChoice::Oci => {
                execd_session::backend::oci::check_setup(&self.oci_runtime, &self.oci_root)
                    .map_err(ConfigError::OciBackend)?;
                Ok(BackendConfig::Oci {
                    runtime: self.oci_runtime.clone(),
                    root: self.oci_root.clone(),
                    cli: self.runtime_cli.clone(),
                })
            }
        }
    }

    /// The host, or the runtime CLI: the backends that need no checks.
    fn plain_backend(&self) -> BackendConfig {
        if self.host_exec {
            BackendConfig::Host
        } else {
            BackendConfig::Cli {
                program: self.runtime_cli.clone(),
            }
        }
    }

    /// The server configuration without reading files or checking the
    /// backend (it stays the host or the CLI; [`Cli::load_server_config`]
    /// resolves `--backend`).
    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            manager: ManagerConfig {
                backend: self.plain_backend(),
                limits: Limits {
                    max_sessions: self.max_sessions,
                    max_sessions_per_instance: self.max_sessions_per_instance,
                    max_sessions_per_owner: self.max_sessions_per_token,
                },
                lifecycle: LifecycleConfig {
                    kill_grace: self.kill_grace,
                    keep_background_processes: self.keep_background_processes,
                    idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
                    ..LifecycleConfig::default()
                },
                reattach: (!self.reattach_grace.is_zero()).then_some(ReattachConfig {
                    grace: self.reattach_grace,
                    buffer: self.replay_buffer,
                    total: self.replay_buffer_total,
                }),
            },
            metrics_listen: self.metrics_listen,
            health_interval: self.health_interval,
            max_message_size: self.max_message_size,
            start_timeout: self.start_timeout,
            shutdown_grace: self.shutdown_grace,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_unauthenticated_connections: self.max_unauthenticated_connections,
            idle_connection_timeout: (!self.idle_connection_timeout.is_zero())
                .then_some(self.idle_connection_timeout),
            max_streams_per_connection: self.max_streams_per_connection,
            max_pending_starts: self.max_pending_starts,
            max_health_watches: self.max_health_watches,
            handshake_timeout: self.handshake_timeout,
            stream_base_url: self.stream_base_url.clone(),
            stream_token_ttl: self.stream_token_ttl,
            web: crate::doors::web::WebConfig {
                enabled: self.web,
                allowed_origins: self.web_allowed_origins.clone(),
            },
            terminal_instance_label: self.terminal_instance_label.clone(),
            ..ServerConfig::default()
        }
    }
}
