//! Reporting written messages once the peer has acknowledged them: what the HTTP access
//! log says a client got.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::net::reader::STALL_CHECK;
use crate::net::shutdown::Shutdown;
use crate::net::socket::Socket;
use crate::net::writer::deadline::{SendTimeout, ServerClosing};
use crate::net::writer::{ACK_CHECK_FIRST, Counter, Outgoing};
use crate::rt;

/// A message written in full, waiting for the peer to acknowledge its last byte before
/// it is reported.
pub(crate) struct Unconfirmed<B> {
    pub(crate) message: B,
    /// Of its bytes, and of its file region, what was written.
    pub(crate) bytes: usize,
    pub(crate) file: u64,
    /// Where it ends in the connection's stream: the writer's count after its last byte.
    pub(crate) end: u64,
}

/// Reports the messages in `unconfirmed` that end within `acked` bytes of the stream as
/// written; with `failed`, every other one too, as far as `acked` reaches into it
/// (head first, then file) and stopped by that error.
pub(crate) fn settle<B: Outgoing>(
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
    acked: u64,
    failed: Option<&io::Error>,
) {
    while let Some(u) = unconfirmed.front() {
        if u.end > acked && failed.is_none() {
            break;
        }
        let mut u = unconfirmed.pop_front().expect("a front message");
        let len = u.bytes as u64 + u.file;
        let start = u.end - len;
        let got = acked.clamp(start, u.end) - start;
        if got == len {
            u.message.written(u.bytes, u.file, None);
        } else {
            let bytes = got.min(u.bytes as u64);
            u.message.written(bytes as usize, got - bytes, failed);
        }
    }
}

/// [`settle`] with what the peer has acknowledged now (the writer's count less the send
/// queue); everything, if the kernel will not say.
pub(crate) fn settle_acked<B: Outgoing>(
    socket: &Socket,
    count: &Counter<'_>,
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
) {
    let queued = socket.unsent().map_or(0, |n| n.max(0) as u64);
    settle(unconfirmed, count.handed.saturating_sub(queued), None);
}

/// While messages wait for the peer's acknowledgement and the mailbox is empty: waits for
/// the next message (`Ok(None)`: every sender is gone), looking at the connection now
/// and then (from [`ACK_CHECK_FIRST`], doubling to [`STALL_CHECK`]) to report what was
/// acknowledged. Each look is one `TCP_INFO` ([`Socket::ack_look`]): whether the
/// connection is gone and how far the acknowledgement has come.
/// A reset seen meanwhile, a send queue that does not shrink for `send_timeout`, or
/// `close` firing is an error, as for a write. Without `writer_rx` (every sender is
/// gone): waits until all is acknowledged; without a send timeout as well, reports
/// everything as written at once (nothing would bound the wait).
pub(crate) async fn await_acks<B: Outgoing>(
    socket: &Socket,
    writer_rx: Option<&flume::Receiver<B>>,
    count: &Counter<'_>,
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> io::Result<Option<B>> {
    let mut delay = ACK_CHECK_FIRST;
    // What was unacknowledged at the last look (first at the first look: the write loop
    // has just looked, so a look here would only repeat it).
    let mut unacked = None;
    let mut since = Instant::now();
    loop {
        if unconfirmed.is_empty() {
            return match writer_rx {
                Some(rx) => Ok(rx.recv_async().await.ok()),
                None => Ok(None),
            };
        }
        if close.is_some_and(Shutdown::is_fired) {
            return Err(io::Error::other(ServerClosing));
        }
        match writer_rx {
            // (A flume receive dropped on the timeout loses no message.)
            Some(rx) => match rt::timeout(delay, rx.recv_async()).await {
                Some(Ok(b)) => return Ok(Some(b)),
                Some(Err(_)) => {
                    // The last sender went: a peer that reset is why, often.
                    if socket.connection_gone() {
                        return Err(io::ErrorKind::ConnectionReset.into());
                    }
                    return Ok(None);
                }
                None => {}
            },
            None if send_timeout.is_none() => {
                settle(unconfirmed, u64::MAX, None);
                return Ok(None);
            }
            None => rt::sleep(delay).await,
        }
        let look = socket.ack_look(count.handed);
        if look.gone {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        // Everything, if the kernel will not say (as `settle_acked`).
        let acked = count.handed.saturating_sub(look.unacked.unwrap_or(0));
        settle(unconfirmed, acked, None);
        let now = look.unacked;
        if now.is_some_and(|now| unacked.is_some_and(|before| now < before)) {
            since = Instant::now();
        } else if let Some(limit) = send_timeout.filter(|l| since.elapsed() >= *l) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, SendTimeout(limit)));
        }
        unacked = now;
        delay = (delay * 2).min(STALL_CHECK);
    }
}
