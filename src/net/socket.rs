//! A connection's socket as the kernel sees it, below whatever stream runs over it:
//! the handle every stream type gives ([`Socket`]) for what is asked and set without
//! reading or writing — shutting halves, keepalive, linger, the send queue
//! (`TIOCOUTQ`), acknowledged bytes (`TCP_INFO`) and whether the peer has left
//! (`poll(POLLRDHUP)`).
//!
//! A TLS session and a plain stream both sit on one of these, so the writer's progress
//! checks, the reader's hangup watch and the accept loop's shutdown work the same for
//! both.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::{ArcWake, AtomicWaker};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::sockopt;

use crate::net::sys;
use crate::rt::Async;

/// A shared handle to a connection's TCP socket; cloning it costs no descriptor. The
/// socket closes when the last handle (and the stream that gave it) is gone.
#[derive(Clone)]
pub struct Socket {
    io: Arc<Async<std::net::TcpStream>>,
    /// This side opened the connection (a `connect`): the kernel then counts its SYN in
    /// `tcpi_bytes_acked`, one more than the data acknowledged.
    opened_here: bool,
}

/// How a peer left, seen without reading its socket ([`Socket::hangup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// It shut its write half (or closed): a FIN is waiting behind any unread bytes.
    Fin,
    /// The connection failed (a reset): nothing more can be read or written.
    Reset,
}

impl Socket {
    /// A socket on the reactor; `opened_here` for one this side connected (not accepted).
    pub(crate) fn new(io: Async<std::net::TcpStream>, opened_here: bool) -> Socket {
        Socket {
            io: Arc::new(io),
            opened_here,
        }
    }

    /// The reactor's hold on the socket, for the plain stream's reads and writes.
    pub(crate) fn io(&self) -> &Async<std::net::TcpStream> {
        &self.io
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// This side's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Turns Nagle's algorithm off (`true`): small replies go out at once.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(on)
    }

    /// Waits until the socket has something to read (or an error or end of input to
    /// report), reading nothing: for work done straight on the descriptor (`splice`).
    /// A wake-up from the reactor is taken as readiness (see `stream::Readiness`), so the
    /// caller's next call may still find EAGAIN and wait again. One waiter per direction:
    /// a reader's reads wait the same way.
    pub async fn readable(&self) -> io::Result<()> {
        woken_or_ready(|cx| self.io.poll_readable(cx)).await
    }

    /// Waits until the socket has room to write, writing nothing (`sendfile` waits so),
    /// as [`Socket::readable`] does.
    pub async fn writable(&self) -> io::Result<()> {
        woken_or_ready(|cx| self.io.poll_writable(cx)).await
    }

    /// Looks at the next bytes the peer sent without taking them (`MSG_PEEK`), waiting
    /// until there are some: how many were copied into `buf` (0 at end of input). The
    /// TLS accept path reads the first byte so, to tell a ClientHello from plain text
    /// before any TLS code answers.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(self, &mut *buf, rustix::net::RecvFlags::PEEK) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.readable().await?;
        }
    }

    /// Stops reading: a reader waiting on the socket sees end of input.
    pub fn shut_read(&self) -> io::Result<()> {
        self.io.get_ref().shutdown(Shutdown::Read)
    }

    /// Stops writing: the peer sees end of input after what is queued (a FIN).
    pub fn shut_write(&self) -> io::Result<()> {
        self.io.get_ref().shutdown(Shutdown::Write)
    }

    /// Stops both: the reader and the writer on this socket fail or end at once.
    pub fn shut_both(&self) -> io::Result<()> {
        self.io.get_ref().shutdown(Shutdown::Both)
    }

    /// Turns on TCP keepalive probes: a peer that vanished without a reset (power loss, a
    /// dropped NAT entry) is noticed after `idle` of silence plus three failed probes 10 s
    /// apart, instead of never.
    pub fn set_keepalive(&self, idle: Duration) -> io::Result<()> {
        sockopt::set_socket_keepalive(self, true)?;
        sockopt::set_tcp_keepidle(
            self,
            idle.clamp(Duration::from_secs(1), Duration::from_secs(32_767)),
        )?;
        sockopt::set_tcp_keepintvl(self, Duration::from_secs(10))?;
        sockopt::set_tcp_keepcnt(self, 3)?;
        Ok(())
    }

    /// Makes the socket's close send a reset and discard what it still holds
    /// (`SO_LINGER` {on, 0}) instead of delivering it.
    pub fn reset_on_close(&self) -> io::Result<()> {
        sockopt::set_socket_linger(self, Some(Duration::ZERO))?;
        Ok(())
    }

    /// Ends the connection now: a reset goes to the peer at once and whatever the send
    /// queue holds is dropped, while the descriptor stays open for whoever still holds
    /// it (`connect` with `AF_UNSPEC`, the kernel's `tcp_disconnect`); a reader waiting
    /// on it wakes with the reset. A writer that gives up aborts so before it reports its
    /// count: a socket left to close later would go on delivering, to a peer that opens
    /// its window meanwhile, bytes the count has already taken back. Where the kernel
    /// refuses, the close is made a reset ([`Socket::reset_on_close`]) and the read half
    /// shut, so the reader still wakes.
    pub fn abort(&self) -> io::Result<()> {
        if rustix::net::connect_unspec(self).is_ok() {
            return Ok(());
        }
        self.reset_on_close()?;
        self.shut_read()
    }

    /// Whether the peer has sent a FIN or reset, without reading anything: `poll(2)` with
    /// `POLLRDHUP` and a zero timeout. Unread data is left where it is.
    pub fn hangup(&self) -> Option<Hangup> {
        let mut fds = [PollFd::new(self, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        let revents = fds[0].revents();
        if revents.contains(PollFlags::ERR) {
            Some(Hangup::Reset)
        } else if revents.intersects(PollFlags::RDHUP | PollFlags::HUP) {
            Some(Hangup::Fin)
        } else {
            None
        }
    }

    /// Bytes in the send queue that the peer has not acknowledged (`TIOCOUTQ`); `None`
    /// if the kernel will not say.
    pub fn unsent(&self) -> Option<i32> {
        sys::outq(self.as_fd())
    }

    /// Bytes the peer has acknowledged on this connection (`TCP_INFO`'s
    /// `tcpi_bytes_acked`, Linux 4.1 and later); `None` if the kernel will not say. It
    /// survives a reset.
    fn bytes_acked(&self) -> Option<u64> {
        let (info, len) = sys::tcp_info(self.as_fd())?;
        self.data_acked(&info, len)
    }

    /// The data bytes acknowledged, from a `struct tcp_info` of `len` bytes: its
    /// `tcpi_bytes_acked` (the u64 at offset 120) less our SYN when we sent one.
    fn data_acked(&self, info: &[u64; 32], len: usize) -> Option<u64> {
        const BYTES_ACKED: usize = 120 / 8;
        (len >= (BYTES_ACKED + 1) * 8)
            .then(|| info[BYTES_ACKED].saturating_sub(u64::from(self.opened_here)))
    }

    /// Whether the connection is gone (reset, or given up by the kernel): a reset seen by
    /// `poll`, or `TCP_INFO`'s state `TCP_CLOSE` — which stays once a read has taken the
    /// reset's error, and which a writer that has not shut its socket sees no other way.
    pub(crate) fn connection_gone(&self) -> bool {
        const TCP_CLOSE: u8 = 7;
        self.hangup() == Some(Hangup::Reset)
            || sys::tcp_info(self.as_fd())
                .is_some_and(|(info, _)| info[0].to_ne_bytes()[0] == TCP_CLOSE)
    }

    /// One look for a writer waiting for acknowledgements, with one `TCP_INFO` where the
    /// kernel gives `tcpi_bytes_acked`: whether the connection is gone (as
    /// [`Socket::connection_gone`] says), and how many of the `handed` bytes this side
    /// wrote the peer has not acknowledged (`None` if the kernel will not say). Where
    /// `TCP_INFO` is older, the same from `poll`, `TCP_INFO`'s state and `TIOCOUTQ`.
    pub(crate) fn ack_look(&self, handed: u64) -> AckLook {
        const TCP_CLOSE: u8 = 7;
        let info = sys::tcp_info(self.as_fd());
        match info.and_then(|(info, len)| Some((info, self.data_acked(&info, len)?))) {
            Some((info, acked)) => AckLook {
                gone: info[0].to_ne_bytes()[0] == TCP_CLOSE,
                unacked: Some(handed.saturating_sub(acked)),
            },
            None => AckLook {
                gone: self.connection_gone(),
                unacked: self.unsent().map(|n| n.max(0) as u64),
            },
        }
    }

    /// Of the `handed` bytes this side wrote, how many the peer has not acknowledged: the
    /// larger of the send queue (`TIOCOUTQ`) and `handed` less the connection's
    /// acknowledged bytes (`TCP_INFO`), which still holds when a reset has emptied the
    /// queue. Read it after a write failed and before the socket is shut (a FIN queued by
    /// `shutdown` would count as one more).
    pub(crate) fn unacked(&self, handed: u64) -> u64 {
        let queued = self.unsent().map_or(0, |n| n.max(0) as u64);
        let by_acks = self.bytes_acked().map_or(0, |a| handed.saturating_sub(a));
        queued.max(by_acks).min(handed)
    }
}

/// What [`Socket::ack_look`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckLook {
    /// The connection is gone (reset, or given up by the kernel).
    pub(crate) gone: bool,
    /// Bytes written and not yet acknowledged by the peer.
    pub(crate) unacked: Option<u64>,
}

/// Completes when `poll_ready` says ready or once the reactor has woken the wait it
/// registered: async-io may call an event stale and answer `Pending` again, though its
/// wake-up was real (see `stream::Readiness`). Only a real wake-up counts, not a poll
/// from elsewhere (a timer beside it), so a send timeout around the wait still runs.
/// The event that woke it is consumed before it completes, as `Readiness` consumes it:
/// left, the next wait would take it for a fresh one and the caller's next call would
/// find EAGAIN first.
async fn woken_or_ready(
    mut poll_ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
) -> io::Result<()> {
    let flag = Arc::new(WakeFlag::default());
    let waker = futures::task::waker(flag.clone());
    std::future::poll_fn(|cx| {
        flag.task.register(cx.waker());
        if flag.woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(Err(e)) = poll_ready(&mut Context::from_waker(&waker)) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(()));
        }
        poll_ready(&mut Context::from_waker(&waker))
    })
    .await
}

/// A waker that remembers it was woken, then wakes the task.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for WakeFlag {
    fn wake_by_ref(arc: &Arc<Self>) {
        arc.woken.store(true, Ordering::Release);
        arc.task.wake();
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::Stream;
    use crate::rt;

    #[test]
    fn keepalive_is_set_as_asked() {
        rt::block_on(async {
            let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = Stream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let socket = stream.socket();
            socket.set_keepalive(Duration::from_secs(60)).unwrap();
            assert!(sockopt::socket_keepalive(socket).unwrap());
            assert_eq!(
                sockopt::tcp_keepidle(socket).unwrap(),
                Duration::from_secs(60)
            );
            assert_eq!(sockopt::tcp_keepcnt(socket).unwrap(), 3);
        });
    }

    #[test]
    fn acknowledged_bytes_are_data_on_either_side_of_a_connection() {
        use futures::io::{AsyncReadExt, AsyncWriteExt};
        rt::block_on(async {
            let (opened, accepted) = crate::net::stream::tests::pair().await;
            // The side that connected sent a SYN, which the kernel counts as acknowledged;
            // neither side has had data acknowledged yet.
            for socket in [opened.socket(), accepted.socket()] {
                let look = socket.ack_look(0);
                assert_eq!(
                    look,
                    AckLook {
                        gone: false,
                        unacked: Some(0)
                    }
                );
                assert_eq!(socket.bytes_acked(), Some(0));
            }
            let (mut opened_r, mut opened_w) = opened.split();
            let (mut accepted_r, mut accepted_w) = accepted.split();
            opened_w.write_all(&[1; 1000]).await.unwrap();
            accepted_w.write_all(&[2; 3000]).await.unwrap();
            let mut buf = vec![0; 3000];
            accepted_r.read_exact(&mut buf[..1000]).await.unwrap();
            opened_r.read_exact(&mut buf).await.unwrap();
            for (socket, sent) in [(opened_w.socket(), 1000), (accepted_w.socket(), 3000)] {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while socket.ack_look(sent).unacked != Some(0) {
                    assert!(std::time::Instant::now() < deadline, "never acknowledged");
                    rt::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(socket.bytes_acked(), Some(sent));
                assert_eq!(socket.unacked(sent), 0);
            }
        });
    }
}
