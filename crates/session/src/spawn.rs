//! Spawning the session's child with pipes or under a pseudo-terminal.
//!
//! Pipe mode gives three separate non-blocking pipes (tokio's), so stdout
//! and stderr keep their identity. Terminal mode gives the child a fresh
//! controlling terminal (new session, slave on fds 0–2) and keeps only the
//! master here. Either way the child is in its own process group, so the
//! whole group can be signalled without touching execd.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};

use crate::command::{RuntimeCommand, TermSize};
use crate::orphans::{spawn_tracked, Tracked};
use crate::pty::{self, PtyError, PtyMaster};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("runtime CLI {program:?} was not found (install it or point --runtime-cli at it)")]
    ProgramNotFound { program: String },
    #[error("runtime CLI {program:?} cannot be executed: {source}")]
    NotExecutable {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("spawning {program:?} failed: {source}")]
    Io {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("user {0:?} does not exist on this host")]
    UnknownUser(String),
    #[error("group {0:?} does not exist on this host")]
    UnknownGroup(String),
    #[error(transparent)]
    Pty(#[from] PtyError),
}

/// The child's output streams and input, ready for async I/O.
pub struct ChildIo {
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// `None` in terminal mode: stderr arrives merged into stdout.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// `Some` in terminal mode.
    pub terminal: Option<Terminal>,
}

/// What execd keeps of a child's terminal.
pub struct Terminal {
    pub master: PtyMaster,
    /// The byte the terminal treats as end-of-file (VEOF, normally ^D).
    pub eof_char: u8,
}

pub struct SpawnedChild {
    pub child: Child,
    pub io: ChildIo,
    /// Keeps the child known as execd's own (see [`crate::orphans`]); keep
    /// it as long as the `Child`.
    pub tracked: Tracked,
}

/// How a host-exec session's process is set up, beyond its command line.
/// Resolved before spawning, off the async runtime ([`resolve_user`] may
/// ask NSS, i.e. files, LDAP or the network).
#[derive(Debug, Clone, Default)]
pub struct HostSetup {
    /// The user to run as; `None` keeps execd's own.
    pub credentials: Option<Credentials>,
    /// The environment the process starts from (the request's variables,
    /// `TERM` and the marker come on top): not execd's own, which may hold
    /// secrets and settings meant for execd alone.
    pub base_env: Vec<(String, String)>,
}

/// A resolved `user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's own from the group database, or
    /// none; never execd's.
    pub groups: Vec<u32>,
    /// The user's home directory, if the user is known.
    pub home: Option<String>,
}

/// Search path for host-exec sessions.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The group a uid without a passwd entry runs with when none is named
/// (the kernel's overflow group, "nogroup"): never execd's own group.
pub const FALLBACK_GID: u32 = 65534;

impl HostSetup {
    /// Resolves `user` (may be empty: execd's own user) and the base
    /// environment. Blocking: call it on a blocking thread.
    pub fn resolve(user: &str) -> Result<HostSetup, SpawnError> {
        let credentials = if user.is_empty() {
            None
        } else {
            Some(resolve_user(user)?)
        };
        let home = match &credentials {
            Some(c) => c.home.clone().unwrap_or_else(|| "/".to_string()),
            None => std::env::var("HOME").unwrap_or_else(|_| "/".to_string()),
        };
        Ok(HostSetup {
            credentials,
            base_env: vec![
                ("PATH".to_string(), HOST_PATH.to_string()),
                ("HOME".to_string(), home),
            ],
        })
    }
}

fn base_command(rc: &RuntimeCommand, host: Option<&HostSetup>) -> Result<Command, SpawnError> {
    let mut cmd = Command::new(&rc.program);
    cmd.args(&rc.args);
    let resolved;
    let host = match (host, &rc.user) {
        (Some(host), _) => Some(host),
        // Callers that did not resolve ahead (tools, tests): resolve here.
        (None, Some(user)) => {
            resolved = HostSetup::resolve(user)?;
            Some(&resolved)
        }
        (None, None) => None,
    };
    if let Some(host) = host {
        cmd.env_clear();
        cmd.envs(host.base_env.iter().map(|(k, v)| (k, v)));
    }
    cmd.envs(rc.env.iter().map(|(k, v)| (k, v)));
    match host.and_then(|h| h.credentials.clone()) {
        Some(credentials) => {
            // The directory is entered after the switch, as the user, so a
            // directory the user may not enter is refused like a shell would.
            let dir =
                match &rc.current_dir {
                    Some(dir) => Some(std::ffi::CString::new(dir.as_bytes()).map_err(|_| {
                        SpawnError::Io {
                            program: rc.program.to_string_lossy().into_owned(),
                            source: io::Error::other("working directory contains a NUL byte"),
                        }
                    })?),
                    None => None,
                };
            let groups: Vec<libc::gid_t> = credentials.groups.clone();
            // SAFETY: the closure runs in the forked child before exec and
            // calls only async-signal-safe syscalls (setgroups, setgid,
            // setuid, chdir) on data prepared before the fork; it does not
            // allocate.
            unsafe {
                cmd.pre_exec(move || {
                    // Groups first, while still privileged: std's own uid
                    // switch would keep execd's primary group, and its
                    // supplementary groups when execd is not root.
                    if libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setgid(credentials.gid) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setuid(credentials.uid) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(dir) = &dir {
                        if libc::chdir(dir.as_ptr()) == -1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        None => {
            if let Some(dir) = &rc.current_dir {
                cmd.current_dir(dir);
            }
        }
    }
    // If execd's task holding the child is dropped without a clean end
    // (panic, runtime shutdown), the runtime CLI must not outlive it.
    cmd.kill_on_drop(true);
    Ok(cmd)
}

/// Resolves `user[:group]` (names or numeric ids) for host-exec mode.
/// Blocking (NSS lookups).
pub fn resolve_user(spec: &str) -> Result<Credentials, SpawnError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        // A numeric uid need not exist in the passwd database.
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten(),
        Err(_) => Some(
            nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::UnknownUser(user.to_string()))?,
        ),
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid.as_raw(),
        (None, Err(_)) => return Err(SpawnError::UnknownUser(user.to_string())),
    };
    let primary = entry.as_ref().map(|e| e.gid.as_raw());
    let gid = match group {
        None => primary.unwrap_or(FALLBACK_GID),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::UnknownGroup(g.to_string()))?
                .gid
                .as_raw(),
        },
    };
    // The user's own supplementary groups (what initgroups would set), or
    // none for a uid the database does not know.
    let groups = match &entry {
        Some(e) => std::ffi::CString::new(e.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![gid]),
        None => Vec::new(),
    };
    Ok(Credentials {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.dir.to_string_lossy().into_owned()),
    })
}

fn spawn_error(program: &OsString, source: io::Error) -> SpawnError {
    let program = program.to_string_lossy().into_owned();
    match source.kind() {
        io::ErrorKind::NotFound => SpawnError::ProgramNotFound { program },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable { program, source },
        _ => SpawnError::Io { program, source },
    }
}

/// Output pipe capacity execd asks for. A bigger pipe lets the writer run
/// ahead and execd read large chunks: fewer wake-ups and messages per MiB.
/// Still bounded, so a slow client stalls the process instead of growing
/// memory.
pub const PIPE_CAPACITY: i32 = 1024 * 1024;

fn grow_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: F_SETPIPE_SZ takes an int and only changes the pipe's buffer
    // size; `fd` is a pipe end owned by the caller for the whole call.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
    if rc == -1 {
        // Unprivileged processes are capped by /proc/sys/fs/pipe-max-size;
        // the default size still works, only slower.
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not grow pipe");
    }
}

/// Spawns with three pipes.
pub fn spawn_piped(rc: &RuntimeCommand) -> Result<SpawnedChild, SpawnError> {
    spawn_piped_with(rc, None)
}

/// [`spawn_piped`] for a host-exec session set up by `host`.
pub fn spawn_piped_with(
    rc: &RuntimeCommand,
    host: Option<&HostSetup>,
) -> Result<SpawnedChild, SpawnError> {
    let mut cmd = base_command(rc, host)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (mut child, tracked) = spawn_tracked(&mut cmd).map_err(|e| spawn_error(&rc.program, e))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        // Unreachable with Stdio::piped(); fail the session rather than panic.
        return Err(SpawnError::Io {
            program: rc.program.to_string_lossy().into_owned(),
            source: io::Error::other("child stdio pipes missing after spawn"),
        });
    };
    use std::os::fd::AsRawFd;
    grow_pipe(stdout.as_raw_fd());
    grow_pipe(stderr.as_raw_fd());
    Ok(SpawnedChild {
        child,
        io: ChildIo {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: Some(Box::new(stderr)),
            terminal: None,
        },
        tracked,
    })
}

/// How the pseudo-terminal execd creates should behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalMode {
    /// A normal terminal (echo, line editing, signals): the session's own
    /// process runs on it (host-exec mode).
    Cooked,
    /// Bytes pass through untouched: a runtime CLI (`docker exec -t`) runs
    /// on it and relays to the container's own terminal, which does the
    /// echoing and signal handling. The CLI would switch to raw itself,
    /// but only once it runs; input arriving before that must not be
    /// echoed, line-buffered or turned into a ^C for the CLI.
    Raw,
}

/// Spawns with a new pseudo-terminal of `size` as the controlling terminal.
pub fn spawn_in_terminal(
    rc: &RuntimeCommand,
    size: TermSize,
    mode: TerminalMode,
) -> Result<SpawnedChild, SpawnError> {
    spawn_in_terminal_with(rc, size, mode, None)
}

/// [`spawn_in_terminal`] for a host-exec session set up by `host`.
pub fn spawn_in_terminal_with(
    rc: &RuntimeCommand,
    size: TermSize,
    mode: TerminalMode,
    host: Option<&HostSetup>,
) -> Result<SpawnedChild, SpawnError> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, SpecialCharacterIndices};
    let pair = pty::open(size)?;
    let termios = tcgetattr(&pair.slave).map_err(|e| SpawnError::Pty(PtyError::Open(e)))?;
    // The container's terminal has the same default; this is the byte a
    // client's stdin_eof becomes.
    let eof_char = termios.control_chars[SpecialCharacterIndices::VEOF as usize];
    if mode == TerminalMode::Raw {
        let mut raw = termios;
        cfmakeraw(&mut raw);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &raw)
            .map_err(|e| SpawnError::Pty(PtyError::Open(e)))?;
    }
    let mut cmd = base_command(rc, host)?;
    let stdio = |fd: OwnedFd| Stdio::from(fd);
    cmd.stdin(stdio(pty::dup_slave(&pair.slave)?))
        .stdout(stdio(pty::dup_slave(&pair.slave)?))
        .stderr(stdio(pty::dup_slave(&pair.slave)?));
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl) without allocating.
    unsafe {
        cmd.pre_exec(|| {
            // A new session detaches from execd's terminal (if any), and
            // TIOCSCTTY makes the pty slave (already on fd 0) the controlling
            // terminal, so ^C and SIGWINCH reach the child's process group.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (child, tracked) = spawn_tracked(&mut cmd).map_err(|e| spawn_error(&rc.program, e))?;
    // Only the child may hold the slave: with a copy here, the master would
    // never report end-of-file. The Command owns three dups; drop them too.
    drop(cmd);
    drop(pair.slave);
    let master = pair.master;
    Ok(SpawnedChild {
        child,
        io: ChildIo {
            stdin: Box::new(master.writer()),
            stdout: Box::new(master.reader()),
            stderr: None,
            terminal: Some(Terminal { master, eof_char }),
        },
        tracked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn host(program: &str, args: &[&str]) -> RuntimeCommand {
        RuntimeCommand {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            env: vec![],
            current_dir: None,
            user: None,
        }
    }

    #[tokio::test]
    async fn missing_program_is_classified() {
        let err = spawn_piped(&host("/nonexistent/execd-cli", &[]))
            .err()
            .unwrap();
        assert!(matches!(err, SpawnError::ProgramNotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn terminal_child_sees_a_tty_of_the_right_size() {
        let rc = host("/bin/sh", &["-c", "stty size; test -t 0 && echo tty"]);
        let mut spawned =
            spawn_in_terminal(&rc, TermSize { rows: 42, cols: 91 }, TerminalMode::Cooked).unwrap();
        let mut out = Vec::new();
        spawned.io.stdout.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("42 91"), "{out}");
        assert!(out.contains("tty"), "{out}");
        assert!(spawned.child.wait().await.unwrap().success());
    }

    #[test]
    fn users_resolve_to_their_own_groups_never_execds() {
        // A uid the database does not know: the named group, or nogroup;
        // no supplementary groups either way.
        let c = resolve_user("54321:99").unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (54321, 99, vec![]));
        let c = resolve_user("54321").unwrap();
        assert_eq!((c.uid, c.gid), (54321, FALLBACK_GID));
        assert!(c.groups.is_empty() && c.home.is_none());
        // root (uid 0) is known: its own primary group and home.
        let c = resolve_user("0").unwrap();
        assert_eq!((c.uid, c.gid), (0, 0));
        assert!(c.home.is_some());
        assert!(matches!(
            resolve_user("no-such-user-execd"),
            Err(SpawnError::UnknownUser(_))
        ));
    }

    /// A host session switched to a user runs with that user's groups only
    /// and an environment of its own, not execd's.
    #[tokio::test]
    async fn host_sessions_drop_groups_and_start_from_a_minimal_environment() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        std::env::set_var("EXECD_TEST_SECRET", "leak");
        let mut rc = host("/bin/sh", &["-c", "id -u; id -g; id -G; env"]);
        rc.env = vec![("GREETING".into(), "hi".into())];
        let setup = HostSetup::resolve("54321").unwrap();
        let mut spawned = spawn_piped_with(&rc, Some(&setup)).unwrap();
        let mut out = String::new();
        spawned.io.stdout.read_to_string(&mut out).await.unwrap();
        assert!(spawned.child.wait().await.unwrap().success(), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "54321");
        assert_eq!(lines[1], FALLBACK_GID.to_string());
        assert_eq!(lines[2], FALLBACK_GID.to_string(), "groups: {out}");
        assert!(out.contains("GREETING=hi"), "{out}");
        assert!(out.contains(&format!("PATH={HOST_PATH}")), "{out}");
        assert!(!out.contains("EXECD_TEST_SECRET"), "{out}");
    }
}
