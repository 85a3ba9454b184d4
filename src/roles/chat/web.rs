//! Chat in the browser (`chat --web ADDR`): one listener serves the page (`GET /`, its
//! script and style) and WebSocket users (`GET /ws`, RFC 6455), who join the same
//! broker as telnet and UDP users.
//!
//! ```text
//!   browser ─▶ request head (httparse, --header-timeout) ─┬─ GET / , /app.js, /app.css ─▶ the page, then close
//!                                                         └─ GET /ws: checks (version, key, Origin) ─▶ 101
//!   ws frames ─▶ reader (one text frame = lines in) ─broker_tx─▶ Broker ─writer_tx─▶ web writer (one line = one text frame) ─▶ ws
//!                 └─ctl (ping, close code)─────────────────────────────────────────────▶ web writer
//! ```
//!
//! A web user is a reader task and a writer task on the broker, registered like a TCP
//! client (`Outbox::Tcp`: the same `--sendq` mailbox and byte bound, the same socket to
//! cut off), so every limit, notice and eviction is the same. The framing is
//! `async-tungstenite`'s over our `Stream` (plain or TLS): frames over `--max-line` close
//! with 1009 (the length is judged from the frame header, before the payload is read),
//! binary frames with 1003, protocol errors (unmasked frames, bad close codes, bad
//! UTF-8) with 1002 or 1007. Pings are answered by the library; a user silent for
//! [`PING_AFTER`] is pinged, and one silent for [`DEAD_AFTER`] is gone.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::{FutureExt, SinkExt, StreamExt};

use super::broker::{BrokerHandle, BrokerMsg, LeaveReason, Outbox, Queued, next_client_id};
use crate::Result;
use crate::net::lines::{Frame, Overlong, datagram_lines};
use crate::net::listener::Conn;
use crate::net::stream::Stream;
use crate::net::writer::Outgoing;
use crate::rt;

/// The page, its script and its style: in the binary, no CDN, no build step.
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// Lines written in one batch beyond which the writer frees its mailbox's grown queue
/// (as the TCP writer does).
const DEEP_BATCH: usize = 32;

/// The longest request head read, in bytes (beyond it: 431).
pub const MAX_HEAD: usize = 16 * 1024;

/// A web user this long silent is pinged.
pub const PING_AFTER: Duration = Duration::from_secs(20);

/// A web user this long silent (no frame, no pong) is gone: a dead browser is noticed
/// within a minute.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// The page's policy: scripts, styles and connections from the page's own origin only;
/// nothing inline, nothing remote, no frames, no forms, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `--web` and the options beside it.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Origins allowed to open `/ws` besides the page's own (`--web-origin`), as
    /// `scheme://host[:port]`, lower case, no trailing slash.
    pub origins: Vec<String>,
    /// How long a request head (and so a WebSocket handshake) may take.
    pub header_timeout: Duration,
    /// The chat's `--max-line` and `--sendq`.
    pub max_line: usize,
    pub sendq: usize,
}

/// What the web writer is told besides lines.
enum Ctl {
    Ping,
    Close(CloseCode, &'static str),
    /// Write out the pong the reader's ping left queued.
    Flush,
}

/// One connection to the web listener: a page request, or a WebSocket user.
pub async fn serve(conn: Conn, broker: BrokerHandle, web: Arc<WebConfig>) -> Result<()> {
    let tls = conn.tls.is_some();
    let peer = conn.peer;
    let mut stream = conn.stream;
    let head = match rt::timeout(web.header_timeout, read_head(&mut stream)).await {
        None => {
            log::debug!(peer = peer.to_string().as_str(); "chat web: no request head within --header-timeout");
            return Ok(());
        }
        Some(Err(e)) => {
            log::debug!(peer = peer.to_string().as_str(), error = e.to_string().as_str(); "chat web: reading the request failed");
            return Ok(());
        }
        Some(Ok(Head::TooLarge)) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                &[],
            )
            .await;
        }
        Some(Ok(Head::Bad)) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"bad request\n",
                &[],
            )
            .await;
        }
        Some(Ok(Head::Ok(head))) => head,
    };
    if head.method != "GET" {
        let allow = [("Allow", "GET")];
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            &allow,
        )
        .await;
    }
    match head.path.split('?').next().unwrap_or_default() {
        "/" | "/index.html" => {
            let csp = [("Content-Security-Policy", CSP)];
            respond(
                &mut stream,
                "200 OK",
                "text/html; charset=utf-8",
                INDEX_HTML.as_bytes(),
                &csp,
            )
            .await
        }
        "/app.js" => {
            respond(
                &mut stream,
                "200 OK",
                "text/javascript; charset=utf-8",
                APP_JS.as_bytes(),
                &[],
            )
            .await
        }
        "/app.css" => {
            respond(
                &mut stream,
                "200 OK",
                "text/css; charset=utf-8",
                APP_CSS.as_bytes(),
                &[],
            )
            .await
        }
        "/ws" => match upgrade(&head, tls, &web.origins) {
            Ok(accept) => {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                stream.write_all(response.as_bytes()).await?;
                stream.flush().await?;
                user(stream, head.rest, peer, broker, &web).await
            }
            Err(refusal) => {
                log::info!(peer = peer.to_string().as_str(), why = refusal.why; "chat web: WebSocket handshake refused");
                respond(
                    &mut stream,
                    refusal.status,
                    "text/plain",
                    refusal.why.as_bytes(),
                    refusal.headers,
                )
                .await
            }
        },
        // Browsers ask for an icon by themselves: there is none, and no error for it
        // in their console.
        "/favicon.ico" => respond(&mut stream, "204 No Content", "image/x-icon", b"", &[]).await,
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                &[],
            )
            .await
        }
    }
}

/// A request head, as far as this listener cares.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Bytes read beyond the head (a client's first frames, if it did not wait).
    rest: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header lists `token` (ignoring case).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

enum Head {
    Ok(Request),
    Bad,
    TooLarge,
}

async fn read_head(stream: &mut Stream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let request = Request {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    rest: buf[len..].to_vec(),
                };
                if req.version != Some(1) {
                    return Ok(Head::Bad);
                }
                return Ok(Head::Ok(request));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Ok(Head::TooLarge);
            }
            Err(_) => return Ok(Head::Bad),
        }
    }
}

/// A response with `Connection: close`, then the close.
async fn respond(
    stream: &mut Stream,
    status: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let _ = stream.close().await;
    Ok(())
}

/// Why a handshake is refused, and how to say it.
struct Refusal {
    status: &'static str,
    why: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

/// Checks a WebSocket handshake (RFC 6455 §4.2.1) and the Origin; the accept key.
fn upgrade(head: &Request, tls: bool, origins: &[String]) -> std::result::Result<String, Refusal> {
    let bad = |why| Refusal {
        status: "400 Bad Request",
        why,
        headers: &[],
    };
    if !head.lists("Upgrade", "websocket") || !head.lists("Connection", "upgrade") {
        return Err(bad(
            "not a WebSocket handshake (Upgrade: websocket expected)\n",
        ));
    }
    if head.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(Refusal {
            status: "426 Upgrade Required",
            why: "unsupported Sec-WebSocket-Version (13 expected)\n",
            headers: &[("Sec-WebSocket-Version", "13")],
        });
    }
    let key = head
        .header("Sec-WebSocket-Key")
        .map(str::trim)
        .unwrap_or_default();
    if !valid_key(key) {
        return Err(bad("bad Sec-WebSocket-Key\n"));
    }
    if let Some(origin) = head.header("Origin")
        && !origin_allowed(origin, head.header("Host"), tls, origins)
    {
        return Err(Refusal {
            status: "403 Forbidden",
            why: "origin not allowed (see --web-origin)\n",
            headers: &[],
        });
    }
    Ok(async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// A `Sec-WebSocket-Key`: base64 of 16 bytes (24 characters, `==` at the end).
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Whether a browser's `Origin` may open `/ws`: the page's own origin (the scheme this
/// listener speaks and the `Host` asked for) or one listed with `--web-origin`. Requests
/// without an Origin (not from a browser) are not cross-site and are not judged here.
pub fn origin_allowed(origin: &str, host: Option<&str>, tls: bool, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed.contains(&origin) {
        return true;
    }
    let Some(host) = host.map(|h| h.trim().to_ascii_lowercase()) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    let default_port = if tls { ":443" } else { ":80" };
    let own = format!("{scheme}://{host}");
    origin == own
        || origin == own.strip_suffix(default_port).unwrap_or(&own)
        || format!("{origin}{default_port}") == own
}

/// A WebSocket user, from the 101 on: a reader (this task) and a writer, on the broker.
async fn user(
    stream: Stream,
    rest: Vec<u8>,
    peer: std::net::SocketAddr,
    broker: BrokerHandle,
    web: &WebConfig,
) -> Result<()> {
    let socket = stream.socket().clone();
    let _ = socket.set_keepalive(Duration::from_secs(60));
    // Frames are judged by their header: one over the line limit (and a line end) is
    // refused before its payload is read; the lines in a message are then judged as a TCP
    // client's are. The read buffer is small: an idle user holds little. Frames are
    // gathered up to 8 KiB before a write (and all at the flush), so a batch of lines is
    // one write, as for a TCP client, not one per line.
    let limit = web.max_line.saturating_add(2);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws =
        WebSocketStream::from_partially_read(EndIsError(stream), rest, Role::Server, Some(config))
            .await;
    let (mut sender, mut receiver) = ws.split();
    let (writer_tx, writer_rx) = flume::bounded::<Queued>(web.sendq);
    let (ctl_tx, ctl_rx) = flume::bounded::<Ctl>(4);
    let (pong_tx, pong_rx) = flume::bounded::<()>(1);
    let queued = Arc::new(AtomicUsize::new(0));
    let id = next_client_id();
    log::info!(peer = peer.to_string().as_str(), id = id; "chat: web client joined");
    let writer = rt::spawn(async move {
        // The close frame sent once the broker has let go: the reader's code if it gave
        // one (after what the broker queued before the user left, such as its `! line
        // too long`), else a normal closure.
        let mut close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        loop {
            let next = {
                // The reader drops its senders when it ends: that is no reason to stop
                // (what the broker queued goes out first); the broker letting go is.
                let line = writer_rx.recv_async().fuse();
                let ctl = async {
                    match ctl_rx.recv_async().await {
                        Ok(ctl) => ctl,
                        Err(_) => std::future::pending().await,
                    }
                }
                .fuse();
                let pong = async {
                    match pong_rx.recv_async().await {
                        Ok(()) => Ctl::Flush,
                        Err(_) => std::future::pending().await,
                    }
                }
                .fuse();
                futures::pin_mut!(line, ctl, pong);
                futures::select_biased! {
                    c = ctl => Ok(Err(c)),
                    p = pong => Ok(Err(p)),
                    l = line => l.map(Ok).map_err(|_| ()),
                }
            };
            let sent = match next {
                // The broker let go: a /quit, an eviction, the shutdown, or the reader
                // left. Say goodbye.
                Err(()) => {
                    let _ = sender.close(Some(close)).await;
                    let _ = sender.flush().await;
                    break;
                }
                Ok(Err(Ctl::Ping)) => sender.send(Message::Ping(Vec::new().into())).await,
                Ok(Err(Ctl::Flush)) => sender.flush().await,
                Ok(Err(Ctl::Close(code, reason))) => {
                    close = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    Ok(())
                }
                Ok(Ok(first)) => {
                    // Everything queued now goes in one flush.
                    let mut result = feed_lines(&mut sender, &first).await;
                    drop(first);
                    let mut taken = 1;
                    while result.is_ok() {
                        let Ok(more) = writer_rx.try_recv() else {
                            break;
                        };
                        result = feed_lines(&mut sender, &more).await;
                        taken += 1;
                    }
                    if taken > DEEP_BATCH && result.is_ok() {
                        // A burst grew the mailbox's queue, and a flume queue never
                        // shrinks: `drain` swaps it for an empty one (taking what came
                        // meanwhile), so an idle user does not hold a burst's capacity.
                        let late: Vec<Queued> = writer_rx.drain().collect();
                        for item in &late {
                            if result.is_ok() {
                                result = feed_lines(&mut sender, item).await;
                            }
                        }
                    }
                    match result {
                        Ok(()) => sender.flush().await,
                        Err(e) => Err(e),
                    }
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let outbox = Outbox::Tcp {
        writer_tx,
        queued,
        socket: socket.clone(),
    };
    if !broker.send(BrokerMsg::Join { id, outbox }).await {
        let _ = socket.shut_both();
        return Ok(());
    }
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let reason = loop {
        let wait = if pinged {
            DEAD_AFTER.saturating_sub(PING_AFTER)
        } else {
            PING_AFTER
        };
        let next = rt::timeout(wait, receiver.next()).await;
        let message = match next {
            None if pinged || last_heard.elapsed() >= DEAD_AFTER => {
                let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Away, "no answer to ping"));
                break LeaveReason::Idle;
            }
            None => {
                pinged = true;
                let _ = ctl_tx.try_send(Ctl::Ping);
                continue;
            }
            Some(None) => break LeaveReason::Closed,
            Some(Some(message)) => message,
        };
        last_heard = Instant::now();
        pinged = false;
        match message {
            Ok(Message::Text(text)) => {
                // Cut as a TCP client's stream is, by the same framer: a line's limit
                // leaves out its `\r\n`, and a `\n` at the end ends the last line rather
                // than starting an empty one. A message with a line over the limit is
                // refused whole, as one over it altogether is.
                let lines = datagram_lines(text.as_bytes(), web.max_line, Overlong::Drop);
                if lines.clone().any(|frame| frame == Frame::TooLong) {
                    broker.send(BrokerMsg::TooLong { id }).await;
                    let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Size, "line too long"));
                    break LeaveReason::Closed;
                }
                for frame in lines {
                    if !broker.send(BrokerMsg::said(id, frame)).await {
                        break;
                    }
                }
            }
            Ok(Message::Binary(_)) => {
                let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Unsupported, "text frames only"));
                break LeaveReason::Closed;
            }
            Ok(Message::Close(_)) => break LeaveReason::Closed,
            Ok(Message::Ping(_)) => {
                // tungstenite queues the pong (one at a time) but writes it out only when
                // it next reads or writes, and to a client that does not read, one more
                // pong joins the bytes waiting with every ping: memory without bound, and
                // no line for --sendq to count. The writer flushes it, and the reader
                // waits for that before reading on, so such a client is no longer read;
                // one that takes nothing for a minute is gone.
                match rt::timeout(DEAD_AFTER, pong_tx.send_async(())).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => break LeaveReason::Reset,
                    None => {
                        let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Away, "not reading"));
                        break LeaveReason::Idle;
                    }
                }
            }
            Ok(Message::Pong(_) | Message::Frame(_)) => {}
            Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                broker.send(BrokerMsg::TooLong { id }).await;
                let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Size, "line too long"));
                break LeaveReason::Closed;
            }
            Err(WsError::Utf8(_)) => {
                let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Invalid, "invalid UTF-8"));
                break LeaveReason::Closed;
            }
            Err(WsError::Protocol(e)) => {
                log::info!(id = id, error = e.to_string().as_str(); "chat: web client broke the protocol");
                let _ = ctl_tx.try_send(Ctl::Close(CloseCode::Protocol, "protocol error"));
                break LeaveReason::Closed;
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break LeaveReason::Closed,
            // The end of input (the browser went, or a `/quit` shut the read half): the
            // writer still says what is queued (`* bye`) and closes.
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break LeaveReason::Closed;
            }
            Err(_) => break LeaveReason::Reset,
        }
    };
    broker.send(BrokerMsg::Leave { id, reason }).await;
    drop((ctl_tx, pong_tx));
    // The writer says goodbye (close frame) once the broker has let go; then the socket
    // is closed whatever the browser does.
    let _ = rt::timeout(Duration::from_secs(2), writer).await;
    let _ = socket.shut_both();
    Ok(())
}

/// Our stream, with its end of input told as an error. tungstenite takes an end of input
/// without a close frame for the end of the whole session, writing too: the writer could
/// then send nothing more, not the `* bye` after a `/quit` (whose reader the broker stops
/// by shutting the socket's read half) nor the close frame after it.
struct EndIsError(Stream);

impl AsyncRead for EndIsError {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match ready!(Pin::new(&mut self.get_mut().0).poll_read(cx, buf)) {
            Ok(0) if !buf.is_empty() => Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into())),
            other => Poll::Ready(other),
        }
    }
}

impl AsyncWrite for EndIsError {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}

/// Queues one broker line (one or more `\n`-ended lines) as text frames, one per line.
async fn feed_lines<S>(
    sender: &mut async_tungstenite::WebSocketSender<S>,
    item: &Queued,
) -> std::result::Result<(), WsError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let text = String::from_utf8_lossy(item.bytes());
    for line in text.split_terminator('\n') {
        sender.feed(Message::Text(line.to_string().into())).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_own_origin_and_listed_ones_may_open_the_socket() {
        let none: &[String] = &[];
        assert!(origin_allowed(
            "http://127.0.0.1:7080",
            Some("127.0.0.1:7080"),
            false,
            none
        ));
        assert!(origin_allowed(
            "HTTP://Chat.Example/",
            Some("chat.example"),
            false,
            none
        ));
        assert!(origin_allowed(
            "https://chat.example",
            Some("chat.example:443"),
            true,
            none
        ));
        assert!(!origin_allowed(
            "http://chat.example",
            Some("chat.example"),
            true,
            none
        ));
        assert!(!origin_allowed(
            "https://evil.example",
            Some("chat.example"),
            true,
            none
        ));
        assert!(!origin_allowed("null", Some("chat.example"), false, none));
        assert!(!origin_allowed("http://127.0.0.1:7080", None, false, none));
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            "https://app.example",
            Some("chat.example"),
            true,
            &listed
        ));
    }

    #[test]
    fn keys_are_16_bytes_of_base64() {
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25j!Q=="));
        assert!(!valid_key(""));
    }
}
