//! Multi-client chat over TCP and UDP in the same rooms, through one broker actor.
//!
//! ```text
//!   TCP client ─▶ reader (telnet filter, line framer) ─broker_tx─▶ Broker ─writer_tx─▶ writer ─▶ TCP client
//!   UDP peer ──▶ receive loop (line framer) ───────────broker_tx─▶ Broker ─sender_tx─▶ send actor ─▶ UDP peer
//! ```
//!
//! The protocol is in [`protocol`], the registry and fan-out in [`broker`]. Each TCP
//! client's reader only frames input and forwards it, and the UDP receive loop cuts each
//! datagram into lines the same way ([`crate::net::lines`]); everything a client sees
//! comes from the broker through the client's own writer.
//!
//! Try it: `switchboard chat`, then `telnet 127.0.0.1 7000` in two terminals, or
//! `nc -u 127.0.0.1 7000` for a UDP user in the same room.

pub mod broker;
pub mod cluster;
pub mod cookie;
pub mod metrics;
pub mod protocol;
pub mod unicode_table;
pub mod web;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use broker::{
    BrokerHandle, BrokerMsg, ChatConfig, LeaveReason, LocalOnly, Outbox, ReceiveGate, RoomBus,
    UDP_QUEUED_BYTES, next_client_id,
};
use cluster::ClusterBus;
use protocol::TelnetFilter;

use crate::Result;
use crate::net::connection::{Connection, Event, Reason, Setup};
use crate::net::lines::{LineFramer, Overlong};
use crate::net::listener::{self, Conn, Listeners, ServerConfig};
use crate::net::shutdown::{self, Shutdown};
use crate::net::stats::Stats;
use crate::net::udp::{self, DatagramSender};
use crate::rt::{self, TcpListener, UdpSocket};

/// Default address for TCP and UDP.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7000";

/// What a client over `--max-conns` is told before it is closed.
pub const FULL_NOTICE: &[u8] = b"! server full\n";

/// Silence after which the kernel starts probing a TCP chat client (then 3 probes 10 s
/// apart): a vanished client is removed within about 90 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// How often the broker is reminded to expire silent UDP clients (at most; a short
/// `--udp-idle` ticks faster).
const TICK_MAX: Duration = Duration::from_secs(1);

/// Serves chat on the sockets given until `shutdown` fires. Every client is told
/// `* server shutting down` before its socket closes.
pub async fn run(
    tcp: impl Into<Listeners>,
    udp: Option<UdpSocket>,
    server: ServerConfig,
    chat: ChatConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    run_with_web(tcp, udp, None, server, chat, stats, shutdown).await;
}

/// As [`run`], with a web listener (`--web`: the page and WebSocket users; HTTPS and
/// WSS when `server` has TLS) beside the TCP and UDP ones.
pub async fn run_with_web(
    tcp: impl Into<Listeners>,
    udp: Option<UdpSocket>,
    web: Option<TcpListener>,
    server: ServerConfig,
    chat: ChatConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let generation = ChatState::next_generation(Arc::default());
    run_generation(tcp, udp, web, server, chat, stats, shutdown, generation).await;
}

/// What a chat service keeps across a reload (`serve`): its broker, and with it every
/// user, room and nick, and the UDP send actor.
#[derive(Default)]
pub struct ChatState {
    running: Mutex<Option<Running>>,
    /// Generations numbered in the order they were made (see
    /// [`ChatState::next_generation`]).
    generations: std::sync::atomic::AtomicU64,
}

impl ChatState {
    /// A new generation of the chat `state` keeps, numbered when it is made (in the
    /// order of the reloads), not when its task first runs: the broker takes the limits
    /// of the newest generation whichever order their tasks run in.
    pub fn next_generation(state: Arc<ChatState>) -> ChatGeneration {
        let number = state
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        ChatGeneration { state, number }
    }
}

/// One generation of a chat service: the state it shares with the others, and its number.
pub struct ChatGeneration {
    state: Arc<ChatState>,
    number: u64,
}

/// The broker of a running chat and its UDP send actor.
struct Running {
    broker: BrokerHandle,
    udp_sender: Option<DatagramSender>,
    /// The `--cluster` options it started with (`Debug`: the password shown as `***`),
    /// to warn when a reload changes them.
    cluster: String,
}

/// One generation of a chat service: accept and receive loops on the sockets given, on
/// the broker its [`ChatState`] holds (started here, and kept there, by the first
/// generation to run). Later generations (a reload with new limits) hand the broker
/// their [`ChatConfig`], which it takes if no newer one came first, and the one before
/// stops accepting when its `server.retire` fires, leaving its users where they are. At
/// `shutdown` everyone is told `* server shutting down` first.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one of the chat's sockets or settings"
)]
pub async fn run_generation(
    tcp: impl Into<Listeners>,
    udp: Option<UdpSocket>,
    web: Option<TcpListener>,
    server: ServerConfig,
    chat: ChatConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    generation: ChatGeneration,
) {
    let ChatGeneration {
        state,
        number: generation,
    } = generation;
    let retire = server.retire.clone();
    let server = Arc::new(server.or_full_notice(FULL_NOTICE));
    let tcp = tcp.into().with_configs(&server);
    let udp = udp.map(Arc::new);
    let broker = {
        let mut running = state.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some(running) => {
                if format!("{:?}", chat.cluster) != running.cluster {
                    log::warn!(
                        "chat: --cluster options changed by a reload take effect at the next start"
                    );
                }
                let broker = running.broker.clone();
                let config = Box::new(chat.clone());
                let reconfigure = broker.clone();
                rt::spawn(async move {
                    let msg = BrokerMsg::Reconfigure { config, generation };
                    reconfigure.send(msg).await;
                });
                broker
            }
            None => {
                let udp_sender = udp.as_ref().map(|s| udp::spawn_sender(s.clone(), &stats));
                let metrics = stats.role_metrics::<metrics::ChatMetrics>();
                let cluster = chat.cluster.clone();
                let bus_metrics = metrics.clone();
                let broker = BrokerHandle::spawn(
                    chat.clone(),
                    generation,
                    udp_sender.clone(),
                    move |broker_tx| -> Box<dyn RoomBus> {
                        match cluster {
                            Some(cluster) => {
                                Box::new(ClusterBus::spawn(cluster, broker_tx, bus_metrics))
                            }
                            None => Box::new(LocalOnly),
                        }
                    },
                    metrics,
                );
                let tick = (chat.udp_idle / 4).clamp(Duration::from_millis(10), TICK_MAX);
                rt::spawn(tick_broker(broker.clone(), tick));
                *running = Some(Running {
                    broker: broker.clone(),
                    udp_sender,
                    cluster: format!("{:?}", chat.cluster),
                });
                broker
            }
        }
    };

    // The accept and receive loops stop only after the broker has said goodbye.
    let (loops_trigger, loops_shutdown) = shutdown::channel();
    let max_line = chat.max_line;
    // Every TCP listener (plain, and TLS beside it) feeds the one broker: TLS and telnet
    // users share the rooms.
    let sendq = chat.sendq;
    let tcp_loops = tcp.into_iter().map(|(listener, server)| {
        let (broker, stats, loops_shutdown) =
            (broker.clone(), stats.clone(), loops_shutdown.clone());
        listener::serve(
            "chat",
            listener,
            server,
            stats,
            loops_shutdown,
            move |conn| serve_client(conn, broker.clone(), sendq, max_line),
        )
    });
    // The web listener: the page and WebSocket users, with the server's TLS if it has any.
    let web_loop = web.map(|listener| {
        let web = Arc::new(web::WebConfig {
            origins: chat.web_origins.clone(),
            header_timeout: chat.web_header_timeout,
            max_line: chat.max_line,
            sendq: chat.sendq,
        });
        let (broker, stats, loops_shutdown) =
            (broker.clone(), stats.clone(), loops_shutdown.clone());
        listener::serve(
            "chat-web",
            listener,
            server.clone(),
            stats,
            loops_shutdown,
            move |conn| web::serve(conn, broker.clone(), web.clone()),
        )
    });
    let tcp_loop = futures::future::join(
        futures::future::join_all(tcp_loops.collect::<Vec<_>>()),
        async move {
            if let Some(web_loop) = web_loop {
                web_loop.await;
            }
        },
    );
    let udp_loop = {
        let broker = broker.clone();
        let stop = match &retire {
            Some(retire) => Shutdown::either(&loops_shutdown, retire),
            None => loops_shutdown,
        };
        async move {
            if let Some(socket) = udp {
                let gate = ReceiveGate::new(UDP_QUEUED_BYTES);
                let mut dropped = 0u64;
                udp::receive_loop(socket, stats, stop, |peer, data| {
                    let broker = broker.clone();
                    // Cut into lines here, as a TCP reader cuts its stream: the broker
                    // only reads them.
                    let data = gate.admit(data, max_line);
                    dropped += u64::from(data.is_none());
                    async move {
                        if let Some(data) = data {
                            let data = Box::new(data);
                            broker.send(BrokerMsg::Datagram { peer, data }).await;
                        }
                    }
                })
                .await;
                if dropped > 0 {
                    log::warn!(datagrams = dropped; "chat: UDP datagrams dropped (too many bytes waiting for the broker)");
                }
            }
        }
    };
    let stop = async {
        shutdown.wait().await;
        broker.shutdown().await;
        loops_trigger.fire();
    };
    // A retired generation whose last user has left ends here; any other ends after the
    // shutdown's goodbyes.
    let loops = futures::future::join(tcp_loop, udp_loop).fuse();
    let stop = stop.fuse();
    futures::pin_mut!(loops, stop);
    futures::select! {
        _ = loops => return,
        _ = stop => { loops.await; }
    }
    let finish = state
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .and_then(|running| running.udp_sender);
    if let Some(sender) = finish {
        // The broker has stopped and let go of its handle: the count is final.
        let dropped = sender.dropped();
        sender.finish().await;
        if dropped > 0 {
            log::warn!(lines = dropped; "chat: UDP lines dropped (the UDP send queue was full)");
        }
    }
}

/// Reminds the broker every `tick` to expire silent UDP clients, until it stops.
async fn tick_broker(broker: BrokerHandle, tick: Duration) {
    loop {
        rt::sleep(tick).await;
        if !broker.send(BrokerMsg::Tick).await {
            break; // the broker has stopped
        }
    }
}

/// One TCP client on the connection's plumbing: the writer is its own actor, fed by the
/// broker; this task is the reader.
///
/// Every idle client holds this future for as long as it stays, so it is kept small: an
/// `async` block that uses `conn` in place (an `async fn` would hold each argument twice,
/// as the argument and as the local it is moved into), and the two limits it needs
/// rather than the whole [`ChatConfig`].
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future"
)]
fn serve_client(
    conn: Conn,
    broker: BrokerHandle,
    sendq: usize,
    max_line: usize,
) -> impl Future<Output = Result<()>> + Send + 'static {
    async move {
        // A client that vanished without a reset (half-open) must not stay a ghost nick.
        let _ = conn.stream.socket().set_keepalive(KEEPALIVE_IDLE);
        // The broker holds the writer's mailbox and ends the writer when the client leaves.
        let setup = Setup::new(sendq).handed_off();
        let (mut conn, writer_tx) = Connection::start(conn, setup);
        let id = next_client_id();
        log::info!(peer = conn.peer().to_string().as_str(), id = id; "chat: TCP client joined");
        let outbox = Outbox::Tcp {
            writer_tx,
            queued: Default::default(),
            socket: conn.socket().clone(),
        };
        if !broker.send(BrokerMsg::Join { id, outbox }).await {
            conn.close(Reason::Shutdown).await;
            return Ok(());
        }
        let mut telnet = TelnetFilter::default();
        let mut framer = LineFramer::new(max_line, Overlong::Drop);
        let mut clean = Vec::new();
        let reason = 'read: loop {
            match conn.next().await {
                Event::Data(data) => {
                    clean.clear();
                    telnet.filter(&data, &mut clean);
                    let mut rest = clean.as_slice();
                    while let Some(frame) = framer.next(&mut rest) {
                        if !broker.send(BrokerMsg::said(id, frame)).await {
                            break 'read Reason::Shutdown;
                        }
                    }
                }
                Event::End(Reason::Client) => {
                    while let Some(frame) = framer.finish() {
                        broker.send(BrokerMsg::said(id, frame)).await;
                    }
                    break Reason::Client;
                }
                Event::End(why) => break why,
            }
        };
        let leave = match reason {
            Reason::Client => LeaveReason::Closed,
            Reason::Idle => LeaveReason::Idle,
            Reason::Shutdown => LeaveReason::ShuttingDown,
            _ => LeaveReason::Reset,
        };
        broker.send(BrokerMsg::Leave { id, reason: leave }).await;
        conn.close(reason).await;
        Ok(())
    }
}
