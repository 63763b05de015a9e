//! A handle on one process that cannot be confused with a later one.
//!
//! Pids are reused: a pid found by a scan may belong to a new, unrelated
//! process by the time it is signalled. A [`ProcHandle`] holds a pidfd
//! (`pidfd_open`), which keeps naming the process it was opened for; signals
//! go through `pidfd_send_signal` and simply fail once that process is gone.
//! On kernels without pidfds (before 5.3) it remembers the process's start
//! time (`/proc/<pid>/stat` field 22) and checks it again right before each
//! signal, which narrows the window to that check.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;

/// One process, pinned.
#[derive(Debug)]
pub struct ProcHandle {
    pid: i32,
    pin: Pin,
}

#[derive(Debug)]
enum Pin {
    Fd(OwnedFd),
    StartTime(u64),
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot),
/// and whether the process is a zombie.
fn start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // `rest` starts at field 3; field 22 is the 20th from here.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z"))
}

impl ProcHandle {
    /// Pins the process that has `pid` now; `None` if there is none.
    pub fn open(pid: i32) -> Option<ProcHandle> {
        if pid <= 0 {
            return None;
        }
        match pidfd_open(pid) {
            Ok(fd) => Some(ProcHandle {
                pid,
                pin: Pin::Fd(fd),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                let (start, _) = start_time(pid)?;
                Some(ProcHandle {
                    pid,
                    pin: Pin::StartTime(start),
                })
            }
            Err(_) => None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the pinned process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        match &self.pin {
            Pin::Fd(fd) => {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, zero timeout; a pidfd polls
                // readable once its process has exited.
                let rc = unsafe { libc::poll(&mut poll, 1, 0) };
                rc == 0
            }
            Pin::StartTime(start) => {
                matches!(start_time(self.pid), Some((now, zombie)) if now == *start && !zombie)
            }
        }
    }

    /// Sends `signal` to the pinned process; false if it is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        match &self.pin {
            Pin::Fd(fd) => {
                // SAFETY: a valid pidfd, a signal number, no siginfo (null)
                // and no flags.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                rc == 0
            }
            Pin::StartTime(_) => {
                self.alive()
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal).is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_past_odd_command_names() {
        let me = std::process::id() as i32;
        let (start, zombie) = start_time(me).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }

    /// Once the pinned process is gone, the handle never reaches whatever
    /// gets its pid next.
    #[test]
    fn a_handle_outlives_its_process_harmlessly() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let handle = ProcHandle::open(child.id() as i32).unwrap();
        assert!(handle.alive());
        assert!(handle.signal(Signal::SIGKILL));
        child.wait().unwrap();
        assert!(!handle.alive());
        assert!(!handle.signal(Signal::SIGKILL));
        let fallback = ProcHandle {
            pid: handle.pid(),
            pin: Pin::StartTime(1),
        };
        assert!(!fallback.signal(Signal::SIGKILL));
    }
}
