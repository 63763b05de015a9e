//! The shipped deployment files start execd as written and serve sessions
//! on every listener they declare.
//!
//! For each file (DaemonSet container args and env, systemd `ExecStart=`
//! and `Environment=`, Dockerfile `ENTRYPOINT`/`CMD` and `ENV`) the real
//! binary runs with exactly those arguments and that environment. Only what
//! cannot exist on a test machine is mapped, the same way for every file:
//!
//! - the `/run/execd` and `/etc/execd` prefixes point into a temp dir;
//! - every TCP port becomes a free ephemeral port (same shipped port, same
//!   replacement), host part unchanged;
//! - the program path is this build's execd.
//!
//! What the platform would provide is created first: the socket directory
//! (with the mode systemd, the image or kubelet give it, then the
//! DaemonSet's init containers run, mapped likewise), and the certificate,
//! key and token files the flags name (made at test time, as Secrets would
//! mount them). Then a session runs over each listener: unix sockets
//! through tonic in plaintext, TCP through TLS when configured, with the
//! bearer token when one is configured.

use crate::common::pki;
use crate::common::shipped;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::common::{free_port, Reach, SpawnedExecd};
use clap::CommandFactory;
use pki::ServerPki;
use shipped::*;
use tonic::transport::Channel;

const TOKEN: &str = "deploy-test-token";

/// Maps the shipped paths and ports onto this machine (see the file header).
struct Mapping {
    root: PathBuf,
    ports: HashMap<u16, u16>,
}

impl Mapping {
    fn path(&self, text: &str) -> String {
        let mut out = text.to_string();
        for prefix in ["/run/execd", "/etc/execd"] {
            let mapped = self.root.join(prefix.trim_start_matches('/'));
            out = out.replace(prefix, &mapped.display().to_string());
        }
        out
    }

    fn address(&mut self, item: &str) -> String {
        match item.parse::<SocketAddr>() {
            Ok(mut addr) => {
                let port = *self.ports.entry(addr.port()).or_insert_with(free_port);
                addr.set_port(port);
                addr.to_string()
            }
            Err(_) => item.to_string(),
        }
    }

    /// A flag (`--f=v` or a lone word) or env value; values may be
    /// comma-separated lists, as `EXECD_LISTEN` allows.
    fn value(&mut self, text: &str) -> String {
        let text = self.path(text);
        let (head, list) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value),
            _ => (String::new(), text.as_str()),
        };
        let items: Vec<String> = list.split(',').map(|i| self.address(i)).collect();
        format!("{head}{}", items.join(","))
    }
}

/// Every value of `flag` in `args` (`--flag v` and `--flag=v`); when there
/// is none, the comma-separated items of `var` in `env`.
fn setting(args: &[String], env: &[(String, String)], flag: &str, var: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if arg == flag {
            values.push(args[i + 1].clone());
        } else if let Some(v) = arg.strip_prefix(&format!("{flag}=")) {
            values.push(v.to_string());
        }
    }
    if values.is_empty() {
        for (k, v) in env {
            if k == var {
                values.extend(v.split(',').map(String::from));
            }
        }
    }
    values
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `echo deployed` in the shared container; returns the output, or the
/// status the call or the stream ended with.
async fn echo(channel: Channel, token: Option<&str>) -> Result<String, tonic::Status> {
    let request = req(shared_container(), &["echo", "deployed"]);
    let t = exec_with_token(channel, token, request).await?;
    assert_eq!(t.assert_exited(), 0);
    Ok(t.stdout_str())
}

/// What a started deployment declared, after mapping.
struct Launched {
    execd: SpawnedExecd,
    listeners: Vec<String>,
    tls: bool,
    token: bool,
    pki: ServerPki,
    _root: tempfile::TempDir,
}

/// Prepares what the platform provides, starts execd exactly as `shipped`
/// says (mapped), waits for every listener and the metrics endpoint, and
/// runs a session over each listener.
async fn launch(shipped: &Shipped) -> Launched {
    let file = shipped.file;
    assert!(
        shipped.program == "execd" || shipped.program.ends_with("/execd"),
        "{file}: runs {}",
        shipped.program
    );
    let root = tempfile::tempdir().unwrap();
    let mut map = Mapping {
        root: root.path().to_path_buf(),
        ports: HashMap::new(),
    };
    let args: Vec<String> = shipped.args.iter().map(|a| map.value(a)).collect();
    let env: Vec<(String, String)> = shipped
        .env
        .iter()
        .map(|(k, v)| (k.clone(), map.value(v)))
        .collect();

    for (dir, dir_mode) in &shipped.dirs {
        let dir = PathBuf::from(map.path(dir));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(*dir_mode)).unwrap();
    }
    for command in &shipped.setup {
        let command: Vec<String> = command.iter().map(|w| map.path(w)).collect();
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .status()
            .unwrap();
        assert!(status.success(), "{file}: {command:?} failed");
    }

    let pki = ServerPki::generate();
    let write = |path: &str, text: &str| {
        let path = Path::new(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let certs = setting(&args, &env, "--tls-cert", "EXECD_TLS_CERT");
    let keys = setting(&args, &env, "--tls-key", "EXECD_TLS_KEY");
    let tokens = setting(&args, &env, "--auth-token-file", "EXECD_AUTH_TOKEN_FILE");
    assert!(
        setting(&args, &env, "--tls-client-ca", "EXECD_TLS_CLIENT_CA").is_empty(),
        "{file}: mutual TLS is not covered by this test yet"
    );
    certs.iter().for_each(|p| write(p, &pki.cert_pem));
    keys.iter().for_each(|p| write(p, &pki.key_pem));
    tokens.iter().for_each(|p| write(p, &format!("{TOKEN}\n")));

    let listeners = setting(&args, &env, "--listen", "EXECD_LISTEN");
    assert!(!listeners.is_empty(), "{file}: declares no --listen");
    let metrics = setting(&args, &env, "--metrics-listen", "EXECD_METRICS_LISTEN");
    let reach: Vec<Reach> = listeners
        .iter()
        .chain(&metrics)
        .map(|l| match l.strip_prefix("unix:") {
            Some(path) => Reach::Unix(path.into()),
            None => Reach::Tcp(l.parse::<SocketAddr>().unwrap().port()),
        })
        .collect();
    let execd = SpawnedExecd::start(root.path(), &args, &env, &reach).await;
    let launched = Launched {
        execd,
        listeners,
        tls: !certs.is_empty(),
        token: !tokens.is_empty(),
        pki,
        _root: root,
    };
    serve_sessions(file, &launched).await;
    launched
}

async fn serve_sessions(file: &str, launched: &Launched) {
    let token = launched.token.then_some(TOKEN);
    for listener in &launched.listeners {
        let channel = match listener.strip_prefix("unix:") {
            Some(path) => {
                let path = Path::new(path);
                assert_eq!(mode(path), 0o600, "{file}: socket {listener}");
                assert_eq!(
                    mode(path.parent().unwrap()),
                    0o700,
                    "{file}: directory of {listener}"
                );
                connect_unix(path.to_path_buf()).await
            }
            None => {
                let addr: SocketAddr = listener.parse().unwrap();
                assert!(
                    addr.ip().is_loopback() || (launched.tls && launched.token),
                    "{file}: {listener} is reachable from the network, so it needs TLS and a token"
                );
                if launched.tls {
                    launched.pki.channel(addr.port()).await
                } else {
                    Channel::from_shared(format!("http://127.0.0.1:{}", addr.port()))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap()
                }
            }
        };
        let out = echo(channel.clone(), token).await;
        assert_eq!(
            out.as_deref().map_err(|s| s.message()),
            Ok("deployed\n"),
            "{file}: a session over {listener}\n{}",
            launched.execd.log()
        );
        if token.is_some() {
            let refused = echo(channel, None).await.unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::Unauthenticated,
                "{file}: {listener} without the token"
            );
        }
    }
}

/// SIGTERM ends execd cleanly and removes its sockets.
async fn stop(launched: Launched) {
    let log = launched.execd.log();
    assert!(
        launched.execd.terminate().await.success(),
        "execd ends cleanly:\n{log}"
    );
    for listener in &launched.listeners {
        if let Some(path) = listener.strip_prefix("unix:") {
            assert!(!Path::new(path).exists(), "{path} removed on exit");
        }
    }
}

#[tokio::test]
async fn systemd_unit_starts_as_shipped() {
    need_docker!();
    let shipped = systemd_unit();
    let launched = launch(&shipped).await;
    assert!(
        launched.listeners.iter().all(|l| l.starts_with("unix:")),
        "the node agent listens on its unix socket only"
    );
    stop(launched).await;
}

#[tokio::test]
async fn dockerfile_starts_as_shipped() {
    need_docker!();
    let launched = launch(&dockerfile()).await;
    stop(launched).await;
}

/// Bytes in a Kubernetes memory quantity such as `2Gi` or `512M`.
fn quantity(text: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    text.parse().unwrap()
}

/// The DaemonSet: node-local unix socket plus remote TLS with a token, in
/// one pod.
#[tokio::test]
async fn daemonset_starts_as_shipped() {
    need_docker!();
    let shipped = daemonset();
    let launched = launch(&shipped).await;
    assert!(
        launched.listeners.iter().any(|l| l.starts_with("unix:"))
            && launched.listeners.iter().any(|l| !l.starts_with("unix:")),
        "node-local socket and remote port: {:?}",
        launched.listeners
    );
    stop(launched).await;
}

/// What the DaemonSet promises besides starting: secrets from Secrets,
/// probes kubelet can run against it, and a memory limit that holds
/// `--max-sessions` sessions.
#[test]
fn daemonset_is_secured_probed_and_sized_as_written() {
    let shipped = daemonset();
    let pod = daemonset_pod();
    let container = &pod["containers"][0];
    let args = &shipped.args;
    let env = &shipped.env;
    let tls = !setting(args, env, "--tls-cert", "EXECD_TLS_CERT").is_empty();

    // The files the flags name come from Secrets, never from the image.
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    for (flag, var) in [
        ("--tls-cert", "EXECD_TLS_CERT"),
        ("--tls-key", "EXECD_TLS_KEY"),
        ("--auth-token-file", "EXECD_AUTH_TOKEN_FILE"),
    ] {
        for path in setting(args, env, flag, var) {
            let mount = mounts
                .iter()
                .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
                .unwrap_or_else(|| panic!("{flag} {path} is not on a mounted volume"));
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
            assert!(volume["secret"].is_mapping(), "{flag} {path} from a Secret");
        }
    }

    // Probes that work as written: kubelet's gRPC probes are plaintext, so
    // against a TLS port they would fail forever; a TCP probe must target a
    // port execd listens on.
    let tcp_ports: BTreeSet<u16> = setting(args, env, "--listen", "EXECD_LISTEN")
        .iter()
        .filter_map(|l| l.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    let named_ports: HashMap<&str, u16> = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    let mut probes = 0;
    for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let probe = &container[kind];
        if probe.is_null() {
            continue;
        }
        probes += 1;
        assert!(
            !(probe["grpc"].is_mapping() && tls),
            "{kind}: a gRPC probe cannot speak TLS"
        );
        if let Some(socket) = probe["tcpSocket"].as_mapping() {
            let port = &socket["port"];
            let port = port
                .as_u64()
                .map(|p| p as u16)
                .or_else(|| named_ports.get(port.as_str().unwrap()).copied())
                .expect("a declared port");
            assert!(tcp_ports.contains(&port), "{kind}: execd listens on {port}");
        } else {
            assert!(probe["grpc"].is_mapping(), "{kind}: {probe:?}");
        }
    }
    assert!(probes >= 2, "readiness and liveness probes");

    // Every session's `docker exec` client lives in the pod's cgroup, so the
    // memory limit has to cover --max-sessions of them plus execd itself.
    let max_sessions: u64 = setting(args, env, "--max-sessions", "EXECD_MAX_SESSIONS")
        .first()
        .cloned()
        .unwrap_or_else(|| {
            let command = execd::Cli::command();
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some("max-sessions"))
                .unwrap();
            arg.get_default_values()[0].to_string_lossy().into_owned()
        })
        .parse()
        .unwrap();
    let limit = quantity(
        container["resources"]["limits"]["memory"]
            .as_str()
            .expect("a memory limit"),
    );
    let needed = max_sessions * 25_000_000 + (128 << 20);
    assert!(
        limit >= needed,
        "memory limit {limit} B < {max_sessions} sessions × 25 MB + 128 MiB = {needed} B"
    );
}

/// Every `EXECD_*` variable the files set must be one execd reads: clap
/// ignores unknown variables, so a typo would silently do nothing. (Unknown
/// flags already fail the launches above.)
#[test]
fn deployment_files_only_set_variables_execd_reads() {
    let envs: BTreeSet<String> = execd::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let mut used = 0;
    for shipped in [systemd_unit(), dockerfile(), daemonset()] {
        for (var, _) in &shipped.env {
            assert!(envs.contains(var), "{}: execd reads no {var}", shipped.file);
            used += 1;
        }
    }
    assert!(used >= 5, "the files set their variables");
}
