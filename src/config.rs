//! Command-line flags (each also read from an `EXECD_*` environment
//! variable) and the server configuration built from them.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use execd_session::{ExecMode, LifecycleConfig, Limits, ManagerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Address to serve on: host:port (loopback recommended) or unix:/path/to.sock
    #[arg(
        long,
        env = "EXECD_LISTEN",
        default_value = "127.0.0.1:50051",
        help_heading = "Listening"
    )]
    pub listen: String,

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

/// Everything `run` needs besides the listener and the shutdown token.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub manager: ManagerConfig,
    pub max_message_size: usize,
    pub start_timeout: Duration,
    pub shutdown_grace: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            manager: ManagerConfig::default(),
            max_message_size: 4 * 1024 * 1024,
            start_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl Cli {
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
