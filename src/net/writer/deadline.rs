//! A writer's deadlines: the send timeout (no progress for that long: the peer stopped
//! reading) and the server closing, applied to any write-side wait.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::net::shutdown::Shutdown;
use crate::net::socket::Socket;
use crate::rt;

/// The error of a write that made no progress for the writer's send timeout.
#[derive(Debug)]
pub(crate) struct SendTimeout(pub(crate) Duration);

impl std::fmt::Display for SendTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "send timeout: the client stopped reading (no write progress for {:?})",
            self.0
        )
    }
}

impl std::error::Error for SendTimeout {}

/// The error of a write cut short because the server is shutting down
/// (a writer given a `close` signal, [`spawn_writer_watched`](super::spawn_writer_watched)).
#[derive(Debug)]
pub struct ServerClosing;

impl std::fmt::Display for ServerClosing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server shutting down")
    }
}

impl std::error::Error for ServerClosing {}

/// Whether `e` is a writer's send timeout (the peer stopped reading), as opposed to an
/// error from the socket.
pub fn is_send_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SendTimeout>())
}

/// Runs one write-side wait (a `write` that waits for room in `socket`) under the send
/// timeout `limit`: it fails with `TimedOut` ([`SendTimeout`]) once the peer has taken
/// nothing for that long. A write that completes at once (the common case) arms no timer,
/// and each completed write gets a fresh clock. While the write waits, the clock is also
/// reset by the peer taking bytes that were already queued: every quarter of `limit` the
/// bytes still in the kernel's send queue (`TIOCOUTQ`: unsent or unacknowledged) are
/// compared with the last look, and fewer means the peer is reading, if slowly. (The
/// kernel wakes a writer only once a third of its send buffer is free, which a slow
/// reader of a large buffer may take longer than `limit` to free.) So a peer that stops
/// reading is cut between `limit` and `limit` and a quarter after it took its last byte.
pub(crate) async fn progress<T>(
    socket: &Socket,
    limit: Option<Duration>,
    close: Option<&Shutdown>,
    wait: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let Some(close) = close else {
        return timed(socket, limit, wait).await;
    };
    if close.is_fired() {
        return Err(io::Error::other(ServerClosing));
    }
    let timed = std::pin::pin!(timed(socket, limit, wait));
    let closed = std::pin::pin!(close.wait());
    match futures::future::select(timed, closed).await {
        futures::future::Either::Left((done, _)) => done,
        futures::future::Either::Right(_) => Err(io::Error::other(ServerClosing)),
    }
}

/// [`progress`] without the close signal: the send timeout alone.
async fn timed<T>(
    socket: &Socket,
    limit: Option<Duration>,
    wait: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let Some(limit) = limit else {
        return wait.await;
    };
    let mut wait = std::pin::pin!(wait);
    if let Poll::Ready(done) = futures::poll!(wait.as_mut()) {
        return done;
    }
    let mut queued = socket.unsent();
    let mut since = Instant::now();
    loop {
        if let Some(done) = rt::timeout(limit / 4, wait.as_mut()).await {
            return done;
        }
        let now = socket.unsent();
        if now.is_some_and(|now| queued.is_some_and(|before| now < before)) {
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return Err(io::Error::new(io::ErrorKind::TimedOut, SendTimeout(limit)));
        }
        queued = now;
    }
}
