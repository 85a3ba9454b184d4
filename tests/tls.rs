//! TLS over real sockets on 127.0.0.1 port 0, with certificates made here (rcgen): HTTPS
//! GET and Range, chat over TLS beside plain TCP and UDP users, echo's 16 MiB each way,
//! plain text and a stalled handshake on a TLS port, a key that does not match, and
//! `connect --tls`. The interop test runs `curl` and `openssl s_client` where they are
//! installed and says so where they are not.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::certs::*;
use common::*;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::ServerName;
use switchboard::net::listener::{Listeners, ServerConfig};
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::net::stream::Stream;
use switchboard::net::tls;
use switchboard::roles::chat::{self, broker::ChatConfig};
use switchboard::roles::echo::Echo;
use switchboard::roles::http::{self, HttpConfig};
use switchboard::rt::{self, TcpListener};

/// A blocking TLS client on a std socket (reads time out after [`DEADLINE`]).
type Blocking = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn blocking_client(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Blocking {
    let tcp = client(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so a failure shows here.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// Reads until `want` is in what was read (or the deadline passes); returns all of it.
fn read_until_contains(r: &mut impl Read, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading for {want:?}: {e} (read so far: {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains(want), "wanted {want:?}, got {text:?}");
    text
}

/// Reads to EOF, also taking a peer that closes without close_notify as the end.
fn read_all(r: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return got,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------- echo

#[test]
fn echo_over_tls_carries_16_mib_each_way_intact() {
    let certs = Certs::new("echo-bulk");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let data: Vec<u8> = {
        let mut rng = Rng::new(16);
        (0..16 << 20).map(|_| rng.next() as u8).collect()
    };
    let got = rt::block_on(async {
        let plain = Stream::connect(server.tcp).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let (stream, peer) = tls::connect(certs.client(), name, plain, server.tcp, DEADLINE)
            .await
            .unwrap();
        assert_eq!(peer.subject, "CN=localhost");
        let (mut read, mut write) = stream.split();
        let sending = data.clone();
        let sender = rt::spawn(async move {
            write.write_all(&sending).await.unwrap();
            write.close().await.unwrap(); // close_notify, then the FIN
        });
        let mut got = Vec::new();
        rt::timeout(DEADLINE, read.read_to_end(&mut got))
            .await
            .expect("the echo did not end in time")
            .unwrap();
        sender.await;
        got
    });
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes changed on the way");
    let stats = server.stop();
    assert_eq!(stats.tls.total(), 0);
}

// ---------------------------------------------------------------- proxy

#[test]
fn the_proxy_terminates_tls_and_copies_to_a_plain_upstream_even_with_splice_asked() {
    use switchboard::roles::proxy::{
        self, ProxyConfig,
        upstreams::{Balance, Upstreams},
    };
    let certs = Certs::new("proxy");
    let echo = start_role(Echo, ServerConfig::default());
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ProxyConfig {
        sni: None,
        upstreams: Upstreams::new(
            vec![echo.tcp.to_string()],
            Balance::First,
            Duration::from_secs(30),
        ),
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
        // Every byte spliced, if the session allowed it: a TLS client side must not.
        splice: Some(65536),
        splice_always: true,
        ftp: None,
    };
    let server = ServerConfig {
        tls: Some(certs.tls(Duration::from_secs(10))),
        ..ServerConfig::default()
    };
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(proxy::run(listener, server, cfg, stats.clone(), shutdown));
    let data = Rng::new(3).bytes(4 << 20);
    let got = rt::block_on(async {
        let plain = Stream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let (stream, _) = tls::connect(certs.client(), name, plain, addr, DEADLINE)
            .await
            .unwrap();
        let (mut read, mut write) = stream.split();
        let sending = data.clone();
        let sender = rt::spawn(async move {
            write.write_all(&sending).await.unwrap();
            write.close().await.unwrap();
        });
        let mut got = Vec::new();
        rt::timeout(DEADLINE, read.read_to_end(&mut got))
            .await
            .expect("the proxied echo did not end in time")
            .unwrap();
        sender.await;
        got
    });
    assert!(
        got == data,
        "bytes changed through the proxy ({} of {})",
        got.len(),
        data.len()
    );
    trigger.fire();
    rt::block_on(done);
    echo.stop();
}

// ---------------------------------------------------------------- faults

#[test]
fn plain_text_to_a_tls_port_is_closed_with_nothing_sent() {
    let certs = Certs::new("plaintext");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let mut plain = client(server.tcp);
    plain.write_all(b"hello, are you echo?\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got); // EOF or a reset: either way, closed
    assert!(got.is_empty(), "the server answered plain text: {got:?}");
    wait_until("the plain-text client to be counted", || {
        server.stats.tls.plaintext.load(Relaxed) == 1
    });
    // The port still serves TLS.
    let mut ok = blocking_client(server.tcp, certs.client());
    ok.write_all(b"ping").unwrap();
    assert_eq!(read_until_contains(&mut ok, "ping"), "ping");
    server.stop();
}

#[test]
fn a_stalled_handshake_is_closed_after_the_timeout_and_others_go_on() {
    let certs = Certs::new("stalled");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_millis(300))),
            ..ServerConfig::default()
        },
    );
    // One sends nothing; one starts a ClientHello and stops.
    let mut silent = client(server.tcp);
    let mut partial = client(server.tcp);
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    assert!(
        closed_by_server(&mut silent),
        "the silent client was not closed"
    );
    assert!(
        closed_by_server(&mut partial),
        "the stalled handshake was not closed"
    );
    wait_until("both timeouts to be counted", || {
        server.stats.tls.timeout.load(Relaxed) == 2
    });
    wait_until("their connections to be over", || {
        server.stats.active() == 0
    });
    // A client that completes its handshake is served as usual.
    let mut ok = blocking_client(server.tcp, certs.client());
    ok.write_all(b"after").unwrap();
    assert_eq!(read_until_contains(&mut ok, "after"), "after");
    server.stop();
}

#[test]
fn a_client_that_resets_mid_handshake_is_counted_and_harms_no_one() {
    let certs = Certs::new("reset");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let partial = client(server.tcp);
    let mut half = partial.try_clone().unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
        .unwrap();
    reset_on_close(&partial);
    drop((partial, half));
    wait_until("the reset to be counted", || {
        server.stats.tls.closed.load(Relaxed) + server.stats.tls.refused.load(Relaxed) == 1
    });
    let mut ok = blocking_client(server.tcp, certs.client());
    ok.write_all(b"still here").unwrap();
    assert_eq!(read_until_contains(&mut ok, "still here"), "still here");
    server.stop();
}

#[test]
fn many_silent_clients_garbage_and_oversized_hellos_are_closed_and_leak_no_task() {
    let certs = Certs::new("hostile");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_millis(500))),
            ..ServerConfig::default()
        },
    );
    // 1,000 connections that never send a byte (as many as the descriptor limit lets).
    let silent_count = raise_open_files(1000);
    let mut silent: Vec<_> = (0..silent_count).map(|_| client(server.tcp)).collect();
    // A handshake record of garbage, and one announcing a record past TLS's limit.
    let mut garbage = client(server.tcp);
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    garbage.write_all(&[0xAB; 16]).unwrap();
    let mut oversized = client(server.tcp);
    oversized
        .write_all(&[0x16, 0x03, 0x01, 0xFF, 0xFF])
        .unwrap();
    let _ = oversized.write_all(&vec![0x01; 20_000]);
    // Each may get a TLS alert (a 7-byte record, type 0x15) before the close, no more.
    for (what, s) in [
        ("garbage", &mut garbage),
        ("the oversized hello", &mut oversized),
    ] {
        let mut got = Vec::new();
        let end = s.read_to_end(&mut got);
        assert!(
            end.is_ok() || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what} was not closed"
        );
        assert!(
            got.is_empty() || (got.len() == 7 && got[0] == 0x15),
            "{what} got {got:?}"
        );
    }
    // Meanwhile a real client is served at once.
    let mut ok = blocking_client(server.tcp, certs.client());
    ok.write_all(b"among them").unwrap();
    assert_eq!(read_until_contains(&mut ok, "among them"), "among them");
    drop(ok);
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_by_server(s), "silent client {i} was not closed");
    }
    let tls = &server.stats.tls;
    wait_until("every failure to be counted", || {
        tls.timeout.load(Relaxed) == silent_count as u64 && tls.refused.load(Relaxed) == 2
    });
    wait_until("every connection task to end", || {
        server.stats.active() == 0 && server.stats.live_tasks() == 0
    });
    server.stop();
}

#[test]
fn a_client_hello_in_one_byte_segments_still_makes_a_handshake() {
    let certs = Certs::new("segments");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let mut tcp = client(server.tcp);
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(certs.client(), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100, "a ClientHello of {} bytes", hello.len());
    for byte in &hello {
        tcp.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream.write_all(b"in pieces").unwrap();
    assert_eq!(read_until_contains(&mut stream, "in pieces"), "in pieces");
    assert_eq!(server.stats.tls.total(), 0);
    server.stop();
}

// ---------------------------------------------------------------- HTTPS

struct Https {
    addr: SocketAddr,
    trigger: Option<Trigger>,
    done: Option<rt::JoinHandle<()>>,
    root: PathBuf,
}

impl Drop for Https {
    fn drop(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            trigger.fire();
            rt::block_on(self.done.take().unwrap());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// An HTTPS server over a directory holding `data.bin` (`body`).
fn start_https(certs: &Certs, body: &[u8]) -> Https {
    let root = certs.dir.join("site");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("data.bin"), body).unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ServerConfig {
        tls: Some(certs.tls(Duration::from_secs(10))),
        ..ServerConfig::default()
    };
    let cfg = HttpConfig::new(&root, Duration::from_secs(10)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(http::run(listener, server, cfg, Stats::new(), shutdown));
    Https {
        addr,
        trigger: Some(trigger),
        done: Some(done),
        root,
    }
}

/// One request on a fresh connection (`Connection: close`): the head and the body.
fn https_request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    head: &str,
) -> (String, Vec<u8>) {
    let mut s = blocking_client(addr, config);
    s.write_all(head.as_bytes()).unwrap();
    s.flush().unwrap();
    let all = read_all(&mut s);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8(all[..split].to_vec()).unwrap(),
        all[split + 4..].to_vec(),
    )
}

#[test]
fn https_get_and_range_give_the_exact_bytes_and_alpn_says_http_1_1() {
    let certs = Certs::new("https");
    let body: Vec<u8> = {
        let mut rng = Rng::new(7);
        (0..300_000).map(|_| rng.next() as u8).collect()
    };
    let server = start_https(&certs, &body);

    let (head, got) = https_request(
        server.addr,
        certs.client(),
        "GET /data.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Length: 300000"), "{head}");
    assert!(
        got == body,
        "the body changed on the way ({} bytes)",
        got.len()
    );

    let (head, got) = https_request(
        server.addr,
        certs.client(),
        "GET /data.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes=1000-1999\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 206 Partial Content"), "{head}");
    assert!(
        head.contains("Content-Range: bytes 1000-1999/300000"),
        "{head}"
    );
    assert_eq!(got, &body[1000..2000]);

    // ALPN: http/1.1 is agreed; a client that wants only h2 is refused in the handshake.
    let mut alpn = (*certs.client()).clone();
    alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let s = blocking_client(server.addr, Arc::new(alpn));
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h2_only = (*certs.client()).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = client(server.addr);
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(h2_only), name).unwrap();
    let mut tcp = tcp;
    let mut failed = false;
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "a client offering only h2 finished its handshake");
}

// ---------------------------------------------------------------- chat

#[test]
fn chat_over_tls_shares_the_room_with_plain_tcp_and_udp_users() {
    let certs = Certs::new("chat");
    let (plain, secure, udp) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            rt::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (plain_addr, tls_addr, udp_addr) = (
        plain.local_addr().unwrap(),
        secure.local_addr().unwrap(),
        udp.local_addr().unwrap(),
    );
    let (trigger, shutdown) = shutdown::channel();
    let server = ServerConfig {
        tls: Some(certs.tls(Duration::from_secs(10))),
        ..ServerConfig::default()
    };
    let listeners = Listeners {
        main: vec![plain],
        tls_beside: vec![secure],
    };
    let done = rt::spawn(chat::run(
        listeners,
        Some(udp),
        server,
        ChatConfig::default(),
        Stats::new(),
        shutdown,
    ));

    // A telnet user on the plain port, a TLS user beside it, a UDP user.
    let mut telnet = BufReader::new(client(plain_addr));
    let mut line = String::new();
    telnet.read_line(&mut line).unwrap();
    assert!(line.starts_with("* welcome to #lobby, you are "), "{line}");
    telnet.get_mut().write_all(b"/nick plain\n").unwrap();
    read_until_contains(telnet.get_mut(), "is now plain");

    let mut secure = blocking_client(tls_addr, certs.client());
    read_until_contains(&mut secure, "* welcome to #lobby");
    secure.write_all(b"/nick secure\n").unwrap();
    read_until_contains(&mut secure, "is now secure");
    read_until_contains(telnet.get_mut(), "is now secure");

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    udp_chat_hello(&sock, udp_addr);
    sock.send_to(b"/nick dgram\n", udp_addr).unwrap();
    read_until_contains(&mut secure, "is now dgram");
    read_until_contains(telnet.get_mut(), "is now dgram");

    // Each one's line reaches the other two.
    secure.write_all(b"hello from tls\n").unwrap();
    read_until_contains(telnet.get_mut(), "<secure> hello from tls");
    assert_eq!(
        udp_line_containing(&sock, "hello from tls"),
        "<secure> hello from tls\n"
    );
    telnet.get_mut().write_all(b"hello from telnet\n").unwrap();
    read_until_contains(&mut secure, "<plain> hello from telnet");
    sock.send_to(b"hello from udp\n", udp_addr).unwrap();
    read_until_contains(&mut secure, "<dgram> hello from udp");
    read_until_contains(telnet.get_mut(), "<dgram> hello from udp");
    secure.write_all(b"/who\n").unwrap();
    read_until_contains(&mut secure, "* in #lobby: dgram, plain, secure");

    trigger.fire();
    read_until_contains(&mut secure, "* server shutting down");
    rt::block_on(done);
}

/// The next datagram from the chat that contains `want` (others are skipped).
fn udp_line_containing(sock: &std::net::UdpSocket, want: &str) -> String {
    let mut buf = [0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).expect("no datagram in time");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(want) {
            return text;
        }
    }
}

// ---------------------------------------------------------------- the binary

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_at_start() {
    let certs = Certs::new("mismatch");
    let other = certs.dir.join("other.pem");
    write_private(&other, &rcgen::KeyPair::generate().unwrap().serialize_pem());
    let out = binary()
        .args([
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--tls-cert",
            path(&certs.cert),
        ])
        .args(["--tls-key", path(&other)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--tls-key {} does not match the certificate in --tls-cert {}",
            other.display(),
            certs.cert.display()
        )),
        "{err}"
    );
    // A missing key file, and a certificate file with no certificate, are named too.
    let missing = certs.dir.join("missing.pem");
    let out = binary()
        .args([
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--tls-cert",
            path(&certs.cert),
        ])
        .args(["--tls-key", path(&missing)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--tls-key {}: no such file", missing.display())),
        "{err}"
    );
    let out = binary()
        .args([
            "echo",
            "--tcp",
            "127.0.0.1:0",
            "--tls-cert",
            path(&certs.key),
        ])
        .args(["--tls-key", path(&certs.key)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no certificate in it"), "{err}");
}

#[test]
fn a_key_readable_by_others_is_warned_about() {
    let certs = Certs::new("loose");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut proc = spawn(&[
        "echo",
        "--tcp",
        "127.0.0.1:0",
        "--tls-cert",
        path(&certs.cert),
        "--tls-key",
        path(&certs.key),
        "--log-format",
        "json",
    ]);
    let stdout = proc.0.stdout.take().unwrap();
    let mut log = BufReader::new(stdout);
    let mut warned = false;
    let mut line = String::new();
    while log.read_line(&mut line).unwrap() > 0 {
        warned |= line.contains("readable by its group or other users");
        if line.contains("listening (TLS)") {
            break;
        }
        line.clear();
    }
    assert!(warned, "no warning about the key file's mode");
}

#[test]
fn connect_tls_verifies_with_ca_refuses_a_wrong_name_and_takes_insecure() {
    let certs = Certs::new("connect");
    let server = start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let target = server.tcp.to_string();
    let run = |args: &[&str]| {
        let mut child = binary()
            .arg("connect")
            .args(args)
            .arg(&target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"over tls\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--tls", "--ca", path(&certs.ca), "-v"]);
    assert_eq!((code, out.as_str()), (Some(0), "over tls\n"), "{err}");
    assert!(err.contains("TLSv1.3"), "{err}");
    assert!(
        err.contains("peer certificate subject: CN=localhost"),
        "{err}"
    );

    let (code, out, err) = run(&["--tls", "--ca", path(&certs.ca), "--sni", "wrong.example"]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(
        err.contains("not valid for name \"wrong.example\""),
        "{err}"
    );

    let (code, out, err) = run(&["--tls", "--insecure", "--sni", "wrong.example"]);
    assert_eq!((code, out.as_str()), (Some(0), "over tls\n"), "{err}");

    // An untrusted certificate is refused too (only the CA's file is trusted).
    let stranger = Certs::new("connect-stranger");
    let (code, _, err) = run(&["--tls", "--ca", path(&stranger.ca)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    server.stop();
}

// ---------------------------------------------------------------- real clients

/// Whether `program` is installed; says so on stderr when it is not.
fn installed(program: &str) -> bool {
    let found = std::process::Command::new("which")
        .arg(program)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed; its interop check did not run");
    }
    found
}

#[test]
fn interop_ncat_ssl_joins_the_chat_beside_a_telnet_user() {
    if !installed("ncat") {
        return;
    }
    let certs = Certs::new("interop-ncat");
    let (plain, secure) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), secure.local_addr().unwrap());
    let (trigger, shutdown) = shutdown::channel();
    let server = ServerConfig {
        tls: Some(certs.tls(Duration::from_secs(10))),
        ..ServerConfig::default()
    };
    let done = rt::spawn(chat::run(
        Listeners {
            main: vec![plain],
            tls_beside: vec![secure],
        },
        None,
        server,
        ChatConfig::default(),
        Stats::new(),
        shutdown,
    ));
    let mut telnet = BufReader::new(client(plain_addr));
    telnet.get_mut().write_all(b"/nick plain\n").unwrap();
    read_until_contains(telnet.get_mut(), "is now plain");
    // ncat verifies the certificate (--ssl-trustfile) by the name it is given.
    let mut ncat = std::process::Command::new("ncat")
        .args(["--ssl", "--ssl-trustfile", path(&certs.ca)])
        .args(["--ssl-servername", "localhost"])
        .args(["127.0.0.1", &tls_addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_ncat = ncat.stdin.take().unwrap();
    let mut from_ncat = ncat.stdout.take().unwrap();
    read_until_contains(&mut from_ncat, "* welcome to #lobby");
    to_ncat.write_all(b"/nick ncat\n").unwrap();
    read_until_contains(telnet.get_mut(), "is now ncat");
    to_ncat.write_all(b"hello over ncat --ssl\n").unwrap();
    read_until_contains(telnet.get_mut(), "<ncat> hello over ncat --ssl");
    telnet.get_mut().write_all(b"hello from telnet\n").unwrap();
    read_until_contains(&mut from_ncat, "<plain> hello from telnet");
    drop(to_ncat);
    let _ = ncat.kill();
    let _ = ncat.wait();
    trigger.fire();
    rt::block_on(done);
}

#[test]
fn interop_openssl_s_client_is_routed_by_sni_through_the_proxy() {
    use switchboard::roles::proxy::{
        self, ProxyConfig,
        sni::{SniRoutes, parse_route},
        upstreams::{Balance, Upstreams},
    };
    if !installed("openssl") {
        return;
    }
    let (a, b) = (
        Certs::named("interop-sni-a", &["a.test"]),
        Certs::named("interop-sni-b", &["b.test"]),
    );
    let tls_echo = |certs: &Certs| {
        start_role(
            Echo,
            ServerConfig {
                tls: Some(certs.tls(Duration::from_secs(10))),
                ..ServerConfig::default()
            },
        )
    };
    let (echo_a, echo_b) = (tls_echo(&a), tls_echo(&b));
    let like = Upstreams::new(vec![], Balance::First, Duration::from_secs(30));
    let routes = [
        parse_route(&format!("a.test={}", echo_a.tcp)).unwrap(),
        parse_route(&format!("*.test={}", echo_b.tcp)).unwrap(),
    ];
    let sni = SniRoutes::new(&routes, None, &like, Duration::from_secs(10)).unwrap();
    let cfg = ProxyConfig {
        sni: Some(sni),
        upstreams: like,
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
        splice: Some(65536),
        splice_always: false,
        ftp: None,
    };
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(proxy::run(
        listener,
        ServerConfig::default(),
        cfg,
        Stats::new(),
        shutdown,
    ));
    // Each name reaches the upstream holding its certificate (verified by its CA).
    for (name, certs) in [("a.test", &a), ("b.test", &b)] {
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-quiet"])
            .args(["-servername", name, "-verify_return_error"])
            .args(["-verify_hostname", name, "-CAfile", path(&certs.ca)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = format!("to {name}\n");
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        assert_eq!(read_n(&mut out, line.len()), line.as_bytes(), "{name}");
        let _ = child.kill();
        let _ = child.wait();
    }
    trigger.fire();
    rt::block_on(done);
}

#[test]
fn interop_curl_and_openssl_s_client() {
    let certs = Certs::new("interop");
    if installed("curl") {
        let body = b"served over https\n".repeat(1000);
        let server = start_https(&certs, &body);
        let url = format!("https://localhost:{}/data.bin", server.addr.port());
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "20",
                "--cacert",
                path(&certs.ca),
            ])
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", server.addr.port()),
            ])
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == body, "curl got other bytes");
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "20",
                "--cacert",
                path(&certs.ca),
            ])
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", server.addr.port()),
            ])
            .args(["-r", "18-35", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, &body[18..36]);
    }
    if installed("openssl") {
        let server = start_role(
            Echo,
            ServerConfig {
                tls: Some(certs.tls(Duration::from_secs(10))),
                ..ServerConfig::default()
            },
        );
        for version in ["-tls1_3", "-tls1_2"] {
            let mut child = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &server.tcp.to_string(), "-quiet"])
                .args(["-servername", "localhost", "-verify_return_error", version])
                .args(["-CAfile", path(&certs.ca)])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .as_mut()
                .unwrap()
                .write_all(b"from openssl\n")
                .unwrap();
            let mut out = child.stdout.take().unwrap();
            let echoed = read_n(&mut out, b"from openssl\n".len());
            assert_eq!(echoed, b"from openssl\n", "openssl s_client {version}");
            let _ = child.kill();
            let _ = child.wait();
        }
        // TLS 1.1 is not offered.
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &server.tcp.to_string(), "-tls1_1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && said.contains("Cipher is (NONE)"),
            "a TLS 1.1 handshake went through: {said}"
        );
        server.stop();
    }
}

// ---------------------------------------------------------------- serve

#[test]
fn serve_takes_the_tls_keys_from_its_file_and_check_finds_their_problems() {
    let certs = Certs::new("serve");
    let other = certs.dir.join("other.pem");
    write_private(&other, &rcgen::KeyPair::generate().unwrap().serialize_pem());
    let bad = certs.dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            r#"[[service]]
role = "echo"
tcp = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{other}"

[[service]]
role = "upper"
tcp = "127.0.0.1:0"
tls_cert = "{cert}"

[[service]]
role = "hello"
tcp = "127.0.0.1:7"

[[service]]
role = "http"
listen = "127.0.0.1:0"
root = "{dir}"
tls_cert = "{cert}"
tls_key = "{key}"
tls_listen = "127.0.0.1:7"
"#,
            cert = certs.cert.display(),
            key = certs.key.display(),
            other = other.display(),
            dir = certs.dir.display(),
        ),
    )
    .unwrap();
    let out = binary().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = bad.display();
    for want in [
        format!(
            "{shown}:5: service \"echo\": tls_key: --tls-key {} does not match the certificate in --tls-cert {}",
            other.display(),
            certs.cert.display()
        ),
        format!("{shown}:10: service \"upper\": tls_cert: --tls-cert and --tls-key go together"),
        "service \"http\": 127.0.0.1:7 (TCP) is also service \"hello\"'s".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    // A chat with its TLS listener beside the plain one, from the file.
    let good = certs.dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            r#"[[service]]
role = "chat"
tcp = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
tls_listen = "127.0.0.1:0"
"#,
            cert = certs.cert.display(),
            key = certs.key.display(),
        ),
    )
    .unwrap();
    let out = binary().arg("check").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut proc = spawn(&["--log-format", "json", "serve", path(&good)]);
    let mut log = BufReader::new(proc.0.stdout.take().unwrap());
    let (mut plain, mut secure) = (None, None);
    let mut line = String::new();
    while plain.is_none() || secure.is_none() {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "serve ended early");
        let addr = find_addr(&line);
        if line.contains("\"listening (TLS)\"") {
            secure = addr;
        } else if line.contains("\"listening (TCP)\"") && line.contains("\"chat\"") {
            plain = addr;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
    let mut telnet = client(plain.unwrap());
    read_until_contains(&mut telnet, "* welcome");
    telnet.write_all(b"/nick telnet\n").unwrap();
    let mut tls_user = blocking_client(secure.unwrap(), certs.client());
    read_until_contains(&mut tls_user, "* welcome");
    tls_user.write_all(b"hi from tls\n").unwrap();
    read_until_contains(&mut telnet, "hi from tls");
    telnet.write_all(b"hi back\n").unwrap();
    read_until_contains(&mut tls_user, "<telnet> hi back");
}
