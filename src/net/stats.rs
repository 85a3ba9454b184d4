//! Counters a server keeps for its summary line and for tests.
//!
//! A server connection's reader adds each read as it returns (`Reader::counted`, which
//! every role's connection uses); writers add after each write (one atomic add per
//! system call), so the summary is right for connections still open at shutdown.
//!
//! The same counters, with a role's own ([`Stats::role_metrics`], built from
//! [`meters`]), are what `crate::metrics::render` reads for Prometheus.

pub mod meters;

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use meters::{Collect, RoleMetrics};

use crate::net::per_ip::PerIpTable;
use crate::net::tls::TlsFailures;

/// Counters shared by one server's accept loop, connections and UDP endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections accepted and served (refused ones are not counted here).
    pub served: AtomicU64,
    /// TCP connections refused, by why.
    pub refused: Refused,
    /// TLS handshakes that did not complete, by why.
    pub tls: TlsFailures,
    /// Each client's open connections and token bucket, for `--max-conns-per-ip` and
    /// `--conn-rate-per-ip`: here so that every accept loop of the service (listeners,
    /// threads, generations after a reload) shares one table. Untouched (and empty)
    /// without those limits.
    pub per_ip: PerIpTable,
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
    /// The role's own counters, made when the role first starts and kept for the life of
    /// these counters (a role started again on them, after a reload, carries on
    /// counting). Locked only when a role starts and when the counters are read out.
    role: Mutex<Option<Arc<dyn RoleMetrics>>>,
}

/// TCP clients the accept loop turned away, by why. Every refusal is one relaxed add on
/// the accept path, which is already a system call per client.
#[derive(Debug, Default)]
pub struct Refused {
    /// Closed at accept because `--max-conns` connections were open.
    pub max_conns: AtomicU64,
    /// Closed because `--allow`/`--deny` (or, with the proxy's `--accept-proxy`,
    /// `--proxy-from` at accept and `--allow`/`--deny` for the header's address) refused
    /// the peer.
    pub denied: AtomicU64,
    /// Accepts that failed for want of descriptors or buffers (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM). The client stays in the kernel's backlog while the loop pauses, and each
    /// try during the pause that fails again counts again.
    pub emfile: AtomicU64,
    /// Closed at accept because the client had `--max-conns-per-ip` connections open.
    pub per_ip_conns: AtomicU64,
    /// Closed at accept because the client connected faster than `--conn-rate-per-ip`.
    pub per_ip_rate: AtomicU64,
}

impl Refused {
    /// The refusals the summary line adds up: every reason but `emfile` (an accept that
    /// failed, logged as it happens, and counted again on each retry).
    pub fn total(&self) -> u64 {
        [
            &self.max_conns,
            &self.denied,
            &self.per_ip_conns,
            &self.per_ip_rate,
        ]
        .iter()
        .map(|n| n.load(Relaxed))
        .sum()
    }
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

    /// The role's own counters, of type `M`: made on the first call and the same object on
    /// every later one, so a role that starts again on these counters (a reload) carries
    /// on from where it was. A role of another type replaces what was there.
    pub fn role_metrics<M: RoleMetrics + Default>(&self) -> Arc<M> {
        let mut slot = self.role.lock().unwrap_or_else(PoisonError::into_inner);
        let existing: Option<Arc<dyn Any + Send + Sync>> = slot.clone().map(|m| m as _);
        if let Some(Ok(same)) = existing.map(|m| m.downcast::<M>()) {
            return same;
        }
        let fresh = Arc::new(M::default());
        *slot = Some(fresh.clone());
        fresh
    }

    /// Writes the role's own series into `out` (nothing before a role has started).
    pub fn collect_role(&self, out: &mut dyn Collect) {
        let role = self
            .role
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(role) = role {
            role.collect(out);
        }
    }

    /// The counters as `key=value` text for the summary log line (`refused` counts
    /// `--max-conns`, the access lists and the per-client limits, which are also given
    /// apart when there were any; accepts that failed for want of descriptors are logged
    /// as they happen; TLS handshakes that failed are added when there were any).
    pub fn summary(&self) -> String {
        let mut line = format!(
            "connections={} refused={} datagrams={} bytes_in={} bytes_out={}",
            self.served.load(Relaxed),
            self.refused.total(),
            self.datagrams.load(Relaxed),
            self.bytes_in.load(Relaxed),
            self.bytes_out.load(Relaxed)
        );
        for (key, n) in [
            ("refused_per_ip_conns", &self.refused.per_ip_conns),
            ("refused_per_ip_rate", &self.refused.per_ip_rate),
        ] {
            let n = n.load(Relaxed);
            if n > 0 {
                line += &format!(" {key}={n}");
            }
        }
        let tls_failed = self.tls.total();
        if tls_failed > 0 {
            line += &format!(" tls_handshake_failures={tls_failed}");
        }
        line
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
