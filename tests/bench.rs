//! `switchboard bench` driven as the built binary against servers in this process:
//! every mode completes, checks what comes back, and fails clearly on a bad target.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

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
