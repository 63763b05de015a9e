//! A `docker exec`-like client for execd.
//!
//! ```text
//! cargo run --example exec -- [--addr ADDR] [-i] [-t] [-e K=V]... [-w DIR] [-u USER]
//!                             [--instance ID] [--session ID] CONTAINER [--] [CMD...]
//! ```
//!
//! With `-t` on a terminal, the local terminal goes into raw mode (restored
//! on every exit path), its size is sent at start and on every SIGWINCH.
//! With `-i`, stdin is forwarded and its end becomes `stdin_eof`. The client
//! exits with the remote exit code, or 125 with the error on stderr.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use execd_client::{message, Addr, Bearer, Connector, Tls};
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_output_data::StreamType;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Streaming;

/// Exit status for failures of execd or the client itself (as docker uses).
const EXIT_ERROR: i32 = 125;

type Client = ExecServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, Parser)]
#[command(
    name = "exec",
    about = "Run a command in a container through execd, like `docker exec`",
    after_help = "Examples:\n  exec -it web sh                      interactive shell\n  exec web -- ls -la /                 one-off command\n  echo hi | exec -i web cat            pipe stdin\n  exec --addr 127.0.0.1:50051 -it web sh       a TCP listener\n  exec --addr node1:50051 --tls-ca ca.pem --token-file token -it web sh\n\nThe address also comes from EXECD_ADDR, the token from EXECD_TOKEN."
)]
struct Args {
    /// execd address: http://host:port, host:port, or unix:/path
    #[arg(long, env = "EXECD_ADDR", default_value = "unix:/run/execd/execd.sock")]
    addr: String,
    /// Keep stdin open and forward it
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (name|uid[:group|gid])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Instance id the session is counted under
    #[arg(long)]
    instance: Option<String>,
    /// Session id to use (default: the server picks one)
    #[arg(long)]
    session: Option<String>,
    /// Bearer token for execd's --auth-token-file
    #[arg(long, env = "EXECD_TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// File whose first non-comment line is the bearer token
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to verify execd's TLS certificate; enables TLS
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Container name or id ("" with a --host-exec server)
    container: String,
    /// Command and arguments (default: /bin/sh)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode;

impl RawMode {
    fn enable() -> Option<RawMode> {
        crossterm::terminal::enable_raw_mode().ok().map(|_| RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Connects as the flags say: address, TLS material, token.
async fn connect(args: &Args) -> Result<Client> {
    let addr: Addr = args.addr.parse()?;
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            Some(Tls::read(ca, identity)?)
        }
        None => None,
    };
    let bearer = match (&args.token, &args.token_file) {
        (Some(token), _) => Bearer::new(token)?,
        (None, Some(path)) => Bearer::from_file(path)?,
        (None, None) => Bearer::default(),
    };
    let channel = Connector::new(&addr, tls.as_ref())?
        .tune(|endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        })
        .connect()
        .await?;
    Ok(ExecServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(16 * 1024 * 1024))
}

/// The local terminal's size as (rows, cols), if it has one.
fn terminal_size() -> Option<(i32, i32)> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    Some((i32::from(rows), i32::from(cols)))
}

/// The start request the flags describe; the size is the local terminal's
/// when it is one, else execd's default.
fn start_message(args: &Args, local_tty: bool) -> Result<ExecMessage> {
    let (rows, cols) = local_tty.then(terminal_size).flatten().unwrap_or((0, 0));
    let mut env = HashMap::new();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("-e {kv:?}: expected KEY=VALUE");
        };
        env.insert(k.to_string(), v.to_string());
    }
    let request = ExecStartRequest {
        container_id: args.container.clone(),
        command: args.command.clone(),
        tty: args.tty,
        rows,
        cols,
        env,
        working_dir: args.workdir.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        instance_id: args.instance.clone().unwrap_or_default(),
    };
    Ok(message::start(
        args.session.as_deref().unwrap_or_default(),
        request,
    ))
}

/// Forwards local stdin as input; its end (or a read error) becomes
/// `stdin_eof`.
fn forward_stdin(tx: mpsc::Sender<ExecMessage>) {
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(message::eof()).await;
                    return;
                }
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if tx.send(message::input(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Sends the local terminal's size on every SIGWINCH.
fn forward_resizes(tx: mpsc::Sender<ExecMessage>) {
    tokio::spawn(async move {
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some((rows, cols)) = terminal_size() {
                if tx.send(message::resize(rows, cols)).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// Copies remote output to local stdout/stderr until the terminal status;
/// returns the exit code.
async fn print_output(responses: &mut Streaming<ExecMessage>) -> Result<i32> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let msg = match responses.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => bail!("execd ended the stream without a final status"),
            Err(status) => bail!("{}", status.message()),
        };
        match msg.payload {
            Some(Payload::OutputData(out)) => {
                let result = if out.stream_type == StreamType::Stderr as i32 {
                    stderr.write_all(&out.data).and_then(|_| stderr.flush())
                } else {
                    stdout.write_all(&out.data).and_then(|_| stdout.flush())
                };
                if result.is_err() {
                    // Local output closed (e.g. piped into `head`): stop.
                    return Ok(EXIT_ERROR);
                }
            }
            Some(Payload::Status(status)) => match WireStatus::try_from(status.status) {
                Ok(WireStatus::Exited) => return Ok(status.exit_code),
                Ok(WireStatus::Error) => bail!("{}", status.error_message),
                _ => {}
            },
            _ => {}
        }
    }
}

async fn session(args: Args) -> Result<i32> {
    let mut client = connect(&args).await?;
    let local_tty = args.tty && std::io::stdin().is_terminal();
    let (tx, rx) = mpsc::channel::<ExecMessage>(16);
    tx.send(start_message(&args, local_tty)?)
        .await
        .map_err(|_| anyhow!("internal: request channel closed"))?;
    if !args.interactive {
        // Like `docker exec` without -i: the process gets no stdin.
        let _ = tx.send(message::eof()).await;
    }
    let mut responses = client
        .exec_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("execd refused the session: {}", s.message()))?
        .into_inner();

    let _raw = if local_tty { RawMode::enable() } else { None };
    if args.interactive {
        forward_stdin(tx.clone());
    }
    if local_tty {
        forward_resizes(tx.clone());
    }
    // The forwarders hold the only senders now: when both are done the
    // request stream half-closes.
    drop(tx);
    print_output(&mut responses).await
}

/// The error and its causes on one line, each said once: transport errors
/// wrap the same I/O error at several layers.
fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = match session(args).await {
        Ok(code) => code,
        Err(error) => {
            // Raw mode is already restored (the guard lives in `session`).
            eprintln!("exec: {}", describe(&error));
            EXIT_ERROR
        }
    };
    std::process::exit(code);
}
