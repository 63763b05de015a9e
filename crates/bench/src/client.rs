//! Throughput driven by the example client (`examples/exec.rs`, the
//! `exec` example of the execd package) as a separate process, the way
//! the OCI issue states its figures: the bench spawns it, reads what it
//! prints to the end and times spawn → exit, exactly as it drives plain
//! `docker exec` for the baseline.
//!
//! Pipe runs read the client's stdout pipe (`exec CONTAINER sh -c dd…`
//! against `docker exec CONTAINER sh -c dd…`); terminal runs put the
//! client under a PTY of the bench's (`exec -i -t …`, the same PTY code
//! as the `docker exec -i -t` baseline), so both pay for a local terminal.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncReadExt;

use crate::measure::{count_to_end, dd, under_pty, Transfer};
use crate::system::CONTAINER;

/// The example client the bench drives: `--client`, or the one cargo
/// built next to the bench (`cargo build --release -p execd --examples`).
pub fn binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(binary) = given {
        return Ok(binary);
    }
    let binary = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("the bench binary has no parent directory"))?
        .join("examples")
        .join("exec");
    if !binary.exists() {
        bail!(
            "no example client at {}: build it first (cargo build --release -p execd --examples) or pass --client",
            binary.display()
        );
    }
    Ok(binary)
}

/// `dd` output of `count` × 64 KiB through the example client, stdout a
/// pipe (no `-i`, no `-t`: like `docker exec` without them).
pub async fn pipe(client: &Path, addr: &str, count: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(client)
        .args(["--addr", addr, CONTAINER, "sh", "-c", &dd(count)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", client.display()))?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    // Read stderr alongside, so a chatty failure cannot block the client.
    let said = tokio::spawn(async move {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text).await;
        text
    });
    let total = count_to_end(&mut out).await?;
    let status = child.wait().await?;
    let transfer = Transfer::since(total, t0);
    if !status.success() {
        let said = said.await.unwrap_or_default();
        bail!("exec client: {status}: {}", said.trim());
    }
    Ok(transfer)
}

/// The same with a terminal: `exec -i -t` under a PTY of the bench's.
pub async fn tty(client: &Path, addr: &str, count: usize) -> Result<Transfer> {
    let t0 = Instant::now();
    let command = dd(count);
    let mut spawned = under_pty(
        client.as_os_str(),
        &["--addr", addr, "-i", "-t", CONTAINER, "sh", "-c", &command],
    )?;
    let total = count_to_end(&mut spawned.io.stdout).await?;
    let status = spawned.child.wait().await?;
    let transfer = Transfer::since(total, t0);
    if !status.success() {
        // Its error went to the terminal, i.e. into what was counted.
        bail!("exec client -t: {status}");
    }
    Ok(transfer)
}
