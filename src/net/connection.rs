//! One accepted TCP connection's plumbing, the same for every role: [`Connection::start`]
//! splits the [`Conn`]'s stream, spawns the writer actor on the write half, and keeps
//! the read half behind a reader that counts every byte it reads into `Stats::bytes_in`
//! and runs the idle timer; [`Connection::close`] lingers after our close, waits for the
//! writer, and logs the one close [`Reason`].
//!
//! ```text
//!   Conn ──start(Setup)──▶ Connection: next() ─▶ Event::Data / Event::End(Reason)
//!                    │       (counts bytes_in, idle timer)     close(Reason): linger,
//!                    │                                         wait for the writer, log
//!                    └──▶ writer_tx ─▶ writer actor (send timeout, the drain's end) ─▶ socket
//! ```
//!
//! A role reads with [`Connection::next`], sends through the mailbox [`Connection::start`]
//! gave it (or hands that to an actor of its own, as the chat gives its broker), and ends
//! with [`Connection::close`]. What a role chooses is in its [`Setup`]: the mailbox, the
//! idle and send timeouts, whether the writer stops at the drain's end, whether to linger.
//!
//! Try it: `switchboard echo -v`, then `nc 127.0.0.1 7007`, type a line and Ctrl-D: the
//! `connection closed` line gives the reason and the bytes read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::net::listener::Conn;
use crate::net::reader::{Input, Reader};
use crate::net::socket::Socket;
use crate::net::writer::{Outgoing, WriterEnd, spawn_writer_watched};

/// What a role asks of its connections' plumbing. [`Setup::new`] gives a mailbox and
/// nothing else; each option is a method.
#[derive(Clone, Debug)]
pub struct Setup {
    mailbox: usize,
    /// `None`: the server's (`Conn::idle_timeout`).
    idle_timeout: Option<Option<Duration>>,
    send_timeout: Option<Duration>,
    closing: bool,
    linger: bool,
    handed_off: bool,
}

impl Setup {
    /// A writer whose mailbox holds `mailbox` messages (at least one), the server's idle
    /// timeout (`--idle-timeout`), no send timeout, no linger, and a connection that
    /// lasts until its writer has ended.
    pub fn new(mailbox: usize) -> Self {
        Setup {
            mailbox: mailbox.max(1),
            idle_timeout: None,
            send_timeout: None,
            closing: false,
            linger: false,
            handed_off: false,
        }
    }

    /// The reader's idle timeout instead of the server's (`None`: none, for a role whose
    /// protocol has waits of its own): a wait for input that lasts this long ends the
    /// input with [`Reason::Idle`]. Only time spent waiting counts, not time the role
    /// spent elsewhere (waiting for mailbox room).
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// The writer's send timeout: a write that makes no progress for this long means the
    /// client stopped reading, and the writer aborts the connection. Without one, a
    /// client that stops reading holds its writer (and its slot) for good.
    pub fn send_timeout(mut self, limit: Option<Duration>) -> Self {
        self.send_timeout = limit;
        self
    }

    /// At the end of the server's drain ([`Conn::close_now`]), the writer fails the write
    /// it waits on ("server shutting down") and the connection ends, its reports saying
    /// so (HTTP's access lines).
    pub fn closing(mut self) -> Self {
        self.closing = true;
        self
    }

    /// After the role closes while the client may still be sending, discard the client's
    /// input until it closes, for at most [`LINGER`](crate::net::reader::LINGER):
    /// closing a socket with unread input sends a reset, which can destroy the last reply
    /// before the client has read it.
    pub fn linger(mut self) -> Self {
        self.linger = true;
        self
    }

    /// The writer's mailbox goes to another actor (the chat broker), which decides when
    /// the writer ends: [`Connection::close`] does not wait for it.
    pub fn handed_off(mut self) -> Self {
        self.handed_off = true;
        self
    }
}

/// Why a connection ended, as its `connection closed` line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The role closed it (a session's `Flow::Close`, HTTP's `Connection: close`).
    Role,
    /// The client closed its write half.
    Client,
    /// No input for the idle timeout.
    Idle,
    /// Reading failed: the client reset.
    Reset,
    /// The writer's send timeout: the client stopped reading.
    StoppedReading,
    /// A write failed (the client reset, or the socket was shut).
    WriteFailed,
    /// An actor pushing to the client found its mailbox full and closed it.
    TooSlow,
    /// The server is stopping (the actor the role talks to is gone).
    Shutdown,
}

impl Reason {
    /// The reason in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Role => "role closed",
            Reason::Client => "client closed",
            Reason::Idle => "idle timeout",
            Reason::Reset => "reset",
            Reason::StoppedReading => "client stopped reading",
            Reason::WriteFailed => "write failed",
            Reason::TooSlow => "too slow",
            Reason::Shutdown => "server shutting down",
        }
    }

    /// The reason a writer's end gives, when it did not flush: it says more than the
    /// reader's (which sees only that the socket was shut).
    fn of_writer(end: WriterEnd) -> Option<Reason> {
        match end {
            WriterEnd::Flushed => None,
            WriterEnd::StoppedReading => Some(Reason::StoppedReading),
            WriterEnd::Failed => Some(Reason::WriteFailed),
        }
    }
}

/// What [`Connection::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes, never empty (already counted).
    Data(Vec<u8>),
    /// The input is over: [`Reason::Client`] (end of input), [`Reason::Idle`] or
    /// [`Reason::Reset`].
    End(Reason),
}

/// One TCP client's plumbing, owned by the task that serves it (see the module notes).
pub struct Connection {
    reader: Reader,
    peer: SocketAddr,
    /// Says how the writer ended; `None` when its mailbox was handed off.
    writer_end_rx: Option<flume::Receiver<WriterEnd>>,
    /// How the writer ended, once a wait has taken it from the channel.
    writer_end: Option<WriterEnd>,
    /// The input has ended (end of input, idle timeout, reset): nothing to linger for.
    input_ended: bool,
    linger: bool,
    started: Instant,
}

impl Connection {
    /// Starts `conn`'s plumbing as `setup` says: spawns its writer and returns the
    /// connection (the read side) and the writer's mailbox. The writer flushes and
    /// half-closes once every sender is dropped.
    pub fn start<B: Outgoing>(conn: Conn, setup: Setup) -> (Connection, flume::Sender<B>) {
        let Conn {
            stream,
            peer,
            stats,
            idle_timeout,
            close_now,
            tls: _,
        } = conn;
        let (writer_tx, writer_rx) = flume::bounded::<B>(setup.mailbox);
        let (read, write) = stream.split();
        let ended_rx = spawn_writer_watched(
            write,
            writer_rx,
            &stats,
            setup.send_timeout,
            close_now.filter(|_| setup.closing),
        );
        let connection = Connection {
            reader: Reader::counted(read, setup.idle_timeout.unwrap_or(idle_timeout), stats),
            peer,
            writer_end_rx: (!setup.handed_off).then_some(ended_rx),
            writer_end: None,
            input_ended: false,
            linger: setup.linger,
            started: Instant::now(),
        };
        (connection, writer_tx)
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket beneath, for what is done to it without reading or writing.
    pub fn socket(&self) -> &Socket {
        self.reader.socket()
    }

    /// The next chunk the client sent (counted into `Stats::bytes_in`), or the end of
    /// its input and why. Cancel-safe: a wait dropped (under a timeout) loses nothing.
    pub async fn next(&mut self) -> Event {
        let event = match self.reader.next().await {
            Ok(Input::Data(data)) => return Event::Data(data),
            Ok(Input::Eof) => Event::End(Reason::Client),
            Ok(Input::Idle) => Event::End(Reason::Idle),
            Err(_) => Event::End(Reason::Reset),
        };
        self.input_ended = true;
        event
    }

    /// Waits until the writer has ended and says how: for a role that waits for a
    /// message to be written, so a writer that failed first cannot leave it waiting.
    /// [`WriterEnd::Flushed`] at once when the mailbox was handed off.
    pub async fn writer_ended(&mut self) -> WriterEnd {
        if let Some(end) = self.writer_end {
            return end;
        }
        let end = match &self.writer_end_rx {
            Some(rx) => rx.recv_async().await.unwrap_or(WriterEnd::Flushed),
            None => WriterEnd::Flushed,
        };
        self.writer_end = Some(end);
        end
    }

    /// How the writer ended, if it has.
    fn writer_end_now(&mut self) -> Option<WriterEnd> {
        if self.writer_end.is_none() {
            self.writer_end = self.writer_end_rx.as_ref()?.try_recv().ok();
        }
        self.writer_end
    }

    /// Ends the connection once the role has dropped its senders to the writer (the
    /// writer then flushes and half-closes): lingers if the setup asks and the client
    /// may still be sending, waits for the writer (the connection's `--max-conns` slot
    /// and its line last as long as the socket: until the writer has written what it
    /// holds, or given up on a client that stopped reading), and logs the reason —
    /// the writer's when it did not flush, which says more than `reason`, unless that
    /// is [`Reason::TooSlow`]. Returns the reason logged.
    pub async fn close(mut self, reason: Reason) -> Reason {
        // A client cut off (too slow, or its writer failed) has nothing left to protect.
        let cut_off = reason == Reason::TooSlow
            || self
                .writer_end_now()
                .is_some_and(|end| end != WriterEnd::Flushed);
        if self.linger && !self.input_ended && !cut_off {
            self.reader.linger().await;
        }
        let mut reason = reason;
        if self.writer_end_rx.is_some()
            && let Some(why) = Reason::of_writer(self.writer_ended().await)
            && reason != Reason::TooSlow
        {
            reason = why;
        }
        log::debug!(peer = self.peer.to_string().as_str(), reason = reason.as_str(),
            bytes_in = self.reader.bytes, ms = self.started.elapsed().as_millis() as u64;
            "connection closed");
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stats::Stats;
    use crate::net::stream::tests::pair;
    use crate::rt;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_client_that_stops_reading_gets_no_byte_beyond_the_count_and_the_reason_says_why() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let conn = Conn {
                peer: far.socket().local_addr().unwrap(),
                stream: near,
                stats: stats.clone(),
                idle_timeout: None,
                close_now: None,
                tls: None,
            };
            let setup = Setup::new(4).send_timeout(Some(Duration::from_millis(200)));
            let (mut conn, writer_tx) = Connection::start::<Vec<u8>>(conn, setup);
            let (mut far_r, mut far_w) = far.split();
            far_w.write_all(b"hello").await.unwrap();
            assert_eq!(conn.next().await, Event::Data(b"hello".to_vec()));
            // More than the two sockets' buffers hold, to a client that reads nothing:
            // the writer gives up, aborts, and the reader sees the reset.
            let sender = rt::spawn(async move {
                for _ in 0..64 {
                    if writer_tx.send_async(vec![7u8; 1 << 20]).await.is_err() {
                        break;
                    }
                }
            });
            assert_eq!(conn.next().await, Event::End(Reason::Reset));
            assert_eq!(conn.close(Reason::Reset).await, Reason::StoppedReading);
            sender.await;
            assert_eq!(stats.bytes_in.load(Relaxed), 5);
            // What the client can still read is what it had acknowledged, to the byte.
            let mut got = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match far_r.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                        break;
                    }
                }
            }
            assert_eq!(got, stats.bytes_out.load(Relaxed));
        });
    }
}
