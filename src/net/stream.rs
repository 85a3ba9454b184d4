//! The connection type every role stands on: a [`Stream`] is a plain TCP socket on the
//! reactor, or a session laid over one (TLS, next) through [`Stream::over`]. It splits
//! into a [`ReadHalf`] for the reader actor and a [`WriteHalf`] for the writer actor, and
//! both give the [`Socket`] beneath for what is done to the descriptor itself.
//!
//! ```text
//!   Stream ──split──▶ ReadHalf  (Reader)      ─┐
//!                └──▶ WriteHalf (writer task) ─┼─▶ Socket: shutdown, options, TIOCOUTQ,
//!                                              ┘   TCP_INFO, POLLRDHUP watch, sendfile
//! ```
//!
//! A plain stream reads the way tokio does (tokio-rs/tokio#4840): a read that fills less
//! than the buffer has drained the socket, so the next read first waits for readiness
//! instead of asking the kernel for an EAGAIN; a full read is followed by another read
//! at once. A read returns `WouldBlock` to no one: only the kernel's EAGAIN makes the
//! half wait, and it waits on the reactor. Writes follow the same rule: a write the
//! socket took only part of means its send buffer is full, so the next write waits for
//! room first.
//!
//! A layered stream (any `AsyncRead + AsyncWrite` over the plain one) is split with a
//! lock shared by its halves, since a TLS session's state serves both directions; its
//! write half gives no raw socket ([`WriteHalf::raw`]), so the writer copies files
//! through the session instead of `sendfile`, and a `Handoff` always queues.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use rustix::net::SendFlags;

use crate::net::socket::Socket;
use crate::rt::{self, Async};

/// What a session laid over a plain stream must be: a byte stream both ways. A TLS
/// session from futures-rustls over a [`Stream`] is one.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

type Layered = Box<dyn Duplex>;

/// A connection: its byte stream and the socket beneath it.
pub struct Stream {
    socket: Socket,
    kind: Kind,
}

enum Kind {
    Plain(Plain),
    Layered(Layered),
}

/// What the plain stream knows of its socket between calls (see the module notes), for
/// reading and for writing.
#[derive(Default)]
struct Plain {
    read: Readiness,
    write: Readiness,
}

/// Where one direction of a plain socket stands between calls.
#[derive(Clone, Copy, Default)]
pub(crate) struct Readiness {
    /// The last call drained the socket (a short read) or filled it (a short write):
    /// wait for readiness before the next.
    spent: bool,
    /// A readiness wait was registered and returned `Pending`: the next poll is the
    /// wake-up, and the call is made at once. async-io takes an event that comes in the
    /// same reactor turn as the registration for a stale one, so asking it again would
    /// re-register, over and over, while the reactor waits.
    armed: bool,
}

impl Readiness {
    /// One read or write (`op`, offered `want` bytes) by the rule: wait first if the last
    /// call was short; make the call at once otherwise or after a wake-up; and register
    /// a wait only when the kernel says EAGAIN.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
        mut poll_ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
        mut op: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.armed {
                // Woken: make the call. Asking for readiness first is only to consume the
                // event, which would otherwise be taken as a fresh one after the next
                // short call; a `Pending` here has registered again, and that
                // registration serves the next wait.
                self.armed = false;
                self.spent = false;
                if let Poll::Ready(Err(e)) = poll_ready(cx) {
                    return Poll::Ready(Err(e));
                }
            } else if self.spent {
                match poll_ready(cx) {
                    Poll::Ready(Ok(())) => self.spent = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.armed = true;
                        return Poll::Pending;
                    }
                }
            }
            match op() {
                Ok(n) => {
                    self.spent = n < want;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.spent = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Stream {
    /// Puts a connected std socket (from an accept) on the reactor.
    pub fn new(stream: std::net::TcpStream) -> io::Result<Stream> {
        Ok(Stream::plain(Async::new(stream)?, false))
    }

    fn plain(io: Async<std::net::TcpStream>, opened_here: bool) -> Stream {
        Stream {
            socket: Socket::new(io, opened_here),
            kind: Kind::Plain(Plain::default()),
        }
    }

    /// Connects to `addr` (bound it with `rt::timeout` for a connect timeout).
    pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
        Ok(Stream::plain(rt::connect(addr).await?, true))
    }

    /// A session laid over a stream: bytes go through `session` (which reads and writes
    /// the stream it was built on), and `socket` is that stream's socket. This is where a
    /// TLS session joins: `Stream::over(plain.socket().clone(), tls_over(plain))`.
    pub fn over(socket: Socket, session: impl Duplex) -> Stream {
        Stream {
            socket,
            kind: Kind::Layered(Box::new(session)),
        }
    }

    /// The socket beneath.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Splits into the half the reader owns and the half the writer owns.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        let (read, write) = match self.kind {
            Kind::Plain(p) => (ReadKind::Plain(p.read), WriteKind::Plain(p.write)),
            Kind::Layered(session) => {
                let (r, w) = session.split();
                (ReadKind::Layered(r), WriteKind::Layered(w))
            }
        };
        let socket = self.socket;
        (
            ReadHalf {
                socket: socket.clone(),
                kind: read,
            },
            WriteHalf {
                socket,
                kind: write,
            },
        )
    }
}

/// One read by the plain rule.
fn poll_read_plain(
    socket: &Socket,
    state: &mut Readiness,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let io = socket.io();
    let want = buf.len();
    state.poll(
        cx,
        want,
        |cx| io.poll_readable(cx),
        || io.get_ref().read(buf),
    )
}

/// One write by the plain rule.
fn poll_write_plain(
    socket: &Socket,
    state: &mut Readiness,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let io = socket.io();
    state.poll(
        cx,
        buf.len(),
        |cx| io.poll_writable(cx),
        || io.get_ref().write(buf),
    )
}

/// Closing a plain stream's write side: a FIN after what is queued.
fn close_plain(socket: &Socket) -> Poll<io::Result<()>> {
    Poll::Ready(match socket.shut_write() {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    })
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Plain(p) => poll_read_plain(&this.socket, &mut p.read, cx, buf),
            Kind::Layered(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Plain(p) => poll_write_plain(&this.socket, &mut p.write, cx, buf),
            Kind::Layered(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Plain(_) => Poll::Ready(Ok(())),
            Kind::Layered(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Plain(_) => close_plain(&this.socket),
            Kind::Layered(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// The read side of a [`Stream`]: what a reader owns.
pub struct ReadHalf {
    socket: Socket,
    kind: ReadKind,
}

enum ReadKind {
    Plain(Readiness),
    Layered(futures::io::ReadHalf<Layered>),
}

impl ReadHalf {
    /// The socket beneath.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.kind {
            ReadKind::Plain(state) => poll_read_plain(&this.socket, state, cx, buf),
            ReadKind::Layered(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The write side of a [`Stream`]: what a writer owns. Closing it sends the peer end of
/// input (and, for a session, its own closing message first).
pub struct WriteHalf {
    socket: Socket,
    kind: WriteKind,
}

enum WriteKind {
    Plain(Readiness),
    Layered(futures::io::WriteHalf<Layered>),
}

impl WriteHalf {
    /// The socket beneath.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Writes as `write` does, telling the kernel that more follows at once (`MSG_MORE`
    /// on a plain socket): the bytes leave with what comes next — a response's head with
    /// the first of the file `sendfile` sends after it — instead of as a small segment of
    /// their own. Only for bytes that something else is sure to follow; through a
    /// session it is a plain write.
    pub async fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        let WriteHalf { socket, kind } = self;
        let socket = &*socket;
        std::future::poll_fn(|cx| match kind {
            WriteKind::Plain(state) => {
                let io = socket.io();
                state.poll(
                    cx,
                    buf.len(),
                    |cx| io.poll_writable(cx),
                    || {
                        let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
                        rustix::net::send(socket, buf, flags).map_err(io::Error::from)
                    },
                )
            }
            WriteKind::Layered(w) => Pin::new(w).poll_write(cx, buf),
        })
        .await
    }

    /// The socket, when bytes written straight to it reach the peer as they are (a plain
    /// stream): only then may a file go by `sendfile` or a producer write around the
    /// writer. `None` under a session, whose bytes must pass through it.
    pub fn raw(&self) -> Option<&Socket> {
        match self.kind {
            WriteKind::Plain(_) => Some(&self.socket),
            WriteKind::Layered(_) => None,
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.kind {
            WriteKind::Plain(state) => poll_write_plain(&this.socket, state, cx, buf),
            WriteKind::Layered(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            WriteKind::Plain(_) => Poll::Ready(Ok(())),
            WriteKind::Layered(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.kind {
            WriteKind::Plain(_) => close_plain(&this.socket),
            WriteKind::Layered(w) => Pin::new(w).poll_close(cx),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::io::AsyncWriteExt;

    /// A connected pair of plain streams on loopback.
    pub(crate) async fn pair() -> (Stream, Stream) {
        let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = Stream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, Stream::new(far).unwrap())
    }

    /// A plain stream laid over itself, as a TLS session over its socket would be: the
    /// layered path with no cipher.
    pub(crate) fn layered(plain: Stream) -> Stream {
        Stream::over(plain.socket().clone(), plain)
    }

    #[test]
    fn halves_carry_bytes_both_ways_plain_and_layered() {
        rt::block_on(async {
            for wrap in [false, true] {
                let (near, far) = pair().await;
                let near = if wrap { layered(near) } else { near };
                let (mut near_r, mut near_w) = near.split();
                assert_eq!(near_w.raw().is_some(), !wrap);
                let (mut far_r, mut far_w) = far.split();
                let big: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
                let sending = big.clone();
                let sender = rt::spawn(async move {
                    near_w.write_all(&sending).await.unwrap();
                    near_w.close().await.unwrap();
                });
                let mut got = Vec::new();
                far_r.read_to_end(&mut got).await.unwrap();
                sender.await;
                assert!(got == big, "bytes changed on the way");
                far_w.write_all(b"back").await.unwrap();
                far_w.close().await.unwrap();
                let mut back = Vec::new();
                near_r.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"back");
            }
        });
    }
}
