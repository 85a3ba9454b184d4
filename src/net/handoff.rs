//! A writer with exactly one producer, fed through a [`Handoff`]: while the writer has
//! nothing queued or in flight, the producer writes straight to the socket (what the
//! socket takes at once) and skips waking the writer task; the rest goes through the
//! mailbox as usual. Byte order is kept because the producer writes directly only when
//! everything it queued before has been written. It also counts the bytes that reached
//! its socket (direct and by the writer), and its [`Delivery`] tells when the writer has
//! ended: what a proxy session logs as delivered. Only a plain stream has a direct
//! path; under a session every byte goes through the writer.
//!
//! A producer that writes its socket entirely by itself (a splice relay, which has no
//! writer actor) keeps the same count through [`DirectWrites`], so a [`Delivery`] means
//! the same whichever path carried the bytes, and a relay that must fall back to copying
//! hands that count on to a writer ([`DirectWrites::into_handoff`]) without a gap.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::io::AsyncWriteExt;
use rustix::io::Errno;
use rustix::net::SendFlags;

use crate::net::socket::Socket;
use crate::net::stats::Stats;
use crate::net::stream::WriteHalf;
use crate::net::writer::{WRITER_MAILBOX, WriterEnd, count_written, peer_may_lack, start_writer};

/// The one producer's handle to a writer actor: a mailbox plus a direct path to the
/// socket that is taken while the writer is idle (see the module notes).
///
/// Dropping it is dropping the mailbox's only sender: the writer flushes what is queued
/// and shuts the write half.
pub struct Handoff {
    tx: flume::Sender<Vec<u8>>,
    /// The socket, for writes around the writer; `None` under a session.
    direct: Option<Socket>,
    /// What the writer and this handle share.
    progress: Arc<Progress>,
    /// Where bytes written on the direct path are counted, as they are written.
    stats: Arc<Stats>,
    /// Disconnects when the writer has ended (for [`Handoff::delivery`]).
    ended_rx: flume::Receiver<WriterEnd>,
}

/// What a [`Handoff`] shares with its writer.
#[derive(Default)]
pub(crate) struct Progress {
    /// Messages queued and not yet completely written by the writer.
    pub(crate) pending: AtomicUsize,
    /// Bytes that reached the socket, on the direct path or by the writer (a failed
    /// write's partial progress included), as `Stats::bytes_out` counts them.
    pub(crate) written: AtomicU64,
    /// Whether a failure has already taken the unacknowledged bytes back out of
    /// `written` (the direct path and the writer may both fail; it is done once).
    settled: std::sync::atomic::AtomicBool,
}

/// Watches what a [`Handoff`]'s socket was given, after the handoff itself is gone.
#[derive(Clone)]
pub struct Delivery {
    progress: Arc<Progress>,
    ended_rx: flume::Receiver<WriterEnd>,
}

impl Delivery {
    /// Bytes written to the socket so far; final once [`Delivery::ended`] has returned.
    pub fn written(&self) -> u64 {
        self.progress.written.load(Ordering::Relaxed)
    }

    /// Waits until the writer has ended: everything queued was written (and the write
    /// half shut), or a write failed and the rest was dropped.
    pub async fn ended(&self) {
        let _ = self.ended_rx.recv_async().await;
    }
}

/// The writer failed (its socket reset); nothing more can be written.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterGone;

impl Handoff {
    /// Spawns the writer actor for `stream` with a [`WRITER_MAILBOX`]-chunk mailbox.
    pub fn spawn(stream: WriteHalf, stats: &Arc<Stats>) -> Self {
        DirectWrites::new(stats).into_handoff(stream)
    }

    /// A watch on what reaches this handoff's socket, which outlives the handoff.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            progress: self.progress.clone(),
            ended_rx: self.ended_rx.clone(),
        }
    }

    /// Writes `data` in order after everything sent before: at once, as far as the
    /// socket takes it while the writer is idle; otherwise through the mailbox, waiting
    /// while it is full (backpressure).
    pub async fn send(&mut self, mut data: Vec<u8>) -> Result<(), WriterGone> {
        // Acquire pairs with the writer's Release after a write: when nothing is pending,
        // every byte sent before is in the socket, so writing now keeps the order.
        if let Some(socket) = &self.direct
            && self.progress.pending.load(Ordering::Acquire) == 0
        {
            match try_send_now(socket, &data) {
                Ok(n) if n == data.len() => {
                    count_written(&self.stats, Some(&self.progress), n);
                    return Ok(());
                }
                Ok(n) => {
                    count_written(&self.stats, Some(&self.progress), n);
                    data.drain(..n);
                }
                Err(e) => {
                    direct_write_failed(&self.progress, &self.stats, &e, socket);
                    return Err(WriterGone);
                }
            }
        }
        self.progress.pending.fetch_add(1, Ordering::Relaxed);
        self.tx.send_async(data).await.map_err(|_| WriterGone)
    }
}

/// The count of a producer that writes its socket itself, with no writer actor (a splice
/// relay): it counts each write as a writer does (`Stats::bytes_out` and the
/// [`Delivery`]'s count), takes back what the peer never acknowledged after a failure as
/// a writer does, and ends the delivery when dropped, as a writer does when it ends.
pub struct DirectWrites {
    progress: Arc<Progress>,
    stats: Arc<Stats>,
    /// Dropped (with this) to tell the [`Delivery`] that nothing more will be written.
    ended_tx: flume::Sender<WriterEnd>,
    ended_rx: flume::Receiver<WriterEnd>,
}

impl DirectWrites {
    /// A fresh count, adding to `stats.bytes_out` as well.
    pub fn new(stats: &Arc<Stats>) -> Self {
        let (ended_tx, ended_rx) = flume::bounded(1);
        DirectWrites {
            progress: Arc::new(Progress::default()),
            stats: stats.clone(),
            ended_tx,
            ended_rx,
        }
    }

    /// A watch on what this count says reached the socket, which outlives it.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            progress: self.progress.clone(),
            ended_rx: self.ended_rx.clone(),
        }
    }

    /// Counts `n` bytes the socket took, as each write returns.
    pub fn add(&self, n: u64) {
        count_written(&self.stats, Some(&self.progress), n as usize);
    }

    /// Writes all of `bytes` through `stream` (what the producer sends before it writes
    /// the socket by itself, such as a proxy's PROXY header), counting each write as it
    /// returns.
    pub async fn write_all(&self, stream: &mut WriteHalf, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            match stream.write(&bytes[at..]).await {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.add(n as u64);
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A write to `socket` failed with `error`: what the peer never acknowledged comes
    /// off the count when it may never arrive (the writer's rule), and the socket is shut
    /// both ways, as a writer's failed write shuts it.
    pub fn failed(&self, error: &io::Error, socket: &Socket) {
        direct_write_failed(&self.progress, &self.stats, error, socket);
    }

    /// Hands the count to a writer actor for `stream`, fed by the returned [`Handoff`]:
    /// for a producer that can no longer write by itself and copies from here on. The
    /// [`Delivery`] goes on counting and ends when that writer does.
    pub fn into_handoff(self, stream: WriteHalf) -> Handoff {
        let direct = stream.raw().cloned();
        let (tx, rx) = flume::bounded(WRITER_MAILBOX);
        let DirectWrites {
            progress,
            stats,
            ended_tx,
            ended_rx,
        } = self;
        start_writer(
            stream,
            rx,
            Some(progress.clone()),
            &stats,
            Some(ended_tx),
            None,
            None,
        );
        Handoff {
            tx,
            direct,
            progress,
            stats,
            ended_rx,
        }
    }
}

/// A write made around the writer failed: what the peer never acknowledged is not
/// delivered (taken back before the shutdown, whose FIN would count in the send queue),
/// and the socket is shut so the reader on it ends too.
fn direct_write_failed(progress: &Progress, stats: &Stats, e: &io::Error, socket: &Socket) {
    log::debug!("write failed: {e}");
    if peer_may_lack(e, socket) {
        progress.take_back_unacked(socket, stats);
    }
    let _ = socket.shut_both();
}

/// One non-blocking `send` of as much of `data` as the socket takes now (0 when full).
/// MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE.
fn try_send_now(socket: &Socket, data: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(socket, data, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Progress {
    /// [`Counter::take_back_unacked`] for a handoff's socket, done once whichever of the
    /// direct path and the writer fails first (the other then finds it done).
    pub(crate) fn take_back_unacked(&self, socket: &Socket, stats: &Stats) -> u64 {
        if self.settled.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let lost = socket.unacked(self.written.load(Ordering::Relaxed));
        self.written.fetch_sub(lost, Ordering::Relaxed);
        stats.bytes_out.fetch_sub(lost, Ordering::Relaxed);
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::tests::{layered, pair};
    use crate::rt;
    use futures::io::AsyncWriteExt;
    use std::time::{Duration, Instant};

    #[test]
    fn handoff_keeps_order_across_direct_and_queued_writes() {
        use futures::io::AsyncReadExt;
        rt::block_on(async {
            for wrap in [false, true] {
                let (near, far) = pair().await;
                // A small send buffer fills after a few chunks, so the sends below keep
                // switching between the direct path and the writer's mailbox.
                rustix::net::sockopt::set_socket_send_buffer_size(near.socket(), 4096).unwrap();
                let near = if wrap { layered(near) } else { near };
                let stats = Stats::new();
                let mut handoff = Handoff::spawn(near.split().1, &stats);
                let delivery = handoff.delivery();
                let expected: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
                let sending = expected.clone();
                let sender = rt::spawn(async move {
                    let mut at = 0;
                    for n in [1usize, 700, 65_536, 3, 40_000, 9_000].into_iter().cycle() {
                        if at >= sending.len() {
                            break;
                        }
                        let end = (at + n).min(sending.len());
                        handoff.send(sending[at..end].to_vec()).await.unwrap();
                        at = end;
                    }
                    // Dropping the handoff lets the writer flush and shut the write half.
                });
                let (mut far, _far_w) = far.split();
                let mut got = Vec::new();
                far.read_to_end(&mut got).await.unwrap();
                sender.await;
                assert_eq!(got.len(), expected.len());
                assert!(got == expected, "bytes reordered or changed");
                let deadline = Instant::now() + Duration::from_secs(10);
                while stats.live_tasks() > 0 && Instant::now() < deadline {
                    rt::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(stats.live_tasks(), 0, "the writer outlived its handoff");
                assert_eq!(
                    stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                    expected.len() as u64
                );
                // The handoff's own count (direct and queued writes) says the same, and its
                // writer is seen to have ended.
                assert!(
                    rt::timeout(Duration::from_secs(10), delivery.ended())
                        .await
                        .is_some()
                );
                assert_eq!(delivery.written(), expected.len() as u64);
            }
        });
    }

    #[test]
    fn direct_writes_hand_their_count_to_a_writer_without_a_gap() {
        use futures::io::AsyncReadExt;
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let (_near_r, mut near_w) = near.split();
            let direct = DirectWrites::new(&stats);
            let delivery = direct.delivery();
            // Written by the producer itself, as a relay writes, and counted.
            near_w.write_all(b"spliced ").await.unwrap();
            direct.add(8);
            assert_eq!(delivery.written(), 8);
            // Then copied through a writer, which ends the delivery when it ends.
            let mut handoff = direct.into_handoff(near_w);
            handoff.send(b"then copied".to_vec()).await.unwrap();
            drop(handoff);
            let (mut far_r, _far_w) = far.split();
            let mut got = Vec::new();
            far_r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"spliced then copied");
            assert!(
                rt::timeout(Duration::from_secs(10), delivery.ended())
                    .await
                    .is_some()
            );
            assert_eq!(delivery.written(), 19);
            assert_eq!(
                stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                19
            );

            // A producer that ends by itself ends its delivery.
            let direct = DirectWrites::new(&stats);
            let delivery = direct.delivery();
            drop(direct);
            assert!(
                rt::timeout(Duration::from_secs(10), delivery.ended())
                    .await
                    .is_some()
            );
        });
    }

    #[test]
    fn handoff_reports_a_reset_peer() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let mut handoff = Handoff::spawn(near.split().1, &stats);
            // Close the far side with unread input so it resets the connection.
            let (far_r, mut far_w) = far.split();
            far_w.write_all(b"x").await.unwrap();
            far_w.socket().reset_on_close().unwrap();
            drop((far_r, far_w));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut gone = false;
            while Instant::now() < deadline {
                if handoff.send(vec![b'y'; 1000]).await.is_err() {
                    gone = true;
                    break;
                }
                rt::sleep(Duration::from_millis(5)).await;
            }
            assert!(gone, "writes to a reset peer kept succeeding");
        });
    }
}
