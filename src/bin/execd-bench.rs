//! execd-bench: execd against plain `docker exec`, same run, same container.
//!
//! ```text
//! cargo run --release --bin execd-bench [-- --quick] [--out BENCHMARKS.md]
//! ```
//!
//! Starts its own `execd` (the release binary next to this one) on a unix
//! socket, makes sure the busybox bench container runs, and measures each
//! scenario through execd and through `docker exec` directly, printing a
//! table of both figures and their ratio; the table is also written to
//! `BENCHMARKS.md` with a description of the machine.
//!
//! The client side is Rust + tonic with large HTTP/2 windows, so it is not
//! the bottleneck. Terminal baselines run `docker exec -t` under a PTY the
//! bench drives itself (the same PTY code execd uses).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecInputData, ExecMessage, ExecStartRequest};
use execd_session::command::{RuntimeCommand, TermSize};
use execd_session::spawn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

const CONTAINER: &str = "execd-bench";
const IMAGE: &str = "execd-busybox:latest";

#[derive(Debug, Parser)]
#[command(about = "Benchmark execd against plain docker exec")]
struct Args {
    /// Smaller sample counts and sizes (a smoke run, not for the record)
    #[arg(long)]
    quick: bool,
    /// Where to write the markdown report
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// execd binary to start (default: the one next to this binary)
    #[arg(long)]
    execd: Option<PathBuf>,
    /// Run only these scenarios (start, pipe, tty, keys, concurrency, slow)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

// ---------------------------------------------------------------- stats --

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Samples(Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        percentile(&self.sorted(), 50.0)
    }
    fn p99(&self) -> f64 {
        percentile(&self.sorted(), 99.0)
    }
}

struct Row {
    scenario: String,
    metric: String,
    execd: f64,
    docker: Option<f64>,
    unit: String,
    /// Target, in words, and whether it is met.
    target: String,
    met: Option<bool>,
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Row {
    fn ratio(&self) -> String {
        match self.docker {
            Some(d) if d != 0.0 => format!("{:.3}", self.execd / d),
            _ => "—".into(),
        }
    }
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        }
    }
}

// --------------------------------------------------------------- process --

fn docker(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ensure_container() -> Result<()> {
    if docker(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        CONTAINER,
    ])
    .map(|s| s == "running")
    .unwrap_or(false)
    {
        return Ok(());
    }
    let _ = docker(&["rm", "-f", CONTAINER]);
    docker(&[
        "run",
        "-d",
        "--init",
        "--network",
        "none",
        "--name",
        CONTAINER,
        IMAGE,
        "sleep",
        "infinity",
    ])
    .context("starting the bench container (run scripts/docker-up first)")?;
    Ok(())
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS:").unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    proc_status_field(pid, "Threads:").unwrap_or(0)
}

/// RSS of the direct children of `pid` (the `docker exec` processes).
fn children_rss_kib(pid: u32) -> (u64, usize) {
    let mut total = 0;
    let mut count = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if proc_status_field(child, "PPid:") == Some(pid as u64) {
            total += rss_kib(child);
            count += 1;
        }
    }
    (total, count)
}

struct Execd {
    child: tokio::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Execd {
    async fn start(binary: &Path) -> Result<Execd> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("execd.sock");
        let child = tokio::process::Command::new(binary)
            .args([
                "--listen",
                &format!("unix:{}", socket.display()),
                "--log-level",
                "warn",
                "--max-sessions-per-instance",
                "1000",
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("execd did not create its socket");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Execd {
            child,
            socket,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn channel(&self) -> Result<Channel> {
        let path = self.socket.clone();
        Ok(Endpoint::try_from("http://execd.invalid")?
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await?)
    }
}

// ---------------------------------------------------------------- client --

struct Session {
    tx: mpsc::Sender<ExecMessage>,
    rx: Streaming<ExecMessage>,
}

fn start_request(command: &[&str], tty: bool) -> ExecMessage {
    ExecMessage {
        session_id: String::new(),
        payload: Some(Payload::StartRequest(ExecStartRequest {
            container_id: CONTAINER.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            rows: 50,
            cols: 200,
            ..Default::default()
        })),
    }
}

async fn open(channel: &Channel, command: &[&str], tty: bool) -> Result<Session> {
    let mut client = ExecServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    tx.send(start_request(command, tty)).await?;
    let rx = client
        .exec_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Session { tx, rx })
}

enum Event {
    Started,
    Output(usize, Bytes),
    Exited(i32),
}

async fn next_event(rx: &mut Streaming<ExecMessage>) -> Result<Event> {
    loop {
        let msg = rx.message().await?.ok_or_else(|| anyhow!("stream ended"))?;
        match msg.payload {
            Some(Payload::OutputData(o)) => return Ok(Event::Output(o.data.len(), o.data)),
            Some(Payload::Status(s)) => match WireStatus::try_from(s.status) {
                Ok(WireStatus::Started) => return Ok(Event::Started),
                Ok(WireStatus::Exited) => return Ok(Event::Exited(s.exit_code)),
                Ok(WireStatus::Error) => bail!("session error: {}", s.error_message),
                _ => {}
            },
            _ => {}
        }
    }
}

fn input(data: &[u8]) -> ExecMessage {
    ExecMessage {
        session_id: String::new(),
        payload: Some(Payload::InputData(ExecInputData {
            data: Bytes::copy_from_slice(data),
        })),
    }
}

// ------------------------------------------------------------- scenarios --

/// Start → first output byte and start → exit, in milliseconds.
async fn start_latency_execd(channel: &Channel, n: usize) -> Result<(Samples, Samples)> {
    let (mut first, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = open(channel, &["echo", "x"], false).await?;
        let mut got_first = false;
        loop {
            match next_event(&mut s.rx).await? {
                Event::Output(..) if !got_first => {
                    first.push(t0.elapsed().as_secs_f64() * 1e3);
                    got_first = true;
                }
                Event::Exited(_) => {
                    exit.push(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                _ => {}
            }
        }
    }
    Ok((Samples(first), Samples(exit)))
}

async fn start_latency_docker(n: usize) -> Result<(Samples, Samples)> {
    let (mut first, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("docker")
            .args(["exec", CONTAINER, "echo", "x"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf).await?;
        if n == 0 {
            bail!("docker exec printed nothing");
        }
        first.push(t0.elapsed().as_secs_f64() * 1e3);
        while out.read(&mut buf).await? > 0 {}
        child.wait().await?;
        exit.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((Samples(first), Samples(exit)))
}

/// MiB/s of `dd` output through execd.
async fn throughput_execd(channel: &Channel, tty: bool, count: usize) -> Result<f64> {
    let cmd = format!("dd if=/dev/zero bs=65536 count={count} 2>/dev/null");
    let t0 = Instant::now();
    let mut s = open(channel, &["sh", "-c", &cmd], tty).await?;
    let mut total = 0usize;
    loop {
        match next_event(&mut s.rx).await? {
            Event::Output(n, _) => total += n,
            Event::Exited(0) => break,
            Event::Exited(code) => bail!("dd exited {code}"),
            Event::Started => {}
        }
    }
    let expected = count * 65536;
    if total != expected {
        bail!("execd delivered {total} bytes, expected {expected}");
    }
    Ok(total as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64())
}

async fn throughput_docker_pipe(count: usize) -> Result<f64> {
    let cmd = format!("dd if=/dev/zero bs=65536 count={count} 2>/dev/null");
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args(["exec", CONTAINER, "sh", "-c", &cmd])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    child.wait().await?;
    Ok(total as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64())
}

fn docker_exec_command(args: &[&str]) -> RuntimeCommand {
    RuntimeCommand {
        program: "docker".into(),
        args: args.iter().map(Into::into).collect(),
        env: Vec::new(),
        current_dir: None,
        user: None,
    }
}

async fn throughput_docker_tty(count: usize) -> Result<f64> {
    let cmd = format!("dd if=/dev/zero bs=65536 count={count} 2>/dev/null");
    let t0 = Instant::now();
    let rc = docker_exec_command(&["exec", "-i", "-t", CONTAINER, "sh", "-c", &cmd]);
    let mut spawned = spawn::spawn_in_terminal(
        &rc,
        TermSize {
            rows: 50,
            cols: 200,
        },
        spawn::TerminalMode::Raw,
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = spawned.io.stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    spawned.child.wait().await?;
    Ok(total as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64())
}

/// Throughput through execd and through plain `docker exec`, median of 3
/// alternating runs each.
async fn throughput_row(channel: &Channel, tty: bool, count: usize) -> Result<Row> {
    let mut e = Vec::new();
    let mut d = Vec::new();
    for _ in 0..3 {
        e.push(throughput_execd(channel, tty, count).await?);
        d.push(if tty {
            throughput_docker_tty(count).await?
        } else {
            throughput_docker_pipe(count).await?
        });
    }
    let (e, d) = (Samples(e).median(), Samples(d).median());
    let kind = if tty { "tty" } else { "pipe" };
    Ok(Row {
        scenario: format!("{kind} throughput ({} MiB, median of 3)", count / 16),
        metric: "rate".into(),
        execd: e,
        docker: Some(d),
        unit: "MiB/s".into(),
        target: "ratio ≥ 0.95".into(),
        met: Some(e / d >= 0.95),
    })
}

/// Keystroke round trips (ms) with `cat` under a tty through execd.
async fn keystrokes_execd(s: &mut Session, n: usize) -> Result<Samples> {
    // Let the terminal settle (the initial echo of nothing, resize checks).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        s.tx.send(input(&[key])).await?;
        loop {
            match next_event(&mut s.rx).await? {
                Event::Output(_, data) if data.contains(&key) => break,
                Event::Exited(_) => bail!("cat exited"),
                _ => {}
            }
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        if i % 64 == 63 {
            // Keep cat's line buffer short.
            s.tx.send(input(b"\n")).await?;
            drain_until_quiet(s).await?;
        }
    }
    Ok(Samples(samples))
}

async fn drain_until_quiet(s: &mut Session) -> Result<()> {
    while let Ok(ev) = tokio::time::timeout(Duration::from_millis(30), next_event(&mut s.rx)).await
    {
        ev?;
    }
    Ok(())
}

async fn keystrokes_docker(n: usize) -> Result<Samples> {
    let rc = docker_exec_command(&["exec", "-i", "-t", CONTAINER, "cat"]);
    let mut spawned = spawn::spawn_in_terminal(
        &rc,
        TermSize {
            rows: 50,
            cols: 200,
        },
        spawn::TerminalMode::Raw,
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut buf = vec![0u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        spawned.io.stdin.write_all(&[key]).await?;
        loop {
            let got = spawned.io.stdout.read(&mut buf).await?;
            if got == 0 {
                bail!("docker exec cat ended");
            }
            if buf[..got].contains(&key) {
                break;
            }
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        if i % 64 == 63 {
            spawned.io.stdin.write_all(b"\n").await?;
            while let Ok(r) =
                tokio::time::timeout(Duration::from_millis(30), spawned.io.stdout.read(&mut buf))
                    .await
            {
                if r? == 0 {
                    break;
                }
            }
        }
    }
    let _ = spawned.child.start_kill();
    let _ = spawned.child.wait().await;
    Ok(Samples(samples))
}

struct ConcurrencyResult {
    sessions: usize,
    rss_per_session_kib: f64,
    threads_before: u64,
    threads_after: u64,
    children_rss_mib: f64,
    children: usize,
    rtt_p99_ms: f64,
}

async fn concurrency(
    execd: &Execd,
    channel: &Channel,
    n: usize,
    rtt_samples: usize,
) -> Result<ConcurrencyResult> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(execd.pid());
    let threads_before = threads(execd.pid());
    let mut open_sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = open(channel, &["cat"], true).await?;
        match next_event(&mut s.rx).await? {
            Event::Started => {}
            _ => bail!("expected STARTED"),
        }
        open_sessions.push(s);
    }
    // Let every terminal's size checks finish: the sessions are idle now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let rss_after = rss_kib(execd.pid());
    let threads_after = threads(execd.pid());
    let (children_rss, children) = children_rss_kib(execd.pid());
    let rtt = keystrokes_execd(&mut open_sessions[0], rtt_samples).await?;
    drop(open_sessions);
    // Wait for execd to reap them before the next round.
    let deadline = Instant::now() + Duration::from_secs(60);
    while children_rss_kib(execd.pid()).1 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ConcurrencyResult {
        sessions: n,
        rss_per_session_kib: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        threads_before,
        threads_after,
        children_rss_mib: children_rss as f64 / 1024.0,
        children,
        rtt_p99_ms: rtt.p99(),
    })
}

/// Peak RSS growth (MiB) while a client reads 1 GiB of output at 1 MiB/s.
async fn slow_reader(execd: &Execd, channel: &Channel, seconds: u64) -> Result<(f64, f64)> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(execd.pid());
    let mut s = open(
        channel,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero bs=65536 count=16384 2>/dev/null",
        ],
        false,
    )
    .await?;
    let t0 = Instant::now();
    let mut peak = base;
    let mut read = 0usize;
    while t0.elapsed() < Duration::from_secs(seconds) {
        let allowed = (t0.elapsed().as_secs_f64() * 1024.0 * 1024.0) as usize;
        if read < allowed {
            if let Event::Output(n, _) = next_event(&mut s.rx).await? {
                read += n;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak = peak.max(rss_kib(execd.pid()));
    }
    drop(s);
    let rate = read as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64();
    Ok(((peak.saturating_sub(base)) as f64 / 1024.0, rate))
}

// ---------------------------------------------------------------- report --

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = proc_meminfo_kib("MemTotal:") as f64 / (1024.0 * 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let engine = docker(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}}), CLI {{.Client.Version}}",
    ])
    .unwrap_or_else(|_| "unknown".into());
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}; Docker engine {engine}")
}

fn proc_meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn render(rows: &[Row], notes: &[String], machine: &str, quick: bool) -> String {
    let mut out = String::new();
    out.push_str("# execd benchmarks\n\n");
    out.push_str(&format!("Machine: {machine}.\n\n"));
    out.push_str("Produced by `cargo run --release --bin execd-bench`");
    if quick {
        out.push_str(" `--quick` (reduced sizes: a smoke run)");
    }
    out.push_str(". Each scenario runs through execd and through plain `docker exec` in the same run, on the same container; ratio = execd ÷ docker exec.\n\n");
    out.push_str("| scenario | metric | execd | docker exec | unit | ratio | target | |\n|---|---|---:|---:|---|---:|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.metric,
            fmt_num(r.execd),
            r.docker.map(fmt_num).unwrap_or_else(|| "—".into()),
            r.unit,
            r.ratio(),
            r.target,
            r.verdict()
        ));
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = match args.execd {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no parent directory"))?
            .join("execd"),
    };
    ensure_container()?;
    let execd = Execd::start(&binary).await?;
    let channel = execd.channel().await?;
    let q = args.quick;
    let run = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // Warm both paths (CLI binaries in page cache, engine caches).
    start_latency_docker(3).await?;
    start_latency_execd(&channel, 3).await?;

    if run("start") {
        eprintln!("1/6 start latency");
        let n = if q { 10 } else { 50 };
        // Interleaved, so drift on the machine hits both sides alike.
        let (mut ef, mut ee, mut df, mut de) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let (first, exit) = start_latency_execd(&channel, 1).await?;
            ef.extend(first.0);
            ee.extend(exit.0);
            let (first, exit) = start_latency_docker(1).await?;
            df.extend(first.0);
            de.extend(exit.0);
        }
        let (e_first, e_exit, d_first, d_exit) =
            (Samples(ef), Samples(ee), Samples(df), Samples(de));
        let ratio_ok = |e: f64, d: f64, max: f64| Some(e / d <= max);
        rows.push(Row {
            scenario: format!("start ({n}× echo x)"),
            metric: "first byte, median".into(),
            execd: e_first.median(),
            docker: Some(d_first.median()),
            unit: "ms".into(),
            target: "ratio ≤ 1.05".into(),
            met: ratio_ok(e_first.median(), d_first.median(), 1.05),
        });
        rows.push(Row {
            scenario: format!("start ({n}× echo x)"),
            metric: "first byte, p99".into(),
            execd: e_first.p99(),
            docker: Some(d_first.p99()),
            unit: "ms".into(),
            target: "ratio ≤ 1.2".into(),
            met: ratio_ok(e_first.p99(), d_first.p99(), 1.2),
        });
        rows.push(Row {
            scenario: format!("start ({n}× echo x)"),
            metric: "exit, median".into(),
            execd: e_exit.median(),
            docker: Some(d_exit.median()),
            unit: "ms".into(),
            target: String::new(),
            met: None,
        });
        rows.push(Row {
            scenario: format!("start ({n}× echo x)"),
            metric: "exit, p99".into(),
            execd: e_exit.p99(),
            docker: Some(d_exit.p99()),
            unit: "ms".into(),
            target: String::new(),
            met: None,
        });
    }
    for (name, tty, count) in [
        ("pipe", false, if q { 1024 } else { 8192 }),
        ("tty", true, if q { 512 } else { 2048 }),
    ] {
        if run(name) {
            eprintln!("{} throughput", name);
            rows.push(throughput_row(&channel, tty, count).await?);
        }
    }
    if run("keys") {
        eprintln!("4/6 keystroke round trip");
        let n = if q { 200 } else { 1000 };
        let mut s = open(&channel, &["cat"], true).await?;
        let e = keystrokes_execd(&mut s, n).await?;
        drop(s);
        let d = keystrokes_docker(n).await?;
        for (metric, ev, dv) in [
            ("median", e.median(), d.median()),
            ("p99", e.p99(), d.p99()),
        ] {
            rows.push(Row {
                scenario: format!("keystroke round trip ({n}× 1 byte, tty cat)"),
                metric: metric.into(),
                execd: ev,
                docker: Some(dv),
                unit: "ms".into(),
                target: if metric == "p99" {
                    "≤ docker + 2 ms".into()
                } else {
                    String::new()
                },
                met: (metric == "p99").then_some(ev <= dv + 2.0),
            });
        }
    }
    if run("concurrency") {
        eprintln!("5/6 concurrency");
        let levels: &[usize] = if q { &[20, 50] } else { &[50, 100, 200] };
        for &level in levels {
            let r = concurrency(&execd, &channel, level, if q { 50 } else { 200 }).await?;
            rows.push(Row {
                scenario: format!("{} idle tty sessions", r.sessions),
                metric: "execd RSS per session".into(),
                execd: r.rss_per_session_kib,
                docker: None,
                unit: "KiB".into(),
                target: "≤ 64 KiB".into(),
                met: Some(r.rss_per_session_kib <= 64.0),
            });
            rows.push(Row {
                scenario: format!("{} idle tty sessions", r.sessions),
                metric: "execd threads with sessions open".into(),
                execd: r.threads_after as f64,
                docker: None,
                unit: format!("threads (from {})", r.threads_before),
                target: "no growth per session".into(),
                met: Some(r.threads_after <= r.threads_before + 2),
            });
            rows.push(Row {
                scenario: format!("{} idle tty sessions", r.sessions),
                metric: format!("docker exec children RSS ({} processes)", r.children),
                execd: r.children_rss_mib,
                docker: None,
                unit: "MiB".into(),
                target: String::new(),
                met: None,
            });
            rows.push(Row {
                scenario: format!("{} idle tty sessions", r.sessions),
                metric: "keystroke p99 on one session".into(),
                execd: r.rtt_p99_ms,
                docker: None,
                unit: "ms".into(),
                target: String::new(),
                met: None,
            });
        }
    }
    if run("slow") {
        eprintln!("6/6 slow reader");
        let seconds = if q { 4 } else { 10 };
        let (growth, rate) = slow_reader(&execd, &channel, seconds).await?;
        rows.push(Row {
            scenario: format!("slow reader (1 GiB at 1 MiB/s for {seconds} s)"),
            metric: "execd RSS growth".into(),
            execd: growth,
            docker: None,
            unit: "MiB".into(),
            target: "< 16 MiB".into(),
            met: Some(growth < 16.0),
        });
        notes.push(format!("slow reader: the client actually read {rate:.2} MiB/s; the process was held back by the full pipe (backpressure), not killed."));
    }
    notes.push("RSS per idle session is the growth of execd's VmRSS from before opening the sessions to after, divided by their number; the `docker exec` children are reported separately.".into());
    notes.push("Terminal baselines drive `docker exec -t` under a PTY opened by the bench with the same code execd uses.".into());

    let machine = machine_description();
    let report = render(&rows, &notes, &machine, q);
    println!("{report}");
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
