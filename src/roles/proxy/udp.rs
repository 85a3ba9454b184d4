//! UDP forwarding (`proxy --udp`): each client address is a *flow* with a socket of its
//! own toward the upstream the balance picked, so the upstream's replies find their
//! client, and datagrams keep their boundaries and size both ways.
//!
//! ```text
//!   client ─▶ receive loop (the listening socket) ──send──▶ flow's socket ─▶ upstream
//!   client ◀─ send actor (the listening socket) ◀── flow task (recv) ◀──────── upstream
//! ```
//!
//! The receive loop owns the table of flows (client address → flow); a flow's task reads
//! its upstream socket and hands each reply to the listening socket's send actor
//! (bounded: a flow whose replies back up waits, and stops reading its upstream socket,
//! whose kernel buffer then drops what does not fit, as UDP does anywhere). A flow ends after `idle`
//! with no datagram either way, when its upstream refuses (ICMP port unreachable), or at
//! shutdown; it logs one line with the datagrams and bytes each way. Past `max_flows`, a
//! new client's datagrams are dropped and counted (`refused`, as `max_conns`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::upstreams::{ActiveGuard, ConnectError, Upstreams};
use crate::net::describe::describe;
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::net::udp::{self, DatagramSender};
use crate::rt::{self, UdpSocket};

/// The largest UDP payload over IPv4 (65,535 − 8 − 20). Over IPv6 a payload can be
/// 65,527 bytes; the receive buffers are [`udp::RECV_BUFFER`], so either is taken whole.
pub const MAX_DATAGRAM: usize = 65_507;

/// At most one "no upstream for new UDP clients" line this often.
const UNSTARTED_LOG_EVERY: Duration = Duration::from_secs(1);

/// Room for the "flow ended" messages to the receive loop: a flow sends one in its life.
const ENDED_MAILBOX: usize = 1024;

/// The UDP proxy's settings.
pub struct UdpProxyConfig {
    pub upstreams: Arc<Upstreams>,
    /// A flow ends after this long with no datagram either way.
    pub idle: Duration,
    /// The most flows at once.
    pub max_flows: usize,
}

/// One client's flow: its socket toward the upstream and its counts.
struct Flow {
    /// Tells this flow apart from a later one of the same client in the table.
    id: u64,
    upstream: Arc<UdpSocket>,
    /// Ends the flow's task: fired by the receive loop when a send upstream is refused
    /// (the send took the socket's pending ICMP error, so the task's receive never sees it).
    end: std::sync::Mutex<Option<crate::net::shutdown::Trigger>>,
    /// Milliseconds since the proxy started at the last datagram either way.
    last: AtomicU64,
    up: Counts,
    down: Counts,
}

/// Datagrams and bytes one way.
#[derive(Default)]
struct Counts {
    datagrams: AtomicU64,
    bytes: AtomicU64,
}

impl Counts {
    fn add(&self, bytes: usize) {
        self.datagrams.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }
}

/// [`run`] on every socket of `sockets` (`--listen` repeated), sharing the upstreams,
/// their balancing and the counts.
pub async fn run_many(
    sockets: Vec<UdpSocket>,
    config: UdpProxyConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    run_generation(sockets, config, stats, shutdown.clone(), shutdown).await;
}

/// [`run_many`] for one generation of a service (`serve`): the receive loops stop at
/// `stop_receiving` (a reload retires them, or the shutdown), the flows they started end
/// at `shutdown` or when they idle, their replies still going out meanwhile (a client's
/// next datagram starts a flow in the new generation).
pub async fn run_generation(
    sockets: Vec<UdpSocket>,
    config: UdpProxyConfig,
    stats: Arc<Stats>,
    stop_receiving: Shutdown,
    shutdown: Shutdown,
) {
    let config = Arc::new(config);
    let loops = sockets.into_iter().map(|socket| {
        let ends = (stop_receiving.clone(), shutdown.clone());
        run_shared(socket, config.clone(), stats.clone(), ends)
    });
    futures::future::join_all(loops).await;
}

/// Forwards datagrams arriving on `socket` until `shutdown` fires.
pub async fn run(socket: UdpSocket, config: UdpProxyConfig, stats: Arc<Stats>, shutdown: Shutdown) {
    run_shared(
        socket,
        Arc::new(config),
        stats,
        (shutdown.clone(), shutdown),
    )
    .await;
}

/// [`run`] with settings shared by several sockets, until `ends.0` (receiving) and
/// `ends.1` (the flows).
async fn run_shared(
    socket: UdpSocket,
    config: Arc<UdpProxyConfig>,
    stats: Arc<Stats>,
    ends: (Shutdown, Shutdown),
) {
    let (stop_receiving, shutdown) = ends;
    let socket = Arc::new(socket);
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::info!(role = "proxy", addr = local.as_str(); "listening (UDP)");
    let to_clients = udp::spawn_sender(socket.clone(), &stats);
    let base = Instant::now();
    let (ended_tx, ended_rx) = flume::bounded::<(SocketAddr, u64)>(ENDED_MAILBOX);
    let mut next_id = 0u64;
    let mut flows: HashMap<SocketAddr, Arc<Flow>> = HashMap::new();
    let mut buf = vec![0u8; udp::RECV_BUFFER];
    let mut refused_since_log = 0u64;
    let (mut unstarted, mut last_unstarted_log) = (0u64, None::<Instant>);
    loop {
        let got = futures::select! {
            got = socket.recv_from(&mut buf).fuse() => got,
            client = ended_rx.recv_async() => {
                // Only the flow that ended: the client may have a newer one by now.
                if let Ok((client, id)) = client
                    && flows.get(&client).is_some_and(|f| f.id == id)
                {
                    flows.remove(&client);
                }
                continue;
            }
            _ = stop_receiving.wait().fuse() => break,
        };
        let (n, client) = match got {
            Ok(got) => got,
            Err(e) => {
                // An ICMP error for an earlier send, or a shortage: nothing to do for it.
                log::debug!(error = e.to_string().as_str(); "proxy: UDP receive failed");
                continue;
            }
        };
        stats.datagrams.fetch_add(1, Relaxed);
        Stats::add(&stats.bytes_in, n as u64);
        let flow = match flows.get(&client) {
            Some(flow) => flow.clone(),
            None => {
                if flows.len() >= config.max_flows {
                    stats.refused.max_conns.fetch_add(1, Relaxed);
                    if refused_since_log == 0 {
                        log::warn!(role = "proxy", client = client.to_string().as_str(), max_flows = config.max_flows;
                            "proxy: UDP flows full; new clients' datagrams are dropped");
                    }
                    refused_since_log += 1;
                    continue;
                }
                if refused_since_log > 0 {
                    log::info!(role = "proxy", dropped = refused_since_log; "proxy: UDP flows free again");
                    refused_since_log = 0;
                }
                let started = start_flow(
                    (client, {
                        next_id += 1;
                        next_id
                    }),
                    &config,
                    &stats,
                    &to_clients,
                    &ended_tx,
                    base,
                    &shutdown,
                )
                .await;
                match started {
                    Ok(flow) => {
                        flows.insert(client, flow.clone());
                        flow
                    }
                    Err(why) => {
                        // At most a line a second: a flood of new clients must not
                        // become a flood of log lines.
                        unstarted += 1;
                        if last_unstarted_log.is_none_or(|at| at.elapsed() >= UNSTARTED_LOG_EVERY) {
                            log::warn!(role = "proxy", client = client.to_string().as_str(), error = why.as_str(), dropped = unstarted;
                                "proxy: no upstream for new UDP clients; their datagrams are dropped");
                            last_unstarted_log = Some(Instant::now());
                            unstarted = 0;
                        }
                        continue;
                    }
                }
            }
        };
        flow.last.store(ms_since(base), Relaxed);
        match flow.upstream.send(&buf[..n]).await {
            Ok(_) => flow.up.add(n),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // The upstream refused an earlier datagram, and this send took the error:
                // end the flow (its task backs the upstream off), so that the client's next
                // datagram starts a flow toward an upstream that answers.
                flows.remove(&client);
                if let Some(end) = flow.end.lock().unwrap().take() {
                    end.fire();
                }
            }
            Err(e) => {
                log::debug!(client = client.to_string().as_str(), error = e.to_string().as_str(); "proxy: UDP send upstream failed")
            }
        }
    }
    // Each flow task ends at the shutdown, or when it idles, and logs its line.
    drop(flows);
    if shutdown.is_fired() {
        to_clients.finish().await;
    }
}

fn ms_since(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// Opens a flow for `client` toward the upstream the balance picks, and starts its task.
async fn start_flow(
    (client, id): (SocketAddr, u64),
    config: &Arc<UdpProxyConfig>,
    stats: &Arc<Stats>,
    to_clients: &DatagramSender,
    ended_tx: &flume::Sender<(SocketAddr, u64)>,
    base: Instant,
    shutdown: &Shutdown,
) -> Result<Arc<Flow>, String> {
    let (socket, name, addr, guard) = match config.upstreams.open_udp().await {
        Ok(opened) => opened,
        Err(ConnectError::Upstreams(why) | ConnectError::Local(why)) => return Err(why),
        // Health checks are refused with --udp; a table without them is never all down.
        Err(ConnectError::AllDown) => return Err("every upstream is down".into()),
    };
    let (end, refused) = crate::net::shutdown::channel();
    let flow = Arc::new(Flow {
        id,
        upstream: Arc::new(socket),
        end: std::sync::Mutex::new(Some(end)),
        last: AtomicU64::new(ms_since(base)),
        up: Counts::default(),
        down: Counts::default(),
    });
    let task = FlowTask {
        client,
        flow: flow.clone(),
        name,
        addr,
        guard,
        idle: config.idle,
        base,
        to_clients: to_clients.clone(),
        ended_tx: ended_tx.clone(),
        shutdown: shutdown.clone(),
        refused,
        task: stats.task(),
    };
    rt::spawn_here(task.run());
    Ok(flow)
}

/// What a flow's task holds.
struct FlowTask {
    client: SocketAddr,
    flow: Arc<Flow>,
    name: String,
    addr: SocketAddr,
    guard: ActiveGuard,
    idle: Duration,
    base: Instant,
    to_clients: DatagramSender,
    ended_tx: flume::Sender<(SocketAddr, u64)>,
    shutdown: Shutdown,
    /// Fired when the receive loop's send upstream was refused.
    refused: Shutdown,
    task: crate::net::stats::TaskGuard,
}

impl FlowTask {
    /// Relays the upstream's replies to the client until the flow ends; logs its line.
    async fn run(self) {
        let started = Instant::now();
        let mut buf = vec![0u8; udp::RECV_BUFFER];
        let idle_ms = self.idle.as_millis() as u64;
        let (end, why) = loop {
            let quiet = ms_since(self.base).saturating_sub(self.flow.last.load(Relaxed));
            if quiet >= idle_ms {
                break ("idle_timeout", "idle".to_owned());
            }
            let wait = Duration::from_millis(idle_ms - quiet);
            let got = futures::select! {
                got = rt::timeout(wait, self.flow.upstream.recv(&mut buf)).fuse() => got,
                _ = self.shutdown.wait().fuse() => break ("shutdown", "server shutting down".to_owned()),
                _ = self.refused.wait().fuse() => {
                    let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                    break ("server_reset", describe(&e));
                }
            };
            match got {
                None => continue, // look at the last datagram either way again
                Some(Ok(n)) => {
                    self.flow.last.store(ms_since(self.base), Relaxed);
                    self.flow.down.add(n);
                    self.to_clients.send(self.client, buf[..n].to_vec()).await;
                }
                Some(Err(e)) => break ("server_reset", describe(&e)),
            }
        };
        if end == "server_reset" {
            // ICMP port unreachable: nothing listens there. Back it off as a failed
            // connect would be, so the balance sends new flows elsewhere.
            self.guard.failed(&why);
        }
        let _ = self.ended_tx.send_async((self.client, self.flow.id)).await;
        let (up, down) = (&self.flow.up, &self.flow.down);
        log::info!(
            role = "proxy",
            client = self.client.to_string().as_str(),
            upstream = self.name.as_str(),
            upstream_addr = self.addr.to_string().as_str(),
            datagrams_up = up.datagrams.load(Relaxed),
            bytes_up = up.bytes.load(Relaxed),
            datagrams_down = down.datagrams.load(Relaxed),
            bytes_down = down.bytes.load(Relaxed),
            ms = started.elapsed().as_millis() as u64,
            ended = why.as_str();
            "proxy: UDP flow ended"
        );
        self.guard.ended(end);
        drop(self.task);
    }
}
