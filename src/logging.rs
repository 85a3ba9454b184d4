//! The servers' log output: femme's lines, through a pipe of our own, so that whatever
//! reads our stdout can neither stall the server nor crash it.
//!
//! femme writes each line straight to stdout and unwraps the result. A stdout that went
//! away (`switchboard chat | head`, a closed terminal) therefore panics whichever task
//! logged (the chat broker among them), and a stdout nobody drains (`| less`, left
//! unscrolled) blocks every task that logs once the 64 KiB pipe is full, until every
//! executor thread is stuck and no client is served. So before femme starts, fd 1 is
//! swapped for a pipe that this module empties:
//!
//! ```text
//!   log call ─▶ femme ─▶ fd 1 (our pipe) ─▶ drain thread ─▶ queue (≤ 1 MiB) ─▶ output thread ─▶ the real stdout
//! ```
//!
//! - The drain thread empties the pipe as fast as lines come, so a log call never waits
//!   on the reader of stdout.
//! - When the queue is full, whole lines are dropped and counted; once output moves
//!   again a warning says how many were lost.
//! - When the real stdout fails (closed pipe, full disk), output stops for good, one line
//!   on stderr says why, and the pipe is still drained, into nothing.
//! - [`LogOutput::finish`] at exit writes what is queued (the shutdown summary is the
//!   last line), waiting at most [`FINISH_WAIT`].
//!
//! Try it: `switchboard chat | head -1`, then `telnet 127.0.0.1 7000`: the chat goes on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Log bytes held for a slow stdout before whole lines are dropped: thousands of lines,
/// and a bound on what logging can cost in memory.
pub const QUEUE_MAX: usize = 1 << 20;

/// The longest [`LogOutput::finish`] waits for queued lines to be written.
pub const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The drain thread's read size (the pipe holds 64 KiB).
const READ_CHUNK: usize = 64 * 1024;

/// Starts femme at `level`, writing through the pipe described above. If the pipe cannot
/// be set up, femme writes to stdout directly and stderr says why.
pub fn start(level: log::LevelFilter) -> LogOutput {
    let output = match redirect_stdout() {
        Ok(output) => output,
        Err(e) => {
            crate::note!("switchboard: logging straight to stdout (no log pipe: {e})");
            LogOutput { threads: None }
        }
    };
    femme::with_level(level);
    output
}

/// The running log pipe; [`finish`](LogOutput::finish) it before the process exits.
pub struct LogOutput {
    /// The drain and output threads (`None` when logging goes straight to stdout).
    threads: Option<(JoinHandle<()>, Option<JoinHandle<()>>)>,
}

impl LogOutput {
    /// Closes the pipe (fd 1 becomes /dev/null, so later log calls cost nothing) and
    /// waits, at most [`FINISH_WAIT`], until every line logged before is written.
    pub fn finish(self) {
        let Some((drain, output)) = self.threads else {
            return;
        };
        let _ = io::stdout().flush();
        let Ok(null) = File::options().write(true).open("/dev/null") else {
            return;
        };
        // SAFETY: dup2 onto fd 1 from a descriptor we own; it closes the pipe's last
        // write end, so the drain thread reads to the end of what was logged.
        if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
            return;
        }
        let deadline = Instant::now() + FINISH_WAIT;
        for thread in std::iter::once(drain).chain(output) {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// What the drain thread hands the output thread.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Whole lines dropped because `bytes` was full, not yet reported.
    dropped: u64,
    /// The pipe reached its end: nothing more will come.
    closed: bool,
    /// The real stdout failed: everything is discarded from now on.
    broken: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves plain bytes behind, still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Puts a pipe on fd 1 and starts the threads that empty it into the real stdout.
fn redirect_stdout() -> io::Result<LogOutput> {
    // The real stdout, moved above the standard descriptors; none if it was closed.
    let real = dup_above_stdio(1).ok().map(File::from);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both; the OwnedFds close them.
    let fresh = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // Either end may have landed on fd 0..2 if those were closed: move both up.
    let pipe = File::from(dup_above_stdio(fresh[0].as_raw_fd())?);
    let write_end = dup_above_stdio(fresh[1].as_raw_fd())?;
    drop(fresh);

    // The threads start before fd 1 changes, so nothing is ever written to a pipe that
    // nobody drains.
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            broken: real.is_none(),
            ..Queue::default()
        }),
        ready: Condvar::new(),
    });
    let drain = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("log-drain".into())
            .spawn(move || drain(pipe, &shared))?
    };
    let output = match real {
        Some(real) => Some(
            std::thread::Builder::new()
                .name("log-output".into())
                .spawn(move || output(real, &shared))?,
        ),
        None => None,
    };
    // SAFETY: both descriptors are open; on success fd 1 is the pipe's write end. On
    // failure dropping `write_end` closes the pipe and the threads end.
    if unsafe { libc::dup2(write_end.as_raw_fd(), 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(LogOutput {
        threads: Some((drain, output)),
    })
}

/// Duplicates `fd` onto the lowest free descriptor above 2, close-on-exec.
fn dup_above_stdio(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC only creates a descriptor; it fails cleanly on a bad `fd`.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: fcntl just opened `new`, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }
}

/// Reads the pipe until its end, queueing whole lines while there is room.
fn drain(mut pipe: File, shared: &Shared) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at_line_start = true;
    let mut keeping = true;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut queue = shared.lock();
        if queue.broken {
            continue; // read and forget: nobody can see it
        }
        at_line_start = admit(&mut queue, &buf[..n], at_line_start, &mut keeping);
        drop(queue);
        shared.ready.notify_one();
    }
    shared.lock().closed = true;
    shared.ready.notify_one();
}

/// Appends `data` to the queue a line at a time: a line that starts while the queue is
/// full is dropped whole (and counted), and a line that started is kept whole. Returns
/// whether `data` ended at a line's end.
fn admit(queue: &mut Queue, data: &[u8], mut at_line_start: bool, keeping: &mut bool) -> bool {
    for piece in data.split_inclusive(|&b| b == b'\n') {
        if at_line_start {
            *keeping = queue.bytes.len() < QUEUE_MAX;
        }
        let complete = piece.last() == Some(&b'\n');
        if *keeping {
            queue.bytes.extend_from_slice(piece);
        } else if complete {
            queue.dropped += 1;
        }
        at_line_start = complete;
    }
    at_line_start
}

/// Writes what the drain thread queues to the real stdout, until the pipe has ended and
/// the queue is empty, or a write fails.
fn output(mut real: File, shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        let dropped = {
            let mut queue = shared.lock();
            while queue.bytes.is_empty() && !queue.closed {
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.bytes.is_empty() {
                return; // closed, and everything written
            }
            std::mem::swap(&mut batch, &mut queue.bytes);
            std::mem::take(&mut queue.dropped)
        };
        if let Err(e) = real.write_all(&batch) {
            let mut queue = shared.lock();
            queue.broken = true;
            queue.bytes = Vec::new();
            drop(queue);
            crate::note!("switchboard: log output stopped: cannot write to stdout ({e})");
            return;
        }
        batch.clear();
        if dropped > 0 {
            // Logged like any line, so it comes out in femme's format, after what was kept.
            log::warn!(lines = dropped; "log output fell behind: lines dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(queue: &mut Queue, chunks: &[&[u8]]) {
        let (mut start, mut keeping) = (true, true);
        for c in chunks {
            start = admit(queue, c, start, &mut keeping);
        }
    }

    #[test]
    fn whole_lines_are_kept_across_chunks() {
        let mut q = Queue::default();
        admit_all(&mut q, &[b"one\ntw", b"o\nthr", b"ee\n"]);
        assert_eq!(q.bytes, b"one\ntwo\nthree\n");
        assert_eq!(q.dropped, 0);
    }

    #[test]
    fn a_full_queue_drops_whole_lines_and_counts_them() {
        let mut q = Queue {
            bytes: vec![b'x'; QUEUE_MAX - 1],
            ..Queue::default()
        };
        // The line that starts below the limit is kept whole, past it.
        admit_all(&mut q, &[b"kept line\nlost", b" one\nlost two\n"]);
        assert_eq!(q.bytes.len(), QUEUE_MAX - 1 + 10);
        assert!(q.bytes.ends_with(b"kept line\n"));
        assert_eq!(q.dropped, 2);
        // Room again: the next line is kept, none of the dropped ones' pieces with it.
        q.bytes.clear();
        let mut keeping = false;
        let start = admit(&mut q, b"back\n", true, &mut keeping);
        assert!(start && keeping);
        assert_eq!(q.bytes, b"back\n");
    }
}
