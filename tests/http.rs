//! The HTTP role over real sockets: every status, traversal attempts, conditional and
//! range requests, pipelining, HEAD, slowloris, keep-alive, listings, large files, and
//! a keep-alive exchange through the proxy.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::roles::http::{self, HttpConfig};
use switchboard::roles::proxy::upstreams::{Balance, Upstreams};
use switchboard::roles::proxy::{self, ProxyConfig};
use switchboard::rt::{self, TcpListener};

struct Site {
    dir: PathBuf,
    big: Vec<u8>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory: `root/` (served) with files, and `secret` beside it.
fn site() -> Site {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-http-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("list")).unwrap();
    std::fs::write(dir.join("secret"), "TOP SECRET").unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(root.join("a.txt"), "0123456789abcdef").unwrap();
    std::fs::write(root.join("docs/index.html"), "docs\n").unwrap();
    std::fs::write(root.join("list/<script>&\"x\".txt"), "x").unwrap();
    std::fs::write(root.join("%2e%2e"), "a file literally named %2e%2e").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(&dir, root.join("up")).unwrap();
    // Links that stay inside: relative (the kernel resolves it beneath the root) and
    // absolute (refused by that check, so resolved and checked the slow way).
    std::os::unix::fs::symlink("a.txt", root.join("inner")).unwrap();
    std::os::unix::fs::symlink(root.join("a.txt"), root.join("abs")).unwrap();
    let fifo =
        std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let big = Rng::new(9).bytes(2 << 20);
    std::fs::write(root.join("big.bin"), &big).unwrap();
    Site { dir, big }
}

struct Server {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _trigger: Trigger,
}

fn start_http(site: &Site, server: ServerConfig, header_timeout: Duration) -> Server {
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let cfg = HttpConfig::new(&site.dir.join("root"), header_timeout).unwrap();
    rt::spawn(http::run(listener, server, cfg, stats.clone(), shutdown));
    Server {
        addr,
        stats,
        _trigger: trigger,
    }
}

fn default_server(site: &Site) -> Server {
    start_http(site, ServerConfig::default(), Duration::from_secs(10))
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Reads one response (the body by Content-Length, or none for HEAD/304).
fn read_response(s: &mut TcpStream, head_only: bool) -> Resp {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    let len = if head_only || status == 304 {
        0
    } else {
        headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap())
    };
    let body = read_n(s, len);
    Resp {
        status,
        headers,
        body,
    }
}

fn get(addr: SocketAddr, target: &str, extra: &str) -> Resp {
    let mut s = client(addr);
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s, false)
}

#[test]
fn files_directories_and_redirects() {
    let site = site();
    let server = default_server(&site);
    let r = get(server.addr, "/", "");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"<h1>home</h1>\n".as_slice())
    );
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert!(r.headers.contains_key("etag") && r.headers.contains_key("last-modified"));
    let r = get(server.addr, "/a.txt", "");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"0123456789abcdef".as_slice())
    );
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
    let r = get(server.addr, "/docs?x=1", "");
    assert_eq!(
        (r.status, r.headers["location"].as_str()),
        (301, "/docs/?x=1")
    );
    assert_eq!(get(server.addr, "/docs/", "").body, b"docs\n");
    assert_eq!(get(server.addr, "/nope", "").status, 404);
    // Double encoding decodes once: this is the file literally named `%2e%2e`.
    assert_eq!(
        get(server.addr, "/%252e%252e", "").body,
        b"a file literally named %2e%2e"
    );
    let big = get(server.addr, "/big.bin", "");
    assert!(
        big.status == 200 && big.body == site.big,
        "the 2 MiB file (sent with sendfile) arrives intact"
    );
}

#[test]
fn directory_listings_escape_every_name() {
    let site = site();
    let server = default_server(&site);
    let r = get(server.addr, "/list/", "");
    let html = String::from_utf8(r.body).unwrap();
    assert!(
        html.contains(
            "<a href=\"%3Cscript%3E%26%22x%22.txt\">&lt;script&gt;&amp;&quot;x&quot;.txt</a>"
        ),
        "{html}"
    );
    assert!(!html.contains("<script>"));
}

#[test]
fn traversal_attempts_never_leave_the_root() {
    let site = site();
    let server = default_server(&site);
    let attempts = [
        "/../secret",
        "/docs/../../secret",
        "/%2e%2e/secret",
        "/%2E%2E%2Fsecret",
        "/..%2fsecret",
        "/%252e%252e/secret",
        "http://evil.example/../secret",
        "/..\\secret",
        "/%5c..%5csecret",
        "/link",
        "/up/secret",
        "/a.txt%00.html",
    ];
    for target in attempts {
        let mut s = client(server.addr);
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let r = read_response(&mut s, false);
        assert!(matches!(r.status, 400 | 404), "{target}: {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("SECRET"),
            "{target} leaked the secret"
        );
    }
    // Targets that are not paths at all.
    for target in ["*", "secret"] {
        assert_eq!(get(server.addr, target, "").status, 400, "{target}");
    }
}

#[test]
fn links_inside_the_root_are_followed_and_a_fifo_is_refused_at_once() {
    let site = site();
    let server = default_server(&site);
    for target in ["/inner", "/abs"] {
        let r = get(server.addr, target, "");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"0123456789abcdef".as_slice()),
            "{target}"
        );
    }
    // Opening a FIFO for reading waits for a writer: served naively, it would hold a
    // thread forever. It is not a file, so: 404, at once, and the server carries on.
    for _ in 0..4 {
        assert_eq!(get(server.addr, "/fifo", "").status, 404);
    }
    assert_eq!(get(server.addr, "/a.txt", "").status, 200);
}

#[test]
fn conditional_requests() {
    let site = site();
    let server = default_server(&site);
    let first = get(server.addr, "/a.txt", "");
    let (etag, modified) = (&first.headers["etag"], &first.headers["last-modified"]);
    let r = get(
        server.addr,
        "/a.txt",
        &format!("If-None-Match: \"other\", {etag}\r\n"),
    );
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(&r.headers["etag"], etag);
    assert_eq!(
        get(server.addr, "/a.txt", "If-None-Match: \"other\"\r\n").status,
        200
    );
    assert_eq!(
        get(
            server.addr,
            "/a.txt",
            &format!("If-Modified-Since: {modified}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        get(
            server.addr,
            "/a.txt",
            "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        )
        .status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    let both = format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {modified}\r\n");
    assert_eq!(get(server.addr, "/a.txt", &both).status, 200);
}

#[test]
fn range_requests() {
    let site = site();
    let server = default_server(&site);
    let r = get(server.addr, "/a.txt", "Range: bytes=2-5\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, b"2345".as_slice()));
    assert_eq!(r.headers["content-range"], "bytes 2-5/16");
    let r = get(server.addr, "/a.txt", "Range: bytes=-3\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, b"def".as_slice()));
    let r = get(server.addr, "/a.txt", "Range: bytes=16-\r\n");
    assert_eq!(
        (r.status, r.headers["content-range"].as_str()),
        (416, "bytes */16")
    );
    // A range of the big file is sent from the file, exactly.
    let r = get(server.addr, "/big.bin", "Range: bytes=100000-1500000\r\n");
    assert!(r.status == 206 && r.body == site.big[100_000..=1_500_000]);
    // If-Range with a stale validator: the whole file.
    assert_eq!(
        get(
            server.addr,
            "/a.txt",
            "Range: bytes=0-1\r\nIf-Range: \"stale\"\r\n"
        )
        .status,
        200
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_and_head_has_no_body() {
    let site = site();
    let server = default_server(&site);
    let mut s = client(server.addr);
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\nHEAD /a.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /docs/ HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r1 = read_response(&mut s, false);
    let r2 = read_response(&mut s, true);
    let r3 = read_response(&mut s, false);
    let r4 = read_response(&mut s, false);
    assert_eq!(
        (r1.status, r1.body.as_slice()),
        (200, b"0123456789abcdef".as_slice())
    );
    assert_eq!(
        (r2.status, r2.headers["content-length"].as_str()),
        (200, "16")
    );
    assert_eq!(r3.body, b"docs\n");
    assert_eq!(r4.status, 404);
    // HEAD sent no body: the next bytes on the wire are r3's head, already checked.
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut s, false).status,
        200,
        "the connection was kept alive"
    );
    assert_eq!(
        server
            .stats
            .served
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn http_1_0_closes_unless_it_asks_for_keep_alive() {
    let site = site();
    let server = default_server(&site);
    let mut s = client(server.addr);
    s.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.headers["connection"], "close");
    assert!(closed_by_server(&mut s));
    let mut k = client(server.addr);
    k.write_all(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut k, false).headers["connection"],
        "keep-alive"
    );
    k.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut k, false).status, 200);
}

#[test]
fn every_error_status() {
    let site = site();
    let server = default_server(&site);
    let send = |raw: &[u8]| {
        let mut s = client(server.addr);
        s.write_all(raw).unwrap();
        let r = read_response(&mut s, false);
        (
            r.status,
            r.headers.get("connection").cloned(),
            r.headers.get("allow").cloned(),
        )
    };
    assert_eq!(
        send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"),
        (405, Some("close".into()), Some("GET, HEAD".into()))
    );
    assert_eq!(
        send(b"GET / HTTP/1.1\r\n\r\n").0,
        400,
        "HTTP/1.1 without Host"
    );
    assert_eq!(
        send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello").0,
        400
    );
    assert_eq!(send(b"BLAH\x01 / HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(send(b"GET / HTTP/3.0\r\nHost: t\r\n\r\n").0, 505);
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    assert_eq!(send(long.as_bytes()).0, 414);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-Pad: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(90)
    );
    assert_eq!(send(many.as_bytes()).0, 200, "90 fields are fine");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "z".repeat(70_000)
    );
    assert_eq!(send(huge.as_bytes()).0, 431);
    let too_many = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-A: b\r\n".repeat(120)
    );
    assert_eq!(send(too_many.as_bytes()).0, 431);
}

#[test]
fn a_slow_head_gets_408_and_is_closed() {
    let site = site();
    let server = start_http(&site, ServerConfig::default(), Duration::from_millis(300));
    let mut slow = client(server.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let r = read_response(&mut slow, false);
    assert_eq!((r.status, r.headers["connection"].as_str()), (408, "close"));
    assert!(closed_by_server(&mut slow));
    // Silence from the start is treated the same.
    let mut silent = client(server.addr);
    assert_eq!(read_response(&mut silent, false).status, 408);
    // Meanwhile another client is served at once.
    assert_eq!(get(server.addr, "/a.txt", "").status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let site = site();
    let server = start_http(
        &site,
        ServerConfig {
            idle_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
        Duration::from_secs(10),
    );
    let mut s = client(server.addr);
    s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, false).status, 200);
    assert!(closed_by_server(&mut s));
}

#[test]
fn over_max_conns_gets_503_not_silence() {
    let site = site();
    let server = start_http(
        &site,
        ServerConfig {
            max_conns: 1,
            ..Default::default()
        },
        Duration::from_secs(10),
    );
    let mut first = client(server.addr);
    first
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut first, false).status, 200);
    let mut second = client(server.addr);
    assert_eq!(read_response(&mut second, false).status, 503);
}

#[test]
fn a_keep_alive_exchange_works_through_the_proxy() {
    let site = site();
    let server = default_server(&site);
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (_trigger, shutdown) = shutdown::channel();
    let cfg = ProxyConfig {
        upstreams: Upstreams::new(
            vec![server.addr.to_string()],
            Balance::First,
            Duration::from_secs(10),
        ),
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
    };
    rt::spawn(proxy::run(
        listener,
        ServerConfig::default(),
        cfg,
        Stats::new(),
        shutdown,
    ));
    let mut s = client(proxy_addr);
    for _ in 0..3 {
        s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, false);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"0123456789abcdef".as_slice())
        );
    }
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s, false).body == site.big);
    assert!(closed_by_server(&mut s));
    assert_eq!(
        server
            .stats
            .served
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one upstream connection, kept alive"
    );
}
