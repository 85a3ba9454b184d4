//! The public API for byte-transforming roles: implement [`Role`] and [`Session`], and
//! [`run`] serves it over TCP and UDP with every server option (limits, access lists,
//! idle timeout, shutdown). `examples/rot13.rs` is a complete role in one small file.
//!
//! ```text
//!   TCP:  socket ─▶ Reader ─▶ Session::data ─writer_tx─▶ writer ─▶ socket
//!   UDP:  socket ─▶ receive loop ─▶ Role::datagram ─sender_tx─▶ send actor ─▶ socket
//! ```
//!
//! A session is the upstream actor of its connection. For a pure transform it runs
//! inside the reader's task: a separate task would add one cross-thread wake-up per
//! message and buy nothing, since the transform has no one else to talk to. Roles that
//! do talk to others (chat's broker, the proxy's origin) wire their own actors from
//! [`crate::net::reader`] and [`crate::net::writer`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Result;
use crate::net::listener::{self, Conn, ServerConfig};
use crate::net::reader::{Input, Reader};
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::net::udp;
use crate::net::writer::{WRITER_MAILBOX, spawn_writer_watched, writer_ended};
use crate::rt::{TcpListener, UdpSocket};

/// What a session wants after speaking first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading and replying.
    Continue,
    /// Send what was given, then close (the peer's further input is discarded).
    Close,
}

/// One TCP client's state in a role. Runs in the connection's reader task.
pub trait Session: Send + 'static {
    /// Called once when the client connects: bytes to send first, and whether to go on.
    fn open(&mut self) -> (Vec<u8>, Flow) {
        (Vec::new(), Flow::Continue)
    }

    /// Called for each chunk the client sends, in order (chunk borders are wherever TCP
    /// put them). Returns the bytes to send back, possibly none.
    fn data(&mut self, input: Vec<u8>) -> Vec<u8>;

    /// Called once when the client has finished sending: last bytes to send back.
    fn end(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

/// A service that answers TCP clients (one [`Session`] each) and, optionally, UDP datagrams.
pub trait Role: Send + Sync + 'static {
    /// Per-client state.
    type Session: Session;

    /// A name for logs.
    fn name(&self) -> &'static str;

    /// Starts a session for a new TCP client.
    fn session(&self, peer: SocketAddr) -> Self::Session;

    /// Answers one UDP datagram: `Some` reply (possibly empty) or `None` for no reply.
    fn datagram(&self, _peer: SocketAddr, _input: Vec<u8>) -> Option<Vec<u8>> {
        None
    }
}

/// The writer's send timeout when `--idle-timeout` is off: a client that stops reading
/// is closed after this long without progress even then (the keep-alive limit HTTP uses
/// when it is off), so it cannot hold its socket and its `--max-conns` slot for good.
pub const SEND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Serves `role` on the sockets given until `shutdown` fires; returns when both loops
/// have stopped (connections may still be flushing: see [`Stats::live_tasks`]).
pub async fn run<R: Role>(
    role: Arc<R>,
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
    config: Arc<ServerConfig>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let name = role.name();
    let tcp_loop = {
        let (role, stats, shutdown) = (role.clone(), stats.clone(), shutdown.clone());
        async move {
            if let Some(listener) = tcp {
                listener::serve(name, listener, config, stats, shutdown, move |conn| {
                    let session = role.session(conn.peer);
                    serve_session(conn, session)
                })
                .await;
            }
        }
    };
    let udp_loop = async move {
        if let Some(socket) = udp {
            serve_datagrams(role, socket, stats, shutdown).await;
        }
    };
    futures::join!(tcp_loop, udp_loop);
}

/// Runs one TCP session: the reader loop here, the writer as its own actor.
pub async fn serve_session<S: Session>(conn: Conn, mut session: S) -> Result<()> {
    let Conn {
        stream,
        peer,
        stats,
        idle_timeout,
    } = conn;
    // A client that stops reading while it sends would hold this reader in the writer's
    // full mailbox, where its idle timer never runs: the writer's send timeout (the same
    // limit, or SEND_TIMEOUT_DEFAULT when it is off) closes it instead.
    let (writer_tx, writer_rx) = flume::bounded::<Vec<u8>>(WRITER_MAILBOX);
    let send_timeout = idle_timeout.unwrap_or(SEND_TIMEOUT_DEFAULT);
    let (read, write) = stream.split();
    let ended_rx = spawn_writer_watched(write, writer_rx, &stats, Some(send_timeout));
    let mut reader = Reader::new(read, idle_timeout);
    let started = std::time::Instant::now();

    let (greeting, flow) = session.open();
    let mut reason = "role closed";
    if !greeting.is_empty() && writer_tx.send_async(greeting).await.is_err() {
        reason = "write failed";
    } else if flow == Flow::Continue {
        reason = loop {
            let reply = match reader.next().await {
                Ok(Input::Data(data)) => {
                    // Counted as it arrives: a reader held in the writer's full mailbox
                    // by a client that stopped reading may never get to count it later.
                    Stats::add(&stats.bytes_in, data.len() as u64);
                    session.data(data)
                }
                Ok(Input::Eof) => {
                    let last = session.end();
                    if !last.is_empty() {
                        let _ = writer_tx.send_async(last).await;
                    }
                    break "client closed";
                }
                Ok(Input::Idle) => break "idle timeout",
                Err(_) => break "reset",
            };
            if !reply.is_empty() && writer_tx.send_async(reply).await.is_err() {
                break "write failed";
            }
        };
    }
    // The writer flushes what it holds and half-closes once this last sender is gone.
    drop(writer_tx);
    if flow == Flow::Close {
        let before = reader.bytes;
        reader.linger().await;
        Stats::add(&stats.bytes_in, reader.bytes - before);
    }
    // The connection (its `--max-conns` slot, its close line) lasts as long as the
    // socket: until the writer has written what it holds, or has given up on a client
    // that stopped reading. Its end says the true reason when it did not flush.
    if let Some(why) = writer_ended(&ended_rx).await.reason() {
        reason = why;
    }
    log::debug!(peer = peer.to_string().as_str(), reason = reason, bytes_in = reader.bytes,
        ms = started.elapsed().as_millis() as u64; "connection closed");
    Ok(())
}

/// Answers datagrams with [`Role::datagram`] until `shutdown` fires.
pub async fn serve_datagrams<R: Role>(
    role: Arc<R>,
    socket: UdpSocket,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let socket = Arc::new(socket);
    let sender = udp::spawn_sender(socket.clone(), &stats);
    udp::receive_loop(socket, stats, shutdown, |peer, data| {
        let reply = role.datagram(peer, data);
        let sender = sender.clone();
        async move {
            if let Some(reply) = reply {
                sender.send(peer, reply).await;
            }
        }
    })
    .await;
}
