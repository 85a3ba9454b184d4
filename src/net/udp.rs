//! A UDP endpoint as two actors: a receive loop and a send actor.
//!
//! ```text
//!   socket ──recv_from──▶ receive loop ──▶ role ──sender_tx (payload, peers)──▶ send actor ──send_to──▶ socket
//! ```
//!
//! The send actor sends what is queued; [`DatagramSender::send`] sends on the socket
//! itself while nothing is queued (a reply then wakes no actor), and anyone holding a
//! [`DatagramSender`] can queue a job for the actor: one payload for one peer, or one shared
//! payload for many (a chat line for a room), sent to each in turn. The receive loop runs until
//! shutdown; a receive error (an ICMP error surfacing, a full buffer) is logged and the
//! loop goes on, since one peer's trouble must not stop the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;

use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::rt::{self, UdpSocket};

/// The largest UDP payload over IPv4 (65,535 − 8 byte UDP header − 20 byte IP header).
pub const MAX_DATAGRAM: usize = 65_507;

/// A receive buffer that holds any datagram whole: over IPv6 a payload can be 65,527
/// bytes (65,535 − 8; the IP header is not counted), more than [`MAX_DATAGRAM`], and the
/// kernel silently cuts what does not fit. 64 KiB exceeds both, so nothing is cut.
pub const RECV_BUFFER: usize = 64 * 1024;

/// Jobs queued for sending (a job is one payload for one or many peers: a chat line for
/// a whole room is one job). When it is full, [`DatagramSender::send`] waits (the echo
/// role's receive loop: UDP has no flow control, so the kernel drops what arrives
/// meanwhile, which is UDP's contract) and the `try_` methods drop the job. Counting
/// jobs, not datagrams, is what lets one line reach a room of thousands: a queue of
/// datagrams filled up with the first thousand members' copies and dropped the rest.
pub const SEND_MAILBOX: usize = 1024;

/// What the queued jobs of [`DatagramSender::try_send_many`] may hold at once, in bytes
/// (each payload once, plus each peer address): with 1,024 jobs of up to 64 KiB for
/// up to tens of thousands of peers, the queue alone could otherwise hold hundreds of MiB.
/// A job for a room of 10,000 UDP users holds about 320 KB of addresses, so some twenty
/// such lines can wait at once — a few hundred thousand datagrams, far more than a
/// socket sends in the time a line takes to arrive.
pub const SEND_QUEUE_BYTES: usize = 8 << 20;

/// Pause after a receive error, so a persistent error cannot spin the loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// One payload and whom it goes to.
struct Job {
    payload: Payload,
    peers: Peers,
    /// What this job counts in [`Shared::queued_bytes`] (0 for jobs outside that bound).
    weight: usize,
}

enum Payload {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

enum Peers {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Shared(a) => a,
        }
    }
}

/// Counters the handles and the send actor share.
#[derive(Default)]
struct Shared {
    /// Bytes held by queued [`DatagramSender::try_send_many`] jobs (their weights).
    queued_bytes: AtomicUsize,
    /// Jobs dropped because the queue was full (each is one line, however many peers).
    dropped: AtomicU64,
    /// Jobs queued and not yet sent in full: while it is 0, [`DatagramSender::send`]
    /// sends on the socket itself (nothing queued could be overtaken).
    unsent: AtomicUsize,
}

/// The handle to a UDP endpoint's send actor.
#[derive(Clone)]
pub struct DatagramSender {
    sender_tx: flume::Sender<Job>,
    shared: Arc<Shared>,
    /// The socket and counts, for [`DatagramSender::send`]'s direct path.
    socket: Arc<UdpSocket>,
    stats: Arc<Stats>,
    /// Disconnected when the send actor ends (it carries nothing): see [`Self::finish`].
    ended_rx: flume::Receiver<std::convert::Infallible>,
}

impl DatagramSender {
    /// Sends a datagram: on the socket at once when nothing is queued and the socket
    /// takes it (a reply then wakes no send actor), else queued, waiting for room
    /// (backpressure on the caller).
    pub async fn send(&self, peer: SocketAddr, payload: Vec<u8>) {
        // Acquire: pairs with the send actor's Release after a send, so a datagram the
        // caller queued earlier is on the wire before this one goes direct.
        if self.shared.unsent.load(Ordering::Acquire) == 0 {
            match self.socket.try_send_to(&payload, peer) {
                Ok(n) => return Stats::add(&self.stats.bytes_out, n as u64),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return log::debug!(peer = peer.to_string().as_str(), error = e.to_string().as_str(); "UDP send failed");
                }
            }
        }
        let job = Job {
            payload: Payload::Owned(payload),
            peers: Peers::One(peer),
            weight: 0,
        };
        self.shared.unsent.fetch_add(1, Ordering::Relaxed);
        if self.sender_tx.send_async(job).await.is_err() {
            self.shared.unsent.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues one payload for many peers, waiting for room (outside the
    /// [`SEND_QUEUE_BYTES`] bound: for a last message that must go out, such as a
    /// server's goodbye; the peers are a list the caller holds anyway).
    pub async fn send_many(&self, payload: Arc<[u8]>, peers: Vec<SocketAddr>) {
        if peers.is_empty() {
            return;
        }
        let job = Job {
            payload: Payload::Shared(payload),
            peers: Peers::Many(peers),
            weight: 0,
        };
        self.shared.unsent.fetch_add(1, Ordering::Relaxed);
        if self.sender_tx.send_async(job).await.is_err() {
            self.shared.unsent.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues a datagram if there is room; `false` when the queue is full and it was
    /// dropped (counted in [`Self::dropped`]).
    pub fn try_send(&self, peer: SocketAddr, payload: Vec<u8>) -> bool {
        self.try_queue(Job {
            payload: Payload::Owned(payload),
            peers: Peers::One(peer),
            weight: 0,
        })
    }

    /// Queues one payload for every peer in `peers` — one job, however many peers — if
    /// the queue has a place beyond the last `reserve` (kept for the caller's
    /// [`Self::try_send`]s) and [`SEND_QUEUE_BYTES`] room (a job alone in the queue always
    /// has room); `false` when the whole job was dropped (counted in [`Self::dropped`]).
    pub fn try_send_many(
        &self,
        payload: Arc<[u8]>,
        peers: Vec<SocketAddr>,
        reserve: usize,
    ) -> bool {
        if peers.is_empty() {
            return true;
        }
        if self.queued() + reserve >= SEND_MAILBOX {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let weight = payload.len() + peers.len() * std::mem::size_of::<SocketAddr>();
        let queued = self.shared.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + weight > SEND_QUEUE_BYTES {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.shared
            .queued_bytes
            .fetch_add(weight, Ordering::Relaxed);
        let job = Job {
            payload: Payload::Shared(payload),
            peers: Peers::Many(peers),
            weight,
        };
        self.try_queue(job)
    }

    fn try_queue(&self, job: Job) -> bool {
        self.shared.unsent.fetch_add(1, Ordering::Relaxed);
        match self.sender_tx.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                self.shared.unsent.fetch_sub(1, Ordering::Relaxed);
                let job = e.into_inner();
                self.shared
                    .queued_bytes
                    .fetch_sub(job.weight, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Jobs queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.sender_tx.len()
    }

    /// Jobs dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lets go of this handle and waits until the send actor has ended: every other handle
    /// is gone and every queued datagram sent (and counted in `bytes_out`). A role calls it
    /// before returning, so a summary taken after it is complete.
    pub async fn finish(self) {
        let DatagramSender {
            sender_tx,
            ended_rx,
            ..
        } = self;
        drop(sender_tx);
        let _ = ended_rx.recv_async().await;
    }
}

/// Spawns the send actor for `socket`; it ends when every [`DatagramSender`] is dropped.
pub fn spawn_sender(socket: Arc<UdpSocket>, stats: &Arc<Stats>) -> DatagramSender {
    let (sender_tx, sender_rx) = flume::bounded::<Job>(SEND_MAILBOX);
    let (ended_tx, ended_rx) = flume::bounded(0);
    let shared = Arc::new(Shared::default());
    let (actor_socket, actor_stats) = (socket.clone(), stats.clone());
    let counters = shared.clone();
    // Not counted in `live_tasks`: that counts connection tasks, and this one lives as
    // long as the endpoint. It ends once the receive loop (and every holder) lets go;
    // [`DatagramSender::finish`] waits for that.
    rt::spawn_here(async move {
        let _ended_tx: flume::Sender<std::convert::Infallible> = ended_tx;
        while let Ok(job) = sender_rx.recv_async().await {
            let payload = job.payload.bytes();
            match &job.peers {
                Peers::One(peer) => send_one(&actor_socket, payload, *peer, &actor_stats).await,
                Peers::Many(peers) => {
                    for &peer in peers {
                        send_one(&actor_socket, payload, peer, &actor_stats).await;
                    }
                }
            }
            counters
                .queued_bytes
                .fetch_sub(job.weight, Ordering::Relaxed);
            counters.unsent.fetch_sub(1, Ordering::Release);
        }
    });
    DatagramSender {
        sender_tx,
        shared,
        socket,
        stats: stats.clone(),
        ended_rx,
    }
}

async fn send_one(socket: &UdpSocket, payload: &[u8], peer: SocketAddr, stats: &Stats) {
    match socket.send_to(payload, peer).await {
        // Counted as sent, not at the end: the count is right whenever it is read
        // (one uncontended atomic add beside a system call).
        Ok(n) => Stats::add(&stats.bytes_out, n as u64),
        Err(e) => {
            log::debug!(peer = peer.to_string().as_str(), error = e.to_string().as_str(); "UDP send failed")
        }
    }
}

/// Receives datagrams until `shutdown` fires, calling `on_datagram` for each.
///
/// `on_datagram` gets the sender's address and the payload; it is awaited before the next
/// receive, so a role that forwards with backpressure slows this loop, not memory.
pub async fn receive_loop<F, Fut>(
    socket: Arc<UdpSocket>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    mut on_datagram: F,
) where
    F: FnMut(SocketAddr, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::info!(addr = local.as_str(); "listening (UDP)");
    // One buffer for the endpoint's life: a datagram of any size fits, and nothing is
    // allocated per receive but the exact-size copy handed on.
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let got = futures::select! {
            got = socket.recv_from(&mut buf).fuse() => got,
            _ = shutdown.wait().fuse() => break,
        };
        match got {
            Ok((n, peer)) => {
                // Counted as received, not at the end: the counts are right whenever
                // they are read (the metrics), at two uncontended adds per system call.
                Stats::add(&stats.bytes_in, n as u64);
                stats.datagrams.fetch_add(1, Ordering::Relaxed);
                on_datagram(peer, buf[..n].to_vec()).await;
            }
            Err(e) => {
                log::debug!(error = e.to_string().as_str(); "UDP receive failed");
                rt::sleep(ERROR_PAUSE).await;
            }
        }
    }
}
