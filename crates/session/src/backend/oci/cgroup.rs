//! A cgroup of the session's own, inside the container's: everything the
//! exec'd process starts stays in it, however it hides from the marker
//! (a scrubbed environment, a double fork, a new session), because a
//! container's processes cannot move themselves out of their cgroup (the
//! container's cgroup file system is read-only to them).
//!
//! The runtime puts the process there itself (`exec --cgroup`), before it
//! runs a single instruction. Ending the session kills the whole cgroup,
//! then removes it:
//!
//! - cgroup v2: `cgroup.kill` (Linux 5.14+), else freeze, SIGKILL every
//!   member, thaw;
//! - cgroup v1: a child in the `freezer` and `pids` hierarchies; freeze,
//!   SIGKILL every member, thaw (a frozen process can neither fork nor
//!   exit, so the member list is exact). With `pids` alone, `pids.max = 0`
//!   stops forks while the members are killed.
//!
//! Where neither is available (no writable cgroup file system) the session
//! runs in the container's cgroup, as with `docker exec`, and the marker
//! reaper alone ends it; that is logged.
//!
//! Every function here is blocking (cgroup file system I/O): callers run
//! them on a blocking thread.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::pidfd::ProcHandle;

/// How long the members get to disappear after the kill.
const EMPTY_WITHIN: Duration = Duration::from_secs(5);
/// How long a freeze may take (a member stuck in the kernel delays it).
const FROZEN_WITHIN: Duration = Duration::from_secs(1);
const STEP: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the session's cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup hierarchy the session's cgroup lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// One directory in the unified hierarchy.
    V2(PathBuf),
    /// The same-named child in the v1 `freezer` and `pids` hierarchies
    /// (either may be missing).
    V1 {
        freezer: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// The session's cgroup. Dropped, it is removed if nothing lives in it
/// any more; processes left on purpose (`--keep-background-processes`)
/// keep it, and the runtime removes it with the container's. Killing
/// what is in it is [`SessionCgroup::end`]'s, on a blocking thread.
#[derive(Debug)]
pub struct SessionCgroup {
    layout: Layout,
    /// `--cgroup` values for the runtime, relative to the container's.
    runtime_args: Vec<String>,
}

/// One line of `/proc/self/mountinfo` that is a cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// The path inside the hierarchy that is mounted.
    root: String,
    mount_point: PathBuf,
    v2: bool,
    /// v1: the super options (controller names among them).
    options: Vec<String>,
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// mountinfo escapes spaces and the like as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut rest = after.split(' ');
            let fstype = rest.next()?;
            let _source = rest.next();
            let options = rest.next().unwrap_or_default();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                v2: fstype == "cgroup2",
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// `hierarchy-id:controllers:path` lines of `/proc/<pid>/cgroup`.
fn membership(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some((
                controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// The directory of `path` (a cgroup path) under `mount`, if the mount
/// shows it.
fn directory(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    if path.split('/').any(|c| c == "..") {
        return None;
    }
    let relative = if mount.root == "/" {
        path.trim_start_matches('/')
    } else {
        path.strip_prefix(mount.root.as_str())?
            .trim_start_matches('/')
    };
    Some(mount.mount_point.join(relative))
}

/// Where the session's cgroup goes for a container whose init has
/// `/proc/<pid>/cgroup` = `cgroup` and a host whose mounts are
/// `mountinfo`; `None` where there is no usable hierarchy.
fn plan(cgroup: &str, mountinfo: &str, name: &str) -> Option<Layout> {
    let lines = membership(cgroup);
    let mounts = cgroup_mounts(mountinfo);
    let unified_only = lines.iter().all(|(controllers, _)| controllers.is_empty());
    if unified_only {
        let path = &lines.first()?.1;
        let mount = mounts.iter().find(|m| m.v2)?;
        return Some(Layout::V2(directory(mount, path)?.join(name)));
    }
    let in_v1 = |controller: &str| -> Option<PathBuf> {
        let (_, path) = lines
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))?;
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))?;
        Some(directory(mount, path)?.join(name))
    };
    let (freezer, pids) = (in_v1("freezer"), in_v1("pids"));
    if freezer.is_none() && pids.is_none() {
        return None;
    }
    Some(Layout::V1 { freezer, pids })
}

impl SessionCgroup {
    /// Creates `name` below the cgroup(s) of process `init_pid`; `None`
    /// where no hierarchy can hold it (logged by the caller).
    pub fn create(init_pid: i32, name: &str) -> Result<Option<SessionCgroup>, CgroupError> {
        let cgroup = read(Path::new(&format!("/proc/{init_pid}/cgroup")))?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        let Some(layout) = plan(&cgroup, &mountinfo, name) else {
            return Ok(None);
        };
        let mut runtime_args = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        let mut make = |dir: &Path, arg: String| -> Result<(), CgroupError> {
            match std::fs::create_dir(dir) {
                Ok(()) => {
                    made.push(dir.to_path_buf());
                    runtime_args.push(arg);
                    Ok(())
                }
                Err(source) => {
                    // Undo the part already made: nothing is in it yet.
                    for d in &made {
                        let _ = std::fs::remove_dir(d);
                    }
                    Err(CgroupError::Create {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        };
        match &layout {
            Layout::V2(dir) => make(dir, name.to_string())?,
            Layout::V1 { freezer, pids } => {
                if let Some(dir) = freezer {
                    make(dir, format!("freezer:{name}"))?;
                }
                if let Some(dir) = pids {
                    make(dir, format!("pids:{name}"))?;
                }
            }
        }
        Ok(Some(SessionCgroup {
            layout,
            runtime_args,
        }))
    }

    /// The runtime's `--cgroup` values.
    pub fn runtime_args(&self) -> &[String] {
        &self.runtime_args
    }

    fn dirs(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V2(dir) => vec![dir.as_path()],
            Layout::V1 { freezer, pids } => [freezer, pids]
                .into_iter()
                .flatten()
                .map(PathBuf::as_path)
                .collect(),
        }
    }

    /// Whether a process of this cgroup is still alive.
    pub fn populated(&self) -> bool {
        self.dirs().iter().any(|d| !members(d).is_empty())
    }

    /// Kills every process in the cgroup; dropping it then removes it.
    /// Blocking.
    pub fn end(self) {
        self.kill();
        self.wait_empty(EMPTY_WITHIN);
    }

    /// [`SessionCgroup::end`] for at most `limit` (killed processes are
    /// normally gone within a millisecond); `Some` with the cgroup if
    /// members are still on their way out.
    pub fn end_within(self, limit: Duration) -> Option<SessionCgroup> {
        self.kill();
        self.wait_empty(limit).then_some(self)
    }

    /// Waits up to `limit` for the members to go; true if some are left.
    fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.populated() {
            if Instant::now() >= deadline {
                return true;
            }
            std::thread::sleep(STEP);
        }
        false
    }

    fn remove(&self) {
        for dir in self.dirs() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // A member that just died may take a moment to leave.
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(STEP * 5);
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "the session's cgroup could not be removed");
                        break;
                    }
                }
            }
        }
    }

    /// SIGKILLs every member, leaving none a chance to fork first.
    fn kill(&self) {
        match &self.layout {
            Layout::V2(dir) => {
                if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
                // Before 5.14: freeze, kill, thaw.
                let frozen = std::fs::write(dir.join("cgroup.freeze"), "1").is_ok()
                    && wait_for(|| events_say(dir, "frozen 1"));
                kill_members(dir);
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
                if !frozen {
                    kill_until_empty(dir);
                }
            }
            Layout::V1 { freezer, pids } => {
                if let Some(dir) = freezer {
                    let state = dir.join("freezer.state");
                    let frozen = wait_for(|| {
                        // Writing FROZEN again pushes a slow freeze on.
                        let _ = std::fs::write(&state, "FROZEN");
                        std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN")
                    });
                    kill_members(dir);
                    let _ = std::fs::write(&state, "THAWED");
                    if frozen {
                        return;
                    }
                }
                if let Some(dir) = pids {
                    // No new process can start in it from here on.
                    let _ = std::fs::write(dir.join("pids.max"), "0");
                    kill_until_empty(dir);
                } else if let Some(dir) = freezer {
                    kill_until_empty(dir);
                }
            }
        }
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        if !self.populated() {
            self.remove();
        }
    }
}

/// Retries `done` for up to [`FROZEN_WITHIN`].
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + FROZEN_WITHIN;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STEP);
    }
}

fn events_say(dir: &Path, line: &str) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == line))
}

fn members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs the current members. Each is pinned first and checked to be
/// a member still, so a pid reused meanwhile is never signalled.
fn kill_members(dir: &Path) {
    for pid in members(dir) {
        let Some(handle) = ProcHandle::open(pid) else {
            continue;
        };
        if members(dir).contains(&pid) {
            handle.signal(Signal::SIGKILL);
        }
    }
}

/// Kills members until none is left (bounded by [`EMPTY_WITHIN`]).
fn kill_until_empty(dir: &Path) {
    let deadline = Instant::now() + EMPTY_WITHIN;
    while !members(dir).is_empty() && Instant::now() < deadline {
        kill_members(dir);
        std::thread::sleep(STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
25 24 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
31 25 0:28 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
35 25 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
36 25 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn v1_uses_the_freezer_and_pids_hierarchies() {
        let cgroup = "8:pids:/docker/abc\n6:freezer:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        assert_eq!(
            plan(cgroup, HYBRID_MOUNTS, "execd-1"),
            Some(Layout::V1 {
                freezer: Some("/sys/fs/cgroup/freezer/docker/abc/execd-1".into()),
                pids: Some("/sys/fs/cgroup/pids/docker/abc/execd-1".into()),
            })
        );
        // Neither hierarchy: nothing to own the processes with.
        assert_eq!(
            plan("2:cpu,cpuacct:/docker/abc\n", HYBRID_MOUNTS, "x"),
            None
        );
    }

    #[test]
    fn v2_uses_the_unified_hierarchy_below_its_mount_root() {
        let mounts = "30 25 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            plan("0::/kubepods/pod1/ctr\n", mounts, "execd-2"),
            Some(Layout::V2("/sys/fs/cgroup/pod1/ctr/execd-2".into()))
        );
        assert_eq!(plan("0::/elsewhere/ctr\n", mounts, "x"), None);
        assert_eq!(plan("0::/a/../b\n", mounts, "x"), None);
        assert_eq!(plan("0::/a\n", "", "x"), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let m = cgroup_mounts("1 2 0:3 / /sys/fs/my\\040cgroup rw - cgroup2 none rw\n");
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/my cgroup"));
    }

    /// A process moved into a session cgroup (as the runtime does), and a
    /// double-forked child of it, are gone once the cgroup is ended, and
    /// so is the cgroup.
    #[test]
    fn ending_kills_every_member_and_removes_the_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let name = format!("execd-unit-{}", std::process::id());
        let me = std::process::id() as i32;
        // Below execd's own cgroup, which is what "the container's" is here.
        let Ok(Some(cgroup)) = SessionCgroup::create(me, &name) else {
            return;
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; setsid sleep 300 & sleep 300"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for dir in cgroup.dirs() {
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        }
        // The shell forks only once it was moved.
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while members(cgroup.dirs()[0]).len() < 3 {
            assert!(Instant::now() < deadline, "the shell never forked");
            std::thread::sleep(STEP);
        }
        let dirs: Vec<PathBuf> = cgroup.dirs().iter().map(|d| d.to_path_buf()).collect();
        assert!(cgroup.populated());
        cgroup.end();
        assert!(!child.wait().unwrap().success());
        for dir in dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}
