//! The two actors of a TCP connection: a [`Reader`] that owns the read side and a writer
//! task that owns the write side and drains a bounded mailbox.
//!
//! ```text
//!   socket ──read──▶ Reader ──(role's channel)──▶ upstream ──writer_tx──▶ writer ──write──▶ socket
//! ```
//!
//! - The reader holds no buffer while it waits: each read borrows a per-thread scratch
//!   buffer and copies out exactly the bytes that arrived, so an idle connection costs a
//!   few hundred bytes of task state, not a read buffer.
//! - The idle timer is armed once per idle period, not per read: a read only notes the
//!   time, and when the timer fires it re-arms itself for the time still left.
//! - The writer batches whatever its mailbox holds into one write, and when every sender
//!   is gone it flushes and shuts the write half (the peer sees EOF after the last byte).
//!   A failed write shuts both halves, so the reader wakes and the connection ends.
//! - A writer may have a send timeout ([`spawn_writer_timed`]): a write that makes no
//!   progress for that long (the peer stopped reading) fails and ends it as above, and
//!   its closed mailbox releases a reader waiting for room. Progress is any byte the
//!   socket takes from us or the peer acknowledges, so a slow reader is never cut.
//! - A message type may ask to be told what was written of it ([`Outgoing::REPORTS`]):
//!   the HTTP access log is written from that report. The report comes once the peer
//!   has acknowledged the message's last byte (or the writer failed first: then it says
//!   how far the acknowledgement reached).
//! - A message may carry a [`FileRegion`] after its bytes: the writer hands it to the
//!   kernel (`sendfile`), so large files never pass through user space.
//! - A writer with exactly one producer can be fed through a [`Handoff`]: while the writer
//!   has nothing queued or in flight, the producer writes straight to the socket (what
//!   the socket takes at once) and skips waking the writer task; the rest goes through
//!   the mailbox as usual. Byte order is kept because the producer writes directly only
//!   when everything it queued before has been written. It also counts the bytes that
//!   reached its socket (direct and by the writer), and its [`Delivery`] tells when the
//!   writer has ended: what a proxy session logs as delivered.
//! - A reader that cannot read because what it read last is still waiting for mailbox
//!   room can [`Reader::watch`] that wait: the socket is checked for the peer's FIN or
//!   reset (`poll(POLLRDHUP)`, which consumes nothing) every [`STALL_CHECK`], so a peer
//!   that leaves is noticed even while nothing can be read.
//! - Writers add to `Stats::bytes_out` after every write and every `sendfile` call, so the
//!   counters are right while connections are still open. When a write fails and the
//!   queued bytes may never arrive (a reset, the send timeout, the server closing), what
//!   the peer had not acknowledged is taken back out (`TIOCOUTQ`, `TCP_INFO`): a count is
//!   then what the peer acknowledged, not what the kernel was handed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::Shutdown as Halves;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWriteExt};

use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::rt::{self, TcpStream};

/// The most one read takes in; also the size of the per-thread scratch buffer.
pub const READ_CHUNK: usize = 64 * 1024;

/// Chunks a writer's mailbox holds. With chunks of at most [`READ_CHUNK`] bytes this
/// bounds what one connection has in flight to 1 MiB; a reader that finds it full waits,
/// which stops it reading, which lets TCP flow control slow the sender.
pub const WRITER_MAILBOX: usize = 16;

/// The most a writer gathers from its mailbox into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// How often [`Reader::watch`] looks at a socket it cannot read for the peer's FIN or
/// reset. One `poll(2)` per stalled reader per period, and only while it is stalled; a
/// peer that leaves is noticed within this time (a stall ending sooner costs nothing:
/// the timer is kept and reused).
pub const STALL_CHECK: Duration = Duration::from_millis(250);

/// How soon a writer with nothing to send first looks whether the answers it wrote were
/// acknowledged (then doubling up to [`STALL_CHECK`]). Later than a busy keep-alive
/// client's next request usually comes, so under load the look made after each write
/// settles them and no timer fires; soon enough that an access line is not held back
/// noticeably on an idle connection.
const ACK_CHECK_FIRST: Duration = Duration::from_millis(10);

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
    stream: TcpStream,
    idle: Option<Duration>,
    last_input: Instant,
    timer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The next look at the socket while [`Reader::watch`] waits (kept across stalls).
    stall_timer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// [`Reader::watch`] has seen the peer's FIN (reported once).
    fin_noticed: bool,
    /// Bytes read so far.
    pub bytes: u64,
}

/// How a peer left, seen without reading its socket ([`hangup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// It shut its write half (or closed): a FIN is waiting behind any unread bytes.
    Fin,
    /// The connection failed (a reset): nothing more can be read or written.
    Reset,
}

/// Whether the peer of `stream` has sent a FIN or reset, without reading anything:
/// `poll(2)` with `POLLRDHUP` and a zero timeout. Unread data is left where it is.
pub fn hangup(stream: &TcpStream) -> Option<Hangup> {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an open descriptor (we hold the stream); zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n <= 0 {
        None
    } else if pfd.revents & libc::POLLERR != 0 {
        Some(Hangup::Reset)
    } else if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 {
        Some(Hangup::Fin)
    } else {
        None
    }
}

impl Reader {
    /// Reads from `stream` (a clone of the connection; the reader never writes to it).
    pub fn new(stream: TcpStream, idle: Option<Duration>) -> Self {
        Reader {
            stream,
            idle,
            last_input: Instant::now(),
            timer: None,
            stall_timer: None,
            fin_noticed: false,
            bytes: 0,
        }
    }

    /// The next chunk, end of input, or idle timeout.
    pub async fn next(&mut self) -> io::Result<Input> {
        futures::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Input>> {
        loop {
            match poll_read_scratch(&mut self.stream, cx) {
                Poll::Ready(Ok(data)) if data.is_empty() => return Poll::Ready(Ok(Input::Eof)),
                Poll::Ready(Ok(data)) => {
                    self.bytes += data.len() as u64;
                    if self.idle.is_some() {
                        self.last_input = Instant::now();
                    }
                    return Poll::Ready(Ok(Input::Data(data)));
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let Some(limit) = self.idle else {
            return Poll::Pending;
        };
        loop {
            let last = self.last_input;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(rt::sleep(limit.saturating_sub(last.elapsed()))));
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    self.timer = None;
                    if self.last_input.elapsed() >= limit {
                        return Poll::Ready(Ok(Input::Idle));
                    }
                    // Input came since the timer was armed: arm it for the time left.
                }
            }
        }
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
                match hangup(&self.stream) {
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

/// Turns on TCP keepalive probes: a peer that vanished without a reset (power loss, a
/// dropped NAT entry) is noticed after `idle` of silence plus three failed probes 10 s
/// apart, instead of never.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int_option(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        idle.as_secs().clamp(1, 32_767) as libc::c_int,
    )?;
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10)?;
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
}

/// Sets one integer socket option on `fd`.
fn set_int_option(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt on an open socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

/// Polls one read into this thread's scratch buffer and copies out what arrived.
fn poll_read_scratch(stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<Vec<u8>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        Pin::new(stream)
            .poll_read(cx, &mut scratch[..])
            .map_ok(|n| scratch[..n].to_vec())
    })
}

/// Part of an open file, to be sent as it is.
#[derive(Clone, Debug)]
pub struct FileRegion {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

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

/// Spawns the writer actor for `stream` and returns its mailbox.
///
/// The writer ends when every sender is dropped (then it flushes and shuts the write
/// half) or when a write fails (then it shuts both halves). It adds the bytes it writes to
/// `stats.bytes_out` as it writes them and counts itself in `stats.live_tasks()`. Its
/// writes have no deadline (see [`spawn_writer_timed`]).
pub fn spawn_writer<B: Outgoing>(stream: TcpStream, stats: &Arc<Stats>) -> flume::Sender<B> {
    spawn_writer_timed(stream, stats, None)
}

/// Like [`spawn_writer`], with a send timeout: a write that makes no progress for
/// `send_timeout` fails ([`is_send_timeout`]), the writer shuts both halves (so the
/// reader wakes and ends too) and logs that the peer stopped reading. Progress is what
/// counts, not the length of the transfer: every write that moves bytes starts the clock
/// again, so a slow reader that keeps reading is never cut. `None`: no deadline.
pub fn spawn_writer_timed<B: Outgoing>(
    stream: TcpStream,
    stats: &Arc<Stats>,
    send_timeout: Option<Duration>,
) -> flume::Sender<B> {
    let (writer_tx, writer_rx) = flume::bounded(WRITER_MAILBOX);
    start_writer(stream, writer_rx, None, stats, None, send_timeout, None);
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

impl WriterEnd {
    /// The connection's close reason when the writer's end is what says it; `None` for
    /// [`WriterEnd::Flushed`] (the reader's reason stands).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            WriterEnd::Flushed => None,
            WriterEnd::StoppedReading => Some("client stopped reading"),
            WriterEnd::Failed => Some("write failed"),
        }
    }
}

/// Like [`spawn_writer_timed`] for a mailbox the caller made, and returns a channel on
/// which the writer says how it ended ([`WriterEnd`], one message) and which then
/// disconnects. A producer that waits for the writer to finish a message (to release
/// what it holds) waits on this too, so a writer that failed on an earlier message,
/// leaving that one queued for good, cannot leave it waiting; a connection waits on it
/// before it lets its `--max-conns` slot go, so no socket is held by a writer after its
/// connection was counted closed ([`writer_ended`]).
pub fn spawn_writer_watched<B: Outgoing>(
    stream: TcpStream,
    writer_rx: flume::Receiver<B>,
    stats: &Arc<Stats>,
    send_timeout: Option<Duration>,
) -> flume::Receiver<WriterEnd> {
    spawn_watched(stream, writer_rx, stats, send_timeout, None)
}

/// Like [`spawn_writer_watched`], for a connection that must end when `close` fires
/// (the end of a server's drain): a write still waiting then fails with a
/// [`ServerClosing`] error ("server shutting down"), which the messages' reports carry,
/// and the writer ends as after any failed write.
pub fn spawn_writer_closing<B: Outgoing>(
    stream: TcpStream,
    writer_rx: flume::Receiver<B>,
    stats: &Arc<Stats>,
    send_timeout: Option<Duration>,
    close: Shutdown,
) -> flume::Receiver<WriterEnd> {
    spawn_watched(stream, writer_rx, stats, send_timeout, Some(close))
}

/// The writer of [`spawn_writer_watched`] and [`spawn_writer_closing`].
fn spawn_watched<B: Outgoing>(
    stream: TcpStream,
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

/// Waits until the writer behind `ended_rx` has ended (every earlier wait on the channel
/// included) and says how; [`WriterEnd::Flushed`] if that was already taken by an
/// earlier wait that saw the message.
pub async fn writer_ended(ended_rx: &flume::Receiver<WriterEnd>) -> WriterEnd {
    ended_rx.recv_async().await.unwrap_or(WriterEnd::Flushed)
}

/// Like [`spawn_writer`] for a mailbox the caller made (a role that needs another capacity).
pub fn spawn_writer_with<B: Outgoing>(
    stream: TcpStream,
    writer_rx: flume::Receiver<B>,
    stats: &Arc<Stats>,
) {
    start_writer(stream, writer_rx, None, stats, None, None, None);
}

/// The error of a write that made no progress for the writer's send timeout.
#[derive(Debug)]
struct SendTimeout(Duration);

impl std::fmt::Display for SendTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "send timeout: the client stopped reading (no write progress for {:?})",
            self.0
        )
    }
}

impl std::error::Error for SendTimeout {}

/// The error of a write cut short because the server is shutting down
/// ([`spawn_writer_closing`]).
#[derive(Debug)]
pub struct ServerClosing;

impl std::fmt::Display for ServerClosing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server shutting down")
    }
}

impl std::error::Error for ServerClosing {}

/// Whether `e` is a writer's send timeout (the peer stopped reading), as opposed to an
/// error from the socket.
pub fn is_send_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SendTimeout>())
}

/// Runs one write-side wait (a `write` that waits for room in `stream`) under the send
/// timeout `limit`: it fails with `TimedOut` ([`SendTimeout`]) once the peer has taken
/// nothing for that long. A write that completes at once (the common case) arms no timer,
/// and each completed write gets a fresh clock. While the write waits, the clock is also
/// reset by the peer taking bytes that were already queued: every quarter of `limit` the
/// bytes still in the kernel's send queue (`TIOCOUTQ`: unsent or unacknowledged) are
/// compared with the last look, and fewer means the peer is reading, if slowly. (The
/// kernel wakes a writer only once a third of its send buffer is free, which a slow
/// reader of a large buffer may take longer than `limit` to free.) So a peer that stops
/// reading is cut between `limit` and `limit` and a quarter after it took its last byte.
async fn progress<T>(
    stream: &TcpStream,
    limit: Option<Duration>,
    close: Option<&Shutdown>,
    wait: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let Some(close) = close else {
        return timed(stream, limit, wait).await;
    };
    if close.is_fired() {
        return Err(io::Error::other(ServerClosing));
    }
    let timed = std::pin::pin!(timed(stream, limit, wait));
    let closed = std::pin::pin!(close.wait());
    match futures::future::select(timed, closed).await {
        futures::future::Either::Left((done, _)) => done,
        futures::future::Either::Right(_) => Err(io::Error::other(ServerClosing)),
    }
}

/// [`progress`] without the close signal: the send timeout alone.
async fn timed<T>(
    stream: &TcpStream,
    limit: Option<Duration>,
    wait: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let Some(limit) = limit else {
        return wait.await;
    };
    let mut wait = std::pin::pin!(wait);
    if let Poll::Ready(done) = futures::poll!(wait.as_mut()) {
        return done;
    }
    let mut queued = unsent(stream);
    let mut since = Instant::now();
    loop {
        if let Some(done) = rt::timeout(limit / 4, wait.as_mut()).await {
            return done;
        }
        let now = unsent(stream);
        if now.is_some_and(|now| queued.is_some_and(|before| now < before)) {
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return Err(io::Error::new(io::ErrorKind::TimedOut, SendTimeout(limit)));
        }
        queued = now;
    }
}

/// Bytes in the socket's send queue that the peer has not acknowledged (`TIOCOUTQ`);
/// `None` if the kernel will not say.
pub(crate) fn unsent(stream: &TcpStream) -> Option<libc::c_int> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ on an open socket writes one int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

/// Bytes the peer has acknowledged on this connection (`TCP_INFO`'s `tcpi_bytes_acked`,
/// Linux 4.1 and later); `None` if the kernel will not say. It survives a reset.
fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    // struct tcp_info: tcpi_bytes_acked is the u64 at offset 120.
    const BYTES_ACKED: usize = 120 / 8;
    let (info, len) = tcp_info(stream)?;
    (len >= (BYTES_ACKED + 1) * 8).then(|| info[BYTES_ACKED])
}

/// Whether the connection is gone (reset, or given up by the kernel): a reset seen by
/// `poll`, or `TCP_INFO`'s state `TCP_CLOSE` — which stays once a read has taken the
/// reset's error, and which a writer that has not shut its socket sees no other way.
fn connection_gone(stream: &TcpStream) -> bool {
    const TCP_CLOSE: u8 = 7;
    hangup(stream) == Some(Hangup::Reset)
        || tcp_info(stream).is_some_and(|(info, _)| info[0].to_ne_bytes()[0] == TCP_CLOSE)
}

/// The socket's `struct tcp_info` as 64-bit words, and how many bytes the kernel filled.
fn tcp_info(stream: &TcpStream) -> Option<([u64; 32], usize)> {
    let mut info = [0u64; 32];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt on an open socket into a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some((info, len as usize))
}

/// Of the `handed` bytes this side wrote to `stream`, how many the peer has not
/// acknowledged: the larger of the send queue (`TIOCOUTQ`) and `handed` less the
/// connection's acknowledged bytes (`TCP_INFO`), which still holds when a reset has
/// emptied the queue. Read it after a write failed and before the socket is shut (a FIN
/// queued by `shutdown` would count as one more).
fn unacked(stream: &TcpStream, handed: u64) -> u64 {
    let queued = unsent(stream).map_or(0, |n| n.max(0) as u64);
    let by_acks = bytes_acked(stream).map_or(0, |a| handed.saturating_sub(a));
    queued.max(by_acks).min(handed)
}

fn start_writer<B: Outgoing>(
    stream: TcpStream,
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
        let written = write_loop(
            &stream,
            &writer_rx,
            handoff.as_deref(),
            &stats,
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
                let _ = stream.shutdown(Halves::Write);
            }
            Err(e) => {
                if gave_up(&e) {
                    // The counts have taken back what the peer has not acknowledged, so
                    // the socket must not go on delivering it after we let go (an
                    // orphaned socket would, through a zero window, for minutes): its
                    // close resets and discards the queue. The read half is shut so the
                    // reader wakes and ends; no FIN, which would queue behind the data.
                    let _ = reset_on_close(&stream);
                    let _ = stream.shutdown(Halves::Read);
                } else {
                    // Both halves: the reader (waiting to read, or for room in this
                    // mailbox, which closes when this task ends) wakes and ends too.
                    let _ = stream.shutdown(Halves::Both);
                }
                if is_send_timeout(&e) {
                    let peer = stream
                        .peer_addr()
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
        if let Some(ended_tx) = ended_tx {
            let _ = ended_tx.try_send(end);
        }
    });
}

/// The one producer's handle to a writer actor: a mailbox plus a direct path to the
/// socket that is taken while the writer is idle (see the module notes).
///
/// Dropping it is dropping the mailbox's only sender: the writer flushes what is queued
/// and shuts the write half.
pub struct Handoff {
    tx: flume::Sender<Vec<u8>>,
    stream: TcpStream,
    /// What the writer and this handle share.
    progress: Arc<Progress>,
    /// Where bytes written on the direct path are counted, as they are written.
    stats: Arc<Stats>,
    /// Disconnects when the writer has ended (for [`Handoff::delivery`]).
    ended_rx: flume::Receiver<WriterEnd>,
}

/// What a [`Handoff`] shares with its writer.
#[derive(Default)]
struct Progress {
    /// Messages queued and not yet completely written by the writer.
    pending: AtomicUsize,
    /// Bytes that reached the socket, on the direct path or by the writer (a failed
    /// write's partial progress included), as `Stats::bytes_out` counts them.
    written: AtomicU64,
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
    pub fn spawn(stream: TcpStream, stats: &Arc<Stats>) -> Self {
        let (tx, rx) = flume::bounded(WRITER_MAILBOX);
        let (ended_tx, ended_rx) = flume::bounded(1);
        let progress = Arc::new(Progress::default());
        start_writer(
            stream.clone(),
            rx,
            Some(progress.clone()),
            stats,
            Some(ended_tx),
            None,
            None,
        );
        Handoff {
            tx,
            stream,
            progress,
            stats: stats.clone(),
            ended_rx,
        }
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
        if self.progress.pending.load(Ordering::Acquire) == 0 {
            match try_send_now(&self.stream, &data) {
                Ok(n) if n == data.len() => {
                    count_written(&self.stats, Some(&self.progress), n);
                    return Ok(());
                }
                Ok(n) => {
                    count_written(&self.stats, Some(&self.progress), n);
                    data.drain(..n);
                }
                Err(e) => {
                    log::debug!("write failed: {e}");
                    // What the peer never acknowledged is not delivered (before the
                    // shutdown, whose FIN would count in the send queue).
                    if peer_may_lack(&e, &self.stream) {
                        self.progress.take_back_unacked(&self.stream, &self.stats);
                    }
                    let _ = self.stream.shutdown(Halves::Both);
                    return Err(WriterGone);
                }
            }
        }
        self.progress.pending.fetch_add(1, Ordering::Relaxed);
        self.tx.send_async(data).await.map_err(|_| WriterGone)
    }
}

/// One non-blocking `send` of as much of `data` as the socket takes now (0 when full).
fn try_send_now(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the descriptor is open (we hold the stream) and `data` is a valid
        // buffer of `data.len()` bytes. MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr() as *const libc::c_void,
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
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
    stream: &TcpStream,
    writer_rx: &flume::Receiver<B>,
    handoff: Option<&Progress>,
    stats: &Stats,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> io::Result<()> {
    let mut count = Counter {
        stats,
        handoff,
        handed: 0,
    };
    let mut next = None;
    // With B::REPORTS: the batch's messages, each with where its bytes end in the batch,
    // kept until the batch is written (the vector is reused, so no allocation per batch).
    let mut held: Vec<(B, usize)> = Vec::new();
    // With B::REPORTS: messages written in full, waiting for the peer's acknowledgement.
    let mut unconfirmed: VecDeque<Unconfirmed<B>> = VecDeque::new();
    loop {
        let mut first = match next.take() {
            Some(b) => b,
            None if !unconfirmed.is_empty() => {
                match await_acks(
                    stream,
                    Some(writer_rx),
                    &count,
                    &mut unconfirmed,
                    send_timeout,
                    close,
                )
                .await
                {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        count.take_back_unacked(stream);
                        settle(&mut unconfirmed, count.handed, Some(&e));
                        return Err(e);
                    }
                }
            }
            None => match writer_rx.recv_async().await {
                Ok(b) => b,
                Err(_) => break,
            },
        };
        let mut messages = 1;
        let stopped = if let Some(region) = first.file() {
            // Head, then the region with sendfile; never batched.
            let (head, head_err) =
                write_all_counted(stream, first.bytes(), send_timeout, close).await;
            count.add(head as u64);
            let mut sent = 0;
            let err = match head_err {
                Some(e) => Some(e),
                None => {
                    send_file_counted(stream, region, &mut sent, send_timeout, close, &mut |n| {
                        count.add(n)
                    })
                    .await
                    .err()
                }
            };
            let (mut head, mut sent) = (head, sent);
            if err.as_ref().is_some_and(|e| peer_may_lack(e, stream)) {
                // What the peer did not acknowledge comes off the file first, then the head.
                let lost = count.take_back_unacked(stream);
                let off_file = lost.min(sent);
                sent -= off_file;
                head = head.saturating_sub((lost - off_file) as usize);
            }
            if B::REPORTS {
                if err.is_some() {
                    // Earlier messages first: cut where the acknowledgement ends.
                    settle(&mut unconfirmed, count.handed, err.as_ref());
                }
                match &err {
                    None => unconfirmed.push_back(Unconfirmed {
                        message: first,
                        bytes: head,
                        file: sent,
                        end: count.handed,
                    }),
                    Some(_) => first.written(head, sent, err.as_ref()),
                }
            }
            err
        } else {
            match writer_rx.try_recv() {
                // The common case: one message waiting, written straight from its buffer.
                Err(_) => {
                    let (mut done, err) =
                        write_all_counted(stream, first.bytes(), send_timeout, close).await;
                    count.add(done as u64);
                    if err.as_ref().is_some_and(|e| peer_may_lack(e, stream)) {
                        let lost = count.take_back_unacked(stream);
                        done = done.saturating_sub(lost as usize);
                    }
                    if B::REPORTS {
                        if err.is_some() {
                            // Earlier messages first: cut where the acknowledgement ends.
                            settle(&mut unconfirmed, count.handed, err.as_ref());
                        }
                        match &err {
                            None => unconfirmed.push_back(Unconfirmed {
                                message: first,
                                bytes: done,
                                file: 0,
                                end: count.handed,
                            }),
                            Some(_) => first.written(done, 0, err.as_ref()),
                        }
                    }
                    err
                }
                // More waiting: gather plain byte messages into one write (one syscall).
                Ok(second) => {
                    let mut batch = Vec::with_capacity(WRITE_BATCH.min(first.bytes().len() * 4));
                    batch.extend_from_slice(first.bytes());
                    if B::REPORTS {
                        held.push((first, batch.len()));
                    }
                    let mut more = Some(second);
                    while let Some(m) = more.take() {
                        if m.file().is_some() {
                            next = Some(m); // written on its own, after this batch
                            break;
                        }
                        batch.extend_from_slice(m.bytes());
                        messages += 1;
                        if B::REPORTS {
                            held.push((m, batch.len()));
                        }
                        if batch.len() < WRITE_BATCH {
                            more = writer_rx.try_recv().ok();
                        }
                    }
                    let before = count.handed;
                    let (mut done, err) =
                        write_all_counted(stream, &batch, send_timeout, close).await;
                    count.add(done as u64);
                    if err.as_ref().is_some_and(|e| peer_may_lack(e, stream)) {
                        let lost = count.take_back_unacked(stream);
                        done = done.saturating_sub(lost as usize);
                    }
                    if err.is_some() {
                        // Earlier messages first: cut where the acknowledgement ends.
                        settle(&mut unconfirmed, count.handed, err.as_ref());
                    }
                    let mut start = 0;
                    for (mut m, end) in held.drain(..) {
                        if err.is_none() {
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
        if !unconfirmed.is_empty() {
            settle_acked(stream, &count, &mut unconfirmed);
        }
    }
    // Every sender is gone: the last messages are reported once the peer has
    // acknowledged them (waited for as a write is: the send timeout, a reset, `close`).
    if !unconfirmed.is_empty()
        && let Err(e) =
            await_acks(stream, None, &count, &mut unconfirmed, send_timeout, close).await
    {
        count.take_back_unacked(stream);
        settle(&mut unconfirmed, count.handed, Some(&e));
        return Err(e);
    }
    let mut stream = stream;
    stream.flush().await
}

/// A message written in full, waiting for the peer to acknowledge its last byte before
/// it is reported.
struct Unconfirmed<B> {
    message: B,
    /// Of its bytes, and of its file region, what was written.
    bytes: usize,
    file: u64,
    /// Where it ends in the connection's stream: the writer's count after its last byte.
    end: u64,
}

/// Reports the messages in `unconfirmed` that end within `acked` bytes of the stream as
/// written; with `failed`, every other one too, as far as `acked` reaches into it
/// (head first, then file) and stopped by that error.
fn settle<B: Outgoing>(
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
fn settle_acked<B: Outgoing>(
    stream: &TcpStream,
    count: &Counter<'_>,
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
) {
    let queued = unsent(stream).map_or(0, |n| n.max(0) as u64);
    settle(unconfirmed, count.handed.saturating_sub(queued), None);
}

/// While messages wait for the peer's acknowledgement and the mailbox is empty: waits for
/// the next message (`Ok(None)`: every sender is gone), looking at the send queue now
/// and then (from [`ACK_CHECK_FIRST`], doubling to [`STALL_CHECK`]) to report what was
/// acknowledged.
/// A reset seen meanwhile, a send queue that does not shrink for `send_timeout`, or
/// `close` firing is an error, as for a write. Without `writer_rx` (every sender is
/// gone): waits until all is acknowledged; without a send timeout as well, reports
/// everything as written at once (nothing would bound the wait).
async fn await_acks<B: Outgoing>(
    stream: &TcpStream,
    writer_rx: Option<&flume::Receiver<B>>,
    count: &Counter<'_>,
    unconfirmed: &mut VecDeque<Unconfirmed<B>>,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> io::Result<Option<B>> {
    let mut delay = ACK_CHECK_FIRST;
    // The send queue as last seen (first at the first look: the write loop has just
    // looked, so a look here would only repeat it).
    let mut queued = None;
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
                    if connection_gone(stream) {
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
        if connection_gone(stream) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        settle_acked(stream, count, unconfirmed);
        let now = unsent(stream);
        if now.is_some_and(|now| queued.is_some_and(|before| now < before)) {
            since = Instant::now();
        } else if let Some(limit) = send_timeout.filter(|l| since.elapsed() >= *l) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, SendTimeout(limit)));
        }
        queued = now;
        delay = (delay * 2).min(STALL_CHECK);
    }
}

/// Whether, after a write failed with `e`, bytes still in the send queue may never reach
/// the peer: the connection is gone (a reset), or we give up on it (the send timeout,
/// the server closing). Not after a file shrank under `sendfile`, nor after a write
/// refused because our own side shut the socket (a proxy session ending): the socket
/// then still delivers what it holds, and the count stays what was handed over.
fn peer_may_lack(e: &io::Error, stream: &TcpStream) -> bool {
    gave_up(e) || connection_gone(stream)
}

/// Whether the writer gave up on the peer (the send timeout, the server closing) rather
/// than the socket failing: what is still queued is then thrown away with a reset.
fn gave_up(e: &io::Error) -> bool {
    is_send_timeout(e) || e.get_ref().is_some_and(|inner| inner.is::<ServerClosing>())
}

/// Makes the socket's close send a reset and discard what it still holds
/// (`SO_LINGER` {on, 0}) instead of delivering it.
pub(crate) fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A writer's byte counts: `Stats::bytes_out`, a [`Handoff`]'s own count, and what this
/// writer has handed to the kernel.
struct Counter<'a> {
    stats: &'a Stats,
    handoff: Option<&'a Progress>,
    /// Bytes this writer wrote to its socket (for a handoff, its `written` is the
    /// socket's total, direct writes included).
    handed: u64,
}

impl Counter<'_> {
    /// Counts `n` bytes the socket took, as each write returns.
    fn add(&mut self, n: u64) {
        self.handed += n;
        count_written(self.stats, self.handoff, n as usize);
    }

    /// After a failed write, before the socket is shut: takes the bytes the peer never
    /// acknowledged back out of the counts, and returns how many that was.
    fn take_back_unacked(&mut self, stream: &TcpStream) -> u64 {
        let lost = match self.handoff {
            Some(p) => p.take_back_unacked(stream, self.stats),
            None => {
                let lost = unacked(stream, self.handed);
                self.stats.bytes_out.fetch_sub(lost, Ordering::Relaxed);
                lost
            }
        };
        self.handed = self.handed.saturating_sub(lost);
        lost
    }
}

impl Progress {
    /// [`Counter::take_back_unacked`] for a handoff's socket, done once whichever of the
    /// direct path and the writer fails first (the other then finds it done).
    fn take_back_unacked(&self, stream: &TcpStream, stats: &Stats) -> u64 {
        if self.settled.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let lost = unacked(stream, self.written.load(Ordering::Relaxed));
        self.written.fetch_sub(lost, Ordering::Relaxed);
        stats.bytes_out.fetch_sub(lost, Ordering::Relaxed);
        lost
    }
}

/// Writes all of `buf`; returns how much went out and, if it stopped short, why (a
/// socket error, no progress for `send_timeout`, or `close` fired). The caller counts
/// what went out either way, so a peer that resets in the middle of a batch leaves the
/// count right.
async fn write_all_counted(
    mut stream: &TcpStream,
    buf: &[u8],
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match progress(stream, send_timeout, close, stream.write(&buf[done..])).await {
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
fn count_written(stats: &Stats, handoff: Option<&Progress>, n: usize) {
    Stats::add(&stats.bytes_out, n as u64);
    if let Some(handoff) = handoff {
        handoff.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Sends a file region with `sendfile`. When the socket is full, one ordinary write of
/// the next few bytes waits for room (the runtime offers no bare "wait until writable").
/// A file that shrank underneath is an error: the promised length cannot be kept.
pub async fn send_file(stream: &TcpStream, region: &FileRegion) -> io::Result<u64> {
    let mut sent = 0;
    send_file_counted(stream, region, &mut sent, None, None, &mut |_| {}).await?;
    Ok(sent)
}

/// [`send_file`], counting into `sent` the bytes of the region sent so far, so a caller
/// knows how far it got when it fails, and telling `on_sent` each call's bytes as it
/// returns (so the server's counters move during a long transfer); a wait for room that
/// lasts `send_timeout` fails (every `sendfile` or write that moves bytes starts that
/// clock again), as does one still waiting when `close` fires.
async fn send_file_counted(
    mut stream: &TcpStream,
    region: &FileRegion,
    sent: &mut u64,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
    on_sent: &mut (dyn FnMut(u64) + Send),
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (sock, file) = (stream.as_raw_fd(), region.file.as_raw_fd());
    let end = region.offset + region.len;
    let mut offset = region.offset as libc::off_t;
    let mut fallback = [0u8; 4096];
    while (offset as u64) < end {
        *sent = offset as u64 - region.offset;
        if close.is_some_and(Shutdown::is_fired) {
            return Err(io::Error::other(ServerClosing));
        }
        let want = (end - offset as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration (we hold the stream and the
        // file), and `offset` is a valid off_t the kernel advances.
        let n = unsafe { libc::sendfile(sock, file, &mut offset, want) };
        if n > 0 {
            on_sent(n as u64);
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            ));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let chunk = (end - offset as u64).min(fallback.len() as u64) as usize;
                let got = region.file.read_at(&mut fallback[..chunk], offset as u64)?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ));
                }
                let wrote =
                    progress(stream, send_timeout, close, stream.write(&fallback[..got])).await?;
                on_sent(wrote as u64);
                offset += wrote as libc::off_t;
            }
            _ => return Err(e),
        }
    }
    *sent = region.len;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: i32, level: i32, name: i32) -> i32 {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a correctly sized int.
        unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut value as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        value
    }

    #[test]
    fn keepalive_is_set_as_asked() {
        rt::block_on(async {
            let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            set_keepalive(&stream, Duration::from_secs(60)).unwrap();
            let fd = stream.as_raw_fd();
            assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
            assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 60);
            assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        });
    }

    /// A connected pair of streams on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    #[test]
    fn handoff_keeps_order_across_direct_and_queued_writes() {
        use futures::io::AsyncReadExt;
        rt::block_on(async {
            let (near, mut far) = pair().await;
            // A small send buffer fills after a few chunks, so the sends below keep
            // switching between the direct path and the writer's mailbox.
            set_int_option(near.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4096).unwrap();
            let stats = Stats::new();
            let mut handoff = Handoff::spawn(near.clone(), &stats);
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
        });
    }

    #[test]
    fn watch_sees_a_fin_behind_unread_bytes_and_then_a_reset_without_reading() {
        rt::block_on(async {
            let (near, mut far) = pair().await;
            far.write_all(b"unread").await.unwrap();
            far.shutdown(Halves::Write).unwrap();
            let mut reader = Reader::new(near.clone(), None);
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

            // A reset, with bytes still unread, ends a wait that would never end.
            let (near, mut far) = pair().await;
            far.write_all(b"unread").await.unwrap();
            let mut near_w = near.clone();
            near_w.write_all(b"to be refused").await.unwrap();
            reset_on_close(&far).unwrap();
            drop(far);
            let mut reader = Reader::new(near, None);
            let out = rt::timeout(
                Duration::from_secs(20),
                reader.watch(futures::future::pending::<()>(), || {}),
            )
            .await;
            assert_eq!(out, Some(Err(Hangup::Reset)));
        });
    }

    #[test]
    fn handoff_reports_a_reset_peer() {
        rt::block_on(async {
            let (near, far) = pair().await;
            let stats = Stats::new();
            let mut handoff = Handoff::spawn(near, &stats);
            // Close the far side with unread input so it resets the connection.
            let mut far_w = far.clone();
            far_w.write_all(b"x").await.unwrap();
            drop(far_w);
            reset_on_close(&far).unwrap();
            drop(far);
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
