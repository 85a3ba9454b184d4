//! The upstream table: which origin a new session tries first, failover, and back-off.
//!
//! Shared by every session of a proxy as a few atomics per upstream (an active count for
//! `least-conn`, a "down until" time for back-off, a round-robin cursor): choosing an
//! upstream is on the connect path of every session, so it is a handful of loads rather
//! than a round trip to an actor. Once the proxy has started, `least-conn` and back-off
//! also read the service's per-target counters (`UpstreamMetrics`), which outlive a
//! table: a table built by a reload sees the sessions and back-offs of the one before.
//!
//! Running out of descriptors (EMFILE, ENFILE; or buffers, memory) while resolving an
//! upstream's name or connecting is this process's condition, not the upstream's: no upstream is put in back-off, the
//! session retries with a short back-off for up to the connect timeout, and meanwhile
//! the accept loop takes no new client ([`Upstreams::descriptor_waiters`]), so the
//! descriptors that closing sessions free go to the clients already waiting.
//!
//! With active health checks (`--check-interval`, [`super::health`]) a table also carries
//! its [`HealthCheck`]; the checker writes each upstream's state into its
//! `UpstreamMetrics`, and [`Upstreams::order`] leaves out the upstreams the checks hold
//! down (one atomic load each). The two kinds of evidence combine: a down-by-check
//! upstream gets no session at all (not even as a last resort); among the others a
//! passive failure (a session's connect) still puts one in back-off, at the end of the
//! order, as without checks. When the checks have every upstream down, a client is
//! closed at once with no connect tried ([`ConnectError::AllDown`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::health::{HealthCheck, LogLimit};
use super::metrics::{ProxyMetrics, UpstreamMetrics};

use futures_rustls::rustls;

use crate::net::describe::describe;
use crate::net::limits::{errno_left_by, exhausted, is_resource_exhaustion, socket_available};
use crate::net::splice;
use crate::net::stream::Stream;
use crate::net::tls;
use crate::rt;

/// First pause before a connect that met a local shortage is tried again; it doubles.
const LOCAL_RETRY_MIN: Duration = Duration::from_millis(5);

/// Longest pause between those tries: a freed descriptor is taken within this.
const LOCAL_RETRY_MAX: Duration = Duration::from_millis(100);

/// How new sessions pick an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Balance {
    /// Each new session starts at the next upstream.
    #[default]
    RoundRobin,
    /// The upstream with the fewest open sessions.
    LeastConn,
    /// Always the first one that answers: failover order.
    First,
}

struct Upstream {
    /// As the user typed it; resolved again at every connect.
    target: String,
    active: AtomicUsize,
    /// Milliseconds since `Upstreams::base` until which this upstream is skipped; 0 = up.
    down_until: AtomicU64,
    /// Its counters in the service's metrics, once the proxy has started
    /// ([`Upstreams::count_into`]).
    metrics: OnceLock<Arc<UpstreamMetrics>>,
}

/// Every `--upstream`, with its state.
pub struct Upstreams {
    list: Vec<Upstream>,
    balance: Balance,
    cursor: AtomicUsize,
    /// How long a failed upstream is skipped.
    backoff: Duration,
    base: Instant,
    /// Sessions waiting for a descriptor to connect with (see the module notes).
    descriptor_waiters: Arc<AtomicUsize>,
    /// `--upstream-tls`: each connection's TLS handshake is part of connecting to it.
    tls: Option<Arc<UpstreamTls>>,
    /// `--check-interval` and the rest: the upstreams are probed, and those the checks
    /// hold down are skipped.
    checks: Option<Arc<HealthCheck>>,
    /// The "every upstream is down" line, at most once a second.
    all_down_log: LogLimit,
}

/// `--upstream-tls`: the proxy is the TLS client of its upstreams (*originates* TLS).
/// A handshake that fails (a certificate that is expired, of another name or of an
/// unknown issuer; no TLS at all) fails that upstream as a refused connect does: it is
/// logged, put in back-off and the next one is tried. There is never a plain fallback.
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `--upstream-sni`: the name sent and verified; by default each upstream's host.
    pub sni: Option<String>,
    /// `--upstream-insecure`: certificates are not verified (the proxy says so at start).
    pub insecure: bool,
}

/// Why no upstream could be reached.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// Every upstream failed; why, for each.
    Upstreams(String),
    /// This process had no descriptor (or buffer) to connect with for the whole connect
    /// timeout; no upstream was blamed.
    Local(String),
    /// The health checks hold every upstream down: nothing was tried.
    AllDown,
}

/// Counts a session in [`Upstreams::descriptor_waiters`] while it waits.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Why one connect failed.
enum Failure {
    /// Out of descriptors or buffers here.
    Local(std::io::Error),
    /// The upstream refused, timed out or did not resolve.
    Remote(String),
}

/// Keeps a session counted against its upstream (for `least-conn`, and in its metrics'
/// open sessions).
pub struct ActiveGuard(Arc<Upstreams>, usize, Option<Arc<UpstreamMetrics>>);

impl ActiveGuard {
    /// The session has ended, by `end` (the session line's words): it no longer counts
    /// as open, and its end is counted, in that order (so a reader that sees the end sees
    /// the session closed).
    pub fn ended(mut self, end: &str) {
        let metrics = self.2.take();
        drop(self);
        if let Some(m) = metrics {
            m.sessions.add(-1);
            m.ended(end);
        }
    }
}

impl ActiveGuard {
    /// The upstream failed this session in a way a connect would have (a UDP flow's
    /// upstream refused: ICMP port unreachable): it is skipped for the back-off.
    pub fn failed(&self, why: &str) {
        let (table, i) = (&self.0, self.1);
        let up = &table.list[i];
        log::warn!(upstream = up.target.as_str(), error = why, backoff_ms = table.backoff.as_millis() as u64;
            "proxy: upstream failed; skipping it for a while");
        up.down_until
            .store(table.now_ms() + table.backoff.as_millis() as u64, Relaxed);
        if let Some(m) = up.metrics.get() {
            m.failed(table.backoff);
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.list[self.1].active.fetch_sub(1, Relaxed);
        if let Some(m) = &self.2 {
            m.sessions.add(-1);
        }
    }
}

/// A connected upstream.
pub struct Connected {
    pub stream: Stream,
    /// With `--upstream-tls`: what the upstream's handshake showed.
    pub tls: Option<tls::Peer>,
    /// The upstream as configured (for logs).
    pub name: String,
    /// The address actually reached.
    pub addr: SocketAddr,
    pub guard: ActiveGuard,
}

impl Upstreams {
    pub fn new(targets: Vec<String>, balance: Balance, backoff: Duration) -> Arc<Self> {
        Self::build(
            targets,
            balance,
            backoff,
            None,
            Arc::new(AtomicUsize::new(0)),
            None,
        )
    }

    /// Upstreams reached over TLS (`tls`), or plain (`None`).
    pub fn with_tls(
        targets: Vec<String>,
        balance: Balance,
        backoff: Duration,
        tls: Option<UpstreamTls>,
    ) -> Arc<Self> {
        Self::build(
            targets,
            balance,
            backoff,
            tls.map(Arc::new),
            Arc::new(AtomicUsize::new(0)),
            None,
        )
    }

    /// The same table, its upstreams probed as `check` says ([`super::health`]) once the
    /// proxy starts. (A table is built before the proxy starts, so nothing is lost.)
    pub fn checked(&self, check: HealthCheck) -> Arc<Self> {
        Self::build(
            self.targets().map(str::to_owned).collect(),
            self.balance,
            self.backoff,
            self.tls.clone(),
            self.descriptor_waiters.clone(),
            Some(Arc::new(check)),
        )
    }

    /// Another table with these targets and this one's balance, back-off, TLS, health
    /// checks and descriptor waiters: one proxy's tables (one per `--sni-route` name)
    /// hold new clients together while any session waits for a descriptor.
    pub fn sibling(&self, targets: Vec<String>) -> Arc<Self> {
        Self::build(
            targets,
            self.balance,
            self.backoff,
            self.tls.clone(),
            self.descriptor_waiters.clone(),
            self.checks.clone(),
        )
    }

    fn build(
        targets: Vec<String>,
        balance: Balance,
        backoff: Duration,
        tls: Option<Arc<UpstreamTls>>,
        descriptor_waiters: Arc<AtomicUsize>,
        checks: Option<Arc<HealthCheck>>,
    ) -> Arc<Self> {
        let list = targets
            .into_iter()
            .map(|target| Upstream {
                target,
                active: AtomicUsize::new(0),
                down_until: AtomicU64::new(0),
                metrics: OnceLock::new(),
            })
            .collect();
        Arc::new(Upstreams {
            list,
            balance,
            cursor: AtomicUsize::new(0),
            backoff,
            base: Instant::now(),
            descriptor_waiters,
            tls,
            checks,
            all_down_log: LogLimit::default(),
        })
    }

    /// With `--upstream-tls`: its settings.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_deref()
    }

    /// With `--upstream-tls`: its settings, to share (the health checker's probes).
    pub(super) fn tls_shared(&self) -> Option<Arc<UpstreamTls>> {
        self.tls.clone()
    }

    /// With `--check-interval`: how the upstreams are probed.
    pub fn health_check(&self) -> Option<Arc<HealthCheck>> {
        self.checks.clone()
    }

    /// A client was closed because the checks hold every upstream down: `Some(n)` when
    /// a line is due (at most one a second), telling `n` such clients.
    pub fn all_down_tick(&self) -> Option<u64> {
        self.all_down_log.tick()
    }

    /// Takes `target` out of this table's back-off (its health checks found it up).
    pub(super) fn clear_backoff(&self, target: &str) {
        for up in self.list.iter().filter(|up| up.target == target) {
            up.down_until.store(0, Relaxed);
        }
    }

    /// The targets, as configured.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|up| up.target.as_str())
    }

    /// Counts each upstream into `metrics` from now on (by its target as configured).
    /// Called when the proxy starts; a table counts into the first it is given.
    pub fn count_into(&self, metrics: &ProxyMetrics) {
        for up in &self.list {
            let _ = up.metrics.set(metrics.upstream(&up.target));
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// The order to try upstreams in: the balance policy's order, with those in back-off
    /// moved to the end (still tried when everything else fails), and those the health
    /// checks hold down left out.
    pub fn order(&self) -> Vec<usize> {
        let n = self.list.len();
        let mut order: Vec<usize> = match self.balance {
            Balance::First => (0..n).collect(),
            Balance::RoundRobin => {
                let start = self.cursor.fetch_add(1, Relaxed);
                (0..n).map(|i| (start + i) % n).collect()
            }
            Balance::LeastConn => {
                let mut o: Vec<usize> = (0..n).collect();
                o.sort_by_key(|&i| self.open(i));
                o
            }
        };
        if self.checks.is_some() {
            order.retain(|&i| !self.checked_down(i));
        }
        let now = self.now_ms();
        order.sort_by_key(|&i| self.in_backoff(i, now)); // stable: keeps policy order
        order
    }

    /// Whether the health checks hold upstream `i` down (they write its service's
    /// counters, so only once the proxy has started).
    fn checked_down(&self, i: usize) -> bool {
        self.list[i]
            .metrics
            .get()
            .is_some_and(|m| m.health.is_down())
    }

    /// Sessions open to upstream `i`. Once the proxy has started, its service's count
    /// for that target: a table built by a reload then sees the sessions that earlier
    /// tables opened (they carry on), not only its own.
    fn open(&self, i: usize) -> i64 {
        let up = &self.list[i];
        match up.metrics.get() {
            Some(m) => m.sessions.get(),
            None => i64::try_from(up.active.load(Relaxed)).unwrap_or(i64::MAX),
        }
    }

    /// Whether upstream `i` is in back-off: a connect of this table failed, or (once
    /// the proxy has started) one of an earlier table of the service did, so a reload
    /// does not send a client to an upstream known to be down.
    fn in_backoff(&self, i: usize, now: u64) -> bool {
        let up = &self.list[i];
        up.down_until.load(Relaxed) > now || up.metrics.get().is_some_and(|m| !m.up())
    }

    /// How many sessions wait for a descriptor right now; the proxy's accept loop holds
    /// new clients while it is above zero.
    pub fn descriptor_waiters(&self) -> Arc<AtomicUsize> {
        self.descriptor_waiters.clone()
    }

    /// Connects to the first upstream that answers, in [`Upstreams::order`]; the error
    /// says why each one failed. A local shortage of descriptors is waited out (up to
    /// `timeout`) instead of being held against the upstream.
    pub async fn connect(self: &Arc<Self>, timeout: Duration) -> Result<Connected, ConnectError> {
        let mut failures = Vec::new();
        let order = self.order();
        if order.is_empty() && !self.list.is_empty() {
            return Err(ConnectError::AllDown);
        }
        for i in order {
            let up = &self.list[i];
            let mut waiting: Option<(Waiting, Instant)> = None;
            let mut pause = LOCAL_RETRY_MIN;
            loop {
                let tried = Instant::now();
                match connect_one(&up.target, timeout, self.tls.as_deref()).await {
                    Ok((stream, addr, tls)) => {
                        up.down_until.store(0, Relaxed);
                        up.active.fetch_add(1, Relaxed);
                        let metrics = up.metrics.get().cloned();
                        if let Some(m) = &metrics {
                            m.connected(tried.elapsed());
                            m.sessions.add(1);
                        }
                        return Ok(Connected {
                            stream,
                            tls,
                            name: up.target.clone(),
                            addr,
                            guard: ActiveGuard(self.clone(), i, metrics),
                        });
                    }
                    Err(Failure::Local(e)) => {
                        let since = match &waiting {
                            Some((_, since)) => *since,
                            None => {
                                log::warn!(upstream = up.target.as_str(), error = e.to_string().as_str(), wait_ms = timeout.as_millis() as u64;
                                    "proxy: out of descriptors here (a local limit, not the upstream's fault); the client waits for one");
                                self.descriptor_waiters.fetch_add(1, Relaxed);
                                let w = Waiting(self.descriptor_waiters.clone());
                                waiting.insert((w, Instant::now())).1
                            }
                        };
                        // Spare splice pipes are descriptors no connection uses.
                        splice::release_spare_pipes();
                        let left = timeout.saturating_sub(since.elapsed());
                        if left.is_zero() {
                            return Err(ConnectError::Local(format!(
                                "{e}: no descriptor to connect with for {timeout:?} (a local limit; see ulimit -n)"
                            )));
                        }
                        rt::sleep(pause.min(left)).await;
                        pause = (pause * 2).min(LOCAL_RETRY_MAX);
                    }
                    Err(Failure::Remote(why)) => {
                        log::warn!(upstream = up.target.as_str(), error = why.as_str(), backoff_ms = self.backoff.as_millis() as u64;
                            "proxy: upstream failed; skipping it for a while");
                        up.down_until
                            .store(self.now_ms() + self.backoff.as_millis() as u64, Relaxed);
                        if let Some(m) = up.metrics.get() {
                            m.failed(self.backoff);
                        }
                        failures.push(format!("{}: {why}", up.target));
                        break;
                    }
                }
            }
        }
        Err(ConnectError::Upstreams(failures.join("; ")))
    }
}

impl Upstreams {
    /// A UDP socket connected to the first upstream in [`Upstreams::order`] whose name
    /// resolves (UDP has no handshake: an upstream that is down shows as the flow's
    /// refused receive), counted against it as a session is.
    pub async fn open_udp(
        self: &Arc<Self>,
    ) -> Result<(rt::UdpSocket, String, SocketAddr, ActiveGuard), ConnectError> {
        let mut failures = Vec::new();
        for i in self.order() {
            let up = &self.list[i];
            let (looked_up, errno_left) = resolve(&up.target).await;
            let opened = match looked_up {
                Ok(addrs) => open_udp_to(&addrs).await,
                Err(e) => Err(lookup_failure(e, errno_left, socket_available)),
            };
            let opened = match opened {
                Err(Failure::Local(e)) => {
                    // Ours, not the upstream's: the datagram is dropped, nobody backs off.
                    return Err(ConnectError::Local(format!(
                        "{}: no descriptor for a new flow (a local limit; see ulimit -n)",
                        describe(&e)
                    )));
                }
                Err(Failure::Remote(why)) => Err(why),
                Ok(opened) => Ok(opened),
            };
            match opened {
                Ok((socket, addr)) => {
                    up.active.fetch_add(1, Relaxed);
                    let metrics = up.metrics.get().cloned();
                    if let Some(m) = &metrics {
                        m.connected(Duration::ZERO);
                        m.sessions.add(1);
                    }
                    let guard = ActiveGuard(self.clone(), i, metrics);
                    return Ok((socket, up.target.clone(), addr, guard));
                }
                Err(why) => {
                    log::warn!(upstream = up.target.as_str(), error = why.as_str(), backoff_ms = self.backoff.as_millis() as u64;
                        "proxy: upstream failed; skipping it for a while");
                    up.down_until
                        .store(self.now_ms() + self.backoff.as_millis() as u64, Relaxed);
                    if let Some(m) = up.metrics.get() {
                        m.failed(self.backoff);
                    }
                    failures.push(format!("{}: {why}", up.target));
                }
            }
        }
        Err(ConnectError::Upstreams(failures.join("; ")))
    }
}

/// A UDP socket on a fresh port, connected to the first of `addrs` that takes it. Out
/// of descriptors here is [`Failure::Local`]: no upstream is blamed for it.
async fn open_udp_to(addrs: &[SocketAddr]) -> Result<(rt::UdpSocket, SocketAddr), Failure> {
    let mut last = String::from("resolves to no address");
    for &addr in addrs {
        let any: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let opened = match rt::UdpSocket::bind(any).await {
            Ok(socket) => socket.connect(addr).await.map(|()| socket),
            Err(e) => Err(e),
        };
        match opened {
            Ok(socket) => return Ok((socket, addr)),
            Err(e) if is_resource_exhaustion(&e) => return Err(Failure::Local(e)),
            Err(e) => last = describe(&e),
        }
    }
    Err(Failure::Remote(last))
}

/// Why a health check's connect failed.
pub(super) enum ProbeError {
    /// Out of descriptors or buffers here: no evidence about the upstream.
    Local(String),
    /// The upstream refused, timed out, did not resolve or failed the handshake.
    Remote(String),
}

/// Connects to `target` as a session would (resolved again; with `tls`, the handshake
/// and its verification), for a health check's probe.
pub(super) async fn connect_for_probe(
    target: &str,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Stream, ProbeError> {
    match connect_one(target, timeout, tls).await {
        Ok((stream, _, _)) => Ok(stream),
        Err(Failure::Local(e)) => Err(ProbeError::Local(describe(&e))),
        Err(Failure::Remote(why)) => Err(ProbeError::Remote(why)),
    }
}

/// Connects to `target` (and, with `tls`, runs the client handshake over the
/// connection, within `timeout` too): the stream, the address reached, and what the
/// handshake showed.
async fn connect_one(
    target: &str,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<(Stream, SocketAddr, Option<tls::Peer>), Failure> {
    let (stream, addr, tried) = connect_tcp(target, timeout).await?;
    let Some(settings) = tls else {
        return Ok((stream, addr, None));
    };
    // The connect and its handshake share one attempt's timeout.
    let left = timeout.saturating_sub(tried.elapsed());
    if left.is_zero() {
        return Err(Failure::Remote(format!(
            "connect and TLS handshake not done within {timeout:?}"
        )));
    }
    let name = tls::server_name(target, settings.sni.as_deref()).map_err(|e| {
        Failure::Remote(format!(
            "no TLS name to verify it by ({e}); give --upstream-sni"
        ))
    })?;
    match tls::connect(settings.config.clone(), name, stream, addr, left).await {
        Ok((stream, peer)) => Ok((stream, addr, Some(peer))),
        Err(e) => Err(Failure::Remote(e.to_string())),
    }
}

/// Connects to the first of `target`'s addresses that answers within `timeout`: the
/// stream, the address, and when the attempt that succeeded began.
async fn connect_tcp(
    target: &str,
    timeout: Duration,
) -> Result<(Stream, SocketAddr, Instant), Failure> {
    // A lookup needs descriptors too (the hosts file, a socket to the DNS server); see
    // [`lookup_failure`] for how a lookup that failed for want of one is told apart.
    let (looked_up, errno_left) = resolve(target).await;
    let addrs = looked_up.map_err(|e| lookup_failure(e, errno_left, socket_available))?;
    let mut last = String::from("resolves to no address");
    for addr in addrs {
        let tried = Instant::now();
        match rt::timeout(timeout, Stream::connect(addr)).await {
            Some(Ok(s)) => {
                let _ = s.socket().set_nodelay(true);
                return Ok((s, addr, tried));
            }
            Some(Err(e)) if is_resource_exhaustion(&e) => return Err(Failure::Local(e)),
            Some(Err(e)) => last = describe(&e),
            None => last = format!("connect timed out after {timeout:?}"),
        }
    }
    Err(Failure::Remote(last))
}

/// Looks `target` up on a blocking thread, with the errno the lookup left on it.
async fn resolve(target: &str) -> (std::io::Result<Vec<SocketAddr>>, Option<i32>) {
    use std::net::ToSocketAddrs;
    let target = target.to_owned();
    rt::spawn_blocking(move || {
        errno_left_by(|| target.to_socket_addrs().map(|found| found.collect()))
    })
    .await
}

/// Whether a failed lookup of an upstream's name was this process's shortage (wait for
/// a descriptor, blame no one) or the name's fault (back-off, fail over), from, in turn:
///
/// - an errno of exhaustion in the error itself, under the runtime's wrapping;
/// - one the lookup left on its thread (`errno_left`): glibc reports a lookup that could
///   not open `/etc/hosts` or a DNS socket as "Name or service not known" with errno
///   `EMFILE`. This is the lookup's own evidence. A probe for a socket made afterwards
///   races with sessions that free descriptors meanwhile: under churn it found one, and
///   a healthy upstream was put in back-off;
/// - for a resolver that leaves neither, `probe` ([`socket_available`]) as a last check.
///
/// A name that really does not resolve while descriptors are plentiful leaves no such
/// errno and passes the probe, so it still fails over at once.
fn lookup_failure(
    e: std::io::Error,
    errno_left: Option<i32>,
    probe: impl FnOnce() -> std::io::Result<()>,
) -> Failure {
    if is_resource_exhaustion(&e) {
        return Failure::Local(e);
    }
    if let Some(errno) = errno_left.filter(|&n| exhausted(Some(n))) {
        let why = std::io::Error::from_raw_os_error(errno);
        return Failure::Local(std::io::Error::new(
            why.kind(),
            format!("{}, during a lookup that failed: {}", why, describe(&e)),
        ));
    }
    match probe() {
        Err(local) => Failure::Local(local),
        Ok(()) => Failure::Remote(format!("cannot resolve: {}", describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    fn table(balance: Balance) -> Arc<Upstreams> {
        Upstreams::new(
            vec!["a:1".into(), "b:1".into(), "c:1".into()],
            balance,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_failed_lookup_is_local_only_with_evidence_of_a_shortage() {
        let nxdomain = || std::io::Error::other("Name or service not known");
        let fine = || Ok(());
        let short = || Err(std::io::Error::from(Errno::MFILE));
        // Plenty of descriptors and no errno: the name's fault, failed over at once.
        assert!(matches!(
            lookup_failure(nxdomain(), None, fine),
            Failure::Remote(_)
        ));
        let other = Some(Errno::NOENT.raw_os_error());
        assert!(matches!(
            lookup_failure(nxdomain(), other, fine),
            Failure::Remote(_)
        ));
        // The lookup left EMFILE: local, even though a descriptor is free by now.
        let emfile = Some(Errno::MFILE.raw_os_error());
        match lookup_failure(nxdomain(), emfile, fine) {
            Failure::Local(e) => assert_eq!(e.kind(), std::io::Error::from(Errno::MFILE).kind()),
            Failure::Remote(why) => panic!("blamed the name: {why}"),
        }
        assert!(matches!(
            lookup_failure(nxdomain(), Some(Errno::NFILE.raw_os_error()), fine),
            Failure::Local(_)
        ));
        // The error carries it, or no socket can be had now: local.
        let wrapped = std::io::Error::other(std::io::Error::from(Errno::MFILE));
        assert!(matches!(
            lookup_failure(wrapped, None, fine),
            Failure::Local(_)
        ));
        assert!(matches!(
            lookup_failure(nxdomain(), None, short),
            Failure::Local(_)
        ));
    }

    #[test]
    fn orders() {
        let rr = table(Balance::RoundRobin);
        assert_eq!(rr.order(), vec![0, 1, 2]);
        assert_eq!(rr.order(), vec![1, 2, 0]);
        let first = table(Balance::First);
        assert_eq!(first.order(), vec![0, 1, 2]);
        assert_eq!(first.order(), vec![0, 1, 2]);
        let lc = table(Balance::LeastConn);
        lc.list[0].active.store(2, Relaxed);
        lc.list[1].active.store(1, Relaxed);
        assert_eq!(lc.order(), vec![2, 1, 0]);
        // An upstream in back-off goes last.
        first.list[0]
            .down_until
            .store(first.now_ms() + 60_000, Relaxed);
        assert_eq!(first.order(), vec![1, 2, 0]);
    }

    #[test]
    fn a_table_from_a_reload_sees_the_sessions_and_back_off_of_the_one_before() {
        let metrics = ProxyMetrics::default();
        let before = table(Balance::LeastConn);
        before.count_into(&metrics);
        // The earlier table's sessions: two open to a, one to b; c failed.
        metrics.upstream("a:1").sessions.add(2);
        metrics.upstream("b:1").sessions.add(1);
        metrics.upstream("c:1").failed(Duration::from_secs(60));
        let after = table(Balance::LeastConn);
        after.count_into(&metrics);
        assert_eq!(after.order(), vec![1, 0, 2]);
        let first = table(Balance::First);
        first.count_into(&metrics);
        metrics.upstream("a:1").failed(Duration::from_secs(60));
        assert_eq!(first.order(), vec![1, 0, 2]);
    }
}
