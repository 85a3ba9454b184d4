//! `bench chat`: N clients join a chat server; the first `--senders` of them each send a
//! timestamped line `--rate` times a second. Every client reads everything, so each line
//! is delivered N-1 times. Reports deliveries/s, lost and duplicated deliveries, and
//! delivery latency (send to receipt, one clock: sender and receivers share the process).
//!
//! Each line carries its sender's index, sequence number and send time after the nick
//! prefix (`<NICK> S SEQ MICROS ...`), so any server that relays `<NICK> text` lines can
//! be measured: `switchboard chat` and `ncat --chat` alike. ncat relays raw chunks and
//! prefixes only a chunk's first line, so a bare `S SEQ MICROS ...` line counts as well.
//!
//! Every client waits for the server's first line (a welcome or announce), and then the
//! run waits until the join notices have drained (no client received anything for
//! 200 ms) before anyone sends, so it measures the steady state rather than the O(N²)
//! storm of N joins.
//!
//! The clients are read with epoll on one thread per core (see `many`), so the load
//! generator's own cost takes as little as it can from the server on a small machine,
//! and a line's N-1 copies are taken in parallel.
//!
//! Deliveries per second count the time from the first send to the last delivery: a
//! run that loses lines waits a grace period for them, and that wait is not counted.
//!
//! Senders are phased evenly: with S senders at R lines/s each, sender `i` sends at
//! `(k + i/S) / R` seconds, so the server sees one line every `1/(S·R)` s, as from
//! independent people. `--in-step` makes them all send at `k / R` instead: bursts of S
//! lines at once, which measures how fast a burst of `S·(N-1)` deliveries drains.
//!
//! The server's flood control must allow the rate (`switchboard chat --rate 0`); a
//! `! slow down` from the server is reported as an error.
//!
//! With `--targets`, the clients are spread round-robin over the nodes of a cluster
//! (client `i` on node `i mod K`, so the senders are spread too), and deliveries from a
//! sender on one node to a client on another are counted and timed apart as well
//! (`cross-node deliveries`, their p50 and p99).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use hdrhistogram::Histogram;

use super::{BenchOptions, GRACE, Part, Progress, REPLY_TIMEOUT, Report, many, open_all};
use crate::Result;
use crate::net::lines::{LineFramer, Overlong};
use crate::net::socket::Socket;
use crate::net::stream::{Stream, WriteHalf};
use crate::rt;

/// How often a sender wakes to send the lines that are due (it sends them in one write).
const SEND_TICK: Duration = Duration::from_millis(1);

/// Sending starts once no client has received anything for this long.
const QUIET: Duration = Duration::from_millis(200);

/// The longest the join notices may take to drain before the run is called off.
const SETTLE_MAX: Duration = Duration::from_secs(30);

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    if opts.conns < 2 {
        return Err("chat needs --conns of at least 2".into());
    }
    if opts.rate <= 0.0 {
        return Err("chat needs --rate LINES (per sender per second)".into());
    }
    let senders = opts.senders.clamp(1, opts.conns);
    let mut nodes = vec![opts.target.addr];
    for t in &opts.targets {
        if !nodes.contains(&t.addr) {
            nodes.push(t.addr);
        }
    }
    let mut streams = open_spread(&nodes, opts.conns).await?;
    // WebSocket users: the handshake, and the first frame (the welcome) read here.
    let mut after_welcome = Vec::new();
    if opts.web {
        for (i, s) in streams.iter_mut().enumerate() {
            let host = nodes[i % nodes.len()].to_string();
            match rt::timeout(REPLY_TIMEOUT, ws::handshake(s, &host, i)).await {
                Some(Ok(rest)) => after_welcome.push(rest),
                Some(Err(e)) => return Err(format!("client {}: {e}", i + 1).into()),
                None => {
                    return Err(
                        format!("client {}: no WebSocket welcome from {host}", i + 1).into(),
                    );
                }
            }
        }
    }
    let sockets: Vec<Socket> = streams.iter().map(|s| s.socket().clone()).collect();
    let (reads, mut writes): (Vec<_>, Vec<_>) = streams.into_iter().map(Stream::split).unzip();
    // Wait for each client's first line (welcome or announce): once the last one has
    // arrived, every client is registered and no line can miss a reader.
    let mut readers = Vec::new();
    for (i, s) in reads.into_iter().enumerate() {
        if opts.web {
            readers.push(BufReader::with_capacity(64 * 1024, s));
            continue;
        }
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let mut line = String::new();
        match rt::timeout(REPLY_TIMEOUT, r.read_line(&mut line)).await {
            Some(Ok(n)) if n > 0 => {}
            _ => {
                return Err(format!(
                    "client {} got no first line from {} (is it a chat server?)",
                    i + 1,
                    opts.target
                )
                .into());
            }
        }
        readers.push(r);
    }
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..senders).map(|_| AtomicU64::new(0)).collect());
    // The one clock: lines carry their send time as microseconds since `clock`.
    let clock = Instant::now();
    let heard = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let ending = Arc::new(AtomicBool::new(false));

    // The deliveries are read with epoll on a few OS threads (see `many`), one per core:
    // the observer's own cost is CPU the server under test does not get on a small
    // machine, and a fan-out of N-1 copies is absorbed in parallel.
    let receivers: Vec<Receiver> = readers
        .iter()
        .enumerate()
        .map(|(me, r)| {
            let mut receiver = match after_welcome.get_mut(me) {
                Some(rest) => Receiver::new(me, senders, nodes.len(), std::mem::take(rest)),
                None => Receiver::new(me, senders, nodes.len(), r.buffer().to_vec()),
            };
            receiver.ws = opts.web.then(ws::Decoder::default);
            receiver
        })
        .collect();
    drop(readers);
    let shared = Shared {
        clock,
        heard: heard.clone(),
        last_delivery: last_delivery.clone(),
        ending: ending.clone(),
        progress: progress.clone(),
    };
    let deadline = clock + SETTLE_MAX + opts.duration + GRACE + REPLY_TIMEOUT;
    let reading = receive_on_threads(sockets.clone(), receivers, senders, deadline, shared);
    // Let the join notices (N joins, each announced to everyone) drain first, so the run
    // measures the steady state and not the connection storm.
    let settle_end = Instant::now() + SETTLE_MAX;
    loop {
        let quiet = clock
            .elapsed()
            .saturating_sub(Duration::from_micros(heard.load(Relaxed)));
        if quiet >= QUIET {
            break;
        }
        if Instant::now() >= settle_end {
            close_all(&sockets, &ending);
            let _ = reading.await;
            return Err(format!(
                "{} kept sending for {}s after every client joined; nothing measured",
                opts.target,
                SETTLE_MAX.as_secs()
            )
            .into());
        }
        rt::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let end = started + opts.duration;
    let mut sending = Vec::new();
    writes.truncate(senders);
    for (i, s) in writes.into_iter().enumerate() {
        let phase = if opts.in_step {
            0.0
        } else {
            i as f64 / senders as f64
        };
        let schedule = Schedule {
            rate: opts.rate,
            phase,
            clock,
            started,
            end,
        };
        let (sent, size, web) = (sent.clone(), opts.size, opts.web);
        sending.push(rt::spawn(send_lines(s, i, sent, schedule, size, web)));
    }
    let mut report = Report::new("chat", "deliveries", opts.conns);
    for t in sending {
        report.merge(t.await);
    }
    let total_sent: u64 = sent.iter().map(|n| n.load(Relaxed)).sum();
    let expected = total_sent * (opts.conns as u64 - 1);
    let grace_end = Instant::now() + GRACE;
    while progress.total() < expected && Instant::now() < grace_end {
        rt::sleep(Duration::from_millis(10)).await;
    }
    // The run lasted until its last delivery (or its planned duration): the grace period
    // spent waiting for deliveries that never came is not part of it.
    let last = clock + Duration::from_micros(last_delivery.load(Relaxed));
    let measured = last.saturating_duration_since(started).max(opts.duration);
    close_all(&sockets, &ending);
    let (parts, seen, cross) = reading.await?;
    for part in parts {
        report.merge(part);
    }
    if nodes.len() > 1 {
        report.count("cross-node deliveries", cross.len());
        for (name, q) in [("cross-node p50 µs", 0.5), ("cross-node p99 µs", 0.99)] {
            report.count(name, cross.value_at_quantile(q));
        }
    }
    let mut lost = 0;
    for (i, n) in sent.iter().enumerate() {
        lost += (n.load(Relaxed) * (opts.conns as u64 - 1)).saturating_sub(seen[i]);
    }
    report.count("lines sent", total_sent);
    report.count("lost", lost);
    report.elapsed = measured;
    Ok(report)
}

/// Opens `n` clients, client `i` to `nodes[i % K]`.
async fn open_spread(nodes: &[std::net::SocketAddr], n: usize) -> Result<Vec<Stream>> {
    let k = nodes.len();
    let mut per_node = Vec::with_capacity(k);
    for (j, node) in nodes.iter().enumerate() {
        let count = n / k + usize::from(j < n % k);
        per_node.push(open_all(*node, count).await?.into_iter());
    }
    Ok((0..n).filter_map(|i| per_node[i % k].next()).collect())
}

/// Ends the run for every client: marks it ending (so the receiving thread takes the
/// closes that follow as expected) and shuts each socket, which ends its reads.
fn close_all(sockets: &[Socket], ending: &AtomicBool) {
    ending.store(true, Relaxed);
    for s in sockets {
        let _ = s.shut_both();
    }
}

/// When one sender's lines are due.
struct Schedule {
    /// Lines per second.
    rate: f64,
    /// The offset of this sender's sends, as a fraction of the period `1/rate`.
    phase: f64,
    /// The clock the lines' send times are read from.
    clock: Instant,
    /// When sending begins.
    started: Instant,
    end: Instant,
}

impl Schedule {
    /// How many lines are due by now: line `k` (from 0) is due at `(k + 1 + phase) / rate`.
    fn due(&self) -> u64 {
        (self.started.elapsed().as_secs_f64() * self.rate - self.phase).max(0.0) as u64
    }
}

async fn send_lines(
    mut s: WriteHalf,
    index: usize,
    sent: Arc<Vec<AtomicU64>>,
    schedule: Schedule,
    size: usize,
    web: bool,
) -> Part {
    let mut part = Part::default();
    let mut seq = 0u64;
    let mut batch = Vec::new();
    let pad = "x".repeat(size.saturating_sub(28));
    let clock = schedule.clock;
    while Instant::now() < schedule.end {
        let due = schedule.due();
        batch.clear();
        while seq < due {
            let micros = clock.elapsed().as_micros();
            if web {
                ws::frame(
                    format!("{index} {seq} {micros} {pad}").as_bytes(),
                    &mut batch,
                );
            } else {
                batch.extend_from_slice(format!("{index} {seq} {micros} {pad}\n").as_bytes());
            }
            seq += 1;
        }
        if !batch.is_empty() {
            if let Err(e) = s.write_all(&batch).await {
                part.error(format!("sender {index}: {e}"));
                break;
            }
            part.bytes_sent += batch.len() as u64;
            sent[index].store(seq, Relaxed);
        }
        rt::sleep(SEND_TICK).await;
    }
    part
}

/// One client's side of the deliveries.
struct Receiver {
    me: usize,
    /// How many nodes the clients are spread over (client `i` is on node `i mod nodes`).
    nodes: usize,
    /// The sequence number expected next from each sender.
    next: Vec<u64>,
    /// Cuts what arrives into lines. No limit, as the lines are the server's relay of
    /// our own senders' short ones: a longer line is still read whole.
    framer: LineFramer,
    /// What the welcome's reader took beyond the first line, to be read first.
    buffered: Vec<u8>,
    /// `--web`: the server's frames, cut into lines before the framer sees them.
    ws: Option<ws::Decoder>,
}

impl Receiver {
    fn new(me: usize, senders: usize, nodes: usize, buffered: Vec<u8>) -> Self {
        Receiver {
            me,
            nodes,
            next: vec![0; senders],
            framer: LineFramer::new(usize::MAX, Overlong::Drop),
            buffered,
            ws: None,
        }
    }
}

/// Which client received a line, and on which node it is.
#[derive(Clone, Copy)]
struct Client {
    me: usize,
    nodes: usize,
}

/// What all clients saw together.
struct Tally {
    part: Part,
    /// Deliveries seen per sender.
    seen: Vec<u64>,
    /// Latency of deliveries between nodes (`--targets`), in µs.
    cross: Histogram<u64>,
}

/// What the receiving threads share with the run.
#[derive(Clone)]
struct Shared {
    clock: Instant,
    /// When (µs on `clock`) any client last received anything.
    heard: Arc<AtomicU64>,
    /// When (µs on `clock`) the latest delivery arrived.
    last_delivery: Arc<AtomicU64>,
    /// Set when the run shuts the clients down: failures after it are not errors.
    ending: Arc<AtomicBool>,
    /// Deliveries counted so far (also the progress line's count).
    progress: Progress,
}

/// The most threads that read deliveries.
const MAX_RECEIVING_THREADS: usize = 8;

/// Splits the clients over one receiving thread per core (at most
/// [`MAX_RECEIVING_THREADS`]); the future returns every thread's part, the deliveries
/// seen per sender, summed, and the cross-node latencies.
fn receive_on_threads(
    sockets: Vec<Socket>,
    mut receivers: Vec<Receiver>,
    senders: usize,
    deadline: Instant,
    shared: Shared,
) -> impl std::future::Future<Output = Result<(Vec<Part>, Vec<u64>, Histogram<u64>)>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.clamp(1, MAX_RECEIVING_THREADS).min(sockets.len());
    let mut handles = Vec::new();
    for chunk in sockets.chunks(sockets.len().div_ceil(threads)) {
        let mine: Vec<Receiver> = receivers.drain(..chunk.len()).collect();
        let (chunk, shared) = (chunk.to_vec(), shared.clone());
        handles.push(rt::spawn_blocking(move || {
            receive_all(chunk, mine, senders, deadline, shared)
        }));
    }
    async move {
        let mut parts = Vec::new();
        let mut seen = vec![0; senders];
        let mut cross = super::histogram();
        for h in handles {
            let (part, theirs, their_cross) = h.await?;
            parts.push(part);
            cross.add(&their_cross).expect("histograms share bounds");
            for (total, n) in seen.iter_mut().zip(theirs) {
                *total += n;
            }
        }
        Ok((parts, seen, cross))
    }
}

/// Reads every client's socket until all are shut (by `run`, after the grace period) and
/// returns what they saw, with the deliveries seen per sender.
fn receive_all(
    sockets: Vec<Socket>,
    mut receivers: Vec<Receiver>,
    senders: usize,
    deadline: Instant,
    shared: Shared,
) -> Result<(Part, Vec<u64>, Histogram<u64>)> {
    let mut tally = Tally {
        part: Part::timed(),
        seen: vec![0; senders],
        cross: super::histogram(),
    };
    // What the welcome reads buffered beyond the first line.
    for r in &mut receivers {
        let buffered = std::mem::take(&mut r.buffered);
        tally.take(r, &buffered, shared.clock.elapsed());
    }
    let finished = many::read_until_closed(&sockets, deadline, |i, event| match event {
        many::Event::Data(data) => {
            let now = shared.clock.elapsed();
            shared.heard.store(now.as_micros() as u64, Relaxed);
            let n = tally.take(&mut receivers[i], data, now);
            if n > 0 {
                shared
                    .last_delivery
                    .fetch_max(now.as_micros() as u64, Relaxed);
                shared.progress.add(n);
            }
        }
        many::Event::Closed(end) if !shared.ending.load(Relaxed) => {
            let why = end.map_or("closed".to_string(), |e| e.kind().to_string());
            tally
                .part
                .error(format!("a client's connection ended during the run: {why}"));
        }
        many::Event::Closed(_) => {}
    })?;
    if !finished {
        tally
            .part
            .error("a client's socket did not close when the run ended");
    }
    Ok((tally.part, tally.seen, tally.cross))
}

impl Tally {
    /// Takes bytes that arrived for `r` at `now` (since the start); returns how many
    /// deliveries they completed.
    fn take(&mut self, r: &mut Receiver, data: &[u8], now: Duration) -> u64 {
        let mut delivered = 0;
        let mut lines = Vec::new();
        let mut rest = match &mut r.ws {
            Some(decoder) => {
                decoder.decode(data, &mut lines);
                lines.as_slice()
            }
            None => data,
        };
        while let Some(frame) = r.framer.next(&mut rest) {
            if let Some(line) = frame.bytes() {
                let at = Client {
                    me: r.me,
                    nodes: r.nodes,
                };
                delivered += u64::from(self.line(at, &mut r.next, line, now));
            }
        }
        self.part.bytes_received += data.len() as u64;
        delivered
    }

    /// Checks one line (with its `\n`) that client `r` received, given the sequence
    /// number it expects next from each sender; true when it was a delivery seen for the
    /// first time.
    fn line(&mut self, r: Client, next: &mut [u64], line: &[u8], now: Duration) -> bool {
        let me = r.me;
        let text = String::from_utf8_lossy(line);
        if text.starts_with("! slow down") {
            self.part
                .error("the server's flood control dropped lines: run it with --rate 0");
            return false;
        }
        if text.contains("left (send queue exceeded)") {
            self.part
                .error("a client was evicted as too slow (the load generator could not keep up)");
            return false;
        }
        // `<NICK> S SEQ MICROS ...`; a relay of raw chunks (`ncat --chat`) prefixes
        // only a chunk's first line, so a bare `S SEQ MICROS ...` counts too. Notices
        // (`* `, `! `, `<announce> ...`) do not parse as numbers and are skipped.
        let rest = match text.strip_prefix('<') {
            Some(body) => match body.split_once("> ") {
                Some((_nick, rest)) => rest,
                None => return false,
            },
            None => &text,
        };
        let mut fields = rest.split(' ').map(str::parse::<u64>);
        let Some(Ok(from)) = fields.next() else {
            return false; // a notice or another client's chatter, not a bench line
        };
        let (Some(Ok(seq)), Some(Ok(micros))) = (fields.next(), fields.next()) else {
            self.part.error("a line came back garbled");
            return false;
        };
        let from = from as usize;
        if from == me || from >= self.seen.len() {
            self.part.error("a line came back to its sender");
            return false;
        }
        let now = now.as_micros() as u64;
        let latency = now.saturating_sub(micros);
        self.part.record(Duration::from_micros(latency));
        if r.nodes > 1 && from % r.nodes != me % r.nodes {
            self.cross.saturating_record(latency);
        }
        if seq < next[from] {
            self.part.count("duplicated", 1);
            return false;
        }
        if seq > next[from] {
            self.part.count("out of order or gap", 1);
        }
        next[from] = seq + 1;
        self.seen[from] += 1;
        self.part.ops += 1;
        true
    }
}

/// The WebSocket side of `bench chat --web`: the client's handshake, its masked text
/// frames, and the server's frames cut back into lines.
mod ws {
    use futures::io::{AsyncReadExt, AsyncWriteExt};

    use crate::Result;
    use crate::net::stream::Stream;

    /// The opening handshake to `/ws` and the first frame (the welcome); returns what
    /// was read beyond that frame.
    pub async fn handshake(stream: &mut Stream, host: &str, i: usize) -> Result<Vec<u8>> {
        // Any 16 bytes will do for a load generator's key: the client's index.
        let key = encode_key(i as u128);
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err("no end to the handshake's response".into());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("closed during the handshake (is it chat --web?)".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
                return Err(
                    "the WebSocket handshake got no HTTP answer (is it chat --web's address?)"
                        .into(),
                );
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101 ") {
            let status = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
            return Err(format!(
                "the handshake was refused: {:?}",
                status.lines().next().unwrap_or_default()
            )
            .into());
        }
        let mut rest = buf.split_off(head_end);
        loop {
            if let Some((header, len, _)) = parse(&rest) {
                return Ok(rest.split_off(header + len));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("closed before the welcome".into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    }

    /// Base64 of 16 bytes.
    fn encode_key(n: u128) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = n.to_be_bytes();
        let mut out = String::with_capacity(24);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= chunk.len() {
                    out.push(ALPHABET[((v >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Appends `line` as a masked text frame (a client's frames are masked; the key
    /// only has to be there, so a fixed one serves a load generator).
    pub fn frame(line: &[u8], out: &mut Vec<u8>) {
        const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        out.push(0x81);
        match line.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        out.extend(line.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    }

    /// A complete frame at the start of `buf`: its header's length, its payload's, and
    /// its opcode. (The server's frames are not masked.)
    fn parse(buf: &[u8]) -> Option<(usize, usize, u8)> {
        let (&b0, &b1) = (buf.first()?, buf.get(1)?);
        let (header, len) = match b1 & 0x7f {
            126 => (
                4,
                usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            ),
            127 => {
                let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
                (10, usize::try_from(u64::from_be_bytes(bytes)).ok()?)
            }
            n => (2, usize::from(n)),
        };
        (buf.len() >= header + len).then_some((header, len, b0 & 0x0f))
    }

    /// Cuts the server's frames back into lines.
    #[derive(Default)]
    pub struct Decoder {
        buf: Vec<u8>,
    }

    impl Decoder {
        /// Appends each complete text frame's payload in `data` (and before it) to
        /// `lines` with a `\n`; control frames are skipped.
        pub fn decode(&mut self, data: &[u8], lines: &mut Vec<u8>) {
            self.buf.extend_from_slice(data);
            let mut at = 0;
            while let Some((header, len, opcode)) = parse(&self.buf[at..]) {
                if opcode == 0x1 || opcode == 0x0 {
                    lines.extend_from_slice(&self.buf[at + header..at + header + len]);
                    lines.push(b'\n');
                }
                at += header + len;
            }
            self.buf.drain(..at);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys_frames_and_decoding() {
            assert_eq!(encode_key(0), "AAAAAAAAAAAAAAAAAAAAAA==");
            assert_eq!(encode_key(u128::MAX).len(), 24);
            let mut out = Vec::new();
            frame(b"hi", &mut out);
            assert_eq!(
                out,
                [0x81, 0x82, 0x37, 0xfa, 0x21, 0x3d, b'h' ^ 0x37, b'i' ^ 0xfa]
            );
            let mut d = Decoder::default();
            let mut lines = Vec::new();
            let server = [0x81, 2, b'a', b'b', 0x89, 0, 0x81, 126, 0, 3, b'x', b'y'];
            d.decode(&server, &mut lines);
            assert_eq!(lines, b"ab\n");
            d.decode(b"z", &mut lines);
            assert_eq!(lines, b"ab\nxyz\n");
        }
    }
}
