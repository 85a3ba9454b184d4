//! The chat broker: one actor that owns the registry of everyone connected (TCP and UDP
//! alike), the nick index and the rooms, and fans each line out to its recipients.
//!
//! ```text
//!   TCP readers ──Join/Line/TooLong/Leave──┐
//!   UDP receive loop ──Datagram (lines)────┼──▶ broker_rx ──▶ Broker ──try_send──▶ writer mailboxes (TCP)
//!   ticker ──Tick──────────────────────────┤                    │    └─try_send──▶ UDP send actor
//!   chat::run ──Shutdown { done }──────────┘                    └──▶ RoomBus (the cluster seam)
//! ```
//!
//! The broker never waits on a client: deliveries use `try_send`, and a TCP client whose
//! mailbox (`--sendq` lines) is full is too slow to keep up; it is disconnected and
//! announced, as IRC servers do. Every line is formatted once into an `Arc<[u8]>` that all
//! recipients share. The registry is plain maps owned by this task; nobody else sees it.
//!
//! Departures are settled once per message, in a loop and never by recursion: a client
//! whose queue overflowed is only marked during the turn; at its end the marked are
//! removed, and each room hears of its departures — by name up to
//! [`NAMED_DEPARTURES`], beyond that as one line per reason (`* 1500 users left (send
//! queue exceeded)`). Members with no room left in their queues for those notices leave
//! in the same count, so a notice never overflows anyone and a mass eviction never turns
//! into a flood of notices that takes healthy clients with it.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::channel::oneshot;

use super::cluster::{BusEvent, BusRequest, Query};
use super::cookie::Cookies;
use super::metrics::ChatMetrics;
use super::protocol::{self, Command, HELP, HELP_SHORT};
use crate::net::lines::{self, Datagram, Frame, Overlong};
use crate::net::socket::Socket;
use crate::net::udp::{self, DatagramSender};
use crate::net::writer::Outgoing;
use crate::rt;

/// Identifies one client for the broker's life.
pub type ClientId = u64;

/// One formatted line, shared by every recipient.
pub type Line = Arc<[u8]>;

/// Messages queued for the broker. Readers wait when it is full: that is backpressure on
/// whoever is sending fastest, while fan-out itself never waits.
pub const BROKER_MAILBOX: usize = 4096;

/// The room everyone starts in.
pub const LOBBY: &str = "lobby";

/// Places in the UDP send queue (`udp::SEND_MAILBOX` jobs: one line for one user or for
/// a whole room) only welcomes may take. Room traffic to UDP users is dropped a line at a
/// time when the queue is full, as UDP allows, but a welcome must not be: a user in the room who was never told its nick is lost. The broker is the
/// queue's only producer, so what it sees free stays free until it sends. Joins are
/// limited (`--udp-join-rate`, 50 a second by default) and the send actor empties the
/// queue in milliseconds, so this many welcomes at once is far more than happens; a join
/// that finds even these taken is not made (the user's next `/hello` tries again).
pub const WELCOME_RESERVE: usize = 64;

/// How many times the bytes of a datagram from an address that has not joined the server
/// may answer without drawing on the global budget for such replies: QUIC's limit
/// (RFC 9000 §8.1). The challenge is 41 bytes, so a datagram of 14 bytes or more always
/// gets it.
pub const AMPLIFICATION: usize = 3;

/// `/hello`, the verb an unjoined address's first line must start with.
const HELLO: &[u8] = b"/hello";

/// The longest first line from an unjoined address that is parsed as a `/hello` (the
/// command, a 16-digit token and some spaces): longer ones get the challenge unread.
const MAX_HELLO_LINE: usize = 64;

/// Departures from one room in one broker turn that are announced by name; more are
/// counted in one line per reason. Kept small so that no burst of departures can fill
/// the queue of a client that is keeping up.
pub const NAMED_DEPARTURES: usize = 3;

/// Lines the broker publishes to rooms (counted at the end of each turn) before it lets
/// its thread run other tasks once. The runtime gives a task no budget, and a broker
/// whose mailbox never empties would otherwise run turn after turn while the writers it
/// woke wait for a thread: every line published meanwhile waits in each member's
/// mailbox, and a mailbox keeps the capacity it once grew to for the client's whole life.
/// Joins come in bursts, each announced to the whole room; yielding every few lines
/// lets the writers drain in between, so no member's queue grows much beyond this
/// (nor its memory, once it is idle), while each write still carries a few lines.
pub const YIELD_AFTER: usize = 16;

/// Chat settings (the command line's `--max-line`, `--rate`, `--burst`, `--sendq`,
/// `--udp-idle`, `--max-udp-users`, `--udp-join-rate`).
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Longest line accepted, in bytes; longer ones are dropped with `! line too long`.
    pub max_line: usize,
    /// Lines per second a client may send on average; 0 turns flood control off.
    pub rate: f64,
    /// Lines a client may send at once before the rate applies.
    pub burst: u32,
    /// Lines queued for one TCP client before it is disconnected as too slow.
    pub sendq: usize,
    /// Bytes queued for one TCP client before it is disconnected as too slow: lines can
    /// be long (a `/who` of a big room), so a bound in lines alone is no bound on memory.
    pub sendq_bytes: usize,
    /// Silence after which a UDP client is dropped.
    pub udp_idle: Duration,
    /// The most UDP users at once (TCP users are bounded by `--max-conns`); UDP sources are
    /// cheap to invent, so a flood of them must not grow the registry without bound.
    pub max_udp_users: usize,
    /// The most UDP users from one source (an IPv4 address, an IPv6 /64): one host with
    /// many ports must not take every place `max_udp_users` allows.
    pub max_udp_users_per_ip: usize,
    /// UDP joins a second, for the whole server (the burst is one second's worth): a join
    /// costs a notice to every room member, so a flood of joins must not become
    /// O(users²) work. 0 turns the limit off (the command line does not allow that).
    pub udp_join_rate: f64,
    /// UDP joins a second from one source (an IPv4 address, an IPv6 /64; burst: one
    /// second's worth), below `udp_join_rate`: one host churning joins from many ports
    /// must not take every join the server allows. 0 turns it off.
    pub udp_joins_per_ip: f64,
    /// Datagrams a second to UDP addresses that have not joined — challenges and refusals
    /// — for the whole server (burst: one second's worth). This bounds what anyone can
    /// make the server send toward a spoofed address, whoever's address it is. 0 turns
    /// the limit off (tests only).
    pub udp_challenge_rate: f64,
    /// `--cluster` and its options: other chat processes sharing the rooms and nicks
    /// through Redis. Taken when the broker starts; a reload does not change it.
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// `--web-origin`: origins besides the page's own allowed to open the WebSocket.
    pub web_origins: Vec<String>,
    /// `--header-timeout`: how long a web request head (a WebSocket handshake) may take.
    pub web_header_timeout: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_line: 4096,
            rate: 20.0,
            burst: 40,
            sendq: 1024,
            sendq_bytes: 1 << 20,
            udp_idle: Duration::from_secs(300),
            max_udp_users: 10_000,
            max_udp_users_per_ip: 256,
            udp_join_rate: 50.0,
            udp_joins_per_ip: 5.0,
            udp_challenge_rate: 100.0,
            cluster: None,
            web_origins: Vec::new(),
            web_header_timeout: Duration::from_secs(10),
        }
    }
}

/// A line in a TCP client's writer mailbox. It holds its length in the client's count of
/// queued bytes until the writer lets go of it (once it is copied into a write), so the
/// broker can bound the bytes queued per client as well as the lines (`--sendq-bytes`),
/// without the shared writer knowing about it.
pub struct Queued {
    line: Line,
    queued: Arc<AtomicUsize>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.line.len(), Ordering::Relaxed);
    }
}

impl Outgoing for Queued {
    fn bytes(&self) -> &[u8] {
        &self.line
    }
}

/// Where a client's lines go.
pub enum Outbox {
    /// A TCP client's writer mailbox, its count of bytes queued there, and its socket
    /// (only to cut it off: at `/quit`, or when it cannot keep up).
    Tcp {
        writer_tx: flume::Sender<Queued>,
        queued: Arc<AtomicUsize>,
        socket: Socket,
    },
    /// A UDP client, reached through the endpoint's send actor.
    Udp { peer: SocketAddr },
}

/// The broker's mailbox protocol.
pub enum BrokerMsg {
    /// A TCP client connected.
    Join { id: ClientId, outbox: Outbox },
    /// A TCP client sent a line (without its `\n`).
    Line { id: ClientId, line: Vec<u8> },
    /// A TCP client sent a line over the limit (already discarded).
    TooLong { id: ClientId },
    /// A TCP client's reader ended.
    Leave { id: ClientId, reason: LeaveReason },
    /// A UDP datagram, already cut into its lines (one or more) by the receive loop.
    /// Boxed: it is the largest message by far, and every TCP reader's future holds room
    /// for one message while it waits to send.
    Datagram {
        peer: SocketAddr,
        data: Box<Received>,
    },
    /// Time passes: expire silent UDP clients.
    Tick,
    /// New limits (a reload under `serve`; see [`ChatConfig`] for which hold for whom);
    /// the server-wide join limits start afresh. `generation` orders reloads: limits
    /// older than the ones in force are ignored, however late they arrive.
    Reconfigure {
        config: Box<ChatConfig>,
        generation: u64,
    },
    /// Tell everyone, let go of every writer, and stop.
    Shutdown { done: oneshot::Sender<()> },
    /// What the cluster bus has to tell (boxed: rare, and large).
    Bus(Box<BusEvent>),
}

impl BrokerMsg {
    /// What a TCP client's reader sends for a frame of its input: the line without its
    /// `\n` (a `\r` before it goes with the sanitising), or that it was too long.
    pub fn said(id: ClientId, frame: Frame<'_>) -> BrokerMsg {
        match frame {
            Frame::Line(line) | Frame::Piece(line) => BrokerMsg::Line {
                id,
                line: without_newline(line).to_vec(),
            },
            Frame::TooLong => BrokerMsg::TooLong { id },
        }
    }
}

fn without_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The bytes of UDP datagrams waiting in the broker's mailbox may add up to this much;
/// beyond it the receive loop drops datagrams (counted). The mailbox holds up to
/// [`BROKER_MAILBOX`] messages, and a datagram can be 64 KiB: 256 MiB if nothing else
/// bounded it.
pub const UDP_QUEUED_BYTES: usize = 16 << 20;

/// The gate in front of the broker's mailbox for UDP datagrams: it lets a datagram
/// through while the bytes of those still waiting stay within a bound.
#[derive(Clone)]
pub struct ReceiveGate {
    queued: Arc<AtomicUsize>,
    max: usize,
}

/// A received datagram on its way to the broker, cut into lines; its bytes count against
/// its [`ReceiveGate`] until the broker has handled it (dropped it).
pub struct Received {
    /// The datagram and its lines.
    pub datagram: Datagram,
    /// What it counts at the gate: its bytes, and its cuts beyond the first, so that a
    /// datagram of newlines does not hold many times the bytes the gate allows.
    weight: usize,
    queued: Arc<AtomicUsize>,
}

impl ReceiveGate {
    /// A gate letting through at most `max` bytes at once.
    pub fn new(max: usize) -> Self {
        ReceiveGate {
            queued: Default::default(),
            max,
        }
    }

    /// `bytes` cut into lines of at most `max_line` bytes (longer ones are dropped and
    /// reported, as from a TCP reader), counted, if they fit; `None` (drop it) if not. One
    /// datagram alone always fits.
    pub fn admit(&self, bytes: Vec<u8>, max_line: usize) -> Option<Received> {
        let datagram = Datagram::new(bytes, max_line, Overlong::Drop);
        let cuts = (datagram.frames() - 1) * lines::CUT_SIZE;
        let weight = datagram.len() + cuts;
        let before = self.queued.load(Ordering::Relaxed);
        if before > 0 && before + weight > self.max {
            return None;
        }
        self.queued.fetch_add(weight, Ordering::Relaxed);
        Some(Received {
            datagram,
            weight,
            queued: self.queued.clone(),
        })
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.weight, Ordering::Relaxed);
    }
}

/// Where published room lines also go, and what only a cluster knows: the seam between
/// the broker and other chat processes ([`super::cluster::ClusterBus`] over Redis, or
/// [`LocalOnly`]). The broker calls it without waiting; answers come back later as
/// [`BrokerMsg::Bus`]. Readers, writers and the parser never see it.
pub trait RoomBus: Send + 'static {
    /// `line` was published to `room` by this process. `false`: it was dropped (the
    /// queue to other processes is full), and they will not see it.
    fn published(&mut self, room: &str, line: &Line) -> bool;
    /// Whether the queue to other processes was empty before the last line published
    /// (a sayer told its lines are not getting through is told again only after that).
    fn caught_up(&self) -> bool {
        true
    }
    /// Whether other processes can be reached now: if not, the broker answers
    /// everything from its own users, as a single process.
    fn linked(&self) -> bool {
        false
    }
    /// Queues a request; `false` if there was no room for it.
    fn request(&mut self, _request: BusRequest) -> bool {
        true
    }
    /// A guest number no other process will hand out, if one is at hand.
    fn guest_number(&mut self) -> Option<u64> {
        None
    }
    /// Whether a [`BusRequest::Snapshot`] is wanted now (the broker builds it only then).
    fn snapshot_due(&mut self, _now: Instant) -> bool {
        false
    }
    /// The broker is stopping: what the bus must do first (say goodbye to the others).
    fn close(&mut self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Why a client left: what its room is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client closed its connection.
    Closed,
    /// The connection failed (a reset).
    Reset,
    /// `--idle-timeout` passed without input.
    Idle,
    /// The server is stopping (a reader saw the broker gone).
    ShuttingDown,
    /// Its queue (`--sendq`) overflowed: it cannot keep up.
    SendQueue,
    /// A UDP user silent for `--udp-idle`.
    UdpTimeout,
    /// `/quit [REASON]`.
    Quit(Option<String>),
    /// A user of another process whose process stopped renewing its lease (cluster).
    NodeLost,
}

impl LeaveReason {
    /// The words in `* NICK left (...)`.
    pub fn text(&self) -> &str {
        match self {
            LeaveReason::Closed => "connection closed",
            LeaveReason::Reset => "connection reset",
            LeaveReason::Idle => "idle timeout",
            LeaveReason::ShuttingDown => "server shutting down",
            LeaveReason::SendQueue => "send queue exceeded",
            LeaveReason::UdpTimeout => "timeout",
            LeaveReason::Quit(reason) => reason.as_deref().unwrap_or("quit"),
            LeaveReason::NodeLost => "node lost",
        }
    }

    /// The words in `* N users left (...)`: a quit's own reason is not repeated there.
    fn kind(&self) -> &str {
        match self {
            LeaveReason::Quit(_) => "quit",
            other => other.text(),
        }
    }
}

/// The single-process bus: nothing beyond this process.
pub struct LocalOnly;

impl RoomBus for LocalOnly {
    fn published(&mut self, _room: &str, _line: &Line) -> bool {
        true
    }
}

/// The handle others hold: cheap to clone, the only way to reach the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    broker_tx: flume::Sender<BrokerMsg>,
}

impl BrokerHandle {
    /// Spawns a broker and returns its handle. `generation` numbers its first limits
    /// (see [`BrokerMsg::Reconfigure`]); `udp` is the UDP endpoint's send actor, if chat
    /// serves UDP; `metrics` what it counts into (the service's, which outlive it).
    pub fn spawn(
        config: ChatConfig,
        generation: u64,
        udp: Option<DatagramSender>,
        bus: impl FnOnce(flume::Sender<BrokerMsg>) -> Box<dyn RoomBus>,
        metrics: Arc<ChatMetrics>,
    ) -> Self {
        let (broker_tx, broker_rx) = flume::bounded(BROKER_MAILBOX);
        let bus = bus(broker_tx.clone());
        let joins = TokenBucket::new(per_second_burst(config.udp_join_rate));
        let challenges = TokenBucket::new(per_second_burst(config.udp_challenge_rate));
        let source_joins = SourceJoins::new(config.udp_joins_per_ip);
        let broker = Broker {
            config,
            generation,
            clients: HashMap::new(),
            nicks: HashMap::new(),
            rooms: HashMap::new(),
            udp_peers: HashMap::new(),
            udp_sources: HashMap::new(),
            udp,
            bus,
            next_guest: 1,
            overflowed: Vec::new(),
            departed: Vec::new(),
            cookies: Cookies::new(),
            joins,
            challenges,
            source_joins,
            unyielded: 0,
            metrics,
            counted: [0; 3],
            delivered: Cell::new(0),
            link_down_told: false,
        };
        rt::spawn(broker.run(broker_rx));
        BrokerHandle { broker_tx }
    }

    /// Sends a message, waiting for room; `false` if the broker has stopped.
    ///
    /// Not an `async fn`: that would hold `msg` twice while it waits (the argument, and
    /// the channel's own future it is moved into), in every reader's future.
    pub fn send(&self, msg: BrokerMsg) -> impl Future<Output = bool> + Send + '_ {
        self.broker_tx.send_async(msg).map(|sent| sent.is_ok())
    }

    /// Asks the broker to say goodbye to everyone and stop; returns when it has.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(BrokerMsg::Shutdown { done }).await {
            let _ = wait.await;
        }
    }
}

/// A fresh client id (unique in this process).
pub fn next_client_id() -> ClientId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Client {
    nick: String,
    room: String,
    outbox: Outbox,
    bucket: TokenBucket,
    /// Whether this client was told to slow down since its last accepted line.
    warned: bool,
    /// UDP: last datagram, for `--udp-idle`.
    last_seen: Instant,
    /// Its queue overflowed this turn: it is leaving, and gets nothing more.
    overflowed: bool,
    /// UDP: bytes the answers to its own commands may still take (TCP: unused).
    replies: ReplyBudget,
    /// Told since its last line that the cluster is not hearing it (once per burst).
    cluster_warned: bool,
}

/// A client that left this turn, not yet announced.
struct Departure {
    nick: String,
    room: String,
    reason: LeaveReason,
}

struct Broker {
    config: ChatConfig,
    /// The reload `config` came from (0: the start).
    generation: u64,
    clients: HashMap<ClientId, Client>,
    /// Lower-cased nick → client: uniqueness ignoring case, and `/msg` lookup.
    nicks: HashMap<String, ClientId>,
    /// Room → members, in joining order.
    rooms: HashMap<String, Vec<ClientId>>,
    udp_peers: HashMap<SocketAddr, ClientId>,
    /// UDP users per source ([`source_of`]), for `max_udp_users_per_ip`: only joined
    /// users are counted, so it holds at most `max_udp_users` entries.
    udp_sources: HashMap<IpAddr, usize>,
    udp: Option<DatagramSender>,
    bus: Box<dyn RoomBus>,
    next_guest: u64,
    /// Clients whose queue overflowed this turn, to remove when it ends.
    overflowed: Vec<ClientId>,
    /// Clients removed this turn, to announce when it ends.
    departed: Vec<Departure>,
    /// Issues and checks the tokens UDP addresses join with.
    cookies: Cookies,
    /// `--udp-join-rate`, for the whole server.
    joins: TokenBucket,
    /// Replies to UDP addresses that have not joined, for the whole server.
    challenges: TokenBucket,
    /// `udp_joins_per_ip`, per validated source.
    source_joins: SourceJoins,
    /// Lines published to rooms since the broker last let its thread go
    /// ([`YIELD_AFTER`]): at most this many wait in any member's mailbox for that reason.
    unyielded: usize,
    /// The service's chat counters (this broker is their only writer).
    metrics: Arc<ChatMetrics>,
    /// What this broker has added to the gauges: TCP users, UDP users, rooms. They are
    /// brought up to date once per turn ([`Broker::count`]) and taken back when the
    /// broker ends, so a broker started again on the same counters starts from zero.
    counted: [i64; 3],
    /// Lines queued for users this turn, added to `metrics` when it ends: one atomic add
    /// per turn rather than one per recipient of a room line.
    delivered: Cell<u64>,
    /// Users were told the cluster link is lost (and will be told when it is back).
    link_down_told: bool,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.deliveries.add(self.delivered.take());
        for (gauge, n) in [&m.users[0], &m.users[1], &m.rooms]
            .into_iter()
            .zip(self.counted)
        {
            gauge.add(-n);
        }
    }
}

/// Returns to the executor once: the broker goes to the back of the run queue, behind the
/// writers it woke. (Written here so the runtime seam need not name one more function.)
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// The burst of a per-second rate: one second's worth, at least 1.
fn per_second_burst(rate: f64) -> u32 {
    rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// What users are told when the cluster's bus is lost, and when it is back.
pub const LINK_LOST: &str = "* cluster link lost; only this server's users can hear you";
pub const LINK_RESTORED: &str = "* cluster link restored";

/// What a user is told (once per burst) when its lines reach only this process.
pub const CLUSTER_BUSY: &str = "! cluster busy: your lines are reaching only this server's users";

/// What a `/nick` or `/msg` gets when the queue to the cluster is full.
pub const CLUSTER_BUSY_TRY: &str = "! cluster busy, try again shortly";

fn line_of(text: &str) -> Line {
    line(&[text])
}

/// Builds a `\n`-terminated line once, for every recipient.
fn line(parts: &[&str]) -> Line {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
    let mut bytes = Vec::with_capacity(len);
    for p in parts {
        bytes.extend_from_slice(p.as_bytes());
    }
    bytes.push(b'\n');
    Line::from(bytes)
}

/// Queues `line` for a TCP client's writer unless its mailbox is full or its queued bytes
/// would pass `max_bytes` (a line alone in the queue always fits, however long);
/// `false` then (it cannot keep up). A writer that has ended (its client left) takes
/// nothing, and that is not the client being slow. A line queued counts in `delivered`.
fn queue_tcp(
    writer_tx: &flume::Sender<Queued>,
    queued: &Arc<AtomicUsize>,
    line: &Line,
    max_bytes: usize,
    delivered: &Cell<u64>,
) -> bool {
    let before = queued.load(Ordering::Relaxed);
    if before > 0 && before.saturating_add(line.len()) > max_bytes {
        return false;
    }
    queued.fetch_add(line.len(), Ordering::Relaxed);
    let item = Queued {
        line: line.clone(),
        queued: queued.clone(),
    };
    // (A refused item is dropped here, and gives its bytes back.)
    match writer_tx.try_send(item) {
        Ok(()) => {
            delivered.set(delivered.get() + 1);
            true
        }
        Err(flume::TrySendError::Full(_)) => false,
        Err(flume::TrySendError::Disconnected(_)) => true,
    }
}

/// `line` itself if it fits in one UDP datagram, else its longest prefix that does and
/// ends at a character boundary, with its `\n`.
fn fit_datagram(line: &Line) -> Line {
    if line.len() <= udp::MAX_DATAGRAM {
        return line.clone();
    }
    let mut end = udp::MAX_DATAGRAM - 1;
    // UTF-8 continuation bytes are 0b10xx_xxxx: back up to the start of a character.
    while end > 0 && line[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    let mut cut = line[..end].to_vec();
    cut.push(b'\n');
    Line::from(cut)
}

/// `head` and `items` joined by `, ` as one line of at most `limit` bytes: as many items
/// as fit, then ` … (+N more)` for the rest; `None` if not even that fits.
fn fit_list(head: &str, items: &[&str], limit: usize) -> Option<Line> {
    let full = head.len()
        + items.iter().map(|i| i.len()).sum::<usize>()
        + 2 * items.len().saturating_sub(1)
        + 1;
    if full <= limit {
        return Some(line(&[head, &items.join(", ")]));
    }
    // Room for the longest suffix it could need, so the count never pushes it over.
    let suffix_room = " … (+ more)".len() + items.len().to_string().len() + 1;
    let budget = limit.checked_sub(head.len() + suffix_room)?;
    let mut text = String::from(head);
    let mut shown = 0;
    for item in items {
        let sep = if shown == 0 { 0 } else { 2 };
        if text.len() - head.len() + sep + item.len() > budget {
            break;
        }
        if shown > 0 {
            text.push_str(", ");
        }
        text.push_str(item);
        shown += 1;
    }
    let more = (items.len() - shown).to_string();
    let sep = if shown == 0 { "… (+" } else { " … (+" };
    Some(line(&[&text, sep, &more, " more)"]))
}

/// What the answers to one UDP user's own commands may take, in bytes. A joined UDP
/// address is still only an address (anyone who can forge it can send as it), so the
/// answers are paid for by what arrives from it: each datagram earns [`AMPLIFICATION`]
/// times its bytes (up to [`REPLY_CREDIT_MAX`] in hand), on top of an allowance of
/// [`REPLY_ALLOWANCE`] bytes that refills at [`REPLY_REFILL`] bytes a second. So a
/// forged datagram makes the server send at most three times its bytes toward the
/// address, beyond that slow allowance, however many `/who`s or `/help`s it holds.
struct ReplyBudget {
    bytes: f64,
    last: Instant,
}

/// The allowance a UDP user starts with and that refills while it is quiet, in bytes:
/// a few answers (a `/who` of some sixty long nicks) before its own bytes pay for more.
pub const REPLY_ALLOWANCE: usize = 2048;

/// How fast the allowance refills, in bytes a second.
pub const REPLY_REFILL: usize = 256;

/// The most a UDP user's reply budget holds, in bytes.
pub const REPLY_CREDIT_MAX: usize = 16 * 1024;

impl ReplyBudget {
    fn new() -> Self {
        ReplyBudget {
            bytes: REPLY_ALLOWANCE as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let allowance = REPLY_ALLOWANCE as f64;
        if self.bytes < allowance {
            self.bytes = (self.bytes + elapsed * REPLY_REFILL as f64).min(allowance);
        }
    }

    /// A datagram of `received` bytes arrived from the user.
    fn earn(&mut self, received: usize) {
        let earned = (AMPLIFICATION * received) as f64;
        self.bytes = (self.bytes + earned).min(REPLY_CREDIT_MAX as f64);
    }

    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.bytes as usize
    }

    /// Takes `n` bytes if the budget has them.
    fn spend(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        if self.bytes >= n as f64 {
            self.bytes -= n as f64;
            true
        } else {
            false
        }
    }
}

/// How many lines [`Broker::announce`] sends for these departures.
fn notice_lines(departed: &[Departure]) -> usize {
    if departed.len() <= NAMED_DEPARTURES {
        departed.len()
    } else {
        let mut kinds: Vec<&str> = departed.iter().map(|d| d.reason.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.len()
    }
}

impl Broker {
    async fn run(mut self, broker_rx: flume::Receiver<BrokerMsg>) {
        while let Ok(msg) = broker_rx.recv_async().await {
            match msg {
                BrokerMsg::Join { id, outbox } => {
                    self.join(id, outbox);
                }
                BrokerMsg::Line { id, line } => self.on_line(id, &line),
                BrokerMsg::TooLong { id } => self.line_too_long(id),
                BrokerMsg::Leave { id, reason } => self.remove(id, reason),
                BrokerMsg::Datagram { peer, data } => self.on_datagram(peer, &data.datagram),
                BrokerMsg::Tick => {
                    self.expire_udp();
                    self.snapshot();
                }
                BrokerMsg::Bus(event) => self.on_bus(*event),
                BrokerMsg::Reconfigure { config, generation } => {
                    if generation <= self.generation {
                        continue; // an older reload's limits, overtaken
                    }
                    self.generation = generation;
                    self.joins = TokenBucket::new(per_second_burst(config.udp_join_rate));
                    self.challenges = TokenBucket::new(per_second_burst(config.udp_challenge_rate));
                    self.source_joins = SourceJoins::new(config.udp_joins_per_ip);
                    self.config = *config;
                    log::info!(generation = generation; "chat: new limits");
                }
                BrokerMsg::Shutdown { done } => {
                    let bye = line(&["* server shutting down"]);
                    let mut peers = Vec::new();
                    for client in self.clients.values().filter(|c| !c.overflowed) {
                        match &client.outbox {
                            Outbox::Tcp {
                                writer_tx, queued, ..
                            } => {
                                let n = &self.delivered;
                                queue_tcp(writer_tx, queued, &bye, usize::MAX, n);
                            }
                            Outbox::Udp { peer } => peers.push(*peer),
                        }
                    }
                    // One job for every UDP user, and waited for: the broker is stopping,
                    // and the send actor never waits on it, so this cannot deadlock.
                    if let Some(udp) = &self.udp {
                        self.delivered
                            .set(self.delivered.get() + peers.len() as u64);
                        udp.send_many(bye, peers).await;
                    }
                    // Dropping the clients drops every writer's sender: each flushes and closes.
                    self.clients.clear();
                    // The other processes hear that this one's users left.
                    self.bus.close().await;
                    let _ = done.send(());
                    break;
                }
            }
            self.settle();
            self.count();
            if self.unyielded >= YIELD_AFTER {
                self.unyielded = 0;
                yield_now().await;
            }
        }
        log::debug!("chat broker stopped");
    }

    /// Registers a client and welcomes it. A UDP client is registered only if its welcome
    /// could be queued (`false` otherwise: nothing was stored, and it may ask again), so
    /// no UDP user is ever in the room without having been welcomed.
    fn join(&mut self, id: ClientId, outbox: Outbox) -> bool {
        let nick = self.guest_nick();
        let welcome = line(&[
            "* welcome to #lobby, you are ",
            &nick,
            " (type /help for commands)",
        ]);
        if let Outbox::Udp { peer } = &outbox {
            // The welcome may use the whole queue, ordinary datagrams only the part
            // outside `WELCOME_RESERVE`.
            let queued = self
                .udp
                .as_ref()
                .map(|udp| udp.try_send(*peer, welcome.to_vec()));
            if queued == Some(false) {
                return false;
            }
            self.delivered.set(self.delivered.get() + 1);
        }
        self.nicks.insert(nick.to_ascii_lowercase(), id);
        self.rooms.entry(LOBBY.to_string()).or_default().push(id);
        self.bus.request(BusRequest::Hold { nick: nick.clone() });
        self.bus.request(BusRequest::Member {
            nick: nick.clone(),
            room: Some(LOBBY.into()),
        });
        let bucket = TokenBucket::new(self.config.burst);
        let client = Client {
            nick: nick.clone(),
            room: LOBBY.into(),
            outbox,
            bucket,
            warned: false,
            last_seen: Instant::now(),
            overflowed: false,
            replies: ReplyBudget::new(),
            cluster_warned: false,
        };
        let tcp = matches!(client.outbox, Outbox::Tcp { .. });
        self.clients.insert(id, client);
        if tcp {
            self.tell(id, welcome);
        }
        if self.link_down_told {
            self.tell(id, line(&[LINK_LOST]));
        }
        self.publish(LOBBY, Some(id), line(&["* ", &nick, " joined"]));
        true
    }

    fn guest_nick(&mut self) -> String {
        loop {
            // A number from the cluster's shared sequence if there is one at hand (no
            // other process hands it out), else this process's own.
            let n = self.bus.guest_number().unwrap_or_else(|| {
                self.next_guest += 1;
                self.next_guest - 1
            });
            let nick = format!("guest{n}");
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// Sends to one client; `false` means its queue is full (it cannot keep up). A client
    /// already leaving gets nothing.
    fn deliver(&self, id: ClientId, line: &Line) -> bool {
        let Some(client) = self.clients.get(&id).filter(|c| !c.overflowed) else {
            return true;
        };
        match &client.outbox {
            Outbox::Tcp {
                writer_tx, queued, ..
            } => queue_tcp(
                writer_tx,
                queued,
                line,
                self.config.sendq_bytes,
                &self.delivered,
            ),
            Outbox::Udp { peer } => {
                // A full UDP queue drops the datagram: UDP promises no more.
                if self.udp_send(vec![*peer], line) {
                    self.delivered.set(self.delivered.get() + 1);
                }
                true
            }
        }
    }

    /// Sends to one client; one that cannot keep up leaves when this turn ends.
    fn tell(&mut self, id: ClientId, line: Line) {
        if !self.deliver(id, &line) {
            self.overflow(id);
        }
    }

    /// Answers a client's own command. To a UDP user, whose address anyone may forge, the
    /// answer must fit its [`ReplyBudget`] (else it is dropped), so a forged datagram
    /// makes the server send that address at most [`AMPLIFICATION`] times its bytes, plus
    /// a small allowance; over TCP it is simply sent.
    fn reply(&mut self, id: ClientId, line: Line) {
        let now = Instant::now();
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if matches!(client.outbox, Outbox::Udp { .. }) && !client.replies.spend(line.len(), now) {
            log::debug!(nick = client.nick.as_str(), bytes = line.len(); "chat: UDP reply over budget, dropped");
            return;
        }
        self.tell(id, line);
    }

    /// The longest answer [`Broker::reply`] would send `id` now: what its budget allows,
    /// and one datagram, for a UDP user; no limit over TCP.
    fn reply_limit(&mut self, id: ClientId) -> usize {
        let now = Instant::now();
        match self.clients.get_mut(&id) {
            Some(c) if matches!(c.outbox, Outbox::Udp { .. }) => {
                c.replies.available(now).min(udp::MAX_DATAGRAM)
            }
            _ => usize::MAX,
        }
    }

    fn is_udp(&self, id: ClientId) -> bool {
        self.clients
            .get(&id)
            .is_some_and(|c| matches!(c.outbox, Outbox::Udp { .. }))
    }

    /// Marks a client whose queue overflowed: it gets nothing more and is removed when
    /// this turn ends ([`Broker::settle`]).
    fn overflow(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(&id).filter(|c| !c.overflowed) {
            c.overflowed = true;
            self.overflowed.push(id);
        }
    }

    /// Sends `line` to everyone in `room` but `except`, then to the bus; whether the bus
    /// took it (`false`: other processes will not see it).
    fn publish(&mut self, room: &str, except: Option<ClientId>, line: Line) -> bool {
        self.deliver_room(room, except, &line);
        self.bus.published(room, &line)
    }

    /// Sends `line` to this process's members of `room` but `except`. The room's UDP
    /// users get it as one job for the send actor, so a full UDP queue drops the line for
    /// all of them (counted), never the members after the first thousand.
    fn deliver_room(&mut self, room: &str, except: Option<ClientId>, line: &Line) {
        let mut too_slow = Vec::new();
        let mut peers = Vec::new();
        if let Some(members) = self.rooms.get(room) {
            for &id in members {
                let Some(client) = self.clients.get(&id).filter(|c| !c.overflowed) else {
                    continue;
                };
                if Some(id) == except {
                    continue;
                }
                match &client.outbox {
                    Outbox::Udp { peer } => peers.push(*peer),
                    Outbox::Tcp { .. } => {
                        if !self.deliver(id, line) {
                            too_slow.push(id);
                        }
                    }
                }
            }
            self.unyielded += 1;
        }
        let udp_users = peers.len() as u64;
        if self.udp_send(peers, line) {
            self.delivered.set(self.delivered.get() + udp_users);
        }
        for id in too_slow {
            self.overflow(id);
        }
    }

    /// A line a user said: published, and if the cluster could not take it, the user
    /// is told, once until the queue to the cluster has drained.
    fn say(&mut self, id: ClientId, room: &str, line: Line) {
        self.metrics.said.inc();
        let reached = self.publish(room, Some(id), line);
        let warn = match self.clients.get_mut(&id) {
            Some(c) if !reached && !c.cluster_warned => {
                c.cluster_warned = true;
                true
            }
            Some(c) => {
                // A burst ends when the queue has drained, not at the first line that
                // squeezes in while it is still full.
                c.cluster_warned &= !(reached && self.bus.caught_up());
                false
            }
            None => false,
        };
        if warn {
            self.reply(id, line_of(CLUSTER_BUSY));
        }
    }

    /// Takes a client out of the registry now; its room hears of it when this turn ends.
    fn remove(&mut self, id: ClientId, reason: LeaveReason) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        self.nicks.remove(&client.nick.to_ascii_lowercase());
        self.leave_room(id, &client.room);
        self.metrics.departed(&reason);
        self.bus.request(BusRequest::Release {
            nick: client.nick.clone(),
        });
        self.bus.request(BusRequest::Member {
            nick: client.nick.clone(),
            room: None,
        });
        match &client.outbox {
            Outbox::Tcp { socket, .. } => {
                if reason == LeaveReason::SendQueue {
                    // Its writer may be stuck on a full socket: cut it off.
                    let _ = socket.shut_both();
                }
            }
            Outbox::Udp { peer } => {
                self.udp_peers.remove(peer);
                let source = source_of(peer.ip());
                if let Some(n) = self.udp_sources.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        self.udp_sources.remove(&source);
                    }
                }
            }
        }
        log::info!(nick = client.nick.as_str(), reason = reason.text(); "chat: left");
        self.departed.push(Departure {
            nick: client.nick,
            room: client.room,
            reason,
        });
    }

    /// Ends a turn: removes the clients that could not keep up and tells each room who
    /// left. A loop, never a recursion: notices cannot overflow anyone (see
    /// [`Broker::announce`]), and if one somehow did, the next pass would settle it.
    fn settle(&mut self) {
        loop {
            for id in std::mem::take(&mut self.overflowed) {
                self.remove(id, LeaveReason::SendQueue);
            }
            if self.departed.is_empty() {
                return;
            }
            let departed = std::mem::take(&mut self.departed);
            let mut rooms: Vec<(String, Vec<Departure>)> = Vec::new();
            for d in departed {
                match rooms.iter_mut().find(|(room, _)| *room == d.room) {
                    Some((_, list)) => list.push(d),
                    None => rooms.push((d.room.clone(), vec![d])),
                }
            }
            for (room, list) in rooms {
                self.announce(&room, list);
            }
        }
    }

    /// Tells `room` who left: by name up to [`NAMED_DEPARTURES`], else one line per
    /// reason. First, members whose queues have no room for those lines leave too (they
    /// are counted in them), so the notices themselves overflow no one.
    fn announce(&mut self, room: &str, mut departed: Vec<Departure>) {
        loop {
            let needed = notice_lines(&departed);
            let full: Vec<ClientId> = self
                .rooms
                .get(room)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|id| self.free_slots(*id) < needed)
                .collect();
            if full.is_empty() {
                break;
            }
            for id in full {
                self.remove(id, LeaveReason::SendQueue);
            }
            departed.append(&mut self.departed);
        }
        if departed.len() <= NAMED_DEPARTURES {
            for d in &departed {
                let notice = line(&["* ", &d.nick, " left (", d.reason.text(), ")"]);
                self.publish(room, None, notice);
            }
        } else {
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for d in &departed {
                match counts.iter_mut().find(|(kind, _)| *kind == d.reason.kind()) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((d.reason.kind(), 1)),
                }
            }
            for (kind, n) in counts {
                let users = if n == 1 {
                    " user left ("
                } else {
                    " users left ("
                };
                let notice = line(&["* ", &n.to_string(), users, kind, ")"]);
                self.publish(room, None, notice);
            }
        }
    }

    /// How many more lines a client's queue takes now (UDP: unlimited; a full UDP queue
    /// drops datagrams, which UDP allows).
    fn free_slots(&self, id: ClientId) -> usize {
        match self.clients.get(&id).map(|c| &c.outbox) {
            Some(Outbox::Tcp { writer_tx, .. }) => writer_tx
                .capacity()
                .unwrap_or(usize::MAX)
                .saturating_sub(writer_tx.len()),
            _ => usize::MAX,
        }
    }

    fn leave_room(&mut self, id: ClientId, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.retain(|&m| m != id);
            if members.is_empty() && room != LOBBY {
                self.rooms.remove(room);
                self.bus.request(BusRequest::Close { room: room.into() });
            }
        }
    }

    fn on_datagram(&mut self, peer: SocketAddr, data: &Datagram) {
        let asked = data.len();
        let mut lines = data.lines();
        let id = match self.udp_peers.get(&peer) {
            Some(&id) => id,
            None => {
                // An address that has not joined must show that it receives what is sent
                // to it: its first line must be `/hello TOKEN`. Until then nothing about
                // it is stored, and all it gets is one short reply (see `reply_unjoined`).
                // (A datagram is at least one line; a line over `--max-line` is no hello.)
                let first = lines.next().and_then(Frame::bytes).unwrap_or_default();
                let first = without_newline(first);
                let first = first.strip_suffix(b"\r").unwrap_or(first);
                let now = Instant::now();
                // Only a line that starts like a short `/hello` is worth sanitising and
                // parsing; anything else (up to 64 KiB of it) is answered at once.
                let hello = first.len() <= MAX_HELLO_LINE
                    && first
                        .get(..HELLO.len())
                        .is_some_and(|verb| verb.eq_ignore_ascii_case(HELLO));
                let text = if hello {
                    protocol::sanitize(first)
                } else {
                    String::new()
                };
                match protocol::parse(&text) {
                    Command::Hello(token) if self.cookies.check(peer, token, now) => {}
                    _ => {
                        let token = self.cookies.token(peer, now);
                        let challenge = ["* to join, send: /hello ", &token];
                        return self.reply_unjoined(peer, asked, &challenge);
                    }
                }
                if self.udp_peers.len() >= self.config.max_udp_users {
                    // UDP sources are cheap to invent: they must not grow the registry.
                    return self.reply_unjoined(peer, asked, &["! server full"]);
                }
                let source = source_of(peer.ip());
                if self.udp_sources.get(&source).copied().unwrap_or(0)
                    >= self.config.max_udp_users_per_ip
                {
                    let refusal = ["! too many users from your address"];
                    return self.reply_unjoined(peer, asked, &refusal);
                }
                if !self.source_joins.take(peer.ip(), now) {
                    // One host must not take every join there is (from many ports).
                    return self.reply_unjoined(
                        peer,
                        asked,
                        &["! too many joins from your address, try again shortly"],
                    );
                }
                if !self.joins.take(
                    self.config.udp_join_rate,
                    per_second_burst(self.config.udp_join_rate),
                    now,
                ) {
                    let refusal = ["! too many joins, try again shortly"];
                    return self.reply_unjoined(peer, asked, &refusal);
                }
                let id = next_client_id();
                if !self.join(id, Outbox::Udp { peer }) {
                    // No room even for the welcome: as if the datagram were lost.
                    log::debug!(peer = peer.to_string().as_str(); "chat: UDP join deferred (send queue full)");
                    return;
                }
                self.udp_peers.insert(peer, id);
                *self.udp_sources.entry(source).or_default() += 1;
                log::info!(peer = peer.to_string().as_str(), id = id; "chat: UDP user joined");
                id
            }
        };
        if let Some(c) = self.clients.get_mut(&id) {
            c.last_seen = Instant::now();
            c.replies.earn(asked);
        }
        for frame in lines {
            if !self.clients.contains_key(&id) {
                break; // a /quit earlier in the datagram
            }
            match frame.bytes() {
                Some(raw) => self.on_line(id, without_newline(raw)),
                None => self.line_too_long(id),
            }
        }
    }

    /// Sends one line to a UDP address that has not joined, in answer to a datagram of
    /// `asked` bytes. As QUIC does it (RFC 9000 §8.1), a reply no larger than
    /// [`AMPLIFICATION`] times the datagram is always sent — a forged datagram then makes
    /// the server send at most three times its own bytes toward anyone, and a user whose
    /// first line is 14 bytes or more is always challenged, however many short datagrams
    /// flood the server. Replies to shorter datagrams (an empty one, `hi`) draw on one
    /// budget for the whole server (`udp_challenge_rate` a second, in all, not per
    /// address), so they add at most that many short datagrams a second.
    fn reply_unjoined(&mut self, peer: SocketAddr, asked: usize, parts: &[&str]) {
        let reply = line(parts);
        let rate = self.config.udp_challenge_rate;
        let burst = per_second_burst(rate);
        if self.udp.is_some()
            && (reply.len() <= AMPLIFICATION * asked
                || self.challenges.take(rate, burst, Instant::now()))
        {
            let _ = self.udp_send(vec![peer], &reply);
        }
    }

    /// Queues one line for `peers` as one job (anything but a welcome or the goodbye) if
    /// the UDP send queue has room outside [`WELCOME_RESERVE`]; drops it for all of them
    /// otherwise (the send actor counts it), as UDP may. A line longer than a datagram
    /// can carry is cut to fit (at a character boundary, still ending in `\n`). Whether
    /// it was queued (`false` for no peers).
    fn udp_send(&self, peers: Vec<SocketAddr>, line: &Line) -> bool {
        match &self.udp {
            Some(udp) if !peers.is_empty() => {
                udp.try_send_many(fit_datagram(line), peers, WELCOME_RESERVE)
            }
            _ => false,
        }
    }

    /// Brings the metrics up to date at the end of a turn: the lines delivered in it, and
    /// the gauges to what this broker holds now (users by transport, rooms; only what
    /// changed).
    fn count(&mut self) {
        self.metrics.deliveries.add(self.delivered.take());
        let udp = self.udp_peers.len();
        let now = [
            self.clients.len().saturating_sub(udp),
            udp,
            self.rooms.len(),
        ]
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let m = &self.metrics;
        for ((gauge, was), now) in [&m.users[0], &m.users[1], &m.rooms]
            .into_iter()
            .zip(&mut self.counted)
            .zip(now)
        {
            gauge.add(now - *was);
            *was = now;
        }
    }

    /// Tells a client its line was dropped for being over `--max-line`.
    fn line_too_long(&mut self, id: ClientId) {
        if self.clients.contains_key(&id) {
            let limit = self.config.max_line.to_string();
            self.reply(
                id,
                line(&["! line too long (the limit is ", &limit, " bytes)"]),
            );
        }
    }

    fn expire_udp(&mut self) {
        let limit = self.config.udp_idle;
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                matches!(c.outbox, Outbox::Udp { .. }) && c.last_seen.elapsed() >= limit
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.tell(
                id,
                line(&[
                    "* disconnected after ",
                    &format!("{limit:?}"),
                    " of silence",
                ]),
            );
            self.remove(id, LeaveReason::UdpTimeout);
        }
    }

    fn on_line(&mut self, id: ClientId, raw: &[u8]) {
        let (rate, burst) = (self.config.rate, self.config.burst);
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if !client.bucket.take(rate, burst, Instant::now()) {
            self.metrics.flood_dropped.inc();
            if !client.warned {
                client.warned = true;
                self.reply(id, line(&["! slow down (lines are being dropped)"]));
            }
            return;
        }
        client.warned = false;
        let text = protocol::sanitize(raw);
        let nick = client.nick.clone();
        let room = client.room.clone();
        match protocol::parse(&text) {
            Command::Empty => {}
            Command::Say(text) => self.say(id, &room, line(&["<", &nick, "> ", text])),
            Command::Me(text) => self.say(id, &room, line(&["* ", &nick, " ", text])),
            Command::Nick(new) => self.rename(id, &nick, new),
            Command::Msg { to, text } => match self.nicks.get(&to.to_ascii_lowercase()) {
                Some(&target) => {
                    self.metrics.said.inc();
                    self.tell(target, line(&["*", &nick, "* ", text]));
                }
                None if self.bus.linked() => {
                    // Perhaps a user of another process: the bus finds out, and answers
                    // `! no such nick` if not.
                    let request = BusRequest::Private {
                        id,
                        to: to.to_string(),
                        line: line(&["*", &nick, "* ", text]),
                    };
                    if self.bus.request(request) {
                        self.metrics.said.inc();
                    } else {
                        self.reply(id, line_of(CLUSTER_BUSY_TRY));
                    }
                }
                None => self.reply(id, line(&["! no such nick: ", to])),
            },
            Command::Who => self.ask(id, Query::Who { room }),
            Command::Join(new_room) => self.move_room(id, &nick, &room, new_room),
            Command::Rooms => self.ask(id, Query::Rooms),
            Command::Help if self.is_udp(id) => self.reply(id, line(&[HELP_SHORT])),
            Command::Help => {
                let text: Vec<u8> = HELP
                    .iter()
                    .flat_map(|l| format!("{l}\n").into_bytes())
                    .collect();
                self.reply(id, Line::from(text));
            }
            Command::Quit(reason) => {
                self.reply(id, line(&["* bye"]));
                let reason = LeaveReason::Quit(reason.map(str::to_string));
                if let Some(Outbox::Tcp { socket, .. }) = self.clients.get(&id).map(|c| &c.outbox) {
                    // The writer flushes `* bye` and closes once we drop its sender below;
                    // the reader stops here, whatever the client does.
                    let _ = socket.shut_read();
                }
                self.remove(id, reason);
            }
            Command::Usage(usage) => self.reply(id, line(&["! usage: ", usage])),
            Command::Hello(_) => self.reply(id, line(&["* already joined as ", &nick])),
            Command::Unknown(verb) => {
                self.reply(id, line(&["! unknown command: /", verb, " (try /help)"]))
            }
        }
    }

    fn rename(&mut self, id: ClientId, old: &str, new: &str) {
        if let Some(problem) = protocol::nick_problem(new) {
            return self.reply(id, line(&[problem]));
        }
        if new == old {
            return self.reply(id, line(&["* you are already ", old]));
        }
        let key = new.to_ascii_lowercase();
        if self.nicks.get(&key).is_some_and(|&owner| owner != id) {
            return self.reply(id, line(&["! nick taken: ", new]));
        }
        if key != old.to_ascii_lowercase() && self.bus.linked() {
            // Another process's user may hold it: the bus asks, and the answer finishes
            // the rename (`BusEvent::Claimed`).
            let claim = BusRequest::Claim {
                id,
                nick: new.to_string(),
            };
            if !self.bus.request(claim) {
                self.reply(id, line_of(CLUSTER_BUSY_TRY));
            }
            return;
        }
        self.bus.request(BusRequest::Hold { nick: new.into() });
        self.renamed(id, new);
    }

    /// The rename of `id` to `new`, now that `new` is its: the room hears of it.
    fn renamed(&mut self, id: ClientId, new: &str) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut c.nick, new.to_string());
        let room = c.room.clone();
        let key = new.to_ascii_lowercase();
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(key.clone(), id);
        if old.to_ascii_lowercase() != key {
            self.bus.request(BusRequest::Release { nick: old.clone() });
        }
        self.bus.request(BusRequest::Member {
            nick: old.clone(),
            room: None,
        });
        self.bus.request(BusRequest::Member {
            nick: new.to_string(),
            room: Some(room.clone()),
        });
        self.publish(&room, None, line(&["* ", &old, " is now ", new]));
    }

    /// The cluster's answer to a `/nick`: the rename is made if the client is still here
    /// and nobody here took the nick meanwhile.
    fn claimed(&mut self, id: ClientId, nick: &str, granted: bool) {
        let key = nick.to_ascii_lowercase();
        let holder = self.nicks.get(&key).copied();
        if !self.clients.contains_key(&id) {
            if granted && holder.is_none() {
                self.bus.request(BusRequest::Release { nick: nick.into() });
            }
            return;
        }
        match holder {
            _ if !granted => self.reply(id, line(&["! nick taken: ", nick])),
            Some(other) if other != id => self.reply(id, line(&["! nick taken: ", nick])),
            _ => self.renamed(id, nick),
        }
    }

    /// `/who` or `/rooms`: answered now from this process's users, or, when other
    /// processes can be reached, once the bus has their users too.
    fn ask(&mut self, id: ClientId, query: Query) {
        if self.bus.linked() {
            let request = BusRequest::View {
                id,
                query: query.clone(),
            };
            if self.bus.request(request) {
                return;
            }
        }
        self.answer(id, &query, &[]);
    }

    /// Answers a `/who` or `/rooms` from this process's users and `remote` ones (nick,
    /// room).
    fn answer(&mut self, id: ClientId, query: &Query, remote: &[(String, String)]) {
        if !self.clients.contains_key(&id) {
            return;
        }
        let limit = self.reply_limit(id);
        let reply = match query {
            Query::Who { room } => {
                // (Lookups, not indexing: nothing a client says may panic the broker.)
                let members = self.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
                let mut names: Vec<&str> = members
                    .iter()
                    .filter_map(|m| self.clients.get(m).map(|c| c.nick.as_str()))
                    .chain(
                        remote
                            .iter()
                            .filter(|(_, r)| r == room)
                            .map(|(n, _)| n.as_str()),
                    )
                    .collect();
                names.sort_by_key(|n| n.to_ascii_lowercase());
                names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
                let head = format!("* in #{room}: ");
                fit_list(&head, &names, limit)
            }
            Query::Rooms => {
                let mut counts: HashMap<&str, usize> = self
                    .rooms
                    .iter()
                    .map(|(r, m)| (r.as_str(), m.len()))
                    .collect();
                for (_, room) in remote {
                    *counts.entry(room.as_str()).or_default() += 1;
                }
                let mut rooms: Vec<(&str, usize)> = counts.into_iter().collect();
                rooms.sort();
                let list: Vec<String> = rooms.iter().map(|(r, n)| format!("#{r} ({n})")).collect();
                let list: Vec<&str> = list.iter().map(String::as_str).collect();
                fit_list("* rooms: ", &list, limit)
            }
        };
        if let Some(reply) = reply {
            self.reply(id, reply);
        }
    }

    /// What the cluster bus tells.
    fn on_bus(&mut self, event: BusEvent) {
        match event {
            BusEvent::Room { room, line } => self.deliver_room(&room, None, &line),
            BusEvent::Private { to, line } => {
                if let Some(&target) = self.nicks.get(&to.to_ascii_lowercase()) {
                    self.tell(target, line);
                }
            }
            BusEvent::Reply { id, line } => {
                if self.clients.contains_key(&id) {
                    self.reply(id, line);
                }
            }
            BusEvent::Claimed { id, nick, granted } => self.claimed(id, &nick, granted),
            BusEvent::View { asked, remote } => {
                let remote = remote.unwrap_or_default();
                for (id, query) in asked {
                    self.answer(id, &query, &remote);
                }
            }
            BusEvent::NodeLost { node: _, users } => {
                let mut by_room: Vec<(String, Vec<Departure>)> = Vec::new();
                for (nick, room) in users {
                    if self.nicks.contains_key(&nick.to_ascii_lowercase())
                        || !self.rooms.contains_key(&room)
                    {
                        continue; // a local user now, or no one here to tell
                    }
                    self.metrics.departed(&LeaveReason::NodeLost);
                    let departure = Departure {
                        nick,
                        room: room.clone(),
                        reason: LeaveReason::NodeLost,
                    };
                    match by_room.iter_mut().find(|(r, _)| *r == room) {
                        Some((_, list)) => list.push(departure),
                        None => by_room.push((room, vec![departure])),
                    }
                }
                for (room, departed) in by_room {
                    self.announce_here(&room, &departed);
                }
            }
            BusEvent::NickLost { nick } => self.nick_lost(&nick),
            BusEvent::Link { up } => {
                let notice = if up && self.link_down_told {
                    self.link_down_told = false;
                    line_of(LINK_RESTORED)
                } else if !up && !self.link_down_told {
                    self.link_down_told = true;
                    line_of(LINK_LOST)
                } else {
                    return;
                };
                let ids: Vec<ClientId> = self.clients.keys().copied().collect();
                for id in ids {
                    self.tell(id, notice.clone());
                }
            }
        }
    }

    /// Tells this process's members of `room` who left elsewhere (by name up to
    /// [`NAMED_DEPARTURES`], else counted), without publishing: every process tells its
    /// own users.
    fn announce_here(&mut self, room: &str, departed: &[Departure]) {
        if departed.len() <= NAMED_DEPARTURES {
            for d in departed {
                let notice = line(&["* ", &d.nick, " left (", d.reason.text(), ")"]);
                self.deliver_room(room, None, &notice);
            }
        } else {
            let n = departed.len().to_string();
            let notice = line(&["* ", &n, " users left (node lost)"]);
            self.deliver_room(room, None, &notice);
        }
    }

    /// A local user's nick turned out to be held by another process (taken while the
    /// link was down): the user becomes a guest, and is told.
    fn nick_lost(&mut self, nick: &str) {
        let Some(&id) = self.nicks.get(&nick.to_ascii_lowercase()) else {
            return;
        };
        let Some(old) = self.clients.get(&id).map(|c| c.nick.clone()) else {
            return;
        };
        let guest = self.guest_nick();
        self.tell(
            id,
            line(&[
                "* your nick ",
                &old,
                " was taken on another server while the cluster link was down; you are now ",
                &guest,
            ]),
        );
        self.bus.request(BusRequest::Hold {
            nick: guest.clone(),
        });
        // (Its key is another's: `renamed` releases only what this process holds.)
        self.renamed(id, &guest);
    }

    /// Every few seconds, what the bus should hold: every local user and room (so a
    /// request dropped by a full queue is mended).
    fn snapshot(&mut self) {
        if !self.bus.snapshot_due(Instant::now()) {
            return;
        }
        let users = self
            .clients
            .values()
            .filter(|c| !c.overflowed)
            .map(|c| (c.nick.clone(), c.room.clone()))
            .collect();
        let rooms = self.rooms.keys().cloned().collect();
        self.bus.request(BusRequest::Snapshot { users, rooms });
    }

    fn move_room(&mut self, id: ClientId, nick: &str, old: &str, new: &str) {
        if !protocol::valid_name(new) {
            return self.reply(
                id,
                line(&["! invalid room: use 1-32 letters, digits, _ or -"]),
            );
        }
        let new = new.to_ascii_lowercase();
        if new == old {
            return self.reply(id, line(&["* already in #", old]));
        }
        // The bus hears of the move before the lines about it, so another process that
        // has seen them finds the user in its new room.
        self.bus.request(BusRequest::Member {
            nick: nick.into(),
            room: Some(new.clone()),
        });
        self.leave_room(id, old);
        self.publish(old, None, line(&["* ", nick, " left for #", &new]));
        if !self.rooms.contains_key(&new) {
            // The first member here: the bus listens to the room from now on.
            self.bus.request(BusRequest::Open { room: new.clone() });
        }
        self.publish(&new, None, line(&["* ", nick, " joined #", &new]));
        self.rooms.entry(new.clone()).or_default().push(id);
        if let Some(c) = self.clients.get_mut(&id) {
            c.room = new.clone();
        }
        self.reply(id, line(&["* now in #", &new]));
    }
}

/// The sources [`SourceJoins`] remembers at most. Only addresses that have shown their
/// token get here, so a spoofer cannot fill it; one that owns many addresses (an IPv6
/// /48 holds 65,536 /64s) can push others out, which only gives them their burst again.
pub const SOURCE_JOIN_ENTRIES: usize = 4096;

/// The per-source join limit: a token bucket per source (an IPv4 address, an IPv6 /64),
/// in a small bounded map. Consulted only for validated addresses, so nothing is stored
/// for an address that has not shown its token.
struct SourceJoins {
    rate: f64,
    burst: u32,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl SourceJoins {
    fn new(rate: f64) -> Self {
        SourceJoins {
            rate,
            burst: per_second_burst(rate),
            buckets: HashMap::new(),
        }
    }

    /// Takes one join for `ip`'s source if it has one left.
    fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let key = source_of(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= SOURCE_JOIN_ENTRIES {
            self.make_room(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(burst))
            .take(rate, burst, now)
    }

    /// Forgets every source whose bucket has refilled (it is as if new); if that leaves
    /// the map over three quarters full, forgets arbitrary others (hash order, which a
    /// client cannot predict) down to that. Amortised, each new source then costs O(1),
    /// and a forgotten source only gets its burst again — the global limit still holds.
    fn make_room(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .retain(|_, b| b.level(rate, burst, now) < f64::from(burst));
        let keep = SOURCE_JOIN_ENTRIES * 3 / 4;
        if self.buckets.len() > keep {
            let excess = self.buckets.len() - keep;
            let victims: Vec<IpAddr> = self.buckets.keys().take(excess).copied().collect();
            for ip in victims {
                self.buckets.remove(&ip);
            }
        }
    }
}

/// The source a UDP address is limited as: an IPv4 address (an IPv4-mapped IPv6 one
/// too), or the /64 an IPv6 address is in — one host's share of IPv6, where a single
/// machine commonly has a whole /64 to pick addresses from.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Flood control: `rate` lines a second on average, `burst` at once.
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Tokens there would be at `now` (without taking any).
    fn level(&self, rate: f64, burst: u32, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate).min(f64::from(burst))
    }

    /// Takes one token if there is one; a rate of 0 means no limit.
    fn take(&mut self, rate: f64, burst: u32, now: Instant) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_a_datagram_is_cut_at_a_character_boundary() {
        let short = line(&["* hi"]);
        assert!(Arc::ptr_eq(&fit_datagram(&short), &short));
        // 'é' is two bytes: a cut at MAX_DATAGRAM - 1 would split one.
        let text = "é".repeat(udp::MAX_DATAGRAM);
        let cut = fit_datagram(&line(&[&text]));
        assert!(cut.len() <= udp::MAX_DATAGRAM);
        assert!(cut.len() >= udp::MAX_DATAGRAM - 2);
        let s = std::str::from_utf8(&cut).unwrap();
        assert!(s.ends_with("é\n"));
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(source_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn the_per_source_join_map_stays_bounded_and_keeps_limiting() {
        let now = Instant::now();
        let mut joins = SourceJoins::new(0.001); // one join per source, then none for 1,000 s
        let hog: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(joins.take(hog, now));
        assert!(!joins.take(hog, now));
        for i in 0..(SOURCE_JOIN_ENTRIES as u32 * 2) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(joins.take(ip, now), "a new source has its join");
            assert!(joins.buckets.len() <= SOURCE_JOIN_ENTRIES);
        }
        // Refilled buckets are forgotten first, when the map is full.
        let later = now + Duration::from_secs(2000);
        assert!(joins.take(hog, later));
        for i in 0..(SOURCE_JOIN_ENTRIES as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(joins.take(ip, later));
            assert!(!joins.take(ip, later));
        }
        assert!(
            joins.buckets.len() <= SOURCE_JOIN_ENTRIES * 3 / 4 + 2,
            "{}",
            joins.buckets.len()
        );
    }

    #[test]
    fn a_list_is_cut_to_fit_with_a_count_of_the_rest() {
        let names: Vec<String> = (0..3000).map(|i| format!("{i:0>32}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            &*fit_list("* in #a: ", &names[..2], 100).unwrap(),
            format!("* in #a: {}, {}\n", names[0], names[1]).as_bytes()
        );
        // 3,000 names of 32 bytes: about 102 KB, more than a datagram.
        let who = fit_list("* in #lobby: ", &names, udp::MAX_DATAGRAM).unwrap();
        assert!(who.len() <= udp::MAX_DATAGRAM);
        let text = std::str::from_utf8(&who).unwrap();
        let shown = text.matches(", ").count() + 1;
        assert!(
            text.ends_with(&format!(" … (+{} more)\n", 3000 - shown)),
            "{}",
            &text[text.len() - 40..]
        );
        assert!(who.len() > udp::MAX_DATAGRAM - 40);
        // Every limit: never over it, and the count is right.
        for limit in 0..200 {
            if let Some(l) = fit_list("* in #a: ", &names[..5], limit) {
                assert!(l.len() <= limit, "{limit}");
                let t = std::str::from_utf8(&l).unwrap();
                let shown = t.matches(&"0".repeat(31)[..]).count();
                if shown < 5 {
                    assert!(t.ends_with(&format!("(+{} more)\n", 5 - shown)), "{t:?}");
                }
            } else {
                assert!(limit < "* in #a: … (+5 more)\n".len() + 1, "{limit}");
            }
        }
    }

    #[test]
    fn the_reply_budget_is_three_times_what_arrived_plus_the_allowance() {
        let start = Instant::now();
        let mut b = ReplyBudget {
            bytes: REPLY_ALLOWANCE as f64,
            last: start,
        };
        b.earn(100);
        assert_eq!(b.available(start), REPLY_ALLOWANCE + 300);
        assert!(b.spend(REPLY_ALLOWANCE + 300, start));
        assert!(!b.spend(1, start));
        let later = start + Duration::from_secs(1);
        assert_eq!(b.available(later), REPLY_REFILL);
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(
            b.available(much_later),
            REPLY_ALLOWANCE,
            "refills to the allowance only"
        );
        b.earn(1 << 20);
        assert_eq!(b.available(much_later), REPLY_CREDIT_MAX);
    }

    #[test]
    fn the_receive_gate_bounds_the_bytes_waiting_for_the_broker() {
        let gate = ReceiveGate::new(100);
        let big = gate
            .admit(vec![0; 150], 4096)
            .expect("one datagram alone always fits");
        assert!(gate.admit(vec![0; 1], 4096).is_none());
        drop(big);
        let a = gate.admit(vec![0; 60], 4096).unwrap();
        let _b = gate.admit(vec![0; 40], 4096).unwrap();
        assert!(gate.admit(vec![0; 1], 4096).is_none());
        drop(a);
        assert!(gate.admit(vec![0; 60], 4096).is_some());
    }

    #[test]
    fn the_receive_gate_counts_a_datagrams_cuts_beyond_its_first_line() {
        let gate = ReceiveGate::new(100);
        // Ten empty lines: 10 bytes and nine more cuts.
        let lines = gate.admit(vec![b'\n'; 10], 4096).unwrap();
        assert_eq!(lines.datagram.frames(), 10);
        assert_eq!(lines.weight, 10 + 9 * lines::CUT_SIZE);
        assert!(gate.admit(vec![0; 100 - lines.weight + 1], 4096).is_none());
        assert!(gate.admit(vec![0; 100 - lines.weight], 4096).is_some());
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket {
            tokens: 3.0,
            last: start,
        };
        assert!((0..3).all(|_| b.take(10.0, 3, start)));
        assert!(!b.take(10.0, 3, start));
        assert!(b.take(10.0, 3, start + Duration::from_millis(100)));
        assert!(!b.take(10.0, 3, start + Duration::from_millis(100)));
        // Refill is capped at the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(10.0, 3, later)));
        assert!(!b.take(10.0, 3, later));
        assert!(b.take(0.0, 3, later), "rate 0 is unlimited");
    }
}
