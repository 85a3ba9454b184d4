//! Per-client limits, checked at accept: `--max-conns-per-ip N` (connections one client
//! may hold open at once) and `--conn-rate-per-ip N/DURATION` (a token bucket: N tokens,
//! refilled at N per DURATION; each connection admitted takes one).
//!
//! **Who is a client.** An IPv4 address is one client, and so is an IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`: the same IPv4 client on a dual-stack listener). An IPv6
//! client is its address cut to `--per-ip-prefix-v6` bits (64 by default: a host is
//! usually given a whole /64, and could otherwise take a fresh address per connect).
//! The peer is the one the accept loop sees: behind the proxy's `--accept-proxy` that is
//! the balancer, so every client it forwards shares one count and one bucket.
//!
//! **The table.** One per service, in its [`Stats`](crate::net::stats::Stats): shared by
//! every accept loop of the service (chat's TCP and TLS listeners, the proxy's several
//! `--listen` and its `--threads`) and kept across `serve`'s reloads, so a new generation
//! sees the connections an old one still has open. One mutex around a `HashMap`, held for
//! a lookup and a few arithmetic operations per accept (and, rarely, a sweep); nothing is
//! awaited under it and nothing is logged under it.
//!
//! **Bounded memory.** At most [`MAX_TRACKED`] clients. A client is forgotten once it has
//! no connection open and its bucket is full again: at once when its last connection
//! closes with a full bucket, otherwise by a sweep (every [`SWEEP_EVERY`] when a new
//! client comes, and whenever the table is full). A full table first drops those; if
//! fewer than an eighth go, it drops clients with nothing open, fullest bucket first (the
//! ones whose limit it forgets the least), down to seven eighths. Clients with
//! connections open are never dropped (their count must stay right). If every tracked
//! client has connections open, a new client is admitted *untracked* (no per-client
//! limit for it; `--max-conns` still holds; a warning says so, at most once a second,
//! with how many) and the next try at room is a second later:
//! the table never grows past its bound and never refuses everyone.
//!
//! **Refusals.** Closed at accept with nothing sent (unlike `--max-conns`, no role's
//! notice: a flood would get a task and a write per try), counted in
//! `Stats::refused.per_ip_conns` / `per_ip_rate`, and logged at most once per second per
//! reason: the line says how many were refused since the last one and which client was
//! refused most. A tally left when the flood stops is logged a second after its line.
//! Try it: `switchboard echo --max-conns-per-ip 2 --conn-rate-per-ip 5/1s`, then
//! `for i in 1 2 3; do nc 127.0.0.1 7 & done`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::net::duration::parse_duration;
use crate::net::stats::Stats;

/// Clients tracked at most, per service: about 100 bytes each with the map's overhead,
/// so the table stays under 8 MiB however many addresses come.
pub const MAX_TRACKED: usize = 65_536;

/// How often, at most, a new client's arrival sweeps out the clients that may be
/// forgotten (a full table sweeps at once).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// After a full table found no room (every client has connections open), how long new
/// clients are admitted untracked before the next sweep: a sweep is a pass over the
/// whole table, which must not happen per accept.
pub const FULL_HOLD: Duration = Duration::from_secs(1);

/// At most one log line per reason per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// The per-client limits of one accept loop (from [`ServerArgs`](crate::service::ServerArgs)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerIpLimits {
    /// Connections one client may have open at once; 0 = no limit.
    pub max_conns: usize,
    /// New connections one client may open, as a token bucket; `None` = no limit.
    pub rate: Option<Rate>,
    /// Bits of an IPv6 address that name a client (1..=128).
    pub v6_prefix: u8,
}

impl Default for PerIpLimits {
    fn default() -> Self {
        PerIpLimits {
            max_conns: 0,
            rate: None,
            v6_prefix: 64,
        }
    }
}

impl PerIpLimits {
    /// Whether any per-client limit is set (otherwise the table is never touched).
    pub fn is_on(&self) -> bool {
        self.max_conns > 0 || self.rate.is_some()
    }
}

/// `N/DURATION`: N connections per DURATION, with a burst of N.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens in a full bucket, and tokens added per `per`.
    pub count: u32,
    /// The refill period.
    pub per: Duration,
}

impl Rate {
    /// Tokens added per second.
    fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As it would be typed: 10/1s, 100/1m, 5/250ms; under a whole millisecond,
        // 5/0.5ms (not 5/0h: 0 is a multiple of an hour too).
        let (ms, count) = (self.per.as_millis(), self.count);
        if !self.per.subsec_nanos().is_multiple_of(1_000_000) {
            let ms = self.per.as_nanos() as f64 / 1e6;
            return write!(f, "{count}/{ms}ms");
        }
        match ms {
            ms if ms % 3_600_000 == 0 => write!(f, "{count}/{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{count}/{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{count}/{}s", ms / 1000),
            ms => write!(f, "{count}/{ms}ms"),
        }
    }
}

/// Parses `N/DURATION` (`10/1s`, `100/1m`, `5/s`): N ≥ 1, DURATION above zero.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    let hint = "(try 10/1s or 100/1m: connections per duration)";
    let (count, per) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a rate {hint}"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{count:?} is not a count of connections {hint}"))?;
    if count == 0 {
        return Err(format!("the count in {text:?} must be at least 1 {hint}"));
    }
    let per = per.trim();
    // `5/s` reads as `5/1s`.
    let per = if per.starts_with(|c: char| c.is_ascii_alphabetic()) {
        parse_duration(&format!("1{per}"))
    } else {
        parse_duration(per)
    }
    .map_err(|e| format!("{e} {hint}"))?;
    if per.is_zero() {
        return Err(format!("the duration in {text:?} must be above 0 {hint}"));
    }
    Ok(Rate { count, per })
}

/// One client as the limits see it: an IPv4 address, or an IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(Ipv4Addr),
    /// The address with the bits past `prefix` cleared.
    V6 {
        net: Ipv6Addr,
        prefix: u8,
    },
}

impl Client {
    /// The client `ip` belongs to: IPv4 (mapped or not) by address, IPv6 by its first
    /// `v6_prefix` bits.
    pub fn of(ip: IpAddr, v6_prefix: u8) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4),
                None => {
                    let prefix = v6_prefix.clamp(1, 128);
                    let mask = u128::MAX << (128 - u32::from(prefix));
                    Client::V6 {
                        net: Ipv6Addr::from(u128::from(v6) & mask),
                        prefix,
                    }
                }
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::V4(v4) => write!(f, "{v4}"),
            Client::V6 { net, prefix: 128 } => write!(f, "{net}"),
            Client::V6 { net, prefix } => write!(f, "{net}/{prefix}"),
        }
    }
}

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-conns-per-ip`: it had that many open.
    Conns,
    /// `--conn-rate-per-ip`: its bucket was empty.
    Rate,
}

impl Refusal {
    /// The `reason` label and log field.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Conns => "per_ip_conns",
            Refusal::Rate => "per_ip_rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One client's state.
#[derive(Debug)]
struct Entry {
    /// Connections open (admitted and not yet released).
    open: u32,
    /// Tokens in the bucket as of `refilled` (a full bucket when there is no rate).
    tokens: f64,
    refilled: Instant,
    /// The rate the bucket was last filled by (a reload may change it).
    rate: Option<Rate>,
    /// Refusals in the current log window, per reason: `(window, count)`.
    strikes: [(u64, u32); 2],
}

impl Entry {
    fn new(rate: Option<Rate>, now: Instant) -> Entry {
        Entry {
            open: 0,
            tokens: rate.map_or(0.0, |r| f64::from(r.count)),
            refilled: now,
            rate,
            strikes: [(u64::MAX, 0); 2],
        }
    }

    /// Tops the bucket up to `now` by `rate` (and caps it at the new burst when the rate
    /// changed).
    fn refill(&mut self, rate: Option<Rate>, now: Instant) {
        if let Some(rate) = rate {
            let burst = f64::from(rate.count);
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            let tokens = if self.rate.is_some() {
                self.tokens + elapsed * rate.per_second()
            } else {
                burst // it had no bucket before: a full one
            };
            self.tokens = tokens.min(burst);
        }
        self.rate = rate;
        self.refilled = now;
    }

    /// How full the bucket is at `now`, 0 to 1 (1 without a rate).
    fn fullness(&self, now: Instant) -> f64 {
        match self.rate {
            None => 1.0,
            Some(rate) => {
                let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
                let burst = f64::from(rate.count);
                ((self.tokens + elapsed * rate.per_second()) / burst).min(1.0)
            }
        }
    }

    /// Nothing open and the bucket full: forgetting it changes nothing.
    fn forgettable(&self, now: Instant) -> bool {
        self.open == 0 && self.fullness(now) >= 1.0
    }
}

/// The refusals of one reason since its last log line.
#[derive(Debug, Default)]
struct Tally {
    /// Refused since the last line.
    since_line: u64,
    /// When the last line was logged.
    last_line: Option<Instant>,
    /// Numbers the windows between lines, so a client's strikes from an earlier window
    /// count as none (no pass over the table at each line).
    window: u64,
    /// The client refused most in this window, and how often.
    top: Option<(Client, u32)>,
    /// A flush is scheduled for the tally left after the last line.
    flush_pending: bool,
}

/// A log line about refusals: logged by the caller, outside the lock.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub refusal: Refusal,
    /// Refused since the last line (this one included).
    pub refused: u64,
    /// The client refused most since the last line, and how often.
    pub top: Client,
    pub top_refused: u32,
}

/// What the accept loop does with a client.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Admitted and counted: release it when the connection ends.
    Tracked,
    /// Admitted without a count: the table was full of clients with connections open.
    Untracked,
    /// Refused; `notice` is the line to log now, if one is due; `flush_at`, when to call
    /// [`Table::flush`] for the tally this refusal starts (a line is due then).
    Refused {
        refusal: Refusal,
        notice: Option<Notice>,
        flush_at: Option<Instant>,
    },
}

/// What [`Table::flush`] found.
#[derive(Debug, PartialEq)]
pub enum Flush {
    /// Nothing left to say.
    Nothing,
    /// Log this.
    Line(Notice),
    /// Too early (a line went out meanwhile): call again then.
    Again(Instant),
}

/// The clients of one service, their open connections and buckets. Pure: every call
/// takes the time, so the tests run it on a made-up clock.
#[derive(Debug)]
pub struct Table {
    clients: HashMap<Client, Entry>,
    capacity: usize,
    /// When a new client next sweeps the table.
    next_sweep: Option<Instant>,
    /// No room-making sweep before this (the last one found none).
    full_until: Option<Instant>,
    tallies: [Tally; 2],
    /// Clients admitted untracked, for the log.
    pub untracked: u64,
    /// Of those, the ones no line has told of yet, and when the last line was.
    untracked_untold: u64,
    untracked_line: Option<Instant>,
}

impl Default for Table {
    fn default() -> Self {
        Table::with_capacity(MAX_TRACKED)
    }
}

impl Table {
    /// A table of at most `capacity` clients (at least 1).
    pub fn with_capacity(capacity: usize) -> Table {
        Table {
            clients: HashMap::new(),
            capacity: capacity.max(1),
            next_sweep: None,
            full_until: None,
            tallies: Default::default(),
            untracked: 0,
            untracked_untold: 0,
            untracked_line: None,
        }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Connections `client` has open, as counted.
    pub fn open(&self, client: &Client) -> u32 {
        self.clients.get(client).map_or(0, |e| e.open)
    }

    /// Admits or refuses a new connection from `client` under `limits`. An admitted
    /// [`Admission::Tracked`] connection is counted until [`release`](Self::release).
    pub fn admit(&mut self, client: Client, limits: &PerIpLimits, now: Instant) -> Admission {
        if !self.clients.contains_key(&client) && !self.make_room(now) {
            self.untracked += 1;
            self.untracked_untold += 1;
            return Admission::Untracked;
        }
        let entry = self
            .clients
            .entry(client)
            .or_insert_with(|| Entry::new(limits.rate, now));
        entry.refill(limits.rate, now);
        let refusal = if limits.max_conns > 0 && entry.open as usize >= limits.max_conns {
            Refusal::Conns
        } else if limits.rate.is_some() && entry.tokens < 1.0 {
            Refusal::Rate
        } else {
            if limits.rate.is_some() {
                entry.tokens -= 1.0;
            }
            entry.open += 1;
            return Admission::Tracked;
        };
        // Refused: the strike and the tally.
        let tally = &mut self.tallies[refusal.index()];
        tally.since_line += 1;
        let strikes = &mut entry.strikes[refusal.index()];
        *strikes = if strikes.0 == tally.window {
            (tally.window, strikes.1.saturating_add(1))
        } else {
            (tally.window, 1)
        };
        if tally.top.is_none_or(|(_, n)| strikes.1 > n) {
            tally.top = Some((client, strikes.1));
        }
        // (A refused client has connections open or a drained bucket: it stays.)
        let (notice, flush_at) = Self::due(tally, refusal, now);
        Admission::Refused {
            refusal,
            notice,
            flush_at,
        }
    }

    /// A line if one is due for `tally`, else when to flush it (once per tally).
    fn due(tally: &mut Tally, refusal: Refusal, now: Instant) -> (Option<Notice>, Option<Instant>) {
        match tally.last_line {
            Some(last) if now < last + LOG_EVERY => {
                if tally.flush_pending {
                    (None, None)
                } else {
                    tally.flush_pending = true;
                    (None, Some(last + LOG_EVERY))
                }
            }
            _ => (Some(Self::line(tally, refusal, now)), None),
        }
    }

    /// The line for `tally`, which starts a new window.
    fn line(tally: &mut Tally, refusal: Refusal, now: Instant) -> Notice {
        let (top, top_refused) = tally.top.take().expect("a refusal was tallied");
        let notice = Notice {
            refusal,
            refused: tally.since_line,
            top,
            top_refused,
        };
        tally.since_line = 0;
        tally.last_line = Some(now);
        tally.window += 1;
        notice
    }

    /// The tally of `refusal` left since its last line, if a line is due now.
    pub fn flush(&mut self, refusal: Refusal, now: Instant) -> Flush {
        let tally = &mut self.tallies[refusal.index()];
        if tally.since_line == 0 {
            tally.flush_pending = false;
            return Flush::Nothing;
        }
        match tally.last_line {
            Some(last) if now < last + LOG_EVERY => Flush::Again(last + LOG_EVERY),
            _ => {
                tally.flush_pending = false;
                Flush::Line(Self::line(tally, refusal, now))
            }
        }
    }

    /// How many clients were admitted untracked (without a per-client limit: the table
    /// was full of clients with connections open) since the last line, if a line is due:
    /// the first at once, then at most one per [`LOG_EVERY`]. What a second's line does
    /// not tell, the next one does.
    pub fn untracked_notice(&mut self, now: Instant) -> Option<u64> {
        if self.untracked_untold == 0
            || self
                .untracked_line
                .is_some_and(|last| now < last + LOG_EVERY)
        {
            return None;
        }
        self.untracked_line = Some(now);
        Some(std::mem::take(&mut self.untracked_untold))
    }

    /// A connection of `client` ended. A client with nothing open and a full bucket is
    /// forgotten at once.
    pub fn release(&mut self, client: &Client, now: Instant) {
        if let Some(entry) = self.clients.get_mut(client) {
            entry.open = entry.open.saturating_sub(1);
            if entry.forgettable(now) {
                self.clients.remove(client);
            }
        }
    }

    /// Room for one more client: sweeps when due or full. False when the table is full
    /// of clients with connections open.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.next_sweep = Some(now + SWEEP_EVERY);
            self.clients.retain(|_, e| !e.forgettable(now));
        }
        if self.clients.len() < self.capacity {
            return true;
        }
        if self.full_until.is_some_and(|until| now < until) {
            return false;
        }
        self.clients.retain(|_, e| !e.forgettable(now));
        let low_water = self.capacity - self.capacity / 8;
        if self.clients.len() > low_water {
            // Clients with nothing open, fullest bucket first: what is forgotten is the
            // least of a limit (a partly drained bucket starts full again).
            let mut idle: Vec<(Client, f64)> = self
                .clients
                .iter()
                .filter(|(_, e)| e.open == 0)
                .map(|(c, e)| (*c, e.fullness(now)))
                .collect();
            let drop = (self.clients.len() - low_water).min(idle.len());
            if drop > 0 && drop < idle.len() {
                idle.select_nth_unstable_by(drop - 1, |a, b| b.1.total_cmp(&a.1));
            }
            for (client, _) in idle.iter().take(drop) {
                self.clients.remove(client);
            }
        }
        if self.clients.len() < self.capacity {
            self.full_until = None;
            true
        } else {
            self.full_until = Some(now + FULL_HOLD);
            false
        }
    }
}

/// A service's table, behind its lock (in [`Stats`]).
#[derive(Debug, Default)]
pub struct PerIpTable(Mutex<Table>);

impl PerIpTable {
    /// The table, locked: hold it briefly, and log nothing while it is held.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps one connection counted against its client until dropped: carried by the
/// connection's task, so whatever ends it (the role returning or failing, a TLS handshake
/// that fails, a panic unwinding the task) releases it.
pub struct ClientGuard {
    stats: Arc<Stats>,
    client: Client,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stats
            .per_ip
            .lock()
            .release(&self.client, Instant::now());
    }
}

/// The accept loop's check: `Ok` admits `peer` (with a guard to carry while the
/// connection lasts, unless it is untracked), `Err` refuses it — counted, and logged at
/// most once per second per reason.
pub fn admit(
    role: &'static str,
    stats: &Arc<Stats>,
    peer: IpAddr,
    limits: &PerIpLimits,
) -> Result<Option<ClientGuard>, Refusal> {
    let client = Client::of(peer, limits.v6_prefix);
    let now = Instant::now();
    let (admission, untracked) = {
        let mut table = stats.per_ip.lock();
        let admission = table.admit(client, limits, now);
        let untracked = match admission {
            Admission::Untracked => table.untracked_notice(now),
            _ => None,
        };
        (admission, untracked)
    };
    match admission {
        Admission::Tracked => Ok(Some(ClientGuard {
            stats: stats.clone(),
            client,
        })),
        Admission::Untracked => {
            if let Some(n) = untracked {
                log::warn!(role = role, untracked = n, tracked_max = MAX_TRACKED, client = client.to_string().as_str();
                    "per-client limits: the table is full of clients with connections open; new clients are served WITHOUT a per-client limit ({n} since the last line)");
            }
            Ok(None)
        }
        Admission::Refused {
            refusal,
            notice,
            flush_at,
        } => {
            let counter = match refusal {
                Refusal::Conns => &stats.refused.per_ip_conns,
                Refusal::Rate => &stats.refused.per_ip_rate,
            };
            Stats::add(counter, 1);
            if let Some(notice) = notice {
                log_notice(role, &notice, limits);
            }
            if let Some(at) = flush_at {
                crate::rt::spawn_here(flush_later(role, stats.clone(), refusal, *limits, at));
            }
            Err(refusal)
        }
    }
}

/// Logs the tally left after a line, once its second is over.
async fn flush_later(
    role: &'static str,
    stats: Arc<Stats>,
    refusal: Refusal,
    limits: PerIpLimits,
    mut at: Instant,
) {
    loop {
        crate::rt::sleep(at.saturating_duration_since(Instant::now())).await;
        let flush = stats.per_ip.lock().flush(refusal, Instant::now());
        match flush {
            Flush::Nothing => return,
            Flush::Line(notice) => return log_notice(role, &notice, &limits),
            Flush::Again(next) => at = next,
        }
    }
}

fn log_notice(role: &'static str, notice: &Notice, limits: &PerIpLimits) {
    let top = notice.top.to_string();
    match notice.refusal {
        Refusal::Conns => log::warn!(role = role, reason = notice.refusal.reason(),
            refused = notice.refused, top = top.as_str(), top_refused = notice.top_refused,
            max_conns_per_ip = limits.max_conns;
            "refused: too many connections from one client ({} since the last line)", notice.refused),
        Refusal::Rate => {
            let rate = limits.rate.map(|r| r.to_string()).unwrap_or_default();
            log::warn!(role = role, reason = notice.refusal.reason(),
                refused = notice.refused, top = top.as_str(), top_refused = notice.top_refused,
                conn_rate_per_ip = rate.as_str();
                "refused: connecting too fast from one client ({} since the last line)", notice.refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Client {
        Client::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn limits(max_conns: usize, rate: Option<&str>) -> PerIpLimits {
        PerIpLimits {
            max_conns,
            rate: rate.map(|r| parse_rate(r).unwrap()),
            v6_prefix: 64,
        }
    }

    fn refused(a: &Admission) -> Option<Refusal> {
        match a {
            Admission::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    #[test]
    fn rates_parse_and_bad_ones_say_why() {
        let r = parse_rate("10/1s").unwrap();
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        assert_eq!(parse_rate("5/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(parse_rate("100/1m").unwrap().per, Duration::from_secs(60));
        assert_eq!(parse_rate(" 3 / 500ms ").unwrap().count, 3);
        for bad in [
            "10", "0/1s", "x/1s", "10/0", "10/0s", "10/fast", "-1/1s", "10/",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("10").unwrap_err().contains("10/1s"));
        for shown in ["10/1s", "100/1m", "5/250ms", "1/2h", "7/90s"] {
            assert_eq!(parse_rate(shown).unwrap().to_string(), shown);
        }
    }

    #[test]
    fn who_is_a_client() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Client::of(ip("::ffff:10.0.0.1"), 64), v4(1));
        assert_eq!(Client::of(ip("10.0.0.1"), 64), v4(1));
        let a = Client::of(ip("2001:db8:1:2:aaaa::1"), 64);
        assert_eq!(a, Client::of(ip("2001:db8:1:2:ffff::9"), 64));
        assert_ne!(a, Client::of(ip("2001:db8:1:3::1"), 64));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let one = Client::of(ip("2001:db8::1"), 128);
        assert_eq!(one.to_string(), "2001:db8::1");
        assert_ne!(one, Client::of(ip("2001:db8::2"), 128));
    }

    #[test]
    fn concurrent_cap_counts_per_client_and_release_frees_a_slot() {
        let mut t = Table::default();
        let l = limits(2, None);
        let now = Instant::now();
        assert_eq!(t.admit(v4(1), &l, now), Admission::Tracked);
        assert_eq!(t.admit(v4(1), &l, now), Admission::Tracked);
        assert_eq!(refused(&t.admit(v4(1), &l, now)), Some(Refusal::Conns));
        assert_eq!(t.admit(v4(2), &l, now), Admission::Tracked);
        t.release(&v4(1), now);
        assert_eq!(t.admit(v4(1), &l, now), Admission::Tracked);
        // Without a rate, a client with nothing open is forgotten at once.
        for _ in 0..2 {
            t.release(&v4(1), now);
        }
        t.release(&v4(2), now);
        assert!(t.is_empty());
        // A release of an unknown client (a reload turned the limits on) is harmless.
        t.release(&v4(9), now);
    }

    #[test]
    fn bucket_bursts_then_refills_at_the_rate() {
        let mut t = Table::default();
        let l = limits(0, Some("3/1s"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.admit(v4(1), &l, t0), Admission::Tracked);
            t.release(&v4(1), t0);
        }
        assert_eq!(refused(&t.admit(v4(1), &l, t0)), Some(Refusal::Rate));
        // A refusal takes no token: one third of a second later, one is back.
        let t1 = t0 + Duration::from_millis(340);
        assert_eq!(t.admit(v4(1), &l, t1), Admission::Tracked);
        assert_eq!(refused(&t.admit(v4(1), &l, t1)), Some(Refusal::Rate));
        t.release(&v4(1), t1);
        // Full again and nothing open: forgotten at the next sweep.
        assert_eq!(t.len(), 1);
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        assert_eq!(t.admit(v4(2), &l, later), Admission::Tracked);
        assert_eq!(t.len(), 1, "10.0.0.1 should have been swept");
    }

    #[test]
    fn a_rate_change_caps_the_bucket_at_the_new_burst() {
        let mut t = Table::default();
        let now = Instant::now();
        assert_eq!(
            t.admit(v4(1), &limits(0, Some("100/1s")), now),
            Admission::Tracked
        );
        let l = limits(0, Some("1/1h"));
        assert_eq!(t.admit(v4(1), &l, now), Admission::Tracked);
        assert_eq!(refused(&t.admit(v4(1), &l, now)), Some(Refusal::Rate));
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let cap = 64;
        let mut t = Table::with_capacity(cap);
        let l = limits(0, Some("1/1h")); // every bucket stays drained for an hour
        let mut now = Instant::now();
        for i in 0..10_000u32 {
            now += Duration::from_millis(1);
            let c = Client::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(t.admit(c, &l, now), Admission::Tracked, "client {i}");
            t.release(&c, now);
            assert!(t.len() <= cap, "{} tracked at client {i}", t.len());
        }
        assert_eq!(t.untracked, 0);
        // The newest clients are still limited.
        let newest = Client::V4(Ipv4Addr::from(0x0a00_0000 + 9_999));
        assert_eq!(refused(&t.admit(newest, &l, now)), Some(Refusal::Rate));
    }

    #[test]
    fn a_table_full_of_open_connections_admits_untracked_and_never_refuses_all() {
        let cap = 8;
        let mut t = Table::with_capacity(cap);
        let l = limits(1, None);
        let now = Instant::now();
        for i in 0..cap as u8 {
            assert_eq!(t.admit(v4(i), &l, now), Admission::Tracked);
        }
        // Full of clients with a connection open: the next is admitted, uncounted,
        // and the table is not swept again for a second.
        assert_eq!(t.admit(v4(100), &l, now), Admission::Untracked);
        assert_eq!(t.admit(v4(101), &l, now), Admission::Untracked);
        assert_eq!(t.len(), cap);
        // Tracked clients are still limited.
        assert_eq!(refused(&t.admit(v4(0), &l, now)), Some(Refusal::Conns));
        // One closes: room again (it is forgotten at once).
        t.release(&v4(0), now);
        assert_eq!(t.admit(v4(102), &l, now), Admission::Tracked);
        assert_eq!(t.untracked, 2);
    }

    #[test]
    fn a_full_table_evicts_the_fullest_idle_buckets_first() {
        let cap = 8;
        let mut t = Table::with_capacity(cap);
        let l = limits(0, Some("10/10s")); // one token per second
        let t0 = Instant::now();
        // Client i took i+1 tokens, so client 0's bucket is the fullest afterwards.
        for i in 0..cap as u8 {
            for _ in 0..=i {
                assert_eq!(t.admit(v4(i), &l, t0), Admission::Tracked);
                t.release(&v4(i), t0);
            }
        }
        assert_eq!(t.len(), cap);
        assert_eq!(t.admit(v4(200), &l, t0), Admission::Tracked);
        assert!(t.len() <= cap);
        // 0 was dropped (the fullest); 7, the emptiest, is still there and limited.
        assert!(!t.clients.contains_key(&v4(0)));
        assert!(t.clients.contains_key(&v4(7)));
    }

    #[test]
    fn refusals_are_logged_once_per_second_with_the_top_offender() {
        let mut t = Table::default();
        let l = limits(1, None);
        let t0 = Instant::now();
        assert_eq!(t.admit(v4(1), &l, t0), Admission::Tracked);
        assert_eq!(t.admit(v4(2), &l, t0), Admission::Tracked);
        // The first refusal is logged at once.
        let Admission::Refused {
            notice: Some(first),
            flush_at: None,
            ..
        } = t.admit(v4(1), &l, t0)
        else {
            panic!("the first refusal should log");
        };
        assert_eq!((first.refused, first.top), (1, v4(1)));
        // The rest of the second: no line; the first of them schedules one flush.
        let mut flushes = 0;
        for i in 0..300 {
            let who = if i % 3 == 0 { v4(1) } else { v4(2) };
            let at = t0 + Duration::from_millis(i);
            match t.admit(who, &l, at) {
                Admission::Refused {
                    notice: None,
                    flush_at,
                    ..
                } => flushes += usize::from(flush_at.is_some()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(flushes, 1);
        assert_eq!(
            t.flush(Refusal::Conns, t0 + Duration::from_millis(500)),
            Flush::Again(t0 + LOG_EVERY)
        );
        let Flush::Line(line) = t.flush(Refusal::Conns, t0 + LOG_EVERY) else {
            panic!("a line is due");
        };
        assert_eq!(line.refused, 300);
        assert_eq!((line.top, line.top_refused), (v4(2), 200));
        assert_eq!(t.flush(Refusal::Conns, t0 + LOG_EVERY * 3), Flush::Nothing);
        // A refusal a second after the last line is logged at once again, and counts
        // its client's strikes from zero.
        let Admission::Refused {
            notice: Some(next), ..
        } = t.admit(v4(1), &l, t0 + LOG_EVERY * 2)
        else {
            panic!("a line is due");
        };
        assert_eq!((next.refused, next.top, next.top_refused), (1, v4(1), 1));
    }
}
