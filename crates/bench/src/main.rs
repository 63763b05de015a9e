//! execd-bench: execd against plain `docker exec`, same run, same container.
//!
//! ```text
//! cargo build --release --bin execd
//! cargo run --release -p execd-bench [-- --quick] [--only start,pipe] [--out BENCHMARKS.md]
//! ```
//!
//! Starts its own `execd` (by default the release binary next to this one,
//! hence the build first) on a unix socket, makes sure the busybox bench
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
//! measurement, both ways), [`session`] (the ExecStream side), [`system`]
//! (docker, the execd process, `/proc`), [`report`] (rows and markdown).

mod measure;
mod report;
mod scenarios;
mod session;
mod system;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::Parser;

use scenarios::{Backend, Bench, Scenario, NOTES, SCENARIOS};
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
    #[arg(long, value_delimiter = ',', default_value = "cli,engine-api", value_parser = ["cli", "engine-api"])]
    backends: Vec<String>,
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
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name))
        .collect();
    let binary = execd_binary(args.execd)?;
    system::ensure_container()?;
    let mut backends = Vec::new();
    for name in ["cli", "engine-api"] {
        if args.backends.iter().any(|b| b == name) {
            let execd = Execd::start(&binary, name).await?;
            let channel = execd.channel().await?;
            backends.push(Backend {
                name,
                execd,
                channel,
            });
        }
    }
    let bench = Bench {
        backends,
        binary,
        quick: args.quick,
    };
    scenarios::warm_up(&bench).await?;

    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    for (i, scenario) in selected.iter().enumerate() {
        eprintln!("{}/{} {}", i + 1, selected.len(), scenario.measures);
        let outcome = (scenario.run)(&bench)
            .await
            .with_context(|| format!("scenario {}", scenario.name))?;
        rows.extend(outcome.rows);
        notes.extend(outcome.notes);
    }
    notes.extend(NOTES.iter().map(|n| n.to_string()));

    let report = report::render(&rows, &notes, &report::machine_description(), args.quick);
    println!("{report}");
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
