//! The Prometheus metrics over real sockets: each role serves known traffic on
//! 127.0.0.1, and what `metrics::render` writes must parse (strictly: `common::prom`) and
//! show exactly that traffic — connections, refusals, bytes, datagrams, chat lines and
//! deliveries, proxy sessions by how they ended, HTTP responses by class.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::prom::{self, Exposition};
use common::*;
use switchboard::metrics::{self, ServiceView};
use switchboard::net::access::{AccessList, parse_cidr};
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::splice::PIPE_CAPACITY;
use switchboard::net::stats::Stats;
use switchboard::roles::chat::{self, broker::ChatConfig};
use switchboard::roles::echo::Echo;
use switchboard::roles::http::{self, HttpConfig};
use switchboard::roles::proxy::upstreams::{Balance, Upstreams};
use switchboard::roles::proxy::{self, ProxyConfig};
use switchboard::rt::{self, TcpListener};

/// The start time every view gives: 2001-09-09T01:46:40.25Z.
fn started() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000_000_250)
}

/// Renders `services` (name, role, counters), parses the text strictly, and returns it.
fn scrape(services: &[(&str, &str, &Arc<Stats>)]) -> Exposition {
    let views: Vec<ServiceView<'_>> = services
        .iter()
        .map(|&(name, role, stats)| ServiceView {
            name,
            role,
            stats,
            up: true,
            started: started(),
        })
        .collect();
    let text = metrics::render(&views);
    prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The value of one series of one service (`service` and `role`, then the series' own
/// `labels`: all of them, in any order); panics if there is no such series.
fn value(x: &Exposition, service: (&str, &str), name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("service", service.0), ("role", service.1)];
    all.extend_from_slice(labels);
    x.get(name, &all)
        .unwrap_or_else(|| panic!("no series {name}{all:?}"))
}

/// Waits until the series has `want`, scraping again and again (counts land when the
/// writers and sessions get to them, just after the client has seen the bytes); on the
/// deadline, panics showing the family's series.
fn wait_for(
    services: &[(&str, &str, &Arc<Stats>)],
    who: (&str, &str),
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) {
    let start = std::time::Instant::now();
    loop {
        let x = scrape(services);
        // (A series may not be there yet: a proxy's upstreams appear once it has started.)
        let mut all = vec![("service", who.0), ("role", who.1)];
        all.extend_from_slice(labels);
        if x.get(name, &all) == Some(want) {
            return;
        }
        if start.elapsed() > DEADLINE {
            let samples: Vec<String> = x
                .families
                .iter()
                .filter(|f| name.starts_with(f.name.as_str()))
                .flat_map(|f| &f.samples)
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            panic!("timed out waiting for {name}{labels:?} of {who:?} to be {want}: {samples:#?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cidr(s: &str) -> ipnet::IpNet {
    parse_cidr(s).unwrap()
}

#[test]
fn the_parser_takes_what_render_writes_and_refuses_malformed_text() {
    let stats = Stats::new();
    let x = scrape(&[("a", "echo", &stats), ("b \"q\"", "echo", &stats)]);
    assert_eq!(
        x.get(
            "switchboard_up",
            &[("service", "b \"q\""), ("role", "echo")]
        ),
        Some(1.0)
    );
    let good = "# HELP x_seconds A help.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\n\
                x_seconds_sum{a=\"1\"} 0.5\nx_seconds_count{a=\"1\"} 2\n\
                x_seconds_bucket{a=\"1\",le=\"0.1\"} 1\nx_seconds_bucket{a=\"1\",le=\"+Inf\"} 2\n\
                # TYPE c counter\nc_total{v=\"q\\\"\\\\\\n\"} 3\n# EOF\n";
    let parsed = prom::parse(good).unwrap();
    assert_eq!(parsed.get("c_total", &[("v", "q\"\\\n")]), Some(3.0));
    for bad in [
        "# TYPE c counter\nc_total 1\n",          // no # EOF
        "# TYPE c counter\nc_total 1\n# EOF\n\n", // after # EOF
        "c_total 1\n# EOF\n",                     // no # TYPE
        "# TYPE c counter\nc 1\n# EOF\n",         // a counter without _total
        "# TYPE c counter\nc_total -1\n# EOF\n",  // a negative counter
        "# TYPE g gauge\ng_total 1\n# EOF\n",     // a suffix a gauge has not
        "# TYPE c counter\nc_total one\n# EOF\n", // not a number
        "# TYPE c counter\nc_total  1\n# EOF\n",  // two spaces
        "# TYPE c counter\nc_total{a=\"1\"} 1\nc_total{a=\"1\"} 2\n# EOF\n", // twice
        "# TYPE c counter\nc_total{a=1} 1\n# EOF\n", // unquoted value
        "# TYPE c counter\nc_total{a=\"x\\q\"} 1\n# EOF\n", // bad escape
        "# TYPE c counter\nc_total{a=\"x\"y\"} 1\n# EOF\n", // bare quote
        "# TYPE c counter\nc_total{a=\"1\",} 1\n# EOF\n", // trailing comma
        "# TYPE c counter\nc_total{a=\"1\" b=\"2\"} 1\n# EOF\n", // no comma
        "# TYPE c counter\nc_total{a=\"1\",a=\"2\"} 1\n# EOF\n", // a label twice
        "# TYPE c counter\nc_total{1a=\"1\"} 1\n# EOF\n", // bad label name
        "# TYPE c counter\nc_total{a=\"1\"\n# EOF\n", // unterminated
        "# TYPE c kounter\nc_total 1\n# EOF\n",   // unknown type
        "# TYPE c counter\n# TYPE c counter\nc_total 1\n# EOF\n", // TYPE twice
        "# TYPE c counter\nc_total 1\n# HELP c late\n# EOF\n", // metadata after samples
        "# TYPE c counter\nc_total 1\n# TYPE d gauge\nd 1\n# TYPE c counter\n# EOF\n", // c again
        "# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_count 1\nx_sum 0\n# EOF\n", // not cumulative
        "# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_count 1\nx_sum 0\n# EOF\n", // no +Inf
        "# TYPE x histogram\nx_sum{le=\"1\"} 1\n# EOF\n",                        // le off a bucket
        "# TYPE x gauge\n# UNIT x seconds\nx 1\n# EOF\n", // name without its unit
        "# TYPE c counter\n# c_total 1\n# EOF\n",         // not metadata
        "# TYPE 9c counter\n9c_total 1\n# EOF\n",         // bad metric name
    ] {
        assert!(prom::parse(bad).is_err(), "took {bad:?}");
    }
}

#[test]
fn echo_counts_connections_bytes_datagrams_and_each_refusal_by_reason() {
    let echo = start_role(
        Echo,
        ServerConfig {
            max_conns: 2,
            ..Default::default()
        },
    );
    let walled = start_role(
        Echo,
        ServerConfig {
            access: AccessList::new(vec![], vec![cidr("127.0.0.0/8")]),
            ..Default::default()
        },
    );
    let services = [
        ("echo", "echo", &echo.stats),
        ("walled", "echo", &walled.stats),
    ];
    let e = ("echo", "echo");

    let mut a = client(echo.tcp);
    let mut b = client(echo.tcp);
    a.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut a, 5), b"hello");
    let big = Rng::new(15).bytes(100_000);
    b.write_all(&big).unwrap();
    assert_eq!(read_n(&mut b, big.len()), big);
    // A third while two are open: over --max-conns.
    let mut c = client(echo.tcp);
    assert!(closed_by_server(&mut c));
    let mut d = client(walled.tcp);
    assert!(closed_by_server(&mut d));
    for ping in [&b"ping"[..], b"datagram!"] {
        assert_eq!(udp_round_trip(echo.udp, ping), ping);
    }

    let x = scrape(&services);
    assert_eq!(value(&x, e, "switchboard_current_connections", &[]), 2.0);
    assert_eq!(value(&x, e, "switchboard_connections_total", &[]), 2.0);
    let refused = "switchboard_refused_connections_total";
    assert_eq!(value(&x, e, refused, &[("reason", "max_conns")]), 1.0);
    assert_eq!(value(&x, e, refused, &[("reason", "denied")]), 0.0);
    assert_eq!(value(&x, e, refused, &[("reason", "emfile")]), 0.0);
    let w = ("walled", "echo");
    assert_eq!(value(&x, w, refused, &[("reason", "denied")]), 1.0);
    assert_eq!(value(&x, w, "switchboard_connections_total", &[]), 0.0);
    assert_eq!(
        value(&x, e, "switchboard_datagrams_received_total", &[]),
        2.0
    );
    assert_eq!(value(&x, e, "switchboard_up", &[]), 1.0);
    assert_eq!(
        value(&x, e, "switchboard_start_time_seconds", &[]),
        1_000_000_000.25
    );
    // Every byte read was read back: TCP and UDP alike.
    let sent = (5 + big.len() + 4 + 9) as f64;
    assert_eq!(value(&x, e, "switchboard_bytes_in_total", &[]), sent);
    wait_for(&services, e, "switchboard_bytes_out_total", &[], sent);

    drop((a, b));
    wait_for(&services, e, "switchboard_current_connections", &[], 0.0);
    echo.stop();
    walled.stop();
}

struct Chat {
    tcp: SocketAddr,
    udp: SocketAddr,
    stats: Arc<Stats>,
    _trigger: Trigger,
}

fn start_chat(config: ChatConfig) -> Chat {
    let (tcp, udp) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            rt::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    rt::spawn(chat::run(
        Some(tcp),
        Some(udp),
        ServerConfig::default(),
        config,
        stats.clone(),
        shutdown,
    ));
    Chat {
        tcp: tcp_addr,
        udp: udp_addr,
        stats,
        _trigger: trigger,
    }
}

/// A TCP chat user that keeps count of the bytes it sent and read.
struct Counted {
    user: User,
    sent: usize,
    read: usize,
}

impl Counted {
    fn join(addr: SocketAddr) -> Counted {
        let user = User::join(addr);
        let welcome = format!(
            "* welcome to #lobby, you are {} (type /help for commands)\n",
            user.nick
        );
        Counted {
            read: welcome.len(),
            user,
            sent: 0,
        }
    }
    fn say(&mut self, text: &str) {
        self.user.say(text);
        self.sent += text.len() + 1;
    }
    fn expect(&mut self, want: &str) {
        assert_eq!(self.user.line(), want);
        self.read += want.len() + 1;
    }
}

#[test]
fn chat_counts_users_rooms_lines_said_deliveries_departures_and_flood_drops() {
    // Three lines at once and (for the length of a test) no more.
    let chat = start_chat(ChatConfig {
        rate: 0.001,
        burst: 3,
        ..ChatConfig::default()
    });
    let services = [("talk", "chat", &chat.stats)];
    let c = ("talk", "chat");
    let get = |name: &str, labels: &[(&str, &str)]| value(&scrape(&services), c, name, labels);

    let mut a = Counted::join(chat.tcp); // delivered: its welcome
    let mut b = Counted::join(chat.tcp); // its welcome, and A is told
    let (an, bn) = (a.user.nick.clone(), b.user.nick.clone());
    a.expect(&format!("* {bn} joined"));
    a.say("hi"); // said, to B
    b.expect(&format!("<{an}> hi"));
    a.say("/me waves"); // said, to B
    b.expect(&format!("* {an} waves"));
    b.say(&format!("/msg {an} psst")); // said, to A
    a.expect(&format!("*{bn}* psst"));
    a.say("x"); // A's third line: said, to B
    b.expect(&format!("<{an}> x"));
    a.say("y"); // over the burst: dropped, and A is told once
    a.expect("! slow down (lines are being dropped)");
    a.say("z"); // dropped, silently
    wait_for(
        &services,
        c,
        "switchboard_chat_flood_dropped_total",
        &[],
        2.0,
    );
    assert_eq!(get("switchboard_chat_users", &[("transport", "tcp")]), 2.0);
    assert_eq!(get("switchboard_chat_users", &[("transport", "udp")]), 0.0);
    assert_eq!(get("switchboard_chat_rooms", &[]), 1.0);
    assert_eq!(get("switchboard_chat_lines_said_total", &[]), 4.0);
    // 2 welcomes, 1 join notice, 4 said lines, 1 warning.
    assert_eq!(get("switchboard_chat_deliveries_total", &[]), 8.0);

    b.say("/quit"); // B's second line: "* bye" to B, and A is told
    b.expect("* bye");
    a.expect(&format!("* {bn} left (quit)"));
    assert_eq!(read_to_end(&mut b.user.r), b"");
    a.user.w.shutdown(Shutdown::Write).unwrap(); // A leaves: closed
    assert_eq!(read_to_end(&mut a.user.r), b"");
    let departed = "switchboard_chat_departures_total";
    wait_for(&services, c, departed, &[("reason", "closed")], 1.0);
    assert_eq!(get(departed, &[("reason", "quit")]), 1.0);
    for reason in ["reset", "shutdown", "sendq", "idle", "udp_timeout"] {
        assert_eq!(get(departed, &[("reason", reason)]), 0.0, "{reason}");
    }
    // (The levels are brought up to date at the end of the broker's turn.)
    wait_for(
        &services,
        c,
        "switchboard_chat_users",
        &[("transport", "tcp")],
        0.0,
    );
    assert_eq!(get("switchboard_chat_deliveries_total", &[]), 10.0);

    // A UDP user: its welcome is a delivery; the challenge before it is not.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0u8; 70_000];
    udp.send_to(b"hi\n", chat.udp).unwrap();
    let n = udp.recv(&mut buf).unwrap();
    let challenge = String::from_utf8(buf[..n].to_vec()).unwrap();
    let hello = format!("/hello {}\n", udp_chat_token(&challenge));
    udp.send_to(hello.as_bytes(), chat.udp).unwrap();
    let welcome = udp.recv(&mut buf).unwrap();
    assert!(buf[..welcome].starts_with(b"* welcome"));
    wait_for(
        &services,
        c,
        "switchboard_chat_users",
        &[("transport", "udp")],
        1.0,
    );
    assert_eq!(get("switchboard_chat_deliveries_total", &[]), 11.0);
    assert_eq!(get("switchboard_chat_rooms", &[]), 1.0);
    assert_eq!(get("switchboard_datagrams_received_total", &[]), 2.0);

    // Bytes: every line the users sent, and every one they were sent (all read).
    let udp_in = 3 + hello.len();
    let bytes_in = a.sent + b.sent + udp_in;
    assert_eq!(get("switchboard_bytes_in_total", &[]), bytes_in as f64);
    let bytes_out = a.read + b.read + challenge.len() + welcome;
    wait_for(
        &services,
        c,
        "switchboard_bytes_out_total",
        &[],
        bytes_out as f64,
    );
    assert_eq!(get("switchboard_connections_total", &[]), 2.0);
}

fn proxy_config(upstreams: &[SocketAddr]) -> ProxyConfig {
    ProxyConfig {
        sni: None,
        upstreams: Upstreams::new(
            upstreams.iter().map(|a| a.to_string()).collect(),
            Balance::First,
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

/// An address nothing listens on (bound, then closed): connecting there is refused.
fn dead_address() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn proxy_counts_sessions_by_end_and_connects_per_upstream() {
    let origin = start_role(Echo, ServerConfig::default());
    let dead = dead_address();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Stats::new();
    let (_trigger, stop) = shutdown::channel();
    // Failover order: the dead one first, so the first session finds it down.
    let cfg = proxy_config(&[dead, origin.tcp]);
    rt::spawn(proxy::run(
        listener,
        ServerConfig::default(),
        cfg,
        stats.clone(),
        stop,
    ));
    let origin_stats = origin.stats.clone();
    let services = [
        ("front", "proxy", &stats),
        ("origin", "echo", &origin_stats),
    ];
    let p = ("front", "proxy");
    let (live, down) = (origin.tcp.to_string(), dead.to_string());

    // One session the client ends with a FIN...
    let mut one = client(addr);
    let bulk = Rng::new(7).bytes(300_000);
    one.write_all(&bulk).unwrap();
    assert_eq!(read_n(&mut one, bulk.len()), bulk);
    let x = scrape(&services);
    assert_eq!(
        value(
            &x,
            p,
            "switchboard_proxy_upstream_sessions",
            &[("upstream", &live)]
        ),
        1.0
    );
    one.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut one), b"");
    // ... and one it resets.
    let mut two = client(addr);
    two.write_all(b"0123456789").unwrap();
    assert_eq!(read_n(&mut two, 10), b"0123456789");
    reset_on_close(&two);
    drop(two);

    let sessions = "switchboard_proxy_sessions_total";
    let at = |end| [("upstream", live.as_str()), ("end", end)];
    wait_for(&services, p, sessions, &at("client_reset"), 1.0);
    wait_for(&services, p, sessions, &at("client_fin"), 1.0);
    let x = scrape(&services);
    for end in [
        "server_fin",
        "server_reset",
        "idle_timeout",
        "fin_timeout",
        "shutdown",
    ] {
        assert_eq!(value(&x, p, sessions, &at(end)), 0.0, "{end}");
    }
    let up = |name: &str, who: &str| value(&x, p, name, &[("upstream", who)]);
    assert_eq!(up("switchboard_proxy_upstream_up", &live), 1.0);
    assert_eq!(up("switchboard_proxy_upstream_up", &down), 0.0);
    assert_eq!(
        up("switchboard_proxy_upstream_connect_failures_total", &down),
        1.0
    );
    assert_eq!(
        up("switchboard_proxy_upstream_connect_failures_total", &live),
        0.0
    );
    assert_eq!(
        up(
            "switchboard_proxy_upstream_connect_time_seconds_count",
            &live
        ),
        2.0
    );
    assert_eq!(
        up(
            "switchboard_proxy_upstream_connect_time_seconds_count",
            &down
        ),
        0.0
    );
    assert_eq!(up("switchboard_proxy_upstream_sessions", &live), 0.0);
    assert_eq!(
        value(
            &x,
            p,
            sessions,
            &[("upstream", &down), ("end", "client_fin")]
        ),
        0.0
    );
    let unconnected = "switchboard_proxy_unconnected_total";
    assert_eq!(value(&x, p, unconnected, &[("reason", "no_upstream")]), 0.0);
    assert_eq!(value(&x, p, unconnected, &[("reason", "local")]), 0.0);
    assert_eq!(value(&x, p, "switchboard_connections_total", &[]), 2.0);
    // Both sides are read and written: each byte twice each way.
    let through = (2 * (bulk.len() + 10)) as f64;
    assert_eq!(value(&x, p, "switchboard_bytes_in_total", &[]), through);
    assert_eq!(value(&x, p, "switchboard_bytes_out_total", &[]), through);
    let o = ("origin", "echo");
    assert_eq!(value(&x, o, "switchboard_connections_total", &[]), 2.0);
    assert_eq!(
        value(&x, o, "switchboard_bytes_in_total", &[]),
        (bulk.len() + 10) as f64
    );

    // With every upstream gone, a client is closed without a session.
    origin.stop();
    let mut three = client(addr);
    assert!(closed_by_server(&mut three));
    wait_for(&services, p, unconnected, &[("reason", "no_upstream")], 1.0);
}

/// A fresh directory with a small file (sent with its head) and a large one (sendfile).
struct Site(std::path::PathBuf);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn site(big: &[u8]) -> Site {
    let dir = std::env::temp_dir().join(format!("switchboard-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("small.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("big.bin"), big).unwrap();
    Site(dir)
}

#[test]
fn http_counts_responses_by_class_their_times_and_the_bytes_sendfile_sent() {
    let big = Rng::new(3).bytes(200_000);
    let site = site(&big);
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Stats::new();
    let (_trigger, stop) = shutdown::channel();
    let cfg = HttpConfig::new(&site.0, Duration::from_secs(10)).unwrap();
    rt::spawn(http::run(
        listener,
        ServerConfig::default(),
        cfg,
        stats.clone(),
        stop,
    ));
    let services = [("web", "http", &stats)];
    let h = ("web", "http");

    let requests = [
        "GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /small.txt HTTP/1.1\r\n\r\n", // no Host: 400, and closed
    ];
    let mut s = client(addr);
    for request in requests {
        s.write_all(request.as_bytes()).unwrap();
    }
    let got = drain_to_close(&mut s);
    let responses = "switchboard_http_responses_total";
    wait_for(&services, h, responses, &[("code", "4xx")], 2.0);
    let x = scrape(&services);
    assert_eq!(value(&x, h, responses, &[("code", "2xx")]), 2.0);
    for code in ["1xx", "3xx", "5xx"] {
        assert_eq!(value(&x, h, responses, &[("code", code)]), 0.0, "{code}");
    }
    let time = "switchboard_http_response_time_seconds";
    assert_eq!(value(&x, h, &format!("{time}_count"), &[]), 4.0);
    let all = value(&x, h, &format!("{time}_bucket"), &[("le", "+Inf")]);
    assert_eq!(all, 4.0);
    assert!(value(&x, h, &format!("{time}_sum"), &[]) > 0.0);
    // Only the large body went by sendfile; the small one travelled with its head.
    let sendfile = "switchboard_http_sendfile_bytes_total";
    assert_eq!(value(&x, h, sendfile, &[]), big.len() as f64);
    let asked: usize = requests.iter().map(|r| r.len()).sum();
    assert_eq!(
        value(&x, h, "switchboard_bytes_in_total", &[]),
        asked as f64
    );
    assert_eq!(value(&x, h, "switchboard_bytes_out_total", &[]), got as f64);
    assert_eq!(value(&x, h, "switchboard_connections_total", &[]), 1.0);
}

#[test]
fn every_role_renders_into_one_exposition() {
    let echo = start_role(Echo, ServerConfig::default());
    let chat = start_chat(ChatConfig::default());
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let proxy_stats = Stats::new();
    let (_proxy_trigger, proxy_stop) = shutdown::channel();
    rt::spawn(proxy::run(
        listener,
        ServerConfig::default(),
        proxy_config(&[echo.tcp]),
        proxy_stats.clone(),
        proxy_stop,
    ));
    let site = site(b"tiny");
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let http_addr = listener.local_addr().unwrap();
    let http_stats = Stats::new();
    let (_http_trigger, http_stop) = shutdown::channel();
    let cfg = HttpConfig::new(&site.0, Duration::from_secs(10)).unwrap();
    rt::spawn(http::run(
        listener,
        ServerConfig::default(),
        cfg,
        http_stats.clone(),
        http_stop,
    ));

    let mut through = client(proxy_addr);
    through.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut through, 4), b"ping");
    let mut user = User::join(chat.tcp);
    user.say("/rooms");
    assert_eq!(user.line(), "* rooms: #lobby (1)");
    let mut web = client(http_addr);
    web.write_all(b"GET /big.bin HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    web.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("\r\n\r\ntiny"), "{answer}");

    let services = [
        ("e", "echo", &echo.stats),
        ("c", "chat", &chat.stats),
        ("p", "proxy", &proxy_stats),
        ("h", "http", &http_stats),
    ];
    let x = scrape(&services);
    // Every family once, with a series for each service that has it.
    let ups = &x.family("switchboard_up").unwrap().samples;
    assert_eq!(ups.len(), 4);
    for (family, services) in [
        ("switchboard_connections", 4),
        ("switchboard_chat_users", 2),
        ("switchboard_proxy_upstream_up", 1),
        ("switchboard_http_responses", 5),
    ] {
        assert_eq!(
            x.family(family).unwrap().samples.len(),
            services,
            "{family}"
        );
    }
    assert_eq!(
        value(
            &x,
            ("c", "chat"),
            "switchboard_chat_users",
            &[("transport", "tcp")]
        ),
        1.0
    );
    assert_eq!(
        value(&x, ("p", "proxy"), "switchboard_current_connections", &[]),
        1.0
    );
    assert_eq!(
        value(&x, ("e", "echo"), "switchboard_current_connections", &[]),
        1.0
    );
    wait_for(
        &services,
        ("h", "http"),
        "switchboard_http_responses_total",
        &[("code", "2xx")],
        1.0,
    );
}

/// A session the proxy cuts counts by the cut, though a side half-closed before it: a
/// client FIN then the fin timeout is `fin_timeout` (by `closed_first` alone it would be
/// `client_fin`, and `fin_timeout` could never show), and a half-closed session the
/// drain ends is `shutdown`.
#[test]
fn proxy_counts_a_session_it_cut_by_the_cut() {
    // An origin that takes the bytes and never answers or closes.
    let origin = StdListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for _ in 0..2 {
            kept.push(origin.accept().unwrap().0);
        }
        kept
    });
    let front = |fin_timeout: Duration| {
        let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Stats::new();
        let (trigger, stop) = shutdown::channel();
        let cfg = ProxyConfig {
            fin_timeout: Some(fin_timeout),
            ..proxy_config(&[origin_addr])
        };
        let (close, close_rx) = shutdown::channel();
        let server = ServerConfig {
            close_now: Some(close_rx),
            ..ServerConfig::default()
        };
        rt::spawn(proxy::run(listener, server, cfg, stats.clone(), stop));
        (addr, stats, trigger, close)
    };
    let target = origin_addr.to_string();
    let sessions = "switchboard_proxy_sessions_total";
    let at = |end| [("upstream", target.as_str()), ("end", end)];

    let (addr, stats, _stop, _close) = front(Duration::from_millis(200));
    let services = [("front", "proxy", &stats)];
    let mut one = client(addr);
    one.write_all(b"hello").unwrap();
    one.shutdown(Shutdown::Write).unwrap();
    wait_for(
        &services,
        ("front", "proxy"),
        sessions,
        &at("fin_timeout"),
        1.0,
    );
    assert_eq!(read_to_end(&mut one), b"");
    let x = scrape(&services);
    assert_eq!(
        value(&x, ("front", "proxy"), sessions, &at("client_fin")),
        0.0
    );

    // The drain: the service stops, then its close fires with the session half-closed.
    let (addr, stats, stop, close) = front(Duration::from_secs(60));
    let services = [("front", "proxy", &stats)];
    let mut two = client(addr);
    two.write_all(b"hello").unwrap();
    two.shutdown(Shutdown::Write).unwrap();
    let open = "switchboard_proxy_upstream_sessions";
    wait_for(
        &services,
        ("front", "proxy"),
        open,
        &[("upstream", &target)],
        1.0,
    );
    stop.fire();
    close.fire();
    wait_for(
        &services,
        ("front", "proxy"),
        sessions,
        &at("shutdown"),
        1.0,
    );
    assert_eq!(read_to_end(&mut two), b"");
    let x = scrape(&services);
    assert_eq!(
        value(&x, ("front", "proxy"), sessions, &at("client_fin")),
        0.0
    );
    assert_eq!(
        value(
            &x,
            ("front", "proxy"),
            "switchboard_proxy_upstream_sessions",
            &[("upstream", &target)]
        ),
        0.0
    );
    drop(held.join().unwrap());
}
