//! A small, correct, concurrent static-file server: GET and HEAD, HTTP/1.1 keep-alive and
//! pipelining, validators, conditional and range requests, directory listings.
//!
//! ```text
//!   client ─▶ reader: httparse heads, limits, timeouts; files.rs answers ─writer_tx─▶ writer ─▶ client
//!                                                         (bytes, or a file region → sendfile)
//! ```
//!
//! Each connection is its own reader and writer actors, so no client can hold up another.
//! Responses go through one mailbox, so pipelined requests are answered in order.
//!
//! Try it: `switchboard http --root ./site`, then `curl -i http://127.0.0.1:8080/`.

pub mod files;
pub mod request;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::Result;
use crate::net::conn::{FileRegion, Input, Outgoing, Reader, spawn_writer};
use crate::net::listener::{self, Conn, ServerConfig};
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::rt::{self, TcpListener};
use files::{Body, Response};
use request::{HeadError, Request};

/// Default listening address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// How long an idle keep-alive connection is kept when `--idle-timeout` is off.
pub const KEEPALIVE_DEFAULT: Duration = Duration::from_secs(60);

/// What a client over `--max-conns` gets: an answer, not silence.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: switchboard\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nRetry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n";

/// HTTP settings beyond the common server ones.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The directory served; canonical (symlinks resolved), so containment checks hold.
    pub root: PathBuf,
    /// The same directory, open: requests are resolved beneath it by the kernel.
    pub root_dir: Arc<std::fs::File>,
    /// A request head must arrive complete within this time (slowloris guard).
    pub header_timeout: Duration,
}

impl HttpConfig {
    /// Checks and canonicalises the root.
    pub fn new(root: &std::path::Path, header_timeout: Duration) -> Result<Self> {
        let root =
            std::fs::canonicalize(root).map_err(|e| format!("--root {}: {e}", root.display()))?;
        if !root.is_dir() {
            return Err(format!("--root {}: not a directory", root.display()).into());
        }
        let root_dir =
            std::fs::File::open(&root).map_err(|e| format!("--root {}: {e}", root.display()))?;
        Ok(HttpConfig {
            root_dir: Arc::new(root_dir),
            root,
            header_timeout,
        })
    }
}

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn run(
    listener: TcpListener,
    mut server: ServerConfig,
    http: HttpConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    server.full_notice.get_or_insert_with(|| BUSY.to_vec());
    let http = Arc::new(http);
    listener::serve(
        "http",
        listener,
        Arc::new(server),
        stats,
        shutdown,
        move |conn| connection(conn, http.clone()),
    )
    .await;
}

/// One response on its way to the writer: head (and small body), then maybe a file region.
struct Out {
    bytes: Vec<u8>,
    file: Option<FileRegion>,
}

impl Outgoing for Out {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn file(&self) -> Option<&FileRegion> {
        self.file.as_ref()
    }
}

/// One client, from accept to close: the reader loop here, the writer as its own actor.
async fn connection(conn: Conn, cfg: Arc<HttpConfig>) -> Result<()> {
    let Conn {
        stream,
        peer,
        stats,
        idle_timeout,
    } = conn;
    let writer_tx = spawn_writer::<Out>(stream.clone(), &stats);
    let mut reader = Reader::new(stream, None);
    let peer_text = peer.to_string();
    let keepalive = idle_timeout.unwrap_or(KEEPALIVE_DEFAULT);
    let mut buf: Vec<u8> = Vec::new();
    // When the head now being waited for began: at accept, then at its first byte.
    let mut head_started = Some(Instant::now());
    'conn: loop {
        // Answer every complete request already buffered (pipelining), in order.
        loop {
            let started = Instant::now();
            let (response, req, close) = match request::parse_head(&buf) {
                Ok(None) => break,
                Ok(Some(req)) => {
                    let (response, close) = answer(&cfg, &req);
                    buf.drain(..req.head_len);
                    (response, Some(req), close)
                }
                Err(e) => {
                    let (status, why) = match e {
                        HeadError::Bad(why) => (400, why),
                        HeadError::UriTooLong => (414, "request line over 8 KiB"),
                        HeadError::HeadersTooLarge => (431, "head over 64 KiB or 100 fields"),
                        HeadError::Version => (505, "not HTTP/1.x"),
                    };
                    (Response::text(status, Some(why)), None, true)
                }
            };
            let head_only = req.as_ref().is_some_and(|r| r.method == "HEAD");
            let (status, length, note) = (response.status, response.length, response.note);
            let out = serialise(response, close, head_only);
            let sent = writer_tx.send_async(out).await.is_ok();
            let (method, target) = req
                .as_ref()
                .map_or(("-", "-"), |r| (r.method.as_str(), r.target.as_str()));
            let agent = req
                .as_ref()
                .and_then(|r| r.header("user-agent"))
                .unwrap_or("-");
            log::info!(peer = peer_text.as_str(), method = method, target = target, status = status,
                bytes = if head_only { 0 } else { length }, us = started.elapsed().as_micros() as u64,
                user_agent = agent, note = note.unwrap_or(""); "http");
            if close || !sent {
                break 'conn;
            }
            head_started = None;
        }

        // Wait for more: the rest of a head (header timeout), or the next request.
        let limit = match head_started {
            Some(t) => cfg.header_timeout.saturating_sub(t.elapsed()),
            None => keepalive,
        };
        match rt::timeout(limit, reader.next()).await {
            Some(Ok(Input::Data(data))) => {
                head_started.get_or_insert_with(Instant::now);
                buf.extend_from_slice(&data);
            }
            Some(Ok(_)) | Some(Err(_)) => break,
            None if head_started.is_some() => {
                // Slowloris, or a client that connected and said nothing: 408, then close.
                let r = Response::text(408, Some("no complete request head in time"));
                log::info!(peer = peer_text.as_str(), status = 408u16; "http: header timeout");
                let _ = writer_tx.send_async(serialise(r, true, false)).await;
                break;
            }
            None => break, // an idle keep-alive connection: close quietly
        }
    }
    // The writer flushes and half-closes; wait (briefly) for the client to close, so
    // unread input cannot turn our close into a reset that destroys the last response.
    drop(writer_tx);
    let _ = rt::timeout(Duration::from_secs(2), async {
        while let Ok(Input::Data(_)) = reader.next().await {}
    })
    .await;
    Stats::add(&stats.bytes_in, reader.bytes);
    Ok(())
}

/// Decides the response to one request, and whether to close after it.
fn answer(cfg: &HttpConfig, req: &Request) -> (Response, bool) {
    let mut close = !req.keep_alive();
    let response = if req.method != "GET" && req.method != "HEAD" {
        // We do not read request bodies, so the connection cannot continue after one.
        close = true;
        let mut r = Response::text(405, None);
        r.headers.push(("Allow", "GET, HEAD".into()));
        r
    } else if req.minor >= 1 && req.header("host").is_none() {
        close = true;
        Response::text(400, Some("HTTP/1.1 request without Host"))
    } else if req.header("transfer-encoding").is_some()
        || req
            .header("content-length")
            .is_some_and(|v| v.trim() != "0")
    {
        close = true;
        Response::text(400, Some("request bodies are not accepted"))
    } else {
        files::respond(&cfg.root, &cfg.root_dir, req)
    };
    if let Some(why) = response.note.filter(|_| response.status == 404) {
        log::warn!(target = req.target.as_str(), why = why; "http: refused a path outside the root");
    }
    (response, close)
}

/// The status line, headers and (small) body as bytes; a large body as a file region.
fn serialise(response: Response, close: bool, head_only: bool) -> Out {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nServer: switchboard\r\nDate: {}\r\n",
        response.status,
        files::reason(response.status),
        http_date()
    );
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if response.status != 304 {
        let _ = write!(head, "Content-Length: {}\r\n", response.length);
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    let mut bytes = head.into_bytes();
    let mut file = None;
    if !head_only {
        match response.body {
            Body::Empty => {}
            Body::Bytes(body) => bytes.extend_from_slice(&body),
            Body::File(region) => file = Some(region),
        }
    }
    Out { bytes, file }
}

/// The `Date` header value, formatted once a second per thread.
fn http_date() -> String {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}
