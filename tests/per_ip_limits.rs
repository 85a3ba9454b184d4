//! The per-client limits (`--max-conns-per-ip`, `--conn-rate-per-ip`) over real sockets on
//! 127.0.0.1 port 0. Distinct clients are distinct loopback source addresses (127.0.0.2,
//! 127.0.0.3, ...: the whole 127/8 is local on Linux), bound before connecting. The table's
//! bound, its eviction and the log's arithmetic are unit tests in `src/net/per_ip.rs` (on
//! a made-up clock); here: the accept loop, TLS, several listeners, the binary's log, and
//! `serve` (keys, `check`, a reload that keeps the counts).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::*;
use common::*;
use rustls::pki_types::ServerName;
use switchboard::net::listener::{Listeners, ServerConfig};
use switchboard::net::per_ip::{Client, PerIpLimits, parse_rate};
use switchboard::net::shutdown;
use switchboard::net::stats::Stats;
use switchboard::role;
use switchboard::roles::echo::Echo;
use switchboard::rt::{self, TcpListener};

/// A blocking client connected to `addr` from `127.0.0.<last>` (read timeout
/// [`DEADLINE`]).
fn client_from(last: u8, addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: a new socket we own, handed at once to TcpStream, which closes it; bind and
    // connect with correctly filled sockaddr_in structs of the size given.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        let local = sin(Ipv4Addr::new(127, 0, 0, last), 0);
        let rc = libc::bind(fd, &local as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let remote = sin(*v4.ip(), v4.port());
        let rc = libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        s
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Whether the echo server serves `s`: `ping\n` comes back exactly (true), or the
/// server closes with nothing sent (false).
fn echoed(s: &mut TcpStream) -> bool {
    // A write to a socket the server has closed may fail (a reset): refused too.
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 5 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                break;
            }
            Err(e) => panic!("reading the echo: {e}"),
        }
    }
    match got.as_slice() {
        b"ping\n" => true,
        b"" => false,
        other => panic!("unexpected bytes {:?}", String::from_utf8_lossy(other)),
    }
}

fn v4(last: u8) -> Client {
    Client::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn open_of(stats: &Stats, last: u8) -> u32 {
    stats.per_ip.lock().open(&v4(last))
}

fn conns_limit(n: usize) -> PerIpLimits {
    PerIpLimits {
        max_conns: n,
        ..PerIpLimits::default()
    }
}

#[test]
fn the_next_connection_over_the_cap_is_refused_another_client_is_served_and_a_close_frees_a_slot() {
    let server = start_role(
        Echo,
        ServerConfig {
            per_ip: conns_limit(2),
            ..ServerConfig::default()
        },
    );
    let mut a1 = client_from(2, server.tcp);
    let mut a2 = client_from(2, server.tcp);
    assert!(echoed(&mut a1) && echoed(&mut a2));
    let mut a3 = client_from(2, server.tcp);
    assert!(!echoed(&mut a3), "the third from 127.0.0.2 is closed");
    assert_eq!(server.stats.refused.per_ip_conns.load(Relaxed), 1);

    // Another client has a count of its own.
    let mut b1 = client_from(3, server.tcp);
    let mut b2 = client_from(3, server.tcp);
    assert!(echoed(&mut b1) && echoed(&mut b2));

    // One of 127.0.0.2's closes: its slot is free once the connection's task has ended.
    drop(a1);
    wait_until("127.0.0.2's closed connection to be released", || {
        open_of(&server.stats, 2) == 1
    });
    let mut a4 = client_from(2, server.tcp);
    assert!(echoed(&mut a4));
    assert!(echoed(&mut a2), "the open one is untouched");
    assert_eq!(server.stats.refused.per_ip_conns.load(Relaxed), 1);

    // Every client gone: with no rate, nothing is kept about them.
    drop((a2, a3, a4, b1, b2));
    wait_until("the table to empty", || {
        server.stats.per_ip.lock().is_empty()
    });
    let stats = server.stop();
    assert!(
        stats.summary().contains(" refused=1 ")
            && stats.summary().contains("refused_per_ip_conns=1"),
        "{}",
        stats.summary()
    );
}

/// A blocking TLS client from `127.0.0.<last>`, its handshake done.
fn tls_client_from(
    last: u8,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, client_from(last, addr));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

#[test]
fn tls_handshakes_hold_a_slot_while_they_run_and_a_failed_one_frees_it() {
    let certs = Certs::new("per-ip");
    let server = start_role(
        Echo,
        ServerConfig {
            per_ip: conns_limit(1),
            ..certs.server_config()
        },
    );
    // A client that sends plain text to the TLS port: its handshake fails, and its slot
    // is given back.
    let mut plain = client_from(4, server.tcp);
    plain.write_all(b"hello\n").unwrap();
    assert!(closed_by_server(&mut plain));
    wait_until("the failed handshake's slot to be released", || {
        server.stats.tls.total() == 1 && open_of(&server.stats, 4) == 0
    });

    // A stalled handshake holds the client's one slot: a second try is refused.
    let stalled = client_from(4, server.tcp);
    wait_until("the stalled handshake to be counted", || {
        open_of(&server.stats, 4) == 1
    });
    let mut second = client_from(4, server.tcp);
    assert!(closed_by_server(&mut second));
    assert_eq!(server.stats.refused.per_ip_conns.load(Relaxed), 1);
    // It goes (a closed handshake): the next is served, over TLS.
    drop(stalled);
    wait_until("the closed handshake's slot to be released", || {
        open_of(&server.stats, 4) == 0
    });
    let mut secure = tls_client_from(4, server.tcp, certs.client());
    secure.write_all(b"over tls\n").unwrap();
    assert_eq!(read_n(&mut secure, 9), b"over tls\n");
    drop(secure);
    let stats = server.stop();
    assert_eq!(stats.refused.per_ip_conns.load(Relaxed), 1);
}

#[test]
fn a_plain_listener_and_a_tls_listener_beside_it_share_one_count() {
    let certs = Certs::new("per-ip-beside");
    let (plain, secure) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), secure.local_addr().unwrap());
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let config = ServerConfig {
        per_ip: conns_limit(1),
        ..certs.server_config()
    };
    let done = rt::spawn(role::run(
        Arc::new(Echo),
        Listeners {
            main: vec![plain],
            tls_beside: vec![secure],
        },
        None,
        Arc::new(config),
        stats.clone(),
        shutdown,
    ));
    let mut secure = tls_client_from(5, tls_addr, certs.client());
    secure.write_all(b"one\n").unwrap();
    assert_eq!(read_n(&mut secure, 4), b"one\n");
    // 127.0.0.5 has its one connection (over TLS): the plain port refuses it too.
    let mut plain = client_from(5, plain_addr);
    assert!(!echoed(&mut plain));
    // Another client is served on the plain port.
    assert!(echoed(&mut client_from(6, plain_addr)));
    assert_eq!(stats.refused.per_ip_conns.load(Relaxed), 1);
    drop(secure);
    trigger.fire();
    rt::block_on(done);
}

#[test]
fn the_rate_allows_a_burst_then_refuses_until_tokens_come_back() {
    // 3 per 10 s: a token back every 3.3 s. The burst is served; the one after it is
    // refused unless the machine was slow enough for a token to come back meanwhile,
    // so the test only asks that a refusal comes once the burst is spent.
    let server = start_role(
        Echo,
        ServerConfig {
            per_ip: PerIpLimits {
                rate: Some(parse_rate("3/10s").unwrap()),
                ..PerIpLimits::default()
            },
            ..ServerConfig::default()
        },
    );
    for i in 0..3 {
        assert!(
            echoed(&mut client_from(7, server.tcp)),
            "burst connection {i}"
        );
    }
    let mut served_more = 0;
    while echoed(&mut client_from(7, server.tcp)) {
        served_more += 1;
        assert!(served_more < 6, "never refused");
    }
    assert!(server.stats.refused.per_ip_rate.load(Relaxed) >= 1);
    // Another client has a full bucket.
    assert!(echoed(&mut client_from(8, server.tcp)));
    // A refused try takes no token: trying again and again, one comes back.
    let mut tries = 0;
    wait_until("a token to come back to 127.0.0.7", || {
        tries += 1;
        std::thread::sleep(Duration::from_millis(100)); // a gap between tries, not a sync
        echoed(&mut client_from(7, server.tcp))
    });
    assert!(tries > 1, "the bucket was empty");
    let stats = server.stop();
    // One refusal ended the burst, and every try but the last was refused.
    assert_eq!(stats.refused.per_ip_rate.load(Relaxed), tries as u64);
    assert_eq!(stats.refused.per_ip_conns.load(Relaxed), 0);
}

/// A process's JSON log, line by line as it comes.
fn json_log(proc: &mut Proc) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let stdout = proc.0.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            keep.lock().unwrap().push(value);
        }
    });
    log
}

fn wait_log(
    log: &Mutex<Vec<serde_json::Value>>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut found = None;
    wait_until(what, || {
        found = log.lock().unwrap().iter().find(|l| want(l)).cloned();
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn a_flood_of_refused_connects_is_a_few_log_lines_that_add_up() {
    let mut proc = spawn(&[
        "--log-format",
        "json",
        "echo",
        "--tcp",
        "127.0.0.1:0",
        "--max-conns-per-ip",
        "1",
    ]);
    let log = json_log(&mut proc);
    let line = wait_log(&log, "listening", |l| l["msg"] == "listening (TCP)");
    let addr: SocketAddr = line["addr"].as_str().unwrap().parse().unwrap();

    let mut held = client_from(9, addr);
    assert!(echoed(&mut held));
    let flood = 300;
    let started = Instant::now();
    for _ in 0..flood {
        let mut s = client_from(9, addr);
        assert!(closed_by_server(&mut s));
    }
    // A refusal from another client, so the top offender has a rival.
    let mut other_held = client_from(10, addr);
    assert!(echoed(&mut other_held));
    assert!(closed_by_server(&mut client_from(10, addr)));

    let per_ip = |l: &serde_json::Value| l["reason"] == "per_ip_conns";
    let mut lines = Vec::new();
    wait_until("the log to account for every refusal", || {
        lines = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| per_ip(l))
            .cloned()
            .collect();
        lines
            .iter()
            .map(|l| l["refused"].as_u64().unwrap())
            .sum::<u64>()
            == flood + 1
    });
    let elapsed = started.elapsed();
    // At most one line a second (and one for the tally left at the end).
    let most = elapsed.as_secs() as usize + 2;
    assert!(
        lines.len() <= most,
        "{} lines in {elapsed:?}: {lines:#?}",
        lines.len()
    );
    assert_eq!(
        lines[0]["refused"], 1,
        "the first refusal is logged at once"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"] == 40 && (l["top"] == "127.0.0.9" || l["top"] == "127.0.0.10")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["top"] == "127.0.0.9" && l["top_refused"].as_u64() > Some(1))
    );
    assert!(lines.iter().all(|l| l["max_conns_per_ip"] == 1));

    drop((held, other_held));
    signal(&proc, libc::SIGTERM);
    wait_exit(&mut proc);
    let summary = wait_log(&log, "the summary", |l| {
        l["msg"].as_str().is_some_and(|m| m.starts_with("stopped:"))
    });
    let summary = summary["msg"].as_str().unwrap();
    assert!(
        summary.contains(&format!(" refused={} ", flood + 1))
            && summary.contains(&format!("refused_per_ip_conns={}", flood + 1)),
        "{summary}"
    );
}

/// A directory of its own for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("switchboard-per-ip-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP/1.1 GET, read to the close: the body.
fn get_body(addr: SocketAddr, path: &str) -> String {
    let mut s = client(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    text.split_once("\r\n\r\n")
        .expect("a whole response")
        .1
        .to_owned()
}

fn echo_service(idle: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[service]]
name = "echo"
role = "echo"
tcp = "127.0.0.1:0"
max_conns_per_ip = 1
conn_rate_per_ip = "100/1s"
idle_timeout = "{idle}"
"#
    )
}

#[test]
fn serve_takes_the_keys_and_a_reload_keeps_each_clients_count() {
    let dir = Dir::new("serve");
    let config = dir.write("serve.toml", &echo_service("0"));
    let pid = dir.0.join("pid");
    let mut command = binary();
    command
        .args(["--log-format", "json", "serve"])
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc(command.spawn().unwrap());
    let log = json_log(&mut proc);
    wait_log(&log, "serving", |l| l["msg"] == "serving");
    let admin: SocketAddr = wait_log(&log, "the admin listener", |l| {
        l["role"] == "admin" && l["msg"] == "listening (TCP)"
    })["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let services: serde_json::Value = serde_json::from_str(&get_body(admin, "/services")).unwrap();
    let echo = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "echo")
        .unwrap_or_else(|| panic!("no echo in {services}"));
    let addr: SocketAddr = echo["tcp"][0].as_str().unwrap().parse().unwrap();

    let mut held = client_from(11, addr);
    assert!(echoed(&mut held));
    assert!(!echoed(&mut client_from(11, addr)));

    // A new generation (another idle timeout) sees the connection the old one still has.
    dir.write("serve.toml", &echo_service("5m"));
    let out = binary()
        .arg("reload")
        .arg("--pid-file")
        .arg(&pid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_log(&log, "the reload", |l| {
        l["msg"] == "reloaded" && l["changed"] == "echo"
    });
    assert!(
        !echoed(&mut client_from(11, addr)),
        "the count survived the reload"
    );
    assert!(echoed(&mut client_from(12, addr)));
    assert!(echoed(&mut held));

    let metric = |reason: &str| {
        let text = get_body(admin, "/metrics");
        let want = format!(
            "switchboard_refused_connections_total{{service=\"echo\",role=\"echo\",reason=\"{reason}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .unwrap_or_else(|| panic!("no {want} in {text}"))
            .to_owned()
    };
    assert_eq!(metric("per_ip_conns"), "2");
    assert_eq!(metric("per_ip_rate"), "0");
    drop(held);
    signal(&proc, libc::SIGTERM);
    wait_exit(&mut proc);
}

#[test]
fn check_names_a_bad_rate_or_prefix_with_its_line() {
    let dir = Dir::new("check");
    let path = dir.write(
        "bad.toml",
        r#"[[service]]
role = "echo"
tcp = "127.0.0.1:0"
max_conns_per_ip = 4
conn_rate_per_ip = "10 per second"

[[service]]
name = "other"
role = "upper"
tcp = "127.0.0.1:0"
per_ip_prefix_v6 = 129
conn_rate_per_ip = "0/1s"
"#,
    );
    let out = binary()
        .args(["check", "--no-bind"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let shown = path.display();
    for want in [
        format!(
            "{shown}:5: service \"echo\": conn_rate_per_ip: invalid value '10 per second' for '--conn-rate-per-ip <N/DURATION>': "
        ),
        format!("{shown}:11: service \"other\": per_ip_prefix_v6: invalid value '129'"),
        format!(
            "{shown}:12: service \"other\": conn_rate_per_ip: invalid value '0/1s' for '--conn-rate-per-ip <N/DURATION>': the count in \"0/1s\" must be at least 1"
        ),
    ] {
        assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    }
    // The good values pass.
    let good = dir.write(
        "good.toml",
        "[[service]]\nrole = \"echo\"\ntcp = \"127.0.0.1:0\"\nmax_conns_per_ip = 4\nconn_rate_per_ip = \"10/1s\"\nper_ip_prefix_v6 = 56\n",
    );
    let out = binary()
        .args(["check", "--no-bind"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Not a check: what one accept pays for the table (lock, lookup, bucket, release), with
/// one client, a thousand, and sixty thousand taking turns. Run it with
/// `cargo test --test per_ip_limits -- --ignored --nocapture`; `benches/RESULTS.md`
/// has the figures.
#[test]
#[ignore]
fn measure_admit_and_release_cost() {
    let stats = Stats::new();
    let limits = PerIpLimits {
        max_conns: 100_000,
        rate: Some(parse_rate("100000000/1s").unwrap()),
        ..PerIpLimits::default()
    };
    for clients in [1u32, 1000, 60_000] {
        let n = 1_000_000u32;
        let start = Instant::now();
        for i in 0..n {
            let ip = std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i % clients));
            let guard = switchboard::net::per_ip::admit("bench", &stats, ip, &limits).unwrap();
            drop(guard);
        }
        let per = start.elapsed() / n;
        eprintln!("clients {clients}: admit + release {per:?} each");
    }
}

#[test]
fn a_rate_under_a_millisecond_shows_as_typed_not_as_zero_hours() {
    // Shown in the refusal lines (`conn_rate_per_ip`) and read back the same.
    for (typed, shown) in [
        ("1/0.5ms", "1/0.5ms"),
        ("3/1.5ms", "3/1.5ms"),
        ("2/0.0001s", "2/0.1ms"),
        ("10/1s", "10/1s"),
        ("5/250ms", "5/250ms"),
    ] {
        let rate = parse_rate(typed).unwrap();
        assert_eq!(rate.to_string(), shown, "{typed}");
        assert_eq!(parse_rate(shown).unwrap(), rate, "{shown}");
    }
}

#[test]
fn a_full_table_that_admits_untracked_says_so_once_a_second() {
    use switchboard::net::per_ip::{Admission, LOG_EVERY, Table};
    let limits = PerIpLimits {
        max_conns: 1,
        ..PerIpLimits::default()
    };
    let mut t = Table::with_capacity(2);
    let t0 = Instant::now();
    assert_eq!(t.admit(v4(1), &limits, t0), Admission::Tracked);
    assert_eq!(t.admit(v4(2), &limits, t0), Admission::Tracked);
    // Full of clients with connections open: the next ones go unlimited, which the
    // operator must hear about (once a second, with how many), not find out never.
    assert_eq!(t.untracked_notice(t0), None, "nothing untracked yet");
    assert_eq!(t.admit(v4(3), &limits, t0), Admission::Untracked);
    assert_eq!(t.untracked_notice(t0), Some(1));
    for i in 4..10 {
        assert_eq!(t.admit(v4(i), &limits, t0), Admission::Untracked);
        assert_eq!(t.untracked_notice(t0), None);
    }
    let t1 = t0 + LOG_EVERY;
    assert_eq!(t.admit(v4(10), &limits, t1), Admission::Untracked);
    assert_eq!(t.untracked_notice(t1), Some(7));
    assert_eq!(t.untracked, 8);
}

#[test]
fn a_flood_refused_by_max_conns_or_the_access_list_is_a_few_log_lines_too() {
    let mut proc = spawn(&[
        "--log-format",
        "json",
        "echo",
        "--tcp",
        "127.0.0.1:0",
        "--max-conns",
        "1",
        "--deny",
        "127.0.0.8/32",
    ]);
    let log = json_log(&mut proc);
    let line = wait_log(&log, "listening", |l| l["msg"] == "listening (TCP)");
    let addr: SocketAddr = line["addr"].as_str().unwrap().parse().unwrap();

    let mut held = client_from(9, addr);
    assert!(echoed(&mut held));
    let flood = 200;
    let started = Instant::now();
    for _ in 0..flood {
        assert!(closed_by_server(&mut client_from(10, addr)));
        assert!(closed_by_server(&mut client_from(8, addr)));
    }
    let full = |l: &serde_json::Value| {
        l["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("refused: server full"))
    };
    let denied = |l: &serde_json::Value| {
        l["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("refused by access list"))
    };
    // Both kinds are logged (the first of each at once)...
    wait_log(&log, "a server-full line", full);
    wait_log(&log, "an access-list line", denied);
    drop(held);
    signal(&proc, libc::SIGTERM);
    wait_exit(&mut proc);
    wait_log(&log, "the summary", |l| {
        l["msg"].as_str().is_some_and(|m| m.starts_with("stopped:"))
    });
    let elapsed = started.elapsed();
    // ... at most once a second each, each line telling how many since the last.
    let most = elapsed.as_secs() as usize + 1;
    let lines_of = |want: &dyn Fn(&serde_json::Value) -> bool| -> Vec<serde_json::Value> {
        let all = log.lock().unwrap();
        all.iter().filter(|l| want(l)).cloned().collect()
    };
    let (full_lines, denied_lines) = (lines_of(&full), lines_of(&denied));
    for (what, lines) in [("server full", full_lines), ("access list", denied_lines)] {
        assert!(
            lines.len() <= most,
            "{what}: {} lines in {elapsed:?}",
            lines.len()
        );
        assert_eq!(lines[0]["refused"], 1, "{what}: {lines:#?}");
        let told: u64 = lines.iter().map(|l| l["refused"].as_u64().unwrap()).sum();
        assert!(told <= flood, "{what}: {told}");
    }
}
