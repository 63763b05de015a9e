//! The `--config` TOML file (keys are flag names) and its twin,
//! `--print-config`: precedence flag > environment > file > default.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::{Cli, ConfigError, LogFormat};
use crate::transport::admission;

fn toml_to_args(
    path: &std::path::Path,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<String>, ConfigError> {
    let bad = |what: &str| ConfigError::File {
        path: path.to_path_buf(),
        message: format!("field {key:?}: {what}"),
    };
    Ok(match value {
        toml::Value::String(s) => vec![format!("--{key}={s}")],
        toml::Value::Integer(i) => vec![format!("--{key}={i}")],
        toml::Value::Boolean(true) => vec![format!("--{key}")],
        toml::Value::Boolean(false) => Vec::new(),
        // Repeatable flags (listen) take an array of strings.
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(format!("--{key}={s}")),
                _ => Err(bad("expected an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "expected a string, integer, boolean or array of strings",
            ))
        }
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
            extra.extend(
                toml_to_args(&path, key, value)?
                    .into_iter()
                    .map(OsString::from),
            );
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
        line(
            "listen",
            format!(
                "[{}]",
                self.listen
                    .iter()
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        line("socket-mode", format!("\"{:04o}\"", self.socket_mode));
        let path =
            |p: &Option<PathBuf>| p.as_ref().map(|p| format!("{:?}", p.display().to_string()));
        for (key, value) in [
            ("auth-token-file", path(&self.auth_token_file)),
            ("admin-token-file", path(&self.admin_token_file)),
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
        line(
            "backend",
            format!(
                "{:?}",
                match self.backend {
                    super::BackendChoice::Cli => "cli",
                    super::BackendChoice::EngineApi => "engine-api",
                    super::BackendChoice::Oci => "oci",
                }
            ),
        );
        if let Some(socket) = &self.engine_socket {
            line(
                "engine-socket",
                format!("{:?}", socket.display().to_string()),
            );
        }
        line("oci-runtime", format!("{:?}", self.oci_runtime));
        line(
            "oci-root",
            format!("{:?}", self.oci_root.display().to_string()),
        );
        line(
            "keep-background-processes",
            self.keep_background_processes.to_string(),
        );
        line("max-sessions", self.max_sessions.to_string());
        line(
            "max-sessions-per-instance",
            self.max_sessions_per_instance.to_string(),
        );
        line(
            "max-sessions-per-token",
            self.max_sessions_per_token.to_string(),
        );
        line("max-message-size", self.max_message_size.to_string());
        line("reattach-grace", format!("{:?}", d(&self.reattach_grace)));
        line("replay-buffer", self.replay_buffer.to_string());
        line("replay-buffer-total", self.replay_buffer_total.to_string());
        line("max-connections", self.max_connections.to_string());
        // The derived defaults are printed as the numbers they come to.
        let per_ip = self
            .max_connections_per_ip
            .unwrap_or(admission::default_max_per_peer(self.max_connections));
        line("max-connections-per-ip", per_ip.to_string());
        let unproven = self
            .max_unauthenticated_connections
            .unwrap_or(admission::default_max_unproven(self.max_connections));
        line("max-unauthenticated-connections", unproven.to_string());
        line(
            "max-streams-per-connection",
            self.max_streams_per_connection.to_string(),
        );
        line("max-pending-starts", self.max_pending_starts.to_string());
        line("max-health-watches", self.max_health_watches.to_string());
        line(
            "handshake-timeout",
            format!("{:?}", d(&self.handshake_timeout)),
        );
        line(
            "idle-connection-timeout",
            format!("{:?}", d(&self.idle_connection_timeout)),
        );
        line("idle-timeout", format!("{:?}", d(&self.idle_timeout)));
        line("start-timeout", format!("{:?}", d(&self.start_timeout)));
        line("shutdown-grace", format!("{:?}", d(&self.shutdown_grace)));
        line("kill-grace", format!("{:?}", d(&self.kill_grace)));
        if let Some(addr) = self.metrics_listen {
            line("metrics-listen", format!("{:?}", addr.to_string()));
        }
        line("health-interval", format!("{:?}", d(&self.health_interval)));
        if let Some(url) = &self.stream_base_url {
            line("stream-base-url", format!("{url:?}"));
        }
        line(
            "stream-token-ttl",
            format!("{:?}", d(&self.stream_token_ttl)),
        );
        line("web", self.web.to_string());
        if !self.web_allowed_origins.is_empty() {
            let origins: Vec<String> = self
                .web_allowed_origins
                .iter()
                .map(|o| format!("{o:?}"))
                .collect();
            line("web-allowed-origins", format!("[{}]", origins.join(", ")));
        }
        if let Some(label) = &self.terminal_instance_label {
            line("terminal-instance-label", format!("{label:?}"));
        }
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        line("log-format", format!("{format:?}"));
        line("log-level", format!("{:?}", self.log_level));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser as _;

    use super::*;

    /// The keys of a printed configuration.
    fn keys(toml: &str) -> BTreeSet<String> {
        let table: toml::Table = toml.parse().expect("--print-config prints TOML");
        table.keys().cloned().collect()
    }

    /// Every flag a config file can set appears in `--print-config`: those
    /// with a value always, the optional ones when given; each printed
    /// value reads back as itself. A flag added without its line fails.
    #[test]
    fn print_config_shows_every_flag_and_reads_back() {
        let settable: BTreeSet<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|long| !["config", "print-config", "help", "version"].contains(long))
            .map(str::to_string)
            .collect();
        let defaults = Cli::try_parse_from(["execd"]).unwrap();
        // Every optional flag without a default, given.
        let given = Cli::try_parse_from([
            "execd",
            "--auth-token-file=/etc/execd/tokens",
            "--admin-token-file=/etc/execd/admin",
            "--tls-cert=/etc/execd/cert.pem",
            "--tls-key=/etc/execd/key.pem",
            "--tls-client-ca=/etc/execd/ca.pem",
            "--engine-socket=/run/docker.sock",
            "--metrics-listen=127.0.0.1:9100",
            "--stream-base-url=https://node-1:50051",
            "--web-allowed-origins=https://ops.example:8443",
            "--terminal-instance-label=app",
            "--max-connections-per-ip=9",
            "--max-unauthenticated-connections=5",
        ])
        .unwrap();
        let mut shown = keys(&defaults.effective_toml());
        shown.extend(keys(&given.effective_toml()));
        let missing: Vec<&String> = settable.difference(&shown).collect();
        assert!(missing.is_empty(), "--print-config omits {missing:?}");
        let unknown: Vec<&String> = shown.difference(&settable).collect();
        assert!(unknown.is_empty(), "--print-config prints {unknown:?}");

        let dir = tempfile::tempdir().unwrap();
        for cli in [defaults, given] {
            let printed = cli.effective_toml();
            let file = dir.path().join("execd.toml");
            std::fs::write(&file, &printed).unwrap();
            let again = Cli::load_from(["execd", "--config", file.to_str().unwrap()]).unwrap();
            assert_eq!(again.effective_toml(), printed);
        }
    }

    /// Unset connection caps print the numbers they come to.
    #[test]
    fn derived_connection_caps_are_printed_as_numbers() {
        let cli = Cli::try_parse_from(["execd", "--max-connections=800"]).unwrap();
        let toml = cli.effective_toml();
        assert!(toml.contains("max-connections-per-ip = 200\n"), "{toml}");
        assert!(
            toml.contains("max-unauthenticated-connections = 100\n"),
            "{toml}"
        );
        assert!(
            toml.contains("idle-connection-timeout = \"1m\"\n"),
            "{toml}"
        );
    }
}
