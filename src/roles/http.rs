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
pub mod metrics;
pub mod request;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::Result;
use crate::net::connection::{Connection, Event, Reason, Setup};
use crate::net::listener::{self, Conn, Listeners, ServerConfig};
use crate::net::sendfile::FileRegion;
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::net::writer::{Outgoing, WRITER_MAILBOX};
use crate::rt;
use files::{Body, Response};
use metrics::HttpMetrics;
use request::{HeadBuffer, HeadError, Request};

/// Default listening address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// How long an idle keep-alive connection is kept when `--idle-timeout` is off.
pub const KEEPALIVE_DEFAULT: Duration = Duration::from_secs(60);

/// The largest in-memory response queued without waiting for it to be written (a small
/// file's body is at most 64 KiB); a larger one (a big directory listing) is waited for
/// like a file, so unread pipelined listings cannot pile up in a connection's mailbox.
const QUEUED_BUFFER_MAX: usize = files::SMALL_FILE as usize + 4096;

/// What a client over `--max-conns` gets: an answer, not silence.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: switchboard\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nRetry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n";

/// HTTP settings beyond the common server ones.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The directory served; canonical (symlinks resolved), so containment checks hold.
    pub root: PathBuf,
    /// The same directory, open: every request is resolved beneath this descriptor.
    pub root_dir: Arc<std::fs::File>,
    /// How: `openat2` where the kernel has it (the default), or always the walk.
    pub lookup: files::Lookup,
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
            lookup: files::Lookup::Kernel,
            header_timeout,
        })
    }
}

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn run(
    listener: impl Into<Listeners>,
    server: ServerConfig,
    http: HttpConfig,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let mut server = server.or_full_notice(BUSY);
    // Over TLS, a client learns in the handshake that this is HTTP/1.1 (ALPN).
    server.tls = server.tls.map(|tls| Arc::new(tls.with_alpn(&[ALPN])));
    let server = Arc::new(server);
    let http = Arc::new(http);
    let metrics = stats.role_metrics::<HttpMetrics>();
    let loops = listener
        .into()
        .with_configs(&server)
        .into_iter()
        .map(|(listener, server)| {
            let (http, metrics) = (http.clone(), metrics.clone());
            listener::serve(
                "http",
                listener,
                server,
                stats.clone(),
                shutdown.clone(),
                move |conn| connection(conn, http.clone(), metrics.clone()),
            )
        });
    futures::future::join_all(loops.collect::<Vec<_>>()).await;
}

/// The one application protocol offered in a TLS handshake.
pub const ALPN: &[u8] = b"http/1.1";

/// One response on its way to the writer: head (and small body), then maybe a file region.
struct Out {
    bytes: Vec<u8>,
    file: Option<FileRegion>,
    /// Its access-log line, written when the writer reports what it wrote
    /// ([`Outgoing::written`]), or when the response is dropped unwritten.
    log: Option<AccessLog>,
    /// Whether the writer wrote all of it (set by its report).
    complete: bool,
    /// For a response with a file region (or a large buffer): told, once the writer has
    /// handed all of it to the kernel ([`Outgoing::handed_over`], which closes the file)
    /// or has let go of it unsent (see [`Drop`]), whether all of it went out.
    done: Option<flume::Sender<bool>>,
}

impl Outgoing for Out {
    const REPORTS: bool = true;

    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn file(&self) -> Option<&FileRegion> {
        self.file.as_ref()
    }
    fn written(&mut self, bytes: usize, file: u64, stopped: Option<&std::io::Error>) {
        self.complete = stopped.is_none();
        if let Some(line) = self.log.take() {
            line.written(bytes, file, stopped);
        }
    }
    fn handed_over(&mut self) {
        // The reader may open the next file now: the kernel holds this one's bytes, and
        // the access line waits for the acknowledgement without keeping the file open.
        self.file = None;
        self.bytes = Vec::new();
        if let Some(done_tx) = self.done.take() {
            let _ = done_tx.try_send(true);
        }
    }
}

impl Drop for Out {
    /// Closes the file first, then tells the reader (which opens no other file until
    /// then): so a connection never holds more than one open file. A response the
    /// writer never got to logs that it was not sent.
    fn drop(&mut self) {
        self.file = None;
        if let Some(line) = self.log.take() {
            line.log(0, "not sent: the connection failed first");
        }
        if let Some(done_tx) = self.done.take() {
            let _ = done_tx.try_send(self.complete);
        }
    }
}

/// Waits until the writer has let go of a response's file; whether all of it was sent
/// (`false` too when the writer ended without getting to it).
async fn file_done(done_rx: flume::Receiver<bool>, conn: &mut Connection) -> bool {
    use futures::future::{Either, select};
    let done = done_rx.recv_async();
    let ended = conn.writer_ended();
    futures::pin_mut!(done, ended);
    match select(done, ended).await {
        Either::Left((complete, _)) => complete.unwrap_or(false),
        Either::Right(_) => done_rx.try_recv().unwrap_or(false),
    }
}

/// One client, from accept to close: the reader loop here, the writer as its own actor.
///
/// Requests are answered one at a time, in order. A small answer (head and body in one
/// buffer) is queued in the writer's mailbox and the next request is answered at once;
/// an answer that sends from an open file is queued and then waited for, so its file is
/// opened only when it is next to be written and each connection holds at most one
/// open file. While the reader waits it reads nothing more, so a client that pipelines
/// without reading is held back by TCP flow control: what one connection has queued is
/// at most the [`WRITER_MAILBOX`] answers plus the unread input already buffered (one
/// read, and at most one head's worth more).
///
/// A client that stops reading is closed by the writer: a write that makes no progress
/// for the keep-alive limit fails, the writer shuts the socket and ends, and that ends
/// whatever this loop waits on (the mailbox closes; the file's message is dropped).
async fn connection(conn: Conn, cfg: Arc<HttpConfig>, metrics: Arc<HttpMetrics>) -> Result<()> {
    let keepalive = conn.idle_timeout.unwrap_or(KEEPALIVE_DEFAULT);
    // The waits for a head have their own limits (below), not the reader's idle timer;
    // the writer's send timeout is the keep-alive limit. At the end of the drain the
    // writer stops where it is, so every response still being sent logs its line
    // ("server shutting down") before the summary.
    let setup = Setup::new(WRITER_MAILBOX)
        .idle_timeout(None)
        .send_timeout(Some(keepalive))
        .closing()
        .linger();
    let (mut conn, writer_tx) = Connection::start::<Out>(conn, setup);
    // Shared by every response's access line: one reference count per response.
    let peer = Arc::new(Peer {
        addr: conn.peer().to_string(),
        metrics,
    });
    let mut heads = HeadBuffer::default();
    // When the head now being waited for began: at accept, then at its first byte.
    let mut head_started = Some(Instant::now());
    let reason = 'conn: loop {
        // Answer every complete request already buffered (pipelining), in order.
        loop {
            let started = Instant::now();
            let (response, req, close) = match heads.next_head() {
                Ok(None) => break,
                Ok(Some(req)) => {
                    let (response, close) = answer(&cfg, &req);
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
            let line = AccessLog {
                peer: peer.clone(),
                req,
                status: response.status,
                started,
                head_len: 0,
                body: if head_only { 0 } else { response.length },
                note: response.note,
            };
            let mut out = serialise(response, close, head_only);
            // A small body travels in the buffer after the head; a large one in the file.
            let small_body = if out.file.is_none() { line.body } else { 0 };
            out.log = Some(AccessLog {
                head_len: out.bytes.len().saturating_sub(small_body as usize),
                ..line
            });
            // A file, or a large buffer (a big listing), is waited for before the next
            // answer: what a connection has queued stays within the mailbox of small
            // answers plus one large one, however many a client pipelines unread.
            let sent = if out.file.is_some() || out.bytes.len() > QUEUED_BUFFER_MAX {
                let (done_tx, done_rx) = flume::bounded(1);
                out.done = Some(done_tx);
                writer_tx.send_async(out).await.is_ok() && file_done(done_rx, &mut conn).await
            } else {
                writer_tx.send_async(out).await.is_ok()
            };
            if !sent {
                break 'conn Reason::WriteFailed;
            }
            if close {
                break 'conn Reason::Role;
            }
            head_started = None;
        }
        // Bytes of the next head already here (they came with the last request): its
        // header timeout runs from now, not the keep-alive idle limit.
        if !heads.is_empty() {
            head_started.get_or_insert_with(Instant::now);
        }

        // Wait for more: the rest of a head (header timeout), or the next request.
        let limit = match head_started {
            Some(t) => cfg.header_timeout.saturating_sub(t.elapsed()),
            None => keepalive,
        };
        match rt::timeout(limit, conn.next()).await {
            Some(Event::Data(data)) => {
                head_started.get_or_insert_with(Instant::now);
                heads.extend(&data);
            }
            Some(Event::End(why)) => break why,
            None if head_started.is_some() => {
                // Slowloris, or a client that connected and said nothing: 408, then close.
                let r = Response::text(408, Some("no complete request head in time"));
                log::info!(peer = peer.addr.as_str(), status = 408u16; "http: header timeout");
                peer.metrics.response(408);
                let _ = writer_tx.send_async(serialise(r, true, false)).await;
                break Reason::Role;
            }
            None => break Reason::Idle, // an idle keep-alive connection: close quietly
        }
    };
    // The writer flushes and half-closes; the connection lingers, so unread input cannot
    // turn our close into a reset that destroys the last response, and lasts until the
    // writer has written what it holds or given up on a client that stopped reading.
    drop(writer_tx);
    conn.close(reason).await;
    Ok(())
}

/// The client, as each of its access lines names it, and where its responses are counted.
struct Peer {
    addr: String,
    metrics: Arc<HttpMetrics>,
}

/// One access-log line, travelling with its response and written once the writer says
/// what it wrote (or the response is dropped unwritten): the bytes logged are bytes the
/// client's kernel acknowledged (the writer reports a response once its last byte is
/// acknowledged, or how far the acknowledgement got when it failed), and `us` runs
/// until then.
struct AccessLog {
    peer: Arc<Peer>,
    req: Option<Request>,
    status: u16,
    started: Instant,
    /// Bytes of the message before the body (status line and headers).
    head_len: usize,
    /// Body bytes the response carries (0 for HEAD and 304).
    body: u64,
    note: Option<&'static str>,
}

impl AccessLog {
    /// The writer's report: `bytes` of the message's buffer (head, then a small body)
    /// and `file` bytes of its file region went out; `stopped` says why no more did.
    /// The response is counted here, as written (wholly or in part).
    fn written(self, bytes: usize, file: u64, stopped: Option<&std::io::Error>) {
        let metrics = &self.peer.metrics;
        metrics.response(self.status);
        metrics.response_time.observe(self.started.elapsed());
        metrics.sendfile_bytes.add(file);
        let sent = bytes.saturating_sub(self.head_len) as u64 + file;
        match stopped {
            None => self.log(sent, self.note.unwrap_or("")),
            Some(why) => self.log(
                sent,
                &format!("stopped after {sent} of {} bytes: {why}", self.body),
            ),
        }
    }

    /// `bytes`: of the body, as sent; `note`: why, when something is worth saying.
    fn log(&self, bytes: u64, note: &str) {
        let (method, target) = self
            .req
            .as_ref()
            .map_or(("-", "-"), |r| (r.method.as_str(), r.target.as_str()));
        let agent = self
            .req
            .as_ref()
            .and_then(|r| r.header("user-agent"))
            .unwrap_or("-");
        log::info!(peer = self.peer.addr.as_str(), method = method, target = target, status = self.status,
            bytes = bytes, us = self.started.elapsed().as_micros() as u64,
            user_agent = agent, note = note; "http");
    }
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
    } else if let Err(why) = req.host() {
        // Two Hosts, or a list: a proxy in front could have routed by the other one.
        close = true;
        Response::text(400, Some(why))
    } else if req.minor >= 1 && req.header_count("host") == 0 {
        close = true;
        Response::text(400, Some("HTTP/1.1 request without Host"))
    } else if req.body_len > 0 {
        // (Every other form of body framing was refused by the parser.)
        close = true;
        Response::text(400, Some("request bodies are not accepted"))
    } else {
        let tree = files::Tree {
            path: &cfg.root,
            dir: &cfg.root_dir,
            lookup: cfg.lookup,
        };
        files::respond(&tree, req)
    };
    if let Some(why) = response.note.filter(|_| response.status == 404) {
        log::warn!(target = req.target.as_str(), why = why; "http: refused a path outside the root");
    }
    (response, close)
}

/// The status line, headers and (small) body as bytes; a large body as a file region.
fn serialise(response: Response, close: bool, head_only: bool) -> Out {
    use std::fmt::Write as _;
    // Room for a small body too, so appending it does not move the head.
    let body_len = match &response.body {
        Body::Bytes(body) if !head_only => body.len(),
        _ => 0,
    };
    let mut head = String::with_capacity(256 + body_len);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nServer: switchboard\r\nDate: ",
        response.status,
        files::reason(response.status),
    );
    with_http_date(|date| head.push_str(date));
    head.push_str("\r\n");
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
    Out {
        bytes,
        file,
        log: None,
        complete: false,
        done: None,
    }
}

/// Lends the `Date` header value, formatted once a second per thread, to `use_it`.
fn with_http_date(use_it: impl FnOnce(&str)) {
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
        use_it(&c.1)
    })
}
