//! The proxy over real sockets: integrity, half-close, timeouts, failover, balancing,
//! PROXY protocol, and real protocols through it.
//!
//! Every test of the byte path (integrity, half-close, resets, timers, PROXY headers)
//! runs three times, as `NAME::adaptive` (the binary's default: small messages copied,
//! bulk spliced), `NAME::spliced` (`--splice-always`) and `NAME::copied`
//! (`--no-splice`), asserting the same bytes and counts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::splice::PIPE_CAPACITY;
use switchboard::net::stats::Stats;
use switchboard::roles::echo::Echo;
use switchboard::roles::hello::Hello;
use switchboard::roles::proxy::header::{self, Version};
use switchboard::roles::proxy::upstreams::{Balance, Upstreams};
use switchboard::roles::proxy::{self, ProxyConfig};
use switchboard::roles::upper::Upper;
use switchboard::rt::{self, TcpListener};

struct Proxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _trigger: Trigger,
}

fn config(upstreams: &[SocketAddr], balance: Balance) -> ProxyConfig {
    ProxyConfig {
        sni: None,
        upstreams: Upstreams::new(
            upstreams.iter().map(|a| a.to_string()).collect(),
            balance,
            Duration::from_secs(30),
        ),
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
        splice: Some(PIPE_CAPACITY),
        splice_always: false,
        ftp: None,
    }
}

/// How a session carries its bytes: as the binary does by default (small messages
/// copied, bulk spliced), everything spliced (`--splice-always`), or everything copied
/// (`--no-splice`).
#[derive(Clone, Copy, Debug)]
enum Carry {
    Adaptive,
    Spliced,
    Copied,
}

/// `cfg` carrying its bytes as `carry` says.
fn with_splice(cfg: ProxyConfig, carry: Carry) -> ProxyConfig {
    ProxyConfig {
        splice: (!matches!(carry, Carry::Copied)).then_some(PIPE_CAPACITY),
        splice_always: matches!(carry, Carry::Spliced),
        ..cfg
    }
}

/// Each named test body (a `fn NAME(splice: Carry)`) becomes three tests,
/// `NAME::adaptive`, `NAME::spliced` and `NAME::copied`.
macro_rules! spliced_and_copied {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn adaptive() {
                super::$name(super::Carry::Adaptive)
            }
            #[test]
            fn spliced() {
                super::$name(super::Carry::Spliced)
            }
            #[test]
            fn copied() {
                super::$name(super::Carry::Copied)
            }
        }
    )+};
}

spliced_and_copied!(
    sixteen_clients_carry_eight_mib_each_both_ways_intact,
    sixteen_clients_intact_on_the_shared_executor,
    a_server_that_speaks_first_is_heard,
    both_directions_stream_at_once,
    a_client_half_close_reaches_the_server_and_the_reply_still_arrives,
    a_server_half_close_reaches_the_client_and_the_client_can_still_send,
    a_quiet_half_closed_session_ends_after_fin_timeout,
    a_fin_after_a_quiet_spell_longer_than_the_fin_timeout_still_gets_its_reply,
    idle_timeout_counts_both_directions,
    an_upstream_reset_closes_the_client,
    send_proxy_writes_the_header_first,
    accept_proxy_takes_the_real_client_and_refuses_garbage,
    a_line_based_session_like_telnet_works_through_the_proxy,
    a_client_reset_ends_a_session_whose_upstream_never_reads,
    an_upstream_reset_ends_a_session_whose_client_never_reads,
    a_client_fin_seen_while_the_upstream_stalls_starts_the_fin_timeout,
    a_slow_steady_reader_is_not_cut_by_the_idle_or_fin_timeout,
    headers_both_ways_then_the_client_bytes_arrive_exact_and_counted,
    a_client_reset_mid_download_is_counted_with_what_it_acknowledged,
);

/// The proxy as the binary runs it by default: two pinned threads (`--threads` is one
/// per core, and the test machine may have any number).
fn start_proxy(cfg: ProxyConfig, server: ServerConfig) -> Proxy {
    let listeners = rt::block_on(switchboard::service::bind_reuseport("127.0.0.1:0", 2)).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    rt::spawn(proxy::run_pinned(
        listeners.into_iter().map(|l| vec![l]).collect(),
        server,
        cfg,
        stats.clone(),
        shutdown,
    ));
    Proxy {
        addr,
        stats,
        _trigger: trigger,
    }
}

/// The proxy on the shared executor (`--threads 0`).
fn start_shared_proxy(cfg: ProxyConfig, server: ServerConfig) -> Proxy {
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    rt::spawn(proxy::run(listener, server, cfg, stats.clone(), shutdown));
    Proxy {
        addr,
        stats,
        _trigger: trigger,
    }
}

fn simple_proxy(upstream: SocketAddr, splice: Carry) -> Proxy {
    start_proxy(
        with_splice(config(&[upstream], Balance::First), splice),
        ServerConfig::default(),
    )
}

/// An upstream run by a test thread: `serve` gets each accepted connection.
fn custom_upstream(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let serve = serve.clone();
            thread::spawn(move || serve(s));
        }
    });
    addr
}

/// An address nothing listens on.
fn refused_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn sixteen_clients_carry_eight_mib_each_both_ways_intact(splice: Carry) {
    let echo = start_role(Echo, ServerConfig::default());
    sixteen_clients_through(simple_proxy(echo.tcp, splice));
    echo.stop();
}

fn sixteen_clients_intact_on_the_shared_executor(splice: Carry) {
    let echo = start_role(Echo, ServerConfig::default());
    sixteen_clients_through(start_shared_proxy(
        with_splice(config(&[echo.tcp], Balance::First), splice),
        ServerConfig::default(),
    ));
    echo.stop();
}

fn sixteen_clients_through(proxy: Proxy) {
    let clients: Vec<_> = (0..16u64)
        .map(|seed| {
            let addr = proxy.addr;
            thread::spawn(move || {
                let data = Rng::new(seed + 100).bytes(8 << 20);
                let mut s = client(addr);
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let writer = thread::spawn(move || {
                    for chunk in sent.chunks(100_003) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let got = read_to_end(&mut s);
                writer.join().unwrap();
                // Compared in full (stronger than comparing digests): any difference fails.
                assert!(
                    got.len() == data.len() && got == data,
                    "client {seed}: {} of {} bytes came back intact",
                    got.len(),
                    data.len()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("sessions to end", || proxy.stats.live_tasks() == 0);
}

fn a_server_that_speaks_first_is_heard(splice: Carry) {
    let hello = start_role(
        Hello::new("220 ftp.example.org ready"),
        ServerConfig::default(),
    );
    let proxy = simple_proxy(hello.tcp, splice);
    let mut s = client(proxy.addr);
    assert_eq!(read_to_end(&mut s), b"220 ftp.example.org ready\n");
    hello.stop();
}

fn both_directions_stream_at_once(splice: Carry) {
    const N: usize = 4 << 20;
    // The upstream sends N bytes while it reads N bytes, on two threads.
    let upstream = custom_upstream(|s| {
        let mut w = s.try_clone().unwrap();
        let sender = thread::spawn(move || {
            w.write_all(&Rng::new(1).bytes(N)).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        (&s).read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert!(got == Rng::new(2).bytes(N), "upstream got wrong bytes");
    });
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        w.write_all(&Rng::new(2).bytes(N)).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end(&mut s);
    sender.join().unwrap();
    assert!(
        got == Rng::new(1).bytes(N),
        "client got {} bytes, not the upstream's",
        got.len()
    );
}

fn a_client_half_close_reaches_the_server_and_the_reply_still_arrives(splice: Carry) {
    // Like an HTTP/1.0 client or `nc -N`: send, shut the write half, read the answer.
    let upstream = custom_upstream(|mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap(); // only ends if the half-close came through
        let reply = format!("got {} bytes", req.len());
        s.write_all(reply.as_bytes()).unwrap();
    });
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    s.write_all(&[7u8; 100_000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"got 100000 bytes");
}

fn a_server_half_close_reaches_the_client_and_the_client_can_still_send(splice: Carry) {
    let upstream = custom_upstream(|mut s| {
        s.write_all(b"say something").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"after your FIN");
    });
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    let mut greeting = [0u8; 13];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"say something");
    assert_eq!(
        s.read(&mut [0u8; 8]).unwrap(),
        0,
        "the server's FIN came through"
    );
    s.write_all(b"after your FIN").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("the session to end", || proxy.stats.active() == 0);
}

fn a_quiet_half_closed_session_ends_after_fin_timeout(splice: Carry) {
    // The upstream never answers and never closes.
    let upstream = custom_upstream(|s| {
        let mut buf = [0u8; 64];
        while (&s).read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
        thread::sleep(DEADLINE); // hold the connection open, silently
    });
    let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
    cfg.fin_timeout = Some(Duration::from_millis(300));
    let proxy = start_proxy(cfg, ServerConfig::default());
    let mut s = client(proxy.addr);
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let start = Instant::now();
    assert!(closed_by_server(&mut s));
    assert!(start.elapsed() < DEADLINE);
    wait_until("the session to end", || proxy.stats.active() == 0);
}

fn a_fin_after_a_quiet_spell_longer_than_the_fin_timeout_still_gets_its_reply(splice: Carry) {
    // The client says nothing for longer than --fin-timeout, then shuts its write half;
    // the upstream answers that FIN (reads to the end, then replies and closes). The
    // FIN is news: the fin timeout counts from it, not from the last byte before it,
    // so the reply arrives.
    let upstream = custom_upstream(|mut s| {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() {
            let _ = s.write_all(format!("bye after {} bytes", got.len()).as_bytes());
        }
    });
    let fin_timeout = Duration::from_millis(400);
    let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
    cfg.fin_timeout = Some(fin_timeout);
    let proxy = start_proxy(cfg, ServerConfig::default());
    let mut s = client(proxy.addr);
    s.write_all(b"request").unwrap();
    wait_until("the request to reach the upstream", || {
        bytes(&proxy.stats.bytes_out) == 7
    });
    thread::sleep(fin_timeout * 2); // the quiet spell itself, not synchronisation
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"bye after 7 bytes");
    wait_until("the session to end", || proxy.stats.active() == 0);
}

fn idle_timeout_counts_both_directions(splice: Carry) {
    // The server talks every 100 ms; the client never does. The session stays up.
    let upstream = custom_upstream(|mut s| {
        for _ in 0..12 {
            if s.write_all(b".").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100)); // pacing the server, not synchronisation
        }
    });
    let proxy = start_proxy(
        with_splice(config(&[upstream], Balance::First), splice),
        ServerConfig {
            idle_timeout: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    );
    let mut s = client(proxy.addr);
    assert_eq!(
        read_to_end(&mut s),
        b"............",
        "cut off while the server was talking"
    );
}

fn an_upstream_reset_closes_the_client(splice: Carry) {
    let upstream = custom_upstream(|mut s| {
        s.write_all(b"partial").unwrap();
        let mut buf = [0u8; 4];
        let _ = s.read(&mut buf);
        // SO_LINGER 0: close with a reset.
        reset_on_close(&s);
    });
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    let mut got = [0u8; 7];
    s.read_exact(&mut got).unwrap();
    s.write_all(b"go").unwrap();
    assert!(closed_by_server(&mut s));
    wait_until("the session to end", || proxy.stats.active() == 0);
}

#[test]
fn a_refused_upstream_fails_over_to_the_next_and_all_down_closes_the_client() {
    let hello = start_role(Hello::new("second"), ServerConfig::default());
    let dead = refused_addr();
    let proxy = start_proxy(
        config(&[dead, hello.tcp], Balance::First),
        ServerConfig::default(),
    );
    for _ in 0..3 {
        assert_eq!(read_to_end(&mut client(proxy.addr)), b"second\n");
    }
    let all_down = start_proxy(
        config(&[refused_addr(), refused_addr()], Balance::First),
        ServerConfig::default(),
    );
    let mut s = client(all_down.addr);
    assert!(closed_by_server(&mut s));
    hello.stop();
}

#[test]
fn balance_modes() {
    let a = start_role(Hello::new("a"), ServerConfig::default());
    let b = start_role(Hello::new("b"), ServerConfig::default());
    let ask = |p: &Proxy| String::from_utf8(read_to_end(&mut client(p.addr))).unwrap();

    let rr = start_proxy(
        config(&[a.tcp, b.tcp], Balance::RoundRobin),
        ServerConfig::default(),
    );
    let got: Vec<String> = (0..4).map(|_| ask(&rr)).collect();
    assert_eq!(got, ["a\n", "b\n", "a\n", "b\n"]);

    let first = start_proxy(
        config(&[a.tcp, b.tcp], Balance::First),
        ServerConfig::default(),
    );
    assert!((0..3).all(|_| ask(&first) == "a\n"));

    // least-conn: hold a session open on the first upstream; the next goes to the other.
    // The held session is counted once its first byte reaches the upstream (the proxy
    // counts a session before it starts carrying bytes).
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel();
    let arrived_tx = std::sync::Mutex::new(arrived_tx);
    let slow = custom_upstream(move |s| {
        let mut buf = [0u8; 16];
        let _ = (&s).read(&mut buf);
        let _ = arrived_tx.lock().unwrap().send(());
        let _ = (&s).read(&mut buf);
    });
    let echo = start_role(Echo, ServerConfig::default());
    let lc = start_proxy(
        config(&[slow, echo.tcp], Balance::LeastConn),
        ServerConfig::default(),
    );
    let mut held = client(lc.addr);
    held.write_all(b"h").unwrap();
    arrived_rx
        .recv_timeout(DEADLINE)
        .expect("the held session reached its upstream");
    let mut c = client(lc.addr);
    c.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        c.read(&mut buf).unwrap(),
        1,
        "the second session went to the idle upstream (echo)"
    );
    drop(held);
    for s in [a, b, echo] {
        s.stop();
    }
}

fn send_proxy_writes_the_header_first(splice: Carry) {
    for (version, expect_v2) in [(Version::V1, false), (Version::V2, true)] {
        let (tx, rx) = std::sync::mpsc::channel();
        let upstream = custom_upstream(move |mut s| {
            let mut got = vec![0u8; 256];
            let mut have = 0;
            loop {
                match header::parse(&got[..have]) {
                    Ok(h) => {
                        let _ = tx.send((
                            h,
                            got[h.len..have].to_vec(),
                            got[..have].starts_with(&header::V2_SIGNATURE),
                        ));
                        break;
                    }
                    Err(header::ParseError::Incomplete) => {
                        have += s.read(&mut got[have..]).unwrap()
                    }
                    Err(e) => panic!("bad header: {e:?}"),
                }
            }
        });
        let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
        cfg.send_proxy = Some(version);
        let proxy = start_proxy(cfg, ServerConfig::default());
        let mut s = client(proxy.addr);
        let local = s.local_addr().unwrap();
        s.write_all(b"payload").unwrap();
        let (h, _rest, is_v2) = rx.recv_timeout(DEADLINE).unwrap();
        assert_eq!(h.addrs, Some((local, proxy.addr)));
        assert_eq!(is_v2, expect_v2);
    }
}

fn accept_proxy_takes_the_real_client_and_refuses_garbage(splice: Carry) {
    let echo = start_role(Echo, ServerConfig::default());
    let mut cfg = with_splice(config(&[echo.tcp], Balance::First), splice);
    cfg.accept_proxy = Some(Duration::from_millis(500));
    let proxy = start_proxy(cfg, ServerConfig::default());

    // A v1 header with data right behind it: the data is forwarded, the header is not.
    let mut s = client(proxy.addr);
    s.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nhello")
        .unwrap();
    assert_eq!(read_n(&mut s, 5), b"hello");
    // v2 too.
    let mut s2 = client(proxy.addr);
    let mut h = header::encode(
        Version::V2,
        "198.51.100.2:5555".parse().unwrap(),
        "192.0.2.1:80".parse().unwrap(),
    );
    h.extend_from_slice(b"v2 data");
    s2.write_all(&h).unwrap();
    assert_eq!(read_n(&mut s2, 7), b"v2 data");
    // Garbage, or nothing within the header timeout: closed, nothing forwarded.
    let mut g = client(proxy.addr);
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_by_server(&mut g));
    let mut silent = client(proxy.addr);
    assert!(closed_by_server(&mut silent));
    echo.stop();
}

#[test]
fn accept_proxy_applies_the_access_list_to_the_real_client() {
    let echo = start_role(Echo, ServerConfig::default());
    let mut cfg = config(&[echo.tcp], Balance::First);
    cfg.accept_proxy = Some(Duration::from_secs(5));
    let deny = switchboard::net::access::AccessList::new(
        vec![],
        vec![switchboard::net::access::parse_cidr("203.0.113.0/24").unwrap()],
    );
    let proxy = start_proxy(
        cfg,
        ServerConfig {
            access: deny,
            ..Default::default()
        },
    );
    let mut s = client(proxy.addr);
    s.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nhello")
        .unwrap();
    assert!(closed_by_server(&mut s));
    echo.stop();
}

fn a_line_based_session_like_telnet_works_through_the_proxy(splice: Carry) {
    let upper = start_role(Upper, ServerConfig::default());
    let proxy = simple_proxy(upper.tcp, splice);
    let s = client(proxy.addr);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for line in ["login: guest\r\n", "ls -la\r\n", "exit\r\n"] {
        w.write_all(line.as_bytes()).unwrap();
        let mut got = String::new();
        r.read_line(&mut got).unwrap();
        assert_eq!(got, line.to_uppercase());
    }
    upper.stop();
}

#[test]
fn pinned_threads_share_one_address_and_carry_sessions() {
    let echo = start_role(Echo, ServerConfig::default());
    let listeners = rt::block_on(switchboard::service::bind_reuseport("127.0.0.1:0", 2)).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    assert_eq!(
        listeners[1].local_addr().unwrap(),
        addr,
        "one port for every thread"
    );
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let running = rt::spawn(proxy::run_pinned(
        listeners.into_iter().map(|l| vec![l]).collect(),
        ServerConfig::default(),
        config(&[echo.tcp], Balance::First),
        stats.clone(),
        shutdown,
    ));
    let clients: Vec<_> = (0..8u8)
        .map(|i| {
            thread::spawn(move || {
                let mut s = client(addr);
                let msg = vec![i; 100_000];
                s.write_all(&msg).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                assert!(read_to_end(&mut s) == msg, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("sessions to end", || stats.live_tasks() == 0);
    trigger.fire();
    rt::block_on(running).unwrap();
    assert!(TcpStream::connect(addr).is_err(), "every listener closed");
    echo.stop();
}

/// An upstream that accepts and never reads; it keeps each connection (so it never
/// closes one) and hands a clone to the test.
fn stalled_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = custom_upstream(move |s| {
        let _ = tx.lock().unwrap().send(s);
    });
    (addr, rx)
}

/// Writes `s` full: 64 KiB at a time until a write has made no progress for a while (the
/// proxy stopped reading). Returns the bytes written. The wait is not an assertion: if
/// the pipeline was only slow, the test goes on with less in it.
fn write_until_blocked(s: &mut TcpStream) -> u64 {
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0u64;
    loop {
        match s.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return written, // WouldBlock / TimedOut: blocked
        }
    }
}

/// Reads until EOF or a reset; returns how many bytes came.
fn count_to_end(s: &mut TcpStream) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading to the end: {e}"),
        }
    }
}

fn bytes(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

fn a_client_reset_ends_a_session_whose_upstream_never_reads(splice: Carry) {
    // The client→server pump fills the upstream writer's mailbox and waits for room that
    // never comes; it must still notice the client's reset.
    let (upstream, held) = stalled_upstream();
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    let written = write_until_blocked(&mut s);
    let mut up = held
        .recv_timeout(DEADLINE)
        .expect("the upstream was reached");
    // Counted as they move: what the proxy read is already in the summary.
    let read_so_far = bytes(&proxy.stats.bytes_in);
    assert!(read_so_far > 0 && read_so_far <= written);
    reset_on_close(&s);
    drop(s);
    wait_until("the session to end after the client's reset", || {
        proxy.stats.active() == 0 && proxy.stats.live_tasks() == 0
    });
    // The upstream sees the proxy close, after exactly the bytes the proxy says it wrote.
    up.set_read_timeout(Some(DEADLINE)).unwrap();
    let got = count_to_end(&mut up);
    assert_eq!(got, bytes(&proxy.stats.bytes_out));
    assert!(got > 0 && got <= bytes(&proxy.stats.bytes_in));
    assert!(bytes(&proxy.stats.bytes_in) <= written);
}

fn an_upstream_reset_ends_a_session_whose_client_never_reads(splice: Carry) {
    // The mirror image: the server→client pump waits on the client writer's mailbox.
    let (upstream, held) = stalled_upstream();
    let proxy = simple_proxy(upstream, splice);
    let mut s = client(proxy.addr);
    s.write_all(b"go").unwrap(); // the session exists once the upstream has accepted
    let mut up = held
        .recv_timeout(DEADLINE)
        .expect("the upstream was reached");
    let written = write_until_blocked(&mut up);
    assert!(bytes(&proxy.stats.bytes_in) > 0);
    reset_on_close(&up);
    drop(up);
    wait_until("the session to end after the upstream's reset", || {
        proxy.stats.active() == 0 && proxy.stats.live_tasks() == 0
    });
    let got = count_to_end(&mut s);
    assert_eq!(got, bytes(&proxy.stats.bytes_out) - 2);
    assert!(got > 0 && bytes(&proxy.stats.bytes_in) <= written + 2);
}

fn a_client_fin_seen_while_the_upstream_stalls_starts_the_fin_timeout(splice: Carry) {
    // The client sends in small steps until the proxy stops reading (the pump waits for
    // mailbox room), then shuts its write half: the FIN gets into the proxy's socket
    // behind a few unread bytes. The session is half-closed from then, so after
    // --fin-timeout with nothing moving it ends.
    let (upstream, _held) = stalled_upstream();
    let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
    cfg.fin_timeout = Some(Duration::from_millis(300));
    let proxy = start_proxy(cfg, ServerConfig::default());
    let mut s = client(proxy.addr);
    let step = vec![b'x'; 16 * 1024];
    let mut written = 0u64;
    loop {
        s.write_all(&step).unwrap();
        written += step.len() as u64;
        assert!(written < 256 << 20, "the proxy never stopped reading");
        // Not an assertion: a pump that is only slow makes this test weaker, never fail.
        let start = Instant::now();
        while bytes(&proxy.stats.bytes_in) < written && start.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(5));
        }
        if bytes(&proxy.stats.bytes_in) < written {
            break; // stalled, with at most one step unread
        }
    }
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("the proxy to take the client's FIN", || unacked(&s) == 0);
    assert!(closed_by_server(&mut s), "the session ended");
    wait_until("the session to end", || proxy.stats.active() == 0);
    assert!(
        bytes(&proxy.stats.bytes_in) < written,
        "the unread step was never read"
    );
}

/// Bytes (and FIN) sent on `s` that the peer has not acknowledged yet (SIOCOUTQ).
fn unacked(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    n
}

#[test]
fn accept_proxy_judges_the_header_address_and_proxy_from_judges_the_sender() {
    use switchboard::net::access::{AccessList, parse_cidr};
    let echo = start_role(Echo, ServerConfig::default());
    let ten = || vec![parse_cidr("10.0.0.0/8").unwrap()];
    let start = |allow, deny, from: &str| {
        let mut cfg = config(&[echo.tcp], Balance::First);
        cfg.accept_proxy = Some(Duration::from_secs(5));
        let from = if from.is_empty() {
            vec![]
        } else {
            vec![parse_cidr(from).unwrap()]
        };
        start_proxy(
            cfg,
            ServerConfig {
                access: AccessList::new(allow, deny),
                proxy_from: AccessList::new(from, vec![]),
                ..Default::default()
            },
        )
    };
    const FROM_TEN: &[u8] = b"PROXY TCP4 10.1.2.3 192.0.2.1 40000 80\r\nhello";
    let echoed = |p: &Proxy, header: &[u8]| -> Vec<u8> {
        let mut s = client(p.addr);
        // A refused client may be reset before or while it writes.
        let _ = s.write_all(header);
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got); // EOF, or a reset when refused
        got
    };

    // From 127.0.0.1, naming 10.1.2.3: --allow 10.0.0.0/8 admits it ...
    let allowed = start(ten(), vec![], "");
    assert_eq!(echoed(&allowed, FROM_TEN), b"hello");
    // ... and a LOCAL/UNKNOWN header is judged by the peer (127.0.0.1: not allowed).
    assert_eq!(echoed(&allowed, b"PROXY UNKNOWN\r\nhello"), b"");
    // --deny 10.0.0.0/8 refuses it, though the balancer itself is not denied.
    let denied = start(vec![], ten(), "");
    assert_eq!(echoed(&denied, FROM_TEN), b"");
    assert_eq!(echoed(&denied, b"PROXY UNKNOWN\r\nhello"), b"hello");
    // --proxy-from without 127.0.0.1: no header is taken from it at all.
    let untrusted = start(ten(), vec![], "192.0.2.0/24");
    assert_eq!(echoed(&untrusted, FROM_TEN), b"");
    let trusted = start(ten(), vec![], "127.0.0.0/8");
    assert_eq!(echoed(&trusted, FROM_TEN), b"hello");
    wait_until("the refusals to be counted", || {
        bytes(&allowed.stats.refused.denied) == 1
            && bytes(&denied.stats.refused.denied) == 1
            && bytes(&untrusted.stats.refused.denied) == 1
    });
    echo.stop();
}

fn a_slow_steady_reader_is_not_cut_by_the_idle_or_fin_timeout(splice: Carry) {
    // The upstream sends a download at once and closes; the client reads it steadily but
    // slowly, in small steps with short pauses, for several timeout periods. The proxy's
    // writer to the client then waits on a full send buffer, and the kernel wakes it only
    // once a third of that buffer has drained, which takes longer than the timeout: the
    // bytes leaving the send queue are what tell the session the client is reading.
    //
    // The figures make the old measure (whole writes completed) fail: the proxy's send
    // buffer to the client grows past a megabyte, so a third of it at ~300 KB/s takes
    // longer than the 1 s timeouts, and the download (2.5 MiB, ~8 s) is larger than
    // what the buffers hold, so a cut loses bytes. Segments of 1400 bytes as on a real
    // network, and the client's default receive buffer, which opens its window often.
    let (size, step, pause) = (5 << 19, 16 << 10, Duration::from_millis(50));
    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i % 251) as u8).collect());
    let sent = data.clone();
    let upstream = custom_upstream(move |mut s| {
        let _ = s.write_all(&sent);
    });
    let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
    cfg.fin_timeout = Some(Duration::from_secs(1));
    let proxy = start_proxy(
        cfg,
        ServerConfig {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    );
    let mut s = client_with_mss(proxy.addr, 1400, 0);
    let mut got = Vec::with_capacity(size);
    let mut buf = vec![0u8; step];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
        // Pacing the reader, well under the timeout: not synchronisation.
        thread::sleep(pause);
    }
    assert_eq!(got.len(), data.len(), "the download was cut");
    assert!(got == *data, "the download arrived altered");
    wait_until("the session to end", || proxy.stats.active() == 0);
}

/// A connected blocking client that sends and takes segments of at most `mss` bytes, as
/// on a real network (loopback's are 64 KiB), and, if `rcvbuf` is above zero, with that
/// receive buffer. Read timeout [`DEADLINE`].
fn client_with_mss(addr: SocketAddr, mss: i32, rcvbuf: i32) -> TcpStream {
    let mut options = vec![(libc::IPPROTO_TCP, libc::TCP_MAXSEG, mss)];
    if rcvbuf > 0 {
        options.push((libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf));
    }
    client_with_options(addr, &options)
}

fn headers_both_ways_then_the_client_bytes_arrive_exact_and_counted(splice: Carry) {
    // A PROXY header read from the client (with bytes behind it in the same segment),
    // another written to the upstream, then a stream too large for one pipe: the
    // upstream gets our header and then exactly what the client sent after its own.
    const PAYLOAD: usize = 4 << 20;
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let got_tx = std::sync::Mutex::new(got_tx);
    let upstream = custom_upstream(move |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"ok").unwrap();
        let _ = got_tx.lock().unwrap().send(got);
    });
    let mut cfg = with_splice(config(&[upstream], Balance::First), splice);
    cfg.accept_proxy = Some(Duration::from_secs(5));
    cfg.send_proxy = Some(Version::V2);
    let proxy = start_proxy(cfg, ServerConfig::default());
    let (client_addr, named_dst) = (
        "203.0.113.7:40000".parse().unwrap(),
        "192.0.2.1:80".parse().unwrap(),
    );
    let ours = header::encode(Version::V2, client_addr, named_dst);
    let payload = Rng::new(21).bytes(PAYLOAD);
    let mut s = client(proxy.addr);
    s.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nhello")
        .unwrap();
    s.write_all(&payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"ok");
    let got = got_rx.recv_timeout(DEADLINE).expect("the upstream's bytes");
    let h = header::parse(&got).expect("our header first");
    assert_eq!(h.addrs, Some((client_addr, named_dst)));
    assert_eq!(&got[..h.len], &ours[..]);
    let rest = &got[h.len..];
    assert_eq!(&rest[..5.min(rest.len())], b"hello");
    assert!(
        rest.len() == 5 + PAYLOAD && rest[5..] == payload[..],
        "{} bytes after the header, not the client's {}",
        rest.len(),
        5 + PAYLOAD
    );
    wait_until("the session to end", || proxy.stats.live_tasks() == 0);
    // Written: our header, the client's bytes, the upstream's reply.
    assert_eq!(
        bytes(&proxy.stats.bytes_out),
        (ours.len() + 5 + PAYLOAD + 2) as u64
    );
    // Read: the client's header and bytes (those that came with the header too), and
    // the upstream's reply.
    let theirs = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n".len();
    assert_eq!(
        bytes(&proxy.stats.bytes_in),
        (theirs + 5 + PAYLOAD + 2) as u64
    );
}

#[test]
fn a_spliced_direction_holds_no_more_than_its_pipe_while_the_receiver_reads_nothing() {
    // The upstream reads nothing: the relay's pipe fills and the client is held back by
    // TCP flow control. What the proxy holds between read and written is at most the
    // pipe (`--splice-pipe`), never a growing buffer; once the upstream reads, every
    // byte arrives in order.
    const PIPE: usize = 16 * 1024;
    let (upstream, held) = stalled_upstream();
    let mut cfg = config(&[upstream], Balance::First);
    cfg.splice = Some(PIPE);
    let proxy = start_proxy(cfg, ServerConfig::default());
    let mut s = client(proxy.addr);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut pattern = Rng::new(31);
    let mut written = 0u64;
    // Until a write has made no progress for a while: the proxy has stopped reading.
    'blocked: loop {
        let chunk = pattern.bytes(64 * 1024);
        let mut at = 0;
        while at < chunk.len() {
            match s.write(&chunk[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    written += at as u64;
                    break 'blocked;
                }
            }
        }
        written += chunk.len() as u64;
        assert!(written < 1 << 30, "the client was never held back");
    }
    let (read, sent) = (bytes(&proxy.stats.bytes_in), bytes(&proxy.stats.bytes_out));
    assert!(read > 0 && read <= written);
    assert!(
        read - sent <= PIPE as u64,
        "the proxy holds {} bytes read and not written",
        read - sent
    );
    // The upstream reads: the rest flows through the same pipe, intact.
    let mut up = held
        .recv_timeout(DEADLINE)
        .expect("the upstream was reached");
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let expected = Rng::new(31).bytes(written.div_ceil(64 * 1024) as usize * 64 * 1024);
    let expected = &expected[..written as usize];
    let checker = thread::spawn(move || {
        up.set_read_timeout(Some(DEADLINE)).unwrap();
        read_to_end(&mut up)
    });
    s.shutdown(Shutdown::Write).unwrap();
    let got = checker.join().unwrap();
    assert!(
        got.len() == expected.len() && got == expected,
        "{} of {written} bytes arrived intact",
        got.len()
    );
    wait_until("the proxy's counts to settle", || {
        bytes(&proxy.stats.bytes_out) == written
    });
    assert_eq!(bytes(&proxy.stats.bytes_in), written);
}

fn a_client_reset_mid_download_is_counted_with_what_it_acknowledged(splice: Carry) {
    // The client reads part of a download, stops, and resets. What the proxy handed its
    // kernel beyond what the client acknowledged never arrived: it comes off the count,
    // as the copying writer takes it off (the reset empties the send queue, so what the
    // kernel says was acknowledged is what tells).
    const READ: usize = 256 * 1024;
    let upstream = custom_upstream(|mut s| {
        let chunk = vec![b'd'; 64 * 1024];
        while s.write_all(&chunk).is_ok() {}
    });
    let proxy = simple_proxy(upstream, splice);
    let mut c = client_with_rcvbuf(proxy.addr, 16 * 1024);
    assert!(read_n(&mut c, READ).iter().all(|&b| b == b'd'));
    // All the client can have acknowledged beyond what it read: its receive buffer.
    let window = rustix::net::sockopt::socket_recv_buffer_size(&c).unwrap() as u64;
    let mut last = (0, Instant::now());
    wait_until("the proxy's writes to the client to stall", || {
        let now = bytes(&proxy.stats.bytes_out);
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_millis(300)
    });
    let handed = bytes(&proxy.stats.bytes_out);
    assert!(
        handed > READ as u64 + window,
        "the proxy's send queue to the client never filled: nothing to take back"
    );
    reset_on_close(&c);
    drop(c);
    wait_until("the session to end", || {
        proxy.stats.active() == 0 && proxy.stats.live_tasks() == 0
    });
    let counted = bytes(&proxy.stats.bytes_out);
    assert!(
        counted >= READ as u64 && counted <= READ as u64 + window,
        "counted {counted} bytes delivered; the client read {READ} and holds at most {window} more"
    );
}
