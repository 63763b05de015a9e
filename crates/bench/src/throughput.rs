//! The throughput scenarios (`pipe`, `tty`): `dd` output through each
//! backend, read two ways, next to plain `docker exec` at the same size,
//! median of 3 interleaved runs of each.
//!
//! - In-process: the bench's own gRPC client reads the stream (large
//!   HTTP/2 windows, so the client is never the limit). The CLI and
//!   engine-api backends' targets have always been on these rows.
//! - `exec client`: the example client as a separate process ([`client`]),
//!   as the OCI issue states its figures; the OCI targets sit here,
//!   `docker exec` at the same size, and for pipes also the engine-api
//!   backend driven the same way.
//!
//! A run that delivers fewer (or more) bytes than `dd` wrote, or fails,
//! is left out of the median and said in a note; a row held to a target
//! then misses it.

use std::path::Path;

use anyhow::Result;

use crate::client;
use crate::measure::{self, Transfer};
use crate::report::{Row, Samples};
use crate::scenarios::{Backend, Bench, Kind, Outcome};

/// The runs of one series, and what went wrong in the others.
#[derive(Default, Clone)]
struct Series {
    rates: Vec<f64>,
    problems: Vec<String>,
}

impl Series {
    fn record(&mut self, expected: usize, run: Result<Transfer>) {
        match run {
            Ok(t) if t.bytes == expected => self.rates.push(t.mib_per_s()),
            Ok(t) => self.problems.push(format!(
                "{} bytes instead of {expected} ({} lost)",
                t.bytes,
                expected as i64 - t.bytes as i64
            )),
            Err(e) => self.problems.push(format!("failed: {e:#}")),
        }
    }

    fn median(&self) -> f64 {
        if self.rates.is_empty() {
            return f64::NAN;
        }
        Samples(self.rates.clone()).median()
    }

    fn whole(&self) -> bool {
        self.problems.is_empty()
    }

    fn notes(&self, who: &str, notes: &mut Vec<String>) {
        for p in &self.problems {
            notes.push(format!("{who}: a run {p}."));
        }
    }
}

/// 64 KiB blocks of `dd` per run.
struct Sizes {
    in_process: usize,
    client: usize,
}

impl Sizes {
    fn of(b: &Bench, tty: bool) -> Sizes {
        match tty {
            // The OCI issue's pipe figure is 256 MiB.
            false => Sizes {
                in_process: b.size(1024, 8192),
                client: b.size(1024, 4096),
            },
            true => Sizes {
                in_process: b.size(512, 2048),
                client: b.size(512, 2048),
            },
        }
    }
}

async fn docker_run(tty: bool, count: usize) -> Result<Transfer> {
    if tty {
        measure::throughput_docker_tty(count).await
    } else {
        measure::throughput_docker_pipe(count).await
    }
}

async fn client_run(client: &Path, backend: &Backend, tty: bool, count: usize) -> Result<Transfer> {
    let addr = backend.execd.addr();
    if tty {
        client::tty(client, &addr, count).await
    } else {
        client::pipe(client, &addr, count).await
    }
}

pub async fn scenario(b: &Bench, tty: bool) -> Result<Outcome> {
    let sizes = Sizes::of(b, tty);
    let bytes = |count: usize| count * 65536;
    let n = b.backends.len();
    let (mut in_process, mut via_client) = (vec![Series::default(); n], vec![Series::default(); n]);
    let (mut docker_in, mut docker_client) = (Series::default(), Series::default());
    let same_size = sizes.client == sizes.in_process;
    // Interleaved, so drift on the machine hits every side alike.
    for _ in 0..3 {
        for (i, backend) in b.backends.iter().enumerate() {
            let run = measure::throughput_execd(&backend.channel, tty, sizes.in_process).await;
            in_process[i].record(bytes(sizes.in_process), run);
            if let Some(client) = &b.client {
                let run = client_run(client, backend, tty, sizes.client).await;
                via_client[i].record(bytes(sizes.client), run);
            }
        }
        let run = docker_run(tty, sizes.in_process).await;
        docker_in.record(bytes(sizes.in_process), run);
        if b.client.is_some() && !same_size {
            let run = docker_run(tty, sizes.client).await;
            docker_client.record(bytes(sizes.client), run);
        }
    }
    if same_size {
        docker_client = docker_in.clone();
    }

    let kind = if tty { "tty" } else { "pipe" };
    let docker_name = if tty { "docker exec -t" } else { "docker exec" };
    let mut outcome = Outcome::default();
    docker_in.notes(
        &format!(
            "{kind} throughput, {docker_name} ({} MiB)",
            sizes.in_process / 16
        ),
        &mut outcome.notes,
    );
    if !same_size {
        docker_client.notes(
            &format!(
                "{kind} throughput, {docker_name} ({} MiB)",
                sizes.client / 16
            ),
            &mut outcome.notes,
        );
    }
    let engine_client = b
        .backends
        .iter()
        .position(|backend| backend.kind == Kind::EngineApi)
        .map(|i| &via_client[i]);
    for (i, backend) in b.backends.iter().enumerate() {
        let scenario = backend.label(&format!(
            "{kind} throughput ({} MiB, median of 3)",
            sizes.in_process / 16
        ));
        in_process[i].notes(&scenario, &mut outcome.notes);
        let (e, d) = (in_process[i].median(), docker_in.median());
        let whole = in_process[i].whole() && docker_in.whole();
        let mut row = Row::compared(&scenario, "rate", e, d, "MiB/s");
        let floor = match (backend.kind, tty) {
            (Kind::EngineApi, false) => Some(1.10),
            (Kind::EngineApi, true) => Some(1.0),
            (Kind::Cli, _) => Some(0.95),
            (Kind::Oci, _) => None,
        };
        if let Some(floor) = floor {
            row = row.target(&format!("ratio ≥ {floor}"), whole && e / d >= floor);
        }
        outcome.rows.push(row);

        if b.client.is_none() {
            continue;
        }
        let series = &via_client[i];
        let scenario = backend.label(&format!(
            "{kind} throughput ({} MiB, median of 3, exec client)",
            sizes.client / 16
        ));
        series.notes(&scenario, &mut outcome.notes);
        let (e, d) = (series.median(), docker_client.median());
        let whole = series.whole() && docker_client.whole();
        let mut row = Row::compared(&scenario, "rate", e, d, "MiB/s");
        if backend.kind == Kind::Oci {
            row = row.target("ratio ≥ 3", whole && e / d >= 3.0);
        }
        outcome.rows.push(row);
        if backend.kind == Kind::Oci && !tty {
            match engine_client {
                Some(engine) => {
                    let ratio = e / engine.median();
                    outcome.rows.push(
                        Row::execd_only(&scenario, "rate ÷ engine-api's (exec client)", ratio, "×")
                            .target("≥ 2", whole && engine.whole() && ratio >= 2.0),
                    );
                }
                None => outcome.notes.push(format!(
                    "{scenario}: the engine-api comparison (≥ 2×) needs `--backends` with engine-api in the same run."
                )),
            }
        }
    }
    Ok(outcome)
}
