//! The read side of a TCP connection: a [`Reader`] that takes what arrives, with an
//! optional idle timeout, a watch for the peer leaving while it cannot read, and the
//! linger that drains a peer's input before a close.
//!
//! - The reader holds no buffer while it waits: each read borrows a per-thread scratch
//!   buffer and copies out exactly the bytes that arrived, so an idle connection costs a
//!   few hundred bytes of task state, not a read buffer.
//! - The idle timer counts the time the reader waits for input, not the time since the
//!   last input: a reader held elsewhere (its session waiting for mailbox room) has not
//!   been idle. It is armed once per idle period (`net/idle.rs`): a wait only notes when
//!   it began, and when the timer fires it re-arms itself for the time still left.
//! - A reader made with [`Reader::counted`] adds every read to `Stats::bytes_in` as it
//!   returns, so a connection's count is right while it is open and cannot be forgotten.
//! - A reader whose socket never runs dry (a peer sending faster than we take it) yields
//!   to the other tasks of its thread after [`YIELD_AFTER`] bytes: a connection's tasks
//!   share one thread, and a read that is always ready would otherwise never let them run.
//! - A reader that cannot read because what it read last is still waiting for mailbox
//!   room can [`Reader::watch`] that wait: the socket is checked for the peer's FIN or
//!   reset (`poll(POLLRDHUP)`, which consumes nothing) every [`STALL_CHECK`], so a peer
//!   that leaves is noticed even while nothing can be read.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::AsyncRead;

use crate::net::idle::{Activity, IdleTimer};
use crate::net::socket::{Hangup, Socket};
use crate::net::stats::Stats;
use crate::net::stream::ReadHalf;
use crate::rt;

/// The most one read takes in; also the size of the per-thread scratch buffer.
pub const READ_CHUNK: usize = 64 * 1024;

/// How often [`Reader::watch`] looks at a socket it cannot read for the peer's FIN or
/// reset. One `poll(2)` per stalled reader per period, and only while it is stalled; a
/// peer that leaves is noticed within this time (a stall ending sooner costs nothing:
/// the timer is kept and reused).
pub const STALL_CHECK: Duration = Duration::from_millis(250);

/// Bytes a reader takes without once waiting before it yields to the other tasks of its
/// thread: sixteen full reads, so the yield is rare next to the reads it follows.
pub const YIELD_AFTER: u64 = 16 * READ_CHUNK as u64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What one call to [`Reader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes, never empty.
    Data(Vec<u8>),
    /// The peer closed its write half.
    Eof,
    /// Nothing arrived for the idle timeout.
    Idle,
}

/// The read side of a connection, with an optional idle timeout.
pub struct Reader {
    stream: ReadHalf,
    idle: Option<Duration>,
    /// With `idle`: when the current wait for input began.
    waited: Activity,
    /// A wait for input is under way (its start is noted once, when it begins).
    waiting: bool,
    timer: IdleTimer,
    /// Where every read is counted too (`bytes_in`), as it returns.
    stats: Option<Arc<Stats>>,
    /// The next look at the socket while [`Reader::watch`] waits (kept across stalls).
    stall_timer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// [`Reader::watch`] has seen the peer's FIN (reported once).
    fin_noticed: bool,
    /// Bytes read since the reader last waited or yielded.
    unbroken: u64,
    /// Bytes read so far.
    pub bytes: u64,
}

impl Reader {
    /// Reads from `stream`, the read half of a connection (the reader never writes).
    pub fn new(stream: ReadHalf, idle: Option<Duration>) -> Self {
        Reader {
            stream,
            idle,
            waited: Activity::new(),
            waiting: false,
            timer: IdleTimer::new(),
            stats: None,
            stall_timer: None,
            fin_noticed: false,
            unbroken: 0,
            bytes: 0,
        }
    }

    /// Like [`Reader::new`], adding every read to `stats.bytes_in` as it returns.
    pub fn counted(stream: ReadHalf, idle: Option<Duration>, stats: Arc<Stats>) -> Self {
        Reader {
            stats: Some(stats),
            ..Reader::new(stream, idle)
        }
    }

    /// The socket beneath, for what is done to it without reading.
    pub fn socket(&self) -> &Socket {
        self.stream.socket()
    }

    /// The next chunk, end of input, or idle timeout.
    pub async fn next(&mut self) -> io::Result<Input> {
        futures::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Input>> {
        if self.unbroken >= YIELD_AFTER {
            self.unbroken = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            match poll_read_scratch(&mut self.stream, cx) {
                Poll::Ready(Ok(data)) if data.is_empty() => return Poll::Ready(Ok(Input::Eof)),
                Poll::Ready(Ok(data)) => {
                    self.bytes += data.len() as u64;
                    self.unbroken += data.len() as u64;
                    if let Some(stats) = &self.stats {
                        Stats::add(&stats.bytes_in, data.len() as u64);
                    }
                    self.waiting = false;
                    return Poll::Ready(Ok(Input::Data(data)));
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.unbroken = 0;
                    break;
                }
            }
        }
        let Some(limit) = self.idle else {
            return Poll::Pending;
        };
        if !self.waiting {
            self.waiting = true;
            self.waited.touch();
        }
        self.timer
            .poll_quiet(cx, &self.waited, limit, || false)
            .map(|()| Ok(Input::Idle))
    }
}

impl Reader {
    /// Runs `work` — a wait that keeps this reader from reading, such as a send into a
    /// full mailbox — while watching the socket for the peer leaving. Returns
    /// `Ok(output)` when `work` completes, or `Err(Hangup::Reset)` as soon as a reset is
    /// seen (within about [`STALL_CHECK`]); `work` is then dropped. A FIN seen meanwhile
    /// calls `on_fin` (once per reader) and the wait goes on: the bytes before the FIN
    /// are still to be read and forwarded.
    pub async fn watch<F: Future>(
        &mut self,
        work: F,
        on_fin: impl FnOnce(),
    ) -> Result<F::Output, Hangup> {
        let mut work = std::pin::pin!(work);
        let mut on_fin = Some(on_fin);
        futures::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            loop {
                let timer = self
                    .stall_timer
                    .get_or_insert_with(|| Box::pin(rt::sleep(STALL_CHECK)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.stall_timer = None;
                match self.stream.socket().hangup() {
                    Some(Hangup::Reset) => return Poll::Ready(Err(Hangup::Reset)),
                    Some(Hangup::Fin) if !self.fin_noticed => {
                        self.fin_noticed = true;
                        if let Some(f) = on_fin.take() {
                            f();
                        }
                    }
                    _ => {}
                }
                // Arm the next look (polled at once, so it holds this task's waker).
            }
        })
        .await
    }
}

/// How long [`Reader::linger`] waits for the peer to close.
pub const LINGER: Duration = Duration::from_secs(2);

impl Reader {
    /// After our side has finished writing: discards the peer's input until it closes,
    /// for at most [`LINGER`]. Closing a socket with unread input makes the kernel send a
    /// reset, which can destroy the last reply before the peer has read it.
    pub async fn linger(&mut self) {
        let drain = async { while let Ok(Input::Data(_)) = self.next().await {} };
        let _ = rt::timeout(LINGER, drain).await;
    }
}

/// Runs `f` on this thread's scratch buffer ([`READ_CHUNK`] bytes), which nothing holds
/// across an await.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|scratch| f(&mut scratch.borrow_mut()[..]))
}

/// Polls one read into this thread's scratch buffer and copies out what arrived.
fn poll_read_scratch(stream: &mut ReadHalf, cx: &mut Context<'_>) -> Poll<io::Result<Vec<u8>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        Pin::new(stream)
            .poll_read(cx, &mut scratch[..])
            .map_ok(|n| scratch[..n].to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::Stream;
    use crate::net::stream::tests::{layered, pair};
    use futures::io::AsyncWriteExt;

    #[test]
    fn watch_sees_a_fin_behind_unread_bytes_and_then_a_reset_without_reading() {
        rt::block_on(async {
            for wrap in [false, true] {
                let (near, far) = pair().await;
                let near = if wrap { layered(near) } else { near };
                let (_far_r, mut far_w) = far.split();
                far_w.write_all(b"unread").await.unwrap();
                far_w.socket().shut_write().unwrap();
                let (near_r, _near_w) = near.split();
                let mut reader = Reader::new(near_r, None);
                // The work ends when the FIN is reported: the wait itself reads nothing.
                let (fin_tx, fin_rx) = flume::bounded::<()>(1);
                let out = reader
                    .watch(fin_rx.recv_async(), move || {
                        let _ = fin_tx.try_send(());
                    })
                    .await;
                assert_eq!(out, Ok(Ok(())));
                assert_eq!(
                    reader.next().await.unwrap(),
                    Input::Data(b"unread".to_vec())
                );
                assert_eq!(reader.next().await.unwrap(), Input::Eof);
            }

            // A reset, with bytes still unread, ends a wait that would never end.
            let (near, far) = pair().await;
            let (_far_r, mut far_w) = far.split();
            far_w.write_all(b"unread").await.unwrap();
            let (near_r, mut near_w) = near.split();
            near_w.write_all(b"to be refused").await.unwrap();
            far_w.socket().reset_on_close().unwrap();
            drop((_far_r, far_w));
            let mut reader = Reader::new(near_r, None);
            let out = rt::timeout(
                Duration::from_secs(20),
                reader.watch(futures::future::pending::<()>(), || {}),
            )
            .await;
            assert_eq!(out, Some(Err(Hangup::Reset)));
        });
    }

    /// A session whose input never runs dry: every read is full at once.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            buf.fill(7);
            Poll::Ready(Ok(buf.len()))
        }
    }

    impl futures::io::AsyncWrite for Endless {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_reader_that_never_runs_dry_lets_its_neighbours_run() {
        // A reader and a neighbour polled in turn by one executor, as a connection
        // thread polls its connections: the neighbour must get a turn while the reader
        // still has input, or no other connection on the thread would ever run.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            rt::block_on(async {
                let (near, _far) = pair().await;
                let endless = Stream::over(near.socket().clone(), Endless);
                let mut reader = Reader::new(endless.split().0, None);
                let neighbour_ran = std::cell::Cell::new(false);
                let reading = async {
                    while !neighbour_ran.get() {
                        match reader.next().await {
                            Ok(Input::Data(_)) => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    reader.bytes
                };
                let neighbour = async { neighbour_ran.set(true) };
                let (read_before, ()) = futures::join!(reading, neighbour);
                let _ = done_tx.send(read_before);
            })
        });
        let read_before = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the neighbour never ran");
        // It yields once it has read YIELD_AFTER; the read it was making then completes
        // after the neighbour's turn.
        assert_eq!(read_before, YIELD_AFTER + READ_CHUNK as u64);
    }

    #[test]
    fn a_reader_held_elsewhere_longer_than_the_idle_timeout_is_not_idle() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let mut far_w = far.split().1;
            let idle = Duration::from_millis(100);
            let stats = Stats::new();
            let mut reader = Reader::counted(near.split().0, Some(idle), stats.clone());
            far_w.write_all(b"first").await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Input::Data(b"first".to_vec()));
            // The session spends three idle limits elsewhere (waiting for mailbox room)
            // while the client goes on sending: the reader was never waiting for input.
            far_w.write_all(b"second").await.unwrap();
            rt::sleep(3 * idle).await;
            assert_eq!(
                reader.next().await.unwrap(),
                Input::Data(b"second".to_vec())
            );
            // A wait for input that lasts the limit is idle.
            assert_eq!(reader.next().await.unwrap(), Input::Idle);
            let counted = stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!((counted, reader.bytes), (11, 11));
        });
    }

    #[test]
    fn a_short_read_waits_for_readiness_and_a_full_one_reads_again() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let (_far_r, mut far_w) = far.split();
            let (near_r, _near_w) = near.split();
            let mut reader = Reader::new(near_r, None);
            // More than one chunk arrives at once: the first read fills the buffer and
            // the next takes the rest straight away; then, drained, the reader waits.
            let sent: Vec<u8> = (0..READ_CHUNK + 100).map(|i| (i % 7) as u8).collect();
            far_w.write_all(&sent).await.unwrap();
            let mut got = Vec::new();
            while got.len() < sent.len() {
                match reader.next().await.unwrap() {
                    Input::Data(d) => got.extend(d),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, sent);
            far_w.write_all(b"more").await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Input::Data(b"more".to_vec()));
            far_w.close().await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Input::Eof);
        });
    }
}
