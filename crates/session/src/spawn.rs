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
}

fn base_command(rc: &RuntimeCommand) -> Result<Command, SpawnError> {
    let mut cmd = Command::new(&rc.program);
    cmd.args(&rc.args);
    cmd.envs(rc.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &rc.current_dir {
        cmd.current_dir(dir);
    }
    if let Some(user) = &rc.user {
        let (uid, gid) = resolve_user(user)?;
        cmd.uid(uid);
        if let Some(gid) = gid {
            cmd.gid(gid);
        }
    }
    // If execd's task holding the child is dropped without a clean end
    // (panic, runtime shutdown), the runtime CLI must not outlive it.
    cmd.kill_on_drop(true);
    Ok(cmd)
}

/// Resolves `user[:group]` (names or numeric ids) for host-exec mode.
fn resolve_user(spec: &str) -> Result<(u32, Option<u32>), SpawnError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let entry = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::UnknownUser(user.to_string()))?;
            (entry.uid.as_raw(), Some(entry.gid.as_raw()))
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::UnknownGroup(g.to_string()))?
                .gid
                .as_raw(),
        }),
    };
    Ok((uid, gid))
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
    let mut cmd = base_command(rc)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(&rc.program, e))?;
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
    let mut cmd = base_command(rc)?;
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
    let child = cmd.spawn().map_err(|e| spawn_error(&rc.program, e))?;
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
    fn numeric_users_resolve_without_lookup() {
        assert_eq!(resolve_user("1234:99").unwrap(), (1234, Some(99)));
        assert_eq!(resolve_user("0").unwrap(), (0, None));
        assert!(matches!(
            resolve_user("no-such-user-execd"),
            Err(SpawnError::UnknownUser(_))
        ));
    }
}
