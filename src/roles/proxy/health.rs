//! Active health checks of the proxy's upstreams (`--check-interval`), as HAProxy's
//! `check inter/fall/rise` with `tcp-check send/expect`.
//!
//! ```text
//!   checker task (one per proxy; per generation under serve)
//!     ├─ watch(upstream 0): sleep(offset) ─▶ probe ─▶ report ─▶ sleep(interval ± 10%) ─▶ …
//!     ├─ watch(upstream 1): …                          │
//!     └─ …                                             ▼
//!                          UpstreamMetrics::health (per service and HOST:PORT: survives a reload)
//!                                                      │ one atomic load per upstream
//!                                                      ▼
//!                                  Upstreams::order (every session's connect path)
//! ```
//!
//! A probe is what a session's connect is (the name resolved again, each address tried,
//! with `--upstream-tls` the handshake and the certificate verified), then optionally
//! `--check-send` bytes and a `--check-expect` substring looked for in the first
//! [`EXPECT_WINDOW`] bytes answered; the whole probe within `--check-timeout`. A probe
//! that met a shortage of descriptors *here* (`Failure::Local`) is no evidence about the
//! upstream and is not counted either way.
//!
//! States: an upstream starts **up** and is marked **down** after `--check-fall`
//! consecutive failed probes, up again after `--check-rise` consecutive passed ones — except
//! that a fresh upstream (never probed: a start, or a reload that newly names it) is
//! marked down by its first failed probe, as HAProxy's default `init-state up` does: until
//! then it is up on trust, and one failure is all the evidence there is. A reload that
//! names the same upstream keeps its state and its progress toward a change, since the
//! state lives in the service's [`UpstreamMetrics`], not in the table or the checker.
//! Each change is logged once (`proxy: upstream DOWN (3 failed checks: connection
//! refused)`, `proxy: upstream UP (2 passed checks)`); single probes are not, but each
//! failed one is counted (`switchboard_proxy_upstream_check_failures_total`).
//!
//! Only one checker writes an upstream's state: each checker *claims* its upstreams when
//! it starts (a number of its own), and a checker that finds its claim taken (a reload
//! started a newer one) stops probing that upstream. A generation without checks claims
//! with 0, which clears the state: nobody would ever mark it up again; so does any
//! generation for the upstreams it no longer names.
//!
//! Try it: `switchboard hello & switchboard proxy --upstream 127.0.0.1:7009
//! --check-interval 1s --check-expect Hello`, then stop `hello` and watch the log.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::metrics::{ProxyMetrics, UpstreamMetrics};
use super::upstreams::{ProbeError, UpstreamTls, Upstreams, connect_for_probe};
use crate::net::describe::describe;
use crate::net::shutdown::{self, Shutdown, Trigger};
use crate::net::stats::meters::Counter;
use crate::rt;

/// How many bytes of an upstream's answer `--check-expect` is looked for in: a banner
/// or a status line is well inside it, and a probe never holds more.
pub const EXPECT_WINDOW: usize = 4096;

/// The shortest `--check-interval`: below it the probes themselves become the load.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How much each wait between two probes of an upstream varies (a tenth of the interval
/// either way), so upstreams first spread over the interval do not drift into lockstep.
const JITTER_PERCENT: u64 = 10;

/// `--check-*`: how each upstream is probed and judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time from the start of one probe of an upstream to the start of the next.
    pub interval: Duration,
    /// The most one probe may take: resolving, connecting (and the TLS handshake),
    /// sending and reading the expected answer.
    pub timeout: Duration,
    /// Consecutive failed probes that mark an up upstream down (at least 1).
    pub fall: u32,
    /// Consecutive passed probes that mark a down upstream up (at least 1).
    pub rise: u32,
    /// Sent once connected (`--check-send`, escapes decoded); empty: nothing.
    pub send: Vec<u8>,
    /// Looked for in the first [`EXPECT_WINDOW`] bytes answered; `None`: connecting is
    /// enough.
    pub expect: Option<Vec<u8>>,
}

/// Decodes the escapes of `--check-send` and `--check-expect`: `\r`, `\n`, `\t`, `\0`,
/// `\\` and `\xHH`; anything else after a backslash is an error, so a typo is not sent.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                // Two hex digits each: `from_str_radix` alone would take a sign (`\x+f`).
                let value = match hex {
                    [Some(h), Some(l)] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok())
                    }
                    _ => None,
                };
                out.push(
                    value.ok_or_else(|| format!("{text:?}: \\x takes two hex digits (\\x0d)"))?,
                );
            }
            Some(other) => {
                return Err(format!(
                    "{text:?}: unknown escape \\{} (use \\r, \\n, \\t, \\0, \\\\ or \\xHH)",
                    other as char
                ));
            }
            None => {
                return Err(format!(
                    "{text:?} ends with a lone backslash (\\\\ for one)"
                ));
            }
        }
    }
    Ok(out)
}

/// One upstream's health as the checks see it. Kept in the service's
/// [`UpstreamMetrics`] for that `HOST:PORT`, so a reload that names it again keeps it.
#[derive(Debug, Default)]
pub struct Health {
    /// Marked down by the checks: sessions skip it. Read on every session's connect path.
    down: AtomicBool,
    /// Probes that failed (not those that met a local shortage).
    pub failures: Counter,
    /// Who writes `down`, and the progress toward a change; locked once per probe.
    record: Mutex<Record>,
}

#[derive(Debug, Default)]
struct Record {
    /// The checker that owns this state; 0: none (not checked).
    owner: u64,
    /// Whether any probe has been judged since the state was fresh.
    judged: bool,
    /// Consecutive results against the present state (failures while up, passes while down).
    streak: u32,
}

/// A change of state, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Marked down after this many failed probes in a row.
    Down(u32),
    /// Marked up after this many passed probes in a row.
    Up(u32),
}

impl Health {
    /// Whether the checks hold it down.
    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A checker numbered `owner` takes this state over, as it is (a reload keeps it);
    /// `owner` 0 (checks off) resets it to fresh and up.
    pub fn claim(&self, owner: u64) {
        let mut record = self.record();
        record.owner = owner;
        if owner == 0 {
            *record = Record::default();
            self.down.store(false, Relaxed);
        }
    }

    /// Whether checker `owner` still owns it.
    fn owned_by(&self, owner: u64) -> bool {
        self.record().owner == owner
    }

    /// Judges one probe of checker `owner` (`passed` or not) by `fall` and `rise`; the
    /// change it makes, if any. A checker that no longer owns the state changes nothing.
    pub fn report(&self, owner: u64, passed: bool, fall: u32, rise: u32) -> Option<Change> {
        let mut record = self.record();
        if record.owner != owner {
            return None;
        }
        if !passed {
            self.failures.inc();
        }
        let fresh = !std::mem::replace(&mut record.judged, true);
        let down = self.down.load(Relaxed);
        if passed != down {
            // The result agrees with the state: any streak against it is broken.
            record.streak = 0;
            return None;
        }
        record.streak += 1;
        let change = match down {
            false if record.streak >= fall || fresh => Change::Down(record.streak),
            true if record.streak >= rise => Change::Up(record.streak),
            _ => return None,
        };
        record.streak = 0;
        self.down.store(!down, Relaxed);
        Some(change)
    }
}

/// Logs something at most once per [`LogLimit::EVERY`], with how many times it happened
/// since the last line: a flood of clients must not become a flood of log lines.
#[derive(Debug)]
pub struct LogLimit {
    base: Instant,
    /// Milliseconds since `base` of the last line; 0: none yet.
    last: AtomicU64,
    /// Occurrences not yet told.
    untold: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit {
            base: Instant::now(),
            last: AtomicU64::new(0),
            untold: AtomicU64::new(0),
        }
    }
}

impl LogLimit {
    /// At most one line this often.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// One more occurrence: `Some(n)` when a line is due now (telling `n` occurrences,
    /// this one included), else `None`.
    pub fn tick(&self) -> Option<u64> {
        self.tick_at(self.base.elapsed().as_millis() as u64 + 1)
    }

    /// [`LogLimit::tick`] at `now`, milliseconds since `base` (from 1).
    fn tick_at(&self, now: u64) -> Option<u64> {
        self.untold.fetch_add(1, Relaxed);
        let last = self.last.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.untold.swap(0, Relaxed));
        }
        None
    }
}

/// How one probe ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Passed,
    /// The upstream's fault: refused, reset, timed out, did not resolve, answered the
    /// wrong thing.
    Failed(String),
    /// A shortage of descriptors here: no evidence either way.
    Local(String),
}

/// What a probe was doing, for the message when its time runs out.
const PHASES: [&str; 3] = [
    "connecting",
    "sending --check-send",
    "waiting for --check-expect",
];

/// Probes `target` once, as `check` says, within its timeout.
pub async fn probe(target: &str, check: &HealthCheck, tls: Option<&UpstreamTls>) -> Probe {
    // Shared with the exchange, which the timeout may drop: what it was doing and the
    // start of what it read, for the message. (Not cells: the probe runs in a spawned,
    // `Send`, task.)
    let (phase, seen) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
    match rt::timeout(check.timeout, exchange(target, check, tls, &phase, &seen)).await {
        Some(probe) => probe,
        None => {
            let phase = phase.load(Relaxed);
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            Probe::Failed(match (phase, &check.expect) {
                (2, Some(expect)) if seen.is_empty() => format!(
                    "no {:?} within {:?} (nothing answered)",
                    shown(expect),
                    check.timeout
                ),
                (2, Some(expect)) => format!(
                    "no {:?} within {:?} (answered {:?})",
                    shown(expect),
                    check.timeout,
                    shown(&seen)
                ),
                _ => format!("timed out after {:?} {}", check.timeout, PHASES[phase]),
            })
        }
    }
}

async fn exchange(
    target: &str,
    check: &HealthCheck,
    tls: Option<&UpstreamTls>,
    phase: &AtomicUsize,
    seen: &Mutex<Vec<u8>>,
) -> Probe {
    let mut stream = match connect_for_probe(target, check.timeout, tls).await {
        Ok(stream) => stream,
        Err(ProbeError::Local(why)) => return Probe::Local(why),
        Err(ProbeError::Remote(why)) => return Probe::Failed(why),
    };
    if !check.send.is_empty() {
        phase.store(1, Relaxed);
        let sent = match stream.write_all(&check.send).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            return Probe::Failed(format!("sending --check-send: {}", describe(&e)));
        }
    }
    let Some(expect) = &check.expect else {
        return Probe::Passed;
    };
    phase.store(2, Relaxed);
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if contains(&answer, expect) {
            return Probe::Passed;
        }
        if answer.len() >= EXPECT_WINDOW {
            return Probe::Failed(format!(
                "answered {:?}… without {:?} in its first {EXPECT_WINDOW} bytes",
                shown(&answer[..SHOWN]),
                shown(expect)
            ));
        }
        let room = (EXPECT_WINDOW - answer.len()).min(buf.len());
        match stream.read(&mut buf[..room]).await {
            Ok(0) if answer.is_empty() => {
                return Probe::Failed("closed without answering".into());
            }
            Ok(0) => {
                return Probe::Failed(format!(
                    "answered {:?} and closed, without {:?}",
                    shown(&answer[..answer.len().min(SHOWN)]),
                    shown(expect)
                ));
            }
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.clear();
                seen.extend_from_slice(&answer[..answer.len().min(SHOWN)]);
            }
            Err(e) => return Probe::Failed(describe(&e)),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The most of an answer a failed probe's message quotes.
const SHOWN: usize = 64;

/// Bytes for a log line (quoted with `{:?}`, which escapes what is not printable).
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running checker; dropping it stops it (its probes end where they are).
pub struct Checker {
    _stop: Trigger,
}

/// Numbers the checkers, so each knows whether it still owns an upstream's state.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// When a proxy starts: hands every table its counters and, with checks on (the tables'
/// [`Upstreams::health_check`]), starts a checker over their upstreams (each target once,
/// whichever tables name it), which runs until the returned [`Checker`] is dropped or
/// `retire` fires; with checks off, clears any state an earlier generation's checks left.
pub fn start<'a>(
    tables: impl IntoIterator<Item = &'a Arc<Upstreams>>,
    metrics: &ProxyMetrics,
    retire: Option<Shutdown>,
) -> Option<Checker> {
    let tables: Vec<Arc<Upstreams>> = tables.into_iter().cloned().collect();
    let mut targets: Vec<(String, Arc<UpstreamMetrics>)> = Vec::new();
    let mut named = HashSet::new();
    for table in &tables {
        table.count_into(metrics);
        for target in table.targets() {
            if named.insert(target.to_owned()) {
                targets.push((target.to_owned(), metrics.upstream(target)));
            }
        }
    }
    // An upstream this generation does not name is checked by no one from now on, so
    // no one would ever mark it up again: its state goes (and a later generation that
    // names it again finds it fresh), as every upstream's does with checks off.
    for m in metrics.upstreams() {
        if !named.contains(m.target()) {
            m.health.claim(0);
        }
    }
    let check = tables.iter().find_map(|t| t.health_check());
    let Some(check) = check else {
        for (_, m) in &targets {
            m.health.claim(0);
        }
        return None;
    };
    if targets.is_empty() {
        return None;
    }
    let tls = tables.iter().find_map(|t| t.tls_shared());
    let owner = NEXT_OWNER.fetch_add(1, Relaxed);
    for (_, m) in &targets {
        m.health.claim(owner);
    }
    let everyone: Arc<[Arc<UpstreamMetrics>]> = targets.iter().map(|(_, m)| m.clone()).collect();
    let n = targets.len() as u64;
    let mut seed = seed();
    let watches: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, (target, m))| {
            // Spread over the first interval, so N upstreams are not probed at once.
            let offset = check.interval.mul_f64(i as f64 / n as f64);
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            watch(Watch {
                target,
                metrics: m,
                everyone: everyone.clone(),
                tables: tables.clone(),
                check: check.clone(),
                tls: tls.clone(),
                owner,
                offset,
                rng: seed | 1,
            })
        })
        .collect();
    let (stop, stopped) = shutdown::channel();
    drop(rt::spawn(async move {
        let retired = async {
            match retire {
                Some(retire) => retire.wait().await,
                None => futures::future::pending().await,
            }
        };
        futures::select! {
            _ = futures::future::join_all(watches).fuse() => {}
            _ = stopped.wait().fuse() => {}
            _ = retired.fuse() => {}
        }
    }));
    Some(Checker { _stop: stop })
}

/// A seed for the jitter: from the kernel, else the clock.
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(bytes),
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// What one upstream's watch needs.
struct Watch {
    target: String,
    metrics: Arc<UpstreamMetrics>,
    /// Every upstream this checker watches, to tell when all are down.
    everyone: Arc<[Arc<UpstreamMetrics>]>,
    /// The tables naming it, whose back-off a return to up clears.
    tables: Vec<Arc<Upstreams>>,
    check: Arc<HealthCheck>,
    tls: Option<Arc<UpstreamTls>>,
    owner: u64,
    offset: Duration,
    rng: u64,
}

/// Probes one upstream every interval (jittered) until its state is claimed by another
/// checker; judges each probe and logs each change.
async fn watch(mut w: Watch) {
    rt::sleep(w.offset).await;
    let metrics = w.metrics.clone();
    let health = &metrics.health;
    loop {
        let started = Instant::now();
        let result = probe(&w.target, &w.check, w.tls.as_deref()).await;
        let (passed, why) = match result {
            Probe::Passed => (true, String::new()),
            Probe::Failed(why) => (false, why),
            Probe::Local(why) => {
                log::debug!(upstream = w.target.as_str(), error = why.as_str();
                    "proxy: health check not made: out of descriptors here (not the upstream's fault)");
                if !health.owned_by(w.owner) {
                    return;
                }
                w.pause(started).await;
                continue;
            }
        };
        match health.report(w.owner, passed, w.check.fall, w.check.rise) {
            Some(Change::Down(n)) => {
                let checks = if n == 1 { "check" } else { "checks" };
                log::warn!(upstream = w.target.as_str(), failed_checks = n, error = why.as_str();
                    "proxy: upstream DOWN ({n} failed {checks}: {why})");
                if w.everyone.iter().all(|m| m.health.is_down()) {
                    log::error!(upstreams = w.everyone.len();
                        "proxy: every upstream is DOWN; clients are closed at once until one is UP");
                }
            }
            Some(Change::Up(n)) => {
                let checks = if n == 1 { "check" } else { "checks" };
                // It has just proven itself: a passive back-off from before goes too.
                w.metrics.clear_backoff();
                for table in &w.tables {
                    table.clear_backoff(&w.target);
                }
                log::info!(upstream = w.target.as_str(), passed_checks = n;
                    "proxy: upstream UP ({n} passed {checks})");
            }
            None if !health.owned_by(w.owner) => return,
            None => {}
        }
        w.pause(started).await;
    }
}

impl Watch {
    /// Waits until the next probe is due: `interval` after `started`, give or take
    /// [`JITTER_PERCENT`]; at once if the probe took longer.
    async fn pause(&mut self, started: Instant) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let spread = 2 * JITTER_PERCENT + 1;
        let factor = (100 - JITTER_PERCENT + self.rng % spread) as f64 / 100.0;
        let due = self.check.interval.mul_f64(factor);
        rt::sleep(due.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(unescape("PING\\r\\n").unwrap(), b"PING\r\n");
        assert_eq!(unescape("a\\tb\\0\\\\\\x7f").unwrap(), b"a\tb\0\\\x7f");
        assert_eq!(unescape("plain").unwrap(), b"plain");
        assert!(unescape("bad\\q").is_err());
        assert!(unescape("bad\\x4").is_err());
        assert!(unescape("bad\\xzz").is_err());
        assert!(unescape("lone\\").is_err());
    }

    #[test]
    fn fall_and_rise_with_a_fresh_start() {
        let h = Health::default();
        h.claim(7);
        // Fresh: the first failure is enough.
        assert_eq!(h.report(7, false, 3, 2), Some(Change::Down(1)));
        assert!(h.is_down());
        assert_eq!(h.report(7, true, 3, 2), None);
        assert_eq!(h.report(7, false, 3, 2), None); // the streak is broken
        assert_eq!(h.report(7, true, 3, 2), None);
        assert_eq!(h.report(7, true, 3, 2), Some(Change::Up(2)));
        assert!(!h.is_down());
        // Known: it takes `fall` failures in a row.
        assert_eq!(h.report(7, false, 3, 2), None);
        assert_eq!(h.report(7, false, 3, 2), None);
        assert_eq!(h.report(7, true, 3, 2), None);
        assert_eq!(h.report(7, false, 3, 2), None);
        assert_eq!(h.report(7, false, 3, 2), None);
        assert_eq!(h.report(7, false, 3, 2), Some(Change::Down(3)));
        assert_eq!(h.failures.get(), 7);
    }

    #[test]
    fn a_fresh_upstream_that_passes_first_needs_fall_failures() {
        let h = Health::default();
        h.claim(1);
        assert_eq!(h.report(1, true, 2, 1), None);
        assert_eq!(h.report(1, false, 2, 1), None);
        assert_eq!(h.report(1, false, 2, 1), Some(Change::Down(2)));
    }

    #[test]
    fn a_newer_checker_keeps_the_state_and_the_older_one_changes_nothing() {
        let h = Health::default();
        h.claim(1);
        assert_eq!(h.report(1, false, 1, 1), Some(Change::Down(1)));
        h.claim(2);
        assert!(h.is_down(), "a reload keeps the state");
        assert_eq!(h.report(1, true, 1, 1), None);
        assert!(h.is_down() && !h.owned_by(1));
        assert_eq!(h.report(2, true, 1, 1), Some(Change::Up(1)));
        h.report(2, false, 1, 1);
        h.claim(0);
        assert!(!h.is_down(), "checks off: nobody would mark it up again");
    }

    #[test]
    fn the_log_limit_tells_the_first_then_counts() {
        let limit = LogLimit::default();
        assert_eq!(limit.tick_at(5), Some(1));
        assert_eq!(limit.tick_at(6), None);
        assert_eq!(limit.tick_at(1004), None);
        assert_eq!(limit.tick_at(1005), Some(3));
        assert_eq!(limit.tick_at(1006), None);
    }

    #[test]
    fn expect_finds_a_substring() {
        assert!(contains(b"220 ftp ready\r\n", b"220"));
        assert!(contains(b"+PONG\r\n", b"PONG"));
        assert!(!contains(b"-ERR", b"+OK"));
    }
}
