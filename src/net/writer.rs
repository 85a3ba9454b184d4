//! The write side of a TCP connection: a writer actor that owns the write half and
//! drains a bounded mailbox.
//!
//! ```text
//!   socket ──read──▶ Reader ──(role's channel)──▶ upstream ──writer_tx──▶ writer ──write──▶ socket
//! ```
//!
//! - The writer batches whatever its mailbox holds into one write, and when every sender
//!   is gone it flushes and shuts the write half (the peer sees EOF after the last byte).
//!   A failed write shuts both halves, so the reader wakes and the connection ends.
//! - A writer may have a send timeout ([`spawn_writer_watched`]): a write that makes no
//!   progress for that long (the peer stopped reading) fails, the writer aborts the
//!   connection (a reset now, the send queue dropped: `Socket::abort`) and ends, and its
//!   closed mailbox releases a reader waiting for room. Progress is any byte the
//!   socket takes from us or the peer acknowledges, so a slow reader is never cut
//!   ([`deadline`]).
//! - A message type may ask to be told what was written of it ([`Outgoing::REPORTS`]):
//!   the HTTP access log is written from that report. The report comes once the peer
//!   has acknowledged the message's last byte (or the writer failed first: then it says
//!   how far the acknowledgement reached) ([`acks`]).
//! - A message may carry a [`FileRegion`] after its bytes: the writer hands it to the
//!   kernel (`sendfile`), so large files never pass through user space.
//! - Writers add to `Stats::bytes_out` after every write and every `sendfile` call, so the
//!   counters are right while connections are still open. When a write fails and the
//!   queued bytes may never arrive (a reset, the send timeout, the server closing), what
//!   the peer had not acknowledged is taken back out (`TIOCOUTQ`, `TCP_INFO`): a count is
//!   then what the peer acknowledged, not what the kernel was handed.

pub mod acks;
pub mod deadline;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::io::AsyncWriteExt;

use crate::net::handoff::Progress;
use crate::net::sendfile::{FileRegion, send_file_counted};
use crate::net::shutdown::Shutdown;
use crate::net::socket::Socket;
use crate::net::stats::Stats;
use crate::net::stream::WriteHalf;
use crate::rt;
use acks::{Unconfirmed, await_acks, settle, settle_acked};
use deadline::progress;
pub use deadline::{ServerClosing, is_send_timeout};

/// Chunks a writer's mailbox holds. With chunks of at most [`READ_CHUNK`] bytes this
/// bounds what one connection has in flight to 1 MiB; a reader that finds it full waits,
/// which stops it reading, which lets TCP flow control slow the sender.
pub const WRITER_MAILBOX: usize = 16;

/// The most a writer gathers from its mailbox into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// A batch of more messages than this says the mailbox's queue grew (a flume queue keeps
/// the capacity it grew to): the writer frees that capacity when it next goes idle.
const DEEP_BATCH: usize = 32;

/// The next message waiting: first those already taken from the mailbox, then the
/// mailbox's own.
fn take_waiting<B>(next: &mut VecDeque<B>, writer_rx: &flume::Receiver<B>) -> Option<B> {
    next.pop_front().or_else(|| writer_rx.try_recv().ok())
}

/// How soon a writer with nothing to send first looks whether the answers it wrote were
/// acknowledged (then doubling up to [`STALL_CHECK`]). Later than a busy keep-alive
/// client's next request usually comes, so under load the look made after each write
/// settles them and no timer fires; soon enough that an access line is not held back
/// noticeably on an idle connection.
pub(crate) const ACK_CHECK_FIRST: Duration = Duration::from_millis(10);

/// What a writer's mailbox carries: bytes, then optionally a file region.
pub trait Outgoing: Send + 'static {
    /// Bytes to write.
    fn bytes(&self) -> &[u8];
    /// A file region to send after the bytes.
    fn file(&self) -> Option<&FileRegion> {
        None
    }
    /// Whether the writer reports back through [`Outgoing::written`]. Off by default:
    /// the writer then drops each message as soon as its bytes are copied into a batch;
    /// when on, it keeps the batch's messages until the write is done.
    const REPORTS: bool = false;
    /// With [`Outgoing::REPORTS`]: told, once the writer is done with this message, how
    /// many of its bytes went out — `bytes` of [`Outgoing::bytes`], then `file` of its
    /// file region — and what stopped it short, if anything did (a file that shrank, a
    /// peer that left or stopped reading, the server closing). A message written in full
    /// is reported once the peer has acknowledged its last byte; one cut short counts
    /// what the peer acknowledged: what a role logs is then what the peer got.
    /// A message the writer never got to (it failed first) is dropped without a report.
    fn written(&mut self, _bytes: usize, _file: u64, _stopped: Option<&io::Error>) {}
    /// With [`Outgoing::REPORTS`]: told once all of this message is in the kernel's hands
    /// (its bytes written, its file region sent), before the peer has acknowledged it.
    /// What the message holds only to be sent (an open file, a large buffer) may go now:
    /// the writer keeps the message for its report alone and never reads its bytes or
    /// file again. A producer that waits for a message to be sent before it sends the
    /// next waits for this, not for the report, which takes a round trip or longer.
    fn handed_over(&mut self) {}
}

impl Outgoing for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Outgoing for Arc<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Spawns the writer actor for `stream` and returns its mailbox: for a tool's own
/// connection (`connect`). A server's connections get theirs from
/// [`Connection::start`](crate::net::connection::Connection::start).
///
/// The writer ends when every sender is dropped (then it flushes and shuts the write
/// half) or when a write fails (then it shuts both halves). It adds the bytes it writes to
/// `stats.bytes_out` as it writes them and counts itself in `stats.live_tasks()`. Its
/// writes have no deadline.
pub fn spawn_writer<B: Outgoing>(stream: WriteHalf, stats: &Arc<Stats>) -> flume::Sender<B> {
    let (writer_tx, writer_rx) = flume::bounded(WRITER_MAILBOX);
    start_writer(stream, writer_rx, None, stats, None, None, None);
    writer_tx
}

/// How a writer ended, as told by [`spawn_writer_watched`]'s channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Every sender was dropped and all it held was written.
    Flushed,
    /// A write made no progress for the send timeout: the peer stopped reading.
    StoppedReading,
    /// A write failed (the peer reset, or the socket was shut).
    Failed,
}

/// Spawns the writer actor for `stream` on a mailbox the caller made, and returns a
/// channel on which the writer says how it ended ([`WriterEnd`], one message) and which
/// then disconnects.
///
/// - `send_timeout`: a write that makes no progress for that long fails
///   ([`is_send_timeout`]), the writer aborts the connection (so the reader wakes and
///   ends too) and logs that the peer stopped reading. Progress is what counts, not the
///   length of the transfer: every write that moves bytes starts the clock again, so a
///   slow reader that keeps reading is never cut. `None`: no deadline.
/// - `close`: for a connection that must end when it fires (the end of a server's
///   drain): a write still waiting then fails with a [`ServerClosing`] error ("server
///   shutting down"), which the messages' reports carry, and the writer ends as after a
///   send timeout.
///
/// A producer that waits for the writer to finish a message (to release what it holds)
/// waits on the channel too, so a writer that failed on an earlier message, leaving that
/// one queued for good, cannot leave it waiting; a connection waits on it before it lets
/// its `--max-conns` slot go, so no socket is held by a writer after its connection was
/// counted closed.
pub fn spawn_writer_watched<B: Outgoing>(
    stream: WriteHalf,
    writer_rx: flume::Receiver<B>,
    stats: &Arc<Stats>,
    send_timeout: Option<Duration>,
    close: Option<Shutdown>,
) -> flume::Receiver<WriterEnd> {
    let (ended_tx, ended_rx) = flume::bounded(1);
    let ended = Some(ended_tx);
    start_writer(stream, writer_rx, None, stats, ended, send_timeout, close);
    ended_rx
}

pub(crate) fn start_writer<B: Outgoing>(
    stream: WriteHalf,
    writer_rx: flume::Receiver<B>,
    handoff: Option<Arc<Progress>>,
    stats: &Arc<Stats>,
    ended_tx: Option<flume::Sender<WriterEnd>>,
    send_timeout: Option<Duration>,
    close: Option<Shutdown>,
) {
    let task = stats.task();
    let stats = stats.clone();
    rt::spawn_here(async move {
        let _task = task;
        let mut stream = stream;
        let socket = stream.socket().clone();
        let mut count = Counter {
            stats: &stats,
            handoff: handoff.as_deref(),
            handed: 0,
            aborted_peer: None,
        };
        let written = write_loop(
            &mut stream,
            &socket,
            &writer_rx,
            &mut count,
            send_timeout,
            close.as_ref(),
        )
        .await;
        let end = match &written {
            Ok(()) => WriterEnd::Flushed,
            Err(e) if is_send_timeout(e) => WriterEnd::StoppedReading,
            Err(_) => WriterEnd::Failed,
        };
        match written {
            Ok(()) => {
                // A plain socket's FIN; a session's closing message first.
                let _ = progress(&socket, send_timeout, close.as_ref(), stream.close()).await;
            }
            Err(e) => {
                // Given up: aborted already, as the counts took back what the peer had
                // not acknowledged (`Counter::after_failure`), so the reset is sent and
                // the reader woken. Otherwise both halves: the reader (waiting to read,
                // or for room in this mailbox, which closes when this task ends) wakes
                // and ends too.
                if !gave_up(&e) {
                    let _ = socket.shut_both();
                }
                if is_send_timeout(&e) {
                    let peer = count
                        .aborted_peer
                        .or_else(|| socket.peer_addr().ok())
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    log::info!(peer = peer.as_str(), reason = "client stopped reading";
                        "closing: {e}");
                } else {
                    log::debug!("write failed: {e}");
                }
            }
        }
        // Told last, once the socket is shut and this task's hold on it and on what
        // was queued is gone: a waiter may then count the connection closed.
        drop(writer_rx);
        drop(stream);
        drop(socket);
        if let Some(ended_tx) = ended_tx {
            let _ = ended_tx.try_send(end);
        }
    });
}

/// Writes what arrives until every sender is gone, adding each write to
/// `stats.bytes_out` as it returns. With `handoff` (a [`Handoff`]'s count), each message
/// is subtracted from it once its bytes are all in the socket. With `send_timeout`, a
/// write that makes no progress for that long ends the loop with a [`SendTimeout`] error;
/// with `close`, a write still waiting when it fires ends it with [`ServerClosing`].
///
/// When a write fails, what the peer never acknowledged ([`unacked`]) is taken back out
/// of the counts: after a failure a count says what the peer acknowledged, not what the
/// kernel was handed. With [`Outgoing::REPORTS`], a message written in full is reported
/// once the peer has acknowledged its last byte (checked after each write, and while the
/// mailbox is empty by [`await_acks`]), so a reset after the write but before the
/// acknowledgement still reports it stopped; what is unacknowledged when every sender
/// is gone is reported as written (the kernel delivers it after our FIN).
async fn write_loop<B: Outgoing>(
    stream: &mut WriteHalf,
    socket: &Socket,
    writer_rx: &flume::Receiver<B>,
    count: &mut Counter<'_>,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> io::Result<()> {
    let handoff = count.handoff;
    // Messages taken from the mailbox and not yet written, in order: a file message that
    // ended a batch, or what was waiting when the mailbox's queue was swapped out.
    // Empty (and unallocated) nearly always.
    let mut next: VecDeque<B> = VecDeque::new();
    // The last batch was deep: the mailbox's queue grew, and keeps that capacity.
    let mut grown = false;
    // With B::REPORTS: the batch's messages, each with where its bytes end in the batch,
    // kept until the batch is written (the vector is reused, so no allocation per batch).
    let mut held: Vec<(B, usize)> = Vec::new();
    // With B::REPORTS: messages written in full, waiting for the peer's acknowledgement.
    let mut unconfirmed: VecDeque<Unconfirmed<B>> = VecDeque::new();
    // A session over the socket (TLS) may hold bytes it took but could not write yet:
    // they are written before the writer waits for anything, or they would wait for the
    // next message (and the acknowledgements awaited for them would never come).
    let layered = stream.raw().is_none();
    loop {
        if layered
            && next.is_empty()
            && let Err(e) = progress(socket, send_timeout, close, stream.flush()).await
        {
            count.after_failure(socket, &e);
            settle(&mut unconfirmed, count.handed, Some(&e));
            return Err(e);
        }
        let first = match next.pop_front() {
            Some(b) => b,
            None if !unconfirmed.is_empty() => {
                match await_acks(
                    socket,
                    Some(writer_rx),
                    count,
                    &mut unconfirmed,
                    send_timeout,
                    close,
                )
                .await
                {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        count.after_failure(socket, &e);
                        settle(&mut unconfirmed, count.handed, Some(&e));
                        return Err(e);
                    }
                }
            }
            None => {
                if std::mem::take(&mut grown) {
                    // Going idle after a burst: `drain` swaps the channel's queue for an
                    // empty one, so the capacity the burst grew (a flume queue never
                    // shrinks) is freed rather than held by every idle client.
                    next.extend(writer_rx.drain());
                }
                match next.pop_front() {
                    Some(b) => b,
                    None => match writer_rx.recv_async().await {
                        Ok(b) => b,
                        Err(_) => break,
                    },
                }
            }
        };
        let mut messages = 1;
        let stopped = if let Some(region) = first.file() {
            // Head, then the region with sendfile; never batched. The head waits to leave
            // with the file's first bytes (one segment, not two).
            let more = region.len > 0;
            let (head, head_err) =
                write_all_counted(stream, socket, first.bytes(), more, send_timeout, close).await;
            count.add(head as u64);
            let mut sent = 0;
            let err = match head_err {
                Some(e) => Some(e),
                None => send_file_counted(
                    stream,
                    socket,
                    region,
                    &mut sent,
                    send_timeout,
                    close,
                    &mut |n| count.add(n),
                )
                .await
                .err(),
            };
            // What the peer did not acknowledge comes off the file first, then the head.
            let lost = err.as_ref().map_or(0, |e| count.after_failure(socket, e));
            let off_file = lost.min(sent);
            let (head, sent) = (
                head.saturating_sub((lost - off_file) as usize),
                sent - off_file,
            );
            written_alone(
                &mut unconfirmed,
                first,
                head,
                sent,
                count.handed,
                err.as_ref(),
            );
            err
        } else {
            match take_waiting(&mut next, writer_rx) {
                // The common case: one message waiting, written straight from its buffer.
                None => {
                    let (done, err) = write_all_counted(
                        stream,
                        socket,
                        first.bytes(),
                        false,
                        send_timeout,
                        close,
                    )
                    .await;
                    count.add(done as u64);
                    let lost = err.as_ref().map_or(0, |e| count.after_failure(socket, e));
                    let done = done.saturating_sub(lost as usize);
                    written_alone(&mut unconfirmed, first, done, 0, count.handed, err.as_ref());
                    err
                }
                // More waiting: gather plain byte messages into one write (one syscall).
                Some(second) => {
                    let mut batch = Vec::with_capacity(WRITE_BATCH.min(first.bytes().len() * 4));
                    batch.extend_from_slice(first.bytes());
                    if B::REPORTS {
                        held.push((first, batch.len()));
                    }
                    let mut more = Some(second);
                    while let Some(m) = more.take() {
                        if m.file().is_some() {
                            next.push_front(m); // written on its own, after this batch
                            break;
                        }
                        batch.extend_from_slice(m.bytes());
                        messages += 1;
                        if B::REPORTS {
                            held.push((m, batch.len()));
                        }
                        if batch.len() < WRITE_BATCH {
                            more = take_waiting(&mut next, writer_rx);
                        }
                    }
                    let before = count.handed;
                    let (done, err) =
                        write_all_counted(stream, socket, &batch, false, send_timeout, close).await;
                    count.add(done as u64);
                    let lost = err.as_ref().map_or(0, |e| count.after_failure(socket, e));
                    let done = done.saturating_sub(lost as usize);
                    if err.is_some() {
                        // Earlier messages first: cut where the acknowledgement ends.
                        settle(&mut unconfirmed, count.handed, err.as_ref());
                    }
                    let mut start = 0;
                    for (mut m, end) in held.drain(..) {
                        if err.is_none() {
                            m.handed_over();
                            unconfirmed.push_back(Unconfirmed {
                                message: m,
                                bytes: end - start,
                                file: 0,
                                end: before + end as u64,
                            });
                        } else {
                            // A message acknowledged whole before the failure was not stopped.
                            let stopped = err.as_ref().filter(|_| done < end);
                            m.written(done.clamp(start, end) - start, 0, stopped);
                        }
                        start = end;
                    }
                    err
                }
            }
        };
        if let Some(e) = stopped {
            return Err(e);
        }
        if let Some(handoff) = handoff {
            handoff.pending.fetch_sub(messages, Ordering::Release);
        }
        grown |= messages > DEEP_BATCH;
        if !unconfirmed.is_empty() {
            settle_acked(socket, count, &mut unconfirmed);
        }
    }
    // Every sender is gone: the last messages are reported once the peer has
    // acknowledged them (waited for as a write is: the send timeout, a reset, `close`).
    if !unconfirmed.is_empty()
        && let Err(e) = await_acks(socket, None, count, &mut unconfirmed, send_timeout, close).await
    {
        count.after_failure(socket, &e);
        settle(&mut unconfirmed, count.handed, Some(&e));
        return Err(e);
    }
    stream.flush().await
}

/// With [`Outgoing::REPORTS`], after a message written on its own (`bytes` of its head,
/// `file` of its region; after a failure, as far as the peer acknowledged): it is handed
/// over and waits for the acknowledgement of its last byte, at `end` in the stream, or,
/// when `failed`, is reported now, after the earlier messages are settled where the
/// acknowledgement ends.
fn written_alone<B: Outgoing>(
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
    mut message: B,
    bytes: usize,
    file: u64,
    end: u64,
    failed: Option<&io::Error>,
) {
    if !B::REPORTS {
        return;
    }
    match failed {
        None => {
            message.handed_over();
            unconfirmed.push_back(Unconfirmed {
                message,
                bytes,
                file,
                end,
            })
        }
        Some(_) => {
            settle(unconfirmed, end, failed);
            message.written(bytes, file, failed);
        }
    }
}

/// Whether, after a write failed with `e`, bytes still in the send queue may never reach
/// the peer: the connection is gone (a reset), or we give up on it (the send timeout,
/// the server closing). Not after a file shrank under `sendfile`, nor after a write
/// refused because our own side shut the socket (a proxy session ending): the socket
/// then still delivers what it holds, and the count stays what was handed over.
pub(crate) fn peer_may_lack(e: &io::Error, socket: &Socket) -> bool {
    gave_up(e) || socket.connection_gone()
}

/// Whether the writer gave up on the peer (the send timeout, the server closing) rather
/// than the socket failing: what is still queued is then thrown away with a reset.
fn gave_up(e: &io::Error) -> bool {
    is_send_timeout(e) || e.get_ref().is_some_and(|inner| inner.is::<ServerClosing>())
}

/// A writer's byte counts: `Stats::bytes_out`, a [`Handoff`]'s own count, and what this
/// writer has handed to the kernel.
pub(crate) struct Counter<'a> {
    stats: &'a Stats,
    handoff: Option<&'a Progress>,
    /// Bytes this writer wrote to its socket (for a handoff, its `written` is the
    /// socket's total, direct writes included).
    handed: u64,
    /// The peer's address, read before an abort left the socket with none: for the
    /// writer's log line.
    aborted_peer: Option<std::net::SocketAddr>,
}

impl Counter<'_> {
    /// Counts `n` bytes the socket took, as each write returns.
    fn add(&mut self, n: u64) {
        self.handed += n;
        count_written(self.stats, self.handoff, n as usize);
    }

    /// After a write failed with `e`, before anything reports a count or shuts the
    /// socket: when the peer may lack what was queued ([`peer_may_lack`]), takes the bytes
    /// it never acknowledged back out of the counts and returns how many; when the writer
    /// gave up on a live connection, aborts it right after that look ([`Socket::abort`]),
    /// so the peer gets no byte beyond what the counts say, however soon it reads again.
    fn after_failure(&mut self, socket: &Socket, e: &io::Error) -> u64 {
        if !peer_may_lack(e, socket) {
            return 0;
        }
        let lost = self.take_back_unacked(socket);
        if gave_up(e) {
            self.aborted_peer = socket.peer_addr().ok();
            let _ = socket.abort();
        }
        lost
    }

    /// Takes the bytes the peer never acknowledged back out of the counts, and returns
    /// how many that was.
    fn take_back_unacked(&mut self, socket: &Socket) -> u64 {
        let lost = match self.handoff {
            Some(p) => p.take_back_unacked(socket, self.stats),
            None => {
                let lost = socket.unacked(self.handed);
                self.stats.bytes_out.fetch_sub(lost, Ordering::Relaxed);
                lost
            }
        };
        self.handed = self.handed.saturating_sub(lost);
        lost
    }
}

/// Writes all of `buf` (with `more`, as bytes that more is sure to follow at once:
/// [`WriteHalf::write_more`]); returns how much went out and, if it stopped short, why (a
/// socket error, no progress for `send_timeout`, or `close` fired). The caller counts
/// what went out either way, so a peer that resets in the middle of a batch leaves the
/// count right.
async fn write_all_counted(
    stream: &mut WriteHalf,
    socket: &Socket,
    buf: &[u8],
    more: bool,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        let wrote = if more {
            progress(socket, send_timeout, close, stream.write_more(&buf[done..])).await
        } else {
            progress(socket, send_timeout, close, stream.write(&buf[done..])).await
        };
        match wrote {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Counts `n` bytes written into `stats.bytes_out` and, for a [`Handoff`]'s socket, into
/// its own count (what a proxy session reports as delivered).
pub(crate) fn count_written(stats: &Stats, handoff: Option<&Progress>, n: usize) {
    Stats::add(&stats.bytes_out, n as u64);
    if let Some(handoff) = handoff {
        handoff.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::tests::pair;
    use futures::io::AsyncReadExt;
    use std::sync::Mutex;

    /// A reporting message that notes what the writer tells it, in order.
    struct Noted {
        bytes: Vec<u8>,
        told: Arc<Mutex<Vec<String>>>,
    }

    impl Noted {
        fn note(&self, what: String) {
            let name = String::from_utf8_lossy(&self.bytes);
            self.told.lock().unwrap().push(format!("{name}: {what}"));
        }
    }

    impl Outgoing for Noted {
        const REPORTS: bool = true;
        fn bytes(&self) -> &[u8] {
            &self.bytes
        }
        fn handed_over(&mut self) {
            self.note("handed over".into());
        }
        fn written(&mut self, bytes: usize, file: u64, stopped: Option<&io::Error>) {
            self.note(format!("written {bytes} {file} {}", stopped.is_some()));
        }
    }

    #[test]
    fn a_reporting_message_is_handed_over_before_it_is_reported() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let (writer_tx, writer_rx) = flume::bounded(WRITER_MAILBOX);
            let ended_rx = spawn_writer_watched(
                near.split().1,
                writer_rx,
                &stats,
                Some(Duration::from_secs(20)),
                None,
            );
            let told = Arc::new(Mutex::new(Vec::new()));
            for text in ["one", "two"] {
                let message = Noted {
                    bytes: text.into(),
                    told: told.clone(),
                };
                writer_tx.send_async(message).await.unwrap();
            }
            drop(writer_tx);
            let (mut far_r, _far_w) = far.split();
            let mut got = Vec::new();
            far_r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"onetwo");
            assert_eq!(ended_rx.recv_async().await, Ok(WriterEnd::Flushed));
            // Each is told once that it is in the kernel's hands, and after that (once
            // acknowledged) that all of it went out; the two may be batched.
            let told = told.lock().unwrap().clone();
            assert_eq!(told.len(), 4, "{told:?}");
            for name in ["one", "two"] {
                let at = |what: &str| told.iter().position(|t| *t == format!("{name}: {what}"));
                let (handed, written) = (at("handed over"), at("written 3 0 false"));
                assert!(handed.is_some() && written.is_some(), "{told:?}");
                assert!(handed < written, "{told:?}");
            }
        });
    }

    #[test]
    fn bursts_deeper_than_a_batch_arrive_whole_and_in_order_while_the_queue_is_swapped() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let (writer_tx, writer_rx) = flume::bounded::<Vec<u8>>(4096);
            let ended_rx = spawn_writer_watched(near.split().1, writer_rx, &stats, None, None);
            // Bursts deeper than DEEP_BATCH, each followed by a pause in which the writer
            // goes idle and swaps the queue out, while the next burst may already be
            // arriving: every line, once, in order.
            let sender = rt::spawn(async move {
                let mut sent = Vec::new();
                for burst in 0..40 {
                    for i in 0..(DEEP_BATCH * 3 + burst) {
                        let line = format!("{burst}.{i}\n").into_bytes();
                        sent.extend_from_slice(&line);
                        writer_tx.send_async(line).await.unwrap();
                    }
                    if burst % 2 == 0 {
                        rt::sleep(Duration::from_millis(2)).await;
                    }
                }
                sent
            });
            let (mut far_r, _far_w) = far.split();
            let mut got = Vec::new();
            far_r.read_to_end(&mut got).await.unwrap();
            let sent = sender.await;
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(sent).unwrap()
            );
            assert_eq!(ended_rx.recv_async().await, Ok(WriterEnd::Flushed));
        });
    }
}
