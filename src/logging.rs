//! The servers' log output (femme's formats), through a pipe of our own, so that whatever
//! reads our stdout can neither stall the server nor crash it.
//!
//! femme writes each line straight to stdout and unwraps the result. A stdout that went
//! away (`switchboard chat | head`, a closed terminal) therefore panics whichever task
//! logged (the chat broker among them), and a stdout nobody drains (`| less`, left
//! unscrolled) blocks every task that logs once the 64 KiB pipe is full, until every
//! executor thread is stuck and no client is served. So before the logger starts, fd 1 is
//! swapped for a pipe that this module empties:
//!
//! ```text
//!   log call ─▶ logger ─▶ fd 1 (our pipe) ─▶ drain thread ─▶ queue (≤ 1 MiB) ─▶ output thread ─▶ the real stdout
//! ```
//!
//! - The drain thread empties the pipe as fast as lines come, so a log call never waits
//!   on the reader of stdout.
//! - When the queue is full, whole lines are dropped and counted; once output moves
//!   again a warning says how many were lost.
//! - When the real stdout fails (closed pipe, full disk), output stops for good, one line
//!   on stderr says why, and the pipe is still drained, into nothing.
//! - [`LogOutput::finish`] at exit writes what is queued (the shutdown summary is the
//!   last line), waiting at most [`FINISH_WAIT`]. If stdout is stalled and does not take
//!   it in that time, the last lines it did not get ("shutting down", the summary; at
//!   most [`RECENT_LINES`]) and the count of dropped lines go to stderr instead, so an
//!   unread stdout never hides how the process ended.
//!
//! The format is the operator's (`--log-format`, [`LogFormat`]): `auto` is femme's
//! choice by build profile (pretty in debug builds, ndjson in release); `json` and
//! `pretty` pick one of femme's two formats in any build, written by our own logger
//! ([`format`]) because femme keeps its two loggers private. Every one goes through the
//! pipe.
//!
//! Try it: `switchboard chat | head -1`, then `telnet 127.0.0.1 7000`: the chat goes on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod format;

/// Log bytes held for a slow stdout before whole lines are dropped: thousands of lines,
/// and a bound on what logging can cost in memory.
pub const QUEUE_MAX: usize = 1 << 20;

/// The longest [`LogOutput::finish`] waits for queued lines to be written.
pub const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The drain thread's read size (the pipe holds 64 KiB).
const READ_CHUNK: usize = 64 * 1024;

/// The most recent lines kept aside (whether queued or dropped) for stderr, in case
/// stdout is stalled at exit.
pub const RECENT_LINES: usize = 64;

/// The most of one line kept aside for stderr; a longer one is cut and marked.
const RECENT_LINE_MAX: usize = 2048;

/// How log lines look (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// femme's choice: pretty in debug builds, JSON lines in release builds.
    #[default]
    Auto,
    /// One JSON object per line (femme's ndjson), in any build.
    Json,
    /// Coloured, one indented line per field (femme's pretty form), in any build.
    Pretty,
}

/// What a server process logs (`level`) and how (`format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// The most detailed level written (`-v`, `-q`).
    pub level: log::LevelFilter,
    /// The lines' form (`--log-format`).
    pub format: LogFormat,
}

/// A level alone keeps femme's own choice of format (what `start` took before
/// `--log-format`).
impl From<log::LevelFilter> for LogSettings {
    fn from(level: log::LevelFilter) -> Self {
        LogSettings {
            level,
            format: LogFormat::Auto,
        }
    }
}

/// Starts logging at `settings.level` in `settings.format`, writing through the pipe
/// described above. If the pipe cannot be set up, the logger writes to stdout directly
/// and stderr says why.
pub fn start(settings: impl Into<LogSettings>) -> LogOutput {
    let LogSettings { level, format } = settings.into();
    let output = match redirect_stdout() {
        Ok(output) => output,
        Err(e) => {
            crate::note!("switchboard: logging straight to stdout (no log pipe: {e})");
            LogOutput {
                threads: None,
                shared: Arc::new(Shared::default()),
            }
        }
    };
    static JSON: format::Logger = format::Logger::new(format::Format::Json);
    static PRETTY: format::Logger = format::Logger::new(format::Format::Pretty);
    match format {
        LogFormat::Auto => femme::with_level(level),
        LogFormat::Json | LogFormat::Pretty => {
            let logger = if format == LogFormat::Json {
                &JSON
            } else {
                &PRETTY
            };
            // As femme's start: a second logger in one process is a bug.
            log::set_logger(logger).expect("Could not start logging");
            log::set_max_level(level);
        }
    }
    output
}

/// The running log pipe; [`finish`](LogOutput::finish) it before the process exits.
pub struct LogOutput {
    /// The drain and output threads (`None` when logging goes straight to stdout).
    threads: Option<(JoinHandle<()>, Option<JoinHandle<()>>)>,
    /// The queue they share (its recent lines are what stderr gets if stdout stalls).
    shared: Arc<Shared>,
}

impl LogOutput {
    /// Closes the pipe (fd 1 becomes /dev/null, so later log calls cost nothing) and
    /// waits, at most [`FINISH_WAIT`], until every line logged before is written.
    pub fn finish(self) {
        let (Some((drain, output)), shared) = (self.threads, self.shared) else {
            return;
        };
        let _ = io::stdout().flush();
        let Ok(null) = File::options().write(true).open("/dev/null") else {
            return;
        };
        // Closes the pipe's last write end, so the drain thread reads to the end of what
        // was logged.
        if rustix::stdio::dup2_stdout(&null).is_err() {
            return;
        }
        let deadline = Instant::now() + FINISH_WAIT;
        let mut all_out = true;
        for thread in std::iter::once(drain).chain(output) {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                all_out = false;
            }
        }
        if !all_out {
            unwritten_to_stderr(&shared.lock());
        }
    }
}

/// Stdout did not take the end of the log in time: the recent lines it did not get, and
/// how many were dropped, go to stderr.
fn unwritten_to_stderr(queue: &Queue) {
    if queue.broken {
        return; // stdout failed, and stderr already said so
    }
    let unwritten: Vec<&(u64, Vec<u8>)> = queue
        .recent
        .iter()
        .filter(|(seq, _)| *seq > queue.written_seq)
        .collect();
    let not_shown = (queue.seq - queue.written_seq).saturating_sub(unwritten.len() as u64);
    let mut note = String::from("switchboard: stdout did not take the end of the log");
    if queue.dropped > 0 {
        note += &format!(" (log output fell behind: {} lines dropped)", queue.dropped);
    }
    note += &format!("; its last {} lines follow", unwritten.len());
    if not_shown > 0 {
        note += &format!(" ({not_shown} before them not shown)");
    }
    crate::note!("{note}");
    let mut err = io::stderr().lock();
    for (_, line) in unwritten {
        if err.write_all(line).is_err() {
            return;
        }
    }
    let _ = err.flush();
}

/// What the drain thread hands the output thread.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Whole lines dropped because `bytes` was full, not yet reported.
    dropped: u64,
    /// Complete lines seen so far, queued or dropped; each line's number.
    seq: u64,
    /// The number of the last complete line put in `bytes`.
    queued_seq: u64,
    /// The number of the last line the real stdout has taken.
    written_seq: u64,
    /// The last [`RECENT_LINES`] lines with their numbers (each cut at
    /// [`RECENT_LINE_MAX`]), queued or dropped.
    recent: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// The start of the line now arriving, for `recent`.
    current: Vec<u8>,
    /// The pipe reached its end: nothing more will come.
    closed: bool,
    /// The real stdout failed: everything is discarded from now on.
    broken: bool,
}

#[derive(Default)]
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
    let real = dup_above_stdio(rustix::stdio::stdout())
        .ok()
        .map(File::from);
    let fresh = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Either end may have landed on fd 0..2 if those were closed: move both up.
    let pipe = File::from(dup_above_stdio(&fresh.0)?);
    let write_end = dup_above_stdio(&fresh.1)?;
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
        Some(real) => Some({
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("log-output".into())
                .spawn(move || output(real, &shared))?
        }),
        None => None,
    };
    // On failure dropping `write_end` closes the pipe and the threads end.
    rustix::stdio::dup2_stdout(&write_end)?;
    Ok(LogOutput {
        threads: Some((drain, output)),
        shared,
    })
}

/// Duplicates `fd` onto the lowest free descriptor above 2, close-on-exec.
fn dup_above_stdio(fd: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
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
        let room = RECENT_LINE_MAX.saturating_sub(queue.current.len());
        queue
            .current
            .extend_from_slice(&piece[..piece.len().min(room)]);
        if complete {
            queue.seq += 1;
            if *keeping {
                queue.queued_seq = queue.seq;
            }
            let mut line = std::mem::take(&mut queue.current);
            if line.last() != Some(&b'\n') {
                line.extend_from_slice(" [cut]\n".as_bytes());
            }
            if queue.recent.len() == RECENT_LINES {
                queue.recent.pop_front();
            }
            let seq = queue.seq;
            queue.recent.push_back((seq, line));
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
        let batch_seq = {
            let mut queue = shared.lock();
            while queue.bytes.is_empty() && !queue.closed {
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.bytes.is_empty() {
                return; // closed, and everything written
            }
            std::mem::swap(&mut batch, &mut queue.bytes);
            queue.queued_seq
        };
        let written = real.write_all(&batch);
        // The dropped count is taken once stdout has moved: if it never does, it is
        // still there for `finish` to report on stderr.
        let dropped = {
            let mut queue = shared.lock();
            if written.is_ok() {
                queue.written_seq = batch_seq;
            }
            std::mem::take(&mut queue.dropped)
        };
        if let Err(e) = written {
            let mut queue = shared.lock();
            queue.broken = true;
            queue.bytes = Vec::new();
            drop(queue);
            crate::note!("switchboard: log output stopped: cannot write to stdout ({e})");
            return;
        }
        batch.clear();
        if dropped > 0 {
            // Logged like any line, so it comes out in the chosen format, after what was
            // kept.
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
    fn the_last_lines_are_kept_aside_numbered_whether_queued_or_dropped() {
        let mut q = Queue {
            bytes: vec![b'x'; QUEUE_MAX - 1],
            ..Queue::default()
        };
        admit_all(&mut q, &[b"kept\nlo", b"st\n"]);
        assert_eq!((q.seq, q.queued_seq, q.dropped), (2, 1, 1));
        let recent: Vec<_> = q.recent.iter().cloned().collect();
        assert_eq!(recent, [(1, b"kept\n".to_vec()), (2, b"lost\n".to_vec())]);
        for i in 0..RECENT_LINES {
            admit_all(&mut q, &[format!("{i}\n").as_bytes()]);
        }
        assert_eq!(q.recent.len(), RECENT_LINES);
        assert_eq!(q.recent.back().unwrap().0, 2 + RECENT_LINES as u64);
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
