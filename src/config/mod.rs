//! Command-line flags (each also read from an `EXECD_*` environment
//! variable) and the server configuration built from them.

use std::time::Duration;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The word `--backend` takes. With `--host-exec` and the runtime flags
/// it becomes the one [`execd_session::BackendConfig`] the session
/// manager runs ([`Cli::backend_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendChoice {
    Cli,
    EngineApi,
    // The OCI runtime (--oci-runtime) directly, as containerd's shim does.
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The default listener: a unix socket only root can reach, like Docker's
/// own daemon socket.
pub(crate) const DEFAULT_LISTEN: &str = "unix:/run/execd/execd.sock";

/// Parses a file mode written in octal, like `0600` or `660`.
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 0600"))
}

/// Parses durations written like `500ms`, `30s`, `5m`, `4h`, or `0`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
    pub(crate) config: Option<PathBuf>,

    /// Print the effective configuration (after flags, env and file) as TOML and exit
    #[arg(long, help_heading = "Configuration")]
    pub print_config: bool,

    /// Where to serve: unix:/path/to.sock or host:port; repeat (or comma-separate in EXECD_LISTEN) for several listeners. A TCP listener without --auth-token-file lets anyone who can connect exec as root in every container
    #[arg(
        long,
        env = "EXECD_LISTEN",
        default_value = DEFAULT_LISTEN,
        value_delimiter = ',',
        action = clap::ArgAction::Append,
        help_heading = "Listening"
    )]
    pub listen: Vec<String>,

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
    pub(crate) auth_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM); enables TLS together with --tls-key
    #[arg(
        long,
        env = "EXECD_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// TLS private key (PEM)
    #[arg(
        long,
        env = "EXECD_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// CA bundle (PEM) for client certificates; makes a client certificate mandatory (mutual TLS)
    #[arg(
        long,
        env = "EXECD_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub(crate) tls_client_ca: Option<PathBuf>,

    /// Allow listening on a non-loopback TCP address without both TLS and a token (logs a warning)
    #[arg(long, env = "EXECD_INSECURE_ALLOW_REMOTE", help_heading = "Security")]
    pub(crate) insecure_allow_remote: bool,

    /// Container runtime CLI that accepts `exec -i [-t] -e … -w … -u …` (docker, podman, nerdctl)
    #[arg(
        long,
        env = "EXECD_RUNTIME_CLI",
        default_value = "docker",
        help_heading = "Runtime"
    )]
    pub(crate) runtime_cli: String,

    /// Run commands directly on this host instead of in a container (sidecar mode); container_id must then be empty
    #[arg(long, env = "EXECD_HOST_EXEC", help_heading = "Runtime")]
    pub(crate) host_exec: bool,

    /// What runs sessions: `cli` (a --runtime-cli child per session; docker, podman, nerdctl), `engine-api` (the Docker Engine API directly: no process per session, for scale) or `oci` (the OCI runtime directly, like containerd's shim: the process is execd's child, each session has its own cgroup)
    #[arg(
        long,
        env = "EXECD_BACKEND",
        value_enum,
        default_value = "cli",
        help_heading = "Runtime"
    )]
    pub(crate) backend: BackendChoice,

    /// The Docker Engine API socket for --backend engine-api [default: DOCKER_HOST's unix:// path, else /var/run/docker.sock]
    #[arg(
        long,
        env = "EXECD_ENGINE_SOCKET",
        value_name = "PATH",
        help_heading = "Runtime"
    )]
    pub(crate) engine_socket: Option<PathBuf>,

    /// The OCI runtime for --backend oci: runc or crun (a name on PATH, or a path); it needs `exec --cgroup` (runc 1.1+)
    #[arg(
        long,
        env = "EXECD_OCI_RUNTIME",
        default_value = "runc",
        value_name = "PROGRAM",
        help_heading = "Runtime"
    )]
    pub(crate) oci_runtime: String,

    /// The OCI runtime's state root for --backend oci: Docker's is /run/docker/runtime-runc/moby (under dockerd's --exec-root), containerd's Kubernetes namespace /run/containerd/runc/k8s.io
    #[arg(
        long,
        env = "EXECD_OCI_ROOT",
        default_value = "/run/docker/runtime-runc/moby",
        value_name = "DIR",
        help_heading = "Runtime"
    )]
    pub(crate) oci_root: PathBuf,

    /// Most open connections at once over all TCP listeners, and as many again over all unix sockets (so a network flood cannot lock out node-local clients); further clients wait in the kernel's backlog
    #[arg(
        long,
        env = "EXECD_MAX_CONNECTIONS",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub(crate) max_connections: usize,

    /// Most TCP connections at once from one client address (IPv6: per /64; all loopback addresses count as one); a new connection over it is closed at once [default: a quarter of --max-connections]
    #[arg(
        long,
        env = "EXECD_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub(crate) max_connections_per_ip: Option<usize>,

    /// With --auth-token-file: most TCP connections at once that have not presented a valid token yet; a new one past it closes the oldest of them (GOAWAY) [default: an eighth of --max-connections]
    #[arg(
        long,
        env = "EXECD_MAX_UNAUTHENTICATED_CONNECTIONS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub(crate) max_unauthenticated_connections: Option<usize>,

    /// Most concurrent HTTP/2 streams (calls) per connection
    #[arg(
        long,
        env = "EXECD_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 256,
        help_heading = "Limits"
    )]
    pub(crate) max_streams_per_connection: u32,

    /// Most session streams at once that have not sent their start yet (RESOURCE_EXHAUSTED beyond)
    #[arg(
        long,
        env = "EXECD_MAX_PENDING_STARTS",
        default_value_t = 256,
        help_heading = "Limits"
    )]
    pub(crate) max_pending_starts: usize,

    /// Most concurrent health Watch streams (they need no token) from clients that presented a valid token, and as many again from clients that did not
    #[arg(
        long,
        env = "EXECD_MAX_HEALTH_WATCHES",
        default_value_t = 64,
        help_heading = "Limits"
    )]
    pub(crate) max_health_watches: usize,

    /// Time a new connection has to finish its TLS handshake, or to send its first bytes, and an HTTP/1.1 request its headers
    #[arg(long, env = "EXECD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Limits")]
    pub(crate) handshake_timeout: Duration,

    /// Send GOAWAY to a connection that has had no open request or stream for this long, however it answers keepalive PINGs (0 disables)
    #[arg(long, env = "EXECD_IDLE_CONNECTION_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Limits")]
    pub(crate) idle_connection_timeout: Duration,

    /// Leave what a session's process started in the background running after it exits (Docker's behaviour); by default execd ends it
    #[arg(
        long,
        env = "EXECD_KEEP_BACKGROUND_PROCESSES",
        help_heading = "Runtime"
    )]
    pub(crate) keep_background_processes: bool,

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
    pub(crate) max_sessions_per_instance: usize,

    // Admin rights and per-token limits.
    /// File of bearer tokens for the admin API (format of --auth-token-file; reloaded on SIGHUP). When set, exec tokens are refused there (PERMISSION_DENIED)
    #[arg(
        long,
        env = "EXECD_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        help_heading = "Security"
    )]
    pub(crate) admin_token_file: Option<PathBuf>,

    /// Most concurrent sessions per bearer token from --auth-token-file (0 = unlimited)
    #[arg(
        long,
        env = "EXECD_MAX_SESSIONS_PER_TOKEN",
        default_value_t = 256,
        help_heading = "Limits"
    )]
    pub(crate) max_sessions_per_token: usize,

    /// Largest client message accepted, in bytes; larger ends the session with RESOURCE_EXHAUSTED (gRPC) or close 1009 (WebSocket doors)
    #[arg(long, env = "EXECD_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024, help_heading = "Limits")]
    pub(crate) max_message_size: usize,

    /// Keep a session whose client went away (without ending it) running this long for the client to reattach, its output kept for replay (0 = off: the session ends with its client)
    #[arg(long, env = "EXECD_REATTACH_GRACE", default_value = "0s", value_parser = parse_duration, help_heading = "Timeouts")]
    pub(crate) reattach_grace: Duration,

    /// Output kept per detached session for replay, in bytes (the oldest is dropped past it)
    #[arg(long, env = "EXECD_REPLAY_BUFFER", default_value_t = 1024 * 1024, help_heading = "Limits")]
    pub(crate) replay_buffer: usize,

    /// Output kept for replay by all sessions together, in bytes
    #[arg(long, env = "EXECD_REPLAY_BUFFER_TOTAL", default_value_t = 256 * 1024 * 1024, help_heading = "Limits")]
    pub(crate) replay_buffer_total: usize,

    /// End sessions with no input and no output for this long (0 disables)
    #[arg(long, env = "EXECD_IDLE_TIMEOUT", default_value = "4h", value_parser = parse_duration, help_heading = "Timeouts")]
    pub(crate) idle_timeout: Duration,

    /// How long a new stream may take to send its start_request
    #[arg(long, env = "EXECD_START_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = "Timeouts")]
    pub(crate) start_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sessions to end before exiting
    #[arg(long, env = "EXECD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, help_heading = "Timeouts")]
    pub(crate) shutdown_grace: Duration,

    /// Time between the polite signal (SIGHUP/SIGTERM) and SIGKILL when a session's processes are ended
    #[arg(long, env = "EXECD_KILL_GRACE", default_value = "500ms", value_parser = parse_duration, help_heading = "Timeouts")]
    pub(crate) kill_grace: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; use a loopback address)
    #[arg(long, env = "EXECD_METRICS_LISTEN", help_heading = "Observability")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,

    /// How often the container engine is probed for gRPC health
    #[arg(long, env = "EXECD_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration, help_heading = "Observability")]
    pub(crate) health_interval: Duration,

    // --- CRI streaming (the kube door) ---
    /// Base of the streaming URLs that CRI Exec/Attach return, like https://node-1:50051 (default: derived from the first TCP listener; required with only unix sockets)
    #[arg(
        long,
        env = "EXECD_STREAM_BASE_URL",
        value_name = "URL",
        help_heading = "CRI streaming"
    )]
    pub(crate) stream_base_url: Option<String>,

    /// How long a streaming URL from CRI Exec/Attach stays valid (single use)
    #[arg(long, env = "EXECD_STREAM_TOKEN_TTL", default_value = "1m", value_parser = parse_duration, help_heading = "CRI streaming")]
    pub(crate) stream_token_ttl: Duration,
    // --- end CRI streaming ---

    // --- Web terminal ---
    /// Serve the browser terminal at / (and the container list it picks from at /api/containers); off by default
    #[arg(long, env = "EXECD_WEB", help_heading = "Web terminal")]
    pub(crate) web: bool,

    // The doc line is the flag's --help text, where a bare example origin
    // reads better than rustdoc's <link> markup.
    #[allow(rustdoc::bare_urls)]
    /// Origins (like https://ops.example:8443) besides execd's own that may open WebSocket sessions, comma-separated; other browsers' cross-origin upgrades get 403
    #[arg(long, env = "EXECD_WEB_ALLOWED_ORIGINS", value_name = "ORIGIN", value_delimiter = ',', value_parser = crate::doors::web::origin::parse_allowed, help_heading = "Web terminal")]
    pub(crate) web_allowed_origins: Vec<String>,
    // --- end web terminal ---
    /// /terminal/ws (the function system's WebSocket protocol): find an `instance` as the running container whose label KEY equals it, instead of by container name or id
    #[arg(
        long,
        env = "EXECD_TERMINAL_INSTANCE_LABEL",
        value_name = "KEY",
        help_heading = "Doors"
    )]
    pub(crate) terminal_instance_label: Option<String>,
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

mod exposure;
mod file;
mod server;

pub use server::{ServerConfig, TlsConfig};

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
    #[error("--backend engine-api: {0}")]
    Backend(String),
    #[error("--backend oci: {0}")]
    OciBackend(String),
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

#[cfg(test)]
mod tests {
    use super::*;
    use execd_session::{BackendConfig, Limits};

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
        assert_eq!(cli.listen, [DEFAULT_LISTEN]);
        let cli = Cli::try_parse_from([
            "execd",
            "--listen",
            "unix:/run/execd/execd.sock",
            "--listen=127.0.0.1:1,[::1]:2",
        ])
        .unwrap();
        assert_eq!(
            cli.listen,
            ["unix:/run/execd/execd.sock", "127.0.0.1:1", "[::1]:2"]
        );
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
        assert_eq!(cfg.manager.backend, BackendConfig::Host);
        assert_eq!(cfg.manager.lifecycle.idle_timeout, None);
        assert!(Cli::try_parse_from(["execd", "--idle-timeout", "later"]).is_err());
    }

    /// `--backend` and `--host-exec` make one backend configuration;
    /// combinations without a meaning are refused with the flag to change.
    #[test]
    fn one_backend_configuration() {
        // `--backend` has an `EXECD_BACKEND` twin, which the test script
        // sets for its second and third passes: name it on every line.
        let backend = |args: &[&str]| {
            let mut argv = vec!["execd"];
            argv.extend(args);
            Cli::try_parse_from(argv).unwrap().backend_config()
        };
        assert_eq!(
            backend(&["--backend", "cli", "--runtime-cli", "podman"]).unwrap(),
            BackendConfig::Cli {
                program: "podman".into()
            }
        );
        assert_eq!(
            backend(&["--backend", "cli", "--host-exec"]).unwrap(),
            BackendConfig::Host
        );
        assert_eq!(
            backend(&["--backend", "engine-api", "--engine-socket", "/run/e.sock"]).unwrap(),
            BackendConfig::EngineApi {
                socket: "/run/e.sock".into()
            }
        );
        for refused in [
            &["--host-exec", "--backend", "engine-api"][..],
            &["--host-exec", "--backend", "oci"],
        ] {
            let err = backend(refused).unwrap_err().to_string();
            assert!(err.contains("--host-exec"), "{err}");
        }
        let err = backend(&["--backend", "oci", "--oci-root", "/no/such/root"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--oci-root"), "{err}");
    }

    #[test]
    fn admin_token_file_and_per_token_limit() {
        let cli = Cli::try_parse_from(["execd"]).unwrap();
        assert_eq!(
            cli.server_config().manager.limits.max_sessions_per_owner,
            256
        );
        assert!(cli.admin_token_file.is_none());
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        std::fs::write(&admin, "root-token\n").unwrap();
        // `--backend cli`: loading checks the backend's setup, and the
        // test script's later passes set `EXECD_BACKEND`.
        let cli = Cli::try_parse_from([
            "execd",
            "--backend",
            "cli",
            "--admin-token-file",
            admin.to_str().unwrap(),
            "--max-sessions-per-token",
            "0",
        ])
        .unwrap();
        let cfg = cli.load_server_config().unwrap();
        assert!(cfg.admin_auth.is_some_and(|t| t.accepts(b"root-token")));
        assert!(cfg.auth.is_none());
        assert_eq!(cfg.manager.limits.max_sessions_per_owner, 0);
        let toml = cli.effective_toml();
        assert!(toml.contains("admin-token-file = "), "{toml}");
        assert!(toml.contains("max-sessions-per-token = 0"), "{toml}");
    }
}
