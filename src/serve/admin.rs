//! The admin listener of `serve`: `GET /metrics` (Prometheus), `GET /healthz` and
//! `GET /services` (JSON), one request per connection.
//!
//! It serves on its own address (`[admin] listen`, 127.0.0.1 unless the operator says
//! otherwise) through the same accept loop as every role, with a bound on clients at
//! once and on the time and size of a request head. What it shows comes from the list
//! the supervisor publishes ([`Services`]); rendering takes the list's lock only to
//! copy it (a handful of `Arc`s), so a scrape never waits on, or holds up, a service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::io::{AsyncReadExt, AsyncWriteExt};

use crate::Result;
use crate::net::listener::{self, Conn, ServerConfig};
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::rt::{self, TcpListener};

/// Scrapers and probes served at once; more are closed at once (a monitoring system
/// uses a few; a hundred at once is still far inside this).
const MAX_CLIENTS: usize = 512;

/// A request head must arrive within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request head read; longer ones get 431.
const HEAD_MAX: usize = 8 * 1024;

/// Headers parsed at most.
const HEADERS_MAX: usize = 32;

/// A service as the admin listener shows it.
#[derive(Clone)]
pub struct ServiceInfo {
    pub name: String,
    pub role: String,
    pub stats: Arc<Stats>,
    /// Whether its accept loops are running.
    pub up: Arc<AtomicBool>,
    pub started: SystemTime,
    /// The addresses it listens on (the ports picked, for port 0).
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
}

/// The list of services the supervisor publishes and the admin listener reads.
#[derive(Clone, Default)]
pub struct Services(Arc<Mutex<Vec<ServiceInfo>>>);

impl Services {
    /// The list, locked (a panic elsewhere while it was held leaves it usable).
    pub fn lock(&self) -> MutexGuard<'_, Vec<ServiceInfo>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the list.
    pub fn snapshot(&self) -> Vec<ServiceInfo> {
        self.lock().clone()
    }
}

/// Serves the admin endpoints on `listener` until `stop` fires.
pub async fn run(listener: TcpListener, services: Services, stop: Shutdown) {
    let config = Arc::new(ServerConfig {
        max_conns: MAX_CLIENTS,
        idle_timeout: Some(HEAD_TIMEOUT),
        ..ServerConfig::default()
    });
    listener::serve("admin", listener, config, Stats::new(), stop, move |conn| {
        answer(conn, services.clone())
    })
    .await;
}

/// Reads one request and answers it.
async fn answer(conn: Conn, services: Services) -> Result<()> {
    let mut stream = conn.stream;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    // One deadline for the whole head, not one per read: a client that trickles a byte
    // now and then must not hold one of the MAX_CLIENTS places for hours.
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let complete = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match rt::timeout(left, stream.read(&mut buf)).await {
            Some(Ok(n)) => n,
            _ => return Ok(()), // stalled or gone: nothing to answer
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4 <= HEAD_MAX;
        }
        if head.len() > HEAD_MAX {
            break false;
        }
    };
    let response = if complete {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let head_only = request.method == Some("HEAD");
                let target = request.path.unwrap_or("/");
                let path = target.split('?').next().unwrap_or(target);
                match request.method {
                    Some("GET" | "HEAD") => respond(path, &services, head_only),
                    _ => plain(405, "Method Not Allowed", "only GET and HEAD\n", head_only),
                }
            }
            _ => plain(400, "Bad Request", "bad request\n", false),
        }
    } else {
        plain(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
            false,
        )
    };
    let _ = rt::timeout(HEAD_TIMEOUT, stream.write_all(&response)).await;
    let _ = stream.socket().shut_both();
    Ok(())
}

/// The response for `path`.
fn respond(path: &str, services: &Services, head_only: bool) -> Vec<u8> {
    let list = services.snapshot();
    match path {
        "/metrics" => {
            let views: Vec<crate::metrics::ServiceView<'_>> = list
                .iter()
                .map(|s| crate::metrics::ServiceView {
                    name: &s.name,
                    role: &s.role,
                    stats: &s.stats,
                    up: s.up.load(Ordering::Relaxed),
                    started: s.started,
                })
                .collect();
            let body = crate::metrics::render(&views);
            response(
                200,
                "OK",
                crate::metrics::CONTENT_TYPE,
                body.as_bytes(),
                head_only,
            )
        }
        "/healthz" => {
            let down: Vec<&str> = list
                .iter()
                .filter(|s| !s.up.load(Ordering::Relaxed))
                .map(|s| s.name.as_str())
                .collect();
            if down.is_empty() {
                plain(200, "OK", "ok\n", head_only)
            } else {
                plain(
                    503,
                    "Service Unavailable",
                    &format!("down: {}\n", down.join(", ")),
                    head_only,
                )
            }
        }
        "/services" => {
            let json: Vec<serde_json::Value> = list
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "role": s.role,
                        "up": s.up.load(Ordering::Relaxed),
                        "tcp": s.tcp.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "udp": s.udp.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "connections": s.stats.active(),
                        "started": s.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    })
                })
                .collect();
            let mut body = serde_json::to_vec_pretty(&json).unwrap_or_default();
            body.push(b'\n');
            response(200, "OK", "application/json", &body, head_only)
        }
        _ => plain(
            404,
            "Not Found",
            "not found: try /metrics, /healthz or /services\n",
            head_only,
        ),
    }
}

/// A text/plain response.
fn plain(code: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    response(
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        head_only,
    )
}

/// A whole response, closing the connection.
fn response(code: u16, reason: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nServer: switchboard\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}
