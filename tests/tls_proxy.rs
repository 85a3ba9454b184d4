//! The proxy and TLS, over real sockets on 127.0.0.1 port 0 with certificates made
//! here: terminating (TLS client, plain upstream), originating (plain client, TLS
//! upstream: verified, and refused on a wrong name or an expired certificate, with no
//! plain fallback) and passing through by SNI (two TLS upstreams picked by name, the
//! ClientHello relayed untouched); 64 MiB each way through each mode; and the hostile
//! ClientHellos a passthrough proxy reads: garbage, 1-byte segments, one larger than a
//! record, one past every limit, a stalled one, and many clients that send nothing.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::*;
use common::*;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::ServerName;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::net::stream::Stream;
use switchboard::net::tls;
use switchboard::roles::echo::Echo;
use switchboard::roles::proxy::metrics::ProxyMetrics;
use switchboard::roles::proxy::sni::{self, SniRoutes};
use switchboard::roles::proxy::upstreams::{Balance, UpstreamTls, Upstreams};
use switchboard::roles::proxy::{self, ProxyConfig};
use switchboard::rt::{self, TcpListener};

/// Bytes sent each way in the integrity tests.
const BULK: usize = 64 << 20;

/// A proxy running in this process.
struct Proxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    trigger: Option<Trigger>,
    done: Option<rt::JoinHandle<()>>,
}

impl Proxy {
    fn start(cfg: ProxyConfig, server: ServerConfig) -> Proxy {
        let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Stats::new();
        let (trigger, shutdown) = shutdown::channel();
        let done = rt::spawn(proxy::run(listener, server, cfg, stats.clone(), shutdown));
        Proxy {
            addr,
            stats,
            trigger: Some(trigger),
            done: Some(done),
        }
    }

    fn metrics(&self) -> Arc<ProxyMetrics> {
        self.stats.role_metrics::<ProxyMetrics>()
    }

    /// Clients closed without a session, for `reason` (`no_hello`, `no_route`, ...).
    fn unconnected(&self, reason: &str) -> u64 {
        let i = proxy::metrics::UNCONNECTED_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap();
        self.metrics().unconnected[i].get()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.fire();
        }
        if let Some(d) = self.done.take() {
            rt::block_on(d);
        }
    }
}

/// A proxy's settings with nothing but `upstreams` (splicing where it may).
fn config(upstreams: Arc<Upstreams>) -> ProxyConfig {
    ProxyConfig {
        upstreams,
        sni: None,
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
        splice: Some(1 << 16),
        splice_always: false,
        ftp: None,
    }
}

/// Routing by SNI: each `(name, upstream)`, and the default.
fn sni_config(
    routes: &[(&str, SocketAddr)],
    default: Option<SocketAddr>,
    hello: Duration,
) -> ProxyConfig {
    let like = Upstreams::new(vec![], Balance::First, Duration::from_secs(30));
    let routes: Vec<_> = routes
        .iter()
        .map(|(name, addr)| sni::parse_route(&format!("{name}={addr}")).unwrap())
        .collect();
    let default = default.map(|d| d.to_string());
    let sni = SniRoutes::new(&routes, default.as_deref(), &like, hello).unwrap();
    ProxyConfig {
        sni: Some(sni),
        ..config(like)
    }
}

/// A TLS echo server with `certs`.
fn tls_echo(certs: &Certs) -> Server {
    start_role(
        Echo,
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    )
}

/// Sends `data` on `stream` and closes its write side, while reading to the end; what
/// came back.
async fn round_trip(stream: Stream, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.split();
    let sending = data.to_vec();
    let sender = rt::spawn(async move {
        write.write_all(&sending).await.unwrap();
        write.close().await.unwrap(); // close_notify on TLS, then the FIN
    });
    let mut got = Vec::new();
    rt::timeout(DEADLINE * 3, read.read_to_end(&mut got))
        .await
        .expect("the echo did not end in time")
        .unwrap();
    sender.await;
    got
}

/// A TLS client of `addr`, verifying `certs` by `name`: its stream and what it saw.
async fn tls_client(addr: SocketAddr, certs: &Certs, name: &str) -> (Stream, tls::Peer) {
    let plain = Stream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tls::connect(certs.client(), name, plain, addr, DEADLINE)
        .await
        .unwrap()
}

fn assert_same(got: &[u8], sent: &[u8], what: &str) {
    assert_eq!(got.len(), sent.len(), "{what}: length");
    assert!(got == sent, "{what}: bytes changed on the way");
}

// ---------------------------------------------------------------- terminate

#[test]
fn terminating_carries_64_mib_each_way_intact() {
    let certs = Certs::new("term-bulk");
    let echo = start_role(Echo, ServerConfig::default());
    let proxy = Proxy::start(
        config(Upstreams::new(
            vec![echo.tcp.to_string()],
            Balance::First,
            Duration::from_secs(30),
        )),
        ServerConfig {
            tls: Some(certs.tls(Duration::from_secs(10))),
            ..ServerConfig::default()
        },
    );
    let data = Rng::new(1).bytes(BULK);
    let got = rt::block_on(async {
        let (stream, peer) = tls_client(proxy.addr, &certs, "localhost").await;
        assert_eq!(peer.subject, "CN=localhost");
        round_trip(stream, &data).await
    });
    assert_same(&got, &data, "terminated");
    drop(proxy);
    echo.stop();
}

// ---------------------------------------------------------------- originate

fn originating(upstream: SocketAddr, ca: &Certs, sni: Option<&str>) -> ProxyConfig {
    config(Upstreams::with_tls(
        vec![upstream.to_string()],
        Balance::First,
        Duration::from_secs(30),
        Some(UpstreamTls {
            config: ca.client(),
            sni: sni.map(str::to_owned),
            insecure: false,
        }),
    ))
}

#[test]
fn originating_verifies_the_upstream_and_carries_64_mib_each_way_intact() {
    let certs = Certs::new("orig-bulk");
    let echo = tls_echo(&certs);
    // By its address: the certificate holds 127.0.0.1 too.
    let proxy = Proxy::start(originating(echo.tcp, &certs, None), ServerConfig::default());
    let data = Rng::new(2).bytes(BULK);
    let got = rt::block_on(async {
        let plain = Stream::connect(proxy.addr).await.unwrap();
        round_trip(plain, &data).await
    });
    assert_same(&got, &data, "originated");
    let up = proxy.metrics().upstream(&echo.tcp.to_string());
    assert_eq!(up.connect_failures.get(), 0);
    assert_eq!(
        echo.stats.tls.total(),
        0,
        "the upstream saw a failed handshake"
    );
    drop(proxy);
    echo.stop();
}

/// A plain client of a proxy whose upstream's certificate is refused: closed with not a
/// byte, the upstream never sees plain text, and the failure is counted against it.
fn refused_upstream(certs: &Certs, trusted: &Certs, sni: Option<&str>) {
    let echo = tls_echo(certs);
    let proxy = Proxy::start(originating(echo.tcp, trusted, sni), ServerConfig::default());
    let mut c = client(proxy.addr);
    c.write_all(b"must not arrive in plain text\n").unwrap();
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    assert!(
        end.is_ok() || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client was not closed"
    );
    assert!(got.is_empty(), "the client got {got:?}");
    let up = proxy.metrics().upstream(&echo.tcp.to_string());
    wait_until("the failure to be counted", || {
        up.connect_failures.get() == 1 && proxy.unconnected("no_upstream") == 1
    });
    // The upstream saw a handshake the client side gave up on (its alert), never the
    // client's plain bytes: its echo counted none.
    wait_until("the upstream to see the handshake end", || {
        echo.stats.tls.total() == 1
    });
    assert_eq!(
        echo.stats
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(proxy);
    echo.stop();
}

#[test]
fn originating_refuses_an_upstream_with_a_wrong_name_and_never_falls_back_to_plain() {
    let certs = Certs::named("orig-wrong", &["other.test"]);
    refused_upstream(&certs, &certs, Some("wanted.test"));
}

#[test]
fn originating_refuses_an_upstream_signed_by_an_unknown_ca() {
    let certs = Certs::new("orig-ca");
    let stranger = Certs::new("orig-ca-stranger");
    refused_upstream(&certs, &stranger, None);
}

#[test]
fn originating_refuses_an_expired_certificate() {
    let certs = Certs::expired("orig-expired", &["localhost", "127.0.0.1"]);
    refused_upstream(&certs, &certs, None);
}

// ---------------------------------------------------------------- passthrough

/// Two TLS echo servers, `a.test` and `b.test`, each with a CA of its own.
struct TwoNames {
    a: (Certs, Server),
    b: (Certs, Server),
}

impl TwoNames {
    fn start(label: &str) -> TwoNames {
        let a = Certs::named(&format!("{label}-a"), &["a.test"]);
        let b = Certs::named(&format!("{label}-b"), &["b.test", "x.b.test"]);
        let (ea, eb) = (tls_echo(&a), tls_echo(&b));
        TwoNames {
            a: (a, ea),
            b: (b, eb),
        }
    }
}

#[test]
fn passthrough_picks_each_upstream_by_name_and_carries_64_mib_each_way_intact() {
    let two = TwoNames::start("pass");
    let proxy = Proxy::start(
        sni_config(
            &[
                ("a.test", two.a.1.tcp),
                ("*.b.test", two.b.1.tcp),
                ("b.test", two.b.1.tcp),
            ],
            None,
            Duration::from_secs(5),
        ),
        ServerConfig::default(),
    );
    let data = Rng::new(3).bytes(BULK);
    rt::block_on(async {
        // Each client verifies the certificate of the name it asked for: only the
        // upstream that holds that name's key can have answered.
        let (a, peer) = tls_client(proxy.addr, &two.a.0, "a.test").await;
        assert_eq!(peer.subject, "CN=a.test");
        assert_same(&round_trip(a, b"to a").await, b"to a", "a");
        let (b, peer) = tls_client(proxy.addr, &two.b.0, "x.b.test").await;
        assert_eq!(peer.subject, "CN=b.test");
        assert_same(&round_trip(b, &data).await, &data, "passthrough to b");
    });
    // The proxy held no key: the upstreams did the handshakes, and every byte of them
    // went through untouched.
    assert_eq!(two.a.1.stats.tls.total() + two.b.1.stats.tls.total(), 0);
    let metrics = proxy.metrics();
    wait_until("both sessions to end", || {
        metrics.upstream(&two.a.1.tcp.to_string()).sessions.get() == 0
            && metrics.upstream(&two.b.1.tcp.to_string()).sessions.get() == 0
    });
}

#[test]
fn a_hello_without_a_name_goes_to_the_default_or_is_closed() {
    let two = TwoNames::start("nosni");
    let no_name = |certs: &Certs, addr: SocketAddr| {
        // An IP address as the name: rustls then sends no SNI.
        let mut cfg = (*certs.client()).clone();
        cfg.enable_sni = false;
        let cfg = Arc::new(cfg);
        rt::block_on(async move {
            let plain = Stream::connect(addr).await.unwrap();
            let name = ServerName::try_from("b.test").unwrap();
            tls::connect(cfg, name, plain, addr, DEADLINE).await
        })
    };
    let with_default = Proxy::start(
        sni_config(
            &[("a.test", two.a.1.tcp)],
            Some(two.b.1.tcp),
            Duration::from_secs(5),
        ),
        ServerConfig::default(),
    );
    let (stream, peer) = no_name(&two.b.0, with_default.addr).unwrap();
    assert_eq!(peer.subject, "CN=b.test");
    assert_eq!(rt::block_on(round_trip(stream, b"default")), b"default");
    // A name no route takes goes to the default too.
    rt::block_on(async {
        let (stream, peer) = tls_client(with_default.addr, &two.b.0, "b.test").await;
        assert_eq!(peer.subject, "CN=b.test");
        assert_eq!(round_trip(stream, b"unrouted").await, b"unrouted");
    });
    // Without a default both are closed, with nothing sent, and counted.
    let strict = Proxy::start(
        sni_config(&[("a.test", two.a.1.tcp)], None, Duration::from_secs(5)),
        ServerConfig::default(),
    );
    assert!(no_name(&two.b.0, strict.addr).is_err());
    let unrouted = rt::block_on(async {
        let plain = Stream::connect(strict.addr).await.unwrap();
        let name = ServerName::try_from("b.test").unwrap();
        tls::connect(two.b.0.client(), name, plain, strict.addr, DEADLINE).await
    });
    assert!(unrouted.is_err());
    wait_until("both to be counted", || strict.unconnected("no_route") == 2);
    assert_eq!(with_default.unconnected("no_route"), 0);
}

/// A plain listener that records the bytes of its first connection until it closes.
fn recorder() -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let done = std::thread::spawn(move || {
        let mut accepted = None;
        wait_until("the proxy to connect to the upstream", || {
            accepted = listener.accept().ok();
            accepted.is_some()
        });
        let (mut s, _) = accepted.unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    (addr, done)
}

/// A real ClientHello for `name`, as rustls would send it.
fn client_hello(name: &str) -> Vec<u8> {
    let certs_cfg = tls::client_config(&tls::Verify::Insecure).unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(certs_cfg, name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// A ClientHello for `name` with a padding extension of `padding` bytes, split into
/// records of at most 16 KiB (TLS's limit for one record).
fn big_client_hello(name: &str, padding: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]); // legacy_version
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2b]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut ext = Vec::new();
    let host = name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    // signature_algorithms: ecdsa_secp256r1_sha256
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    // padding
    ext.extend_from_slice(&[0x00, 0x15]);
    ext.extend_from_slice(&(padding as u16).to_be_bytes());
    ext.extend(std::iter::repeat_n(0u8, padding));
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut message = vec![0x01]; // client_hello
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    let mut records = Vec::new();
    for fragment in message.chunks(16384) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        records.extend_from_slice(fragment);
    }
    records
}

#[test]
fn a_hello_in_one_byte_segments_and_one_larger_than_a_record_are_relayed_untouched() {
    // 1-byte segments.
    let (up, recorded) = recorder();
    let proxy = Proxy::start(
        sni_config(&[("a.test", up)], None, Duration::from_secs(10)),
        ServerConfig::default(),
    );
    let mut hello = client_hello("a.test");
    hello.extend_from_slice(b"and what follows it");
    let mut c = client(proxy.addr);
    c.set_nodelay(true).unwrap();
    for byte in &hello {
        c.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_same(
        &recorded.join().unwrap(),
        &hello,
        "a hello in 1-byte segments",
    );
    drop(proxy);

    // 20 KiB of padding: two records.
    let (up, recorded) = recorder();
    let proxy = Proxy::start(
        sni_config(&[("*.test", up)], None, Duration::from_secs(10)),
        ServerConfig::default(),
    );
    let hello = big_client_hello("big.test", 20_000);
    assert!(hello.len() > 16 * 1024 + 5);
    let mut c = client(proxy.addr);
    c.write_all(&hello).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_same(&recorded.join().unwrap(), &hello, "a 20 KiB hello");
    assert_eq!(proxy.unconnected("no_hello"), 0);
}

#[test]
fn garbage_an_endless_hello_stalled_and_silent_clients_are_closed_and_others_go_on() {
    let two = TwoNames::start("hostile");
    let proxy = Proxy::start(
        sni_config(&[("a.test", two.a.1.tcp)], None, Duration::from_millis(500)),
        ServerConfig::default(),
    );
    let silent_count = raise_open_files(1000);
    let mut silent: Vec<_> = (0..silent_count).map(|_| client(proxy.addr)).collect();
    // Plain text; a handshake record of garbage; a hello that never ends (records
    // announcing more than any ClientHello holds); half a hello, then nothing.
    let mut plain = client(proxy.addr);
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut garbage = client(proxy.addr);
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    garbage.write_all(&[0xAB; 16]).unwrap();
    let mut endless = client(proxy.addr);
    let mut header = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    header.extend(std::iter::repeat_n(0x01, 0x4000 - 4));
    let _ = endless.write_all(&header);
    for _ in 0..6 {
        let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        record.extend(std::iter::repeat_n(0x01, 0x4000));
        if endless.write_all(&record).is_err() {
            break;
        }
    }
    let hello = client_hello("a.test");
    let mut stalled = client(proxy.addr);
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    // Meanwhile a real client is routed at once.
    rt::block_on(async {
        let (stream, peer) = tls_client(proxy.addr, &two.a.0, "a.test").await;
        assert_eq!(peer.subject, "CN=a.test");
        assert_eq!(round_trip(stream, b"among them").await, b"among them");
    });
    for (what, s) in [
        ("plain text", &mut plain),
        ("garbage", &mut garbage),
        ("the endless hello", &mut endless),
        ("the stalled hello", &mut stalled),
    ] {
        assert!(closed_by_server(s), "{what} was not closed");
    }
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_by_server(s), "silent client {i} was not closed");
    }
    wait_until("every refusal to be counted", || {
        proxy.unconnected("no_hello") == silent_count as u64 + 4
    });
    // Nothing reached an upstream but the real client's session.
    assert_eq!(
        proxy
            .metrics()
            .upstream(&two.a.1.tcp.to_string())
            .sessions
            .get(),
        0
    );
    wait_until("every connection task to end", || {
        proxy.stats.active() == 0 && proxy.stats.live_tasks() == 0
    });
}

/// A ClientHello as a TLS 1.0 client sends it (no `signature_algorithms`, which only
/// TLS 1.2 has), for `name`.
fn tls10_client_hello(name: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x01]; // TLS 1.0
    body.extend_from_slice(&[0x24; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let host = name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    record.push(0x01); // client_hello
    record.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&body);
    record
}

#[test]
fn a_tls_1_0_hello_is_routed_by_its_name_and_the_upstream_decides() {
    // Whether TLS 1.0 (or a hello without signature_algorithms) will do is the
    // upstream's call, not the proxy's: it holds no key and does no handshake.
    let (up, recorded) = recorder();
    let proxy = Proxy::start(
        sni_config(&[("old.test", up)], None, Duration::from_secs(10)),
        ServerConfig::default(),
    );
    let mut hello = tls10_client_hello("old.test");
    hello.extend_from_slice(b"and what follows it");
    let mut c = client(proxy.addr);
    c.write_all(&hello).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_same(&recorded.join().unwrap(), &hello, "a TLS 1.0 hello");
    assert_eq!(proxy.unconnected("no_hello"), 0);
}
