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
//! - A message may carry a [`FileRegion`] after its bytes: the writer hands it to the
//!   kernel (`sendfile`), so large files never pass through user space.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown as Halves;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWriteExt};

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
    /// Bytes read so far (counted here, added to [`Stats`] once at the end).
    pub bytes: u64,
}

impl Reader {
    /// Reads from `stream` (a clone of the connection; the reader never writes to it).
    pub fn new(stream: TcpStream, idle: Option<Duration>) -> Self {
        Reader {
            stream,
            idle,
            last_input: Instant::now(),
            timer: None,
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

/// Turns on TCP keepalive probes: a peer that vanished without a reset (power loss, a
/// dropped NAT entry) is noticed after `idle` of silence plus three failed probes 10 s
/// apart, instead of never.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let set = |level, name, value: libc::c_int| {
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
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        idle.as_secs().clamp(1, 32_767) as libc::c_int,
    )?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
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
/// half) or when a write fails (then it shuts both halves). It adds the bytes it wrote to
/// `stats.bytes_out` and counts itself in `stats.live_tasks()`.
pub fn spawn_writer<B: Outgoing>(stream: TcpStream, stats: &Arc<Stats>) -> flume::Sender<B> {
    let (writer_tx, writer_rx) = flume::bounded(WRITER_MAILBOX);
    spawn_writer_with(stream, writer_rx, stats);
    writer_tx
}

/// Like [`spawn_writer`] for a mailbox the caller made (a role that needs another capacity).
pub fn spawn_writer_with<B: Outgoing>(
    stream: TcpStream,
    writer_rx: flume::Receiver<B>,
    stats: &Arc<Stats>,
) {
    let task = stats.task();
    let stats = stats.clone();
    rt::spawn_here(async move {
        let _task = task;
        let written = write_loop(&stream, &writer_rx).await;
        Stats::add(&stats.bytes_out, written.0);
        match written.1 {
            Ok(()) => {
                let _ = stream.shutdown(Halves::Write);
            }
            Err(e) => {
                log::debug!("write failed: {e}");
                let _ = stream.shutdown(Halves::Both);
            }
        }
    });
}

async fn write_loop<B: Outgoing>(
    mut stream: &TcpStream,
    writer_rx: &flume::Receiver<B>,
) -> (u64, io::Result<()>) {
    let mut written = 0u64;
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(b) => b,
            None => match writer_rx.recv_async().await {
                Ok(b) => b,
                Err(_) => break,
            },
        };
        let mut result = if first.file().is_some() {
            Ok(0)
        } else {
            match writer_rx.try_recv() {
                // The common case: one message waiting, written straight from its buffer.
                Err(_) => stream
                    .write_all(first.bytes())
                    .await
                    .map(|()| first.bytes().len()),
                // More waiting: gather plain byte messages into one write (one syscall).
                Ok(second) => {
                    let mut batch = Vec::with_capacity(WRITE_BATCH.min(first.bytes().len() * 4));
                    batch.extend_from_slice(first.bytes());
                    let mut more = Some(second);
                    while let Some(m) = more.take() {
                        if m.file().is_some() {
                            next = Some(m); // written on its own, after this batch
                            break;
                        }
                        batch.extend_from_slice(m.bytes());
                        if batch.len() < WRITE_BATCH {
                            more = writer_rx.try_recv().ok();
                        }
                    }
                    stream.write_all(&batch).await.map(|()| batch.len())
                }
            }
        };
        if let Some(region) = first.file() {
            result = match stream.write_all(first.bytes()).await {
                Ok(()) => send_file(stream, region)
                    .await
                    .map(|n| first.bytes().len() + n as usize),
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(n) => written += n as u64,
            Err(e) => return (written, Err(e)),
        }
    }
    (written, stream.flush().await)
}

/// Sends a file region with `sendfile`. When the socket is full, one ordinary write of
/// the next few bytes waits for room (the runtime offers no bare "wait until writable").
/// A file that shrank underneath is an error: the promised length cannot be kept.
pub async fn send_file(mut stream: &TcpStream, region: &FileRegion) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let (sock, file) = (stream.as_raw_fd(), region.file.as_raw_fd());
    let end = region.offset + region.len;
    let mut offset = region.offset as libc::off_t;
    let mut fallback = [0u8; 4096];
    while (offset as u64) < end {
        let want = (end - offset as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration (we hold the stream and the
        // file), and `offset` is a valid off_t the kernel advances.
        let n = unsafe { libc::sendfile(sock, file, &mut offset, want) };
        if n > 0 {
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
                let sent = stream.write(&fallback[..got]).await?;
                offset += sent as libc::off_t;
            }
            _ => return Err(e),
        }
    }
    Ok(region.len)
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
}
