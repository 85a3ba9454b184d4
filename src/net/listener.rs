//! The accept loop: access control, `--max-conns`, the per-client limits
//! (`--max-conns-per-ip`, `--conn-rate-per-ip`: [`per_ip`](crate::net::per_ip)), EMFILE
//! back-off, and shutdown.
//!
//! The loop owns the listener and a table of the connections it started. It never awaits
//! anything of one client: each connection runs in its own task through a helper that
//! logs the connection's error with its peer, and tells the loop when it is over.
//!
//! Shutdown: when the [`Shutdown`] fires the loop drops the listener (no new clients) and
//! shuts the *read* half of every open connection. Each reader then sees EOF and ends the
//! way it would for a client that closed, so every writer still flushes what it holds.
//! (With `keep_open_on_shutdown`, as the proxy's drain wants, open connections are left
//! to finish by themselves.)

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use futures::io::AsyncWriteExt;

use crate::Result;
use crate::net::access::AccessList;
use crate::net::limits::is_resource_exhaustion;
use crate::net::per_ip::{self, PerIpLimits};
use crate::net::shutdown::Shutdown;
use crate::net::socket::Socket;
use crate::net::stats::Stats;
use crate::net::stream::Stream;
use crate::net::tls::Tls;
use crate::rt::{self, TcpListener};

/// Longest pause after the process runs out of descriptors before accepting again
/// (a closing connection ends the pause sooner).
const EMFILE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a refused client is given to take the `full_notice` before it is closed.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// While accepts are held ([`ServerConfig::hold_accepts`]), how often the loop looks
/// again (it also looks when a connection closes). Only runs in that fault state.
const HOLD_CHECK: Duration = Duration::from_millis(10);

/// Mailbox of the accept loop for "connection N is over"; a connection sends one message
/// in its life, so a small bound only ever delays a finished task, never a live one.
const CLOSED_MAILBOX: usize = 1024;

/// At most one line per refusal reason (`--max-conns`, the access list) per accept loop
/// this often: a flood of refused clients must not become a flood of log lines. The
/// per-client limits keep their own tally ([`per_ip`]).
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(1);

/// The refusals of one reason since its last line, in one accept loop (which alone
/// touches it: no lock).
#[derive(Default)]
struct RefusedLog {
    last: Option<std::time::Instant>,
    untold: u64,
}

impl RefusedLog {
    /// One more refusal: `Some(n)` when a line is due now, telling `n` refusals (this one
    /// included) since the last line; what a line does not tell, the next one does.
    fn tick(&mut self) -> Option<u64> {
        self.untold += 1;
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now < last + REFUSED_LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.untold))
    }
}

/// What every server role takes from the command line.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Connections served at once; 0 means no limit. Over it a new client is closed at once.
    pub max_conns: usize,
    /// Close a connection after this long without input; `None` means never.
    pub idle_timeout: Option<Duration>,
    /// `--max-conns-per-ip`, `--conn-rate-per-ip`: checked at accept, after `max_conns`,
    /// against the table in the service's `Stats` (shared by all its accept loops). Over
    /// either, the client is closed with nothing sent.
    pub per_ip: PerIpLimits,
    /// Which peers may connect.
    pub access: AccessList,
    /// Bytes written to a client refused by `max_conns` before closing (chat's
    /// `! server full`, HTTP's 503); `None` closes silently.
    pub full_notice: Option<Vec<u8>>,
    /// At shutdown, leave open connections alone to finish by themselves (the proxy's
    /// `--drain`) instead of shutting their read halves.
    pub keep_open_on_shutdown: bool,
    /// Log the accept loop's start and stop at debug rather than info: several loops
    /// serve one address (the proxy's `--threads`), and their caller says it once.
    pub quiet: bool,
    /// While this count is above zero, accept no one: it counts connections waiting for
    /// a descriptor (the proxy's sessions whose upstream connect met EMFILE), and a new
    /// client would take the descriptor one of them is waiting for.
    pub hold_accepts: Option<Arc<AtomicUsize>>,
    /// With `keep_open_on_shutdown`: fires when the process stops waiting for open
    /// connections (the end of the drain). A role that keeps connections open closes
    /// them then, so each still ends (and logs) before the exit.
    pub close_now: Option<Shutdown>,
    /// For a role that reads the client's address from a PROXY protocol header (the
    /// proxy's `--accept-proxy`): which peers may send one at all (`--proxy-from`;
    /// empty allows anyone). `access` then judges the address in the header.
    pub proxy_from: AccessList,
    /// Fires when this accept loop is replaced by another on the same listener (a
    /// reload under `serve`): the loop stops accepting and lets go of its listener, but
    /// its open connections stay as they are; it still shuts them at `shutdown` (unless
    /// `keep_open_on_shutdown`), and returns early once the last one has closed.
    pub retire: Option<Shutdown>,
    /// TLS on this loop's listener: each client's handshake runs in its own task, within
    /// the handshake timeout, before the handler gets the connection ([`Tls::accept`]).
    /// A client refused by `max_conns` is closed without the `full_notice`, which it
    /// could not read.
    pub tls: Option<Arc<Tls>>,
    /// `--tls-listen`: the address of a TLS listener beside the plain one. Whoever binds
    /// the server's sockets binds it too and hands it over as [`Listeners::tls_beside`].
    pub tls_listen: Option<String>,
}

/// The TCP listeners of one server: its own (`--tcp`, `--listen`) and the TLS ones beside
/// them (`--tls-listen`). With TLS in the [`ServerConfig`] and nothing beside them, its
/// own listeners speak TLS; with a TLS listener beside them, they stay plain. A role's
/// run function takes `impl Into<Listeners>`, so a plain listener (or an `Option` or a
/// `Vec` of them) is one too.
pub struct Listeners<L = TcpListener> {
    pub main: Vec<L>,
    pub tls_beside: Vec<L>,
}

impl<L> Listeners<L> {
    /// Each listener with the settings of its accept loop: `config` for a TLS one, and
    /// for the plain ones beside a TLS listener the same without TLS.
    pub fn with_configs(self, config: &Arc<ServerConfig>) -> Vec<(L, Arc<ServerConfig>)> {
        if !self.tls_beside.is_empty() && config.tls.is_none() {
            log::error!(
                "a TLS listener was given without TLS settings (--tls-cert, --tls-key); it is served plain"
            );
        }
        let plain = if self.tls_beside.is_empty() {
            config.clone()
        } else {
            Arc::new(ServerConfig {
                tls: None,
                ..(**config).clone()
            })
        };
        let main = self.main.into_iter().map(|l| (l, plain.clone()));
        let beside = self.tls_beside.into_iter().map(|l| (l, config.clone()));
        main.chain(beside).collect()
    }

    /// These listeners, each its own: none beside.
    pub fn plain(main: Vec<L>) -> Self {
        Listeners {
            main,
            tls_beside: Vec::new(),
        }
    }
}

impl From<TcpListener> for Listeners {
    fn from(listener: TcpListener) -> Self {
        Listeners::plain(vec![listener])
    }
}

impl From<Option<TcpListener>> for Listeners {
    fn from(listener: Option<TcpListener>) -> Self {
        Listeners::plain(listener.into_iter().collect())
    }
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(listeners: Vec<TcpListener>) -> Self {
        Listeners::plain(listeners)
    }
}

impl From<Vec<std::net::TcpListener>> for Listeners<std::net::TcpListener> {
    fn from(listeners: Vec<std::net::TcpListener>) -> Self {
        Listeners::plain(listeners)
    }
}

impl ServerConfig {
    /// What a client over `--max-conns` is told before it is closed, unless a notice is
    /// set already (chat's `! server full`, HTTP's 503).
    pub fn or_full_notice(mut self, notice: &[u8]) -> Self {
        self.full_notice.get_or_insert_with(|| notice.to_vec());
        self
    }

    /// Logs the accept loop's start and stop at debug: for one of several loops on one
    /// address (the proxy's `--threads`), whose caller announces the address once.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// For a role with a drain of its own (the proxy): at shutdown the accept loop leaves
    /// open connections to finish, and accepts no one while `waiting` is above zero (the
    /// connections waiting for a descriptor get the ones that free up first).
    pub fn keep_open(mut self, waiting: Arc<AtomicUsize>) -> Self {
        self.keep_open_on_shutdown = true;
        self.hold_accepts = Some(waiting);
        self
    }

    /// For a role that reads the client's address from a PROXY protocol header: the
    /// accept loop judges the peer by `proxy_from` (who may send headers at all), and
    /// the role judges the address in each header by the `access` it kept from before.
    pub fn judging_proxies(mut self) -> Self {
        self.access = self.proxy_from.clone();
        self
    }

    /// Completes when the loop should stop accepting: at `shutdown`, or when it is
    /// retired.
    async fn stop_accepting(&self, shutdown: &Shutdown) {
        match &self.retire {
            Some(retire) => {
                futures::select! {
                    _ = shutdown.wait().fuse() => {}
                    _ = retire.wait().fuse() => {}
                }
            }
            None => shutdown.wait().await,
        }
    }
}

/// One accepted connection, handed to the role.
pub struct Conn {
    /// The connection; split it for the reader and the writer.
    pub stream: Stream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's counters.
    pub stats: Arc<Stats>,
    /// The server's idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Fires at the end of the server's drain ([`ServerConfig::close_now`]): a
    /// connection still open then closes itself.
    pub close_now: Option<Shutdown>,
    /// What the TLS handshake agreed, on a TLS listener (`None`: plain TCP).
    pub tls: Option<TlsInfo>,
}

/// What a client's TLS handshake agreed, for a role's logs.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<Box<str>>,
}

/// Accepts on `listener` until `shutdown` fires, running `handler` for each client.
///
/// Returns once the listener is closed and every open connection has been told to stop
/// reading; the caller waits for `stats.live_tasks()` to reach zero if it wants to drain.
pub async fn serve<H, F>(
    role: &'static str,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    handler: H,
) where
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Result<()>> + Send + 'static,
{
    // Shared with the connection tasks, which call it after their TLS handshake.
    let handler = Arc::new(handler);
    let (closed_tx, closed_rx) = flume::bounded::<u64>(CLOSED_MAILBOX);
    let mut open: HashMap<u64, Socket> = HashMap::new();
    let mut next_id = 0u64;
    let mut backoff = Duration::ZERO;
    let (mut denied_log, mut full_log) = (RefusedLog::default(), RefusedLog::default());
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let announce = if config.quiet {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    match &config.tls {
        Some(tls) => log::log!(announce, role = role, addr = local.as_str(),
            cert = tls.subject(); "listening (TLS)"),
        None => log::log!(announce, role = role, addr = local.as_str(); "listening (TCP)"),
    }

    loop {
        if backoff > Duration::ZERO {
            // Out of descriptors: wait for a connection to close, or for the back-off.
            futures::select! {
                id = closed_rx.recv_async() => { if let Ok(id) = id { open.remove(&id); } }
                _ = rt::sleep(backoff).fuse() => {}
                _ = config.stop_accepting(&shutdown).fuse() => break,
            }
        }
        if let Some(waiting) = &config.hold_accepts
            && waiting.load(Ordering::Relaxed) > 0
        {
            futures::select! {
                id = closed_rx.recv_async() => { if let Ok(id) = id { open.remove(&id); } }
                _ = rt::sleep(HOLD_CHECK).fuse() => {}
                _ = config.stop_accepting(&shutdown).fuse() => break,
            }
            continue;
        }
        let accepted = futures::select! {
            accepted = listener.accept().fuse() => accepted,
            id = closed_rx.recv_async() => {
                if let Ok(id) = id { open.remove(&id); }
                continue;
            }
            _ = config.stop_accepting(&shutdown).fuse() => break,
        };
        let (stream, peer) = match accepted.and_then(|(s, peer)| Ok((Stream::new(s)?, peer))) {
            Ok(pair) => {
                backoff = Duration::ZERO;
                pair
            }
            Err(e) if is_resource_exhaustion(&e) => {
                stats.refused.emfile.fetch_add(1, Ordering::Relaxed);
                if backoff.is_zero() {
                    // Once per episode at warn; the retries that follow at debug.
                    log::warn!(role = role, error = e.to_string().as_str(), open = open.len();
                        "out of resources to accept; pausing until connections close");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(20), EMFILE_BACKOFF_MAX);
                log::debug!(role = role, pause_ms = backoff.as_millis() as u64; "accept paused");
                continue;
            }
            Err(e) => {
                // Per-connection failures (the client reset before we took it, ...).
                log::debug!(role = role, error = e.to_string().as_str(); "accept failed");
                continue;
            }
        };

        if !config.access.permits(peer.ip()) {
            stats.refused.denied.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = denied_log.tick() {
                log::info!(role = role, peer = peer.to_string().as_str(), refused = n;
                    "refused by access list ({n} since the last line)");
            }
            continue; // dropping the stream closes it
        }
        if config.max_conns > 0 && stats.active() >= config.max_conns {
            stats.refused.max_conns.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = full_log.tick() {
                log::warn!(role = role, peer = peer.to_string().as_str(), max_conns = config.max_conns, refused = n;
                    "refused: server full ({n} since the last line)");
            }
            if let Some(notice) = config.full_notice.clone().filter(|_| config.tls.is_none()) {
                // Written from its own task: the loop never waits on a client.
                let task = stats.task();
                rt::spawn_connection(async move {
                    let _task = task;
                    let mut stream = stream;
                    let _ = rt::timeout(NOTICE_TIMEOUT, stream.write_all(&notice)).await;
                    let _ = stream.socket().shut_both();
                });
            }
            continue;
        }
        // After the global limit, which refuses everyone alike without a lock; a client
        // it admits carries `client` (its place in the table) until its task ends.
        let client = if config.per_ip.is_on() {
            match per_ip::admit(role, &stats, peer.ip(), &config.per_ip) {
                Ok(client) => client,
                Err(_) => continue, // counted and logged (once a second); dropping closes
            }
        } else {
            None
        };

        let _ = stream.socket().set_nodelay(true);
        next_id += 1;
        let id = next_id;
        // A handle to the socket, which costs no descriptor.
        open.insert(id, stream.socket().clone());
        let conn = Conn {
            stream,
            peer,
            stats: stats.clone(),
            idle_timeout: config.idle_timeout,
            close_now: config.close_now.clone(),
            tls: None,
        };
        let guard = stats.connection();
        let task = stats.task();
        let closed_tx = closed_tx.clone();
        log::debug!(role = role, peer = peer.to_string().as_str(); "accepted");
        let started = std::time::Instant::now();
        // `then`, not an `async` block awaiting the handler's future: that block would
        // hold the future twice (captured, and again while awaited), in every idle
        // client's task.
        let work = match &config.tls {
            None => Either::Left(handler(conn)),
            // The handshake in the connection's task, then the role's handler; `then`
            // holds one of the two futures at a time.
            Some(tls) => {
                let (tls, handler) = (tls.clone(), handler.clone());
                Either::Right(
                    async move { tls.accept(role, conn).await }.then(move |conn| match conn {
                        Some(conn) => Either::Left(handler(conn)),
                        None => Either::Right(futures::future::ready(Ok(()))),
                    }),
                )
            }
        };
        let work = work.then(move |result| async move {
            let _task = task;
            if let Err(e) = result {
                log::warn!(role = role, peer = peer.to_string().as_str(), error = e.to_string().as_str(); "connection failed");
            }
            log::debug!(role = role, peer = peer.to_string().as_str(), ms = started.elapsed().as_millis() as u64; "reader done");
            drop(guard);
            drop(client);
            let _ = closed_tx.send_async(id).await;
        });
        rt::spawn_connection(work);
    }

    drop(listener);
    if !shutdown.is_fired() {
        // Retired: another loop accepts on this listener now. The connections started
        // here stay; the loop keeps their table until they end or the shutdown comes.
        log::debug!(role = role, addr = local.as_str(), open = open.len(); "retired; open connections stay");
        while !open.is_empty() {
            futures::select! {
                id = closed_rx.recv_async() => { if let Ok(id) = id { open.remove(&id); } }
                _ = shutdown.wait().fuse() => break,
            }
        }
        if open.is_empty() {
            return;
        }
    }
    if config.keep_open_on_shutdown {
        log::log!(announce, role = role, open = open.len(); "stopped accepting; letting open connections finish");
        return;
    }
    log::log!(announce, role = role, open = open.len(); "stopped accepting; closing connections");
    for socket in open.values() {
        let _ = socket.shut_read();
    }
}
