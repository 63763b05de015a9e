//! CRI ExecSync output against the real execd binary and engine: each call
//! returns at most `MAX_OUTPUT` per stream, and all calls at once hold at
//! most `OUTPUT_BUDGET`; a call that does not fit is ended with
//! RESOURCE_EXHAUSTED. Memory is read from /proc (the peak, VmHWM), so the
//! bound covers everything execd allocated while the calls ran.

use crate::common::*;
use execd::doors::cri::{MAX_OUTPUT, OUTPUT_BUDGET};
use execd_proto::cri::runtime_service_client::RuntimeServiceClient;
use execd_proto::cri::{ExecSyncRequest, ExecSyncResponse};
use tonic::Code;

/// Concurrent calls, and what each prints on stdout and on stderr.
const CALLS: usize = 64;
const PRINTED: usize = 16 * 1024 * 1024;
/// What execd's peak resident memory may grow by while they run.
const ALLOWED_GROWTH_KIB: u64 = 512 * 1024;

/// The peak resident set (VmHWM) of `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Prints `PRINTED` bytes on stdout, then on stderr, then waits for
/// `go` to exist: a call that got all of its output keeps holding it until
/// the test says so.
fn flood(go: &str) -> ExecSyncRequest {
    let script = format!(
        "head -c {PRINTED} /dev/zero; head -c {PRINTED} /dev/zero >&2; \
         while [ ! -e {go} ]; do sleep 0.1; done"
    );
    ExecSyncRequest {
        container_id: shared_container().into(),
        cmd: vec!["sh".into(), "-c".into(), script],
        timeout: 0,
    }
}

fn assert_capped(resp: &ExecSyncResponse) {
    assert_eq!(resp.exit_code, 0);
    assert_eq!(resp.stdout.len(), MAX_OUTPUT, "stdout capped");
    assert_eq!(resp.stderr.len(), MAX_OUTPUT, "stderr capped");
}

enum Judged {
    Served,
    Refused,
}

/// A call either got both streams capped, or was refused for the budget.
fn judge(outcome: Result<tonic::Response<ExecSyncResponse>, tonic::Status>) -> Judged {
    match outcome {
        Ok(resp) => {
            assert_capped(resp.get_ref());
            Judged::Served
        }
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("budget"), "{status:?}");
            Judged::Refused
        }
    }
}

#[tokio::test]
async fn exec_sync_output_is_capped_per_call_and_budgeted_across_calls() {
    need_docker!();
    let execd = ExecdProcess::start(&[]).await;
    // Replies of both capped streams are larger than tonic's default 4 MiB;
    // kubelet and crictl accept 16 MiB.
    let client = RuntimeServiceClient::new(execd.channel.clone())
        .max_decoding_message_size(2 * MAX_OUTPUT + 1024 * 1024);
    let go = format!("/tmp/execd-cri-go-{}", marker());
    let before = peak_kib(execd.pid());

    let (tx, mut rx) = tokio::sync::mpsc::channel(CALLS);
    for _ in 0..CALLS {
        let (mut client, tx, req) = (client.clone(), tx.clone(), flood(&go));
        tokio::spawn(async move {
            let _ = tx.send(client.exec_sync(req).await).await;
        });
    }
    drop(tx);
    // No call can finish before `go`, so at most OUTPUT_BUDGET / (both
    // streams full) of them hold their output at once: the others must
    // have been refused. Wait for those refusals, then let the rest end.
    let must_fail = CALLS - OUTPUT_BUDGET / (2 * MAX_OUTPUT);
    let (mut refused, mut served) = (0, 0);
    while refused < must_fail {
        let outcome = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {refused} of {must_fail} refusals arrived"))
            .expect("a call's outcome");
        match judge(outcome) {
            Judged::Refused => refused += 1,
            Judged::Served => served += 1,
        }
    }
    let touched = std::process::Command::new("docker")
        .args(["exec", shared_container(), "touch", &go])
        .status()
        .unwrap();
    assert!(touched.success());
    while let Some(outcome) = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("every call ends")
    {
        match judge(outcome) {
            Judged::Refused => refused += 1,
            Judged::Served => served += 1,
        }
    }
    let after = peak_kib(execd.pid());
    eprintln!(
        "{CALLS} calls: {served} served, {refused} refused; peak RSS {} MiB -> {} MiB",
        before / 1024,
        after / 1024
    );
    assert_eq!(served + refused, CALLS);
    assert!(
        after <= before + ALLOWED_GROWTH_KIB,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // The budget was given back: a call alone gets both streams in full.
    let alone = client
        .clone()
        .exec_sync(flood(&go))
        .await
        .expect("a call alone fits");
    assert_capped(alone.get_ref());
    let _ = std::process::Command::new("docker")
        .args(["exec", shared_container(), "rm", "-f", &go])
        .status();
    assert!(wait_until_gone(shared_container(), &go, PATIENCE)
        .await
        .is_empty());
    execd.terminate().await;
}
