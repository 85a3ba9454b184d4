//! The socket calls neither rustix nor std offers safely, kept raw in one place: the
//! send queue's size (`TIOCOUTQ`), `struct tcp_info` (`TCP_INFO`), and taking a
//! descriptor this process was started with (systemd's socket activation).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Bytes in the socket's send queue that the peer has not acknowledged (`TIOCOUTQ`);
/// `None` if the kernel will not say.
pub(crate) fn outq(fd: BorrowedFd<'_>) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is borrowed, so it is open for the call; TIOCOUTQ writes one int,
    // and `n` is one int that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

/// The socket's `struct tcp_info` as 64-bit words, and how many bytes the kernel filled.
pub(crate) fn tcp_info(fd: BorrowedFd<'_>) -> Option<([u64; 32], usize)> {
    let mut info = [0u64; 32];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is borrowed, so it is open for the call; the kernel writes at most
    // `len` bytes into `info`, which is exactly `len` bytes long, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some((info, len as usize))
}

/// Takes ownership of descriptor `fd`, passed to this process when it started (by
/// systemd: `LISTEN_FDS`), if it is open; `None` if it is not.
pub(crate) fn inherited_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed descriptor it
    // fails with EBADF and touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open (just checked), and nothing else in this process owns it:
    // systemd passes descriptors from 3 on for the process to take, this is called once
    // per descriptor at start, before any socket of our own is made, and the caller
    // checked LISTEN_PID names this process.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
