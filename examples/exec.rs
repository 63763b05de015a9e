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
//!
//! When execd runs with `--reattach-grace` (it says so in the response
//! metadata), a dropped connection is reconnected transparently: the client
//! comes back to the same session, telling execd how much output it already
//! has (`execd-output-offset`), so nothing is lost or repeated.
//! `--reattach ID` comes back to a session an earlier client left.
//!
//! Output is written in large pieces and flushed as soon as no further
//! message is immediately ready, never held while the client waits; the
//! channel takes frames and windows large enough for bulk output.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use execd_client::{message, Addr, Bearer, Connector, Tls};
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_output_data::StreamType;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Streaming;

/// Exit status for failures of execd or the client itself (as docker uses).
const EXIT_ERROR: i32 = 125;
/// Largest piece of stdin read (and sent) at once: one message per read,
/// well under execd's default `--max-message-size` (4 MiB).
const STDIN_PIECE: usize = 256 * 1024;
/// Local output buffer per stream: small messages (a terminal's) are
/// gathered into one write; larger ones are written straight through.
const OUTPUT_BUFFER: usize = 128 * 1024;
/// The pipe size asked for when local output is a pipe.
const PIPE_SIZE: i32 = 1024 * 1024;

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
    #[arg(long, conflicts_with = "reattach")]
    session: Option<String>,
    /// Come back to the detached session ID (execd with --reattach-grace)
    #[arg(long, value_name = "ID")]
    reattach: Option<String>,
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
        .large_windows()
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
    let id = args.session.as_deref().or(args.reattach.as_deref());
    Ok(message::start(id.unwrap_or_default(), request))
}

/// A reattach's start message: execd ignores its command for a detached
/// session; should the session be gone, the command that would run in its
/// place is a harmless `true`.
fn reattach_message(args: &Args, session_id: &str, local_tty: bool) -> Result<ExecMessage> {
    let mut msg = start_message(args, local_tty)?;
    msg.session_id = session_id.to_string();
    if let Some(Payload::StartRequest(r)) = &mut msg.payload {
        r.command = vec!["true".into()];
    }
    Ok(msg)
}

/// Forwards local stdin as input; its end (or a read error) becomes
/// `stdin_eof`. A thread of its own reads with plain blocking reads, each
/// as large as what is there (up to [`STDIN_PIECE`]), and waits on the
/// channel when execd takes no more (backpressure reaches the writer of
/// stdin); it goes with the process.
fn forward_stdin(tx: mpsc::Sender<ExecMessage>) -> Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; STDIN_PIECE];
            loop {
                let msg = match stdin.read(&mut buf) {
                    Ok(0) => message::eof(),
                    Ok(n) => message::input(bytes::Bytes::copy_from_slice(&buf[..n])),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => message::eof(),
                };
                let end = matches!(msg.payload, Some(Payload::StdinEof(_)));
                if tx.blocking_send(msg).is_err() || end {
                    return;
                }
            }
        })
        .map_err(|e| anyhow!("cannot start reading stdin: {e}"))?;
    Ok(())
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

/// What the session loop keeps across connections.
struct Progress {
    /// The session's id, once execd said it.
    session_id: Option<String>,
    /// Output bytes received (stdout and stderr together).
    received: u64,
    /// The reattach grace execd announced, if any.
    grace: Option<Duration>,
}

/// How one connection's stream ended.
enum Ending {
    Exited(i32),
    /// The connection dropped; the session may still be there.
    Dropped(anyhow::Error),
}

/// Opens one ExecStream starting with `first`, with the output offset
/// when reattaching.
async fn open_stream(
    client: &mut Client,
    first: ExecMessage,
    offset: Option<u64>,
) -> Result<(
    mpsc::Sender<ExecMessage>,
    Streaming<ExecMessage>,
    Option<Duration>,
)> {
    let (tx, rx) = mpsc::channel::<ExecMessage>(16);
    tx.send(first)
        .await
        .map_err(|_| anyhow!("internal: request channel closed"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(offset) = offset {
        request
            .metadata_mut()
            .insert("execd-output-offset", offset.into());
    }
    let response = client
        .exec_stream(request)
        .await
        .map_err(|s| anyhow!("execd refused the session: {}", s.message()))?;
    let grace = response
        .metadata()
        .get("execd-reattach-grace-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    Ok((tx, response.into_inner(), grace))
}

/// Local stdout and stderr, buffered (std's stdout is line-buffered and
/// was flushed per message). The relay flushes whenever no further message
/// is immediately ready, and before anything else is printed; a switch from
/// one stream to the other flushes the first, so their order is kept.
struct LocalOutput {
    stdout: Option<BufWriter<File>>,
    stderr: Option<BufWriter<File>>,
}

impl LocalOutput {
    fn new() -> LocalOutput {
        // Own handles on fds 1 and 2, written with plain writes; none (a
        // closed fd) is output that is closed.
        let open = |fd: std::os::fd::BorrowedFd<'_>| {
            grow_pipe(fd);
            let file = File::from(fd.try_clone_to_owned().ok()?);
            Some(BufWriter::with_capacity(OUTPUT_BUFFER, file))
        };
        LocalOutput {
            stdout: open(std::io::stdout().as_fd()),
            stderr: open(std::io::stderr().as_fd()),
        }
    }

    /// Writes one output message; false if local output is closed.
    fn write(&mut self, out: &execd_proto::exec_service::ExecOutputData) -> bool {
        let stderr = out.stream_type == StreamType::Stderr as i32;
        let (this, other) = if stderr {
            (&mut self.stderr, &mut self.stdout)
        } else {
            (&mut self.stdout, &mut self.stderr)
        };
        if let Some(other) = other {
            if !other.buffer().is_empty() && other.flush().is_err() {
                return false;
            }
        }
        this.as_mut()
            .is_some_and(|w| w.write_all(&out.data).is_ok())
    }

    /// Something written is still in a buffer.
    fn pending(&self) -> bool {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .any(|w| !w.buffer().is_empty())
    }

    /// Writes out what is buffered; false if local output is closed.
    fn flush(&mut self) -> bool {
        [&mut self.stdout, &mut self.stderr]
            .into_iter()
            .flatten()
            .all(|w| w.buffer().is_empty() || w.flush().is_ok())
    }
}

/// When local output is a pipe, asks for a larger one (as execd does for
/// a process's output), so that a 256 KiB message goes into it in one
/// write rather than four with the reader woken in between. Never
/// shrinks it; anything but a pipe, or a refusal (the system's
/// `pipe-max-size`, the user's pipe quota), leaves it as it is.
fn grow_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    if fcntl(fd, FcntlArg::F_GETPIPE_SZ).is_ok_and(|size| size < PIPE_SIZE) {
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
}

/// What the relay does next.
enum Step {
    /// A message of the session (output, a status) or the stream's end.
    Response(Result<Option<ExecMessage>, tonic::Status>),
    /// Input to send (None: no more input).
    Input(Option<ExecMessage>),
    /// Input went onto the stream, or the stream's request side is gone.
    Sent,
}

/// Waits for whichever comes first: a message from execd, local input,
/// or room on the stream for the input in hand. Every branch is
/// cancel-safe, so the relay may poll it once and drop it.
async fn next_step(
    tx: &mpsc::Sender<ExecMessage>,
    responses: &mut Streaming<ExecMessage>,
    inputs: &mut mpsc::Receiver<ExecMessage>,
    pending: &mut Option<ExecMessage>,
    inputs_open: bool,
) -> Step {
    tokio::select! {
        msg = inputs.recv(), if pending.is_none() && inputs_open => Step::Input(msg),
        permit = tx.reserve(), if pending.is_some() => {
            // The stream's request side is gone: the response side
            // says why.
            if let (Ok(permit), Some(msg)) = (permit, pending.take()) {
                permit.send(msg);
            }
            Step::Sent
        }
        msg = responses.message() => Step::Response(msg),
    }
}

/// Relays input to the stream and output to the terminal until the final
/// status or a dropped connection. `reattaching`: the first status must
/// be RUNNING (the session is the old one).
async fn relay(
    tx: mpsc::Sender<ExecMessage>,
    responses: &mut Streaming<ExecMessage>,
    inputs: &mut mpsc::Receiver<ExecMessage>,
    output: &mut LocalOutput,
    progress: &mut Progress,
    reattaching: bool,
) -> Result<Ending> {
    let mut pending: Option<ExecMessage> = None;
    let mut inputs_open = true;
    loop {
        let step = next_step(&tx, responses, inputs, &mut pending, inputs_open);
        let step = tokio::select! {
            // What is ready now first; once nothing is, the buffered
            // output goes out before the relay waits.
            biased;
            step = step => step,
            _ = std::future::ready(()), if output.pending() => {
                if !output.flush() {
                    return Ok(Ending::Exited(EXIT_ERROR));
                }
                continue;
            }
        };
        match step {
            Step::Input(Some(msg)) => pending = Some(msg),
            Step::Input(None) => inputs_open = false,
            Step::Sent => {}
            Step::Response(msg) => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => bail!("execd ended the stream without a final status"),
                    Err(status)
                        if progress.session_id.is_some()
                            && status.code() != tonic::Code::Ok
                            && !is_session_error(&status) =>
                    {
                        return Ok(Ending::Dropped(anyhow!("{}", status.message())));
                    }
                    Err(status) => bail!("{}", status.message()),
                };
                match msg.payload {
                    Some(Payload::OutputData(out)) => {
                        progress.received += out.data.len() as u64;
                        if !output.write(&out) {
                            // Local output closed (e.g. piped into `head`): stop.
                            return Ok(Ending::Exited(EXIT_ERROR));
                        }
                    }
                    Some(Payload::Status(status)) => match WireStatus::try_from(status.status) {
                        Ok(WireStatus::Exited) => return Ok(Ending::Exited(status.exit_code)),
                        Ok(WireStatus::Error) => bail!("{}", status.error_message),
                        Ok(WireStatus::Started) if reattaching => {
                            bail!("session {} is gone; nothing to reattach to", msg.session_id)
                        }
                        Ok(WireStatus::Started | WireStatus::Running) => {
                            progress.session_id = Some(msg.session_id);
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
}

/// A transport failure (the connection), as opposed to execd ending the
/// session, which always sends an ERROR status first.
fn is_session_error(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

/// Comes back to the session after a dropped connection: retries until
/// the grace runs out.
async fn reconnect(
    args: &Args,
    local_tty: bool,
    progress: &Progress,
    grace: Duration,
) -> Result<(mpsc::Sender<ExecMessage>, Streaming<ExecMessage>)> {
    let id = progress
        .session_id
        .clone()
        .ok_or_else(|| anyhow!("no session to come back to"))?;
    eprint!("\r\nexec: connection lost; reconnecting to session {id}\r\n");
    let deadline = tokio::time::Instant::now() + grace;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut client = connect(args).await?;
            let first = reattach_message(args, &id, local_tty)?;
            open_stream(&mut client, first, Some(progress.received)).await
        };
        match attempt.await {
            Ok((tx, responses, _)) => return Ok((tx, responses)),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                eprint!("exec: still reconnecting: {}\r\n", describe(&e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn session(args: Args) -> Result<i32> {
    let mut client = connect(&args).await?;
    let local_tty = args.tty && std::io::stdin().is_terminal();
    // Input outlives any one connection: a reconnect carries on with it.
    let (input_tx, mut inputs) = mpsc::channel::<ExecMessage>(16);
    if !args.interactive {
        // Like `docker exec` without -i: the process gets no stdin.
        let _ = input_tx.send(message::eof()).await;
    }
    let reattaching = args.reattach.is_some();
    let (mut tx, mut responses, grace) =
        open_stream(&mut client, start_message(&args, local_tty)?, None).await?;
    let mut progress = Progress {
        session_id: None,
        received: 0,
        grace,
    };

    let _raw = if local_tty { RawMode::enable() } else { None };
    if args.interactive {
        forward_stdin(input_tx.clone())?;
    }
    if local_tty {
        forward_resizes(input_tx.clone());
    }
    drop(input_tx);
    let mut output = LocalOutput::new();
    let result = async {
        let mut first = true;
        loop {
            let expect_running = reattaching || !first;
            let ending = relay(
                tx,
                &mut responses,
                &mut inputs,
                &mut output,
                &mut progress,
                expect_running,
            )
            .await?;
            first = false;
            match (ending, progress.grace) {
                (Ending::Exited(code), _) => return Ok(code),
                (Ending::Dropped(e), None) => return Err(e),
                (Ending::Dropped(_), Some(grace)) => {
                    output.flush();
                    (tx, responses) = reconnect(&args, local_tty, &progress, grace).await?;
                }
            }
        }
    }
    .await;
    // What is buffered goes out before an error is printed and while the
    // terminal is still raw.
    output.flush();
    result
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
