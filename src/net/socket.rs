//! What the kernel knows about a connection's socket, asked and set without reading or
//! writing it: keepalive, linger, the send queue (`TIOCOUTQ`), acknowledged bytes
//! (`TCP_INFO`) and whether the peer has left (`poll(POLLRDHUP)`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::rt::TcpStream;

/// How a peer left, seen without reading its socket ([`hangup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// It shut its write half (or closed): a FIN is waiting behind any unread bytes.
    Fin,
    /// The connection failed (a reset): nothing more can be read or written.
    Reset,
}

/// Whether the peer of `stream` has sent a FIN or reset, without reading anything:
/// `poll(2)` with `POLLRDHUP` and a zero timeout. Unread data is left where it is.
pub fn hangup(stream: &TcpStream) -> Option<Hangup> {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an open descriptor (we hold the stream); zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n <= 0 {
        None
    } else if pfd.revents & libc::POLLERR != 0 {
        Some(Hangup::Reset)
    } else if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 {
        Some(Hangup::Fin)
    } else {
        None
    }
}
/// Turns on TCP keepalive probes: a peer that vanished without a reset (power loss, a
/// dropped NAT entry) is noticed after `idle` of silence plus three failed probes 10 s
/// apart, instead of never.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int_option(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        idle.as_secs().clamp(1, 32_767) as libc::c_int,
    )?;
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10)?;
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
}

/// Sets one integer socket option on `fd`.
pub(crate) fn set_int_option(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on an open socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes in the socket's send queue that the peer has not acknowledged (`TIOCOUTQ`);
/// `None` if the kernel will not say.
pub(crate) fn unsent(stream: &TcpStream) -> Option<libc::c_int> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ on an open socket writes one int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

/// Bytes the peer has acknowledged on this connection (`TCP_INFO`'s `tcpi_bytes_acked`,
/// Linux 4.1 and later); `None` if the kernel will not say. It survives a reset.
fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    // struct tcp_info: tcpi_bytes_acked is the u64 at offset 120.
    const BYTES_ACKED: usize = 120 / 8;
    let (info, len) = tcp_info(stream)?;
    (len >= (BYTES_ACKED + 1) * 8).then(|| info[BYTES_ACKED])
}

/// Whether the connection is gone (reset, or given up by the kernel): a reset seen by
/// `poll`, or `TCP_INFO`'s state `TCP_CLOSE` — which stays once a read has taken the
/// reset's error, and which a writer that has not shut its socket sees no other way.
pub(crate) fn connection_gone(stream: &TcpStream) -> bool {
    const TCP_CLOSE: u8 = 7;
    hangup(stream) == Some(Hangup::Reset)
        || tcp_info(stream).is_some_and(|(info, _)| info[0].to_ne_bytes()[0] == TCP_CLOSE)
}

/// The socket's `struct tcp_info` as 64-bit words, and how many bytes the kernel filled.
fn tcp_info(stream: &TcpStream) -> Option<([u64; 32], usize)> {
    let mut info = [0u64; 32];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt on an open socket into a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some((info, len as usize))
}

/// Of the `handed` bytes this side wrote to `stream`, how many the peer has not
/// acknowledged: the larger of the send queue (`TIOCOUTQ`) and `handed` less the
/// connection's acknowledged bytes (`TCP_INFO`), which still holds when a reset has
/// emptied the queue. Read it after a write failed and before the socket is shut (a FIN
/// queued by `shutdown` would count as one more).
pub(crate) fn unacked(stream: &TcpStream, handed: u64) -> u64 {
    let queued = unsent(stream).map_or(0, |n| n.max(0) as u64);
    let by_acks = bytes_acked(stream).map_or(0, |a| handed.saturating_sub(a));
    queued.max(by_acks).min(handed)
}
/// (`SO_LINGER` {on, 0}) instead of delivering it.
pub(crate) fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt;

    fn get(fd: i32, level: i32, name: i32) -> i32 {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a correctly sized int.
        unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut value as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        value
    }

    #[test]
    fn keepalive_is_set_as_asked() {
        rt::block_on(async {
            let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            set_keepalive(&stream, Duration::from_secs(60)).unwrap();
            let fd = stream.as_raw_fd();
            assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
            assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 60);
            assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        });
    }
}
