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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::load_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if cli.print_config {
        print!("{}", cli.effective_toml());
        return Ok(());
    }
    init_logging(&cli)?;
    let insecure = cli.check_exposure().unwrap_or_else(|e| {
        eprintln!("execd: {e}");
        std::process::exit(2)
    });
    if insecure {
        tracing::warn!(listen = %cli.listen, "listening on a non-loopback address without TLS and token (--insecure-allow-remote): anyone who can reach it gets a shell in every container");
    }
    let config = cli.load_server_config().unwrap_or_else(|e| e.exit());
    let listener = Listener::bind_with_mode(&cli.listen, cli.socket_mode)
        .await
        .context("cannot start execd")?;
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
    if let Some(tokens) = config.auth.clone() {
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                match tokens.reload() {
                    Ok(count) => tracing::info!(count, "SIGHUP: auth tokens reloaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: token reload failed; previous tokens stay in force")
                    }
                }
            }
        });
    }
    execd::run(listener, config, shutdown).await?;
    Ok(())
}
