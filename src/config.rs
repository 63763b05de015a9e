//! Command-line flags (each also read from an `EXECD_*` environment
//! variable) and the server configuration built from them.

use std::time::Duration;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use execd_session::{ExecMode, LifecycleConfig, Limits, ManagerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses a file mode written in octal, like `0600` or `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 0600"))
}

/// Parses durations written like `500ms`, `30s`, `5m`, `4h`, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 5m or 4h: {e}"))
}

/// execd: exec sessions into containers over one bidirectional gRPC stream.
#[derive(Debug, Clone, Parser)]
#[command(name = "execd", version, about, long_about = None)]
pub struct Cli {
    /// TOML file with any of these settings (keys are flag names, e.g. max-sessions = 10); flags and EXECD_* env win over it
    #[arg(
        long,
        env = "EXECD_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration"
    )]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (after flags, env and file) as TOML and exit
    #[arg(long, help_heading = "Configuration")]
    pub print_config: bool,

    /// Address to serve on: host:port (loopback recommended) or unix:/path/to.sock
    #[arg(
        long,
        env = "EXECD_LISTEN",
        default_value = "127.0.0.1:50051",
        help_heading = "Listening"
    )]
    pub listen: String,

    /// Unix socket file mode (octal), for unix:/path listeners
    #[arg(long, env = "EXECD_SOCKET_MODE", default_value = "0600", value_parser = parse_mode, help_heading = "Listening")]
    pub socket_mode: u32,

    /// File of accepted bearer tokens, one per line (# comments); reloaded on SIGHUP. Clients send `authorization: Bearer <token>`
    #[arg(
        long,
        env = "EXECD_AUTH_TOKEN_FILE",
        value_name = "PATH",
        help_heading = "Security"
    )]
    pub auth_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM); enables TLS together with --tls-key
    #[arg(
        long,
        env = "EXECD_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM)
    #[arg(
        long,
        env = "EXECD_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) for client certificates; makes a client certificate mandatory (mutual TLS)
    #[arg(
        long,
        env = "EXECD_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow listening on a non-loopback TCP address without both TLS and a token (logs a warning)
    #[arg(long, env = "EXECD_INSECURE_ALLOW_REMOTE", help_heading = "Security")]
    pub insecure_allow_remote: bool,

    /// Container runtime CLI that accepts `exec -i [-t] -e … -w … -u …` (docker, podman, nerdctl)
    #[arg(
        long,
        env = "EXECD_RUNTIME_CLI",
        default_value = "docker",
        help_heading = "Runtime"
    )]
    pub runtime_cli: String,

    /// Run commands directly on this host instead of in a container (sidecar mode); container_id must then be empty
    #[arg(long, env = "EXECD_HOST_EXEC", help_heading = "Runtime")]
    pub host_exec: bool,

    /// Most concurrent sessions in total
    #[arg(
        long,
        env = "EXECD_MAX_SESSIONS",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub max_sessions: usize,

    /// Most concurrent sessions per instance_id
    #[arg(
        long,
        env = "EXECD_MAX_SESSIONS_PER_INSTANCE",
        default_value_t = 64,
        help_heading = "Limits"
    )]
    pub max_sessions_per_instance: usize,

    /// Largest client message accepted, in bytes; larger ends the session with RESOURCE_EXHAUSTED
    #[arg(long, env = "EXECD_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024, help_heading = "Limits")]
    pub max_message_size: usize,

    /// End sessions with no input and no output for this long (0 disables)
    #[arg(long, env = "EXECD_IDLE_TIMEOUT", default_value = "4h", value_parser = parse_duration, help_heading = "Timeouts")]
    pub idle_timeout: Duration,

    /// How long a new stream may take to send its start_request
    #[arg(long, env = "EXECD_START_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = "Timeouts")]
    pub start_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sessions to end before exiting
    #[arg(long, env = "EXECD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, help_heading = "Timeouts")]
    pub shutdown_grace: Duration,

    /// Time between the polite signal (SIGHUP/SIGTERM) and SIGKILL when a session's processes are ended
    #[arg(long, env = "EXECD_KILL_GRACE", default_value = "500ms", value_parser = parse_duration, help_heading = "Timeouts")]
    pub kill_grace: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; use a loopback address)
    #[arg(long, env = "EXECD_METRICS_LISTEN", help_heading = "Observability")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// How often the container engine is probed for gRPC health
    #[arg(long, env = "EXECD_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration, help_heading = "Observability")]
    pub health_interval: Duration,

    /// Log format
    #[arg(
        long,
        env = "EXECD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive like execd=debug)
    #[arg(
        long,
        env = "EXECD_LOG_LEVEL",
        default_value = "info",
        help_heading = "Logging"
    )]
    pub log_level: String,
}

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth: None,
            tls: None,
            manager: ManagerConfig::default(),
            metrics_listen: None,
            health_interval: Duration::from_secs(5),
            max_message_size: 4 * 1024 * 1024,
            start_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("reading {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to listen on {addr}: a non-loopback address needs both TLS (--tls-cert/--tls-key) and --auth-token-file, or --insecure-allow-remote")]
    InsecureRemote { addr: String },
}

impl ConfigError {
    /// Prints the error like clap does (help and version go to stdout with
    /// exit 0) and exits.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            _ => {
                eprintln!("execd: {self}");
                std::process::exit(2)
            }
        }
    }
}

fn toml_to_arg(
    path: &std::path::Path,
    key: &str,
    value: &toml::Value,
) -> Result<Option<String>, ConfigError> {
    let bad = |what: &str| ConfigError::File {
        path: path.to_path_buf(),
        message: format!("field {key:?}: {what}"),
    };
    Ok(match value {
        toml::Value::String(s) => Some(format!("--{key}={s}")),
        toml::Value::Integer(i) => Some(format!("--{key}={i}")),
        toml::Value::Boolean(true) => Some(format!("--{key}")),
        toml::Value::Boolean(false) => None,
        _ => return Err(bad("expected a string, integer or boolean")),
    })
}

impl Cli {
    /// Parses flags, `EXECD_*` env and the optional `--config` TOML file.
    /// Precedence: flag > env > file > default. A file key that names no
    /// flag, or a value a flag would refuse, fails with the field named.
    pub fn load_from<I, T>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let mut extra: Vec<OsString> = Vec::new();
        for (key, value) in &table {
            let id = key.replace('-', "_");
            let known = command
                .get_arguments()
                .any(|a| a.get_id().as_str() == id && a.get_long().is_some() && id != "config");
            if !known {
                return Err(ConfigError::File {
                    path: path.clone(),
                    message: format!(
                        "unknown field {key:?} (fields are flag names, like max-sessions)"
                    ),
                });
            }
            // Only fill in what neither a flag nor the environment set.
            if matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
            ) {
                continue;
            }
            if let Some(arg) = toml_to_arg(&path, key, value)? {
                extra.push(arg.into());
            }
        }
        let mut full = args.clone();
        full.extend(extra);
        let matches = command
            .try_get_matches_from(&full)
            .map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string().trim().to_string(),
            })?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    /// The effective settings in the `--config` file format.
    pub fn effective_toml(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
        line("listen", format!("{:?}", self.listen));
        line("socket-mode", format!("\"{:04o}\"", self.socket_mode));
        let path =
            |p: &Option<PathBuf>| p.as_ref().map(|p| format!("{:?}", p.display().to_string()));
        for (key, value) in [
            ("auth-token-file", path(&self.auth_token_file)),
            ("tls-cert", path(&self.tls_cert)),
            ("tls-key", path(&self.tls_key)),
            ("tls-client-ca", path(&self.tls_client_ca)),
        ] {
            if let Some(v) = value {
                line(key, v);
            }
        }
        line(
            "insecure-allow-remote",
            self.insecure_allow_remote.to_string(),
        );
        line("runtime-cli", format!("{:?}", self.runtime_cli));
        line("host-exec", self.host_exec.to_string());
        line("max-sessions", self.max_sessions.to_string());
        line(
            "max-sessions-per-instance",
            self.max_sessions_per_instance.to_string(),
        );
        line("max-message-size", self.max_message_size.to_string());
        line("idle-timeout", format!("{:?}", d(&self.idle_timeout)));
        line("start-timeout", format!("{:?}", d(&self.start_timeout)));
        line("shutdown-grace", format!("{:?}", d(&self.shutdown_grace)));
        line("kill-grace", format!("{:?}", d(&self.kill_grace)));
        if let Some(addr) = self.metrics_listen {
            line("metrics-listen", format!("{:?}", addr.to_string()));
        }
        line("health-interval", format!("{:?}", d(&self.health_interval)));
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        line("log-format", format!("{format:?}"));
        line("log-level", format!("{:?}", self.log_level));
        out
    }

    /// Refuses a non-loopback TCP listener without TLS and a token, unless
    /// explicitly allowed. Returns whether the listener is exposed insecurely.
    pub fn check_exposure(&self) -> Result<bool, ConfigError> {
        if self.listen.starts_with("unix:") {
            return Ok(false);
        }
        let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
            return Ok(false); // bind reports the syntax error
        };
        if addr.ip().is_loopback() {
            return Ok(false);
        }
        if self.tls_cert.is_some() && self.auth_token_file.is_some() {
            return Ok(false);
        }
        if self.insecure_allow_remote {
            return Ok(true);
        }
        Err(ConfigError::InsecureRemote {
            addr: self.listen.clone(),
        })
    }

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
        if let Some(path) = &self.auth_token_file {
            config.auth = Some(crate::auth::TokenStore::load(path)?);
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

    pub fn server_config(&self) -> ServerConfig {
        let mode = if self.host_exec {
            ExecMode::Host
        } else {
            ExecMode::Container {
                runtime_cli: self.runtime_cli.clone(),
            }
        };
        ServerConfig {
            manager: ManagerConfig {
                mode,
                limits: Limits {
                    max_sessions: self.max_sessions,
                    max_sessions_per_instance: self.max_sessions_per_instance,
                },
                lifecycle: LifecycleConfig {
                    kill_grace: self.kill_grace,
                    idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
                    ..LifecycleConfig::default()
                },
            },
            metrics_listen: self.metrics_listen,
            health_interval: self.health_interval,
            max_message_size: self.max_message_size,
            start_timeout: self.start_timeout,
            shutdown_grace: self.shutdown_grace,
            ..ServerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn config_file_fills_in_below_flags_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("execd.toml");
        std::fs::write(
            &file,
            "max-sessions = 7\nmax-sessions-per-instance = 3\nidle-timeout = \"5m\"\nhost-exec = true\nlog-format = \"json\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::load_from(["execd", "--config", f]).unwrap();
        assert_eq!(cli.max_sessions, 7);
        assert_eq!(cli.max_sessions_per_instance, 3);
        assert_eq!(cli.idle_timeout, Duration::from_secs(300));
        assert!(cli.host_exec);
        assert_eq!(cli.log_format, LogFormat::Json);
        // A flag beats the file.
        let cli = Cli::load_from(["execd", "--config", f, "--max-sessions", "9"]).unwrap();
        assert_eq!(cli.max_sessions, 9);
        assert_eq!(cli.max_sessions_per_instance, 3);
    }

    #[test]
    fn config_file_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "max-sesions = 7\n").unwrap();
        let err = Cli::load_from(["execd", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("max-sesions"), "{err}");
        std::fs::write(&file, "max-sessions = \"many\"\n").unwrap();
        let err = Cli::load_from(["execd", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("max-sessions"), "{err}");
        std::fs::write(&file, "idle-timeout = \"later\"\n").unwrap();
        let err = Cli::load_from(["execd", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("idle-timeout"), "{err}");
        let err = Cli::load_from(["execd", "--config", "/nonexistent/execd.toml"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/execd.toml"), "{err}");
    }

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["execd"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:50051");
        let cfg = cli.server_config();
        assert_eq!(cfg.manager.limits, Limits::default());
        assert_eq!(
            cfg.manager.lifecycle.idle_timeout,
            Some(Duration::from_secs(4 * 3600))
        );
        let cli = Cli::try_parse_from([
            "execd",
            "--host-exec",
            "--idle-timeout",
            "0",
            "--runtime-cli",
            "podman",
        ])
        .unwrap();
        let cfg = cli.server_config();
        assert_eq!(cfg.manager.mode, ExecMode::Host);
        assert_eq!(cfg.manager.lifecycle.idle_timeout, None);
        assert!(Cli::try_parse_from(["execd", "--idle-timeout", "later"]).is_err());
    }
}
