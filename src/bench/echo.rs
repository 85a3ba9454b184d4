//! `bench echo`: each connection ping-pongs SIZE-byte messages (one in flight), checking
//! every byte of every reply. Reports round trips/s and latency. `--udp` does the same
//! with datagrams (a reply not back within a second counts as lost).

use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchOptions, Dialer, Part, Progress, REPLY_TIMEOUT, Report, collect};
use crate::Result;
use crate::net::stream::Stream;
use crate::rt::{self, UdpSocket};

/// How long a UDP reply may take before it counts as lost.
const UDP_LOSS_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    if opts.size == 0 {
        return Err("--size must be at least 1".into());
    }
    let report = Report::new(
        match (opts.udp, opts.tls.tls) {
            (true, _) => "echo (UDP)",
            (false, true) => "echo (TLS)",
            (false, false) => "echo",
        },
        "round trips",
        opts.conns,
    );
    let started = Instant::now();
    let end = started + opts.duration;
    let pause = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut tasks = Vec::new();
    if opts.udp {
        for i in 0..opts.conns {
            let socket = UdpSocket::bind(if opts.target.addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .await?;
            socket.connect(opts.target.addr).await?;
            let (size, progress) = (opts.size, progress.clone());
            tasks.push(rt::spawn(udp_conn(
                socket, size, i as u8, end, pause, progress,
            )));
        }
    } else {
        for (i, stream) in Dialer::new(opts, &[])?
            .open_all(opts.conns)
            .await?
            .into_iter()
            .enumerate()
        {
            let (size, progress) = (opts.size, progress.clone());
            tasks.push(rt::spawn(tcp_conn(
                stream, size, i as u8, end, pause, progress,
            )));
        }
    }
    let mut report = collect(report, tasks, started).await;
    report.elapsed = opts.duration.min(started.elapsed());
    Ok(report)
}

/// A message whose bytes differ per connection and per round, so a reply that went to
/// the wrong client or came back stale is caught.
fn fill(buf: &mut [u8], conn: u8, round: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = conn
            .wrapping_mul(31)
            .wrapping_add(round as u8)
            .wrapping_add(i as u8);
    }
}

async fn tcp_conn(
    mut stream: Stream,
    size: usize,
    conn: u8,
    end: Instant,
    pause: Option<Duration>,
    progress: Progress,
) -> Part {
    let mut part = Part::timed();
    let mut msg = vec![0u8; size];
    let mut reply = vec![0u8; size];
    let mut round = 0u64;
    while Instant::now() < end {
        fill(&mut msg, conn, round);
        let t = Instant::now();
        // (The flush: under TLS, so no ciphertext stays in the session; plain, nothing.)
        if let Err(e) = stream.write_all(&msg).await.and(stream.flush().await) {
            part.error(format!("write: {e}"));
            break;
        }
        match rt::timeout(REPLY_TIMEOUT, stream.read_exact(&mut reply)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                part.error(format!("read: {e}"));
                break;
            }
            None => {
                part.error("no reply within 10s");
                break;
            }
        }
        part.record(t.elapsed());
        if reply != msg {
            part.error("reply differs from what was sent");
            break;
        }
        part.ops += 1;
        part.bytes_sent += size as u64;
        part.bytes_received += size as u64;
        progress.add(1);
        round += 1;
        if let Some(p) = pause {
            rt::sleep(p.saturating_sub(t.elapsed())).await;
        }
    }
    part
}

async fn udp_conn(
    socket: UdpSocket,
    size: usize,
    conn: u8,
    end: Instant,
    pause: Option<Duration>,
    progress: Progress,
) -> Part {
    let mut part = Part::timed();
    let mut msg = vec![0u8; size];
    let mut reply = vec![0u8; size + 1];
    let mut round = 0u64;
    while Instant::now() < end {
        fill(&mut msg, conn, round);
        let t = Instant::now();
        if let Err(e) = socket.send(&msg).await {
            part.error(format!("send: {e}"));
            break;
        }
        loop {
            match rt::timeout(UDP_LOSS_TIMEOUT, socket.recv(&mut reply)).await {
                Some(Ok(n)) if reply[..n] == msg[..] => {
                    part.record(t.elapsed());
                    part.ops += 1;
                    part.bytes_sent += size as u64;
                    part.bytes_received += n as u64;
                    progress.add(1);
                }
                Some(Ok(_)) => {
                    part.count("stale or wrong replies", 1);
                    continue; // a late reply to an earlier (lost) round: wait for ours
                }
                Some(Err(e)) => part.error(format!("receive: {e}")),
                None => part.count("lost", 1),
            }
            break;
        }
        round += 1;
        if let Some(p) = pause {
            rt::sleep(p.saturating_sub(t.elapsed())).await;
        }
    }
    part
}
