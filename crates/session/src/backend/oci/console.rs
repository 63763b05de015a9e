//! The exec'd process's terminal: the runtime's `--console-socket`, over
//! which it hands execd the pty master it opened inside the container.
//!
//! The socket lives in the start's private directory (0700, root's) and
//! takes one connection: from the runtime, which sends the master with
//! `SCM_RIGHTS`. What arrives is checked to be a pty master (`TIOCGPTN`
//! answers only on one) before it is used. nix's `recvmsg` is behind its
//! `uio` feature, which this crate does not enable, so the one call is
//! made through libc.
//!
//! The master is then a [`PtyMaster`] like the one the CLI backend opens:
//! the same non-blocking reads and writes on epoll, `EIO` (every holder of
//! the slave gone) as end-of-file, sizes set on it directly.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::io::Interest;
use tokio::net::UnixListener;

use crate::pty::{PtyError, PtyMaster};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the runtime closed the console socket without sending a terminal")]
    NothingSent,
    #[error("the runtime sent something that is not a pseudo-terminal master")]
    NotAMaster,
    #[error("setting up the terminal: {0}")]
    Setup(#[source] io::Error),
}

/// The listening console socket.
pub struct ConsoleSocket {
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens on `path`, inside a directory only execd can enter.
    pub fn bind(path: &Path) -> Result<ConsoleSocket, ConsoleError> {
        let listener = UnixListener::bind(path).map_err(ConsoleError::Socket)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(ConsoleError::Socket)?;
        Ok(ConsoleSocket { listener })
    }

    /// Accepts the runtime's connection and receives the master from it.
    /// Cancel-safe until a connection was accepted.
    pub async fn receive(&self) -> Result<PtyMaster, ConsoleError> {
        let (stream, _) = self.listener.accept().await.map_err(ConsoleError::Socket)?;
        // Only a process of execd's own user can have reached the private
        // directory; check anyway, it costs nothing.
        let peer = stream.peer_cred().map_err(ConsoleError::Socket)?;
        if peer.uid() != nix::unistd::geteuid().as_raw() {
            return Err(ConsoleError::Socket(io::Error::other(format!(
                "connection from uid {}",
                peer.uid()
            ))));
        }
        let fd = loop {
            stream.readable().await.map_err(ConsoleError::Socket)?;
            match stream.try_io(Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
                Ok(Some(fd)) => break fd,
                Ok(None) => return Err(ConsoleError::NothingSent),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ConsoleError::Socket(e)),
            }
        };
        PtyMaster::from_fd(fd).map_err(|e| match e {
            PtyError::NotAMaster => ConsoleError::NotAMaster,
            other => ConsoleError::Setup(io::Error::other(other)),
        })
    }
}

/// One `recvmsg` with room for a few descriptors; returns the first one
/// (any others are closed), `None` at end-of-stream.
fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    // The runtime sends the terminal's name as the payload.
    let mut data = [0u8; 512];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64s keep the buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes at most iov_len bytes into `data` and at most
    // msg_controllen bytes into `control`, both live locals; the received
    // descriptors are close-on-exec from the start.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel just
    // filled, bounded by msg_controllen; every SCM_RIGHTS payload is an
    // array of ints, each a new descriptor owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<libc::c_int>();
                let first = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(first.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if fds.is_empty() {
        return if n == 0 {
            Ok(None)
        } else {
            Err(io::Error::other("a message without a descriptor"))
        };
    }
    Ok(fds.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TermSize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the runtime does: connect and send the master with SCM_RIGHTS.
    fn send_fd(path: &Path, fd: RawFd) {
        let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        let mut name = *b"/dev/pts/x";
        let mut iov = libc::iovec {
            iov_base: name.as_mut_ptr().cast(),
            iov_len: name.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: a zeroed msghdr is valid; the CMSG_* helpers write one
        // SCM_RIGHTS header and one int inside `control`, which is large
        // enough; sendmsg only reads the live locals it points to.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
            assert!(libc::sendmsg(stream.as_raw_fd(), &msg, 0) > 0);
        }
    }

    #[tokio::test]
    async fn a_master_arrives_and_carries_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let socket = ConsoleSocket::bind(&path).unwrap();
        let pair = nix::pty::openpty(None, None).unwrap();
        let sender = {
            let path = path.clone();
            let fd = pair.master.as_raw_fd();
            std::thread::spawn(move || send_fd(&path, fd))
        };
        let master = socket.receive().await.unwrap();
        sender.join().unwrap();
        drop(pair.master);
        master.resize(TermSize { rows: 9, cols: 33 }).unwrap();
        assert_eq!(master.size().unwrap(), TermSize { rows: 9, cols: 33 });
        assert_eq!(master.eof_char(), 0x04);
        master.writer().write_all(b"hi\n").await.unwrap();
        let mut buf = [0u8; 16];
        let n = master.reader().read(&mut buf).await.unwrap();
        assert!(n > 0, "the line discipline echoes");
        drop(pair.slave);
        let mut rest = Vec::new();
        master.reader().read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test]
    async fn anything_but_a_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let socket = ConsoleSocket::bind(&path).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let sender = {
            let path = path.clone();
            let fd = file.as_raw_fd();
            std::thread::spawn(move || send_fd(&path, fd))
        };
        assert!(matches!(
            socket.receive().await,
            Err(ConsoleError::NotAMaster)
        ));
        sender.join().unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
