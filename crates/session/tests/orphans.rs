//! The orphan reaper, in a process of its own: made a child subreaper, the
//! test process stands in for a PID 1 execd. Orphans must be reaped while
//! the exit status of every child execd spawned itself still reaches its
//! waiter.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use execd_session::command::RuntimeCommand;
use execd_session::{orphans, spawn_piped};

/// Children of this process; only zombies with `zombies_only`.
fn children(zombies_only: bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            let mut f = rest.split_whitespace();
            let zombie = f.next() == Some("Z");
            (zombie || !zombies_only) && f.next().and_then(|p| p.parse().ok()) == Some(me)
        })
        .collect()
}

fn sh(script: &str) -> RuntimeCommand {
    RuntimeCommand {
        program: "/bin/sh".into(),
        args: vec![OsString::from("-c"), OsString::from(script)],
        env: vec![],
        current_dir: None,
        user: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_and_own_children_keep_their_exit_status() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes this
    // process's own attribute.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    // An aggressive reaper, much busier than the real one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reaped = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                reaped += orphans::reap_orphans_once();
                std::thread::sleep(Duration::from_millis(1));
            }
            reaped
        })
    };
    for round in 0..30 {
        // The subshell's `sleep` is orphaned at once and becomes ours.
        let mut spawned = spawn_piped(&sh("(sleep 0.05 &); exit 7")).unwrap();
        let status = spawned.child.wait().await.expect("own child's status");
        assert_eq!(status.code(), Some(7), "round {round}");
        drop(spawned);
    }
    // Once the orphans' sleeps are over, nothing may be left, not even a
    // zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children(false).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left: {:?}, zombies among them: {:?}",
            children(false),
            children(true)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reaped = reaper.join().unwrap();
    assert!(reaped >= 30, "reaped only {reaped}");
}
