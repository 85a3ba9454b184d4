//! A role with an actor of its own, in one file: a tiny in-memory key-value store shared
//! by every client, which pushes each change of a key to the clients watching it.
//!
//! Protocol: one command a line (`\n` or `\r\n`; command words in any case).
//!
//! ```text
//!   SET key value   OK                 (the value is the rest of the line)
//!   GET key         VALUE value | NIL
//!   DEL key         DELETED | NIL
//!   WATCH key       WATCHING key       then, at each change: CHANGED key value | DELETED key
//!   QUIT            BYE                and the server closes the connection
//!   anything wrong  ERR reason         (unknown command, usage, line/key/value too long,
//!                                       too many keys, too many watches)
//! ```
//!
//! The store is an actor: one task owns the map and the watchers; sessions ask it over a
//! bounded mailbox and get each answer over a oneshot. It never waits on a client: a
//! change is pushed to each watcher with [`Pusher::push`] (a `try_send`), and a watcher
//! whose queue is full is too slow and is closed, so a client that never reads cannot
//! hold up the store or anyone else.
//!
//! ```text
//!   client ─▶ reader ─▶ KvSession ──store_tx (bounded)──▶ Store ──push──▶ watchers' writers
//!                         │   ▲                             │
//!                         │   └────── reply (oneshot) ──────┘
//!                         └──client.send──▶ writer ─▶ client
//! ```
//!
//! Try it: `cargo run --example kv -- --listen 127.0.0.1:7400`, then `nc 127.0.0.1 7400`
//! in two terminals: `WATCH color` in one, `SET color blue` in the other.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;
use futures::channel::oneshot;
use switchboard::role::{AsyncSession, Client, Flow, Lines, NewSession, Pusher, Role};
use switchboard::service::{self, Addrs, ServerArgs, Verbosity};

/// Requests the store holds before sessions wait to send more: a client whose commands
/// come faster than the store answers is slowed (its session waits, so it is not read).
const STORE_MAILBOX: usize = 1024;

/// Lines a client's writer holds, replies and pushes alike: how far a watcher may fall
/// behind a busy key before it is closed as too slow. Each is at most a key and a value,
/// so this bounds what one client can queue on the server.
const CLIENT_MAILBOX: usize = 256;

/// The store's caps; every one bounds memory a client could otherwise grow.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Keys stored at once; a SET of a new key beyond it is refused.
    pub max_keys: usize,
    /// Bytes in a key.
    pub max_key: usize,
    /// Bytes in a value.
    pub max_value: usize,
    /// (key, client) watch pairs at once, over all clients.
    pub max_watches: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: 10_000,
            max_key: 256,
            max_value: 4096,
            max_watches: 10_000,
        }
    }
}

impl Limits {
    /// The longest line worth reading: a SET of the longest key and value. A longer one
    /// is refused as soon as it passes this, without being held.
    pub fn max_line(&self) -> usize {
        "SET ".len() + self.max_key + 1 + self.max_value
    }
}

/// A command, parsed from one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Del {
        key: Vec<u8>,
    },
    Watch {
        key: Vec<u8>,
    },
    Quit,
    /// An empty line: nothing to answer.
    Nothing,
}

/// Parses one line (without its line ending); the error is the reason sent after `ERR`.
pub fn parse(line: &[u8], limits: &Limits) -> Result<Command, &'static str> {
    let (word, rest) = split_word(line);
    let (key, value) = split_word(rest);
    let word = word.to_ascii_uppercase();
    let (usage, takes_value) = match word.as_slice() {
        b"" => return Ok(Command::Nothing),
        b"QUIT" if rest.is_empty() => return Ok(Command::Quit),
        b"QUIT" => return Err("usage: QUIT"),
        b"SET" => ("usage: SET key value", true),
        b"GET" => ("usage: GET key", false),
        b"DEL" => ("usage: DEL key", false),
        b"WATCH" => ("usage: WATCH key", false),
        _ => return Err("unknown command"),
    };
    if key.is_empty() || value.is_empty() == takes_value {
        return Err(usage);
    }
    if key.len() > limits.max_key {
        return Err("key too long");
    }
    if value.len() > limits.max_value {
        return Err("value too long");
    }
    let (key, value) = (key.to_vec(), value.to_vec());
    Ok(match word.as_slice() {
        b"SET" => Command::Set { key, value },
        b"GET" => Command::Get { key },
        b"DEL" => Command::Del { key },
        _ => Command::Watch { key },
    })
}

/// The first space-separated word of `line` and what follows the space after it.
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    let line = line.trim_ascii_start();
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

/// `WORD arg arg…\n` as bytes.
fn reply(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = parts.join(&b' ');
    out.push(b'\n');
    out
}

/// Why the store refused, or could not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    TooManyKeys,
    TooManyWatches,
    /// The store has stopped (the server is going down).
    Stopped,
}

impl StoreError {
    fn reason(self) -> &'static str {
        match self {
            StoreError::TooManyKeys => "too many keys",
            StoreError::TooManyWatches => "too many watches",
            StoreError::Stopped => "server closing",
        }
    }
}

/// What sessions send the store; each request carries where its answer goes.
enum StoreMsg {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        respond_to: oneshot::Sender<Result<(), StoreError>>,
    },
    Get {
        key: Vec<u8>,
        respond_to: oneshot::Sender<Option<Vec<u8>>>,
    },
    Del {
        key: Vec<u8>,
        respond_to: oneshot::Sender<bool>,
    },
    Watch {
        key: Vec<u8>,
        watcher: Pusher,
        respond_to: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The store actor: owns the map and who watches what; no other task sees either.
struct Store {
    limits: Limits,
    entries: HashMap<Vec<u8>, Vec<u8>>,
    watchers: HashMap<Vec<u8>, Vec<Pusher>>,
    /// Pushers in `watchers`, some perhaps of clients gone since (see [`Store::sweep`]).
    watches: usize,
}

/// What sessions hold to talk to the store. The store runs while any handle exists.
#[derive(Clone)]
pub struct StoreHandle {
    store_tx: flume::Sender<StoreMsg>,
}

impl StoreHandle {
    /// Starts a store with `limits` and returns its handle.
    pub fn spawn(limits: Limits) -> Self {
        let (store_tx, store_rx) = flume::bounded(STORE_MAILBOX);
        let store = Store {
            limits,
            entries: HashMap::new(),
            watchers: HashMap::new(),
            watches: 0,
        };
        switchboard::rt::spawn(store.run(store_rx));
        StoreHandle { store_tx }
    }

    /// Stores `value` under `key` and tells the key's watchers.
    pub async fn set(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.ask(|respond_to| StoreMsg::Set {
            key,
            value,
            respond_to,
        })
        .await?
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        self.ask(|respond_to| StoreMsg::Get { key, respond_to })
            .await
    }

    /// Deletes `key` and tells its watchers; whether it was there.
    pub async fn del(&self, key: Vec<u8>) -> Result<bool, StoreError> {
        self.ask(|respond_to| StoreMsg::Del { key, respond_to })
            .await
    }

    /// Pushes every later change of `key` to `watcher` (once, however often it asks).
    pub async fn watch(&self, key: Vec<u8>, watcher: Pusher) -> Result<(), StoreError> {
        self.ask(|respond_to| StoreMsg::Watch {
            key,
            watcher,
            respond_to,
        })
        .await?
    }

    /// Sends a request (waiting for room) and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> StoreMsg,
    ) -> Result<T, StoreError> {
        let (respond_to, answer) = oneshot::channel();
        self.store_tx
            .send_async(request(respond_to))
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)
    }
}

impl Store {
    /// Answers requests in order until every handle is gone.
    async fn run(mut self, store_rx: flume::Receiver<StoreMsg>) {
        while let Ok(msg) = store_rx.recv_async().await {
            // A requester that went away is normal: its answer is dropped.
            match msg {
                StoreMsg::Set {
                    key,
                    value,
                    respond_to,
                } => {
                    let _ = respond_to.send(self.set(key, value));
                }
                StoreMsg::Get { key, respond_to } => {
                    let _ = respond_to.send(self.entries.get(&key).cloned());
                }
                StoreMsg::Del { key, respond_to } => {
                    let existed = self.entries.remove(&key).is_some();
                    if existed {
                        self.notify(&key, reply(&[b"DELETED", &key]));
                    }
                    let _ = respond_to.send(existed);
                }
                StoreMsg::Watch {
                    key,
                    watcher,
                    respond_to,
                } => {
                    let _ = respond_to.send(self.watch(key, watcher));
                }
            }
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        if self.entries.len() >= self.limits.max_keys && !self.entries.contains_key(&key) {
            return Err(StoreError::TooManyKeys);
        }
        self.notify(&key, reply(&[b"CHANGED", &key, &value]));
        self.entries.insert(key, value);
        Ok(())
    }

    fn watch(&mut self, key: Vec<u8>, watcher: Pusher) -> Result<(), StoreError> {
        let watching = self.watchers.get(&key);
        if watching.is_some_and(|w| w.iter().any(|p| p.id() == watcher.id())) {
            return Ok(());
        }
        if self.watches >= self.limits.max_watches {
            self.sweep();
            if self.watches >= self.limits.max_watches {
                return Err(StoreError::TooManyWatches);
            }
        }
        self.watchers.entry(key).or_default().push(watcher);
        self.watches += 1;
        Ok(())
    }

    /// Pushes `line` to everyone watching `key`; forgets those gone or too slow. Pushing
    /// never waits and never calls back into the store, so one slow watcher costs the
    /// others nothing.
    fn notify(&mut self, key: &[u8], line: Vec<u8>) {
        let Some(watching) = self.watchers.get_mut(key) else {
            return;
        };
        let before = watching.len();
        watching.retain(|pusher| pusher.push(line.clone()));
        self.watches -= before - watching.len();
        if watching.is_empty() {
            self.watchers.remove(key);
        }
    }

    /// Forgets the watchers of clients gone since. Only a push finds them otherwise, and
    /// a key that never changes is never pushed to, so this runs when the cap is reached.
    fn sweep(&mut self) {
        self.watchers.retain(|_, watching| {
            watching.retain(|pusher| !pusher.is_gone());
            !watching.is_empty()
        });
        self.watches = self.watchers.values().map(Vec::len).sum();
    }
}

/// The role: a handle to the one store every session shares.
pub struct Kv {
    store: StoreHandle,
    limits: Limits,
}

impl Kv {
    /// A role with its own store, started now.
    pub fn new(limits: Limits) -> Self {
        Kv {
            store: StoreHandle::spawn(limits),
            limits,
        }
    }
}

impl Role for Kv {
    type Session = KvSession;

    fn name(&self) -> &'static str {
        "kv"
    }
}

impl NewSession for Kv {
    fn session(&self, _peer: SocketAddr) -> KvSession {
        KvSession {
            store: self.store.clone(),
            lines: Lines::new(self.limits.max_line()),
            limits: self.limits,
        }
    }
}

/// One client: its unfinished line, and the way to the store.
pub struct KvSession {
    store: StoreHandle,
    lines: Lines,
    limits: Limits,
}

impl AsyncSession for KvSession {
    const MAILBOX: usize = CLIENT_MAILBOX;

    async fn data(&mut self, input: Vec<u8>, client: &Client) -> Flow {
        self.lines.push(&input);
        self.answer(client).await
    }

    async fn end(&mut self, client: &Client) {
        self.lines.finish();
        self.answer(client).await;
    }
}

impl KvSession {
    /// Answers every whole line buffered, in order, each before the next is run.
    async fn answer(&mut self, client: &Client) -> Flow {
        while let Some(line) = self.lines.next() {
            let command = match line {
                Ok(line) => parse(line, &self.limits),
                Err(_) => Err("line too long"),
            };
            let (answer, flow) = match command {
                Ok(command) => self.run(command, client).await,
                Err(why) => (reply(&[b"ERR", why.as_bytes()]), Flow::Continue),
            };
            if client.send(answer).await.is_err() || flow == Flow::Close {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Runs one command: the answer, and whether to go on.
    async fn run(&self, command: Command, client: &Client) -> (Vec<u8>, Flow) {
        let answer = match command {
            Command::Set { key, value } => {
                self.store.set(key, value).await.map(|()| reply(&[b"OK"]))
            }
            Command::Get { key } => self.store.get(key).await.map(|value| match value {
                Some(value) => reply(&[b"VALUE", &value]),
                None => reply(&[b"NIL"]),
            }),
            Command::Del { key } => self
                .store
                .del(key)
                .await
                .map(|existed| reply(&[if existed { b"DELETED" } else { b"NIL" }])),
            Command::Watch { key } => {
                let watching = reply(&[b"WATCHING", &key]);
                self.store
                    .watch(key, client.pusher())
                    .await
                    .map(|()| watching)
            }
            Command::Quit => return (reply(&[b"BYE"]), Flow::Close),
            Command::Nothing => return (Vec::new(), Flow::Continue),
        };
        match answer {
            Ok(answer) => (answer, Flow::Continue),
            Err(StoreError::Stopped) => (reply(&[b"ERR", b"server closing"]), Flow::Close),
            Err(e) => (reply(&[b"ERR", e.reason().as_bytes()]), Flow::Continue),
        }
    }
}

/// A key-value store shared by all clients, with changes pushed to watchers.
#[derive(Parser)]
#[command(name = "kv")]
pub struct Args {
    /// TCP address to serve.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// Most keys stored at once; a SET of a new key beyond it gets `ERR too many keys`.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_keys)]
    pub max_keys: usize,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub verbosity: Verbosity,
}

#[allow(dead_code)] // the tests include this file for `Kv` and `Args`, not `main`
fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let limits = Limits {
        max_keys: args.max_keys,
        ..Limits::default()
    };
    let addrs = Addrs::tcp(&args.listen);
    service::serve_role(Kv::new(limits), addrs, &args.server, args.verbosity)
}
