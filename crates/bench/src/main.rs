//! execd-bench: execd against plain `docker exec`, same run, same container.
//!
//! ```text
//! cargo build --release --locked -p execd --bin execd --examples
//! cargo run --release -p execd-bench [-- --quick] [--only start,pipe] [--out BENCHMARKS.md]
//!     [--backends cli,engine-api,oci] [--churn-sessions N] [--churn-escapes]
//! ```
//!
//! Starts its own `execd` per backend (by default the release binary next
//! to this one, hence the build first) on a unix socket, drives the
//! example client (`exec`, built with `--examples`) for the throughput
//! rows the OCI issue states that way, makes sure the busybox bench
//! container runs, and measures each scenario through execd and through
//! `docker exec` directly, printing a table of both figures and their
//! ratio; the table is also written to `BENCHMARKS.md` with a description
//! of the machine.
//!
//! The client side is Rust + tonic with large HTTP/2 windows, so it is not
//! the bottleneck. Terminal baselines run `docker exec -t` under a PTY the
//! bench drives itself (the same PTY code execd uses).
//!
//! Modules: [`scenarios`] (the table of scenarios), [`measure`] (each
//! measurement, both ways), [`throughput`] (the pipe and tty scenarios),
//! [`client`] (the example client as a separate process), [`churn`] (the
//! churn scenario and its leftovers check), [`session`] (the ExecStream
//! side), [`system`] (docker, the execd process, the container, `/proc`),
//! [`report`] (rows and markdown).

mod churn;
mod client;
mod measure;
mod report;
mod scenarios;
mod session;
mod system;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::Parser;

use scenarios::{Backend, Bench, Kind, Scenario, NOTES, SCENARIOS};
use system::Execd;

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
    /// The backends to measure (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "cli,engine-api", value_parser = ["cli", "engine-api", "oci"])]
    backends: Vec<String>,
    /// The OCI runtime's state root for `--backend oci` (default: $EXECD_OCI_ROOT, else the one
    /// holding the bench container: the private engine's under target/dockerd, or Docker's
    /// /run/docker/runtime-runc/moby)
    #[arg(long, value_name = "DIR")]
    oci_root: Option<PathBuf>,
    /// The OCI runtime for `--backend oci` (default: execd's, runc)
    #[arg(long, value_name = "PROGRAM")]
    oci_runtime: Option<String>,
    /// The example client the `exec client` throughput rows spawn (default: examples/exec next
    /// to this binary)
    #[arg(long, value_name = "PATH")]
    client: Option<PathBuf>,
    /// Churn sessions per backend (default: 300 with --quick; 2,000 on cli, 10,000 on
    /// engine-api and oci)
    #[arg(long, value_name = "N")]
    churn_sessions: Option<usize>,
    /// Concurrent clients of the churn
    #[arg(long, value_name = "N", default_value_t = 8)]
    churn_clients: usize,
    /// Add escaped double-forks (markerless background processes) to the churn on every backend;
    /// the oci backend always has them
    #[arg(long)]
    churn_escapes: bool,
    /// Longest wait, in seconds, for the churn's leftovers to go once the sessions are over
    /// (default: 120 with --quick, else 600); the check happens earlier once nothing is left, or
    /// once the load has dropped below the core count
    #[arg(long, value_name = "SECONDS")]
    churn_settle: Option<u64>,
    /// Run only these scenarios (comma-separated)
    #[arg(long, value_delimiter = ',', value_parser = scenario_names())]
    only: Vec<String>,
}

fn scenario_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        SCENARIOS
            .iter()
            .map(|s| PossibleValue::new(s.name).help(s.measures)),
    )
}

/// The execd to start: `--execd`, or the one cargo built next to the bench.
fn execd_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(binary) = given {
        return Ok(binary);
    }
    let binary = std::env::current_exe()?
        .parent()
        .ok_or_else(|| anyhow!("the bench binary has no parent directory"))?
        .join("execd");
    if !binary.exists() {
        bail!(
            "no execd at {}: build it first (cargo build --release --bin execd) or pass --execd",
            binary.display()
        );
    }
    Ok(binary)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let invocation: Vec<String> = std::env::args().skip(1).collect();
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name))
        .collect();
    let binary = execd_binary(args.execd)?;
    let drives_client = selected.iter().any(|s| s.name == "pipe" || s.name == "tty");
    let client = if drives_client {
        Some(client::binary(args.client)?)
    } else {
        None
    };
    system::ensure_container()?;
    let mut backends = Vec::new();
    let mut notes = Vec::new();
    for kind in Kind::ALL {
        if !args.backends.iter().any(|b| b == kind.name()) {
            continue;
        }
        let mut extra = Vec::new();
        if kind == Kind::Oci {
            // Looked up after the container runs: the runtime makes its
            // state directory with the first container.
            let root = system::oci_root(args.oci_root.clone())?;
            notes.push(format!(
                "`· oci` rows: execd `--backend oci --oci-root {}`{}.",
                root.display(),
                args.oci_runtime
                    .as_ref()
                    .map(|r| format!(" `--oci-runtime {r}`"))
                    .unwrap_or_default()
            ));
            extra.extend(["--oci-root".to_string(), root.display().to_string()]);
            if let Some(runtime) = &args.oci_runtime {
                extra.extend(["--oci-runtime".to_string(), runtime.clone()]);
            }
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let execd = Execd::start_with(&binary, kind.name(), &extra).await?;
        let channel = execd.channel().await?;
        backends.push(Backend {
            kind,
            execd,
            channel,
        });
    }
    let bench = Bench {
        backends,
        binary,
        client,
        quick: args.quick,
        churn: churn::Options {
            sessions: args.churn_sessions,
            clients: args.churn_clients,
            escapes: args.churn_escapes,
            settle_limit: args.churn_settle.map(Duration::from_secs),
        },
    };
    scenarios::warm_up(&bench).await?;

    let mut rows = Vec::new();
    for (i, scenario) in selected.iter().enumerate() {
        eprintln!("{}/{} {}", i + 1, selected.len(), scenario.measures);
        let outcome = (scenario.run)(&bench)
            .await
            .with_context(|| format!("scenario {}", scenario.name))?;
        rows.extend(outcome.rows);
        notes.extend(outcome.notes);
    }
    notes.extend(NOTES.iter().map(|n| n.to_string()));

    let report = report::render(&rows, &notes, &report::machine_description(), &invocation);
    println!("{report}");
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
