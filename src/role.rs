//! The public API for writing a role, in two tiers, and [`run`], which serves one over
//! TCP and UDP with every server option (limits, access lists, idle and send timeouts,
//! shutdown).
//!
//! - **Tier one, a transform** ([`Session`]): each chunk a client sends becomes the bytes
//!   sent back, computed on the spot. `examples/rot13.rs` is a complete one.
//! - **Tier two, a session that talks to others** ([`AsyncSession`]): its methods are
//!   async, so it can ask an actor of the role's own and wait for the answer, and it
//!   replies through its [`Client`], whose [`Pusher`] other actors use to send to the
//!   client at any time. `examples/kv.rs` (a key-value store shared by all clients, with
//!   changes pushed to watchers) is a complete one.
//!
//! ```text
//!   TCP:  socket ─▶ Reader ─▶ session (data) ──client.send──▶ writer ─▶ socket
//!                                │ ask, await reply      ▲
//!                                ▼                       │ Pusher::push (try_send)
//!                             role's actor ──────────────┘
//!   UDP:  socket ─▶ receive loop ─▶ Role::datagram ─sender_tx─▶ send actor ─▶ socket
//! ```
//!
//! A session is the upstream actor of its connection and runs inside the reader's task:
//! a separate task would add one cross-thread wake-up per message and buy nothing, since
//! everything a session says to others goes through their own mailboxes. The plumbing
//! around it is the same for both tiers, and for every other role: the writer actor,
//! byte counts, the idle timer, the linger after a close, and the close reason
//! ([`Connection`](crate::net::connection::Connection), which [`serve_session`] runs). A
//! line protocol frames its input with [`Lines`].

pub mod client;
pub mod lines;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use client::{Client, ClientGone, Pusher};
pub use lines::{LineTooLong, Lines};

use crate::Result;
use crate::net::connection::{Connection, Event, Reason, Setup};
use crate::net::listener::{self, Conn, Listeners, ServerConfig};
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::net::udp;
use crate::net::writer::WRITER_MAILBOX;
use crate::rt::UdpSocket;

/// What a session wants after it has spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading and replying.
    Continue,
    /// Send what was given, then close (the peer's further input is discarded).
    Close,
}

/// Tier one: one TCP client's state in a role that transforms what it reads. Runs in
/// the connection's reader task; what a method returns is sent before the next input
/// is read.
pub trait Session: Send + 'static {
    /// Called once when the client connects: bytes to send first, and whether to go on.
    fn open(&mut self) -> (Vec<u8>, Flow) {
        (Vec::new(), Flow::Continue)
    }

    /// Called for each chunk the client sends, in order (chunk borders are wherever TCP
    /// put them): the bytes to send back (possibly none), and whether to go on.
    fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, Flow);

    /// Called once when the client has finished sending: last bytes to send back.
    fn end(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

/// Tier two: one TCP client's state in a role whose sessions talk to others (an actor
/// of the role's own, each other). Runs in the connection's reader task; while a method
/// awaits, the client is not read, so a slow answer slows the client, not the server.
///
/// Replies go through the [`Client`]; to let another actor send to this client later,
/// give it [`Client::pusher`]. Every [`Session`] is an `AsyncSession` too.
pub trait AsyncSession: Send + 'static {
    /// Messages the client's writer holds. A session's own [`Client::send`] waits when
    /// it is full (backpressure: the client is not read until it reads); a
    /// [`Pusher::push`] into a full one closes the client as too slow. A role that fans
    /// out many small messages wants more than the default, which bounds a transform's
    /// chunks of up to 64 KiB.
    const MAILBOX: usize = WRITER_MAILBOX;

    /// Called once when the client connects, before anything is read.
    fn open(&mut self, _client: &Client) -> impl Future<Output = Flow> + Send {
        async { Flow::Continue }
    }

    /// Called for each chunk the client sends, in order (chunk borders are wherever TCP
    /// put them).
    fn data(&mut self, input: Vec<u8>, client: &Client) -> impl Future<Output = Flow> + Send;

    /// Called once when the client has finished sending (not after a reset, an idle
    /// timeout or [`Flow::Close`]).
    fn end(&mut self, _client: &Client) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<S: Session> AsyncSession for S {
    async fn open(&mut self, client: &Client) -> Flow {
        let (greeting, flow) = Session::open(self);
        sent(client.send(greeting).await, flow)
    }

    async fn data(&mut self, input: Vec<u8>, client: &Client) -> Flow {
        let (reply, flow) = Session::data(self, input);
        sent(client.send(reply).await, flow)
    }

    async fn end(&mut self, client: &Client) {
        let _ = client.send(Session::end(self)).await;
    }
}

/// The flow after a send: a client that is gone is closed whatever the session wanted.
fn sent(result: Result<(), ClientGone>, flow: Flow) -> Flow {
    if result.is_ok() { flow } else { Flow::Close }
}

/// A service that answers TCP clients (one session each) and, optionally, UDP datagrams.
///
/// A role that is `Clone` and its own session (`type Session = Self`) is complete with
/// this trait: each client gets a clone ([`NewSession`]). A role with a separate session
/// type says how one starts by implementing [`NewSession`].
pub trait Role: Send + Sync + 'static {
    /// Per-client state: a [`Session`] or an [`AsyncSession`].
    type Session: AsyncSession;

    /// A name for logs.
    fn name(&self) -> &'static str;

    /// Answers one UDP datagram: `Some` reply (possibly empty) or `None` for no reply.
    fn datagram(&self, _peer: SocketAddr, _input: Vec<u8>) -> Option<Vec<u8>> {
        None
    }
}

/// How a role starts a session for a new TCP client. Implemented already for a `Clone`
/// role that is its own session.
pub trait NewSession: Role {
    /// Starts a session for the client at `peer`.
    fn session(&self, peer: SocketAddr) -> Self::Session;
}

impl<R: Role<Session = R> + Clone> NewSession for R {
    fn session(&self, _peer: SocketAddr) -> R {
        self.clone()
    }
}

/// The writer's send timeout when `--idle-timeout` is off: a client that stops reading
/// is closed after this long without progress even then (the keep-alive limit HTTP uses
/// when it is off), so it cannot hold its socket and its `--max-conns` slot for good.
pub const SEND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// Serves `role` on the sockets given until `shutdown` fires; returns when both loops
/// have stopped (connections may still be flushing: see [`Stats::live_tasks`]).
pub async fn run<R: NewSession>(
    role: Arc<R>,
    tcp: impl Into<Listeners>,
    udp: Option<UdpSocket>,
    config: Arc<ServerConfig>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let name = role.name();
    let retire = config.retire.clone();
    let tcp_loops = tcp
        .into()
        .with_configs(&config)
        .into_iter()
        .map(|(listener, config)| {
            let (role, stats, shutdown) = (role.clone(), stats.clone(), shutdown.clone());
            listener::serve(name, listener, config, stats, shutdown, move |conn| {
                let session = role.session(conn.peer);
                serve_session(conn, session)
            })
        });
    let tcp_loop = futures::future::join_all(tcp_loops.collect::<Vec<_>>());
    let udp_loop = async move {
        if let Some(socket) = udp {
            // A retired generation (a reload) stops receiving; its sessions are datagrams.
            let stop = match &retire {
                Some(retire) => Shutdown::either(&shutdown, retire),
                None => shutdown,
            };
            serve_datagrams(role, socket, stats, stop).await;
        }
    };
    futures::join!(tcp_loop, udp_loop);
}

/// Runs one TCP session on the connection's plumbing ([`Connection`]): the reader loop
/// here, the writer as its own actor.
pub async fn serve_session<S: AsyncSession>(conn: Conn, mut session: S) -> Result<()> {
    // A client that stops reading while it sends would hold this reader in the writer's
    // full mailbox, where its idle timer never runs: the writer's send timeout (the same
    // limit, or SEND_TIMEOUT_DEFAULT when it is off) closes it instead.
    let setup = Setup::new(S::MAILBOX)
        .send_timeout(Some(conn.idle_timeout.unwrap_or(SEND_TIMEOUT_DEFAULT)))
        .linger();
    let (mut conn, writer_tx) = Connection::start(conn, setup);
    let client = Client::new(conn.peer(), writer_tx, conn.socket().clone());

    let mut reason = Reason::Role;
    if session.open(&client).await == Flow::Continue {
        reason = loop {
            match conn.next().await {
                Event::Data(data) => {
                    if session.data(data, &client).await == Flow::Close {
                        break Reason::Role;
                    }
                }
                Event::End(Reason::Client) => {
                    session.end(&client).await;
                    break Reason::Client;
                }
                Event::End(why) => break why,
            }
        };
    }
    if client.evicted() {
        reason = Reason::TooSlow;
    }
    // The writer flushes what it holds and half-closes once this, the one strong
    // sender, is gone; pushers hold weak ones, so no other actor keeps the socket open.
    drop(client);
    conn.close(reason).await;
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
