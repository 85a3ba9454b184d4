//! `switchboard bench` driven as the built binary against servers in this process:
//! every mode completes, checks what comes back, and fails clearly on a bad target. With
//! `--tls` (certificates made here, rcgen): echo, stream --verify, http and connect
//! complete; a wrong name, an unknown CA, a plain-text server and a server that never
//! answers the handshake are each a clear error, not a hang.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::certs::*;
use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown;
use switchboard::net::stats::Stats;
use switchboard::roles::chat::{self, broker::ChatConfig};
use switchboard::roles::echo::Echo;
use switchboard::roles::http::{self, HttpConfig};
use switchboard::roles::upper::Upper;
use switchboard::rt::{self, TcpListener};

/// Runs `switchboard bench ARGS --json`; returns (success, stdout, stderr).
fn bench(args: &[&str]) -> (bool, String, String) {
    let out = binary()
        .arg("bench")
        .args(args)
        .args(["--duration", "1s", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A number field of the JSON report.
fn field(json: &str, name: &str) -> f64 {
    let start = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + name.len()
        + 3;
    let rest = &json[start..];
    rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
}

fn assert_clean(ok: bool, out: &str, err: &str) {
    assert!(ok, "bench failed: {err} {out}");
    assert!(field(out, "ops") > 0.0, "{out}");
    assert!(out.contains("\"errors\":{}"), "errors reported: {out}");
}

#[test]
fn echo_udp_stream_and_connect_modes() {
    let server = start_role(Echo, ServerConfig::default());
    let tcp = server.tcp.to_string();
    let (ok, out, err) = bench(&["echo", &tcp, "--conns", "4", "--size", "512"]);
    assert_clean(ok, &out, &err);
    assert!(field(&out, "bytes_received") == field(&out, "bytes_sent"));
    let (ok, out, err) = bench(&["echo", "--udp", &server.udp.to_string(), "--conns", "2"]);
    assert_clean(ok, &out, &err);
    let (ok, out, err) = bench(&[
        "stream", &tcp, "--conns", "2", "--size", "65536", "--verify",
    ]);
    assert_clean(ok, &out, &err);
    assert_eq!(
        field(&out, "bytes_received"),
        field(&out, "bytes_sent"),
        "every byte came back"
    );
    let (ok, out, err) = bench(&["connect", &tcp, "--conns", "2"]);
    assert_clean(ok, &out, &err);
    server.stop();
}

#[test]
fn chat_mode_counts_every_delivery() {
    let (tcp, stats) = (
        rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap(),
        Stats::new(),
    );
    let addr = tcp.local_addr().unwrap();
    let (_trigger, shutdown) = shutdown::channel();
    let config = ChatConfig {
        rate: 0.0,
        ..Default::default()
    };
    rt::spawn(chat::run(
        Some(tcp),
        None,
        ServerConfig::default(),
        config,
        stats,
        shutdown,
    ));
    let (ok, out, err) = bench(&[
        "chat",
        &addr.to_string(),
        "--conns",
        "20",
        "--senders",
        "4",
        "--rate",
        "50",
    ]);
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"lost\":0"), "{out}");
    // Every line sent reached the 19 other clients.
    assert_eq!(field(&out, "ops"), lines_sent(&out) * 19.0);
}

#[test]
fn chat_mode_over_websockets_counts_every_delivery() {
    let (tcp, web) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let addr = web.local_addr().unwrap();
    let (_trigger, shutdown) = shutdown::channel();
    let config = ChatConfig {
        rate: 0.0,
        ..Default::default()
    };
    rt::spawn(chat::run_with_web(
        Some(tcp),
        None,
        Some(web),
        ServerConfig::default(),
        config,
        Stats::new(),
        shutdown,
    ));
    let (ok, out, err) = bench(&[
        "chat",
        &addr.to_string(),
        "--web",
        "--conns",
        "20",
        "--senders",
        "4",
        "--rate",
        "50",
        "--size",
        "300",
    ]);
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"lost\":0"), "{out}");
    assert_eq!(field(&out, "ops"), lines_sent(&out) * 19.0);
    // Against a plain chat port, --web is a clear error, not a hang.
    let (tcp, stats) = (
        rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap(),
        Stats::new(),
    );
    let plain = tcp.local_addr().unwrap();
    let (_trigger2, shutdown) = shutdown::channel();
    rt::spawn(chat::run(
        Some(tcp),
        None,
        ServerConfig::default(),
        ChatConfig::default(),
        stats,
        shutdown,
    ));
    let (ok, _, err) = bench(&[
        "chat",
        &plain.to_string(),
        "--web",
        "--conns",
        "2",
        "--rate",
        "1",
    ]);
    assert!(!ok && err.contains("handshake"), "{err}");
}

/// A relay like `ncat --chat`: it forwards each chunk of whole lines it reads to every
/// other client, prefixed once with `<userK> `, so only a chunk's first line carries a
/// nick. The
/// `deaf`-th client accepted (from 0) gets the welcome and nothing after it.
fn start_chunk_relay(deaf: Option<usize>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Mutex;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<(usize, TcpStream)>>> = Arc::default();
    std::thread::spawn(move || {
        for (k, mut s) in listener.incoming().map_while(Result::ok).enumerate() {
            let _ = s.write_all(b"<announce> welcome\n");
            if Some(k) != deaf {
                clients.lock().unwrap().push((k, s.try_clone().unwrap()));
            }
            let clients = clients.clone();
            std::thread::spawn(move || {
                let (mut buf, mut held) = ([0u8; 4096], Vec::new());
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    // Whole lines only: a read that ends mid-line keeps the rest for
                    // the next chunk (ncat would put the prefix mid-line).
                    held.extend_from_slice(&buf[..n]);
                    let Some(end) = held.iter().rposition(|&b| b == b'\n') else {
                        continue;
                    };
                    let mut chunk = format!("<user{k}> ").into_bytes();
                    chunk.extend(held.drain(..=end));
                    for (j, w) in clients.lock().unwrap().iter_mut() {
                        if *j != k {
                            let _ = w.write_all(&chunk);
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The "lines sent" counter of a chat report.
fn lines_sent(json: &str) -> f64 {
    let sent = json.split("\"lines sent\":").nth(1).unwrap();
    sent[..sent.find([',', '}']).unwrap()].parse().unwrap()
}

#[test]
fn chat_mode_counts_lines_relayed_in_raw_chunks_and_reports_losses() {
    // 2,000 lines/s per sender leave two or three lines per write (one write per
    // millisecond), so most relayed lines arrive without a nick prefix.
    let args = ["--conns", "6", "--senders", "3", "--rate", "2000"];
    let relay = start_chunk_relay(None).to_string();
    let (ok, out, err) = bench(&[&["chat", &relay][..], &args].concat());
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"lost\":0"), "{out}");
    assert_eq!(field(&out, "ops"), lines_sent(&out) * 5.0, "{out}");

    // One client hears nothing: its share is lost, and the run's length is the time to
    // the last delivery, not that plus the grace period spent waiting for the lost ones.
    let relay = start_chunk_relay(Some(5)).to_string();
    let (ok, out, err) = bench(&[&["chat", &relay][..], &args].concat());
    assert!(ok, "{err} {out}");
    let sent = lines_sent(&out);
    assert_eq!(field(&out, "ops"), sent * 4.0, "{out}");
    assert!(out.contains(&format!("\"lost\":{sent}")), "{out}");
    let grace = switchboard::bench::GRACE.as_secs_f64();
    assert!(field(&out, "seconds") < 1.0 + grace, "{out}");
}

#[test]
fn http_mode_counts_statuses() {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), "hello").unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_trigger, shutdown) = shutdown::channel();
    let cfg = HttpConfig::new(&dir, Duration::from_secs(10)).unwrap();
    rt::spawn(http::run(
        listener,
        ServerConfig::default(),
        cfg,
        Arc::new(Stats::default()),
        shutdown,
    ));
    let (ok, out, err) = bench(&[
        "http",
        &addr.to_string(),
        "--conns",
        "4",
        "--path",
        "/f.txt",
    ]);
    assert_clean(ok, &out, &err);
    assert_eq!(field(&out, "status 200"), field(&out, "ops"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refusing_or_misbehaving_target_is_a_clear_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _, err) = bench(&["echo", &free.to_string(), "--conns", "2"]);
    assert!(!ok && err.contains("connection refused"), "{err}");
    // An "echo" that answers with other bytes (same length) is caught.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in liar.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&vec![b'x'; n]).is_err() {
                    break;
                }
            }
        }
    });
    let (ok, out, err) = bench(&[
        "echo",
        &liar_addr.to_string(),
        "--conns",
        "1",
        "--size",
        "16",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("reply differs from what was sent"),
        "{out} {err}"
    );
    assert!(err.contains("no round trips completed"), "{err}");
    // A target that accepts but never answers is an error after the reply timeout, not a hang.
    let upper = start_role(Upper, ServerConfig::default());
    let (ok, out, _) = bench(&[
        "echo",
        &upper.tcp.to_string(),
        "--conns",
        "1",
        "--size",
        "16",
    ]);
    assert!(!ok && out.contains("no reply within 10s"), "{out}");
    upper.stop();
}

// ---------------------------------------------------------------- --tls

#[test]
fn echo_stream_verify_and_connect_over_tls_complete() {
    let certs = Certs::named("echo", &["localhost", "127.0.0.1"]);
    let server = start_role(Echo, certs.server_config());
    // By the target's host name (localhost), as connect verifies it.
    let target = format!("localhost:{}", server.tcp.port());
    let tls = ["--tls", "--ca", path(&certs.ca)];

    let (ok, out, err) = bench(&[&["echo", &target, "--conns", "4"], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"mode\":\"echo (TLS)\""), "{out}");
    assert_eq!(field(&out, "bytes_received"), field(&out, "bytes_sent"));

    let stream = [
        "stream", &target, "--conns", "2", "--size", "65536", "--verify",
    ];
    let (ok, out, err) = bench(&[&stream[..], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert_eq!(
        field(&out, "bytes_received"),
        field(&out, "bytes_sent"),
        "every byte came back through the session"
    );

    let (ok, out, err) = bench(&[&["connect", &target, "--conns", "2"], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"mode\":\"connect (TLS)\""), "{out}");
    assert!(out.contains("\"latency_us\""), "{out}");

    // Every handshake bench counted, the server finished too: none failed on its side
    // (bench closes with close_notify and waits for the server's close, no resets).
    let stats = server.stop();
    assert_eq!(stats.tls.total(), 0, "handshakes the server saw fail");
}

#[test]
fn http_over_tls_completes() {
    let certs = Certs::named("http", &["localhost", "127.0.0.1"]);
    let root = certs.dir.join("site");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("1k"), vec![b'x'; 1024]).unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig::new(&root, Duration::from_secs(10)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(http::run(
        listener,
        certs.server_config(),
        cfg,
        Stats::new(),
        shutdown,
    ));

    // By IP address: the certificate names 127.0.0.1 too.
    let target = addr.to_string();
    let args = [
        "http",
        &target,
        "--conns",
        "4",
        "--path",
        "/1k",
        "--tls",
        "--ca",
        path(&certs.ca),
    ];
    let (ok, out, err) = bench(&args);
    assert_clean(ok, &out, &err);
    assert_eq!(field(&out, "status 200"), field(&out, "ops"));
    let (ok, out, err) = bench(&[
        "connect",
        &target,
        "--conns",
        "2",
        "--tls",
        "--ca",
        path(&certs.ca),
    ]);
    assert_clean(ok, &out, &err);
    trigger.fire();
    rt::block_on(done);
}

#[test]
fn a_wrong_name_or_unknown_ca_is_a_clear_error() {
    let certs = Certs::named("other", &["other.example"]);
    let server = start_role(Echo, certs.server_config());
    let target = format!("localhost:{}", server.tcp.port());
    for mode in ["echo", "connect", "http", "stream"] {
        let (ok, out, err) = bench(&[mode, &target, "--tls", "--ca", path(&certs.ca)]);
        assert!(!ok, "{mode}: {out}");
        assert!(
            err.contains("not valid for name \"localhost\""),
            "{mode}: {err}"
        );
        assert!(err.contains("TLS handshake"), "{mode}: {err}");
    }
    // --sni names what the certificate says: accepted.
    let (ok, out, err) = bench(&[
        "echo",
        &target,
        "--conns",
        "1",
        "--tls",
        "--ca",
        path(&certs.ca),
        "--sni",
        "other.example",
    ]);
    assert_clean(ok, &out, &err);

    // A CA that did not sign the server's certificate.
    let stranger = Certs::named("stranger", &["localhost"]);
    let (ok, _, err) = bench(&[
        "echo",
        &target,
        "--tls",
        "--ca",
        path(&stranger.ca),
        "--sni",
        "other.example",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("not signed by any CA this client trusts"),
        "{err}"
    );

    // --insecure takes any certificate.
    let (ok, out, err) = bench(&["connect", &target, "--conns", "1", "--tls", "--insecure"]);
    assert_clean(ok, &out, &err);
    server.stop();
}

#[test]
fn a_plain_or_silent_server_is_a_clear_error() {
    // A plain echo server sends our ClientHello back; a plain HTTP server answers text.
    let plain = start_role(Echo, ServerConfig::default());
    let target = plain.tcp.to_string();
    for mode in ["echo", "connect"] {
        let (ok, _, err) = bench(&[mode, &target, "--tls", "--insecure"]);
        assert!(!ok, "{mode}: {err}");
        assert!(
            err.contains("did not answer in TLS: is it a plain-text server?"),
            "{mode}: {err}"
        );
    }
    plain.stop();

    let root = std::env::temp_dir().join(format!("switchboard-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig::new(&root, Duration::from_secs(10)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(http::run(
        listener,
        ServerConfig::default(),
        cfg,
        Stats::new(),
        shutdown,
    ));
    let (ok, _, err) = bench(&["http", &addr.to_string(), "--tls", "--insecure"]);
    assert!(!ok, "{err}");
    assert!(err.contains("is it a plain-text server?"), "{err}");
    trigger.fire();
    rt::block_on(done);
    let _ = std::fs::remove_dir_all(&root);

    // A server that accepts and never answers the handshake: an error after the reply
    // timeout, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (ok, _, err) = bench(&[
        "echo",
        &silent.local_addr().unwrap().to_string(),
        "--conns",
        "1",
        "--tls",
        "--insecure",
    ]);
    assert!(!ok, "{err}");
    assert!(err.contains("not finished within"), "{err}");
    drop(silent);
}

#[test]
fn chat_over_tls_is_refused_with_a_reason() {
    let (ok, _, err) = bench(&["chat", "127.0.0.1:9", "--rate", "1", "--tls", "--insecure"]);
    assert!(!ok);
    assert!(err.contains("bench chat does not speak TLS"), "{err}");
}
