//! The `execd` binary: parse flags, set up logging, serve until SIGINT or
//! SIGTERM.

use anyhow::Context;
use execd::config::LogFormat;
use execd::{Cli, Listener};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("--log-level {:?} is not a valid filter", cli.log_level))?;
    // Colours only for a person at a terminal: escape codes in a log file
    // or journal are noise, and with them gone any ESC byte in a log is
    // suspicious (client values are escaped, see execd_session::log_field).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one: each session holds a
/// few descriptors (a socket or pty and pipes, the client's connection),
/// and the usual soft default of 1024 would cap execd far below
/// `--max-sessions`.
fn raise_fd_limit(max_sessions: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
        }
    }
    let limit = soft.max(hard);
    // About four descriptors per session, plus the server's own.
    let needed = (max_sessions as u64).saturating_mul(4).saturating_add(256);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is low for --max-sessions; raise it (LimitNOFILE=, ulimit -n)"
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::load_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if cli.print_config {
        print!("{}", cli.effective_toml());
        return Ok(());
    }
    init_logging(&cli)?;
    let warnings = cli.check_exposure().unwrap_or_else(|e| {
        eprintln!("execd: {e}");
        std::process::exit(2)
    });
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let config = cli.load_server_config().unwrap_or_else(|e| e.exit());
    raise_fd_limit(cli.max_sessions);
    let mut listeners = Vec::with_capacity(cli.listen.len());
    for addr in &cli.listen {
        let listener = Listener::bind_with_mode(addr, cli.socket_mode)
            .await
            .context("cannot start execd")?;
        listeners.push(listener);
    }
    let shutdown = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
        trigger.cancel();
    });
    let stores: Vec<(&'static str, execd::auth::TokenStore)> = [
        ("exec", config.auth.clone()),
        ("admin", config.admin_auth.clone()),
    ]
    .into_iter()
    .filter_map(|(which, store)| Some((which, store?)))
    .collect();
    if !stores.is_empty() {
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                for (which, tokens) in &stores {
                    match tokens.reload() {
                        Ok(count) => tracing::info!(count, which, "SIGHUP: auth tokens reloaded"),
                        Err(e) => {
                            tracing::warn!(which, error = %e, "SIGHUP: token reload failed; previous tokens stay in force")
                        }
                    }
                }
            }
        });
    }
    execd::run_on(listeners, config, shutdown).await?;
    Ok(())
}
