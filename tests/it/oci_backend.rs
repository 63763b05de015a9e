//! What only the OCI-runtime backend does: processes started by runc
//! itself (execd as the shim), indistinguishable from the inside from what
//! `docker exec` starts, owned by execd (its child, in a cgroup of the
//! session's own) and gone with the session however they hid. (Every
//! other guarantee is tested by running the suite with
//! `EXECD_BACKEND=oci`.)
//!
//! These tests pick the backend themselves, so they run the same under
//! every `EXECD_BACKEND`.

use std::time::Duration;

use crate::common::*;
use execd_session::BackendConfig;
use tonic::Code;

const GONE_WITHIN: Duration = Duration::from_secs(10);

fn oci_config() -> execd::ServerConfig {
    let mut cfg = config();
    let root = test_oci_root();
    assert!(
        root.is_dir(),
        "no runc state root at {} (set EXECD_OCI_ROOT)",
        root.display()
    );
    cfg.manager.backend = BackendConfig::Oci {
        runtime: "runc".into(),
        root,
        cli: "docker".into(),
    };
    cfg
}

/// The host pid of `container`'s init.
fn init_pid(container: &str) -> String {
    inspect(container, "{{.State.Pid}}")
}

/// The session cgroups (`execd-*`) below `container`'s own, in every
/// hierarchy execd uses.
fn session_cgroups(container: &str) -> Vec<String> {
    let pid = init_pid(container);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut found = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let dir = match controllers {
            "" if v2 => format!("/sys/fs/cgroup{path}"),
            c if c.split(',').any(|c| c == "pids" || c == "freezer") => {
                format!("/sys/fs/cgroup/{c}{path}")
            }
            _ => continue,
        };
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("execd-") {
                found.push(format!("{dir}/{name}"));
            }
        }
    }
    found
}

/// What a process can tell about itself from the inside.
const PROBE: &str = r#"P=$$
for f in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp Seccomp_filters Groups; do
  grep "^$f:" /proc/$P/status
done
echo "apparmor: $(cat /proc/$P/attr/current 2>&1)"
echo "id: $(id)"
echo "pwd: $(pwd)"
echo "umask: $(umask)"
echo "tty: $(test -t 0 && echo yes || echo no)"
ulimit -a
for n in /proc/$P/ns/*; do
  echo "ns $(basename $n) $(readlink $n)"
done
env | grep -v '^EXECD_SESSION_ID=' | sort
"#;

/// The probe as `docker exec` runs it.
fn probe_docker(container: &str, tty: bool, user: &str, dir: &str) -> String {
    let mut args = vec!["exec"];
    if tty {
        args.push("-t");
    }
    if !user.is_empty() {
        args.extend(["-u", user]);
    }
    if !dir.is_empty() {
        args.extend(["-w", dir]);
    }
    args.extend([container, "sh", "-c", PROBE]);
    let out = docker(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// The probe as the OCI backend runs it.
async fn probe_oci(
    server: &TestServer,
    container: &str,
    tty: bool,
    user: &str,
    dir: &str,
) -> String {
    let mut r = req(container, &["sh", "-c", PROBE]);
    r.tty = tty;
    r.user = user.into();
    r.working_dir = dir.into();
    let t = server.run(r).await;
    assert_eq!(t.assert_exited(), 0, "{t:#?}");
    t.stdout_str().replace('\r', "")
}

/// Capabilities, seccomp, no_new_privs, AppArmor, ids and groups, working
/// directory, umask, rlimits, namespaces and environment: the same as with
/// `docker exec`, for a default container, a locked-down one and one
/// without seccomp, with and without a terminal, with and without `-u`.
#[tokio::test]
async fn the_process_is_what_docker_exec_would_start() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let cases: [(&str, &[&str], &[&str]); 3] = [
        (
            "default",
            &[],
            &["", "app", "1000:65534", "nobody", "0:app"],
        ),
        (
            "locked",
            &[
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--user",
                "65534:65534",
                "--read-only",
            ],
            &["", "0"],
        ),
        (
            "unconfined",
            &["--security-opt", "seccomp=unconfined"],
            &[""],
        ),
    ];
    for (tag, options, users) in cases {
        let container = ContainerSpec::idle(&format!("oci-{tag}"))
            .options(options)
            .run();
        for tty in [false, true] {
            for user in users {
                for dir in ["", "/tmp"] {
                    let want = probe_docker(&container.0, tty, user, dir);
                    let got = probe_oci(&server, &container.0, tty, user, dir).await;
                    assert_eq!(
                        got, want,
                        "{tag} tty={tty} user={user:?} dir={dir:?}:\n--- oci\n{got}\n--- docker exec\n{want}"
                    );
                    // Every namespace is the container's init's.
                    let init = init_pid(&container.0);
                    let mut seen = 0;
                    for line in got.lines().filter(|l| l.starts_with("ns ")) {
                        let mut f = line.split_whitespace().skip(1);
                        let (name, own) = (f.next().unwrap(), f.next().unwrap());
                        let theirs = std::fs::read_link(format!("/proc/{init}/ns/{name}")).unwrap();
                        assert_eq!(own, theirs.to_str().unwrap(), "{tag}: {line}");
                        seen += 1;
                    }
                    assert!(seen >= 6, "{got}");
                }
            }
        }
    }
}

/// A user the container does not know fails like `docker exec -u`: exit
/// 126 with the engine's words.
#[tokio::test]
async fn an_unknown_user_fails_like_docker_exec() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let out = docker(&["exec", "-u", "nosuch", shared_container(), "true"]);
    let docker_says = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let mut r = req(shared_container(), &["true"]);
    r.user = "nosuch".into();
    let t = server.run(r).await;
    assert_eq!(t.assert_exited(), out.status.code().unwrap());
    assert!(
        t.stderr_str().contains(&docker_says),
        "{t:#?} vs {docker_says}"
    );
}

/// Processes that scrubbed the session marker from their environment,
/// double-forked and left the session's process group are gone once the
/// session is over, whether its process exited or the client went away;
/// the session's cgroup goes with them.
#[tokio::test]
async fn escaped_processes_die_with_the_session() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let container = ContainerSpec::idle("oci-escape").run();
    for client_leaves in [false, true] {
        let n = marker();
        let hide = format!(
            "env -u EXECD_SESSION_ID sleep {n} & \
             setsid env -u EXECD_SESSION_ID sh -c 'sleep {} & exit 0' & \
             echo up; read line; exit 0",
            n + 1
        );
        let exec = server
            .exec_until(req(&container.0, &["sh", "-c", &hide]), "up")
            .await;
        wait_until_running(&container.0, &format!("sleep {n}")).await;
        wait_until_running(&container.0, &format!("sleep {}", n + 1)).await;
        assert_eq!(session_cgroups(&container.0).len(), expected_hierarchies());
        if client_leaves {
            drop(exec);
        } else {
            exec.send(eof_msg()).await;
            assert_eq!(exec.finish().await.assert_exited(), 0);
        }
        for needle in [format!("sleep {n}"), format!("sleep {}", n + 1)] {
            let left = wait_until_gone(&container.0, &needle, GONE_WITHIN).await;
            assert!(left.is_empty(), "client_leaves={client_leaves}: {left:?}");
        }
        let deadline = std::time::Instant::now() + GONE_WITHIN;
        while !session_cgroups(&container.0).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(session_cgroups(&container.0), Vec::<String>::new());
    }
}

/// How many session cgroups one session has on this host: one in the
/// unified hierarchy, or one each in freezer and pids.
fn expected_hierarchies() -> usize {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        1
    } else {
        ["freezer", "pids"]
            .iter()
            .filter(|c| std::path::Path::new(&format!("/sys/fs/cgroup/{c}")).is_dir())
            .count()
    }
}

/// With `--keep-background-processes`, what an exited process left running
/// stays, as with `docker exec`.
#[tokio::test]
async fn kept_background_processes_stay() {
    need_docker!();
    let mut cfg = oci_config();
    cfg.manager.lifecycle.keep_background_processes = true;
    let server = start_server(cfg).await;
    let container = ContainerSpec::idle("oci-keep").run();
    let n = marker();
    let script = format!("sleep {n} & echo up; read line; exit 0");
    let exec = server
        .exec_until(req(&container.0, &["sh", "-c", &script]), "up")
        .await;
    wait_until_running(&container.0, &format!("sleep {n}")).await;
    exec.send(eof_msg()).await;
    assert_eq!(exec.finish().await.assert_exited(), 0);
    assert!(!container_processes(&container.0, &format!("sleep {n}")).is_empty());
}

/// No runtime process stays per session: the process is execd's own
/// child (execd is the test process here), and no runc runs.
#[tokio::test]
async fn the_process_is_execds_child_and_no_runtime_stays() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let (exec, n) = server.exec_sleeper(shared_container()).await;
    let me = std::process::id().to_string();
    let wanted = format!("sleep\0{n}\0");
    let shared_id = inspect(shared_container(), "{{.Id}}");
    let mut parent = None;
    let mut runtimes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        if cmdline == wanted.as_bytes() {
            parent = Some(ppid.clone());
        }
        // Other tests of this binary start sessions too, in containers of
        // their own: only a runtime for this container counts.
        let on_this = String::from_utf8_lossy(&cmdline).contains(&shared_id);
        if ppid == me && cmdline.starts_with(b"runc") && on_this {
            runtimes.push(pid);
        }
    }
    assert_eq!(parent.as_deref(), Some(me.as_str()), "sleep {n}'s parent");
    assert!(runtimes.is_empty(), "runtime processes left: {runtimes:?}");
    drop(exec);
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    // And execd reaped it: no zombie child of execd's is left.
    let deadline = std::time::Instant::now() + GONE_WITHIN;
    while !zombie_children().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(zombie_children(), Vec::<String>::new());
}

/// This process's zombie children that ran in a container (`sleep`, `sh`):
/// sessions' processes nobody reaped.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next());
        if state == Some("Z") && ppid == Some(me.as_str()) && matches!(comm, "sleep" | "sh") {
            found.push(format!("{pid} {comm}"));
        }
    }
    found
}

/// A missing or stopped container is an error, as on the other backends.
#[tokio::test]
async fn missing_and_stopped_containers_are_errors() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let t = server.run(req("execd-no-such-container", &["true"])).await;
    let msg = t.assert_error(Code::NotFound);
    assert!(msg.contains("No such container"), "{msg}");
    let stopped = ContainerSpec::new("oci-stopped", &["true"]).create();
    let t = server.run(req(&stopped.0, &["true"])).await;
    let msg = t.assert_error(Code::FailedPrecondition);
    assert!(msg.contains("not running"), "{msg}");
}

/// execd refuses to start without the runtime's root or the runtime, and
/// says which flag to fix.
#[test]
fn a_missing_root_or_runtime_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix:{}", dir.path().join("execd.sock").display());
    let root = dir.path().to_str().unwrap();
    for (args, flag) in [
        (vec!["--oci-root", "/no/such/runc-root"], "--oci-root"),
        (
            vec!["--oci-root", root, "--oci-runtime", "/no/such/runc"],
            "--oci-runtime",
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_execd"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EXECD_") {
                command.env_remove(key);
            }
        }
        let out = command
            .args(["--listen", &socket, "--backend", "oci"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--backend oci") && err.contains(flag), "{err}");
    }
}

/// A container killed under a session ends the session (its process was
/// killed with the container's PID namespace, 137) and stops for good at
/// once: execd reaps its child, without which the container's init could
/// not finish exiting.
#[tokio::test]
async fn a_container_killed_under_a_session_ends_it_and_stops() {
    need_docker!();
    let server = start_server(oci_config()).await;
    let container = ContainerSpec::idle("oci-killed").run();
    let (exec, _) = server.exec_sleeper(&container.0).await;
    // Off the test's one runtime thread, which the in-process execd needs
    // to reap its child while the engine waits for the container's exit.
    let name = container.0.clone();
    let killed = tokio::task::spawn_blocking(move || docker(&["kill", &name]))
        .await
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    assert_eq!(exec.finish().await.assert_exited(), 137);
    let name = container.0.clone();
    let removed = tokio::task::spawn_blocking(move || docker(&["rm", &name]))
        .await
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
}

/// A runtime root that is not the engine's (a wrong `--oci-root`) is
/// named in the error instead of calling a running container missing.
#[tokio::test]
async fn a_root_that_is_not_the_engines_is_named() {
    need_docker!();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.manager.backend = BackendConfig::Oci {
        runtime: "runc".into(),
        root: elsewhere.path().to_path_buf(),
        cli: "docker".into(),
    };
    let server = start_server(cfg).await;
    let t = server.run(req(shared_container(), &["true"])).await;
    let msg = t.assert_error(Code::FailedPrecondition);
    assert!(msg.contains("--oci-root"), "{msg}");
}
