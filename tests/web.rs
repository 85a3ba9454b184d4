//! `chat --web`: the page and WebSocket users (a real WebSocket client, tungstenite's)
//! in the same rooms as telnet and UDP users; the handshake's checks; close codes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A chat process serving TCP, UDP and the web on free ports.
struct Chat {
    proc: Logged,
    tcp: SocketAddr,
    udp: SocketAddr,
    web: SocketAddr,
}

impl Chat {
    fn start(extra: &[&str]) -> Chat {
        let mut cmd = binary();
        cmd.args(["chat", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
            .args(["--web", "127.0.0.1:0", "--log-format", "json"])
            .args(extra);
        let proc = Logged::spawn(cmd);
        Chat {
            tcp: proc.addr(&["listening (TCP)", "\"role\":\"chat\""]),
            udp: proc.addr(&["listening (UDP)"]),
            web: proc.addr(&["listening (web)"]),
            proc,
        }
    }

    fn log_text(&self) -> String {
        self.proc.text()
    }
}

/// A browser-like WebSocket user.
struct Web {
    ws: WebSocket<TcpStream>,
    nick: String,
}

fn ws_open(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    tungstenite::client(request, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted handshake"),
        })
}

impl Web {
    fn join(addr: SocketAddr) -> Web {
        let ws = ws_open(addr, Some(&format!("http://{addr}"))).expect("the handshake");
        let mut web = Web {
            ws,
            nick: String::new(),
        };
        let welcome = web.line();
        web.nick = welcome
            .strip_prefix("* welcome to #lobby, you are ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("{welcome}"))
            .to_string();
        web
    }

    fn say(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).unwrap();
    }

    /// The next text frame.
    fn line(&mut self) -> String {
        // (The server's pings, every 20 s of silence, must not keep a wrong
        // expectation waiting past the deadline.)
        let start = std::time::Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "no line within the deadline");
            match self.ws.read().unwrap() {
                Message::Text(t) => return t.as_str().to_string(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a line, got {other:?}"),
            }
        }
    }

    fn until(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            let l = self.line();
            if l == want {
                return skipped;
            }
            skipped.push(l);
        }
    }

    /// Reads until the server closes; its close code.
    fn close_code(&mut self) -> Option<CloseCode> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }
}

/// An HTTP request to the web listener; the whole response (it closes).
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = client(addr);
    s.write_all(request.as_bytes()).unwrap();
    String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
}

#[test]
fn web_tcp_and_udp_users_share_the_rooms_and_every_command() {
    let chat = Chat::start(&[]);
    let mut web = Web::join(chat.web);
    let mut tcp = User::join(chat.tcp);
    web.until(&format!("* {} joined", tcp.nick));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(DEADLINE)).unwrap();
    let welcome = udp_chat_hello(&udp, chat.udp);
    let udp_nick = welcome
        .strip_prefix("* welcome to #lobby, you are ")
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    web.until(&format!("* {udp_nick} joined"));
    tcp.until(&format!("* {udp_nick} joined"));

    // One nick namespace across the three.
    let guest = web.nick.clone();
    web.say("/nick Alice");
    assert_eq!(web.line(), format!("* {guest} is now Alice"));
    tcp.until(&format!("* {guest} is now Alice"));
    tcp.say("/nick alice");
    assert_eq!(tcp.line(), "! nick taken: alice");

    // Lines both ways, one frame per line; HTML is just text.
    web.say("hello from the browser");
    assert_eq!(tcp.line(), "<Alice> hello from the browser");
    tcp.say("<b>bold</b> & <script>x()</script>");
    assert_eq!(
        web.line(),
        format!("<{}> <b>bold</b> & <script>x()</script>", tcp.nick)
    );
    let mut buf = [0u8; 2048];
    let mut udp_line = || loop {
        let n = udp.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !got.contains(" is now ") && !got.contains("joined") {
            return got;
        }
    };
    assert_eq!(udp_line(), "<Alice> hello from the browser\n");
    udp.send_to(b"from udp\n", chat.udp).unwrap();
    assert_eq!(web.line(), format!("<{udp_nick}> from udp"));
    assert_eq!(tcp.line(), format!("<{udp_nick}> from udp"));

    // Two lines in one frame are two lines; control characters go.
    web.say("one\ntwo\u{7}");
    assert_eq!(tcp.line(), "<Alice> one");
    assert_eq!(tcp.line(), "<Alice> two");

    // The commands.
    web.say("/me waves");
    assert_eq!(tcp.line(), "* Alice waves");
    web.say(&format!("/msg {} psst", tcp.nick));
    assert_eq!(tcp.line(), "*Alice* psst");
    tcp.say("/msg alice back");
    assert_eq!(web.line(), format!("*{}* back", tcp.nick));
    web.say("/who");
    let mut names = ["Alice".to_string(), tcp.nick.clone(), udp_nick.clone()];
    names.sort_by_key(|n| n.to_ascii_lowercase());
    assert_eq!(web.line(), format!("* in #lobby: {}", names.join(", ")));
    web.say("/join dev");
    assert_eq!(web.line(), "* now in #dev");
    assert_eq!(tcp.line(), "* Alice left for #dev");
    web.say("/rooms");
    assert_eq!(web.line(), "* rooms: #dev (1), #lobby (2)");
    web.say("/help");
    assert!(web.line().starts_with("* commands"));

    // /quit: a goodbye, then a close frame.
    tcp.say("/join dev");
    web.until(&format!("* {} joined #dev", tcp.nick)); // after the rest of /help
    web.say("/quit gone to lunch");
    assert_eq!(web.until("* bye").len(), 0);
    assert_eq!(web.close_code(), Some(CloseCode::Normal));
    tcp.until("* Alice left (gone to lunch)");
    assert!(chat.log_text().contains("chat: web client joined"));
}

#[test]
fn the_page_is_self_contained_and_the_handshake_is_checked() {
    let chat = Chat::start(&["--web-origin", "https://app.example"]);
    let addr = chat.web;
    let page = http(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("\r\nContent-Security-Policy: default-src 'none'; script-src 'self';"));
    let body = page.split("\r\n\r\n").nth(1).unwrap();
    // No inline script, no remote resource, no inline handler.
    assert!(body.contains("<script src=\"/app.js\" defer></script>"));
    assert_eq!(body.matches("<script").count(), 1);
    assert!(!body.contains("http://") && !body.contains("https://") && !body.contains(" on"));
    let js = http(addr, "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        js.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/javascript"),
        "{js}"
    );
    assert!(js.contains("textContent") && !js.contains("innerHTML"));
    assert!(http(addr, "GET /app.css HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(http(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(
        http(addr, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405 ")
    );
    assert!(http(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(http(addr, "garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let upgrade = |extra: &str| {
        http(
            addr,
            &format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
            ),
        )
    };
    let old = upgrade("Sec-WebSocket-Version: 8\r\n");
    assert!(old.starts_with("HTTP/1.1 426 "), "{old}");
    assert!(old.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{old}");
    let foreign = upgrade("Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n");
    assert!(foreign.starts_with("HTTP/1.1 403 "), "{foreign}");
    // The page's own origin, and a listed one, are let in (the RFC's example key).
    let own = ws_open(addr, Some(&format!("http://{addr}")));
    assert!(own.is_ok());
    let listed = ws_open(addr, Some("https://app.example"));
    assert!(listed.is_ok());
    match ws_open(addr, Some("http://evil.example")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("{other:?}"),
    }
    let mut s = client(addr);
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut head = [0u8; 129];
    s.read_exact(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
}

/// A client frame: FIN, `opcode`, masked (or not) with a fixed key.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [1u8, 2, 3, 4];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A raw WebSocket connection past the 101 and the welcome.
fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = client(addr);
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    // The welcome: a text frame of under 126 bytes.
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81);
    let mut welcome = vec![0u8; h[1] as usize];
    s.read_exact(&mut welcome).unwrap();
    s
}

/// The next server frame: its first byte (FIN, opcode) and its payload.
fn next_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0], payload)
}

/// Reads server frames until a close frame; its code (the first two payload bytes).
fn close_code_of(s: &mut TcpStream) -> u16 {
    loop {
        let (head, payload) = next_frame(s);
        if head & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn bad_frames_close_with_the_right_code_and_no_one_else_notices() {
    let chat = Chat::start(&["--max-line", "100"]);
    let mut bystander = User::join(chat.tcp);
    let mut web = Web::join(chat.web);
    bystander.until(&format!("* {} joined", web.nick));

    // Fragmented text frames are one message: one line.
    let mut s = raw_ws(chat.web);
    let mut fragments = vec![0x01, 0x80 | 3, 1, 2, 3, 4];
    fragments.extend(
        b"hel"
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    fragments.extend_from_slice(&[0x80, 0x80 | 2, 1, 2, 3, 4]);
    fragments.extend(
        b"lo"
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    s.write_all(&fragments).unwrap();
    let line = until_prefix(&mut bystander, "<guest");
    assert!(line.ends_with("> hello"), "{line}");

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a line over --max-line",
            frame(0x1, &[b'x'; 200], true),
            1009,
        ),
        // Only the header of a 16 MiB frame: judged before its payload is read.
        (
            "a 16 MiB frame",
            vec![0x81, 0x80 | 127, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4],
            1009,
        ),
        ("a binary frame", frame(0x2, b"bin", true), 1003),
        ("an unmasked frame", frame(0x1, b"hi", false), 1002),
        (
            "a close with a bad code",
            frame(0x8, &[0x03, 0xe7], true),
            1002,
        ),
        ("invalid UTF-8", frame(0x1, b"\xff\xfe", true), 1007),
    ];
    for (what, bytes, code) in cases {
        let mut s = raw_ws(chat.web);
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code_of(&mut s), code, "{what}");
    }
    // The web user and the bystander carried on throughout.
    web.say("still here");
    assert_eq!(
        until_prefix(&mut bystander, &format!("<{}>", web.nick)),
        format!("<{}> still here", web.nick)
    );
}

#[test]
fn stalled_handshakes_are_closed_while_others_chat() {
    raise_open_files(4096);
    let chat = Chat::start(&["--header-timeout", "1s"]);
    let stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = client(chat.web);
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr").unwrap();
            s
        })
        .collect();
    let mut web = Web::join(chat.web);
    let mut tcp = User::join(chat.tcp);
    web.until(&format!("* {} joined", tcp.nick));
    tcp.say("meanwhile");
    assert_eq!(web.line(), format!("<{}> meanwhile", tcp.nick));
    for mut s in stalled {
        let mut b = [0u8; 16];
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "a stalled handshake closed");
    }
}

#[test]
fn a_web_user_who_stops_reading_is_evicted_like_a_tcp_one() {
    let chat = Chat::start(&["--sendq", "8", "--rate", "0", "--sendq-bytes", "4096"]);
    let mut tcp = User::join(chat.tcp);
    // It never reads past its welcome.
    let _stuck = raw_ws(chat.web);
    let joined = until_prefix(&mut tcp, "* guest");
    let stuck_nick = joined
        .strip_prefix("* ")
        .and_then(|r| r.strip_suffix(" joined"))
        .unwrap()
        .to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut w = tcp.w.try_clone().unwrap();
    let stopped = stop.clone();
    let sayer = std::thread::spawn(move || {
        let line = format!("{}\n", "x".repeat(1000));
        for _ in 0..20_000 {
            if stopped.load(std::sync::atomic::Ordering::Relaxed)
                || w.write_all(line.as_bytes()).is_err()
            {
                break;
            }
        }
    });
    // Nothing comes back to the sayer but the notice.
    assert_eq!(
        tcp.line(),
        format!("* {stuck_nick} left (send queue exceeded)")
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sayer.join().unwrap();
}

/// Reads `user`'s lines until one starts with `prefix`; returns it.
fn until_prefix(user: &mut User, prefix: &str) -> String {
    loop {
        let l = user.line();
        if l.starts_with(prefix) {
            return l;
        }
    }
}

#[test]
fn quit_says_bye_then_closes_every_time() {
    // The broker stops a quitting user's reader by shutting the read half; the end of
    // input that follows once ended the session for the writer too (no `* bye`, no close
    // frame, or a 1002 "protocol error"), depending on which task ran first.
    let chat = Chat::start(&[]);
    for round in 0..40 {
        let mut s = raw_ws(chat.web);
        s.write_all(&frame(0x1, b"/quit", true)).unwrap();
        let mut texts = Vec::new();
        let code = loop {
            let (head, payload) = next_frame(&mut s);
            match head {
                0x81 => texts.push(String::from_utf8(payload).unwrap()),
                0x88 => break u16::from_be_bytes([payload[0], payload[1]]),
                other => panic!("round {round}: frame {other:#x}"),
            }
        };
        assert_eq!(
            texts.last().map(String::as_str),
            Some("* bye"),
            "round {round}"
        );
        assert_eq!(code, 1000, "round {round}");
    }
    assert!(!chat.log_text().contains("broke the protocol"));
}

#[test]
fn a_client_that_pings_without_reading_is_not_read_without_bound() {
    // Every ping is answered with a pong; to a client that reads none of them, the pongs
    // once piled up in the server's memory, as fast as the client could send pings.
    let chat = Chat::start(&[]);
    let mut s = raw_ws(chat.web);
    s.set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let batch = frame(0x9, &[b'p'; 125], true).repeat(512);
    // Far more than the socket buffers on both sides hold.
    let bound = 128 << 20;
    let mut sent = 0;
    while sent < bound {
        match s.write(&batch) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent < bound, "the server read {sent} bytes of pings");
    // No one else notices.
    let mut web = Web::join(chat.web);
    let mut tcp = User::join(chat.tcp);
    web.until(&format!("* {} joined", tcp.nick));
    tcp.say("still fine");
    assert_eq!(web.line(), format!("<{}> still fine", tcp.nick));
}

#[test]
fn lines_in_a_frame_have_the_tcp_limit_and_ends() {
    // Lines are cut as a TCP client's are: a line of --max-line bytes and its `\r\n` is
    // one line, one byte more is too long (1009), and a `\n` at the end of a frame starts
    // no empty line (which would cost a line of the --burst).
    let chat = Chat::start(&["--max-line", "100", "--rate", "0.01", "--burst", "3"]);
    let mut tcp = User::join(chat.tcp);
    let mut web = Web::join(chat.web);
    tcp.until(&format!("* {} joined", web.nick));
    let full = "x".repeat(100);
    web.say(&format!("{full}\r\n"));
    assert_eq!(tcp.line(), format!("<{}> {full}", web.nick));
    web.say("two\n");
    assert_eq!(tcp.line(), format!("<{}> two", web.nick));
    web.say("three\r\n");
    assert_eq!(tcp.line(), format!("<{}> three", web.nick));
    web.say(&"y".repeat(101));
    // The notice a TCP user gets, then the close (the close once went first, at times).
    assert_eq!(web.line(), "! line too long (the limit is 100 bytes)");
    assert_eq!(web.close_code(), Some(CloseCode::Size));
    for _ in 0..20 {
        let mut s = raw_ws(chat.web);
        s.write_all(&frame(0x1, &[b'y'; 101], true)).unwrap();
        let (head, notice) = next_frame(&mut s);
        assert_eq!(head, 0x81);
        assert_eq!(notice, b"! line too long (the limit is 100 bytes)");
        assert_eq!(close_code_of(&mut s), 1009);
    }
    let mut s = raw_ws(chat.web);
    let over = format!("ok\n{}", "z".repeat(101));
    s.write_all(&frame(0x1, over.as_bytes(), true)).unwrap();
    assert_eq!(close_code_of(&mut s), 1009);
    // Nothing of either reached the room.
    tcp.say("/who");
    loop {
        let l = tcp.line();
        if l.starts_with("* in #lobby: ") {
            break;
        }
        assert!(l.starts_with("* guest"), "{l}");
    }
}
