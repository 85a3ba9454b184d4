//! A session's way to its client: [`Client`] for the session's own replies (they wait
//! for room: backpressure), [`Pusher`] for other actors that send to the client whenever
//! something happens (they never wait: a client whose queue is full is closed as too
//! slow, so one stalled reader can hold up neither the actor nor anyone else).
//!
//! ```text
//!   session ──Client::send (send_async)──▶ writer mailbox ─▶ writer ─▶ socket
//!   role's actor ──Pusher::push (try_send)──┘  full: the socket is shut, the client leaves
//! ```
//!
//! A client closed as too slow is reset: what was queued for it is dropped, not left to
//! trickle out of an orphaned socket.
//!
//! The session's plumbing owns the only [`Client`], and with it the writer's only strong
//! sender; a [`Pusher`] holds a weak reference. So when the session ends the writer
//! flushes and closes at once, however many actors still hold pushers, and their next
//! push says the client is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::net::socket::Socket;

/// One TCP client as its session sees it. Owned by the session's plumbing and lent to
/// each [`AsyncSession`](super::AsyncSession) call.
pub struct Client {
    shared: Arc<Shared>,
}

/// A handle another actor keeps to send to one client without ever waiting on it.
/// Cheap to clone; it does not keep the connection open.
#[derive(Clone)]
pub struct Pusher {
    shared: Weak<Shared>,
    /// The client's [`Client::id`], kept so a dead pusher can still be told apart.
    id: u64,
}

/// The client's writer has ended (the client left, reset, stopped reading or was closed
/// as too slow): nothing more can be sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientGone;

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client is gone")
    }
}

impl std::error::Error for ClientGone {}

struct Shared {
    id: u64,
    peer: SocketAddr,
    writer_tx: flume::Sender<Vec<u8>>,
    /// Kept only to cut off a client too slow for its pushes: its writer may be blocked
    /// on a full socket, and shutting the socket is what wakes it.
    socket: Socket,
    /// A push found the mailbox full and closed the connection.
    evicted: AtomicBool,
}

/// A fresh client id, unique in this process.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Client {
    /// A client whose writer's mailbox is `writer_tx`, on `socket`.
    pub(crate) fn new(peer: SocketAddr, writer_tx: flume::Sender<Vec<u8>>, socket: Socket) -> Self {
        let shared = Shared {
            id: next_id(),
            peer,
            writer_tx,
            socket,
            evicted: AtomicBool::new(false),
        };
        Client {
            shared: Arc::new(shared),
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// A number naming this client, unique in the process (the same as its pushers').
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues `bytes` for the client, waiting while its writer's mailbox is full (so a
    /// client that does not read stops being read). Empty input sends nothing.
    pub async fn send(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.shared
            .writer_tx
            .send_async(bytes)
            .await
            .map_err(|_| ClientGone)
    }

    /// A handle for other actors to send to this client ([`Pusher::push`]).
    pub fn pusher(&self) -> Pusher {
        Pusher {
            shared: Arc::downgrade(&self.shared),
            id: self.shared.id,
        }
    }

    /// Whether a push closed this client as too slow.
    pub(crate) fn evicted(&self) -> bool {
        self.shared.evicted.load(Ordering::Relaxed)
    }
}

impl Pusher {
    /// The client's [`Client::id`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `bytes` for the client without waiting. `false` means the client is gone
    /// — it left, or its mailbox was full and this push closed it as too slow — and the
    /// caller should forget this pusher.
    pub fn push(&self, bytes: Vec<u8>) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        match shared.writer_tx.try_send(bytes) {
            Ok(()) => true,
            Err(flume::TrySendError::Disconnected(_)) => false,
            Err(flume::TrySendError::Full(_)) => {
                if !shared.evicted.swap(true, Ordering::Relaxed) {
                    log::info!(peer = shared.peer.to_string().as_str(); "client too slow: closing it");
                    // Its writer may be stuck on a full socket: shutting the socket
                    // fails that write, and the reader sees the end too. The close then
                    // resets, so what was queued for it is thrown away at once rather
                    // than delivered, as an orphan, to a client that does not read.
                    let _ = shared.socket.reset_on_close();
                    let _ = shared.socket.shut_both();
                }
                false
            }
        }
    }

    /// Whether the client is gone (its session has ended, or a push closed it as too
    /// slow), without pushing anything.
    pub fn is_gone(&self) -> bool {
        self.shared
            .upgrade()
            .is_none_or(|shared| shared.evicted.load(Ordering::Relaxed))
    }
}
