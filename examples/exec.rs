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

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Parser;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_output_data::StreamType;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{
    ExecInputData, ExecMessage, ExecResizeRequest, ExecStartRequest, ExecStdinEof,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Exit status for failures of execd or the client itself (as docker uses).
const EXIT_ERROR: i32 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "exec",
    about = "Run a command in a container through execd, like `docker exec`",
    after_help = "Examples:\n  exec -it web sh                      interactive shell\n  exec web -- ls -la /                 one-off command\n  echo hi | exec -i web cat            pipe stdin\n  exec --addr unix:/run/execd.sock -it web sh\n  exec --addr node1:50051 --tls-ca ca.pem --token-file token -it web sh\n\nThe address also comes from EXECD_ADDR, the token from EXECD_TOKEN."
)]
struct Args {
    /// execd address: http://host:port, host:port, or unix:/path
    #[arg(long, env = "EXECD_ADDR", default_value = "http://127.0.0.1:50051")]
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

/// TLS settings for the connection, if any.
struct Tls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn token(args: &Args) -> Result<Option<String>, String> {
    if let Some(t) = &args.token {
        return Ok(Some(t.clone()));
    }
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let text = String::from_utf8(read_file("--token-file", path)?)
        .map_err(|_| format!("{} is not text", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| Some(t.to_string()))
        .ok_or_else(|| format!("{} holds no token", path.display()))
}

async fn connect(addr: &str, tls: Option<&Tls>) -> Result<Channel, String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = path.to_string();
        // The URI is a placeholder; the connector dials the socket.
        return Endpoint::try_from("http://execd.invalid")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect to execd at {addr}: {}", source_chain(&e)));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.replacen("http://", &format!("{scheme}://"), 1)
    } else {
        format!("{scheme}://{addr}")
    };
    let mut endpoint = Endpoint::try_from(uri).map_err(|e| format!("bad --addr {addr:?}: {e}"))?;
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS setup failed: {}", source_chain(&e)))?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to execd at {addr}: {}", source_chain(&e)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn message(payload: Payload) -> ExecMessage {
    ExecMessage {
        session_id: String::new(),
        payload: Some(payload),
    }
}

async fn session(args: Args) -> Result<i32, String> {
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => Some(Tls {
            ca: read_file("--tls-ca", ca)?,
            identity: match (&args.tls_cert, &args.tls_key) {
                (Some(c), Some(k)) => {
                    Some((read_file("--tls-cert", c)?, read_file("--tls-key", k)?))
                }
                _ => None,
            },
        }),
    };
    let bearer = match token(&args)? {
        Some(t) => Some(
            tonic::metadata::MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| "the token has characters not allowed in metadata".to_string())?,
        ),
        None => None,
    };
    let channel = connect(&args.addr, tls.as_ref()).await?;
    let mut client =
        ExecServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(value) = &bearer {
                req.metadata_mut().insert("authorization", value.clone());
            }
            Ok(req)
        })
        .max_decoding_message_size(16 * 1024 * 1024);

    let local_tty = args.tty && std::io::stdin().is_terminal();
    let (rows, cols) = if local_tty {
        crossterm::terminal::size()
            .map(|(c, r)| (i32::from(r), i32::from(c)))
            .unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let mut env = std::collections::HashMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("-e {kv:?}: expected KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let start = ExecMessage {
        session_id: args.session.clone().unwrap_or_default(),
        payload: Some(Payload::StartRequest(ExecStartRequest {
            container_id: args.container.clone(),
            command: args.command.clone(),
            tty: args.tty,
            rows,
            cols,
            env,
            working_dir: args.workdir.clone().unwrap_or_default(),
            user: args.user.clone().unwrap_or_default(),
            instance_id: args.instance.clone().unwrap_or_default(),
        })),
    };

    let (tx, rx) = mpsc::channel::<ExecMessage>(16);
    tx.send(start)
        .await
        .map_err(|_| "internal: request channel closed")?;
    if !args.interactive {
        // Like `docker exec` without -i: the process gets no stdin.
        let _ = tx.send(message(Payload::StdinEof(ExecStdinEof {}))).await;
    }
    let mut responses = client
        .exec_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("execd refused the session: {}", s.message()))?
        .into_inner();

    let _raw = if local_tty { RawMode::enable() } else { None };

    if args.interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(message(Payload::StdinEof(ExecStdinEof {}))).await;
                        return;
                    }
                    Ok(n) => {
                        let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                        if tx
                            .send(message(Payload::InputData(ExecInputData { data })))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    if local_tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Ok((c, r)) = crossterm::terminal::size() {
                    let resize = ExecResizeRequest {
                        rows: i32::from(r),
                        cols: i32::from(c),
                    };
                    if tx.send(message(Payload::Resize(resize))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);

    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let msg = match responses.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err("execd ended the stream without a final status".into()),
            Err(status) => return Err(status.message().to_string()),
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
                Ok(WireStatus::Error) => return Err(status.error_message),
                _ => {}
            },
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = match session(args).await {
        Ok(code) => code,
        Err(message) => {
            // Raw mode is already restored (the guard lives in `session`).
            eprintln!("exec: {message}");
            EXIT_ERROR
        }
    };
    std::process::exit(code);
}
