//! Counters a server keeps for its summary line and for tests.
//!
//! A server connection's reader adds each read as it returns (`Reader::counted`, which
//! every role's connection uses); writers add after each write (one atomic add per
//! system call), so the summary is right for connections still open at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters shared by one server's accept loop, connections and UDP endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections accepted and served (refused ones are not counted here).
    pub served: AtomicU64,
    /// TCP connections refused by `--max-conns` or `--allow`/`--deny`.
    pub refused: AtomicU64,
    /// UDP datagrams received.
    pub datagrams: AtomicU64,
    /// Bytes read from peers (TCP and UDP).
    pub bytes_in: AtomicU64,
    /// Bytes written to peers (TCP and UDP).
    pub bytes_out: AtomicU64,
    /// Connections open right now.
    active: AtomicUsize,
    /// Connection tasks (readers, writers, helpers) alive right now.
    tasks: AtomicUsize,
}

impl Stats {
    /// A fresh set of counters.
    pub fn new() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    /// Connections open right now.
    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Connection tasks alive right now; zero once every client has gone.
    pub fn live_tasks(&self) -> usize {
        self.tasks.load(Relaxed)
    }

    /// Counts a task as alive until the guard is dropped.
    pub fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Relaxed);
        TaskGuard(self.clone())
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Relaxed);
        self.served.fetch_add(1, Relaxed);
        ConnGuard(self.clone())
    }

    /// Adds to a byte counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// The counters as `key=value` text for the summary log line.
    pub fn summary(&self) -> String {
        format!(
            "connections={} refused={} datagrams={} bytes_in={} bytes_out={}",
            self.served.load(Relaxed),
            self.refused.load(Relaxed),
            self.datagrams.load(Relaxed),
            self.bytes_in.load(Relaxed),
            self.bytes_out.load(Relaxed)
        )
    }
}

/// Keeps a task counted in [`Stats::live_tasks`].
pub struct TaskGuard(Arc<Stats>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Relaxed);
    }
}

/// Keeps a connection counted in [`Stats::active`].
pub struct ConnGuard(Arc<Stats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
