//! Pseudo-terminals: open a pair, size it, and do non-blocking I/O on the
//! master side through the tokio reactor.
//!
//! The master fd is registered with [`AsyncFd`], so a tty session costs no
//! thread: reads and writes park on epoll like any socket. When every holder
//! of the slave side has gone, Linux reports `EIO` on the master; that is the
//! terminal's end-of-file, not an error.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg};
use nix::pty::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::command::TermSize;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("opening a pseudo-terminal failed: {0}")]
    Open(#[source] nix::Error),
    #[error("making the pseudo-terminal master non-blocking failed: {0}")]
    NonBlocking(#[source] nix::Error),
    #[error("registering the pseudo-terminal with the reactor failed: {0}")]
    Register(#[source] io::Error),
    #[error("duplicating the pseudo-terminal slave for the child's stdio failed: {0}")]
    DupSlave(#[source] io::Error),
    #[error("setting the terminal size failed: {0}")]
    Resize(#[source] io::Error),
}

fn winsize(size: TermSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A freshly opened pair. The slave goes to the child; the parent keeps only
/// the master (it must drop its slave copy after spawning, or the master
/// never sees end-of-file).
pub struct PtyPair {
    pub master: PtyMaster,
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal with `size` already applied, so the child's
/// first look at its terminal sees the client's size.
///
/// Both ends are opened close-on-exec atomically (not with `openpty`, whose
/// slave is inheritable until fixed up): with sessions starting on several
/// threads at once, another session's child could otherwise inherit this
/// terminal's slave, read its keystrokes, and keep its master from ever
/// seeing end-of-file.
pub fn open(size: TermSize) -> Result<PtyPair, PtyError> {
    use nix::fcntl::{open as open_path, OFlag};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use nix::sys::stat::Mode;
    use std::os::fd::{FromRawFd, IntoRawFd};

    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(PtyError::Open)?;
    grantpt(&master).map_err(PtyError::Open)?;
    unlockpt(&master).map_err(PtyError::Open)?;
    let slave_path = ptsname_r(&master).map_err(PtyError::Open)?;
    let slave = open_path(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(PtyError::Open)?;
    // SAFETY: both fds were just returned by successful opens and are owned
    // by nothing else; each is wrapped exactly once.
    let (master, slave) = unsafe {
        (
            OwnedFd::from_raw_fd(master.into_raw_fd()),
            OwnedFd::from_raw_fd(slave),
        )
    };
    set_size(master.as_raw_fd(), size).map_err(PtyError::Resize)?;
    let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL).map_err(PtyError::NonBlocking)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(PtyError::NonBlocking)?;
    // SAFETY: `master` is an OwnedFd that the AsyncFd takes ownership of; it
    // stays open and unchanged until the AsyncFd is dropped.
    let fd =
        unsafe { AsyncFd::register(master) }.map_err(|e| PtyError::Register(e.into_parts().1))?;
    Ok(PtyPair {
        master: PtyMaster { fd: Arc::new(fd) },
        slave,
    })
}

/// The parent's side of a terminal. Cheap to clone; reader and writer halves
/// share one registration.
#[derive(Clone)]
pub struct PtyMaster {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl PtyMaster {
    /// Applies a new window size. The kernel sends SIGWINCH to the terminal's
    /// foreground process group if the size changed.
    pub fn resize(&self, size: TermSize) -> Result<(), PtyError> {
        set_size(self.raw_fd(), size).map_err(PtyError::Resize)
    }

    /// The current window size as the kernel holds it.
    pub fn size(&self) -> io::Result<TermSize> {
        get_size(self.raw_fd())
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    pub fn reader(&self) -> PtyReader {
        PtyReader {
            master: self.clone(),
        }
    }

    pub fn writer(&self) -> PtyWriter {
        PtyWriter {
            master: self.clone(),
        }
    }
}

/// The terminal on fd 0 of another process (its controlling terminal in
/// practice), opened through `/proc`. Used to look at, and fix, the size of
/// the terminal the engine gave a process inside a container.
pub struct ForeignTerminal {
    fd: OwnedFd,
}

impl ForeignTerminal {
    /// Opens `/proc/<pid>/fd/0` if it is a terminal. Needs the same
    /// privileges as reading that process's environment.
    pub fn of_process(pid: i32) -> Option<ForeignTerminal> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::stat::Mode;
        let path = format!("/proc/{pid}/fd/0");
        let raw = open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        nix::unistd::isatty(fd.as_raw_fd())
            .unwrap_or(false)
            .then_some(ForeignTerminal { fd })
    }

    pub fn size(&self) -> io::Result<TermSize> {
        get_size(self.fd.as_raw_fd())
    }

    /// Sets the size; the kernel signals SIGWINCH to that terminal's
    /// foreground process group.
    pub fn resize(&self, size: TermSize) -> io::Result<()> {
        set_size(self.fd.as_raw_fd(), size)
    }
}

fn get_size(fd: RawFd) -> io::Result<TermSize> {
    let mut ws = winsize(TermSize::default());
    // SAFETY: TIOCGWINSZ writes a `winsize` struct to the pointer, which
    // points to a live, writable local of exactly that type.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut Winsize) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

fn set_size(fd: RawFd, size: TermSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a `winsize` struct from the pointer, which
    // points to a live local of exactly that type.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const Winsize) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Duplicates the slave fd for one of the child's stdio slots.
pub fn dup_slave(slave: &OwnedFd) -> Result<OwnedFd, PtyError> {
    slave
        .as_fd()
        .try_clone_to_owned()
        .map_err(PtyError::DupSlave)
}

/// Output of the terminal (the child's stdout and stderr, merged).
pub struct PtyReader {
    master: PtyMaster,
}

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last slave holder closed: end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Input of the terminal (what the user types).
pub struct PtyWriter {
    master: PtyMaster,
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_ends_are_close_on_exec() {
        let pair = open(TermSize::default()).unwrap();
        for fd in [pair.slave.as_raw_fd(), pair.master.raw_fd()] {
            let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
            assert!(nix::fcntl::FdFlag::from_bits_truncate(flags)
                .contains(nix::fcntl::FdFlag::FD_CLOEXEC));
        }
    }

    #[tokio::test]
    async fn opens_with_initial_size_and_resizes() {
        let pair = open(TermSize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        assert_eq!(
            pair.master.size().unwrap(),
            TermSize {
                rows: 33,
                cols: 101
            }
        );
        pair.master.resize(TermSize { rows: 10, cols: 20 }).unwrap();
        assert_eq!(pair.master.size().unwrap(), TermSize { rows: 10, cols: 20 });
    }

    #[tokio::test]
    async fn foreign_terminal_of_a_child_is_read_and_resized() {
        let pair = open(TermSize { rows: 5, cols: 6 }).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .stdin(std::process::Stdio::from(dup_slave(&pair.slave).unwrap()))
            .spawn()
            .unwrap();
        let term = ForeignTerminal::of_process(child.id() as i32).expect("child's stdin is a tty");
        assert_eq!(term.size().unwrap(), TermSize { rows: 5, cols: 6 });
        term.resize(TermSize { rows: 7, cols: 8 }).unwrap();
        assert_eq!(pair.master.size().unwrap(), TermSize { rows: 7, cols: 8 });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ForeignTerminal::of_process(std::process::id() as i32).is_none_or(|_| true));
    }

    #[tokio::test]
    async fn master_sees_eof_when_slave_closes() {
        let pair = open(TermSize::default()).unwrap();
        let mut writer = pair.master.writer();
        writer.write_all(b"hi\n").await.unwrap();
        // The line discipline echoes input back to the master.
        let mut reader = pair.master.reader();
        let mut buf = [0u8; 64];
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0);
        drop(pair.slave);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
    }
}
