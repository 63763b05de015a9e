//! The exec'd process as execd's own child, waited for through a pidfd.
//!
//! `exec --detach` leaves the process behind when the runtime exits; as
//! the nearest child subreaper (`PR_SET_CHILD_SUBREAPER`, set when the
//! backend is built) execd inherits it, exactly as containerd's shim does.
//! Its exit is then a pidfd turning readable on the tokio reactor and one
//! `waitid(P_PIDFD)`: no polling, no thread, and no other process's exit
//! status is ever collected (execd never waits for "any child").

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("opening a pidfd for process {pid}: {source}")]
    Pidfd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} is not execd's child (parent {parent}); is execd the child subreaper?")]
    NotOurs { pid: i32, parent: i32 },
    #[error("watching process {pid}: {source}")]
    Register {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Makes execd the reaper of the processes the runtime leaves behind.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// The parent pid in `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The exec'd process, pinned by its pidfd.
pub struct Child {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
    exit: Option<i32>,
}

/// Reaps the process behind `pidfd` if it has exited.
fn reap(pidfd: &OwnedFd) -> std::io::Result<Option<i32>> {
    let status = waitid(
        Id::PIDFd(pidfd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    )
    .map_err(std::io::Error::from)?;
    Ok(code_of(status))
}

/// The code a shell would report: the exit code, or 128 + the signal.
fn code_of(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

impl Child {
    /// Takes process `pid` (the runtime's pid file) as execd's child.
    pub fn adopt(pid: i32) -> Result<Child, ChildError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or
        // -1; no memory is passed.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(ChildError::Pidfd {
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // Pinned now: the parent read below is this very process's (an
        // exited child stays a zombie, so its pid is not reused, until
        // execd reaps it).
        let me = std::process::id() as i32;
        match parent_of(pid) {
            Some(parent) if parent == me => {}
            Some(parent) => return Err(ChildError::NotOurs { pid, parent }),
            None => return Err(ChildError::NotOurs { pid, parent: 0 }),
        }
        // SAFETY: the AsyncFd takes ownership of the pidfd, which stays
        // open and unchanged until the AsyncFd is dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                ChildError::Register {
                    pid,
                    source: e.into_parts().1,
                }
            })?;
        Ok(Child {
            pid,
            fd,
            exit: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reaps the process if it has exited; its exit code from then on.
    pub fn try_reap(&mut self) -> std::io::Result<Option<i32>> {
        if self.exit.is_none() {
            self.exit = reap(self.fd.get_ref())?;
        }
        Ok(self.exit)
    }

    /// Waits for the exit and reaps the process. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        if let Some(code) = self.try_reap()? {
            return Ok(code);
        }
        loop {
            let mut ready = self.fd.readable().await?;
            // Readable means exited; cleared on a spurious wake-up, so
            // the loop parks again.
            match reap(ready.get_inner())? {
                Some(code) => {
                    drop(ready);
                    self.exit = Some(code);
                    return Ok(code);
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Signals the process; false once it is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        // SAFETY: a valid pidfd, a signal number, no siginfo (null) and no
        // flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The children are waited for, through their pidfds: that is the test.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn a_child_is_waited_for_through_its_pidfd() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let mut adopted = Child::adopt(child.id() as i32).unwrap();
        assert_eq!(adopted.wait().await.unwrap(), 7);
        // Reaped once; the code stays.
        assert_eq!(adopted.try_reap().unwrap(), Some(7));
        assert_eq!(adopted.wait().await.unwrap(), 7);
        let child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let mut adopted = Child::adopt(child.id() as i32).unwrap();
        assert_eq!(adopted.try_reap().unwrap(), None);
        assert!(adopted.signal(Signal::SIGKILL));
        assert_eq!(adopted.wait().await.unwrap(), 137);
        assert!(!adopted.signal(Signal::SIGKILL));
    }

    #[test]
    fn someone_elses_process_is_refused() {
        // PID 1 is nobody's child here.
        assert!(matches!(
            Child::adopt(1),
            Err(ChildError::NotOurs { .. }) | Err(ChildError::Pidfd { .. })
        ));
    }
}
