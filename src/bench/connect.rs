//! `bench connect`: each of N loops opens a TCP connection and closes it, as fast as the
//! target accepts. Reports connections/s and connect latency.

use std::time::Instant;

use super::{BenchOptions, Part, Progress, REPLY_TIMEOUT, Report, collect};
use crate::Result;
use crate::net::stream::Stream;
use crate::rt;

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    // Fail early and clearly when nothing is listening.
    drop(super::open_all(opts.target, 1).await?);
    let report = Report::new("connect", "connections", opts.conns);
    let started = Instant::now();
    let end = started + opts.duration;
    let tasks = (0..opts.conns)
        .map(|_| {
            let (target, progress) = (opts.target, progress.clone());
            rt::spawn(async move {
                let mut part = Part::timed();
                while Instant::now() < end {
                    let t = Instant::now();
                    match rt::timeout(REPLY_TIMEOUT, Stream::connect(target)).await {
                        Some(Ok(s)) => {
                            part.record(t.elapsed());
                            part.ops += 1;
                            progress.add(1);
                            drop(s);
                        }
                        Some(Err(e)) => {
                            part.error(format!("connect: {e}"));
                            // Out of ephemeral ports or refused: slow down rather than spin.
                            rt::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        None => part.error("connect timed out"),
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
