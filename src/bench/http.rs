//! `bench http`: keep-alive GETs of `--path` over N connections, one request in flight
//! per connection. Reports requests/s, status counts and latency.

use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchOptions, Dialer, Part, Progress, REPLY_TIMEOUT, Report, collect};
use crate::Result;
use crate::net::stream::Stream;
use crate::rt;

pub async fn run(opts: &BenchOptions, progress: &Progress) -> Result<Report> {
    if !opts.path.starts_with('/') {
        return Err("--path must start with /".into());
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchboard-bench\r\n\r\n",
        opts.path, opts.target
    );
    let mode = if opts.tls.tls { "https" } else { "http" };
    let report = Report::new(mode, "requests", opts.conns);
    let started = Instant::now();
    let end = started + opts.duration;
    let pause = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut tasks = Vec::new();
    for stream in Dialer::new(opts, &[b"http/1.1"])?
        .open_all(opts.conns)
        .await?
    {
        let (request, progress) = (request.clone(), progress.clone());
        tasks.push(rt::spawn(one(stream, request, end, pause, progress)));
    }
    let mut report = collect(report, tasks, started).await;
    report.elapsed = opts.duration.min(started.elapsed());
    Ok(report)
}

async fn one(
    mut stream: Stream,
    request: String,
    end: Instant,
    pause: Option<Duration>,
    progress: Progress,
) -> Part {
    let mut part = Part::timed();
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0usize; // bytes of `buf` holding unread response data
    while Instant::now() < end {
        let t = Instant::now();
        // (The flush: under TLS, so no ciphertext stays in the session; plain, nothing.)
        let sent = stream.write_all(request.as_bytes()).await;
        if let Err(e) = sent.and(stream.flush().await) {
            part.error(format!("write: {e}"));
            break;
        }
        part.bytes_sent += request.len() as u64;
        // Read the head.
        let (status, head_len, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf[..have]) {
                Ok(httparse::Status::Complete(n)) => {
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| h.value)
                    };
                    let len = header("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                    break (resp.code.unwrap_or(0), n, len, close);
                }
                Ok(httparse::Status::Partial) if have < buf.len() => {}
                Ok(httparse::Status::Partial) => {
                    part.error("response head over 64 KiB");
                    return part;
                }
                Err(e) => {
                    part.error(format!("bad response: {e}"));
                    return part;
                }
            }
            match rt::timeout(REPLY_TIMEOUT, stream.read(&mut buf[have..])).await {
                Some(Ok(0)) => {
                    part.error("the server closed the connection");
                    return part;
                }
                Some(Ok(n)) => have += n,
                Some(Err(e)) => {
                    part.error(format!("read: {e}"));
                    return part;
                }
                None => {
                    part.error("no response within 10s");
                    return part;
                }
            }
        };
        let Some(body_len) = body_len else {
            part.error("response without Content-Length");
            return part;
        };
        // Skip the body: some of it may already be in `buf`.
        let mut left = body_len;
        let in_buf = ((have - head_len) as u64).min(left);
        left -= in_buf;
        let consumed = head_len + in_buf as usize;
        buf.copy_within(consumed..have, 0);
        have -= consumed;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            match rt::timeout(REPLY_TIMEOUT, stream.read(&mut buf[..want])).await {
                Some(Ok(n)) if n > 0 => left -= n as u64,
                _ => {
                    part.error("body cut short");
                    return part;
                }
            }
        }
        part.record(t.elapsed());
        part.ops += 1;
        part.bytes_received += (head_len as u64) + body_len;
        part.count(&format!("status {status}"), 1);
        progress.add(1);
        if close {
            part.error("the server closed a keep-alive connection");
            break;
        }
        if let Some(p) = pause {
            rt::sleep(p.saturating_sub(t.elapsed())).await;
        }
    }
    part
}
