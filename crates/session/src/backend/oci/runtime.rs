//! Running the OCI runtime (`runc`, or `crun`: the same command line):
//! `state` to find a container's init and bundle, and the command line of
//! `exec --detach`, plus the private directory a start keeps its files in.
//!
//! A container's state is first read from runc's own record
//! (`<root>/<id>/state.json`), checked the way `runc state` checks it (the
//! init process alive and the same one, the container started, its
//! cgroup not frozen): that answer costs no process, where `runc state`
//! costs one, about 5 ms of every start. Any other case (another
//! runtime's layout, a container not plainly running, a file that does not
//! parse) asks the runtime.
//!
//! The runtime is started with an empty environment but for `PATH`
//! (execd's own may hold settings and secrets that are none of its
//! business) and never through a shell. Its errors are read from its JSON
//! log (`--log-format json`), because in pipe mode its stderr is the
//! process's.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// A runtime that hangs fails the start instead of holding it forever.
pub const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest runtime answer or log read.
const MAX_ANSWER: u64 = 1024 * 1024;

/// The `PATH` the runtime runs with.
const RUNTIME_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("OCI runtime {program:?} could not be run: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OCI runtime {program:?} did not answer within {}s", RUNTIME_TIMEOUT.as_secs())]
    Timeout { program: String },
    /// The runtime has no container of that id under its root.
    #[error("No such container: {0}")]
    Missing(String),
    /// The runtime's own message.
    #[error("{0}")]
    Failed(String),
    #[error("OCI runtime answer not understood: {0}")]
    Answer(String),
}

/// What `runc state` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Host pid of the container's init.
    pub pid: i32,
    pub bundle: PathBuf,
}

/// The runtime and its state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub program: String,
    pub root: PathBuf,
}

/// Where and how one `exec` runs.
pub struct ExecArgs<'a> {
    pub id: &'a str,
    pub process: &'a Path,
    pub pid_file: &'a Path,
    pub log: &'a Path,
    pub console: Option<&'a Path>,
    /// `--cgroup` values.
    pub cgroups: &'a [String],
    /// The container is managed through systemd (its `cgroupsPath` is
    /// `slice:prefix:name`).
    pub systemd: bool,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env("PATH", RUNTIME_PATH)
            .arg("--root")
            .arg(&self.root)
            .kill_on_drop(true);
        cmd
    }

    /// What `runc state <id>` says: from runc's record when that shows a
    /// running container, else from the runtime.
    pub async fn state(&self, id: &str) -> Result<State, RuntimeError> {
        let (root, owned) = (self.root.clone(), id.to_string());
        let record = tokio::task::spawn_blocking(move || running_from_record(&root, &owned));
        // A stuck read (procfs, cgroupfs) is bounded like the runtime.
        match tokio::time::timeout(RUNTIME_TIMEOUT, record).await {
            Ok(Ok(Some(state))) => Ok(state),
            Ok(_) => self.ask_state(id).await,
            Err(_) => Err(RuntimeError::Timeout {
                program: self.program.clone(),
            }),
        }
    }

    /// `runc state <id>`.
    async fn ask_state(&self, id: &str) -> Result<State, RuntimeError> {
        let mut cmd = self.command();
        cmd.args(["state", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = tokio::time::timeout(RUNTIME_TIMEOUT, cmd.output())
            .await
            .map_err(|_| RuntimeError::Timeout {
                program: self.program.clone(),
            })?
            .map_err(|source| RuntimeError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("does not exist") || stderr.contains("not found") {
                return Err(RuntimeError::Missing(id.to_string()));
            }
            return Err(RuntimeError::Failed(last_line(&stderr)));
        }
        parse_state(&output.stdout)
    }

    /// The `exec --detach` command line; the caller sets its stdio.
    pub fn exec_command(&self, a: &ExecArgs<'_>) -> Command {
        let mut cmd = self.command();
        cmd.arg("--log").arg(a.log).args(["--log-format", "json"]);
        if a.systemd {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(["exec", "--detach", "--pid-file"])
            .arg(a.pid_file)
            .arg("--process")
            .arg(a.process);
        if let Some(console) = a.console {
            cmd.arg("--console-socket").arg(console);
        }
        for cgroup in a.cgroups {
            cmd.arg("--cgroup").arg(cgroup);
        }
        // Validated ids start with a letter or digit: never a flag.
        cmd.arg(a.id);
        cmd
    }
}

fn parse_state(stdout: &[u8]) -> Result<State, RuntimeError> {
    let json: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| RuntimeError::Answer(e.to_string()))?;
    let status = json["status"].as_str().unwrap_or_default().to_string();
    let pid = json["pid"].as_i64().unwrap_or(0) as i32;
    let bundle = json["bundle"].as_str().unwrap_or_default();
    if status.is_empty() || bundle.is_empty() {
        return Err(RuntimeError::Answer(
            "state without status or bundle".into(),
        ));
    }
    Ok(State {
        status,
        pid,
        bundle: PathBuf::from(bundle),
    })
}

/// The state of container `id` from runc's record under `root`, if that
/// shows it running, by the rules of runc's own `state`: the init process
/// is alive and is the one recorded (its start time), the container was
/// started (no `exec.fifo` left), and its freezer is thawed. `None` when
/// any of it cannot be read or says otherwise: the runtime is asked then.
fn running_from_record(root: &Path, id: &str) -> Option<State> {
    // The id names a directory: nothing that could leave the root.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+');
    if id.is_empty() || id.starts_with('.') || !id.chars().all(plain) {
        return None;
    }
    let dir = root.join(id);
    let text = read_bounded(&dir.join("state.json"))?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if json["id"].as_str()? != id {
        return None;
    }
    let pid = i32::try_from(json["init_process_pid"].as_i64()?)
        .ok()
        .filter(|p| *p > 0)?;
    let start = &json["init_process_start"];
    // A number since runc 1.0, a string before.
    let start = start.as_u64().or_else(|| start.as_str()?.parse().ok())?;
    let bundle = json["config"]["labels"]
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find_map(|label| label.strip_prefix("bundle="))?;
    if bundle.is_empty() || std::fs::symlink_metadata(dir.join("exec.fifo")).is_ok() {
        return None;
    }
    let (process_state, started) = process_stat(pid)?;
    if started != start || matches!(process_state, 'Z' | 'X' | 'x') {
        return None;
    }
    if !thawed(&json["cgroup_paths"])? {
        return None;
    }
    Some(State {
        status: "running".into(),
        pid,
        bundle: PathBuf::from(bundle),
    })
}

/// A file of at most [`MAX_ANSWER`] bytes.
fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut data)
        .ok()?;
    (data.len() as u64 <= MAX_ANSWER).then_some(data)
}

/// A process's state letter and start time (clock ticks after boot) from
/// `/proc/<pid>/stat`.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold anything, ')' included: fields 3 on
    // follow the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22, the 20th after the name.
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

/// Whether the container's freezer is thawed (`runc pause` freezes it),
/// from the cgroup paths in runc's record: the v1 freezer's state, or on a
/// unified hierarchy `cgroup.freeze`. `None` when neither can be read.
fn thawed(paths: &serde_json::Value) -> Option<bool> {
    let read = |dir: &str, file: &str| std::fs::read_to_string(Path::new(dir).join(file)).ok();
    if let Some(freezer) = paths["freezer"].as_str() {
        return Some(read(freezer, "freezer.state")?.trim() == "THAWED");
    }
    Some(read(paths[""].as_str()?, "cgroup.freeze")?.trim() == "0")
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error message")
        .trim()
        .to_string()
}

/// The runtime's last error from its JSON log (or the last line, if it
/// is not JSON).
pub fn log_error(log: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(log) {
        let _ = file.take(MAX_ANSWER).read_to_string(&mut text);
    }
    let mut errors = text.lines().rev().filter_map(|line| {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = json["level"].as_str()?;
        matches!(level, "error" | "fatal")
            .then(|| json["msg"].as_str().map(str::to_string))
            .flatten()
    });
    errors.next().unwrap_or_else(|| last_line(&text))
}

/// The pid the runtime wrote.
pub fn read_pid(pid_file: &Path) -> Result<i32, RuntimeError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| RuntimeError::Answer(format!("pid file: {e}")))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| RuntimeError::Answer(format!("pid file holds {:?}", text.trim())))
}

/// A directory only execd's user can enter, for one start's files (the
/// process spec, the pid file, the log, the console socket); removed with
/// everything in it when dropped.
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// A fresh directory with a random name under the temporary directory.
    /// `mkdir` fails rather than follow anything planted under that name,
    /// and a parent others could rename it in (writable by them without
    /// the sticky bit) is refused.
    pub fn create() -> std::io::Result<WorkDir> {
        use std::os::unix::fs::MetadataExt;
        let parent = std::env::temp_dir();
        let mode = std::fs::metadata(&parent)?.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(std::io::Error::other(format!(
                "the temporary directory {} is writable by others without the sticky bit",
                parent.display()
            )));
        }
        let bits: u128 = rand::random();
        let path = parent.join(format!("execd-oci-{bits:032x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(WorkDir { path })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a new file readable by its owner only.
    pub fn write_private(&self, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        file.write_all(data)?;
        Ok(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a start's directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_answers_parse() {
        let s = parse_state(
            br#"{"ociVersion":"1.0.2","id":"abc","pid":4242,"status":"running","bundle":"/b","rootfs":"/r"}"#,
        )
        .unwrap();
        assert_eq!((s.pid, s.status.as_str()), (4242, "running"));
        assert_eq!(s.bundle, PathBuf::from("/b"));
        assert!(parse_state(b"{}").is_err());
        assert!(parse_state(b"not json").is_err());
    }

    /// A root holding runc's record of a "container" whose init is this
    /// test process, its freezer a file in the root.
    fn record(root: &Path, id: &str, start: serde_json::Value, freezer: &str) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup = root.join("freezer-cgroup");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(cgroup.join("freezer.state"), freezer).unwrap();
        let json = serde_json::json!({
            "id": id,
            "init_process_pid": std::process::id(),
            "init_process_start": start,
            "config": {"labels": ["other=1", "bundle=/the/bundle"]},
            "cgroup_paths": {"freezer": cgroup, "": "/nonexistent"},
        });
        std::fs::write(dir.join("state.json"), json.to_string()).unwrap();
    }

    #[test]
    fn a_running_container_is_read_from_runcs_record() {
        let root = tempfile::tempdir().unwrap();
        let (_, started) = process_stat(std::process::id() as i32).unwrap();
        record(root.path(), "c1", started.into(), "THAWED\n");
        let state = running_from_record(root.path(), "c1").expect("running");
        assert_eq!(state.status, "running");
        assert_eq!(state.pid, std::process::id() as i32);
        assert_eq!(state.bundle, PathBuf::from("/the/bundle"));
        // The start time as runc before 1.0 wrote it.
        record(root.path(), "c2", started.to_string().into(), "THAWED");
        assert!(running_from_record(root.path(), "c2").is_some());
    }

    #[test]
    fn anything_but_plainly_running_is_left_to_the_runtime() {
        let root = tempfile::tempdir().unwrap();
        let (_, started) = process_stat(std::process::id() as i32).unwrap();
        // Paused.
        record(root.path(), "c1", started.into(), "FROZEN\n");
        assert!(running_from_record(root.path(), "c1").is_none());
        // Another process under the recorded pid (pid reuse).
        record(root.path(), "c2", (started + 1).into(), "THAWED");
        assert!(running_from_record(root.path(), "c2").is_none());
        // Created, never started.
        record(root.path(), "c3", started.into(), "THAWED");
        std::fs::write(root.path().join("c3/exec.fifo"), "").unwrap();
        assert!(running_from_record(root.path(), "c3").is_none());
        // No record (another runtime's layout), a record of another id, a
        // record that does not parse, an id that leaves the root.
        assert!(running_from_record(root.path(), "c4").is_none());
        record(root.path(), "c5", started.into(), "THAWED");
        std::fs::rename(root.path().join("c5"), root.path().join("c6")).unwrap();
        assert!(running_from_record(root.path(), "c6").is_none());
        std::fs::write(root.path().join("c1/state.json"), "{").unwrap();
        assert!(running_from_record(root.path(), "c1").is_none());
        assert!(running_from_record(&root.path().join("c2"), "..").is_none());
    }

    #[test]
    fn a_unified_hierarchy_freezer_is_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("cgroup.freeze"), "0\n").unwrap();
        assert_eq!(thawed(&serde_json::json!({"": path})), Some(true));
        std::fs::write(dir.path().join("cgroup.freeze"), "1\n").unwrap();
        assert_eq!(thawed(&serde_json::json!({"": path})), Some(false));
        assert_eq!(thawed(&serde_json::json!({})), None);
    }

    #[test]
    fn log_errors_are_the_last_error_level_message() {
        let dir = WorkDir::create().unwrap();
        let log = dir
            .write_private(
                "log.json",
                b"{\"level\":\"warning\",\"msg\":\"meh\"}\n{\"level\":\"error\",\"msg\":\"exec failed: no such file\"}\n",
            )
            .unwrap();
        assert_eq!(log_error(&log), "exec failed: no such file");
        let plain = dir.write_private("plain", b"line one\nboom\n").unwrap();
        assert_eq!(log_error(&plain), "boom");
        assert_eq!(log_error(&dir.join("missing")), "no error message");
    }

    #[test]
    fn work_dirs_are_private_and_go_away() {
        use std::os::unix::fs::PermissionsExt;
        let dir = WorkDir::create().unwrap();
        let file = dir.write_private("process.json", b"{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert!(dir.write_private("process.json", b"again").is_err());
        let path = dir.path.clone();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn exec_command_line() {
        let rt = Runtime {
            program: "runc".into(),
            root: "/run/x".into(),
        };
        let cgroups = ["pids:execd-1".to_string()];
        let cmd = rt.exec_command(&ExecArgs {
            id: "abc",
            process: Path::new("/d/p.json"),
            pid_file: Path::new("/d/pid"),
            log: Path::new("/d/log.json"),
            console: Some(Path::new("/d/c.sock")),
            cgroups: &cgroups,
            systemd: false,
        });
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                "/run/x",
                "--log",
                "/d/log.json",
                "--log-format",
                "json",
                "exec",
                "--detach",
                "--pid-file",
                "/d/pid",
                "--process",
                "/d/p.json",
                "--console-socket",
                "/d/c.sock",
                "--cgroup",
                "pids:execd-1",
                "abc"
            ]
        );
    }
}
