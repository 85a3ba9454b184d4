//! `bench connect`: each of N loops opens a TCP connection and closes it, as fast as the
//! target accepts. Reports connections/s and connect latency.
//!
//! With `--tls` each connection is a new, full handshake (the client keeps no sessions,
//! so nothing is resumed): handshakes/s, and the latency of connect plus handshake. Then
//! the client sends close_notify and its FIN and reads until the server closes, so the
//! server has finished its side of every handshake counted (it read our Finished) and
//! no connection ends in a reset that the server would log as a failed handshake.

use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchOptions, Dialer, Part, Progress, REPLY_TIMEOUT, Report, collect};
use crate::Result;
use crate::net::stream::Stream;
use crate::rt;

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    let dialer = Dialer::new(opts, &[])?;
    // Fail early and clearly when nothing is listening, or the handshake fails.
    for s in dialer.open_all(1).await? {
        if dialer.is_tls() {
            close(s).await;
        }
    }
    let report = if dialer.is_tls() {
        Report::new("connect (TLS)", "handshakes", opts.conns)
    } else {
        Report::new("connect", "connections", opts.conns)
    };
    let started = Instant::now();
    let end = started + opts.duration;
    let tasks = (0..opts.conns)
        .map(|_| {
            let (dialer, progress) = (dialer.clone(), progress.clone());
            rt::spawn(async move {
                let mut part = Part::timed();
                while Instant::now() < end {
                    let t = Instant::now();
                    match dialer.open().await {
                        Ok(s) => {
                            part.record(t.elapsed());
                            part.ops += 1;
                            progress.add(1);
                            if dialer.is_tls() {
                                close(s).await;
                            }
                        }
                        Err(e) => {
                            part.error(e.to_string());
                            // Out of ephemeral ports or refused: slow down rather than spin.
                            rt::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                part
            })
        })
        .collect();
    let mut report = collect(report, tasks, started).await;
    report.elapsed = opts.duration.min(started.elapsed());
    Ok(report)
}

/// Closes a TLS connection in order: close_notify and FIN, then what the server still
/// sends (its session tickets, its close_notify) until it closes, within a bound.
async fn close(mut s: Stream) {
    let ending = async {
        s.close().await?;
        let mut sink = [0u8; 4096];
        while s.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = rt::timeout(REPLY_TIMEOUT, ending).await;
}
