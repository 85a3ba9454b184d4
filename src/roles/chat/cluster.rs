//! Chat across processes: the cluster bus over Redis (`chat --cluster redis://…`).
//!
//! ```text
//!   Broker ──bus_tx (bounded; full: dropped, counted)──▶ link actor ──PUBLISH, SET, HSET…──▶ Redis
//!     ▲                                                      │  (one multiplexed connection)
//!     └──broker_tx── receive loop ◀── SUBSCRIBE connection ◀─┘  P:room:ROOM, P:node:NODE
//! ```
//!
//! This module is the only one that names the `redis` crate. The broker sees a
//! [`RoomBus`]: it hands over what its users said and asks for what only the cluster
//! knows (a nick's owner, other nodes' members), and hears back through its own
//! mailbox as [`BusEvent`]s. It never waits on Redis.
//!
//! What lives in Redis, under the prefix `P` (`--cluster-prefix`):
//!
//! | key or channel | what | written by |
//! |---|---|---|
//! | `P:nick:NICK` (lower case) | the node holding the nick, leased (`PX`) | its node: `SET NX`, renewed each tick, released by compare-and-delete |
//! | `P:alive:NODE` | the node is up, leased | its node, each tick |
//! | `P:users:NODE` | hash nick → room of the node's users; expires 3 leases after the last renewal | its node |
//! | `P:nodes` | set of node ids (a lost one is removed once its users hash has expired) | every node |
//! | `P:guest-seq` | the counter guest numbers are taken from, 1024 at a time | every node |
//! | channel `P:room:ROOM` | `NODE\tLINE`: a line said or announced in ROOM | the node of the sayer |
//! | channel `P:node:NODE` | `msg\tNICK\tLINE`: a `/msg` for a user of NODE | the node of the sender |
//!
//! Everything read back is untrusted: a payload over the size cap, a room or nick that
//! is not a valid name, anything not in these shapes is dropped and counted, and every
//! line goes through the same sanitiser as a user's own ([`protocol::sanitize`]).
//! So is every key another node may write: a key of the wrong type, a node id or nick
//! owner that is not a name, a guest sequence INCRBY refuses, is junk to skip (or, for
//! the node set, to repair), never a lost link; and what is read of the node set and the
//! users hashes is bounded (`MAX_NODES`, `MAX_NODE_USERS`, `MAX_REMOTE_USERS`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use redis::AsyncCommands;

use super::broker::{BrokerMsg, ClientId, LOBBY, Line, RoomBus};
use super::metrics::ChatMetrics;
use super::protocol;
use crate::rt;

/// Default `--cluster-prefix`.
pub const DEFAULT_PREFIX: &str = "switchboard";

/// Default `--cluster-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Lines and requests waiting for the link actor at most (`--cluster-queue`); beyond it
/// lines to other nodes are dropped and counted, and the sayer is told once per burst.
pub const DEFAULT_QUEUE: usize = 8192;

/// Requests other than lines waiting for the link actor at most.
pub const CONTROL_QUEUE: usize = 16 * 1024;

/// Guest numbers taken from `P:guest-seq` at once.
const GUEST_BLOCK: u64 = 1024;

/// Items taken from the queue into one pipeline at most.
const BATCH: usize = 512;

/// Nick keys renewed by one script call at most.
const RENEW_CHUNK: usize = 512;

/// Other nodes looked at in one tick or one `/who` at most: beyond it, a random sample
/// of the node set (a set filled with fake nodes costs a bounded amount per tick).
const MAX_NODES: usize = 1024;

/// A node's users read at most (a bigger users hash is ignored, counted invalid), and
/// all nodes' users read for one answer at most.
const MAX_NODE_USERS: usize = 65_536;
const MAX_REMOTE_USERS: usize = 262_144;

/// The longest node id: `--node-name` (64) and `.` and 8 hex digits.
const MAX_NODE_ID: usize = 64 + 1 + 8;

/// The first wait before reconnecting, doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a connect, a command or the goodbye at shutdown may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the receive loop may wait for room in the broker's mailbox in any second;
/// beyond it, a line that finds the mailbox full is dropped (counted). The client
/// library reads the subscriber connection into an unbounded buffer whatever this loop
/// does: a loop that waited on a broker that cannot keep up let a flood of remote lines
/// pile up there without limit (10 MB/s in a test); busy at least 90% of the time, it
/// drains faster than Redis can deliver.
const INBOUND_WAIT: Duration = Duration::from_millis(100);

/// `--cluster` and the options beside it.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…`. Holds a password: never log
    /// it, log [`ClusterConfig::redacted`].
    pub url: String,
    /// This process's name in logs and in its node id (`NAME.RANDOM`).
    pub node_name: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// How long a nick and a node's liveness hold without renewal.
    pub lease: Duration,
    /// [`DEFAULT_QUEUE`].
    pub queue: usize,
    /// Longest remote line accepted (the broker's `--max-line` plus room for a nick).
    pub max_line: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &self.redacted())
            .field("node_name", &self.node_name)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish()
    }
}

impl ClusterConfig {
    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// Checks the URL (without connecting), the prefix and the lease; the error says
    /// what is wrong and never shows the password.
    pub fn check(&self) -> crate::Result<()> {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return Err(format!(
                "--cluster {}: expected redis://[USER:PASS@]HOST:PORT[/DB] or rediss://…",
                self.redacted()
            )
            .into());
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            return Err(
                format!("--cluster {}: {}", self.redacted(), redact(&e.to_string())).into(),
            );
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(&self.prefix) {
            return Err("--cluster-prefix: 1-64 letters, digits, '-', '_' or '.'".into());
        }
        if !name_ok(&self.node_name) {
            return Err("--node-name: 1-64 letters, digits, '-', '_' or '.'".into());
        }
        if self.lease < Duration::from_secs(1) {
            return Err("--cluster-lease must be at least 1s".into());
        }
        if self.queue == 0 {
            return Err("--cluster-queue must be at least 1".into());
        }
        Ok(())
    }
}

/// `url` with what lies between `://` and the last `@` of its authority (the user and
/// password) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

/// A `/who` or `/rooms` waiting for other nodes' members.
#[derive(Clone, Debug)]
pub enum Query {
    Who { room: String },
    Rooms,
}

/// What the cluster tells the broker (in [`BrokerMsg::Bus`]).
#[derive(Debug)]
pub enum BusEvent {
    /// A line said or announced in `room` on another node (sanitised, with its `\n`).
    Room { room: String, line: Line },
    /// A `/msg` for the local user `to`.
    Private { to: String, line: Line },
    /// An answer for one local client (`! no such nick`).
    Reply { id: ClientId, line: Line },
    /// The answer to [`BusRequest::Claim`].
    Claimed {
        id: ClientId,
        nick: String,
        granted: bool,
    },
    /// Other nodes' users (nick, room), for the queries asked; `None` if Redis could not
    /// be asked (answer from this node alone).
    View {
        asked: Vec<(ClientId, Query)>,
        remote: Option<Vec<(String, String)>>,
    },
    /// A node stopped renewing its lease: its users (nick, room) are gone.
    NodeLost {
        node: String,
        users: Vec<(String, String)>,
    },
    /// A local user's nick is held by another node (taken while the link was down).
    NickLost { nick: String },
    /// The link to Redis is up (or down).
    Link { up: bool },
}

/// What the broker asks of the cluster.
pub enum BusRequest {
    /// `line` was said or announced in `room` here.
    Room {
        room: String,
        line: Line,
    },
    /// Take `nick` for client `id` (`/nick`); answered with [`BusEvent::Claimed`].
    Claim {
        id: ClientId,
        nick: String,
    },
    /// Hold `nick` (a guest's, or one taken while the link was down); a clash is told
    /// with [`BusEvent::NickLost`].
    Hold {
        nick: String,
    },
    /// Let go of `nick`.
    Release {
        nick: String,
    },
    /// `nick` is now in `room` (`None`: gone).
    Member {
        nick: String,
        room: Option<String>,
    },
    /// The first local member entered `room` (subscribe), or the last one left it.
    Open {
        room: String,
    },
    Close {
        room: String,
    },
    /// A `/msg` to a nick that is not local.
    Private {
        id: ClientId,
        to: String,
        line: Line,
    },
    /// A `/who` or `/rooms`: answered with [`BusEvent::View`].
    View {
        id: ClientId,
        query: Query,
    },
    /// Everything local now: users (nick, room) and rooms; what the actor holds is
    /// brought in line with it (a request lost to a full queue is mended here).
    Snapshot {
        users: Vec<(String, String)>,
        rooms: Vec<String>,
    },
    /// The broker is stopping: say goodbye (departures, release everything), then answer.
    Close_ {
        done: oneshot::Sender<()>,
    },
}

/// What the broker holds: the queue to the link actor and what they share.
pub struct ClusterBus {
    /// Lines to publish (`--cluster-queue`): full, a line is dropped.
    lines_tx: flume::Sender<BusRequest>,
    /// Everything else ([`CONTROL_QUEUE`]): full, a `/nick` or `/msg` is told to try
    /// again, and what else is lost is mended by the next snapshot.
    control_tx: flume::Sender<BusRequest>,
    shared: Arc<Shared>,
    last_snapshot: Option<Instant>,
    snapshot_every: Duration,
    /// Every line before the last one published had been dealt with by the link.
    caught_up: bool,
}

/// What the broker's side and the link actor share.
struct Shared {
    linked: AtomicBool,
    /// Lines taken for the link and not yet dealt with (published, or dropped): queued,
    /// or in a pipeline Redis has not answered.
    unsent: AtomicUsize,
    /// Guest numbers taken from `P:guest-seq` and not yet handed out: `next..end`.
    guests: Mutex<(u64, u64)>,
    metrics: Arc<ChatMetrics>,
}

impl ClusterBus {
    /// Starts the link actor (it connects, and keeps reconnecting, on its own) and
    /// returns the broker's end. `broker_tx` is the broker's mailbox.
    pub fn spawn(
        config: ClusterConfig,
        broker_tx: flume::Sender<BrokerMsg>,
        metrics: Arc<ChatMetrics>,
    ) -> Self {
        let (lines_tx, lines) = flume::bounded(config.queue);
        let (control_tx, control) = flume::bounded(CONTROL_QUEUE);
        metrics.clustered.store(true, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            linked: AtomicBool::new(false),
            unsent: AtomicUsize::new(0),
            guests: Mutex::new((0, 0)),
            metrics,
        });
        let node = format!("{}.{:08x}", config.node_name, random_u32());
        let snapshot_every = tick_of(config.lease);
        log::info!(node = node.as_str(), redis = config.redacted().as_str(), prefix = config.prefix.as_str(), lease_ms = config.lease.as_millis() as u64; "chat: cluster node starting");
        let client = redis::Client::open(config.url.as_str());
        let actor = Actor {
            keys: Keys::new(&config.prefix, &node),
            node,
            config,
            broker_tx,
            lines,
            control,
            shared: shared.clone(),
            owned: HashMap::new(),
            users: HashMap::new(),
            rooms: HashSet::from([LOBBY.to_string()]),
            seen_alive: HashSet::new(),
            state: LinkState::Starting,
            since_down: None,
            crowd_logged: None,
            guests_logged: None,
        };
        match client {
            Ok(client) => {
                rt::spawn(actor.run(client));
            }
            Err(e) => {
                log::error!(error = redact(&e.to_string()).as_str(); "chat: cluster URL refused; serving this node's users only")
            }
        }
        ClusterBus {
            lines_tx,
            control_tx,
            shared,
            last_snapshot: None,
            snapshot_every,
            caught_up: true,
        }
    }
}

impl RoomBus for ClusterBus {
    fn published(&mut self, room: &str, line: &Line) -> bool {
        // (Not merely an empty queue: the link may have taken lines that a stalled Redis
        // has not answered, and the burst is not over.)
        self.caught_up = self.shared.unsent.load(Ordering::Relaxed) == 0;
        let request = BusRequest::Room {
            room: room.to_string(),
            line: line.clone(),
        };
        self.shared.unsent.fetch_add(1, Ordering::Relaxed);
        let taken = self.lines_tx.try_send(request).is_ok();
        if !taken {
            self.shared.unsent.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.cluster_dropped[DROP_QUEUE].inc();
        }
        taken
    }

    fn linked(&self) -> bool {
        self.shared.linked.load(Ordering::Relaxed)
    }

    fn caught_up(&self) -> bool {
        self.caught_up
    }

    fn request(&mut self, request: BusRequest) -> bool {
        self.control_tx.try_send(request).is_ok()
    }

    fn guest_number(&mut self) -> Option<u64> {
        let mut guests = self.shared.guests.lock().unwrap_or_else(|e| e.into_inner());
        let (next, end) = *guests;
        (next < end).then(|| {
            guests.0 += 1;
            next
        })
    }

    fn snapshot_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_snapshot
            .is_none_or(|last| now.saturating_duration_since(last) >= self.snapshot_every);
        if due {
            self.last_snapshot = Some(now);
        }
        due
    }

    fn close(&mut self) -> futures::future::BoxFuture<'static, ()> {
        let (done, wait) = oneshot::channel();
        if !self.linked() {
            // Nothing can be said to the others: the actor stops when it sees this, and
            // the leases run out. The chat's shutdown does not wait for a connect.
            let _ = self.lines_tx.try_send(BusRequest::Close_ { done });
            return Box::pin(async {});
        }
        // (On the lines' queue: after every line already said. Closing waits for room.)
        let lines_tx = self.lines_tx.clone();
        let sent = async move {
            lines_tx
                .send_async(BusRequest::Close_ { done })
                .await
                .is_ok()
        };
        async move {
            let _ = rt::timeout(GOODBYE_TIMEOUT + CONNECT_TIMEOUT, async {
                if sent.await {
                    let _ = wait.await;
                }
            })
            .await;
        }
        .boxed()
    }
}

/// Which drop counter: the queue to the actor was full; the link was down; a message
/// from Redis was malformed; the broker's mailbox stayed full.
pub const DROP_QUEUE: usize = 0;
pub const DROP_LINK: usize = 1;
pub const DROP_INVALID: usize = 2;
pub const DROP_INBOUND: usize = 3;
/// The `reason` labels of those counters, in that order.
pub const DROP_REASONS: [&str; 4] = ["queue_full", "link_down", "invalid", "inbound_full"];

/// How often a node renews its leases and looks for lost nodes: a fifth of the lease.
fn tick_of(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(100))
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map(|_| u32::from_ne_bytes(bytes))
        .unwrap_or_else(|_| std::process::id() ^ (Instant::now().elapsed().subsec_nanos()))
}

/// Key and channel names.
struct Keys {
    prefix: String,
    alive: String,
    users: String,
    nodes: String,
    node_channel: String,
    room_channel_prefix: String,
}

impl Keys {
    fn new(prefix: &str, node: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            alive: format!("{prefix}:alive:{node}"),
            users: format!("{prefix}:users:{node}"),
            nodes: format!("{prefix}:nodes"),
            node_channel: format!("{prefix}:node:{node}"),
            room_channel_prefix: format!("{prefix}:room:"),
        }
    }
    fn nick(&self, nick: &str) -> String {
        format!("{}:nick:{}", self.prefix, nick.to_ascii_lowercase())
    }
    fn room(&self, room: &str) -> String {
        format!("{}{room}", self.room_channel_prefix)
    }
    fn users_of(&self, node: &str) -> String {
        format!("{}:users:{node}", self.prefix)
    }
    fn node_channel_of(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn guest_seq(&self) -> String {
        format!("{}:guest-seq", self.prefix)
    }
}

/// Takes KEYS (nick keys) for ARGV[1] (this node) for ARGV[2] ms: each one free or
/// already ours is (re)leased; returns the 1-based positions of those another node holds.
/// (A key that is not a string is junk another writer left: held by someone else.)
const HOLD_SCRIPT: &str = r"
local lost = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local v = false
  if t == 'string' then
    v = redis.call('GET', k)
  elseif t ~= 'none' then
    v = true
  end
  if v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
  elseif not v then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
";

/// Deletes KEYS that hold ARGV[1] (this node): a release never frees another's nick.
const RELEASE_SCRIPT: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('TYPE', k)['ok'] == 'string' and redis.call('GET', k) == ARGV[1] then
    n = n + redis.call('DEL', k)
  end
end
return n
";

/// The node holding KEYS[1] (a nick key), or nil if it is free or not a string.
const OWNER_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  return redis.call('GET', KEYS[1])
end
return false
";

/// Adds ARGV[1] (a block size) to KEYS[1] (the guest sequence): the new end, or nil if
/// the key holds something INCRBY refuses (not an integer, or at its limit).
const GUESTS_SCRIPT: &str = r"
local v = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(v) == 'number' then
  return v
end
return false
";

/// This node is alive (KEYS[1] = ARGV[1] for ARGV[2] ms), listed in KEYS[2] (replaced
/// first if another writer left something that is not a set there), and its users hash
/// KEYS[3] lasts ARGV[3] ms.
const RENEW_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'set' and t ~= 'none' then
  redis.call('DEL', KEYS[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 0
";

/// Up to ARGV[1] members of the node set KEYS[1] (all of them if it holds no more, else a
/// random sample), each followed by whether `ARGV[2]:alive:NODE` and
/// `ARGV[2]:users:NODE` exist; the first element is how many the set holds. Members
/// longer than ARGV[3] are junk: removed. Not a set: nothing.
const NODES_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'set' then
  return {0}
end
local total = redis.call('SCARD', KEYS[1])
local cap = tonumber(ARGV[1])
local members
if total <= cap then
  members = redis.call('SMEMBERS', KEYS[1])
else
  members = redis.call('SRANDMEMBER', KEYS[1], cap)
end
local out = {total}
for _, n in ipairs(members) do
  if #n <= tonumber(ARGV[3]) then
    out[#out + 1] = n
    out[#out + 1] = redis.call('EXISTS', ARGV[2] .. ':alive:' .. n)
    out[#out + 1] = redis.call('EXISTS', ARGV[2] .. ':users:' .. n)
  else
    redis.call('SREM', KEYS[1], n)
  end
end
return out
";

/// For each users hash in KEYS, its field-value pairs (flat) whose both sides are at most
/// ARGV[3] bytes long; a key that is not a hash, holds more than ARGV[1] fields, or would
/// take the total beyond ARGV[2] fields gives none.
const MEMBERS_SCRIPT: &str = r"
local out = {}
local budget = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
for i, k in ipairs(KEYS) do
  local found = {}
  if redis.call('TYPE', k)['ok'] == 'hash' then
    local n = redis.call('HLEN', k)
    if n <= tonumber(ARGV[1]) and n <= budget then
      budget = budget - n
      local all = redis.call('HGETALL', k)
      for j = 1, #all, 2 do
        if #all[j] <= max and #all[j + 1] <= max then
          found[#found + 1] = all[j]
          found[#found + 1] = all[j + 1]
        end
      end
    end
  end
  out[i] = found
end
return out
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LinkState {
    Starting,
    Up,
    Down,
}

/// Lines taken from the queue: no longer unsent once dropped.
struct Unsent(usize, Arc<Shared>);

impl Drop for Unsent {
    fn drop(&mut self) {
        self.1.unsent.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Why a link ended.
enum Ended {
    /// Redis failed or went away: reconnect.
    Lost(String),
    /// The broker stopped (its queue closed, or it asked for goodbye): stop.
    Stop,
}

/// The link actor: owns the Redis connections, what this node holds there, and the
/// state it rebuilds after a reconnect.
struct Actor {
    config: ClusterConfig,
    node: String,
    keys: Keys,
    broker_tx: flume::Sender<BrokerMsg>,
    lines: flume::Receiver<BusRequest>,
    control: flume::Receiver<BusRequest>,
    shared: Arc<Shared>,
    /// Nicks this node holds (lower case) and when each was granted: a fresh grant is
    /// not released by a snapshot taken before the rename it was for.
    owned: HashMap<String, Instant>,
    /// This node's users: nick → room.
    users: HashMap<String, String>,
    /// Rooms with local members: subscribed while linked.
    rooms: HashSet<String>,
    /// Other nodes seen alive: a node that stops being alive is announced lost once.
    seen_alive: HashSet<String>,
    state: LinkState,
    /// When the link went down (for the log line when it is back).
    since_down: Option<Instant>,
    /// When an oversized node set, or an unusable guest sequence, was last logged.
    crowd_logged: Option<Instant>,
    guests_logged: Option<Instant>,
}

/// One connected link: commands, and the subscriber's sink (its messages are read by
/// the receive loop, whose end `ended` reports).
struct Link {
    conn: redis::aio::MultiplexedConnection,
    sink: redis::aio::PubSubSink,
    ended: flume::Receiver<()>,
    /// The rooms whose channels this connection listens to: brought in line with the
    /// actor's `rooms` after each run of requests.
    subscribed: HashSet<String>,
}

type RedisResult<T> = Result<T, String>;

fn err(e: redis::RedisError) -> String {
    redact(&e.to_string())
}

async fn deadline<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> RedisResult<T> {
    match rt::timeout(limit, fut).await {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("{what}: {}", err(e))),
        None => Err(format!("{what}: no answer within {limit:?}")),
    }
}

impl Actor {
    fn tick(&self) -> Duration {
        tick_of(self.config.lease)
    }

    fn lease_ms(&self) -> u64 {
        self.config.lease.as_millis() as u64
    }

    /// How long one command may take before the link counts as lost.
    fn command_timeout(&self) -> Duration {
        (self.config.lease / 2).max(Duration::from_millis(500))
    }

    async fn run(mut self, client: redis::Client) {
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u64;
        loop {
            let ended = match self.connect(&client).await {
                Ok(link) => {
                    backoff = MIN_BACKOFF;
                    failures = 0;
                    self.serve(link).await
                }
                Err(e) => {
                    failures += 1;
                    // The first failure is a warning; the retries after it are quieter.
                    if failures == 1 {
                        log::warn!(redis = self.config.redacted().as_str(), error = e.as_str(); "chat: cannot reach the cluster's Redis; serving this node's users only, retrying");
                    } else {
                        log::debug!(error = e.as_str(), attempt = failures; "chat: cluster connect failed");
                    }
                    Ended::Lost(e)
                }
            };
            match ended {
                Ended::Stop => break,
                Ended::Lost(why) => {
                    if self.state == LinkState::Up {
                        log::warn!(error = why.as_str(); "chat: cluster link lost; serving this node's users only, reconnecting");
                    }
                    self.set_state(LinkState::Down).await;
                }
            }
            if !self.offline(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.shared.linked.store(false, Ordering::Relaxed);
        self.shared
            .metrics
            .cluster_link
            .add(-self.shared.metrics.cluster_link.get());
        log::debug!("chat: cluster link actor stopped");
    }

    async fn set_state(&mut self, state: LinkState) {
        let was = self.state;
        self.state = state;
        self.shared
            .linked
            .store(state == LinkState::Up, Ordering::Relaxed);
        let link = &self.shared.metrics.cluster_link;
        link.add(i64::from(state == LinkState::Up) - link.get());
        match (was, state) {
            (LinkState::Up, LinkState::Down) | (LinkState::Starting, LinkState::Down) => {
                self.since_down = Some(Instant::now());
                self.tell(BusEvent::Link { up: false }).await;
            }
            (_, LinkState::Up) => match self.since_down.take() {
                Some(since) => {
                    log::info!(node = self.node.as_str(), down_ms = since.elapsed().as_millis() as u64; "chat: cluster link restored");
                    self.tell(BusEvent::Link { up: true }).await;
                }
                None => log::info!(node = self.node.as_str(); "chat: cluster joined"),
            },
            _ => {}
        }
    }

    /// Tells the broker, waiting for room in its mailbox (these are few: answers and
    /// link changes). `false` if the broker has stopped.
    async fn tell(&self, event: BusEvent) -> bool {
        self.broker_tx
            .send_async(BrokerMsg::Bus(Box::new(event)))
            .await
            .is_ok()
    }

    /// Waits `wait` without a link, handling requests as a node alone would. `false` if
    /// the broker has stopped.
    async fn offline(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let next = {
                let lines = self.lines.recv_async().fuse();
                let control = self.control.recv_async().fuse();
                futures::pin_mut!(lines, control);
                let either = async {
                    futures::select! {
                        r = control => r,
                        r = lines => r,
                    }
                };
                rt::timeout(left, either).await
            };
            match next {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(BusRequest::Close_ { done })) => {
                    let _ = done.send(());
                    return false;
                }
                Some(Ok(request)) => self.alone(request).await,
            }
        }
    }

    /// A request handled without Redis: state is kept for when the link is back.
    async fn alone(&mut self, request: BusRequest) {
        match request {
            BusRequest::Room { .. } => {
                self.shared.unsent.fetch_sub(1, Ordering::Relaxed);
                self.shared.metrics.cluster_dropped[DROP_LINK].inc()
            }
            BusRequest::Claim { id, nick } => {
                self.owned.insert(nick.to_ascii_lowercase(), Instant::now());
                self.tell(BusEvent::Claimed {
                    id,
                    nick,
                    granted: true,
                })
                .await;
            }
            BusRequest::Private { id, to, .. } => {
                let line = no_such_nick(&to);
                self.tell(BusEvent::Reply { id, line }).await;
            }
            BusRequest::View { id, query } => {
                let event = BusEvent::View {
                    asked: vec![(id, query)],
                    remote: None,
                };
                self.tell(event).await;
            }
            other => self.record(other),
        }
    }

    /// Keeps what a request says about local state (nicks, members, rooms).
    fn record(&mut self, request: BusRequest) {
        match request {
            BusRequest::Hold { nick } => {
                self.owned.insert(nick.to_ascii_lowercase(), Instant::now());
            }
            BusRequest::Release { nick } => {
                self.owned.remove(&nick.to_ascii_lowercase());
            }
            BusRequest::Member { nick, room } => match room {
                Some(room) => {
                    self.users.insert(nick, room);
                }
                None => {
                    self.users.remove(&nick);
                }
            },
            BusRequest::Open { room } => {
                self.rooms.insert(room);
            }
            BusRequest::Close { room } if room != LOBBY => {
                self.rooms.remove(&room);
            }
            BusRequest::Snapshot { users, rooms } => {
                self.users = users.into_iter().collect();
                self.rooms = rooms.into_iter().collect();
                self.rooms.insert(LOBBY.to_string());
                // Nicks: the broker's list is the truth, but a grant younger than two
                // ticks may be for a rename the snapshot did not see yet.
                let keep: HashSet<String> =
                    self.users.keys().map(|n| n.to_ascii_lowercase()).collect();
                let grace = self.tick() * 2;
                let now = Instant::now();
                self.owned.retain(|nick, granted| {
                    keep.contains(nick) || now.saturating_duration_since(*granted) < grace
                });
                for nick in keep {
                    self.owned.entry(nick).or_insert(now);
                }
            }
            _ => {}
        }
    }

    async fn connect(&mut self, client: &redis::Client) -> RedisResult<Link> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.command_timeout()));
        let conn = deadline(
            "connect",
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let pubsub = deadline(
            "subscriber connect",
            CONNECT_TIMEOUT,
            client.get_async_pubsub(),
        )
        .await?;
        let (sink, stream) = pubsub.split();
        let (ended_tx, ended) = flume::bounded(1);
        let receiver = Receiver {
            node: self.node.clone(),
            room_prefix: self.keys.room_channel_prefix.clone(),
            node_channel: self.keys.node_channel.clone(),
            max_line: self.config.max_line,
            broker_tx: self.broker_tx.clone(),
            metrics: self.shared.metrics.clone(),
        };
        rt::spawn(async move {
            receiver.run(stream).await;
            drop(ended_tx);
        });
        Ok(Link {
            conn,
            sink,
            ended,
            subscribed: HashSet::new(),
        })
    }

    /// Runs a connected link until it fails or the broker stops.
    async fn serve(&mut self, mut link: Link) -> Ended {
        if let Err(e) = self.setup(&mut link).await {
            return Ended::Lost(e);
        }
        self.set_state(LinkState::Up).await;
        let mut next_tick = Instant::now() + self.tick();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let got = {
                let lines = self.lines.recv_async().fuse();
                let control = self.control.recv_async().fuse();
                let ended = link.ended.recv_async().fuse();
                let timer = rt::sleep(wait).fuse();
                futures::pin_mut!(lines, control, ended, timer);
                // (Biased: a due tick first, so no load starves the renewal of the leases;
                // then requests before lines, as the broker sent them: a member write goes
                // out before the lines about it.)
                futures::select_biased! {
                    _ = ended => return Ended::Lost("the subscriber connection closed".into()),
                    () = timer => None,
                    r = control => Some(r),
                    r = lines => Some(r),
                }
            };
            let result = match got {
                None => {
                    next_tick = Instant::now() + self.tick();
                    self.on_tick(&mut link).await.map(|()| true)
                }
                Some(Err(_)) => {
                    self.goodbye(&mut link).await;
                    return Ended::Stop;
                }
                Some(Ok(first)) => self.batch(&mut link, first).await,
            };
            match result {
                Ok(true) => {}
                Ok(false) => return Ended::Stop,
                Err(e) => return Ended::Lost(e),
            }
        }
    }

    /// After a (re)connect: subscribe, announce this node, re-take its users' nicks, and
    /// write its users; then take a block of guest numbers.
    async fn setup(&mut self, link: &mut Link) -> RedisResult<()> {
        let limit = self.command_timeout();
        let mut channels = vec![self.keys.node_channel.clone()];
        channels.extend(self.rooms.iter().map(|r| self.keys.room(r)));
        deadline("subscribe", limit, link.sink.subscribe(&channels)).await?;
        link.subscribed = self.rooms.clone();
        self.renew(link).await?;
        self.write_users(link).await?;
        self.refill_guests(link).await
    }

    /// One pipeline for a run of queued requests: lines published, membership written
    /// and nicks released in the order they came; then claims, `/msg`s and one answer for
    /// all the views asked. `Ok(false)`: the broker asked for goodbye, which is said.
    async fn batch(&mut self, link: &mut Link, first: BusRequest) -> RedisResult<bool> {
        let mut pipe = redis::pipe();
        let mut commands = 0usize;
        let mut published = 0u64;
        let mut later = Vec::new();
        let mut views = Vec::new();
        let mut release = Vec::new();
        let mut stop = None;
        let mut next = Some(first);
        let mut taken = 0;
        // The lines taken are dealt with when this returns, whether they went out or not.
        let mut unsent = Unsent(0, self.shared.clone());
        while let Some(request) = next.take() {
            taken += 1;
            match request {
                BusRequest::Room { room, line } => {
                    let body = line.strip_suffix(b"\n").unwrap_or(&line);
                    let mut payload = Vec::with_capacity(self.node.len() + 1 + body.len());
                    payload.extend_from_slice(self.node.as_bytes());
                    payload.push(b'\t');
                    payload.extend_from_slice(body);
                    pipe.publish(self.keys.room(&room), payload).ignore();
                    commands += 1;
                    published += 1;
                    unsent.0 += 1;
                }
                BusRequest::Member { nick, room } => {
                    match &room {
                        Some(room) => pipe.hset(&self.keys.users, &nick, room).ignore(),
                        None => pipe.hdel(&self.keys.users, &nick).ignore(),
                    };
                    commands += 1;
                    self.record(BusRequest::Member { nick, room });
                }
                // (Subscribed or unsubscribed below, by what the rooms are at the end of
                // the run: a room left and entered again in one run stays subscribed.)
                other @ (BusRequest::Open { .. } | BusRequest::Close { .. }) => self.record(other),
                BusRequest::Release { nick } => {
                    let lower = nick.to_ascii_lowercase();
                    if self.owned.remove(&lower).is_some() {
                        release.push(self.keys.nick(&lower));
                    }
                }
                BusRequest::View { id, query } => views.push((id, query)),
                BusRequest::Close_ { done } => {
                    stop = Some(done);
                    break;
                }
                BusRequest::Hold { nick } => {
                    // Held from now on (a release later in this run lets go of it, and
                    // then it is not taken below).
                    self.owned.insert(nick.to_ascii_lowercase(), Instant::now());
                    later.push(BusRequest::Hold { nick });
                }
                other @ (BusRequest::Claim { .. } | BusRequest::Private { .. }) => {
                    later.push(other)
                }
                other @ BusRequest::Snapshot { .. } => self.record(other),
            }
            if taken < BATCH {
                next = self
                    .control
                    .try_recv()
                    .or_else(|_| self.lines.try_recv())
                    .ok();
            }
        }
        let limit = self.command_timeout();
        // Subscribed before the lines go out, so a room's first member hears the answers.
        let subscribe: Vec<String> = self
            .rooms
            .difference(&link.subscribed)
            .map(|r| self.keys.room(r))
            .collect();
        let unsubscribe: Vec<String> = link
            .subscribed
            .difference(&self.rooms)
            .map(|r| self.keys.room(r))
            .collect();
        link.subscribed.clone_from(&self.rooms);
        if !subscribe.is_empty() {
            deadline("subscribe", limit, link.sink.subscribe(&subscribe)).await?;
        }
        if !release.is_empty() {
            pipe.add_command(script_cmd(RELEASE_SCRIPT, &release, &[&self.node]))
                .ignore();
            commands += 1;
        }
        if commands > 0 {
            deadline("publish", limit, pipe.query_async::<()>(&mut link.conn)).await?;
            self.shared.metrics.cluster_out.add(published);
        }
        if !unsubscribe.is_empty() {
            deadline("unsubscribe", limit, link.sink.unsubscribe(&unsubscribe)).await?;
        }
        for request in later {
            match request {
                BusRequest::Claim { id, nick } => self.claim(link, id, nick).await?,
                BusRequest::Hold { nick } => {
                    if self.owned.contains_key(&nick.to_ascii_lowercase()) {
                        self.hold(link, vec![nick]).await?
                    }
                }
                BusRequest::Private { id, to, line } => self.private(link, id, to, line).await?,
                other => self.record(other),
            }
        }
        if !views.is_empty() {
            let users = self.others(link).await?;
            let event = BusEvent::View {
                asked: views,
                remote: Some(users),
            };
            self.tell(event).await;
        }
        if let Some(done) = stop {
            self.goodbye(link).await;
            let _ = done.send(());
            return Ok(false);
        }
        Ok(true)
    }

    /// `/nick`: takes the nick if it is free or already this node's.
    async fn claim(&mut self, link: &mut Link, id: ClientId, nick: String) -> RedisResult<()> {
        let key = self.keys.nick(&nick);
        let cmd = script_cmd(
            HOLD_SCRIPT,
            &[key],
            &[&self.node, &self.lease_ms().to_string()],
        );
        let lost: Vec<usize> = deadline(
            "claim",
            self.command_timeout(),
            cmd.query_async(&mut link.conn),
        )
        .await?;
        let granted = lost.is_empty();
        if granted {
            self.owned.insert(nick.to_ascii_lowercase(), Instant::now());
        }
        self.tell(BusEvent::Claimed { id, nick, granted }).await;
        Ok(())
    }

    /// Takes or renews `nicks` for this node; those another node holds are told to the
    /// broker as lost (it renames their users) and forgotten.
    async fn hold(&mut self, link: &mut Link, nicks: Vec<String>) -> RedisResult<()> {
        let lease = self.lease_ms().to_string();
        for chunk in nicks.chunks(RENEW_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|n| self.keys.nick(n)).collect();
            let cmd = script_cmd(HOLD_SCRIPT, &keys, &[&self.node, &lease]);
            let lost: Vec<usize> = deadline(
                "renew nicks",
                self.command_timeout(),
                cmd.query_async(&mut link.conn),
            )
            .await?;
            for i in lost {
                let Some(nick) = i.checked_sub(1).and_then(|i| chunk.get(i)) else {
                    continue;
                };
                self.owned.remove(&nick.to_ascii_lowercase());
                log::info!(nick = nick.as_str(); "chat: a local user's nick is held by another node");
                self.tell(BusEvent::NickLost { nick: nick.clone() }).await;
            }
            for nick in chunk {
                if let Some(granted) = self.owned.get_mut(&nick.to_ascii_lowercase()) {
                    *granted = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Renews every nick this node holds, and its liveness.
    async fn renew(&mut self, link: &mut Link) -> RedisResult<()> {
        let nicks: Vec<String> = self.owned.keys().cloned().collect();
        // Nicks first: a node seen alive has its users' nicks.
        self.hold(link, nicks).await?;
        let lease = self.lease_ms();
        let keys = [
            self.keys.alive.clone(),
            self.keys.nodes.clone(),
            self.keys.users.clone(),
        ];
        let cmd = script_cmd(
            RENEW_SCRIPT,
            &keys,
            &[&self.node, &lease.to_string(), &(3 * lease).to_string()],
        );
        deadline(
            "renew",
            self.command_timeout(),
            cmd.query_async::<()>(&mut link.conn),
        )
        .await
    }

    /// Rewrites this node's users hash from what it holds (after a reconnect, when the
    /// hash may have expired or be stale).
    async fn write_users(&mut self, link: &mut Link) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic().del(&self.keys.users).ignore();
        let users: Vec<(&String, &String)> = self.users.iter().collect();
        for chunk in users.chunks(RENEW_CHUNK) {
            pipe.hset_multiple(&self.keys.users, chunk).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&self.keys.users)
            .arg(3 * self.lease_ms())
            .ignore();
        deadline(
            "write users",
            self.command_timeout(),
            pipe.query_async::<()>(&mut link.conn),
        )
        .await
    }

    /// Takes another block of guest numbers when fewer than half a block are left.
    async fn refill_guests(&mut self, link: &mut Link) -> RedisResult<()> {
        let left = {
            let g = self.shared.guests.lock().unwrap_or_else(|e| e.into_inner());
            g.1.saturating_sub(g.0)
        };
        if left >= GUEST_BLOCK / 2 {
            return Ok(());
        }
        let cmd = script_cmd(
            GUESTS_SCRIPT,
            &[self.keys.guest_seq()],
            &[&GUEST_BLOCK.to_string()],
        );
        let end: Option<i64> = deadline(
            "guest numbers",
            self.command_timeout(),
            cmd.query_async(&mut link.conn),
        )
        .await?;
        // Junk there (not an integer, at its limit, or not past a block) is another
        // writer's doing, not a lost link: guests are numbered here meanwhile (a clash with
        // another node's guest is found and mended like any nick clash).
        let Some(end) = end
            .and_then(|e| u64::try_from(e).ok())
            .filter(|e| *e >= GUEST_BLOCK)
        else {
            let now = Instant::now();
            if self
                .guests_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
            {
                self.guests_logged = Some(now);
                log::warn!(key = self.keys.guest_seq().as_str(); "chat: the cluster's guest sequence is unusable (not a positive integer); numbering guests locally");
            }
            return Ok(());
        };
        let mut g = self.shared.guests.lock().unwrap_or_else(|e| e.into_inner());
        *g = (end - GUEST_BLOCK + 1, end + 1);
        Ok(())
    }

    /// `/msg` to a nick held elsewhere: published to its node's channel; if no node holds
    /// it, or its node is not listening, the sender is told there is no such nick.
    async fn private(
        &mut self,
        link: &mut Link,
        id: ClientId,
        to: String,
        line: Line,
    ) -> RedisResult<()> {
        let limit = self.command_timeout();
        let cmd = script_cmd(OWNER_SCRIPT, &[self.keys.nick(&to)], &[]);
        let owner: Option<Vec<u8>> =
            deadline("nick lookup", limit, cmd.query_async(&mut link.conn)).await?;
        let owner = owner.as_deref().and_then(valid_node);
        let delivered = match owner.filter(|node| *node != self.node) {
            Some(node) => {
                let body = line.strip_suffix(b"\n").unwrap_or(&line);
                let mut payload = Vec::with_capacity(8 + to.len() + body.len());
                payload.extend_from_slice(b"msg\t");
                payload.extend_from_slice(to.as_bytes());
                payload.push(b'\t');
                payload.extend_from_slice(body);
                let listeners: u64 = deadline(
                    "publish",
                    limit,
                    link.conn.publish(self.keys.node_channel_of(&node), payload),
                )
                .await?;
                listeners > 0
            }
            None => false,
        };
        if delivered {
            self.shared.metrics.cluster_out.inc();
        } else {
            self.tell(BusEvent::Reply {
                id,
                line: no_such_nick(&to),
            })
            .await;
        }
        Ok(())
    }

    /// Other nodes in the node set (at most [`MAX_NODES`], a random sample if it holds
    /// more): each with whether it is alive and whether its users hash exists. Members that
    /// cannot be node ids are removed from the set (junk), and counted.
    async fn nodes(&mut self, link: &mut Link) -> RedisResult<Vec<(String, bool, bool)>> {
        let limit = self.command_timeout();
        let cmd = script_cmd(
            NODES_SCRIPT,
            std::slice::from_ref(&self.keys.nodes),
            &[
                &MAX_NODES.to_string(),
                &self.keys.prefix,
                &MAX_NODE_ID.to_string(),
            ],
        );
        let reply: Vec<redis::Value> =
            deadline("nodes", limit, cmd.query_async(&mut link.conn)).await?;
        let mut reply = reply.into_iter();
        let total = match reply.next() {
            Some(redis::Value::Int(n)) => n,
            _ => 0,
        };
        if total > MAX_NODES as i64 {
            let now = Instant::now();
            if self
                .crowd_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
            {
                self.crowd_logged = Some(now);
                log::warn!(nodes = total, looked_at = MAX_NODES; "chat: the cluster's node set is oversized (junk?); looking at a random sample each time");
            }
        }
        let mut nodes = Vec::new();
        let mut junk = Vec::new();
        let rest: Vec<redis::Value> = reply.collect();
        for triple in rest.chunks(3) {
            let [redis::Value::BulkString(name), alive, users] = triple else {
                continue;
            };
            let flag = |v: &redis::Value| matches!(v, redis::Value::Int(1));
            match valid_node(name) {
                Some(node) if node == self.node => {}
                Some(node) => nodes.push((node, flag(alive), flag(users))),
                None => junk.push(name.clone()),
            }
        }
        if !junk.is_empty() {
            self.shared.metrics.cluster_dropped[DROP_INVALID].add(junk.len() as u64);
            deadline(
                "forget junk nodes",
                limit,
                link.conn.srem::<_, _, ()>(&self.keys.nodes, junk),
            )
            .await?;
        }
        Ok(nodes)
    }

    /// The users (nick, room) of each of `nodes`, bounded ([`MAX_NODE_USERS`],
    /// [`MAX_REMOTE_USERS`], names of at most [`protocol::MAX_NAME`] bytes): what is not a
    /// valid name is left out, and counted.
    async fn members_of(
        &mut self,
        link: &mut Link,
        nodes: &[&String],
    ) -> RedisResult<Vec<Vec<(String, String)>>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.keys.users_of(n)).collect();
        let cmd = script_cmd(
            MEMBERS_SCRIPT,
            &keys,
            &[
                &MAX_NODE_USERS.to_string(),
                &MAX_REMOTE_USERS.to_string(),
                &protocol::MAX_NAME.to_string(),
            ],
        );
        let users: Vec<Vec<(Vec<u8>, Vec<u8>)>> = deadline(
            "members",
            self.command_timeout(),
            cmd.query_async(&mut link.conn),
        )
        .await?;
        Ok(users
            .into_iter()
            .map(|users| valid_members(users, &self.shared.metrics))
            .collect())
    }

    /// Every other alive node's users (nick, room).
    async fn others(&mut self, link: &mut Link) -> RedisResult<Vec<(String, String)>> {
        let nodes = self.nodes(link).await?;
        let alive: Vec<&String> = nodes
            .iter()
            .filter(|(_, alive, _)| *alive)
            .map(|(n, _, _)| n)
            .collect();
        let users = self.members_of(link, &alive).await?;
        Ok(users.into_iter().flatten().collect())
    }

    /// Every tick: renew, look for lost nodes, keep guest numbers in stock. The users of
    /// every node lost in one tick are told in one [`BusEvent::NodeLost`].
    async fn on_tick(&mut self, link: &mut Link) -> RedisResult<()> {
        self.renew(link).await?;
        let limit = self.command_timeout();
        let nodes = self.nodes(link).await?;
        let mut lost = Vec::new();
        let mut gone = Vec::new();
        for (node, alive, has_users) in &nodes {
            if *alive {
                // (Bounded: beyond it, a node joining now is not watched for its loss.)
                if self.seen_alive.len() < MAX_NODES || self.seen_alive.contains(node) {
                    self.seen_alive.insert(node.clone());
                }
                continue;
            }
            if self.seen_alive.remove(node) {
                lost.push(node);
            }
            if !has_users {
                // Gone for good: its members' hash has expired too.
                gone.push(node);
            }
        }
        if !lost.is_empty() {
            let users: Vec<(String, String)> = self
                .members_of(link, &lost)
                .await?
                .into_iter()
                .flatten()
                .collect();
            for node in &lost {
                log::warn!(node = node.as_str(); "chat: cluster node lost (its lease ran out)");
            }
            self.tell(BusEvent::NodeLost {
                node: lost
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                users,
            })
            .await;
        }
        if !gone.is_empty() {
            deadline(
                "forget nodes",
                limit,
                link.conn.srem::<_, _, ()>(&self.keys.nodes, gone),
            )
            .await?;
        }
        self.refill_guests(link).await
    }

    /// The broker is stopping: every room with members here hears that they left, and
    /// this node lets go of its nicks, its users and its liveness. Best effort, within
    /// [`GOODBYE_TIMEOUT`].
    async fn goodbye(&mut self, link: &mut Link) {
        let mut by_room: HashMap<&str, Vec<&str>> = HashMap::new();
        for (nick, room) in &self.users {
            by_room.entry(room.as_str()).or_default().push(nick);
        }
        let mut pipe = redis::pipe();
        for (room, nicks) in &by_room {
            let lines: Vec<String> = if nicks.len() <= super::broker::NAMED_DEPARTURES {
                nicks
                    .iter()
                    .map(|n| format!("* {n} left (server shutting down)"))
                    .collect()
            } else {
                vec![format!(
                    "* {} users left (server shutting down)",
                    nicks.len()
                )]
            };
            for line in lines {
                pipe.publish(self.keys.room(room), format!("{}\t{line}", self.node))
                    .ignore();
            }
        }
        let nicks: Vec<String> = self.owned.keys().map(|n| self.keys.nick(n)).collect();
        for chunk in nicks.chunks(RENEW_CHUNK) {
            pipe.add_command(script_cmd(RELEASE_SCRIPT, chunk, &[&self.node]))
                .ignore();
        }
        pipe.del(&self.keys.users)
            .ignore()
            .del(&self.keys.alive)
            .ignore()
            .srem(&self.keys.nodes, &self.node)
            .ignore();
        match deadline(
            "goodbye",
            GOODBYE_TIMEOUT,
            pipe.query_async::<()>(&mut link.conn),
        )
        .await
        {
            Ok(()) => {
                log::info!(node = self.node.as_str(), nicks = nicks.len(); "chat: left the cluster")
            }
            Err(e) => {
                log::warn!(error = e.as_str(); "chat: leaving the cluster failed (its leases will run out)")
            }
        }
        self.owned.clear();
    }
}

/// An `EVAL` of `script` over `keys` with `args`.
fn script_cmd(script: &str, keys: &[String], args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// `name` if it can be a node id (`NAME.RANDOM`: letters, digits, `-`, `_`, `.`, at most
/// [`MAX_NODE_ID`] bytes).
fn valid_node(name: &[u8]) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_ID
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
    ok.then(|| String::from_utf8_lossy(name).into_owned())
}

fn no_such_nick(nick: &str) -> Line {
    Line::from(format!("! no such nick: {nick}\n").into_bytes())
}

/// The (nick, room) pairs of a users hash that are valid names; others are counted and
/// left out.
fn valid_members(users: Vec<(Vec<u8>, Vec<u8>)>, metrics: &ChatMetrics) -> Vec<(String, String)> {
    let mut valid = Vec::with_capacity(users.len());
    for (nick, room) in users {
        match (String::from_utf8(nick), String::from_utf8(room)) {
            (Ok(nick), Ok(room))
                if protocol::nick_problem(&nick).is_none() && protocol::valid_name(&room) =>
            {
                valid.push((nick, room.to_ascii_lowercase()));
            }
            _ => metrics.cluster_dropped[DROP_INVALID].inc(),
        }
    }
    valid
}

/// Reads the subscriber connection: each message checked as untrusted input and handed
/// to the broker.
struct Receiver {
    node: String,
    room_prefix: String,
    node_channel: String,
    max_line: usize,
    broker_tx: flume::Sender<BrokerMsg>,
    metrics: Arc<ChatMetrics>,
}

impl Receiver {
    async fn run(self, mut stream: redis::aio::PubSubStream) {
        let mut invalid_logged: Option<Instant> = None;
        // Waited for room in the broker's mailbox since `window` began (a second at most).
        let mut window = Instant::now();
        let mut waited = Duration::ZERO;
        while let Some(msg) = stream.next().await {
            let event = self.parse(msg.get_channel_name(), msg.get_payload_bytes());
            let event = match event {
                Parsed::Event(event) => event,
                Parsed::Own => continue,
                Parsed::Invalid(why) => {
                    self.metrics.cluster_dropped[DROP_INVALID].inc();
                    if invalid_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        invalid_logged = Some(Instant::now());
                        log::warn!(channel = msg.get_channel_name(), why = why; "chat: a cluster message dropped (invalid)");
                    }
                    continue;
                }
            };
            self.metrics.cluster_in.inc();
            let msg = BrokerMsg::Bus(Box::new(event));
            let msg = match self.broker_tx.try_send(msg) {
                Ok(()) => continue,
                Err(flume::TrySendError::Disconnected(_)) => break,
                Err(flume::TrySendError::Full(msg)) => msg,
            };
            let now = Instant::now();
            if now.duration_since(window) >= Duration::from_secs(1) {
                window = now;
                waited = Duration::ZERO;
            }
            let budget = INBOUND_WAIT.saturating_sub(waited);
            if budget.is_zero() {
                self.metrics.cluster_dropped[DROP_INBOUND].inc();
                continue;
            }
            let sent = rt::timeout(budget, self.broker_tx.send_async(msg)).await;
            waited += now.elapsed();
            match sent {
                Some(Ok(())) => {}
                Some(Err(_)) => break,
                None => self.metrics.cluster_dropped[DROP_INBOUND].inc(),
            }
        }
    }

    /// What a message from Redis means, if anything.
    fn parse(&self, channel: &str, payload: &[u8]) -> Parsed {
        if payload.len() > self.max_line + 2 * protocol::MAX_NAME + 128 {
            return Parsed::Invalid("too long");
        }
        if let Some(room) = channel.strip_prefix(&self.room_prefix) {
            if !protocol::valid_name(room) || room != room.to_ascii_lowercase() {
                return Parsed::Invalid("bad room");
            }
            let Some(tab) = payload.iter().position(|&b| b == b'\t') else {
                return Parsed::Invalid("no origin");
            };
            if &payload[..tab] == self.node.as_bytes() {
                return Parsed::Own;
            }
            let Some(line) = clean_line(&payload[tab + 1..]) else {
                return Parsed::Invalid("empty line");
            };
            return Parsed::Event(BusEvent::Room {
                room: room.to_string(),
                line,
            });
        }
        if channel == self.node_channel {
            let mut fields = payload.splitn(3, |&b| b == b'\t');
            let (Some(b"msg"), Some(to), Some(text)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Parsed::Invalid("not a msg");
            };
            let Ok(to) = std::str::from_utf8(to) else {
                return Parsed::Invalid("bad nick");
            };
            if protocol::nick_problem(to).is_some() {
                return Parsed::Invalid("bad nick");
            }
            let Some(line) = clean_line(text) else {
                return Parsed::Invalid("empty line");
            };
            return Parsed::Event(BusEvent::Private {
                to: to.to_string(),
                line,
            });
        }
        Parsed::Invalid("unknown channel")
    }
}

enum Parsed {
    Event(BusEvent),
    Own,
    Invalid(&'static str),
}

/// A remote line as a local one: sanitised (no control characters, valid UTF-8), with
/// its `\n`; `None` if nothing is left.
fn clean_line(bytes: &[u8]) -> Option<Line> {
    let text = protocol::sanitize(bytes);
    if text.trim().is_empty() {
        return None;
    }
    let mut line = text.into_bytes();
    line.push(b'\n');
    Some(Line::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        assert_eq!(redact("redis://u:secret@h:6379/2"), "redis://***@h:6379/2");
        assert_eq!(redact("rediss://:p@ss@h/0"), "rediss://***@h/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("redis://h:6379/x@y"), "redis://h:6379/x@y");
    }

    fn receiver() -> Receiver {
        let (broker_tx, _rx) = flume::bounded(1);
        Receiver {
            node: "a.1".into(),
            room_prefix: "p:room:".into(),
            node_channel: "p:node:a.1".into(),
            max_line: 100,
            broker_tx,
            metrics: Default::default(),
        }
    }

    #[test]
    fn remote_messages_are_checked_as_untrusted_input() {
        let r = receiver();
        let room = |c: &str, p: &[u8]| match r.parse(c, p) {
            Parsed::Event(BusEvent::Room { room, line }) => Ok((room, line.to_vec())),
            Parsed::Own => Err("own"),
            Parsed::Invalid(why) => Err(why),
            _ => Err("other"),
        };
        assert_eq!(
            room("p:room:dev", b"b.2\t<bob> hi\x1b[2J\x07"),
            Ok(("dev".into(), b"<bob> hi[2J\n".to_vec()))
        );
        assert_eq!(room("p:room:dev", b"a.1\t<me> hi"), Err("own"));
        assert_eq!(room("p:room:Dev", b"b.2\thi"), Err("bad room"));
        assert_eq!(room("p:room:a b", b"b.2\thi"), Err("bad room"));
        assert_eq!(room("p:room:dev", b"no origin"), Err("no origin"));
        assert_eq!(room("p:room:dev", b"b.2\t\r\n"), Err("empty line"));
        assert_eq!(room("p:room:dev", &[b'x'; 1000]), Err("too long"));
        assert_eq!(room("p:elsewhere", b"b.2\thi"), Err("unknown channel"));
        assert_eq!(
            room("p:room:dev", b"b.2\t\xff\xfe<bob> caf\xc3\xa9"),
            Ok((
                "dev".into(),
                "\u{fffd}\u{fffd}<bob> café\n".as_bytes().to_vec()
            ))
        );
        match r.parse("p:node:a.1", b"msg\tbob\t*al* hi\n") {
            Parsed::Event(BusEvent::Private { to, line }) => {
                assert_eq!(to, "bob");
                assert_eq!(&line[..], b"*al* hi\n");
            }
            _ => panic!("a msg is a msg"),
        }
        assert!(matches!(
            r.parse("p:node:a.1", b"msg\tb b\thi"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            r.parse("p:node:a.1", b"say\tbob\thi"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            r.parse("p:node:a.1", b"msg\tbob"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn config_errors_name_the_option_and_hide_the_password() {
        let config = ClusterConfig {
            url: "http://u:hunter2@h".into(),
            node_name: "n".into(),
            prefix: DEFAULT_PREFIX.into(),
            lease: DEFAULT_LEASE,
            queue: DEFAULT_QUEUE,
            max_line: 4096,
        };
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("--cluster") && !e.contains("hunter2"), "{e}");
        let bad_prefix = ClusterConfig {
            url: "redis://h".into(),
            prefix: "a b".into(),
            ..config.clone()
        };
        assert!(
            bad_prefix
                .check()
                .unwrap_err()
                .to_string()
                .contains("--cluster-prefix")
        );
        let short = ClusterConfig {
            url: "redis://h".into(),
            lease: Duration::from_millis(10),
            ..config
        };
        assert!(
            short
                .check()
                .unwrap_err()
                .to_string()
                .contains("--cluster-lease")
        );
    }
}
