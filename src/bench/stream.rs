//! `bench stream`: each connection pushes SIZE-byte chunks as fast as the target takes
//! them, for `--duration`, then half-closes and reads until the target closes. Reports
//! MB/s each way.
//!
//! Against a sink (`switchboard discard`, or a proxy in front of one) nothing comes back.
//! `--duplex` expects every byte back (an echo target, or a proxy in front of one) and
//! reports an error if any is missing; `--verify` also sends a reproducible random
//! payload and compares every byte that returns with what was sent, at its offset.

use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchOptions, Dialer, GRACE, Part, Progress, Report, collect};
use crate::Result;
use crate::net::stream::Stream;
use crate::rt;

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    if opts.size == 0 {
        return Err("--size must be at least 1".into());
    }
    let duplex = opts.duplex || opts.verify;
    let mode = if opts.tls.tls {
        "stream (TLS)"
    } else {
        "stream"
    };
    let report = Report::new(mode, "chunks", opts.conns);
    let started = Instant::now();
    let end = started + opts.duration;
    let mut tasks = Vec::new();
    for (i, stream) in Dialer::new(opts, &[])?
        .open_all(opts.conns)
        .await?
        .into_iter()
        .enumerate()
    {
        let (size, verify, progress) = (opts.size, opts.verify, progress.clone());
        tasks.push(rt::spawn(one(
            stream,
            size,
            i as u64 + 1,
            verify,
            duplex,
            end,
            progress,
        )));
    }
    let mut report = collect(report, tasks, started).await;
    report.elapsed = opts.duration.min(started.elapsed());
    Ok(report)
}

/// A reproducible byte stream (xorshift64*), so the reader can regenerate what was sent.
struct Payload(u64);

impl Payload {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

async fn one(
    stream: Stream,
    size: usize,
    seed: u64,
    verify: bool,
    duplex: bool,
    end: Instant,
    progress: Progress,
) -> Part {
    let (mut reader, mut writer) = stream.split();
    let receiving = rt::spawn(async move {
        let mut part = Part::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut expected = vec![0u8; buf.len()];
        let mut payload = Payload(seed);
        // Fills `expected` a chunk at a time, in the same chunk sizes as the sender.
        let mut pending: Vec<u8> = Vec::new();
        let deadline = end + GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rt::timeout(left.max(Duration::from_millis(1)), reader.read(&mut buf)).await {
                Some(Ok(0)) => break,
                Some(Ok(n)) => {
                    part.bytes_received += n as u64;
                    if verify {
                        while pending.len() < n {
                            expected.resize(size, 0);
                            payload.fill(&mut expected[..size]);
                            pending.extend_from_slice(&expected[..size]);
                        }
                        if buf[..n] != pending[..n] {
                            part.error(format!(
                                "bytes differ near offset {}",
                                part.bytes_received - n as u64
                            ));
                            break;
                        }
                        pending.drain(..n);
                    }
                }
                Some(Err(e)) => {
                    part.error(format!("read: {e}"));
                    break;
                }
                None => {
                    part.error("the target did not close within the grace period");
                    break;
                }
            }
        }
        part
    });

    let mut part = Part::default();
    let mut chunk = vec![0u8; size];
    let mut payload = Payload(seed);
    while Instant::now() < end {
        if verify {
            payload.fill(&mut chunk);
        }
        match rt::timeout(GRACE, writer.write_all(&chunk)).await {
            Some(Ok(())) => {
                part.ops += 1;
                part.bytes_sent += size as u64;
                progress.add(1);
            }
            Some(Err(e)) => {
                part.error(format!("write: {e}"));
                break;
            }
            None => {
                part.error("the target stopped reading");
                break;
            }
        }
    }
    // The half-close: under TLS, what the session still holds, then close_notify, then
    // the FIN (for a plain stream, just the FIN).
    if rt::timeout(GRACE, writer.close()).await.is_none() {
        let _ = writer.socket().shut_write();
    }
    let received = receiving.await;
    if duplex && received.bytes_received != part.bytes_sent && received.errors.is_empty() {
        part.error(format!(
            "{} bytes sent but {} came back",
            part.bytes_sent, received.bytes_received
        ));
    }
    part.bytes_received = received.bytes_received;
    part.errors.extend(received.errors);
    part
}
