//! The proxy's counters, per upstream: up or in back-off, sessions open, connect failures
//! and times, and sessions by how they ended; and the clients no upstream took.
//!
//! The upstream table ([`Upstreams`](super::upstreams::Upstreams)) is given each
//! upstream's counters when the proxy starts ([`ProxyMetrics::upstream`], by the target
//! as configured), so a reloaded proxy that names the same `HOST:PORT` carries on
//! counting it. Sessions touch them a few times each (connect, end), never per message.
//! The series are listed in [`crate::metrics`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::health::Health;
use crate::net::stats::meters::{
    Collect, Counter, Family, Gauge, Histogram, Kind, RoleMetrics, Value,
};

/// `switchboard_proxy_upstream_up{upstream}`.
pub static UP: Family = Family {
    name: "switchboard_proxy_upstream_up",
    help: "Whether new sessions try this upstream in its turn (1), or it is in back-off after a failed connect or (with --check-interval) held down by its health checks (0).",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_proxy_upstream_sessions{upstream}`.
pub static SESSIONS_OPEN: Family = Family {
    name: "switchboard_proxy_upstream_sessions",
    help: "Sessions open to this upstream now.",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_proxy_upstream_connect_failures_total{upstream}`.
pub static CONNECT_FAILURES: Family = Family {
    name: "switchboard_proxy_upstream_connect_failures",
    help: "Connects to this upstream that failed (refused, timed out, did not resolve; with --upstream-tls, a TLS handshake that failed); a shortage of descriptors here is not counted.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_proxy_upstream_connect_time_seconds{upstream}`.
pub static CONNECT_TIME: Family = Family {
    name: "switchboard_proxy_upstream_connect_time",
    help: "Time to connect to this upstream (the name lookup included), for connects that succeeded.",
    kind: Kind::Histogram,
    seconds: true,
};

/// `switchboard_proxy_upstream_check_failures_total{upstream}`.
pub static CHECK_FAILURES: Family = Family {
    name: "switchboard_proxy_upstream_check_failures",
    help: "Health checks of this upstream that failed (refused, reset, timed out, did not resolve, answered without --check-expect); a shortage of descriptors here is not counted.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_proxy_sessions_total{upstream,end}`.
pub static SESSIONS: Family = Family {
    name: "switchboard_proxy_sessions",
    help: "Sessions ended, by what ended them: the session line's cut_by when this process cut it (a timeout, the drain), else its closed_first.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_proxy_unconnected_total{reason}`.
pub static UNCONNECTED: Family = Family {
    name: "switchboard_proxy_unconnected",
    help: "Clients closed without a session: no upstream answered (or the health checks hold every one down), no descriptor to connect with here, or (routing by SNI) no valid ClientHello in time or no route for its name.",
    kind: Kind::Counter,
    seconds: false,
};

/// Buckets of the connect time: a loopback or LAN connect takes well under a millisecond,
/// one across the internet tens to hundreds, a lost SYN costs a second's retransmit.
const CONNECT_BUCKETS: &[Duration] = &[
    Duration::from_micros(250),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(10),
];

/// How sessions end: the session line's words (its `cut_by` when the proxy cut it, else
/// its `closed_first`) and, for the metric, the same as a label value. A session's end
/// is one of these (`unknown` is left out: a session always has one).
pub const ENDS: [(&str, &str); 7] = [
    ("client FIN", "client_fin"),
    ("server FIN", "server_fin"),
    ("client reset", "client_reset"),
    ("server reset", "server_reset"),
    ("idle timeout", "idle_timeout"),
    ("fin timeout", "fin_timeout"),
    ("shutdown", "shutdown"),
];

/// Why a client got no session, in [`ProxyMetrics::unconnected`]' order: no upstream
/// answered; no descriptor here; (routing by SNI) no whole, valid ClientHello in time;
/// no route for its name and no default.
pub const UNCONNECTED_REASONS: [&str; 4] = ["no_upstream", "local", "no_hello", "no_route"];

/// One proxy service's counters.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Every upstream ever configured, in the order first seen. Locked when the proxy
    /// starts and when the counters are read out, never by a session.
    upstreams: Mutex<Vec<Arc<UpstreamMetrics>>>,
    /// By [`UNCONNECTED_REASONS`].
    pub unconnected: [Counter; 4],
}

impl ProxyMetrics {
    /// The counters of the upstream configured as `target`: the same object for the same
    /// target, for the service's life.
    pub fn upstream(&self, target: &str) -> Arc<UpstreamMetrics> {
        let mut list = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = list.iter().find(|u| u.target == target) {
            return known.clone();
        }
        let fresh = Arc::new(UpstreamMetrics::new(target));
        list.push(fresh.clone());
        fresh
    }

    /// The counters of every upstream configured so far.
    pub fn upstreams(&self) -> Vec<Arc<UpstreamMetrics>> {
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One upstream's counters.
#[derive(Debug)]
pub struct UpstreamMetrics {
    /// As configured (the `upstream` label).
    target: String,
    pub sessions: Gauge,
    /// Milliseconds since `base` until which it is in back-off; 0 when up. Read out,
    /// and by the tables a reload builds, which keep away from an upstream an earlier
    /// one found down. A monotonic clock: a step of the wall clock moves no back-off.
    backoff_until: AtomicU64,
    base: Instant,
    pub connect_failures: Counter,
    pub connect_time: Histogram,
    /// By [`ENDS`].
    pub ends: [Counter; 7],
    /// What the health checks found (`--check-interval`), and their failures.
    pub health: Health,
}

impl UpstreamMetrics {
    /// The upstream as configured.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn new(target: &str) -> Self {
        UpstreamMetrics {
            target: target.to_owned(),
            sessions: Gauge::default(),
            backoff_until: AtomicU64::new(0),
            base: Instant::now(),
            connect_failures: Counter::default(),
            connect_time: Histogram::new(CONNECT_BUCKETS),
            ends: Default::default(),
            health: Health::default(),
        }
    }

    /// A connect succeeded after `took`: the upstream is up.
    pub fn connected(&self, took: Duration) {
        self.connect_time.observe(took);
        self.backoff_until.store(0, Relaxed);
    }

    /// A connect failed: the upstream is skipped for `backoff`.
    pub fn failed(&self, backoff: Duration) {
        self.connect_failures.inc();
        let backoff = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(backoff);
        self.backoff_until.store(until, Relaxed);
    }

    /// Out of back-off now (its health checks found it up again).
    pub(super) fn clear_backoff(&self) {
        self.backoff_until.store(0, Relaxed);
    }

    /// A session to this upstream ended by `end` (the session line's words, one of
    /// [`ENDS`]); anything else is not counted.
    pub fn ended(&self, end: &str) {
        if let Some(i) = ENDS.iter().position(|(words, _)| *words == end) {
            self.ends[i].inc();
        }
    }

    /// Whether it is out of back-off.
    pub(super) fn up(&self) -> bool {
        self.backoff_until.load(Relaxed) <= self.now_ms()
    }

    /// Milliseconds since `base`, from 1 (0 means up).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }
}

impl RoleMetrics for ProxyMetrics {
    fn collect(&self, out: &mut dyn Collect) {
        let list = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Family by family: each family's series are written together.
        for u in &list {
            let up = Value::Gauge(i64::from(u.up() && !u.health.is_down()));
            out.series(&UP, &[("upstream", &u.target)], up);
        }
        for u in &list {
            let open = Value::Gauge(u.sessions.get());
            out.series(&SESSIONS_OPEN, &[("upstream", &u.target)], open);
        }
        for u in &list {
            let failed = Value::Counter(u.connect_failures.get());
            out.series(&CONNECT_FAILURES, &[("upstream", &u.target)], failed);
        }
        for u in &list {
            let failed = Value::Counter(u.health.failures.get());
            out.series(&CHECK_FAILURES, &[("upstream", &u.target)], failed);
        }
        for u in &list {
            let took = Value::Histogram(u.connect_time.snapshot());
            out.series(&CONNECT_TIME, &[("upstream", &u.target)], took);
        }
        for u in &list {
            for ((_, end), n) in ENDS.iter().zip(&u.ends) {
                let labels = [("upstream", u.target.as_str()), ("end", *end)];
                out.series(&SESSIONS, &labels, Value::Counter(n.get()));
            }
        }
        for (reason, n) in UNCONNECTED_REASONS.into_iter().zip(&self.unconnected) {
            out.series(&UNCONNECTED, &[("reason", reason)], Value::Counter(n.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_target_gets_the_same_counters() {
        let m = ProxyMetrics::default();
        let a = m.upstream("a:1");
        assert!(Arc::ptr_eq(&a, &m.upstream("a:1")));
        assert!(!Arc::ptr_eq(&a, &m.upstream("b:1")));
    }

    #[test]
    fn an_upstream_is_down_while_in_back_off_and_ends_count_by_label() {
        let m = ProxyMetrics::default();
        let a = m.upstream("a:1");
        assert!(a.up());
        a.failed(Duration::from_secs(60));
        assert!(!a.up());
        assert_eq!(a.connect_failures.get(), 1);
        a.connected(Duration::from_millis(2));
        assert!(a.up());
        a.ended("server reset");
        a.ended("unknown");
        assert_eq!(a.ends[3].get(), 1);
        assert_eq!(a.ends.iter().map(Counter::get).sum::<u64>(), 1);
    }
}
