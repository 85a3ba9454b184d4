//! A transparent, full-duplex TCP proxy: telnet, HTTP, FTP control, anything over TCP.
//!
//! ```text
//!   client ─▶ client reader (pump) ──upstream_tx──▶ upstream writer ─▶ origin
//!   client ◀─ client writer ◀──client_tx── upstream reader (pump) ◀─ origin
//!                      └──── session task: timeouts, who closed first, the log line
//! ```
//!
//! Each accepted client gets a reader and a writer actor, and so does its connection to
//! the origin; they are cross-linked by bounded mailboxes, so a fast sender and a slow
//! receiver hold memory flat. Both directions run at once, the server may speak first,
//! and a half-close is carried over: when one side shuts its write half, the writer on
//! the other side flushes and shuts the matching half, and the other direction goes on.
//! A pump that waits for mailbox room still notices its peer's reset or FIN
//! ([`Reader::watch`]), and bytes are counted as they move.
//!
//! Where the bytes need not be seen (no `--tap`) and both sides are plain TCP, each
//! direction is a zero-copy relay instead (`splice(2)` through a pipe, [`Relay`]): the
//! relay is that direction's reader and writer in one, its pipe the bounded buffer, and
//! it reports the same counts, FIN notices and ends as a pump and its writer, so the
//! session below cannot tell the two apart.
//!
//! The session's log line is written once both writers have ended, and gives the bytes
//! delivered each way (written to the other side's socket), not the bytes read: when a
//! session ends with bytes read and never written (a reset while the other side had
//! stopped reading), it says how many were dropped and why.
//!
//! Try it: `switchboard hello & switchboard proxy --upstream 127.0.0.1:7009`, then
//! `nc 127.0.0.1 7001`.

pub mod ftp;
pub mod header;
pub mod health;
pub mod metrics;
pub mod sni;
pub mod udp;
pub mod upstreams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::io::AsyncReadExt;
use futures::{FutureExt, StreamExt};

use crate::Result;
use crate::net::access::AccessList;
use crate::net::handoff::{Delivery, DirectWrites, Handoff};
use crate::net::idle::{Activity, IdleTimer};
use crate::net::listener::{self, Conn, Listeners, ServerConfig};
use crate::net::reader::{Input, Reader};
use crate::net::shutdown::Shutdown;
use crate::net::socket::{Hangup, Socket};
use crate::net::splice::{self, Relay, Side, Step};
use crate::net::stats::Stats;
use crate::net::stream::{ReadHalf, WriteHalf};
use crate::rt::{self, TcpListener};
use header::Version;
use metrics::ProxyMetrics;
use upstreams::{ConnectError, Upstreams};

/// Default listening address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7001";

/// The most `--tap` prints of one chunk.
const TAP_MAX: usize = 1024;

/// Proxy settings beyond the common server ones.
pub struct ProxyConfig {
    /// Where sessions go; with `sni`, empty: the routes' tables are its siblings
    /// ([`Upstreams::sibling`]) and share its descriptor waiters.
    pub upstreams: Arc<Upstreams>,
    /// `--sni-route`/`--sni-default`: TLS passthrough, each session's upstreams picked by
    /// the server name in its ClientHello ([`sni`]).
    pub sni: Option<sni::SniRoutes>,
    /// How long one connect attempt to an upstream may take.
    pub connect_timeout: Duration,
    /// After one side's FIN, close the session if nothing moves for this long.
    pub fin_timeout: Option<Duration>,
    /// Write a PROXY protocol header to the upstream first.
    pub send_proxy: Option<Version>,
    /// Read a PROXY protocol header from each client first, within this time. The
    /// server's `--allow`/`--deny` then judge the client the header names (the peer
    /// itself for `LOCAL`/`UNKNOWN`), not the balancer that connected, and the server's
    /// `proxy_from` judges who may send headers at all (at accept, before a byte is read).
    pub accept_proxy: Option<Duration>,
    /// Log the traffic itself.
    pub tap: bool,
    /// Relay each direction with `splice(2)` through a pipe of this many bytes (the most
    /// a direction then holds), for sessions whose bytes need not be seen: not with
    /// `tap`, and only between plain TCP sockets. `None`: copy.
    pub splice: Option<usize>,
    /// With `splice`: every byte goes through the pipe, small messages too. Otherwise a
    /// direction copies until a read fills the pipe's capacity, and splices that bulk
    /// ([`Relay::adaptive`]): small messages cost less copied.
    pub splice_always: bool,
    /// `--ftp`: the control connection is read as lines, and the proxy makes the data
    /// connections itself ([`ftp`]).
    pub ftp: Option<ftp::FtpConfig>,
}

/// Serves the proxy on `listener` until `shutdown` fires; open sessions are left to
/// finish (the caller's drain decides how long).
pub async fn run(
    listener: TcpListener,
    server: ServerConfig,
    proxy: ProxyConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    run_many(vec![listener], server, proxy, stats, shutdown).await;
}

/// [`run`] on several listeners at once (`--listen` repeated), sharing the upstreams,
/// their balancing and the counts.
pub async fn run_many(
    listeners: impl Into<Listeners>,
    server: ServerConfig,
    proxy: ProxyConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    announce(&server, &proxy);
    // Probes the upstreams (with --check-interval) until the loops below have stopped,
    // or this generation is retired.
    let _checker = start_checks(&proxy, &stats, &server);
    let (server, proxy) = (Arc::new(server), Arc::new(proxy));
    let loops = listeners
        .into()
        .with_configs(&server)
        .into_iter()
        .map(|(listener, server)| {
            serve(
                listener,
                server,
                proxy.clone(),
                stats.clone(),
                shutdown.clone(),
            )
        });
    futures::future::join_all(loops.collect::<Vec<_>>()).await;
}

/// Serves the proxy with one pinned thread per entry of `listeners`, each entry the
/// thread's listeners (one per `--listen` address, every address bound with
/// `SO_REUSEPORT` once per thread): the kernel spreads clients across the threads, and
/// every actor of a session runs on the thread that accepted it, so no hop wakes another
/// thread. Returns once every accept loop has stopped; sessions finish on their threads.
pub async fn run_pinned(
    listeners: Vec<impl Into<Listeners<std::net::TcpListener>>>,
    server: ServerConfig,
    proxy: ProxyConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> Result<()> {
    let threads = listeners.len();
    announce(&server, &proxy);
    let _checker = start_checks(&proxy, &stats, &server);
    // Each thread's accept loop logs at debug; each address is announced here, once.
    let (server, proxy) = (Arc::new(server.quiet()), Arc::new(proxy));
    let listeners: Vec<_> = listeners
        .into_iter()
        .map(|l| l.into().with_configs(&server))
        .collect();
    let addrs: Vec<(String, bool)> = listeners
        .first()
        .map(|first| {
            first
                .iter()
                .filter_map(|(l, server)| {
                    Some((l.local_addr().ok()?.to_string(), server.tls.is_some()))
                })
                .collect()
        })
        .unwrap_or_default();
    let (done_tx, done_rx) = flume::bounded::<()>(threads);
    for (i, listeners) in listeners.into_iter().enumerate() {
        let (proxy, stats, shutdown, done_tx) = (
            proxy.clone(),
            stats.clone(),
            shutdown.clone(),
            done_tx.clone(),
        );
        rt::spawn_pinned_thread(format!("proxy-{i}"), move || async move {
            let loops =
                listeners
                    .into_iter()
                    .filter_map(|(listener, server)| match rt::listener_from_std(listener) {
                        Ok(listener) => Some(serve(
                            listener,
                            server,
                            proxy.clone(),
                            stats.clone(),
                            shutdown.clone(),
                        )),
                        Err(e) => {
                            log::error!(error = e.to_string().as_str(); "proxy: listener unusable");
                            None
                        }
                    });
            futures::future::join_all(loops.collect::<Vec<_>>()).await;
            let _ = done_tx.send_async(()).await;
            // Keep running this thread's sessions until they end (or the process exits).
            while stats.live_tasks() > 0 {
                rt::sleep(Duration::from_millis(20)).await;
            }
        })?;
    }
    drop(done_tx);
    for (addr, tls) in &addrs {
        let listening = if *tls {
            "listening (TLS)"
        } else {
            "listening (TCP)"
        };
        log::info!(role = "proxy", addr = addr.as_str(), threads = threads; "{listening}");
    }
    for _ in 0..threads {
        let _ = done_rx.recv_async().await;
    }
    log::info!(role = "proxy", open = stats.active(); "stopped accepting; letting open connections finish");
    Ok(())
}

/// The start-up lines of what is not said per session: upstreams that are not verified;
/// per-client limits that count the balancer.
fn announce(server: &ServerConfig, proxy: &ProxyConfig) {
    if proxy.accept_proxy.is_some() && server.per_ip.is_on() {
        log::warn!(role = "proxy";
            "--max-conns-per-ip/--conn-rate-per-ip count the peer that connects: with --accept-proxy that is the balancer, so all its clients share one limit");
    }
    if proxy.upstreams.tls().is_some_and(|t| t.insecure) {
        let targets: Vec<&str> = proxy.upstreams.targets().collect();
        log::warn!(role = "proxy", upstreams = targets.join(",").as_str();
            "--upstream-insecure: the upstreams' certificates are NOT verified; anyone in the path can read and change the traffic");
    }
}

/// Starts the health checker of every upstream table of this proxy (the `--upstream`
/// one, one per `--sni-route` name), or with checks off clears what an earlier
/// generation's checks left; see [`health::start`].
fn start_checks(
    proxy: &ProxyConfig,
    stats: &Stats,
    server: &ServerConfig,
) -> Option<health::Checker> {
    let metrics = stats.role_metrics::<ProxyMetrics>();
    let tables =
        std::iter::once(&proxy.upstreams).chain(proxy.sni.iter().flat_map(sni::SniRoutes::tables));
    health::start(tables, &metrics, server.retire.clone())
}

async fn serve(
    listener: TcpListener,
    server: Arc<ServerConfig>,
    proxy: Arc<ProxyConfig>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    // Sessions are left to the drain, and those waiting for a descriptor get the ones
    // that free up before new clients do.
    let server = (*server)
        .clone()
        .keep_open(proxy.upstreams.descriptor_waiters());
    // The peer may be a balancer: the accept loop judges whether it may send headers,
    // and the session judges the client its header names against --allow/--deny.
    let access = server.access.clone();
    let server = match proxy.accept_proxy {
        Some(_) => server.judging_proxies(),
        None => server,
    };
    // The service's counters (the same on every listener and thread, and after a reload).
    let metrics = stats.role_metrics::<ProxyMetrics>();
    proxy.upstreams.count_into(&metrics);
    for table in proxy.sni.iter().flat_map(sni::SniRoutes::tables) {
        table.count_into(&metrics);
    }
    listener::serve(
        "proxy",
        listener,
        Arc::new(server),
        stats,
        shutdown,
        move |conn| session(conn, proxy.clone(), access.clone(), metrics.clone()),
    )
    .await;
}

/// How one direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The reading side shut its write half (or closed).
    Fin,
    /// End of input, read from a socket already gone ([`Socket::connection_gone`], looked
    /// at as the end was read): the reading side reset, and the other direction's write
    /// took the reset's error first, so this read found only the end. Only the label
    /// says so; the session goes on as after a FIN.
    FinAfterReset,
    /// Reading failed: the reading side reset.
    Reset,
    /// The writing side's writer is gone: it failed to write (that side reset).
    WriterGone,
}

/// What a pump tells its session while it runs: the side it reads half-closed while the
/// pump could not read (waiting for the other writer's mailbox). At most one per pump.
type FinNotice = &'static str;

/// One direction of a session: reads one socket, feeds the other side's writer. Its
/// reader counts bytes into `stats.bytes_in` as they are read ([`Reader::counted`]), so
/// the summary is right while the session is open. Returns the bytes read (the other
/// writer's [`Delivery`](crate::net::handoff::Delivery) says how many of them were
/// written) and how the direction ended.
async fn pump(
    mut reader: Reader,
    mut writer: Handoff,
    activity: Arc<Activity>,
    fin: (FinNotice, flume::Sender<FinNotice>),
    tap: Option<(&'static str, SocketAddr)>,
) -> (u64, End) {
    let end = loop {
        match reader.next().await {
            Ok(Input::Data(data)) => {
                activity.touch();
                if let Some((direction, peer)) = tap {
                    log_tap(direction, peer, &data);
                }
                // While the other writer's mailbox is full this pump reads nothing, so it
                // would never see its peer leave: the wait watches the socket meanwhile.
                let (label, notes_tx) = (fin.0, &fin.1);
                let on_fin = move || {
                    let _ = notes_tx.try_send(label);
                };
                match reader.watch(writer.send(data), on_fin).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::WriterGone,
                    Err(Hangup::Reset | Hangup::Fin) => break End::Reset,
                }
            }
            Ok(Input::Eof) | Ok(Input::Idle) => break End::Fin,
            Err(_) => break End::Reset,
        }
    };
    // Dropping `writer` here lets the other side's writer flush and half-close.
    (reader.bytes, end)
}

/// What one direction of a session needs besides its two halves.
struct Way {
    activity: Arc<Activity>,
    stats: Arc<Stats>,
    fin: (FinNotice, flume::Sender<FinNotice>),
    tap: Option<(&'static str, SocketAddr)>,
}

/// How one direction ended, and when: the bytes read, the [`End`], and the moment it
/// was seen.
type Ended = (u64, End, Instant);

/// Starts one direction: `prefix` (bytes of ours, written first), then what `from`
/// reads, to `to`. It is a relay when `splice` names a pipe size and a pipe can be had
/// (out of descriptors, it copies) — an adaptive one ([`Relay::adaptive`]) unless
/// `always` — otherwise a pump feeding `to`'s writer. Returns the task, which ends as
/// [`pump`] does (with [`End::FinAfterReset`] for an end of input from a socket already
/// gone) and says when, and the watch on what reached `to`.
fn carry(
    from: ReadHalf,
    to: WriteHalf,
    prefix: Vec<u8>,
    splice: Option<usize>,
    always: bool,
    way: Way,
) -> (rt::JoinHandle<Ended>, Delivery) {
    let task = way.stats.task();
    let source = from.socket().clone();
    // Looked at as soon as the direction ends: later, a socket this side has shut too
    // is closed (TCP_CLOSE) after an orderly exchange of FINs as well as after a reset.
    let seen = move |(bytes, end): (u64, End)| {
        let end = match end {
            End::Fin if source.connection_gone() => End::FinAfterReset,
            end => end,
        };
        (bytes, end, Instant::now())
    };
    let relay = splice.and_then(|capacity| match Relay::new(capacity) {
        Ok(relay) if always => Some(relay),
        Ok(relay) => Some(relay.adaptive()),
        Err(e) => {
            log::debug!("proxy: no pipe for splicing ({e}); copying");
            None
        }
    });
    match relay {
        Some(relay) => {
            let written = DirectWrites::new(&way.stats);
            let delivery = written.delivery();
            let running = rt::spawn_here(async move {
                let _task = task;
                seen(relay_way(relay, from, to, prefix, written, way).await)
            });
            (running, delivery)
        }
        None => {
            // The writer has one producer, this pump, so it is fed through a `Handoff`:
            // a chunk goes straight to the socket while the writer is idle.
            let mut writer = Handoff::spawn(to, &way.stats);
            let delivery = writer.delivery();
            let running = rt::spawn_here(async move {
                let _task = task;
                if !prefix.is_empty() {
                    // A failure shows at the pump's first send.
                    let _ = writer.send(prefix).await;
                }
                let Way {
                    activity,
                    stats,
                    fin,
                    tap,
                } = way;
                let ended = pump(
                    Reader::counted(from, None, stats),
                    writer,
                    activity,
                    fin,
                    tap,
                )
                .await;
                seen(ended)
            });
            (running, delivery)
        }
    }
}

/// One direction spliced: `prefix` written first, then `from`'s socket relayed to `to`'s.
/// It counts and notes what a pump and its writer would (bytes read into
/// `stats.bytes_in` and the activity clock, bytes written into `written`, a FIN the
/// relay sees before it has written everything) and ends as [`pump`] does. A relay that
/// finds `splice` unusable hands what its pipe held to a writer, and a pump copies the
/// rest.
async fn relay_way(
    mut relay: Relay,
    from: ReadHalf,
    to: WriteHalf,
    prefix: Vec<u8>,
    written: DirectWrites,
    way: Way,
) -> (u64, End) {
    let source = from.socket().clone();
    let destination = to.socket().clone();
    let mut to = to;
    if let Err(e) = written.write_all(&mut to, &prefix).await {
        written.failed(&e, &destination);
        return (0, End::WriterGone);
    }
    let Way {
        activity,
        stats,
        fin: (label, notes_tx),
        tap,
    } = way;
    let tally = relay.tally();
    let ended = relay
        .run(&source, &destination, |step| match step {
            Step::Read(n) => {
                activity.touch();
                Stats::add(&stats.bytes_in, n as u64);
            }
            Step::Wrote(n) => written.add(n as u64),
            Step::SourceFin => {
                let _ = notes_tx.try_send(label);
            }
        })
        .await;
    let pending = match ended {
        // The relay has shut `to`'s write half, as a writer whose producer is gone does.
        Ok(splice::End::Eof) => return (tally.read(), End::Fin),
        Ok(splice::End::Unsupported { pending }) => pending,
        Ok(splice::End::NoPipe) => Vec::new(),
        // What the pipe held is dropped; the session shuts both sockets.
        Err(failure) if failure.side == Side::Source => return (tally.read(), End::Reset),
        Err(failure) => {
            written.failed(&failure.error, &destination);
            return (tally.read(), End::WriterGone);
        }
    };
    // `splice` cannot go on: copy from here, what the pipe held first.
    let mut writer = written.into_handoff(to);
    if !pending.is_empty() && writer.send(pending).await.is_err() {
        return (tally.read(), End::WriterGone);
    }
    let fin = (label, notes_tx);
    let (more, end) = pump(
        Reader::counted(from, None, stats),
        writer,
        activity,
        fin,
        tap,
    )
    .await;
    (tally.read() + more, end)
}

/// Reads a PROXY protocol header; returns it and any client data that came with it.
/// Every byte read is counted into `stats.bytes_in` as it is read, header included.
async fn read_proxy_header(
    reader: &mut ReadHalf,
    limit: Duration,
    stats: &Stats,
) -> std::result::Result<(header::Header, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let deadline = Instant::now() + limit;
    loop {
        match header::parse(&buf) {
            Ok(h) => return Ok((h, buf.split_off(h.len))),
            Err(header::ParseError::Invalid(why)) => return Err(why.to_string()),
            Err(header::ParseError::Incomplete) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rt::timeout(left, reader.read(&mut chunk)).await {
            Some(Ok(0)) => return Err("client closed before sending a PROXY header".into()),
            Some(Ok(n)) => {
                Stats::add(&stats.bytes_in, n as u64);
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(format!("no PROXY header within {limit:?}")),
        }
    }
}

/// One client's session, from accept to the log line.
async fn session(
    conn: Conn,
    cfg: Arc<ProxyConfig>,
    access: AccessList,
    metrics: Arc<ProxyMetrics>,
) -> Result<()> {
    let started = Instant::now();
    // At the end of the drain an open session closes itself (and logs its line).
    let Conn {
        stream: client,
        peer,
        stats,
        idle_timeout,
        close_now,
        tls,
    } = conn;
    let local = client.socket().local_addr()?;
    let client_socket = client.socket().clone();
    let (mut client_read, client_write) = client.split();
    let (mut src, mut dst, mut early) = (peer, local, Vec::new());
    if let Some(limit) = cfg.accept_proxy {
        match read_proxy_header(&mut client_read, limit, &stats).await {
            Ok((h, rest)) => {
                if let Some((s, d)) = h.addrs {
                    (src, dst) = (s, d);
                }
                early = rest;
            }
            Err(why) => {
                log::warn!(peer = peer.to_string().as_str(), error = why.as_str(); "proxy: bad PROXY header; closing");
                return Ok(());
            }
        }
        if !access.permits(src.ip()) {
            Stats::add(&stats.refused.denied, 1);
            log::info!(peer = peer.to_string().as_str(), client = src.to_string().as_str(); "proxy: client refused by access list");
            return Ok(());
        }
    }
    // Routing by SNI: the ClientHello picks the upstreams, and is their first bytes.
    let (upstreams, passthrough) = match &cfg.sni {
        None => (&cfg.upstreams, None),
        Some(routes) => {
            let taken = std::mem::take(&mut early);
            let hello = match sni::read_client_hello(
                &mut client_read,
                taken,
                routes.hello_timeout,
                &stats,
            )
            .await
            {
                Ok(hello) => hello,
                Err(why) => {
                    metrics.unconnected[2].inc();
                    log::info!(client = src.to_string().as_str(), error = why.as_str(); "proxy: no ClientHello to route by; closing the client");
                    return Ok(());
                }
            };
            early = hello.bytes;
            let name = hello.sni.unwrap_or_default();
            match routes.pick(Some(name.as_str()).filter(|n| !n.is_empty())) {
                Some(table) => (table, Some(name)),
                None => {
                    metrics.unconnected[3].inc();
                    let why = match name.as_str() {
                        "" => "its ClientHello names no server (no SNI)",
                        _ => "no --sni-route takes its server name",
                    };
                    log::info!(client = src.to_string().as_str(), sni = name.as_str(); "proxy: {why}, and there is no --sni-default; closing the client");
                    return Ok(());
                }
            }
        }
    };
    let up = match upstreams.connect(cfg.connect_timeout).await {
        Ok(up) => up,
        Err(ConnectError::Upstreams(why)) => {
            metrics.unconnected[0].inc();
            log::warn!(client = src.to_string().as_str(), error = why.as_str(); "proxy: no upstream answered; closing the client");
            return Ok(());
        }
        Err(ConnectError::AllDown) => {
            // No connect tried: the checks hold every upstream down. A flood of clients
            // makes one line a second, with how many were closed.
            metrics.unconnected[0].inc();
            if let Some(closed) = upstreams.all_down_tick() {
                log::warn!(client = src.to_string().as_str(), closed = closed;
                    "proxy: every upstream is DOWN by its health checks; closing clients at once");
            }
            return Ok(());
        }
        Err(ConnectError::Local(why)) => {
            metrics.unconnected[1].inc();
            log::warn!(client = src.to_string().as_str(), error = why.as_str(); "proxy: out of descriptors here (local); closing the client");
            return Ok(());
        }
    };

    // How TLS crosses the proxy, for the session line: `terminated` (the client's TLS
    // ends here), `originated` (ours to the upstream), both, or `passthrough` (routed
    // by SNI, relayed untouched); and the server name the client asked for.
    let (tls_mode, sni_name) = match (&tls, &up.tls, passthrough) {
        (_, _, Some(name)) => ("passthrough", name),
        (Some(tls), Some(_), None) => (
            "terminated+originated",
            tls.sni.as_deref().unwrap_or("").to_owned(),
        ),
        (Some(tls), None, None) => ("terminated", tls.sni.as_deref().unwrap_or("").to_owned()),
        (None, Some(up), None) => ("originated", up.server_name.clone()),
        (None, None, None) => ("none", String::new()),
    };
    let up_socket = up.stream.socket().clone();
    let (up_read, up_write) = up.stream.split();
    // Splicing moves bytes between the sockets themselves, so both must be plain.
    let splice = cfg.splice.filter(|_| {
        !cfg.tap && cfg.ftp.is_none() && client_write.raw().is_some() && up_write.raw().is_some()
    });
    // The header is ours, not the client's: it is not part of what the client sent.
    // Client bytes that came with its PROXY header were read, and are forwarded first.
    let mut prefix = match cfg.send_proxy {
        Some(version) => header::encode(version, src, dst),
        None => Vec::new(),
    };
    let (header_len, early_len) = (prefix.len() as u64, early.len() as u64);
    prefix.append(&mut early);
    let activity = Arc::new(Activity::new());
    let tap = |direction| cfg.tap.then_some((direction, src));
    // One notice per pump at most, so two places: `try_send` never fails for room.
    let (notes_tx, notes_rx) = flume::bounded::<FinNotice>(2);
    // What reaches each socket, counted by whatever writes it; watched until that ends.
    let way_up = Way {
        activity: activity.clone(),
        stats: stats.clone(),
        fin: ("client FIN", notes_tx.clone()),
        tap: tap("client->server"),
    };
    let way_down = Way {
        activity: activity.clone(),
        stats: stats.clone(),
        fin: ("server FIN", notes_tx),
        tap: tap("server->client"),
    };
    // With --ftp the control connection is read as lines by pumps of its own, and the
    // data channels it opens close when this session ends.
    let mut ftp = match &cfg.ftp {
        Some(f) => Some(ftp::Control::new(
            &cfg,
            f,
            ftp::Addresses {
                client: peer,
                client_side: local,
                upstream: up.addr,
                upstream_side: up_socket.local_addr()?,
            },
            &activity,
            &stats,
        )),
        None => None,
    };
    let ((up_pump, to_upstream), (down_pump, to_client)) = match &mut ftp {
        Some(control) => (
            control.carry(true, client_read, up_write, prefix, way_up),
            control.carry(false, up_read, client_write, Vec::new(), way_down),
        ),
        None => (
            carry(
                client_read,
                up_write,
                prefix,
                splice,
                cfg.splice_always,
                way_up,
            ),
            carry(
                up_read,
                client_write,
                Vec::new(),
                splice,
                cfg.splice_always,
                way_down,
            ),
        ),
    };

    let sockets = [&client_socket, &up_socket];
    let (mut up_pump, mut down_pump) = (up_pump.fuse(), down_pump.fuse());
    let mut notes = notes_rx.into_stream().fuse();
    let mut close_now = std::pin::pin!(
        async move {
            match close_now {
                Some(c) => c.wait().await,
                None => futures::future::pending().await,
            }
        }
        .fuse()
    );
    // Bytes each pump read, once it has ended.
    let (mut read_up, mut read_down): (Option<u64>, Option<u64>) = (None, None);
    // Each writer ends after its pump (it flushes what is queued) or when a write fails;
    // the line waits for both, so the counts it gives are final.
    let mut upstream_written = std::pin::pin!(to_upstream.ended().fuse());
    let mut client_written = std::pin::pin!(to_client.ended().fuse());
    let (mut upstream_writer_done, mut client_writer_done) = (false, false);
    // What had moved when last looked at: a writer still flushing after its pump has
    // ended is activity too, and so is a peer taking bytes out of a send queue while
    // its writer waits (a slow, steady reader; see [`Movement`]). The idle timer looks
    // each time it fires, and counts a change as activity.
    let mut moved = Movement::now(&to_upstream, &to_client, &sockets);
    // Looks eight times per limit: a change seen at a look counts from that look.
    let mut idle = IdleTimer::looking(8);
    let mut closed_first = ClosedFirst::default();
    // Set when this task shut the session (a timeout, or the end of the drain), which
    // `closed_first` may not show: a side may have half-closed before.
    let mut cut_by: Option<&'static str> = None;
    // A side half-closed while its pump was waiting for mailbox room (it ends later,
    // once the bytes before the FIN have moved): the fin timeout applies from now.
    let mut fin_noticed = false;
    // Once a timeout has shut both sockets, only the pumps' ends are awaited: the limit
    // would stay passed, and a ready timer in a loop never yields to them (on a pinned
    // thread they share this task's thread).
    let mut timed_out = false;
    while read_up.is_none() || read_down.is_none() || !upstream_writer_done || !client_writer_done {
        let half_closed = fin_noticed || read_up.is_some() || read_down.is_some();
        let limit = match (idle_timeout, cfg.fin_timeout.filter(|_| half_closed)) {
            _ if timed_out => None,
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let moved_since = || {
            let now = Movement::now(&to_upstream, &to_client, &sockets);
            std::mem::replace(&mut moved, now) != now
        };
        // A direction that ended with end of input from a socket already gone
        // (`End::FinAfterReset`) met a reset; the session goes on as after a FIN.
        futures::select! {
            (bytes, end, at) = up_pump => {
                // A FIN is news: the fin timeout it starts counts from it, not from the
                // last byte before it (a client quiet for longer would be cut at once,
                // before the server's answer to its FIN).
                activity.touch();
                read_up = Some(bytes);
                closed_first.ended(at, match end { End::Fin => "client FIN", End::FinAfterReset | End::Reset => "client reset", End::WriterGone => "server reset" });
                if !matches!(end, End::Fin | End::FinAfterReset) { shut(&sockets); }
            }
            (bytes, end, at) = down_pump => {
                activity.touch();
                read_down = Some(bytes);
                closed_first.ended(at, match end { End::Fin => "server FIN", End::FinAfterReset | End::Reset => "server reset", End::WriterGone => "client reset" });
                if !matches!(end, End::Fin | End::FinAfterReset) { shut(&sockets); }
            }
            () = upstream_written => upstream_writer_done = true,
            () = client_written => client_writer_done = true,
            note = notes.next() => {
                // `None` (both pumps gone) fuses the stream; the arms above see the ends.
                if let Some(label) = note {
                    activity.touch();
                    fin_noticed = true;
                    closed_first.event(label);
                }
            }
            () = close_now => {
                closed_first.event("shutdown");
                cut_by = Some("shutdown");
                shut(&sockets);
                timed_out = true;
            }
            () = idle.quiet(&activity, limit, moved_since).fuse() => {
                let why = if half_closed { "fin timeout" } else { "idle timeout" };
                closed_first.event(why);
                cut_by = Some(why);
                shut(&sockets);
                timed_out = true;
            }
        }
    }
    // The data channels end with the control session; their totals go on its line.
    let ftp_data = match ftp {
        Some(control) => Some(control.close().await),
        None => None,
    };
    // Delivered: what reached the other side's socket. Dropped: read, never written.
    let bytes_up = to_upstream.written().saturating_sub(header_len);
    let bytes_down = to_client.written();
    let dropped_up = (read_up.unwrap_or(0) + early_len).saturating_sub(bytes_up);
    let dropped_down = read_down.unwrap_or(0).saturating_sub(bytes_down);
    let (client, upstream_addr) = (src.to_string(), up.addr.to_string());
    let (ms, closed_first) = (
        started.elapsed().as_millis() as u64,
        closed_first.label.unwrap_or("unknown"),
    );
    // `none`: the sides closed the session themselves.
    let cut_by = cut_by.unwrap_or("none");
    if let Some(data) = ftp_data {
        log::info!(client = client.as_str(), upstream = up.name.as_str(), upstream_addr = upstream_addr.as_str(),
            bytes_up = bytes_up, bytes_down = bytes_down, dropped_up = dropped_up, dropped_down = dropped_down,
            ms = ms, closed_first = closed_first, cut_by = cut_by, tls = tls_mode, sni = sni_name.as_str(),
            ftp_data = data.channels, ftp_data_bytes_up = data.bytes_up, ftp_data_bytes_down = data.bytes_down;
            "proxy: session closed");
    } else if dropped_up == 0 && dropped_down == 0 {
        log::info!(client = client.as_str(), upstream = up.name.as_str(), upstream_addr = upstream_addr.as_str(),
            bytes_up = bytes_up, bytes_down = bytes_down, ms = ms, closed_first = closed_first, cut_by = cut_by,
            tls = tls_mode, sni = sni_name.as_str(); "proxy: session closed");
    } else {
        let why = match cut_by {
            "none" => format!("read but not yet written when the session ended ({closed_first})"),
            cut => format!(
                "read but not yet written when the session ended ({closed_first}; cut by {cut})"
            ),
        };
        log::info!(client = client.as_str(), upstream = up.name.as_str(), upstream_addr = upstream_addr.as_str(),
            bytes_up = bytes_up, bytes_down = bytes_down, dropped_up = dropped_up, dropped_down = dropped_down,
            dropped_why = why.as_str(), ms = ms, closed_first = closed_first, cut_by = cut_by,
            tls = tls_mode, sni = sni_name.as_str(); "proxy: session closed");
    }
    // Counted by what ended it: this task's cut (a timeout, the drain) if it made one,
    // else the side that closed first. By `closed_first` alone a fin timeout would never
    // show, nor a drain that cut a half-closed session: a FIN always comes before them.
    let end = if cut_by == "none" {
        closed_first
    } else {
        cut_by
    };
    up.guard.ended(end);
    Ok(())
}

/// What ended a session first, as its line's `closed_first` says. What this task sees
/// happen (a FIN noticed while a pump waited, a timeout, the end of the drain) counts in
/// the order it sees it; a direction's end counts by when that direction saw it, since
/// `select!` takes arms that are ready together in random order, and both directions
/// have often ended (one FIN answering the other) by the time this task looks.
#[derive(Default)]
struct ClosedFirst {
    label: Option<&'static str>,
    /// When the direction whose end set `label` saw it; `None` if an event set it.
    end_seen: Option<Instant>,
}

impl ClosedFirst {
    /// Something this task saw happen, unless something came first.
    fn event(&mut self, label: &'static str) {
        self.label.get_or_insert(label);
    }

    /// A direction ended, as it saw at `at`: it came first unless an event did, or the
    /// other direction ended before it.
    fn ended(&mut self, at: Instant, label: &'static str) {
        let first = match (self.label, self.end_seen) {
            (None, _) => true,
            (Some(_), Some(other)) => at < other,
            (Some(_), None) => false,
        };
        if first {
            self.label = Some(label);
            self.end_seen = Some(at);
        }
    }
}

/// What the session task compares between two looks to tell a live session from an idle
/// one: the bytes each writer has written, and the bytes still in each socket's send
/// queue (`TIOCOUTQ`). A writer's count moves only when a whole write completes, and the
/// kernel wakes a writer blocked on a large send buffer only once a third of it has
/// drained, which a slow but steady reader may take longer than the timeout to do; the
/// send queue shrinks with every segment the peer acknowledges, so any change in it is
/// the peer reading (or, growing, a write going in).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Movement {
    written: u64,
    queued: [Option<i32>; 2],
}

impl Movement {
    fn now(to_upstream: &Delivery, to_client: &Delivery, sockets: &[&Socket; 2]) -> Self {
        Movement {
            written: to_upstream.written() + to_client.written(),
            queued: sockets.map(Socket::unsent),
        }
    }
}

fn shut(sockets: &[&Socket]) {
    for s in sockets {
        let _ = s.shut_both();
    }
}

/// Logs a chunk of traffic as text when it is printable, else as hex.
fn log_tap(direction: &str, peer: SocketAddr, data: &[u8]) {
    let shown = &data[..data.len().min(TAP_MAX)];
    let more = data.len() - shown.len();
    let text = match std::str::from_utf8(shown) {
        Ok(t)
            if t.chars()
                .all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t') =>
        {
            format!("{t:?}")
        }
        _ => shown
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    if more > 0 {
        log::info!(direction = direction, peer = peer.to_string().as_str(), bytes = data.len(); "{text} (+{more} bytes)");
    } else {
        log::info!(direction = direction, peer = peer.to_string().as_str(), bytes = data.len(); "{text}");
    }
}
