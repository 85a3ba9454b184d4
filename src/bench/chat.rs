//! `bench chat`: N clients join a chat server; the first `--senders` of them each send a
//! timestamped line `--rate` times a second. Every client reads everything, so each line
//! is delivered N-1 times. Reports deliveries/s, lost and duplicated deliveries, and
//! delivery latency (send to receipt, one clock: sender and receivers share the process).
//!
//! Each line carries its sender's index, sequence number and send time after the nick
//! prefix (`<NICK> S SEQ MICROS ...`), so any server that relays `<NICK> text` lines can
//! be measured: `switchboard chat` and `ncat --chat` alike. Every client waits for the
//! server's first line (a welcome or announce) before anyone sends.
//!
//! Senders are phased evenly: with S senders at R lines/s each, sender `i` sends at
//! `(k + i/S) / R` seconds, so the server sees one line every `1/(S·R)` s, as from
//! independent people. `--in-step` makes them all send at `k / R` instead: bursts of S
//! lines at once, which measures how fast a burst of `S·(N-1)` deliveries drains.
//!
//! The server's flood control must allow the rate (`switchboard chat --rate 0`); a
//! `! slow down` from the server is reported as an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{BenchOptions, GRACE, Part, Progress, REPLY_TIMEOUT, Report, open_all};
use crate::Result;
use crate::rt;

/// How often a sender wakes to send the lines that are due (it sends them in one write).
const SEND_TICK: Duration = Duration::from_millis(1);

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    if opts.conns < 2 {
        return Err("chat needs --conns of at least 2".into());
    }
    if opts.rate <= 0.0 {
        return Err("chat needs --rate LINES (per sender per second)".into());
    }
    let senders = opts.senders.clamp(1, opts.conns);
    let streams = open_all(opts.target, opts.conns).await?;
    // Wait for each client's first line (welcome or announce): once the last one has
    // arrived, every client is registered and no line can miss a reader.
    let mut readers = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let mut r = BufReader::with_capacity(64 * 1024, s.clone());
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
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + opts.duration;

    let mut reading = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (delivered, progress) = (delivered.clone(), progress.clone());
        reading.push(rt::spawn(read_deliveries(
            r, i, senders, started, delivered, progress,
        )));
    }
    let mut sending = Vec::new();
    for (i, s) in streams.iter().take(senders).enumerate() {
        let phase = if opts.in_step {
            0.0
        } else {
            i as f64 / senders as f64
        };
        let schedule = Schedule {
            rate: opts.rate,
            phase,
            started,
            end,
        };
        let (s, sent, size) = (s.clone(), sent.clone(), opts.size);
        sending.push(rt::spawn(send_lines(s, i, sent, schedule, size)));
    }
    let mut report = Report::new("chat", "deliveries", opts.conns);
    for t in sending {
        report.merge(t.await);
    }
    let total_sent: u64 = sent.iter().map(|n| n.load(Relaxed)).sum();
    let expected = total_sent * (opts.conns as u64 - 1);
    let grace_end = Instant::now() + GRACE;
    while delivered.load(Relaxed) < expected && Instant::now() < grace_end {
        rt::sleep(Duration::from_millis(10)).await;
    }
    let measured = started.elapsed();
    for s in &streams {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let mut seen = vec![0u64; senders];
    for t in reading {
        let (part, per_sender) = t.await;
        report.merge(part);
        for (total, n) in seen.iter_mut().zip(per_sender) {
            *total += n;
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

/// When one sender's lines are due.
struct Schedule {
    /// Lines per second.
    rate: f64,
    /// The offset of this sender's sends, as a fraction of the period `1/rate`.
    phase: f64,
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
    mut s: rt::TcpStream,
    index: usize,
    sent: Arc<Vec<AtomicU64>>,
    schedule: Schedule,
    size: usize,
) -> Part {
    let mut part = Part::default();
    let mut seq = 0u64;
    let mut batch = Vec::new();
    let pad = "x".repeat(size.saturating_sub(28));
    let started = schedule.started;
    while Instant::now() < schedule.end {
        let due = schedule.due();
        batch.clear();
        while seq < due {
            let micros = started.elapsed().as_micros();
            batch.extend_from_slice(format!("{index} {seq} {micros} {pad}\n").as_bytes());
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

/// Reads until the socket is shut; returns the part and deliveries seen per sender.
async fn read_deliveries(
    mut r: BufReader<rt::TcpStream>,
    me: usize,
    senders: usize,
    started: Instant,
    delivered: Arc<AtomicU64>,
    progress: Progress,
) -> (Part, Vec<u64>) {
    let mut part = Part::timed();
    let mut next = vec![0u64; senders];
    let mut seen = vec![0u64; senders];
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) => part.bytes_received += n as u64,
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with("! slow down") {
            part.error("the server's flood control dropped lines: run it with --rate 0");
            continue;
        }
        if text.contains("left (send queue exceeded)") {
            part.error("a client was evicted as too slow (the load generator could not keep up)");
            continue;
        }
        let Some(body) = text.strip_prefix('<') else {
            continue;
        };
        let Some((_nick, rest)) = body.split_once("> ") else {
            continue;
        };
        let mut fields = rest.split(' ').map(str::parse::<u64>);
        let Some(Ok(from)) = fields.next() else {
            continue; // a notice or another client's chatter, not a bench line
        };
        let (Some(Ok(seq)), Some(Ok(micros))) = (fields.next(), fields.next()) else {
            part.error("a line came back garbled");
            continue;
        };
        let from = from as usize;
        if from == me || from >= senders {
            part.error("a line came back to its sender");
            continue;
        }
        let now = started.elapsed().as_micros() as u64;
        part.record(Duration::from_micros(now.saturating_sub(micros)));
        if seq < next[from] {
            part.count("duplicated", 1);
            continue;
        }
        if seq > next[from] {
            part.count("out of order or gap", 1);
        }
        next[from] = seq + 1;
        seen[from] += 1;
        part.ops += 1;
        delivered.fetch_add(1, Relaxed);
        progress.add(1);
    }
    (part, seen)
}
