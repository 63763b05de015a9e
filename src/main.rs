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
    let listener = Listener::bind(&cli.listen)
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
    execd::run(listener, cli.server_config(), shutdown).await?;
    Ok(())
}
