//! Pseudo-terminals: open a pair, size it, and do non-blocking I/O on the
//! master side through the tokio reactor.
//!
//! The master fd is registered with [`AsyncFd`], so a tty session costs no
//! thread: reads and writes park on epoll like any socket. When every holder
//! of the slave side has gone, Linux reports `EIO` on the master; that is the
//! terminal's end-of-file, not an error. A master opened elsewhere (the OCI
//! runtime's, received over its console socket) is taken as it is
//! ([`PtyMaster::from_fd`]) and read and written by the same code.
//!
//! Reads go straight into the caller's spare buffer: a terminal hands out
//! at most 4 KiB per read, and zeroing a large buffer first for each one
//! would cost more than the read.

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
    #[error("the descriptor is not a pseudo-terminal master")]
    NotAMaster,
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
    Ok(PtyPair {
        master: PtyMaster::register(master)?,
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
    /// Takes a master opened elsewhere (the OCI runtime's), after checking
    /// that it is one: `TIOCGPTN` answers only on a pty master.
    pub fn from_fd(fd: OwnedFd) -> Result<PtyMaster, PtyError> {
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to the pointer, a live
        // local; it fails on anything but a pty master.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut number) } == -1 {
            return Err(PtyError::NotAMaster);
        }
        PtyMaster::register(fd)
    }

    /// Makes the master non-blocking and registers it with the reactor.
    fn register(master: OwnedFd) -> Result<PtyMaster, PtyError> {
        use nix::fcntl::OFlag;
        let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL).map_err(PtyError::NonBlocking)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(PtyError::NonBlocking)?;
        // SAFETY: `master` is an OwnedFd that the AsyncFd takes ownership
        // of; it stays open and unchanged until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(master) }
            .map_err(|e| PtyError::Register(e.into_parts().1))?;
        Ok(PtyMaster { fd: Arc::new(fd) })
    }

    /// The byte the terminal's line discipline turns into end-of-file
    /// (VEOF, normally ^D).
    pub fn eof_char(&self) -> u8 {
        use nix::sys::termios::{tcgetattr, SpecialCharacterIndices};
        tcgetattr(self.fd.get_ref())
            .map(|t| t.control_chars[SpecialCharacterIndices::VEOF as usize])
            .unwrap_or(0x04)
    }

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
    /// Opens `/proc/<pid>/fd/0` if it is a pseudo-terminal. Needs the same
    /// privileges as reading that process's environment.
    ///
    /// The process lives in the container, and the container decides what
    /// its fd 0 is: a FIFO (opening it read-write would complete another
    /// process's open), a device node, a file. So it is first opened
    /// `O_PATH` (no open of the file itself happens), checked to be a
    /// character device with a pty slave's major number on a devpts file
    /// system, and only then reopened read-write through that same handle,
    /// which pins the inode: what was checked is what is opened.
    pub fn of_process(pid: i32) -> Option<ForeignTerminal> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::stat::Mode;
        let path = format!("/proc/{pid}/fd/0");
        let raw = open(
            path.as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        let handle = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        if !is_pty_slave(&handle) {
            return None;
        }
        let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let raw = open(
            reopen.as_str(),
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

/// Unix98 pty slaves: character devices with majors 136 to 143, on a
/// devpts file system.
fn is_pty_slave(handle: &OwnedFd) -> bool {
    let Ok(stat) = nix::sys::stat::fstat(handle.as_raw_fd()) else {
        return false;
    };
    let is_char = (stat.st_mode & libc::S_IFMT) == libc::S_IFCHR;
    let major = libc::major(stat.st_rdev);
    let Ok(fs) = nix::sys::statfs::fstatfs(handle) else {
        return false;
    };
    is_char
        && (136..=143).contains(&major)
        && fs.filesystem_type() == nix::sys::statfs::DEVPTS_SUPER_MAGIC
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
    /// Reads what the terminal has, up to the buffer's room. The line
    /// discipline hands out at most 4 KiB per read(2) and refills behind
    /// it, so reads repeat while data is there: a process writing fast
    /// yields large chunks (fewer wake-ups and messages downstream), while
    /// a keystroke's echo still goes out at once (the repeat meets an
    /// empty terminal and stops).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let fd = self.master.raw_fd();
        loop {
            let mut guard = ready!(self.master.fd.poll_read_ready(cx))?;
            let mut got = false;
            while buf.remaining() > 0 {
                match read_into(fd, buf) {
                    Ok(0) => return Poll::Ready(Ok(())),
                    Ok(_) => got = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    // The last slave holder closed: end of output (after
                    // what came before it, which goes first).
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) if got => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if got || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// One read(2) into the buffer's spare room, straight into it (no zeroing
/// first).
fn read_into(fd: RawFd, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: the spare part of the buffer is only written, by read(2),
    // never read; exactly the `n` bytes read(2) reports are then marked
    // initialized.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: read(2) writes at most `unfilled.len()` bytes to the start
    // of `unfilled`, a live, writable region.
    let n = unsafe { libc::read(fd, unfilled.as_mut_ptr().cast(), unfilled.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialized these `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
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

    /// Reads repeat while the terminal has data; nothing is lost or
    /// reordered by that, and the end comes after the last byte.
    #[tokio::test]
    async fn everything_written_arrives_in_order_before_the_end() {
        let pair = open(TermSize::default()).unwrap();
        // No newlines: the slave's output processing leaves the rest alone.
        let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let expected = data.clone();
        let slave = pair.slave;
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            std::fs::File::from(slave).write_all(&data).unwrap();
        });
        let mut reader = pair.master.reader();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered or changed");
    }

    #[tokio::test]
    async fn only_a_master_is_taken_from_elsewhere() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            PtyMaster::from_fd(file.into()),
            Err(PtyError::NotAMaster)
        ));
        let pair = nix::pty::openpty(None, None).unwrap();
        let master = PtyMaster::from_fd(pair.master).unwrap();
        master.resize(TermSize { rows: 3, cols: 4 }).unwrap();
        assert_eq!(master.size().unwrap(), TermSize { rows: 3, cols: 4 });
        assert_eq!(master.eof_char(), 0x04);
    }

    /// Opens seen on `path` through inotify since `watch` was set up.
    fn opens_seen(inotify: &OwnedFd) -> usize {
        let mut buf = [0u8; 4096];
        // SAFETY: read(2) into a live, writable local buffer of that length.
        let n = unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return 0;
        }
        let mut seen = 0;
        let mut at = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes
            // with the byte buffer's alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            if event.mask & libc::IN_OPEN != 0 {
                seen += 1;
            }
            at += header + event.len as usize;
        }
        seen
    }

    /// A process whose stdin is a FIFO (what a container can arrange) is
    /// not a terminal to the resizer, and the FIFO is never opened by it:
    /// inotify sees no open (an O_PATH handle is not an open of the file);
    /// an ordinary open shows that it would.
    #[test]
    fn a_fifo_on_fd_0_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let stdin = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(stdin)
            .spawn()
            .unwrap();
        // SAFETY: plain syscalls; the fd is owned right away.
        let inotify = unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0);
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid fd and a NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0);
        assert!(ForeignTerminal::of_process(child.id() as i32).is_none());
        assert_eq!(opens_seen(&inotify), 0, "the resizer opened the FIFO");
        let _control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/fd/0", child.id()))
            .unwrap();
        assert_eq!(opens_seen(&inotify), 1, "inotify sees an ordinary open");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
