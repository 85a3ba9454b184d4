//! `proxy --ftp`: FTP through the proxy — the control connection read as lines, the
//! data connections opened by the proxy itself.
//!
//! ```text
//!   client ─▶ command pump ──(PASV|EPSV|PORT|…, in order)──▶ reply pump ─▶ client
//!              │ PORT/EPRT: listen upstream side,            │ 227/229: listen client side,
//!              │ rewrite to our address                      │ rewrite to our address
//!              ▼                                             ▼
//!            active data channel                          passive data channel
//!   (server connects in, we connect the client)   (client connects in, we connect the server)
//! ```
//!
//! Wire format (RFC 959, RFC 2428): commands are `VERB[ ARG]\r\n` (any case, a bare `\n`
//! taken too); replies are `ddd text\r\n`, or `ddd-text` … `ddd text` for a multi-line
//! reply. Passive: `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` and `229 Entering
//! Extended Passive Mode (|||port|)`; active: `PORT h1,h2,h3,h4,p1,p2` and
//! `EPRT |1|addr|port|` (`|2|` for IPv6).
//!
//! The command pump tells the reply pump, over a bounded channel, what each command it
//! forwarded was, before forwarding it; the reply pump takes one entry per final reply
//! (1xx replies and the greeting take none), so a reply is rewritten only when it
//! answers a `PASV`/`EPSV` the proxy saw. The address inside a `227` is never used: the
//! data connection goes to the upstream's peer address, at the reply's port.
//!
//! Try it: `switchboard proxy --ftp --upstream 127.0.0.1:21 --listen 127.0.0.1:2121`,
//! then `curl ftp://127.0.0.1:2121/ --user anonymous:x`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::{End, Ended, FinNotice, Way};
use crate::net::handoff::{Delivery, Handoff};
use crate::net::idle::Activity;
use crate::net::reader::{Input, Reader};
use crate::net::shutdown::{self, Shutdown, Trigger};
use crate::net::socket::Hangup;
use crate::net::stats::Stats;
use crate::net::stream::{ReadHalf, Stream, WriteHalf};
use crate::rt::{self, TcpListener};

/// The longest control line parsed. A longer command (no FTP command needs one) is
/// refused: the server never sees it (a server that splits long lines would take its
/// tail for a command the proxy never checked). A longer reply is paired by its start
/// and passes untouched, unless it must be replaced (a `227`/`229` the proxy answers
/// itself): then the rest of it is dropped.
pub const MAX_LINE: usize = 4096;

/// The most of one multi-line reply held back until its last line (it may need
/// rewriting); past it the reply passes through untouched as it comes.
pub const MAX_REPLY: usize = 16 * 1024;

/// Commands forwarded and not yet answered that the reply pump is told about. A client
/// pipelining more waits (the command pump stops reading) until replies come back.
const PENDING_COMMANDS: usize = 32;

/// Data channels (listeners waiting, or connections relaying) one control session may
/// have open at once; a `PASV`/`PORT` past it is answered `425`. A client uses one at
/// a time; a few allow for one being torn down while the next opens.
pub const MAX_DATA_CHANNELS: usize = 4;

/// `--ftp`'s settings.
#[derive(Clone, Debug)]
pub struct FtpConfig {
    /// `--ftp-data-ports LOW-HIGH`: the ports data listeners bind (both sides), for
    /// firewalls. `None`: any port the kernel gives.
    pub data_ports: Option<(u16, u16)>,
    /// `--ftp-data-timeout`: how long a data listener waits for its one connection,
    /// and the connect to the other side may take.
    pub data_timeout: Duration,
    /// Where the next bind in `data_ports` starts (shared: sessions spread over it).
    cursor: Arc<AtomicU32>,
}

impl FtpConfig {
    pub fn new(data_ports: Option<(u16, u16)>, data_timeout: Duration) -> Self {
        FtpConfig {
            data_ports,
            data_timeout,
            cursor: Arc::new(AtomicU32::new(0)),
        }
    }
}

/// Parses `LOW-HIGH` (`--ftp-data-ports`).
pub fn parse_port_range(text: &str) -> std::result::Result<(u16, u16), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected LOW-HIGH"))?;
    let low: u16 = low.trim().parse().map_err(|e| format!("{low:?}: {e}"))?;
    let high: u16 = high.trim().parse().map_err(|e| format!("{high:?}: {e}"))?;
    if low == 0 || low > high {
        return Err(format!("{text:?}: need 1 <= LOW <= HIGH"));
    }
    Ok((low, high))
}

// ---------------------------------------------------------------------------------
// The wire: pure parsing and formatting.

/// Six comma-separated numbers 0..=255 (`h1,h2,h3,h4,p1,p2`) at the start of `text`
/// (spaces allowed around the commas); the address and port they name.
fn six_numbers(text: &str) -> Option<SocketAddrV4> {
    let mut n = [0u8; 6];
    let mut parts = text.split(',');
    for slot in &mut n {
        *slot = parts.next()?.trim().parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let ip = Ipv4Addr::new(n[0], n[1], n[2], n[3]);
    Some(SocketAddrV4::new(
        ip,
        u16::from(n[4]) << 8 | u16::from(n[5]),
    ))
}

/// The address in a `227` reply line (`227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`,
/// parentheses optional, as RFC 1123 4.1.2.6 warns): the first run of digits and
/// commas after the code that makes six numbers.
pub fn parse_227(line: &str) -> Option<SocketAddrV4> {
    let text = line.strip_prefix("227")?.trim_end();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let end = bytes[i..]
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b',' || *b == b' '))
                .map_or(bytes.len(), |p| i + p);
            if let Some(addr) = six_numbers(&text[i..end]) {
                return Some(addr);
            }
            i = end;
        }
        i += 1;
    }
    None
}

/// A `227` naming `addr`.
pub fn format_227(addr: SocketAddrV4, eol: &str) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let (p1, p2) = (addr.port() >> 8, addr.port() & 0xff);
    format!("227 Entering Passive Mode ({a},{b},{c},{d},{p1},{p2}).{eol}")
}

/// The port in a `229` reply line: `(<d><d><d>port<d>)`, `<d>` one printable character.
pub fn parse_229(line: &str) -> Option<u16> {
    let text = line.strip_prefix("229")?;
    let open = text.find('(')?;
    let inner = &text[open + 1..];
    let close = inner.find(')')?;
    let inner = &inner[..close];
    let d = inner.chars().next()?;
    if !d.is_ascii_graphic() {
        return None;
    }
    let parts: Vec<&str> = inner.split(d).collect();
    // "|||port|" splits into ["", "", "", "port", ""].
    match parts.as_slice() {
        ["", "", "", port, ""] => port.parse().ok().filter(|p| *p != 0),
        _ => None,
    }
}

/// A `229` naming `port` (the client connects to the control connection's address).
pub fn format_229(port: u16, eol: &str) -> String {
    format!("229 Entering Extended Passive Mode (|||{port}|){eol}")
}

/// The address in a `PORT` argument (`h1,h2,h3,h4,p1,p2`).
pub fn parse_port(arg: &str) -> Option<SocketAddr> {
    six_numbers(arg.trim()).map(SocketAddr::V4)
}

/// The address in an `EPRT` argument (`|1|addr|port|`, `|2|addr|port|`, any delimiter).
pub fn parse_eprt(arg: &str) -> Option<SocketAddr> {
    let arg = arg.trim();
    let d = arg.chars().next()?;
    if !d.is_ascii_graphic() {
        return None;
    }
    let parts: Vec<&str> = arg.split(d).collect();
    let ["", proto, addr, port, ""] = parts.as_slice() else {
        return None;
    };
    let ip: IpAddr = match *proto {
        "1" => IpAddr::V4(addr.parse().ok()?),
        "2" => IpAddr::V6(addr.parse().ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

/// The command naming `addr` for the server: `PORT` for IPv4 if the client used `PORT`,
/// otherwise `EPRT`.
pub fn format_active(addr: SocketAddr, eprt: bool, eol: &str) -> String {
    match addr {
        SocketAddr::V4(v4) if !eprt => {
            let [a, b, c, d] = v4.ip().octets();
            let (p1, p2) = (v4.port() >> 8, v4.port() & 0xff);
            format!("PORT {a},{b},{c},{d},{p1},{p2}{eol}")
        }
        SocketAddr::V4(v4) => format!("EPRT |1|{}|{}|{eol}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("EPRT |2|{}|{}|{eol}", v6.ip(), v6.port()),
    }
}

/// A command line's verb (upper-cased) and argument, without the line's end, read as
/// the most lenient server would: Telnet commands (`IAC x`, `IAC WILL|WONT|DO|DONT x`)
/// taken out, as RFC 959's Telnet control connection has servers do, blanks (spaces,
/// tabs) before the verb skipped, and the verb ended by a space or a tab. Whatever some
/// server could run as `PORT` is read as `PORT` here, and checked.
pub fn split_command(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(&strip_telnet(strip_eol(line))).into_owned();
    let text = text.trim_start_matches([' ', '\t']);
    let (verb, arg) = text.split_once([' ', '\t']).unwrap_or((text, ""));
    (verb.to_ascii_uppercase(), arg.to_string())
}

/// `line` without its Telnet commands: `IAC IAC` is a data byte 255, `IAC` and one of
/// `WILL`/`WONT`/`DO`/`DONT` and its option go, as does `IAC` and any other byte.
fn strip_telnet(line: &[u8]) -> Vec<u8> {
    const IAC: u8 = 255;
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i] != IAC {
            out.push(line[i]);
            i += 1;
            continue;
        }
        match line.get(i + 1) {
            Some(&IAC) => {
                out.push(IAC);
                i += 2;
            }
            Some(251..=254) => i += 3,
            _ => i += 2,
        }
    }
    out
}

/// How a reply line starts: its code and whether it opens a multi-line reply (`ddd-`).
/// `None` for a line that is not a reply's first or last line.
pub fn reply_code(line: &[u8]) -> Option<(u16, bool)> {
    let line = strip_eol(line);
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None | Some(b' ') => Some((code, false)),
        Some(b'-') => Some((code, true)),
        _ => None,
    }
}

/// `line` without its `\r\n` or `\n`.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The line end `line` used, for a line written in its place (`\r\n` for the start
/// of a line too long to hold).
fn eol(line: &[u8]) -> &'static str {
    if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
        "\n"
    } else {
        "\r\n"
    }
}

// ---------------------------------------------------------------------------------
// The control session.

/// What a forwarded command was, for pairing with its reply.
#[derive(Debug)]
enum Sent {
    Pasv,
    Epsv,
    Auth,
    /// A command the proxy refused itself: a `NOOP` went to the server in its place,
    /// and this reply replaces the `NOOP`'s, in order.
    Refused(String),
    Other,
}

/// A channel whose only meaning is being dropped.
enum Void {}

/// Data channels' totals, for the session's line.
#[derive(Default)]
struct Counts {
    channels: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// Open now (listening or relaying), for [`MAX_DATA_CHANNELS`].
    open: AtomicUsize,
}

/// What both pumps and every data channel of one control session share.
struct Data {
    cfg: FtpConfig,
    splice: Option<usize>,
    splice_always: bool,
    /// The control client's address: the only one a passive data connection is
    /// taken from, and the only one an active one goes to.
    client_ip: IpAddr,
    /// The proxy's address on the client's side (where passive listeners bind).
    client_side: IpAddr,
    /// The upstream's peer address: where passive data connections go, and the only
    /// one an active one is taken from.
    upstream_ip: IpAddr,
    /// The proxy's address on the upstream's side (where active listeners bind).
    upstream_side: IpAddr,
    activity: Arc<Activity>,
    stats: Arc<Stats>,
    counts: Arc<Counts>,
    /// Fires when the control session ends: every data channel closes.
    close: Shutdown,
    /// Dropped when the last holder of this (pumps, data channels) has ended.
    _done_tx: flume::Sender<Void>,
    /// Set once `AUTH` was accepted (`234`): from then on both directions pass bytes.
    opaque: AtomicBool,
}

/// One control session's FTP side, made by the session after it connected upstream.
pub(super) struct Control {
    /// The pumps' shares, taken by [`Control::carry`].
    commands: Option<(Arc<Data>, flume::Sender<Sent>)>,
    replies: Option<(Arc<Data>, flume::Receiver<Sent>)>,
    counts: Arc<Counts>,
    close: Trigger,
    done_rx: flume::Receiver<Void>,
}

/// The data channels' totals, for the session's line.
pub(super) struct DataTotals {
    pub channels: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// The addresses a control session's data channels are judged and made by.
pub(super) struct Addresses {
    pub client: SocketAddr,
    pub client_side: SocketAddr,
    pub upstream: SocketAddr,
    pub upstream_side: SocketAddr,
}

impl Control {
    pub(super) fn new(
        cfg: &super::ProxyConfig,
        ftp: &FtpConfig,
        addrs: Addresses,
        activity: &Arc<Activity>,
        stats: &Arc<Stats>,
    ) -> Control {
        let (close, close_rx) = shutdown::channel();
        let (done_tx, done_rx) = flume::bounded(0);
        let counts = Arc::new(Counts::default());
        let data = Arc::new(Data {
            cfg: ftp.clone(),
            splice: cfg.splice,
            splice_always: cfg.splice_always,
            // IPv4 clients of a dual-stack listener show as `::ffff:a.b.c.d`; a `PORT`
            // names `a.b.c.d`. Compared in canonical form.
            client_ip: addrs.client.ip().to_canonical(),
            client_side: addrs.client_side.ip().to_canonical(),
            upstream_ip: addrs.upstream.ip().to_canonical(),
            upstream_side: addrs.upstream_side.ip().to_canonical(),
            activity: activity.clone(),
            stats: stats.clone(),
            counts: counts.clone(),
            close: close_rx,
            _done_tx: done_tx,
            opaque: AtomicBool::new(false),
        });
        let (sent_tx, sent_rx) = flume::bounded(PENDING_COMMANDS);
        Control {
            commands: Some((data.clone(), sent_tx)),
            replies: Some((data, sent_rx)),
            counts,
            close,
            done_rx,
        }
    }

    /// Starts one direction of the control connection, as [`super::carry`] does but
    /// copying and reading lines: `commands` for client → server, else server → client.
    pub(super) fn carry(
        &mut self,
        commands: bool,
        from: ReadHalf,
        to: WriteHalf,
        prefix: Vec<u8>,
        way: Way,
    ) -> (rt::JoinHandle<Ended>, Delivery) {
        let side = match commands {
            true => Side::Commands(self.commands.take().expect("one command pump")),
            false => Side::Replies(self.replies.take().expect("one reply pump")),
        };
        let task = way.stats.task();
        let source = from.socket().clone();
        let mut writer = Handoff::spawn(to, &way.stats);
        let delivery = writer.delivery();
        let running = rt::spawn_here(async move {
            let _task = task;
            if !prefix.is_empty() {
                let _ = writer.send(prefix).await;
            }
            let reader = Reader::counted(from, None, way.stats.clone());
            let (bytes, end) = control_pump(reader, writer, side, way).await;
            let end = match end {
                End::Fin if source.connection_gone() => End::FinAfterReset,
                end => end,
            };
            (bytes, end, Instant::now())
        });
        (running, delivery)
    }

    /// Closes every data channel (the control session has ended) and waits for them
    /// to end; their totals.
    pub(super) async fn close(self) -> DataTotals {
        let Control {
            commands,
            replies,
            counts,
            close,
            done_rx,
        } = self;
        drop((commands, replies));
        close.fire();
        // Disconnected once every data channel (and both pumps) has dropped its share.
        let _ = done_rx.recv_async().await;
        DataTotals {
            channels: counts.channels.load(Ordering::Relaxed),
            bytes_up: counts.up.load(Ordering::Relaxed),
            bytes_down: counts.down.load(Ordering::Relaxed),
        }
    }
}

/// Which direction a control pump reads, with what it needs.
enum Side {
    Commands((Arc<Data>, flume::Sender<Sent>)),
    Replies((Arc<Data>, flume::Receiver<Sent>)),
}

/// The reply pump's place in the reply stream.
#[derive(Default)]
struct Replies {
    /// Inside a multi-line reply with this code.
    open: Option<u16>,
    /// The reply's lines so far (up to [`MAX_REPLY`]).
    held: Vec<u8>,
    /// The reply outgrew `held`: its lines pass as they come.
    overflowed: bool,
    /// The greeting (the first final reply, answering no command) has passed.
    greeted: bool,
}

/// One direction of the control connection: lines parsed (rewritten where a data
/// channel is made), everything else untouched. Ends as [`super::pump`] does.
async fn control_pump(
    mut reader: Reader,
    mut writer: Handoff,
    mut side: Side,
    way: Way,
) -> (u64, End) {
    let Way {
        activity,
        fin: (label, notes_tx),
        tap,
        ..
    } = way;
    let data = match &side {
        Side::Commands((d, _)) | Side::Replies((d, _)) => d.clone(),
    };
    let mut buf: Vec<u8> = Vec::new();
    // Inside a line longer than MAX_LINE: the rest of it passes through to its end,
    // or, with `dropping`, is dropped (it was refused or replaced).
    let mut overlong = false;
    let mut dropping = false;
    let mut replies = Replies::default();
    let mut said_opaque = false;
    // The server's writer went away while a command waited for the reply pump.
    let mut writer_gone = false;
    let end = loop {
        let chunk = match reader.next().await {
            Ok(Input::Data(chunk)) => chunk,
            Ok(Input::Eof) | Ok(Input::Idle) => break End::Fin,
            Err(_) => break End::Reset,
        };
        activity.touch();
        if let Some((direction, peer)) = tap {
            super::log_tap(direction, peer, &chunk);
        }
        let mut out = Vec::new();
        if data.opaque.load(Ordering::Acquire) {
            out.append(&mut buf);
            out.extend_from_slice(&chunk);
        } else {
            buf.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
                let line = &buf[start..start + pos + 1];
                start += pos + 1;
                if overlong {
                    overlong = false;
                    if !std::mem::take(&mut dropping) {
                        out.extend_from_slice(line);
                    }
                    continue;
                }
                if data.opaque.load(Ordering::Acquire) {
                    out.extend_from_slice(line);
                    continue;
                }
                match &mut side {
                    Side::Commands((data, sent_tx)) => {
                        let (sent, bytes) = on_command(data, line);
                        if !tell(sent_tx, sent, &mut writer, &mut out).await {
                            writer_gone = true;
                            break;
                        }
                        out.extend_from_slice(&bytes);
                    }
                    Side::Replies((data, sent_rx)) => {
                        on_reply_line(data, sent_rx, &mut replies, line, &mut out);
                    }
                }
            }
            buf.drain(..start);
            if writer_gone {
                break End::WriterGone;
            }
            if data.opaque.load(Ordering::Acquire) {
                out.append(&mut buf);
            } else if overlong && !buf.is_empty() {
                if dropping {
                    buf.clear();
                } else {
                    out.append(&mut buf);
                }
            } else if buf.len() > MAX_LINE {
                // A line too long to hold: judged by its start, now.
                overlong = true;
                match &mut side {
                    Side::Commands((data, sent_tx)) => {
                        // Refused: a NOOP goes in its place, the rest of it nowhere.
                        let (sent, bytes) = on_command(data, &buf);
                        if !tell(sent_tx, sent, &mut writer, &mut out).await {
                            break End::WriterGone;
                        }
                        out.extend_from_slice(&bytes);
                        dropping = true;
                    }
                    Side::Replies((data, sent_rx)) => {
                        dropping = on_reply_line(data, sent_rx, &mut replies, &buf, &mut out);
                        if !dropping {
                            // What was held goes now, in order, and the rest as it comes.
                            out.append(&mut replies.held);
                            replies.overflowed |= replies.open.is_some();
                        }
                    }
                }
                buf.clear();
            }
        }
        if data.opaque.load(Ordering::Acquire) && !said_opaque {
            said_opaque = true;
            if matches!(side, Side::Replies(_)) {
                log::info!(role = "proxy", client = data.client_ip.to_string().as_str(); "proxy --ftp: AUTH accepted (234): the control connection is TLS from here, passed through unparsed; data channels are no longer rewritten");
            }
        }
        if out.is_empty() {
            continue;
        }
        let on_fin = || {
            let _ = notes_tx.try_send(label);
        };
        match reader.watch(writer.send(out), on_fin).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break End::WriterGone,
            Err(Hangup::Reset | Hangup::Fin) => break End::Reset,
        }
    };
    // A partial last line (no end of line before EOF) still goes through.
    if !buf.is_empty() && end == End::Fin {
        let _ = writer.send(std::mem::take(&mut buf)).await;
    }
    (reader.bytes, end)
}

/// Tells the reply pump what a command is, before it is forwarded. With the pump's
/// queue full, first lets the server see what it must answer (`out`), then waits.
/// False: the server's writer is gone.
async fn tell(
    sent_tx: &flume::Sender<Sent>,
    sent: Sent,
    writer: &mut Handoff,
    out: &mut Vec<u8>,
) -> bool {
    if let Err(flume::TrySendError::Full(sent)) = sent_tx.try_send(sent) {
        if !out.is_empty() && writer.send(std::mem::take(out)).await.is_err() {
            return false;
        }
        let _ = sent_tx.send_async(sent).await;
    }
    true
}

/// One command line from the client (or the start of one longer than [`MAX_LINE`]):
/// what it is for the reply pump, and the bytes to forward (the line itself, a
/// rewritten `PORT`/`EPRT`, or a `NOOP` in place of a refused one).
fn on_command(data: &Arc<Data>, line: &[u8]) -> (Sent, Vec<u8>) {
    let eol = eol(line);
    if line.len() > MAX_LINE {
        log::info!(client = data.client_ip.to_string().as_str(), bytes_at_least = line.len() as u64;
            "proxy --ftp: refused a command line longer than the limit");
        return (
            Sent::Refused(format!(
                "500 proxy: command line too long (over {MAX_LINE} bytes){eol}"
            )),
            format!("NOOP{eol}").into_bytes(),
        );
    }
    let (verb, arg) = split_command(line);
    match verb.as_str() {
        "PASV" => (Sent::Pasv, line.to_vec()),
        "EPSV" if arg.trim().eq_ignore_ascii_case("ALL") => (Sent::Other, line.to_vec()),
        "EPSV" => (Sent::Epsv, line.to_vec()),
        "AUTH" => (Sent::Auth, line.to_vec()),
        "PORT" | "EPRT" => {
            let eprt = verb == "EPRT";
            let target = if eprt {
                parse_eprt(&arg)
            } else {
                parse_port(&arg)
            };
            match active(data, target, eprt, eol) {
                Ok(command) => (Sent::Other, command.into_bytes()),
                Err(reply) => (Sent::Refused(reply), format!("NOOP{eol}").into_bytes()),
            }
        }
        _ => (Sent::Other, line.to_vec()),
    }
}

/// Active mode: checks the client's address, opens a listener on the upstream's side
/// for the server to connect to, and returns the command naming it; or the reply that
/// refuses.
fn active(
    data: &Arc<Data>,
    target: Option<SocketAddr>,
    eprt: bool,
    eol: &str,
) -> std::result::Result<String, String> {
    let Some(target) = target else {
        return Err(format!("501 proxy: cannot parse that address{eol}"));
    };
    if target.ip().to_canonical() != data.client_ip || target.port() < 1024 {
        log::info!(client = data.client_ip.to_string().as_str(), asked = target.to_string().as_str();
            "proxy --ftp: refused an active data address (not the control client's, or a port below 1024)");
        return Err(format!(
            "500 proxy: only your own address, port 1024 or above{eol}"
        ));
    }
    let Some(slot) = Slot::take(data) else {
        return Err(format!("425 proxy: too many data connections open{eol}"));
    };
    let listener = bind_data(data, data.upstream_side)
        .map_err(|e| format!("425 proxy: cannot listen for the data connection ({e}){eol}"))?;
    let ours = listener
        .local_addr()
        .map_err(|e| format!("425 proxy: {e}{eol}"))?;
    let task_data = data.clone();
    rt::spawn_here(async move {
        let _slot = slot;
        channel(task_data, listener, Mode::Active { client: target }).await;
    });
    Ok(format_active(ours, eprt || ours.is_ipv6(), eol))
}

/// One line from the server (or the start of one longer than [`MAX_LINE`]), into
/// `out` (held, rewritten, or as it came). True if it was replaced, not passed: the
/// rest of a long line must then be dropped.
fn on_reply_line(
    data: &Arc<Data>,
    sent_rx: &flume::Receiver<Sent>,
    st: &mut Replies,
    line: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let code = match st.open {
        Some(open) => match reply_code(line) {
            Some((code, false)) if code == open => Some(code),
            _ => None,
        },
        None => match reply_code(line) {
            Some((code, true)) => {
                st.open = Some(code);
                st.held.extend_from_slice(line);
                return false;
            }
            Some((code, false)) => Some(code),
            None => {
                // Not a reply line outside a reply: nothing to pair, pass it.
                out.extend_from_slice(line);
                return false;
            }
        },
    };
    let Some(code) = code else {
        // A continuation line: held (never rewritten) while the reply fits.
        if st.overflowed || st.held.len() + line.len() > MAX_REPLY {
            out.append(&mut st.held);
            st.overflowed = true;
            out.extend_from_slice(line);
        } else {
            st.held.extend_from_slice(line);
        }
        return false;
    };
    // `line` ends a reply.
    st.open = None;
    st.overflowed = false;
    let before = std::mem::take(&mut st.held);
    if code < 200 {
        out.extend_from_slice(&before);
        out.extend_from_slice(line);
        return false;
    }
    if !st.greeted {
        st.greeted = true;
        out.extend_from_slice(&before);
        out.extend_from_slice(line);
        return false;
    }
    let sent = match sent_rx.try_recv() {
        Ok(sent) => sent,
        // "Closing": the client must see it, whatever it answers.
        Err(_) if code == 421 => Sent::Other,
        Err(_) => {
            // A reply to no command: the client would take it for the answer to its
            // next one (a 227 for its PASV, naming wherever the server likes). Dropped.
            log::warn!(upstream = data.upstream_ip.to_string().as_str(), code = code;
                "proxy --ftp: a reply answering no command dropped");
            return true;
        }
    };
    let text = String::from_utf8_lossy(strip_eol(line));
    let eol = eol(line);
    let rewritten = match (sent, code) {
        (Sent::Pasv, 227) => Some(passive(
            data,
            parse_227(&text).map(|a| a.port()),
            false,
            eol,
        )),
        (Sent::Epsv, 229) => Some(passive(data, parse_229(&text), true, eol)),
        (Sent::Refused(reply), _) => {
            out.extend_from_slice(reply.as_bytes());
            return true;
        }
        (Sent::Auth, 234) => {
            data.opaque.store(true, Ordering::Release);
            None
        }
        _ => None,
    };
    match rewritten {
        Some(Ok(reply)) => {
            out.extend_from_slice(&before);
            out.extend_from_slice(reply.as_bytes());
            true
        }
        // A refusal is one line: the server's continuation lines go with it.
        Some(Err(reply)) => {
            out.extend_from_slice(reply.as_bytes());
            true
        }
        None => {
            out.extend_from_slice(&before);
            out.extend_from_slice(line);
            false
        }
    }
}

/// Passive mode: the server listens at `port` (on its peer address, whatever the reply
/// said); opens a listener on the client's side and returns the reply naming it, or the
/// `425` that replaces the server's reply.
fn passive(
    data: &Arc<Data>,
    port: Option<u16>,
    epsv: bool,
    eol: &str,
) -> std::result::Result<String, String> {
    let Some(port) = port.filter(|p| *p != 0) else {
        log::warn!(upstream = data.upstream_ip.to_string().as_str(); "proxy --ftp: the server's passive reply names no port it can be reached at; answering 425");
        return Err(format!(
            "425 proxy: the server's passive reply could not be read{eol}"
        ));
    };
    let Some(slot) = Slot::take(data) else {
        return Err(format!("425 proxy: too many data connections open{eol}"));
    };
    let listener = bind_data(data, data.client_side)
        .map_err(|e| format!("425 proxy: cannot listen for the data connection ({e}){eol}"))?;
    let ours = listener
        .local_addr()
        .map_err(|e| format!("425 proxy: {e}{eol}"))?;
    let reply = match (ours, epsv) {
        (_, true) => format_229(ours.port(), eol),
        (SocketAddr::V4(v4), false) => format_227(v4, eol),
        (SocketAddr::V6(_), false) => {
            return Err(format!(
                "425 proxy: PASV cannot name an IPv6 address; use EPSV{eol}"
            ));
        }
    };
    let server = SocketAddr::new(data.upstream_ip, port);
    let task_data = data.clone();
    rt::spawn_here(async move {
        let _slot = slot;
        channel(task_data, listener, Mode::Passive { server }).await;
    });
    Ok(reply)
}

/// One of [`MAX_DATA_CHANNELS`], given back when dropped.
struct Slot(Arc<Counts>);

impl Slot {
    fn take(data: &Data) -> Option<Slot> {
        let counts = &data.counts;
        if counts.open.fetch_add(1, Ordering::AcqRel) >= MAX_DATA_CHANNELS {
            counts.open.fetch_sub(1, Ordering::AcqRel);
            log::info!(client = data.client_ip.to_string().as_str(); "proxy --ftp: too many data channels open; answering 425");
            return None;
        }
        Some(Slot(counts.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds a data listener on `ip`, in `--ftp-data-ports` if given.
fn bind_data(data: &Data, ip: IpAddr) -> io::Result<TcpListener> {
    let std = match data.cfg.data_ports {
        None => std::net::TcpListener::bind(SocketAddr::new(ip, 0))?,
        Some((low, high)) => {
            let span = u32::from(high - low) + 1;
            let start = data.cfg.cursor.fetch_add(1, Ordering::Relaxed);
            let mut last =
                io::Error::new(io::ErrorKind::AddrInUse, "no free port in --ftp-data-ports");
            let mut bound = None;
            for i in 0..span {
                let port = low + ((start.wrapping_add(i)) % span) as u16;
                match std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
                    Ok(l) => {
                        bound = Some(l);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            bound.ok_or(last)?
        }
    };
    std.set_nonblocking(true)?;
    rt::listener_from_std(std)
}

/// Which way a data channel is made.
enum Mode {
    /// The client connects to our listener; we connect to the server there.
    Passive { server: SocketAddr },
    /// The server connects to our listener; we connect to the client there.
    Active { client: SocketAddr },
}

/// One data channel, from its listener to its end: one connection taken (from the
/// expected peer only, within the timeout; a stranger's is closed and the wait goes
/// on), the other side connected, and the two relayed with half-close until both
/// directions end or the control session does.
async fn channel(data: Arc<Data>, listener: TcpListener, mode: Mode) {
    let timeout = data.cfg.data_timeout;
    let deadline = Instant::now() + timeout;
    let expect = match mode {
        Mode::Passive { .. } => data.client_ip,
        Mode::Active { .. } => data.upstream_ip,
    };
    let kind = match mode {
        Mode::Passive { .. } => "passive",
        Mode::Active { .. } => "active",
    };
    let accepted = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let accept = rt::timeout(left, listener.accept()).fuse();
        let close = data.close.wait().fuse();
        futures::pin_mut!(accept, close);
        let got = futures::select! {
            got = accept => got,
            () = close => return,
        };
        match got {
            Some(Ok((stream, peer))) if peer.ip().to_canonical() == expect => break stream,
            Some(Ok((_, peer))) => {
                log::warn!(expected = expect.to_string().as_str(), peer = peer.to_string().as_str(), mode = kind;
                    "proxy --ftp: data connection from a stranger refused; still waiting");
            }
            Some(Err(e)) => {
                log::warn!(error = e.to_string().as_str(); "proxy --ftp: data listener failed");
                return;
            }
            None => {
                log::info!(expected = expect.to_string().as_str(), mode = kind, timeout_ms = timeout.as_millis() as u64;
                    "proxy --ftp: no data connection within the timeout; listener closed");
                return;
            }
        }
    };
    drop(listener);
    let target = match mode {
        Mode::Passive { server } => server,
        Mode::Active { client } => client,
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let connect = rt::timeout(left, Stream::connect(target)).fuse();
    let close = data.close.wait().fuse();
    futures::pin_mut!(connect, close);
    let connected = futures::select! {
        c = connect => c,
        () = close => return,
    };
    let other = match connected {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            log::warn!(target = target.to_string().as_str(), error = e.to_string().as_str(), mode = kind; "proxy --ftp: data connect failed");
            return;
        }
        None => {
            log::warn!(target = target.to_string().as_str(), mode = kind; "proxy --ftp: data connect timed out");
            return;
        }
    };
    let accepted = match Stream::new(accepted) {
        Ok(s) => s,
        Err(_) => return,
    };
    let (client, server) = match mode {
        Mode::Passive { .. } => (accepted, other),
        Mode::Active { .. } => (other, accepted),
    };
    data.counts.channels.fetch_add(1, Ordering::Relaxed);
    let (up, down) = relay(&data, client, server).await;
    data.counts.up.fetch_add(up, Ordering::Relaxed);
    data.counts.down.fetch_add(down, Ordering::Relaxed);
    log::debug!(mode = kind, bytes_up = up, bytes_down = down; "proxy --ftp: data channel closed");
}

/// Relays a data channel as a session's two directions ([`super::carry`]: spliced
/// when on and both are plain TCP) until both have ended, or the control session does;
/// the bytes delivered each way.
async fn relay(data: &Data, client: Stream, server: Stream) -> (u64, u64) {
    let sockets = [client.socket().clone(), server.socket().clone()];
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let splice = data
        .splice
        .filter(|_| client_write.raw().is_some() && server_write.raw().is_some());
    // Nobody waits on FIN notices here: a data channel ends with its directions.
    let (notes_tx, _notes_rx) = flume::bounded::<FinNotice>(2);
    let way = |label| Way {
        activity: data.activity.clone(),
        stats: data.stats.clone(),
        fin: (label, notes_tx.clone()),
        tap: None,
    };
    let (up, to_server) = super::carry(
        client_read,
        server_write,
        Vec::new(),
        splice,
        data.splice_always,
        way("client FIN"),
    );
    let (down, to_client) = super::carry(
        server_read,
        client_write,
        Vec::new(),
        splice,
        data.splice_always,
        way("server FIN"),
    );
    let shut = || {
        for s in &sockets {
            let _ = s.shut_both();
        }
    };
    let (mut up, mut down) = (up.fuse(), down.fuse());
    let mut server_done = std::pin::pin!(to_server.ended().fuse());
    let mut client_done = std::pin::pin!(to_client.ended().fuse());
    let mut close = std::pin::pin!(data.close.wait().fuse());
    let (mut ends, mut closed) = (0, false);
    while ends < 4 {
        futures::select! {
            (_, end, _) = up => {
                ends += 1;
                if !matches!(end, End::Fin | End::FinAfterReset) { shut(); }
            }
            (_, end, _) = down => {
                ends += 1;
                if !matches!(end, End::Fin | End::FinAfterReset) { shut(); }
            }
            () = server_done => ends += 1,
            () = client_done => ends += 1,
            () = close => {
                if !closed {
                    closed = true;
                    shut();
                }
            }
        }
    }
    (to_server.written(), to_client.written())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_227() {
        let a = parse_227("227 Entering Passive Mode (192,0,2,1,195,80).").unwrap();
        assert_eq!(a, "192.0.2.1:50000".parse().unwrap());
        // No parentheses, spaces after commas (RFC 1123 says take any form).
        let a = parse_227("227 =127,0,0,1, 4, 1").unwrap();
        assert_eq!(a, "127.0.0.1:1025".parse().unwrap());
        assert_eq!(parse_227("227 Entering Passive Mode"), None);
        assert_eq!(parse_227("227 (1,2,3,4,5)"), None);
        assert_eq!(parse_227("227 (1,2,3,256,5,6)"), None);
        assert_eq!(parse_227("227 (1,2,3,4,5,6,7)"), None);
        assert_eq!(parse_227("200 (1,2,3,4,5,6)"), None);
    }

    #[test]
    fn formats_227_and_229() {
        let a: SocketAddrV4 = "10.1.2.3:50000".parse().unwrap();
        let line = format_227(a, "\r\n");
        assert_eq!(line, "227 Entering Passive Mode (10,1,2,3,195,80).\r\n");
        assert_eq!(parse_227(line.trim_end()), Some(a));
        assert_eq!(
            format_229(2121, "\n"),
            "229 Entering Extended Passive Mode (|||2121|)\n"
        );
        assert_eq!(parse_229(format_229(2121, "").as_str()), Some(2121));
    }

    #[test]
    fn parses_229() {
        assert_eq!(
            parse_229("229 Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(parse_229("229 ok (!!!6446!)"), Some(6446));
        assert_eq!(parse_229("229 (||1.2.3.4|6446|)"), None);
        assert_eq!(parse_229("229 (|||0|)"), None);
        assert_eq!(parse_229("229 (|||99999|)"), None);
        assert_eq!(parse_229("229 no parens"), None);
    }

    #[test]
    fn parses_port_and_eprt() {
        assert_eq!(
            parse_port("127,0,0,1,4,1"),
            Some("127.0.0.1:1025".parse().unwrap())
        );
        assert_eq!(parse_port("127,0,0,1,4"), None);
        assert_eq!(
            parse_eprt("|1|127.0.0.1|6446|"),
            Some("127.0.0.1:6446".parse().unwrap())
        );
        assert_eq!(
            parse_eprt("|2|::1|6446|"),
            Some("[::1]:6446".parse().unwrap())
        );
        assert_eq!(parse_eprt("|1|::1|6446|"), None);
        assert_eq!(parse_eprt("|3|x|1|"), None);
        let a: SocketAddr = "127.0.0.1:1025".parse().unwrap();
        assert_eq!(format_active(a, false, "\r\n"), "PORT 127,0,0,1,4,1\r\n");
        assert_eq!(
            format_active(a, true, "\r\n"),
            "EPRT |1|127.0.0.1|1025|\r\n"
        );
        let v6: SocketAddr = "[::1]:1025".parse().unwrap();
        assert_eq!(format_active(v6, false, "\n"), "EPRT |2|::1|1025|\n");
        assert_eq!(
            parse_eprt(format_active(v6, true, "").trim_start_matches("EPRT ")),
            Some(v6)
        );
    }

    #[test]
    fn reads_commands_and_reply_codes() {
        assert_eq!(split_command(b"pasv\r\n"), ("PASV".into(), "".into()));
        assert_eq!(
            split_command(b"Port 1,2,3,4,5,6\n"),
            ("PORT".into(), "1,2,3,4,5,6".into())
        );
        // Telnet commands out, blanks before the verb skipped, a tab ends it.
        assert_eq!(
            split_command(b"\xff\xf4\xff\xf2ABOR\r\n"),
            ("ABOR".into(), "".into())
        );
        assert_eq!(
            split_command(b" \tPO\xff\xf1RT\t1,2\xff\xff\n"),
            ("PORT".into(), "1,2\u{fffd}".into())
        );
        assert_eq!(
            split_command(b"\xff\xfd\x01EPSV\r\n"),
            ("EPSV".into(), "".into())
        );
        assert_eq!(split_command(b"\xff"), ("".into(), "".into()));
        assert_eq!(reply_code(b"227 ok\r\n"), Some((227, false)));
        assert_eq!(reply_code(b"227-first\r\n"), Some((227, true)));
        assert_eq!(reply_code(b"226\n"), Some((226, false)));
        assert_eq!(reply_code(b" 227 indented\r\n"), None);
        assert_eq!(reply_code(b"22x ok\r\n"), None);
        assert_eq!(eol(b"x\r\n"), "\r\n");
        assert_eq!(eol(b"x\n"), "\n");
    }

    #[test]
    fn parsers_take_any_input() {
        // Hostile input never panics.
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let alphabet = b"0123456789,|()! 227-229\r\n:.abc";
            let text: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()] as char)
                .collect();
            let _ = parse_227(&text);
            let _ = parse_229(&text);
            let _ = parse_port(&text);
            let _ = parse_eprt(&text);
            let _ = reply_code(text.as_bytes());
            let _ = split_command(text.as_bytes());
        }
    }
}
