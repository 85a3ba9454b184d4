//! A UDP endpoint as two actors: a receive loop and a send actor.
//!
//! ```text
//!   socket ──recv_from──▶ receive loop ──▶ role ──sender_tx (peer, bytes)──▶ send actor ──send_to──▶ socket
//! ```
//!
//! The send actor is the only task that sends on the socket; anyone holding a
//! [`DatagramSender`] can queue `(peer, payload)` for it. The receive loop runs until
//! shutdown; a receive error (an ICMP error surfacing, a full buffer) is logged and the
//! loop goes on, since one peer's trouble must not stop the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::rt::{self, UdpSocket};

/// The largest UDP payload over IPv4 (65,535 − 8 byte UDP header − 20 byte IP header).
pub const MAX_DATAGRAM: usize = 65_507;

/// Datagrams queued for sending. When it is full the receive loop waits (UDP has no flow
/// control, so the kernel drops what arrives meanwhile, which is UDP's contract).
pub const SEND_MAILBOX: usize = 1024;

/// Pause after a receive error, so a persistent error cannot spin the loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The handle to a UDP endpoint's send actor.
#[derive(Clone)]
pub struct DatagramSender {
    sender_tx: flume::Sender<(SocketAddr, Vec<u8>)>,
    /// Disconnected when the send actor ends (it carries nothing): see [`Self::finish`].
    ended_rx: flume::Receiver<std::convert::Infallible>,
}

impl DatagramSender {
    /// Queues a datagram, waiting for room (backpressure on the caller).
    pub async fn send(&self, peer: SocketAddr, payload: Vec<u8>) {
        let _ = self.sender_tx.send_async((peer, payload)).await;
    }

    /// Queues a datagram if there is room; `false` when the queue is full and it was dropped.
    pub fn try_send(&self, peer: SocketAddr, payload: Vec<u8>) -> bool {
        self.sender_tx.try_send((peer, payload)).is_ok()
    }

    /// Datagrams queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.sender_tx.len()
    }

    /// Lets go of this handle and waits until the send actor has ended: every other handle
    /// is gone and every queued datagram sent (and counted in `bytes_out`). A role calls it
    /// before returning, so a summary taken after it is complete.
    pub async fn finish(self) {
        let DatagramSender {
            sender_tx,
            ended_rx,
        } = self;
        drop(sender_tx);
        let _ = ended_rx.recv_async().await;
    }
}

/// Spawns the send actor for `socket`; it ends when every [`DatagramSender`] is dropped.
pub fn spawn_sender(socket: Arc<UdpSocket>, stats: &Arc<Stats>) -> DatagramSender {
    let (sender_tx, sender_rx) = flume::bounded::<(SocketAddr, Vec<u8>)>(SEND_MAILBOX);
    let (ended_tx, ended_rx) = flume::bounded(0);
    let stats = stats.clone();
    // Not counted in `live_tasks`: that counts connection tasks, and this one lives as
    // long as the endpoint. It ends once the receive loop (and every holder) lets go;
    // [`DatagramSender::finish`] waits for that.
    rt::spawn(async move {
        let _ended_tx: flume::Sender<std::convert::Infallible> = ended_tx;
        while let Ok((peer, payload)) = sender_rx.recv_async().await {
            match socket.send_to(&payload, peer).await {
                // Counted as sent, not at the end: the count is right whenever it is read
                // (one uncontended atomic add beside a system call).
                Ok(n) => Stats::add(&stats.bytes_out, n as u64),
                Err(e) => {
                    log::debug!(peer = peer.to_string().as_str(), error = e.to_string().as_str(); "UDP send failed")
                }
            }
        }
    });
    DatagramSender {
        sender_tx,
        ended_rx,
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
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut received = 0u64;
    loop {
        let got = futures::select! {
            got = socket.recv_from(&mut buf).fuse() => got,
            _ = shutdown.wait().fuse() => break,
        };
        match got {
            Ok((n, peer)) => {
                received += n as u64;
                stats
                    .datagrams
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                on_datagram(peer, buf[..n].to_vec()).await;
            }
            Err(e) => {
                log::debug!(error = e.to_string().as_str(); "UDP receive failed");
                rt::sleep(ERROR_PAUSE).await;
            }
        }
    }
    Stats::add(&stats.bytes_in, received);
}
