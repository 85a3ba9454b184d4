//! Zero-copy relay of one direction of a TCP stream: socket → pipe → socket with
//! `splice(2)`, so the bytes a proxy forwards never pass through user space.
//!
//! ```text
//!   from ──splice──▶ pipe (F_SETPIPE_SZ-capped) ──splice──▶ to
//!          counts `read`      in_pipe = read − written      counts `written`
//! ```
//!
//! - **The pipe is the buffer.** A [`Relay`] owns one pipe, its capacity set with
//!   `F_SETPIPE_SZ`. Nothing is read from the source while the pipe holds what the
//!   destination has not taken, so a slow receiver holds back the sender through TCP
//!   flow control and memory stays at one pipe per direction, however fast the sender.
//! - **Readiness-driven.** Bytes are spliced in until the source says `EAGAIN` or a splice
//!   comes back short (a short read means drained: wait for `readable()` before the next
//!   one), and spliced out until the pipe is empty or the destination is full (then wait
//!   for `writable()`). `EAGAIN` on the way in while the pipe holds bytes means the pipe
//!   is full (it counts buffers, not bytes: many small segments fill it early), so reading
//!   stops until the pipe has been emptied instead of spinning on a readable socket. No
//!   call blocks a thread; a relay that never has to wait yields now and then, so one
//!   fast stream cannot hold a thread's other tasks.
//! - **Counted as it moves.** A shared [`Tally`] says how many bytes were read and how
//!   many written, live, and each step is also reported to the caller's `on_step` (for
//!   byte counters and idle timers). The counts are updated right after each `splice`
//!   returns, before any wait, so dropping the future at any await point (a timer racing
//!   it) loses no count; and because the pipe and the state live in the `Relay`, not in
//!   the future, calling [`Relay::run`] again carries on where it stopped.
//! - **Half-close.** The source's EOF ends the relay only once the pipe is empty; the
//!   destination's write half is then shut (unless [`Relay::keep_open`] was asked), as
//!   the copying writer does when its producer is gone.
//! - **Failures say what was lost.** A failed splice ends the relay with a [`Failure`]:
//!   which side failed, what was written, and what is still in the pipe (dropped, unless
//!   the caller runs the relay again). While the relay waits for the destination with
//!   the source unread, it looks at the source every [`STALL_CHECK`]
//!   ([`Socket::hangup`], which reads nothing), as [`Reader::watch`] does for the copying pump:
//!   a reset ends the relay, a FIN is reported once as [`Step::SourceFin`] (as is a FIN
//!   read while the pipe still holds bytes for the destination).
//! - **Descriptors come first.** A pipe is two descriptors that only speed a connection
//!   up, so relays' pipes hold at most a quarter of the open-files limit
//!   ([`PIPE_SHARE`]); past it [`Relay::new`] fails and the caller copies.
//! - **Small messages copy** ([`Relay::adaptive`]). Moving a few hundred bytes through
//!   a pipe costs more than copying them (two splices and a pipe buffer against a
//!   `recv` and a `send`), so an adaptive relay copies — through the thread's scratch
//!   buffer, straight to the destination, keeping only what the destination did not
//!   take — until a read fills the relay's capacity: that direction is moving bulk, and
//!   it splices from then on, until it next waits for its source with nothing in flight.
//!   Either way the relay holds at most its capacity, and the same counts, steps, waits
//!   and ends apply.
//! - **Fallback.** A stream `splice` cannot move (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`) ends
//!   the relay with [`End::Unsupported`], which hands back whatever was in the pipe so
//!   the caller can copy from there on without losing a byte.
//!
//! A splice into a socket whose peer has gone may raise `SIGPIPE` (the kernel offers no
//! `MSG_NOSIGNAL` for it); Rust programs ignore that signal from the start, so it
//! surfaces as `EPIPE`.
//!
//! The relay works on the [`Socket`] beneath a plain stream (`WriteHalf::raw`): its
//! readiness waits, hangup check and shutdown are the socket's own, as for every other
//! user of the descriptor.
//!
//! Try it (the proxy splices by default): `switchboard hello & switchboard proxy
//! --upstream 127.0.0.1:7009`, then `nc 127.0.0.1 7001`.
//!
//! [`Reader::watch`]: crate::net::reader::Reader::watch

mod pipes;

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;

use futures::future::{Fuse, FusedFuture, FutureExt};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use rustix::pipe::SpliceFlags;

use crate::net::reader::{READ_CHUNK, STALL_CHECK, with_scratch};
use crate::net::socket::{Hangup, Socket};
use crate::rt;
use pipes::Pipe;
pub use pipes::{PIPE_SHARE, release_spares as release_spare_pipes};

/// The pipe capacity a relay asks for by default: the kernel's own default pipe size,
/// and as much as one read of the copying path takes in ([`READ_CHUNK`]).
///
/// [`READ_CHUNK`]: crate::net::reader::READ_CHUNK
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// Bytes a relay may move without waiting before it yields to other tasks: a few pipes'
/// worth, so a yield is rare next to the splices it follows, yet a stream that never
/// waits (a fast sender to a fast receiver) still lets a pinned thread's other sessions
/// run.
const YIELD_AFTER: u64 = 16 * PIPE_CAPACITY as u64;

/// A relay's live counts, shared with whoever reports on it ([`Relay::tally`]). Only the
/// relay writes them; they outlive its future and the relay itself.
#[derive(Debug, Default)]
pub struct Tally {
    read: AtomicU64,
    written: AtomicU64,
    spliced: AtomicU64,
    stalled: AtomicBool,
}

impl Tally {
    /// Bytes taken from the source so far.
    pub fn read(&self) -> u64 {
        self.read.load(Relaxed)
    }

    /// Bytes handed to the destination socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Bytes written by splicing (the rest of `written` was copied: an adaptive relay's
    /// small messages).
    pub fn spliced(&self) -> u64 {
        self.spliced.load(Relaxed)
    }

    /// Bytes read and not written: in the pipe, or handed back by [`End::Unsupported`].
    pub fn unwritten(&self) -> u64 {
        self.read().saturating_sub(self.written())
    }

    /// Whether the relay is waiting for the destination to take bytes with the pipe
    /// full, leaving the source unread: a slow receiver is holding the sender back.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Relaxed)
    }
}

/// One step of a relay, told to `on_step` as it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This many bytes came from the source into the pipe.
    Read(usize),
    /// This many bytes went from the pipe into the destination socket.
    Wrote(usize),
    /// The source shut its write half while bytes before the FIN are not all written:
    /// seen by looking while the pipe was full, or read while the pipe still held bytes
    /// for a slow destination. Told at most once, and not when the FIN finds the pipe
    /// empty (the relay then ends with [`End::Eof`] at once). A copying reader that
    /// reads the EOF knows it at that moment too, whatever is still queued behind it.
    SourceFin,
}

/// How a relay ended without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The source closed its write half and every byte read was written (and the
    /// destination's write half shut, unless [`Relay::keep_open`]).
    Eof,
    /// `splice` cannot move these streams. `pending` is what was in the pipe (read, not
    /// written): the caller writes it first and copies from there on.
    Unsupported { pending: Vec<u8> },
    /// The relay had given its empty pipe back while it waited, and no pipe could be had
    /// again (pipes hold their share of the open-files limit, or none can be made):
    /// nothing is in flight, and the caller copies from here on.
    NoPipe,
}

/// Which socket a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Reading failed, or the source was seen to reset while the relay waited.
    Source,
    /// Writing failed: the destination's peer is gone.
    Destination,
}

/// A relay that failed, and what it had moved by then.
#[derive(Debug)]
pub struct Failure {
    pub side: Side,
    pub error: io::Error,
    /// Bytes handed to the destination socket before the failure.
    pub written: u64,
    /// Bytes read and still in the pipe: never delivered, unless the relay runs again.
    pub in_pipe: u64,
}

/// One direction of a stream, relayed through a pipe of its own (see the module notes).
pub struct Relay {
    /// The pipe, while the relay has bytes to move (given back while it waits for its
    /// source with the pipe empty); non-blocking, so a splice never waits on it either.
    pipe: Option<Pipe>,
    /// The capacity asked for, which a pipe taken again is made with.
    asked: usize,
    /// The first pipe's capacity as the kernel set it: the most the relay holds, whatever
    /// a later pipe's size.
    capacity: usize,
    /// Bytes in the pipe.
    in_pipe: usize,
    /// Bytes a copying read took that the destination has not: written before anything
    /// else, and nothing is read while they wait. Empty while splicing.
    held: Vec<u8>,
    /// Copy small messages, splice bulk ([`Relay::adaptive`]).
    adaptive: bool,
    /// Reading by copying now (adaptive relays only).
    copying: bool,
    /// Whether the pipe may take more: cleared when it refused bytes it should have had
    /// room for (all its buffers in use), set again once it is empty.
    room: bool,
    /// The source's EOF has been read.
    eof: bool,
    /// Shut the destination's write half after the source's EOF.
    half_close: bool,
    /// [`Step::SourceFin`] has been told.
    fin_told: bool,
    tally: Arc<Tally>,
}

impl Relay {
    /// A relay with a pipe of `capacity` bytes (the kernel rounds it up to a power of two
    /// pages). A capacity the kernel refuses to an unprivileged process (above
    /// `fs.pipe-max-size`, or once the user's pipes pass `fs.pipe-user-pages-soft`) leaves
    /// the pipe at the size the kernel gave it, which still bounds the relay. Fails when
    /// no pipe can be had: none can be made, or pipes hold their share of the open-files
    /// limit ([`PIPE_SHARE`], `EMFILE`). The caller copies instead.
    pub fn new(capacity: usize) -> io::Result<Relay> {
        let pipe = Pipe::take(capacity)?;
        Ok(Relay {
            asked: capacity,
            capacity: pipe.capacity,
            pipe: Some(pipe),
            in_pipe: 0,
            held: Vec::new(),
            adaptive: false,
            copying: false,
            room: true,
            eof: false,
            half_close: true,
            fin_told: false,
            tally: Arc::default(),
        })
    }

    /// Leaves the destination's write half open after the source's EOF (the caller shuts
    /// it, or carries on writing).
    pub fn keep_open(mut self) -> Self {
        self.half_close = false;
        self
    }

    /// Copies small messages and splices bulk (see the module notes): a ping-pong of
    /// small messages costs what copying costs, a stream what splicing costs.
    pub fn adaptive(mut self) -> Self {
        self.adaptive = true;
        self.copying = true;
        self
    }

    /// The most the relay holds, in bytes: its first pipe's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The relay's live counts.
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Relays `from` to `to` until the source's EOF has been written through, a splice
    /// fails, or `splice` turns out not to work on these streams. `on_step` hears every
    /// byte count as it moves. Safe to drop at any await point; running it again resumes.
    pub async fn run(
        &mut self,
        from: &Socket,
        to: &Socket,
        mut on_step: impl FnMut(Step),
    ) -> Result<End, Failure> {
        let tally = self.tally.clone();
        let _stalled = ClearOnDrop(&tally.stalled);
        // Whether a splice is worth trying before waiting; a new run tries both, as a
        // resumed one does not know what happened meanwhile.
        let (mut can_read, mut can_write) = (true, true);
        let mut moved_since_wait = 0u64;
        // The next look at a source the relay cannot read; kept across stalls, so a
        // destination that keeps taking a little does not put the look off for ever.
        let mut look: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        // The readiness waits, kept across passes until they complete: a wait dropped
        // and made again would hand the socket a new waker, and the socket wakes the
        // one it replaces, so each such pass would cost a spurious wake-up.
        let mut readable = pin!(Fuse::terminated());
        let mut writable = pin!(Fuse::terminated());
        loop {
            if can_read && self.read_open() && self.copying {
                let want = self.capacity;
                match copy_once(from, to, want, &mut self.held) {
                    Ok((0, _)) => self.eof = true,
                    Ok((n, wrote)) => {
                        tally.read.fetch_add(n as u64, Relaxed);
                        moved_since_wait += n as u64;
                        on_step(Step::Read(n));
                        match wrote {
                            Ok(0) => can_write = false,
                            Ok(m) => {
                                tally.written.fetch_add(m as u64, Relaxed);
                                moved_since_wait += m as u64;
                                on_step(Step::Wrote(m));
                                if m < n {
                                    can_write = false;
                                }
                            }
                            Err(e) => return Err(self.failure(Side::Destination, e.into())),
                        }
                        if n < want.min(READ_CHUNK) {
                            can_read = false;
                        } else {
                            // A full read: this direction moves bulk, which splices.
                            self.copying = false;
                        }
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => can_read = false,
                    Err(e) => return Err(self.failure(Side::Source, e.into())),
                }
            } else if can_read && self.read_open() {
                if self.pipe.is_none() {
                    match Pipe::take(self.asked) {
                        Ok(pipe) => self.pipe = Some(pipe),
                        // Nothing is in flight: the caller copies from here on.
                        Err(_) => return Ok(End::NoPipe),
                    }
                }
                let pipe = self.pipe.as_ref().expect("a pipe to read into");
                let want = self.capacity.min(pipe.capacity) - self.in_pipe;
                match splice(from, &pipe.into, want) {
                    Ok(0) => {
                        self.eof = true;
                        if self.in_pipe > 0 && !self.fin_told {
                            self.fin_told = true;
                            on_step(Step::SourceFin);
                        }
                    }
                    Ok(n) => {
                        self.in_pipe += n;
                        tally.read.fetch_add(n as u64, Relaxed);
                        moved_since_wait += n as u64;
                        on_step(Step::Read(n));
                        if n < want {
                            can_read = false;
                        }
                    }
                    Err(Errno::INTR) => continue,
                    // The socket is drained, or the pipe is out of buffers; the second can
                    // only be when it holds bytes, and waiting for `readable` would then
                    // wake at once, again and again.
                    Err(Errno::AGAIN) if self.in_pipe > 0 => self.room = false,
                    Err(Errno::AGAIN) => can_read = false,
                    Err(e) if unsupported(e) => return self.fall_back(),
                    Err(e) => return Err(self.failure(Side::Source, e.into())),
                }
            }
            if can_write && !self.held.is_empty() {
                match send(to, &self.held) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        return Err(self.failure(Side::Destination, e));
                    }
                    Ok(n) => {
                        self.held.drain(..n);
                        tally.written.fetch_add(n as u64, Relaxed);
                        moved_since_wait += n as u64;
                        on_step(Step::Wrote(n));
                        if self.held.is_empty() {
                            self.held = Vec::new();
                        } else {
                            can_write = false;
                        }
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => can_write = false,
                    Err(e) => return Err(self.failure(Side::Destination, e.into())),
                }
            } else if can_write && let Some(pipe) = self.pipe.as_ref().filter(|_| self.in_pipe > 0)
            {
                match splice(&pipe.out, to, self.in_pipe) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        return Err(self.failure(Side::Destination, e));
                    }
                    Ok(n) => {
                        self.in_pipe -= n;
                        tally.written.fetch_add(n as u64, Relaxed);
                        tally.spliced.fetch_add(n as u64, Relaxed);
                        moved_since_wait += n as u64;
                        on_step(Step::Wrote(n));
                        if self.in_pipe == 0 {
                            self.room = true;
                        } else {
                            // Short: the socket's send buffer is full.
                            can_write = false;
                        }
                    }
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => can_write = false,
                    Err(e) if unsupported(e) => return self.fall_back(),
                    Err(e) => return Err(self.failure(Side::Destination, e.into())),
                }
            }
            if self.eof && self.in_pipe == 0 && self.held.is_empty() {
                if self.half_close {
                    let _ = to.shut_write();
                }
                return Ok(End::Eof);
            }
            // Whether the relay would take bytes, and whether it has bytes to give.
            let read_open = self.read_open();
            let write_open = self.in_pipe > 0 || !self.held.is_empty();
            if (can_read && read_open) || (can_write && write_open) {
                // A splice can be tried at once: every pass that gets here moved bytes.
                if moved_since_wait >= YIELD_AFTER {
                    moved_since_wait = 0;
                    yield_now().await;
                }
                continue;
            }
            moved_since_wait = 0;
            if self.in_pipe == 0 && self.held.is_empty() && self.adaptive {
                // Nothing in flight: what comes next is copied until it proves bulk.
                self.copying = true;
            }
            if self.in_pipe == 0
                && let Some(pipe) = self.pipe.take()
            {
                // Waiting for the source with nothing to move: the pipe serves another
                // relay meanwhile, and this one takes a pipe again when bytes come.
                pipe.put_back();
            }
            let (want_read, want_write) = (read_open, write_open);
            let stalled = !read_open && !self.eof;
            tally.stalled.store(stalled, Relaxed);
            if stalled && look.is_none() {
                look = Some(Box::pin(rt::sleep(STALL_CHECK)));
            }
            if want_read && readable.is_terminated() {
                readable.set(from.readable().fuse());
            }
            if want_write && writable.is_terminated() {
                writable.set(to.writable().fuse());
            }
            let woke = futures::future::poll_fn(|cx| {
                if want_read && let Poll::Ready(r) = readable.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Readable(r));
                }
                if want_write && let Poll::Ready(w) = writable.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Writable(w));
                }
                match look
                    .as_mut()
                    .filter(|_| stalled)
                    .map(|l| l.as_mut().poll(cx))
                {
                    Some(Poll::Ready(())) => Poll::Ready(Woke::Look),
                    _ => Poll::Pending,
                }
            })
            .await;
            tally.stalled.store(false, Relaxed);
            match woke {
                Woke::Readable(Ok(())) => can_read = true,
                Woke::Writable(Ok(())) => can_write = true,
                Woke::Readable(Err(e)) => return Err(self.failure(Side::Source, e)),
                Woke::Writable(Err(e)) => return Err(self.failure(Side::Destination, e)),
                Woke::Look => {
                    look = None;
                    match from.hangup() {
                        Some(Hangup::Reset) => {
                            let e = io::Error::from(io::ErrorKind::ConnectionReset);
                            return Err(self.failure(Side::Source, e));
                        }
                        Some(Hangup::Fin) if !self.fin_told => {
                            self.fin_told = true;
                            on_step(Step::SourceFin);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Whether the relay would take bytes from its source: not at its end, nothing copied
    /// waiting for the destination, and room in the pipe.
    fn read_open(&self) -> bool {
        self.room && !self.eof && self.in_pipe < self.capacity && self.held.is_empty()
    }

    fn failure(&self, side: Side, error: io::Error) -> Failure {
        Failure {
            side,
            error,
            written: self.tally.written(),
            in_pipe: (self.in_pipe + self.held.len()) as u64,
        }
    }

    /// Empties the pipe into a buffer for the caller to write: `splice` cannot go on.
    fn fall_back(&mut self) -> Result<End, Failure> {
        // Nothing is spliced while copied bytes are held, so none are here; were they,
        // they would come first.
        let mut pending = std::mem::take(&mut self.held);
        let held = pending.len();
        let mut at = held;
        pending.resize(held + self.in_pipe, 0);
        while let Some(pipe) = self.pipe.as_ref().filter(|_| at < pending.len()) {
            match rustix::io::read(&pipe.out, &mut pending[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(Errno::INTR) => continue,
                // The bytes are ours and in the pipe; a read that fails leaves them there
                // and counted as unwritten, which is what the failure says.
                Err(e) => return Err(self.failure(Side::Source, e.into())),
            }
        }
        pending.truncate(at);
        self.in_pipe -= at - held;
        self.room = self.in_pipe == 0;
        Ok(End::Unsupported { pending })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An empty pipe serves the next relay; one still holding bytes is closed with them.
        if let Some(pipe) = self.pipe.take().filter(|_| self.in_pipe == 0) {
            pipe.put_back();
        }
    }
}

/// What ended a relay's wait.
enum Woke {
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    /// Time to look at a source the relay has not been able to read.
    Look,
}

/// Clears a flag when the relay's future ends or is dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// One non-blocking `splice` of up to `len` bytes (whole pages moved, not copied).
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> Result<usize, Errno> {
    rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )
}

/// One copying step: a non-blocking read of up to `want` bytes from `from` into the
/// thread's scratch buffer, and at once a non-blocking write of them to `to`; what `to`
/// does not take goes to `held`. Returns the bytes read (0: end of input) and the
/// write's outcome (`Ok(0)` when `to` took nothing; a failed write's bytes are in `held`).
fn copy_once(
    from: impl AsFd,
    to: impl AsFd,
    want: usize,
    held: &mut Vec<u8>,
) -> Result<(usize, Result<usize, Errno>), Errno> {
    with_scratch(|scratch| {
        let buf = &mut scratch[..want.min(READ_CHUNK)];
        let n = rustix::net::recv(&from, &mut *buf, RecvFlags::DONTWAIT)?.0;
        if n == 0 {
            return Ok((0, Ok(0)));
        }
        let wrote = loop {
            match send(&to, &buf[..n]) {
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break Ok(0),
                other => break other,
            }
        };
        held.extend_from_slice(&buf[wrote.unwrap_or(0)..n]);
        Ok((n, wrote))
    })
}

/// One non-blocking `send`; a peer gone gives `EPIPE`, never `SIGPIPE`.
fn send(to: impl AsFd, bytes: &[u8]) -> Result<usize, Errno> {
    rustix::net::send(to, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
}

/// Whether an error says `splice` cannot work on this descriptor at all, rather than
/// that the connection failed.
fn unsupported(e: Errno) -> bool {
    matches!(e, Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
}

/// Lets the executor run other tasks once before this one goes on.
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::tests::pair;
    use crate::net::stream::{ReadHalf, WriteHalf};
    use futures::io::{AsyncReadExt, AsyncWriteExt};

    /// `client ─▶ near ═relay═▶ far ─▶ server`: the test writes to `client` and reads
    /// from `server`; the relay runs on `near` and `far`.
    struct Wired {
        client_w: WriteHalf,
        server_r: ReadHalf,
        near: Socket,
        far: Socket,
        /// The halves no test uses, kept open.
        _rest: (ReadHalf, WriteHalf),
    }

    async fn wired() -> Wired {
        let (client, near) = pair().await;
        let (far, server) = pair().await;
        let (near, far) = (near.socket().clone(), far.socket().clone());
        let (client_r, client_w) = client.split();
        let (server_r, server_w) = server.split();
        Wired {
            client_w,
            server_r,
            near,
            far,
            _rest: (client_r, server_w),
        }
    }

    /// Runs `relay` from `near` to `far` until `server` has read `got`'s length; the relay
    /// ending first is a failure.
    async fn relay_until_read(
        relay: &mut Relay,
        (near, far): (&Socket, &Socket),
        server: &mut ReadHalf,
        got: &mut [u8],
    ) {
        let run = std::pin::pin!(relay.run(near, far, |_| {}));
        let read = std::pin::pin!(server.read_exact(got));
        match futures::future::select(run, read).await {
            futures::future::Either::Right((read, _)) => read.unwrap(),
            futures::future::Either::Left((end, _)) => panic!("relay ended: {end:?}"),
        }
    }

    #[test]
    fn a_relay_waiting_on_its_source_holds_no_pipe_and_takes_one_when_bytes_come() {
        rt::block_on(async {
            let Wired {
                mut client_w,
                mut server_r,
                near,
                far,
                _rest,
            } = wired().await;
            let mut relay = Relay::new(PIPE_CAPACITY).unwrap();
            assert!(relay.pipe.is_some());
            for message in [&b"ping"[..], b"pong"] {
                client_w.write_all(message).await.unwrap();
                let mut got = [0u8; 4];
                // The relay moves the message and goes back to waiting in one poll, so
                // once the server has it, the relay is waiting.
                relay_until_read(&mut relay, (&near, &far), &mut server_r, &mut got).await;
                assert_eq!(&got, message);
                assert!(relay.pipe.is_none(), "an idle relay kept its pipe");
            }
            assert_eq!(relay.tally().written(), 8);
        });
    }

    #[test]
    fn an_adaptive_relay_copies_small_messages_splices_bulk_and_copies_again_after() {
        rt::block_on(async {
            let Wired {
                mut client_w,
                mut server_r,
                near,
                far,
                _rest,
            } = wired().await;
            let mut relay = Relay::new(PIPE_CAPACITY).unwrap().adaptive();
            let tally = relay.tally();
            let bulk: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
            for (round, message) in [&b"ping"[..], &bulk, b"pong"].into_iter().enumerate() {
                let spliced_before = tally.spliced();
                let send = rt::spawn({
                    let (mut client_w, message) = (client_w, message.to_vec());
                    async move {
                        client_w.write_all(&message).await.unwrap();
                        client_w
                    }
                });
                let mut got = vec![0u8; message.len()];
                relay_until_read(&mut relay, (&near, &far), &mut server_r, &mut got).await;
                client_w = send.await;
                assert!(got == message, "round {round}: the bytes differ");
                let spliced = tally.spliced() - spliced_before;
                if message.len() > PIPE_CAPACITY {
                    assert!(spliced > 0, "round {round}: bulk was not spliced");
                } else {
                    assert_eq!(spliced, 0, "round {round}: a small message was spliced");
                }
                // Waiting again with nothing in flight: the next message is copied.
                assert!(relay.copying && relay.held.is_empty(), "round {round}");
            }
            assert_eq!(tally.written(), 8 + bulk.len() as u64);
            assert_eq!(tally.read(), tally.written());
        });
    }
}
