//! The measurements, each through execd and, where there is one, through
//! plain `docker exec` the same way, so the two figures compare.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use execd_client::message;
use execd_session::command::RuntimeCommand;
use execd_session::{spawn_in_terminal, SpawnedChild, TermSize, TerminalMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::report::Samples;
use crate::session::{next_event, open, Event, Session, COLS, ROWS};
use crate::system::{child_count, host_children_rss_kib, rss_kib, threads, Execd, CONTAINER};

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

fn mib_per_s(bytes: usize, t0: Instant) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t0.elapsed().as_secs_f64()
}

/// A shell command printing `count` × 64 KiB of zeros.
pub fn dd(count: usize) -> String {
    format!("dd if=/dev/zero bs=65536 count={count} 2>/dev/null")
}

/// Reads `reader` to its end and returns how many bytes came.
pub async fn count_to_end(reader: &mut (impl AsyncRead + Unpin)) -> Result<usize> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// Start → first output byte and start → exit of `echo x`, in ms.
pub async fn start_latency_execd(channel: &Channel, n: usize) -> Result<(Samples, Samples)> {
    let (mut first, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = open(channel, &["echo", "x"], false).await?;
        let mut got_first = false;
        loop {
            match next_event(&mut s.rx).await? {
                Event::Output(_) if !got_first => {
                    first.push(ms_since(t0));
                    got_first = true;
                }
                Event::Exited(_) => {
                    exit.push(ms_since(t0));
                    break;
                }
                _ => {}
            }
        }
    }
    Ok((Samples(first), Samples(exit)))
}

/// The same as [`start_latency_execd`] with `docker exec`.
pub async fn start_latency_docker(n: usize) -> Result<(Samples, Samples)> {
    let (mut first, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("docker")
            .args(["exec", CONTAINER, "echo", "x"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut buf = [0u8; 64];
        if out.read(&mut buf).await? == 0 {
            bail!("docker exec printed nothing");
        }
        first.push(ms_since(t0));
        while out.read(&mut buf).await? > 0 {}
        child.wait().await?;
        exit.push(ms_since(t0));
    }
    Ok((Samples(first), Samples(exit)))
}

/// Bytes that came through and the time they took, start to exit.
pub struct Transfer {
    pub bytes: usize,
    pub seconds: f64,
}

impl Transfer {
    pub fn since(bytes: usize, t0: Instant) -> Transfer {
        Transfer {
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }

    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
}

/// `dd` output through execd, read by the bench's own client.
pub async fn throughput_execd(channel: &Channel, tty: bool, count: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut s = open(channel, &["sh", "-c", &dd(count)], tty).await?;
    let mut total = 0usize;
    loop {
        match next_event(&mut s.rx).await? {
            Event::Output(data) => total += data.len(),
            Event::Exited(0) => break,
            Event::Exited(code) => bail!("dd exited {code}"),
            Event::Started => {}
        }
    }
    Ok(Transfer::since(total, t0))
}

/// `dd` output through `docker exec` with pipes.
pub async fn throughput_docker_pipe(count: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args(["exec", CONTAINER, "sh", "-c", &dd(count)])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let total = count_to_end(&mut out).await?;
    let status = child.wait().await?;
    if !status.success() {
        bail!("docker exec: {status}");
    }
    Ok(Transfer::since(total, t0))
}

/// `docker exec -i -t CONTAINER command…` under a PTY of the bench's own,
/// opened with the code execd uses for its sessions.
fn docker_exec_tty(command: &[&str]) -> Result<SpawnedChild> {
    let mut args = vec!["exec", "-i", "-t", CONTAINER];
    args.extend_from_slice(command);
    under_pty("docker".as_ref(), &args)
}

/// `program args…` under a PTY of the bench's own (raw, the bench's tty
/// size), as a person's terminal would run it.
pub fn under_pty(program: &std::ffi::OsStr, args: &[&str]) -> Result<SpawnedChild> {
    let rc = RuntimeCommand {
        program: program.into(),
        args: args.iter().map(Into::into).collect(),
        env: Vec::new(),
        current_dir: None,
        user: None,
    };
    let size = TermSize {
        rows: ROWS,
        cols: COLS,
    };
    Ok(spawn_in_terminal(&rc, size, TerminalMode::Raw)?)
}

/// `dd` output through `docker exec -t`.
pub async fn throughput_docker_tty(count: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut spawned = docker_exec_tty(&["sh", "-c", &dd(count)])?;
    let total = count_to_end(&mut spawned.io.stdout).await?;
    let status = spawned.child.wait().await?;
    if !status.success() {
        bail!("docker exec -t: {status}");
    }
    Ok(Transfer::since(total, t0))
}

/// Keystroke round trips (ms) with `cat` under a tty through execd.
pub async fn keystrokes_execd(s: &mut Session, n: usize) -> Result<Samples> {
    // Let the terminal settle (the initial echo of nothing, resize checks).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        s.tx.send(message::input(vec![key])).await?;
        loop {
            match next_event(&mut s.rx).await? {
                Event::Output(data) if data.contains(&key) => break,
                Event::Exited(_) => bail!("cat exited"),
                _ => {}
            }
        }
        samples.push(ms_since(t0));
        if i % 64 == 63 {
            // Keep cat's line buffer short.
            s.tx.send(message::input(&b"\n"[..])).await?;
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

/// The same as [`keystrokes_execd`] with `docker exec -t`.
pub async fn keystrokes_docker(n: usize) -> Result<Samples> {
    let mut spawned = docker_exec_tty(&["cat"])?;
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
        samples.push(ms_since(t0));
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
    // End `cat` with the terminal's EOF: killing the CLI alone would leave
    // it running in the container (nothing marks or reaps it).
    spawned.io.stdin.write_all(b"\n\x04").await?;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while spawned.io.stdout.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        spawned.child.wait().await
    });
    if ended.await.is_err() {
        let _ = spawned.child.start_kill();
        let _ = spawned.child.wait().await;
    }
    Ok(Samples(samples))
}

pub struct ConcurrencyResult {
    pub sessions: usize,
    pub rss_per_session_kib: f64,
    pub threads_before: u64,
    pub threads_after: u64,
    pub children_rss_mib: f64,
    pub children: usize,
    pub rtt_p99_ms: f64,
}

/// Sessions the concurrency scenario opens per client connection.
const SESSIONS_PER_CONNECTION: usize = 100;

/// What `n` idle tty sessions cost execd, and how one of them still types.
pub async fn concurrency(
    execd: &Execd,
    channel: &Channel,
    n: usize,
    rtt_samples: usize,
) -> Result<ConcurrencyResult> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(execd.pid());
    let threads_before = threads(execd.pid());
    let mut open_sessions = Vec::with_capacity(n);
    // Like the many clients they stand for, the sessions come over several
    // connections: one HTTP/2 connection carries at most
    // `--max-streams-per-connection` (256) streams at once.
    let mut connection = channel.clone();
    for i in 0..n {
        if i > 0 && i % SESSIONS_PER_CONNECTION == 0 {
            connection = execd.channel().await?;
        }
        let mut s = open(&connection, &["cat"], true).await?;
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
    let (children_rss, children) = host_children_rss_kib(execd.pid());
    let Some(first) = open_sessions.first_mut() else {
        bail!("no sessions to measure");
    };
    let rtt = keystrokes_execd(first, rtt_samples).await?;
    drop(open_sessions);
    // Wait for execd to reap them before the next round.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child_count(execd.pid()) > 0 && Instant::now() < deadline {
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

/// Peak RSS growth (MiB) while a client reads 1 GiB of output at 1 MiB/s
/// for `seconds`, and the rate it actually read at.
pub async fn slow_reader(execd: &Execd, channel: &Channel, seconds: u64) -> Result<(f64, f64)> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(execd.pid());
    let mut s = open(channel, &["sh", "-c", &dd(16384)], false).await?;
    let t0 = Instant::now();
    let mut peak = base;
    let mut read = 0usize;
    while t0.elapsed() < Duration::from_secs(seconds) {
        let allowed = (t0.elapsed().as_secs_f64() * 1024.0 * 1024.0) as usize;
        if read < allowed {
            if let Event::Output(data) = next_event(&mut s.rx).await? {
                read += data.len();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak = peak.max(rss_kib(execd.pid()));
    }
    drop(s);
    let growth_mib = peak.saturating_sub(base) as f64 / 1024.0;
    Ok((growth_mib, mib_per_s(read, t0)))
}

/// RSS growth (KiB) per detached session: `n` sessions whose clients go
/// away right after the start, each printing `mib` MiB afterwards into
/// its replay ring. Also how many bytes one of them replays on return.
pub async fn detached_replay(
    execd: &Execd,
    channel: &Channel,
    n: usize,
    mib: usize,
) -> Result<(f64, usize)> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(execd.pid());
    let script = format!("sleep 1; {}; sleep 15", dd(mib * 16));
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = open(channel, &["sh", "-c", &script], false).await?;
        let msg = s.rx.message().await?.ok_or_else(|| anyhow!("no STARTED"))?;
        ids.push(msg.session_id);
        // The client vanishes: cancelled, without a half-close first.
        let Session { tx, rx } = s;
        drop(rx);
        drop(tx);
    }
    // Every process has printed into its ring by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let grown = rss_kib(execd.pid()).saturating_sub(base) as f64 / n as f64;
    // One client comes back and takes what its ring kept.
    let id = ids.first().ok_or_else(|| anyhow!("no sessions"))?;
    let mut s = crate::session::reopen(channel, id).await?;
    let mut replayed = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), next_event(&mut s.rx)).await {
            Ok(Ok(Event::Output(data))) => replayed += data.len(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok((grown, replayed))
}
