//! The chat broker: one actor that owns the registry of everyone connected (TCP and UDP
//! alike), the nick index and the rooms, and fans each line out to its recipients.
//!
//! ```text
//!   TCP readers ──Join/Line/TooLong/Leave──┐
//!   UDP receive loop ──Datagram────────────┼──▶ broker_rx ──▶ Broker ──try_send──▶ writer mailboxes (TCP)
//!   ticker ──Tick──────────────────────────┤                    │    └─try_send──▶ UDP send actor
//!   chat::run ──Shutdown { done }──────────┘                    └──▶ RoomBus (the cluster seam)
//! ```
//!
//! The broker never waits on a client: deliveries use `try_send`, and a TCP client whose
//! mailbox (`--sendq` lines) is full is too slow to keep up; it is disconnected and
//! announced, as IRC servers do. Every line is formatted once into an `Arc<[u8]>` that all
//! recipients share. The registry is plain maps owned by this task; nobody else sees it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::protocol::{self, Command, HELP};
use crate::net::udp::DatagramSender;
use crate::rt::{self, TcpStream};

/// Identifies one client for the broker's life.
pub type ClientId = u64;

/// One formatted line, shared by every recipient.
pub type Line = Arc<[u8]>;

/// Messages queued for the broker. Readers wait when it is full: that is backpressure on
/// whoever is sending fastest, while fan-out itself never waits.
pub const BROKER_MAILBOX: usize = 4096;

/// The room everyone starts in.
pub const LOBBY: &str = "lobby";

/// Chat settings (the command line's `--max-line`, `--rate`, `--burst`, `--sendq`, `--udp-idle`).
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
    /// Silence after which a UDP client is dropped.
    pub udp_idle: Duration,
    /// The most UDP users at once (TCP users are bounded by `--max-conns`); UDP sources are
    /// cheap to invent, so a flood of them must not grow the registry without bound.
    pub max_udp_users: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_line: 4096,
            rate: 20.0,
            burst: 40,
            sendq: 1024,
            udp_idle: Duration::from_secs(300),
            max_udp_users: 10_000,
        }
    }
}

/// Where a client's lines go.
pub enum Outbox {
    /// A TCP client's writer mailbox, and its socket (only to cut it off: at `/quit`,
    /// or when it cannot keep up).
    Tcp {
        writer_tx: flume::Sender<Line>,
        stream: TcpStream,
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
    Leave { id: ClientId, reason: &'static str },
    /// A UDP datagram (one or more lines).
    Datagram { peer: SocketAddr, data: Vec<u8> },
    /// Time passes: expire silent UDP clients.
    Tick,
    /// Tell everyone, let go of every writer, and stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// Where published room lines also go. The broker delivers to its own clients and then
/// hands the line here; a cluster mode would forward it to an external message bus and
/// feed lines from other processes back in. Readers, writers and the parser never see it.
pub trait RoomBus: Send + 'static {
    /// `line` was published to `room` on this process.
    fn published(&mut self, room: &str, line: &Line);
}

/// The single-process bus: nothing beyond this process.
pub struct LocalOnly;

impl RoomBus for LocalOnly {
    fn published(&mut self, _room: &str, _line: &Line) {}
}

/// The handle others hold: cheap to clone, the only way to reach the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    broker_tx: flume::Sender<BrokerMsg>,
}

impl BrokerHandle {
    /// Spawns a broker and returns its handle. `udp` is the UDP endpoint's send actor,
    /// if chat serves UDP.
    pub fn spawn(config: ChatConfig, udp: Option<DatagramSender>, bus: Box<dyn RoomBus>) -> Self {
        let (broker_tx, broker_rx) = flume::bounded(BROKER_MAILBOX);
        let broker = Broker {
            config,
            clients: HashMap::new(),
            nicks: HashMap::new(),
            rooms: HashMap::new(),
            udp_peers: HashMap::new(),
            udp,
            bus,
            next_guest: 1,
        };
        rt::spawn(broker.run(broker_rx));
        BrokerHandle { broker_tx }
    }

    /// Sends a message, waiting for room; `false` if the broker has stopped.
    pub async fn send(&self, msg: BrokerMsg) -> bool {
        self.broker_tx.send_async(msg).await.is_ok()
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
}

struct Broker {
    config: ChatConfig,
    clients: HashMap<ClientId, Client>,
    /// Lower-cased nick → client: uniqueness ignoring case, and `/msg` lookup.
    nicks: HashMap<String, ClientId>,
    /// Room → members, in joining order.
    rooms: HashMap<String, Vec<ClientId>>,
    udp_peers: HashMap<SocketAddr, ClientId>,
    udp: Option<DatagramSender>,
    bus: Box<dyn RoomBus>,
    next_guest: u64,
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

impl Broker {
    async fn run(mut self, broker_rx: flume::Receiver<BrokerMsg>) {
        while let Ok(msg) = broker_rx.recv_async().await {
            match msg {
                BrokerMsg::Join { id, outbox } => self.join(id, outbox),
                BrokerMsg::Line { id, line } => self.on_line(id, &line),
                BrokerMsg::TooLong { id } => self.line_too_long(id),
                BrokerMsg::Leave { id, reason } => self.remove(id, reason),
                BrokerMsg::Datagram { peer, data } => self.on_datagram(peer, &data),
                BrokerMsg::Tick => self.expire_udp(),
                BrokerMsg::Shutdown { done } => {
                    let bye = line(&["* server shutting down"]);
                    let ids: Vec<ClientId> = self.clients.keys().copied().collect();
                    for id in ids {
                        self.tell(id, bye.clone());
                    }
                    // Dropping the clients drops every writer's sender: each flushes and closes.
                    self.clients.clear();
                    let _ = done.send(());
                    break;
                }
            }
        }
        log::debug!("chat broker stopped");
    }

    fn join(&mut self, id: ClientId, outbox: Outbox) {
        let nick = self.guest_nick();
        self.nicks.insert(nick.to_ascii_lowercase(), id);
        self.rooms.entry(LOBBY.to_string()).or_default().push(id);
        let bucket = TokenBucket::new(self.config.burst);
        let client = Client {
            nick: nick.clone(),
            room: LOBBY.into(),
            outbox,
            bucket,
            warned: false,
            last_seen: Instant::now(),
        };
        self.clients.insert(id, client);
        self.tell(
            id,
            line(&[
                "* welcome to #lobby, you are ",
                &nick,
                " (type /help for commands)",
            ]),
        );
        self.publish(LOBBY, Some(id), line(&["* ", &nick, " joined"]));
    }

    fn guest_nick(&mut self) -> String {
        loop {
            let nick = format!("guest{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// Sends to one client; `false` means its queue is full (it cannot keep up).
    fn deliver(&self, id: ClientId, line: &Line) -> bool {
        let Some(client) = self.clients.get(&id) else {
            return true;
        };
        match &client.outbox {
            Outbox::Tcp { writer_tx, .. } => !matches!(
                writer_tx.try_send(line.clone()),
                Err(flume::TrySendError::Full(_))
            ),
            Outbox::Udp { peer } => {
                if let Some(udp) = &self.udp {
                    // A full UDP queue drops the datagram: UDP promises no more.
                    udp.try_send(*peer, line.to_vec());
                }
                true
            }
        }
    }

    /// Sends to one client, disconnecting it if it cannot keep up.
    fn tell(&mut self, id: ClientId, line: Line) {
        if !self.deliver(id, &line) {
            self.remove(id, "send queue exceeded");
        }
    }

    /// Sends `line` to everyone in `room` but `except`, then to the bus.
    fn publish(&mut self, room: &str, except: Option<ClientId>, line: Line) {
        let mut too_slow = Vec::new();
        if let Some(members) = self.rooms.get(room) {
            for &id in members {
                if Some(id) != except && !self.deliver(id, &line) {
                    too_slow.push(id);
                }
            }
        }
        self.bus.published(room, &line);
        for id in too_slow {
            self.remove(id, "send queue exceeded");
        }
    }

    /// Takes a client out of the registry and tells its room why.
    fn remove(&mut self, id: ClientId, reason: &str) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        self.nicks.remove(&client.nick.to_ascii_lowercase());
        self.leave_room(id, &client.room);
        match &client.outbox {
            Outbox::Tcp { stream, .. } => {
                if reason == "send queue exceeded" {
                    // Its writer may be stuck on a full socket: cut it off.
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            Outbox::Udp { peer } => {
                self.udp_peers.remove(peer);
            }
        }
        log::info!(nick = client.nick.as_str(), reason = reason; "chat: left");
        self.publish(
            &client.room,
            None,
            line(&["* ", &client.nick, " left (", reason, ")"]),
        );
    }

    fn leave_room(&mut self, id: ClientId, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.retain(|&m| m != id);
            if members.is_empty() && room != LOBBY {
                self.rooms.remove(room);
            }
        }
    }

    fn on_datagram(&mut self, peer: SocketAddr, data: &[u8]) {
        let id = match self.udp_peers.get(&peer) {
            Some(&id) => id,
            None if self.udp_peers.len() >= self.config.max_udp_users => {
                // UDP sources are cheap to invent: a flood of them must not grow the registry.
                if let Some(udp) = &self.udp {
                    udp.try_send(peer, b"! server full\n".to_vec());
                }
                return;
            }
            None => {
                let id = next_client_id();
                self.udp_peers.insert(peer, id);
                self.join(id, Outbox::Udp { peer });
                id
            }
        };
        if let Some(c) = self.clients.get_mut(&id) {
            c.last_seen = Instant::now();
        }
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        for raw in data.split(|&b| b == b'\n') {
            if !self.clients.contains_key(&id) {
                break; // a /quit earlier in the datagram
            }
            let content = raw.strip_suffix(b"\r").unwrap_or(raw);
            if content.len() > self.config.max_line {
                self.line_too_long(id);
            } else {
                self.on_line(id, raw);
            }
        }
    }

    /// Tells a client its line was dropped for being over `--max-line`.
    fn line_too_long(&mut self, id: ClientId) {
        if self.clients.contains_key(&id) {
            let limit = self.config.max_line.to_string();
            self.tell(
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
            self.remove(id, "timeout");
        }
    }

    fn on_line(&mut self, id: ClientId, raw: &[u8]) {
        let (rate, burst) = (self.config.rate, self.config.burst);
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if !client.bucket.take(rate, burst, Instant::now()) {
            if !client.warned {
                client.warned = true;
                self.tell(id, line(&["! slow down (lines are being dropped)"]));
            }
            return;
        }
        client.warned = false;
        let text = protocol::sanitize(raw);
        let nick = client.nick.clone();
        let room = client.room.clone();
        match protocol::parse(&text) {
            Command::Empty => {}
            Command::Say(text) => self.publish(&room, Some(id), line(&["<", &nick, "> ", text])),
            Command::Me(text) => self.publish(&room, Some(id), line(&["* ", &nick, " ", text])),
            Command::Nick(new) => self.rename(id, &nick, &room, new),
            Command::Msg { to, text } => match self.nicks.get(&to.to_ascii_lowercase()) {
                Some(&target) => self.tell(target, line(&["*", &nick, "* ", text])),
                None => self.tell(id, line(&["! no such nick: ", to])),
            },
            Command::Who => {
                // (Lookups, not indexing: nothing a client says may panic the broker.)
                let members = self.rooms.get(&room).map(Vec::as_slice).unwrap_or_default();
                let mut names: Vec<&str> = members
                    .iter()
                    .filter_map(|m| self.clients.get(m).map(|c| c.nick.as_str()))
                    .collect();
                names.sort_by_key(|n| n.to_ascii_lowercase());
                let who = line(&["* in #", &room, ": ", &names.join(", ")]);
                self.tell(id, who);
            }
            Command::Join(new_room) => self.move_room(id, &nick, &room, new_room),
            Command::Rooms => {
                let mut rooms: Vec<(&String, usize)> =
                    self.rooms.iter().map(|(r, m)| (r, m.len())).collect();
                rooms.sort();
                let list: Vec<String> = rooms.iter().map(|(r, n)| format!("#{r} ({n})")).collect();
                self.tell(id, line(&["* rooms: ", &list.join(", ")]));
            }
            Command::Help => {
                let text: Vec<u8> = HELP
                    .iter()
                    .flat_map(|l| format!("{l}\n").into_bytes())
                    .collect();
                self.tell(id, Line::from(text));
            }
            Command::Quit(reason) => {
                self.tell(id, line(&["* bye"]));
                let reason = reason.unwrap_or("quit").to_string();
                if let Some(Outbox::Tcp { stream, .. }) = self.clients.get(&id).map(|c| &c.outbox) {
                    // The writer flushes `* bye` and closes once we drop its sender below;
                    // the reader stops here, whatever the client does.
                    let _ = stream.shutdown(std::net::Shutdown::Read);
                }
                self.remove(id, &reason);
            }
            Command::Usage(usage) => self.tell(id, line(&["! usage: ", usage])),
            Command::Unknown(verb) => {
                self.tell(id, line(&["! unknown command: /", verb, " (try /help)"]))
            }
        }
    }

    fn rename(&mut self, id: ClientId, old: &str, room: &str, new: &str) {
        if !protocol::valid_name(new) {
            return self.tell(
                id,
                line(&["! invalid nick: use 1-32 letters, digits, _ or -"]),
            );
        }
        let key = new.to_ascii_lowercase();
        if self.nicks.get(&key).is_some_and(|&owner| owner != id) {
            return self.tell(id, line(&["! nick taken: ", new]));
        }
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(key, id);
        if let Some(c) = self.clients.get_mut(&id) {
            c.nick = new.to_string();
        }
        self.publish(room, None, line(&["* ", old, " is now ", new]));
    }

    fn move_room(&mut self, id: ClientId, nick: &str, old: &str, new: &str) {
        if !protocol::valid_name(new) {
            return self.tell(
                id,
                line(&["! invalid room: use 1-32 letters, digits, _ or -"]),
            );
        }
        let new = new.to_ascii_lowercase();
        if new == old {
            return self.tell(id, line(&["* already in #", old]));
        }
        self.leave_room(id, old);
        self.publish(old, None, line(&["* ", nick, " left for #", &new]));
        self.publish(&new, None, line(&["* ", nick, " joined #", &new]));
        self.rooms.entry(new.clone()).or_default().push(id);
        if let Some(c) = self.clients.get_mut(&id) {
            c.room = new.clone();
        }
        self.tell(id, line(&["* now in #", &new]));
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
