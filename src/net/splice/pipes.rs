//! The relays' pipes: made with a capacity (`F_SETPIPE_SZ`), held by a relay only while
//! it has bytes to move, kept a few at a time per thread for the next relay that needs
//! one, and bounded to a share of the process's open-files limit.
//!
//! A pipe is two descriptors that only speed a connection up. A relay that waits for
//! its source with nothing in its pipe gives the pipe back ([`Pipe::put_back`]), so an
//! idle session holds the two descriptors a copying one does, not six; the relay takes
//! a pipe again when its source is readable ([`Pipe::take`]). On one thread relays run
//! one at a time, and one that moves a message and waits again hands its empty pipe
//! straight to the next, so a couple of spares per thread spare the system calls of
//! making pipes without holding many descriptors idle. A thread that finds the process
//! out of descriptors closes its spares ([`release_spares`]): at the open-files limit
//! those are the descriptors that let a waiting connection through.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rustix::io::Errno;
use rustix::pipe::PipeFlags;

/// The share of the open-files limit that pipes (held or spare) may take, as a divisor:
/// a quarter. Connections need their descriptors to exist at all, so near the limit a
/// relay copies rather than take one a client or an upstream connect will want
/// (HAProxy bounds its splice pipes the same way: `maxpipes` is a quarter of
/// `maxconn`). The limit is read once, at the first pipe: a server has raised it by then.
pub const PIPE_SHARE: usize = 4;

/// Empty pipes a thread keeps for the next relay, beyond which a pipe given back is
/// closed: relays on a thread take turns, so a couple cover a thread's sessions passing
/// messages back and forth.
const SPARE_PIPES: usize = 2;

/// Descriptors all pipes hold in this process, spare ones included.
static PIPE_FDS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe of a set capacity.
pub(super) struct Pipe {
    /// The read end (spliced into the destination).
    pub(super) out: OwnedFd,
    /// The write end (filled from the source).
    pub(super) into: OwnedFd,
    /// The capacity as the kernel set it.
    pub(super) capacity: usize,
    /// The capacity asked for, which a spare pipe must match to be taken.
    asked: usize,
    _share: Share,
}

impl Pipe {
    /// An empty pipe of `asked` bytes: a spare one of this thread's, or a new one (the
    /// kernel rounds the size up to a power of two pages, and one it refuses to an
    /// unprivileged process — above `fs.pipe-max-size`, or past the user's
    /// `fs.pipe-user-pages-soft` — leaves the size it gave). `EMFILE` when pipes hold
    /// their share of the open-files limit, or the kernel's error when none can be made.
    pub(super) fn take(asked: usize) -> io::Result<Pipe> {
        let spare = SPARE
            .try_with(|spare| {
                let mut spare = spare.borrow_mut();
                let at = spare.iter().position(|p| p.asked == asked)?;
                Some(spare.swap_remove(at))
            })
            .ok()
            .flatten();
        match spare {
            Some(pipe) => Ok(pipe),
            None => Pipe::open(asked),
        }
    }

    fn open(asked: usize) -> io::Result<Pipe> {
        let share = Share::take()?;
        let (out, into) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity = match rustix::pipe::fcntl_setpipe_size(&into, asked.max(1)) {
            Ok(set) => set,
            Err(Errno::PERM) => rustix::pipe::fcntl_getpipe_size(&into)?,
            Err(e) => return Err(e.into()),
        };
        Ok(Pipe {
            out,
            into,
            capacity,
            asked,
            _share: share,
        })
    }

    /// Gives an empty pipe back for the next relay on this thread, or closes it when the
    /// thread has spares enough. The caller knows it is empty: a pipe holding bytes is
    /// dropped (closed) instead, never given back.
    pub(super) fn put_back(self) {
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_PIPES {
                spare.push(self);
            }
        });
    }
}

/// Closes this thread's spare pipes: the process is out of descriptors, and a
/// connection needs them more than the next relay does.
pub fn release_spares() {
    let _ = SPARE.try_with(|spare| spare.borrow_mut().clear());
}

/// A pipe's two descriptors counted against [`PIPE_SHARE`], until it is closed.
struct Share;

impl Share {
    fn take() -> io::Result<Share> {
        static BUDGET: OnceLock<usize> = OnceLock::new();
        let budget = *BUDGET.get_or_init(|| {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            // `None` is no limit at all.
            limit.map_or(usize::MAX, |n| {
                usize::try_from(n / PIPE_SHARE as u64).unwrap_or(usize::MAX)
            })
        });
        if PIPE_FDS.fetch_add(2, Relaxed) + 2 > budget {
            PIPE_FDS.fetch_sub(2, Relaxed);
            return Err(Errno::MFILE.into());
        }
        Ok(Share)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        PIPE_FDS.fetch_sub(2, Relaxed);
    }
}
