//! The proxy's active health checks (`--check-interval`) over real sockets: an upstream
//! that goes down mid-check gets no sessions, and gets them again once it rises; probes
//! that send and expect (a request/response, a banner), one that never answers (the
//! timeout), one that answers the wrong thing, one that resets; every upstream down
//! closes clients at once and counts them; the metrics; the binary's log lines; and
//! `serve`, whose reload keeps an upstream's state.
//!
//! Intervals are short (50 ms) so the tests move quickly, but every wait is on a
//! condition with a generous deadline ([`DEADLINE`]), never on time passing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::prom::{self, Exposition};
use common::*;
use switchboard::metrics::{self, ServiceView};
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::splice::PIPE_CAPACITY;
use switchboard::net::stats::Stats;
use switchboard::roles::proxy::health::{self, HealthCheck, Probe, probe};
use switchboard::roles::proxy::metrics::{ProxyMetrics, UpstreamMetrics};
use switchboard::roles::proxy::upstreams::{Balance, Upstreams};
use switchboard::roles::proxy::{self, ProxyConfig};
use switchboard::rt::{self, TcpListener};

/// What a test upstream does with each connection it accepts.
type Serve = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A TCP server on 127.0.0.1 that can be stopped (its port then refuses connections)
/// and started again on the same port.
struct Upstream {
    addr: SocketAddr,
    serve: Serve,
    stop: Arc<AtomicBool>,
    /// Connections accepted, probes included.
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(serve: Serve) -> Upstream {
        Upstream::on(StdListener::bind("127.0.0.1:0").unwrap(), serve)
    }

    fn on(listener: StdListener, serve: Serve) -> Upstream {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stopping, count, each) = (stop.clone(), accepted.clone(), serve.clone());
        let thread = thread::spawn(move || {
            // Polls, so that a stop closes the listener (and the port refuses) promptly.
            while !stopping.load(SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        count.fetch_add(1, SeqCst);
                        let each = each.clone();
                        thread::spawn(move || each(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Upstream {
            addr,
            serve,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Closes the listener: connects to its port are refused from now on.
    fn stop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Listens on the same port again, serving as before.
    fn restart(mut self) -> Upstream {
        self.stop();
        let start = Instant::now();
        let listener = loop {
            match StdListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(start.elapsed() < DEADLINE, "rebinding {}: {e}", self.addr);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        };
        Upstream::on(listener, self.serve.clone())
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `banner` at once, then reads until the peer closes.
fn banner(banner: &'static [u8]) -> Serve {
    Arc::new(move |mut s: TcpStream| {
        let _ = s.write_all(banner);
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    })
}

/// Answers each `PING\r\n` line with `answer`, counting the pings.
fn pong(answer: &'static [u8], pings: Arc<AtomicUsize>) -> Serve {
    Arc::new(move |s: TcpStream| {
        let mut w = s.try_clone().unwrap();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if line == "PING" {
                pings.fetch_add(1, SeqCst);
                let _ = w.write_all(answer);
            }
        }
    })
}

/// Accepts and never says a thing (reads until the peer closes).
fn silent() -> Serve {
    Arc::new(|mut s: TcpStream| {
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    })
}

/// Accepts and resets at once.
fn resetting() -> Serve {
    Arc::new(|s: TcpStream| {
        reset_on_close(&s);
        drop(s);
    })
}

/// Probes every 50 ms, 1 s each; down after `fall`, up after `rise`.
fn every_50ms(fall: u32, rise: u32) -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        fall,
        rise,
        send: Vec::new(),
        expect: None,
    }
}

struct Proxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _trigger: Trigger,
}

impl Proxy {
    fn metrics(&self) -> Arc<ProxyMetrics> {
        self.stats.role_metrics::<ProxyMetrics>()
    }

    fn upstream(&self, up: &Upstream) -> Arc<UpstreamMetrics> {
        self.metrics().upstream(&up.target())
    }

    /// Scrapes the service's series as `/metrics` would show them.
    fn scrape(&self) -> Exposition {
        let view = ServiceView {
            name: "front",
            role: "proxy",
            stats: &self.stats,
            up: true,
            started: SystemTime::now(),
        };
        let text = metrics::render(&[view]);
        prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

/// A proxy in this process over `upstreams` (round-robin), checked as `check` says.
fn start_proxy(upstreams: &[&Upstream], check: HealthCheck) -> Proxy {
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Stats::new();
    let (trigger, stop) = shutdown::channel();
    let table = Upstreams::new(
        upstreams.iter().map(|u| u.target()).collect(),
        Balance::RoundRobin,
        Duration::from_secs(30),
    );
    let cfg = ProxyConfig {
        sni: None,
        upstreams: table.checked(check),
        connect_timeout: Duration::from_secs(5),
        fin_timeout: Some(Duration::from_secs(60)),
        send_proxy: None,
        accept_proxy: None,
        tap: false,
        splice: Some(PIPE_CAPACITY),
        splice_always: false,
        ftp: None,
    };
    rt::spawn(proxy::run(
        listener,
        ServerConfig::default(),
        cfg,
        stats.clone(),
        stop,
    ));
    Proxy {
        addr,
        stats,
        _trigger: trigger,
    }
}

/// One session through the proxy to a banner upstream: the banner it read.
fn banner_via(proxy: SocketAddr) -> String {
    let mut s = client(proxy);
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    line
}

#[test]
fn an_upstream_that_goes_down_gets_no_sessions_and_gets_them_again_once_it_rises() {
    let a = Upstream::start(banner(b"A\n"));
    let mut b = Upstream::start(banner(b"B\n"));
    let proxy = start_proxy(&[&a, &b], every_50ms(2, 2));
    let (ma, mb) = (proxy.upstream(&a), proxy.upstream(&b));
    // Both up: round-robin takes turns.
    let served: Vec<String> = (0..4).map(|_| banner_via(proxy.addr)).collect();
    assert!(
        served.contains(&"A\n".into()) && served.contains(&"B\n".into()),
        "{served:?}"
    );

    // Once B has passed checks (two sessions and two probes), it goes away mid-checks:
    // its port refuses, and after two failed checks it is marked down.
    wait_until("B probed twice", || b.accepted.load(SeqCst) >= 4);
    b.stop();
    wait_until("B marked down", || mb.health.is_down());
    let tried = mb.connect_failures.get();
    for _ in 0..10 {
        assert_eq!(banner_via(proxy.addr), "A\n");
    }
    assert_eq!(
        mb.connect_failures.get(),
        tried,
        "no session tried B while it was down"
    );

    // B comes back on the same port: after two passed checks it is up, and served.
    let b = b.restart();
    wait_until("B marked up", || !mb.health.is_down());
    wait_until("a session reaches B", || banner_via(proxy.addr) == "B\n");
    assert!(b.accepted.load(SeqCst) >= 3, "two probes and a session");
    assert!(!ma.health.is_down());
    assert_eq!(ma.health.failures.get(), 0, "A never failed a check");
    assert!(mb.health.failures.get() >= 2);
}

#[test]
fn check_send_and_expect_mark_the_upstream_that_answers_wrong_down() {
    let (good_pings, wrong_pings) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let good = Upstream::start(pong(b"+PONG\r\n", good_pings.clone()));
    let wrong = Upstream::start(pong(b"-ERR unknown command\r\n", wrong_pings.clone()));
    let check = HealthCheck {
        send: b"PING\r\n".to_vec(),
        expect: Some(b"+PONG".to_vec()),
        ..every_50ms(2, 2)
    };
    let proxy = start_proxy(&[&wrong, &good], check);
    let (mg, mw) = (proxy.upstream(&good), proxy.upstream(&wrong));
    wait_until("the wrong one marked down", || mw.health.is_down());
    // The good one passed checks all along (it heard them, and none failed).
    wait_until("three checks of the good one", || {
        good_pings.load(SeqCst) >= 3
    });
    assert!(!mg.health.is_down());
    assert_eq!(mg.health.failures.get(), 0);
    assert!(wrong_pings.load(SeqCst) >= 1, "the wrong one was asked");
    // Sessions go to the good one only.
    for _ in 0..6 {
        let mut s = client(proxy.addr);
        s.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_n(&mut s, 7), b"+PONG\r\n");
    }
}

#[test]
fn a_banner_is_expected_without_sending_anything() {
    let ready = Upstream::start(banner(b"220 ftp.example ready\r\n"));
    let busy = Upstream::start(banner(b"421 too many users\r\n"));
    let check = HealthCheck {
        expect: Some(b"220 ".to_vec()),
        ..every_50ms(1, 1)
    };
    let proxy = start_proxy(&[&busy, &ready], check);
    let (mr, mb) = (proxy.upstream(&ready), proxy.upstream(&busy));
    wait_until("the busy one marked down", || mb.health.is_down());
    wait_until("the ready one probed twice", || {
        ready.accepted.load(SeqCst) >= 2
    });
    assert!(!mr.health.is_down());
    for _ in 0..4 {
        assert_eq!(banner_via(proxy.addr), "220 ftp.example ready\r\n");
    }
}

#[test]
fn probes_fail_for_silence_a_wrong_answer_a_reset_and_a_refusal_and_say_why() {
    let mut gone = Upstream::start(silent());
    let silent = Upstream::start(silent());
    let wrong = Upstream::start(banner(b"-ERR\r\n"));
    let reset = Upstream::start(resetting());
    gone.stop();
    let check = HealthCheck {
        timeout: Duration::from_millis(300),
        expect: Some(b"+OK".to_vec()),
        ..every_50ms(1, 1)
    };
    let why = |up: &Upstream| match rt::block_on(probe(&up.target(), &check, None)) {
        Probe::Failed(why) => why,
        other => panic!("{}: {other:?}", up.target()),
    };
    let said = why(&silent);
    assert!(said.contains("no \"+OK\" within 300ms"), "{said}");
    // It answered, and then said nothing more (nor closed).
    let said = why(&wrong);
    assert!(
        said.contains("no \"+OK\" within 300ms") && said.contains("answered \"-ERR\\r\\n\""),
        "{said}"
    );
    let closes = Upstream::start(Arc::new(|mut s: TcpStream| {
        let _ = s.write_all(b"-ERR go away\r\n");
    }));
    let said = why(&closes);
    assert!(
        said.contains("-ERR go away") && said.contains("closed, without \"+OK\""),
        "{said}"
    );
    let said = why(&reset);
    assert!(
        said.contains("reset") || said.contains("closed without answering"),
        "{said}"
    );
    assert_eq!(why(&gone), "connection refused");
    let said = match rt::block_on(probe("nosuch.invalid:80", &check, None)) {
        Probe::Failed(why) => why,
        other => panic!("{other:?}"),
    };
    assert!(said.contains("cannot resolve"), "{said}");
}

#[test]
fn an_upstream_that_accepts_but_never_answers_is_marked_down_by_the_timeout() {
    let silent = Upstream::start(silent());
    let reset = Upstream::start(resetting());
    let fine = Upstream::start(banner(b"+OK ready\r\n"));
    let check = HealthCheck {
        timeout: Duration::from_millis(200),
        expect: Some(b"+OK".to_vec()),
        ..every_50ms(2, 2)
    };
    let proxy = start_proxy(&[&silent, &reset, &fine], check);
    let (ms, mr, mf) = (
        proxy.upstream(&silent),
        proxy.upstream(&reset),
        proxy.upstream(&fine),
    );
    wait_until("the silent one marked down", || ms.health.is_down());
    wait_until("the resetting one marked down", || mr.health.is_down());
    assert!(!mf.health.is_down());
    for _ in 0..6 {
        assert_eq!(banner_via(proxy.addr), "+OK ready\r\n");
    }
}

#[test]
fn every_upstream_down_closes_clients_at_once_and_counts_them() {
    let mut a = Upstream::start(banner(b"A\n"));
    let mut b = Upstream::start(banner(b"B\n"));
    a.stop();
    b.stop();
    let proxy = start_proxy(&[&a, &b], every_50ms(3, 1));
    let (ma, mb) = (proxy.upstream(&a), proxy.upstream(&b));
    // Fresh upstreams: the first failed check marks each down.
    wait_until("both marked down", || {
        ma.health.is_down() && mb.health.is_down()
    });
    for _ in 0..3 {
        let mut c = client(proxy.addr);
        assert!(closed_by_server(&mut c));
    }
    let m = proxy.metrics();
    wait_until("three clients counted", || m.unconnected[0].get() == 3);
    assert_eq!(
        (ma.connect_failures.get(), mb.connect_failures.get()),
        (0, 0),
        "no connect was tried"
    );
    let x = proxy.scrape();
    let series = |name: &str, up: &Upstream| {
        let target = up.target();
        let labels = [
            ("service", "front"),
            ("role", "proxy"),
            ("upstream", target.as_str()),
        ];
        x.get(name, &labels)
            .unwrap_or_else(|| panic!("no {name} for {target}"))
    };
    for up in [&a, &b] {
        assert_eq!(series("switchboard_proxy_upstream_up", up), 0.0);
        assert!(series("switchboard_proxy_upstream_check_failures_total", up) >= 1.0);
        assert_eq!(
            series("switchboard_proxy_upstream_connect_failures_total", up),
            0.0
        );
    }
    let labels = [
        ("service", "front"),
        ("role", "proxy"),
        ("reason", "no_upstream"),
    ];
    assert_eq!(
        x.get("switchboard_proxy_unconnected_total", &labels),
        Some(3.0)
    );

    // One comes back (rise 1): it is up in the metrics, and it serves.
    let b = b.restart();
    wait_until("B marked up", || !mb.health.is_down());
    let x = proxy.scrape();
    let target = b.target();
    let labels = [
        ("service", "front"),
        ("role", "proxy"),
        ("upstream", target.as_str()),
    ];
    assert_eq!(x.get("switchboard_proxy_upstream_up", &labels), Some(1.0));
    assert_eq!(banner_via(proxy.addr), "B\n");
}

/// The JSON log lines of a spawned binary, kept as they come.
type Log = Arc<Mutex<Vec<serde_json::Value>>>;

fn keep_log(lines: impl BufRead + Send + 'static) -> Log {
    let log: Log = Arc::default();
    let keep = log.clone();
    thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { return };
            if let Ok(value) = serde_json::from_str(&line) {
                keep.lock().unwrap().push(value);
            }
        }
    });
    log
}

fn count(log: &Log, what: impl Fn(&serde_json::Value) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|l| what(l)).count()
}

fn msg_starts(line: &serde_json::Value, start: &str) -> bool {
    line["msg"].as_str().is_some_and(|m| m.starts_with(start))
}

#[test]
fn the_binary_logs_each_change_once_and_the_clients_it_closes() {
    let mut up = Upstream::start(banner(b"hello\n"));
    let target = up.target();
    let mut proc = spawn(&[
        "--log-format",
        "json",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &target,
        "--check-interval",
        "50ms",
        "--check-fall",
        "2",
        "--check-rise",
        "2",
        "--check-expect",
        "hello",
    ]);
    let (addr, lines) = listening_addr_and_log(&mut proc, "TCP");
    let log = keep_log(lines);
    assert_eq!(banner_via(addr), "hello\n");
    wait_until("two probes", || up.accepted.load(SeqCst) >= 3);

    up.stop();
    let down = |l: &serde_json::Value| {
        msg_starts(
            l,
            "proxy: upstream DOWN (2 failed checks: connection refused)",
        ) && l["upstream"] == target.as_str()
    };
    wait_until("the DOWN line", || count(&log, down) == 1);
    wait_until("the every-upstream-down line", || {
        count(&log, |l| msg_starts(l, "proxy: every upstream is DOWN;")) == 1
    });
    let mut c = client(addr);
    assert!(closed_by_server(&mut c));
    wait_until("the closed client's line", || {
        count(&log, |l| {
            msg_starts(l, "proxy: every upstream is DOWN by its health checks") && l["closed"] == 1
        }) == 1
    });

    let _up = up.restart();
    let up_line = |l: &serde_json::Value| {
        l["msg"] == "proxy: upstream UP (2 passed checks)" && l["upstream"] == target.as_str()
    };
    wait_until("the UP line", || count(&log, up_line) == 1);
    assert_eq!(count(&log, down), 1, "one line per change, not per probe");
    assert_eq!(banner_via(addr), "hello\n");
}

#[test]
fn the_binary_refuses_bad_check_options() {
    for (args, says) in [
        (&["--check-fall", "2"][..], "--check-interval"),
        (&["--check-interval", "1ms"][..], "at least 10ms"),
        (
            &["--check-interval", "1s", "--check-rise", "0"][..],
            "--check-rise",
        ),
        (
            &["--check-interval", "1s", "--check-send", "PING\\q"][..],
            "unknown escape",
        ),
        (
            &["--check-interval", "1s", "--check-expect", ""][..],
            "--check-expect",
        ),
        (&["--check-interval", "1s", "--udp"][..], "--udp"),
    ] {
        let out = binary()
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
            ])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `serve` with `--log-format json`: its log, and its admin address for `/metrics`.
struct Served {
    proc: Proc,
    log: Log,
    admin: SocketAddr,
}

impl Served {
    fn start(config: &std::path::Path, pid_file: &std::path::Path) -> Served {
        let mut proc = Proc(
            binary()
                .args(["--log-format", "json", "serve"])
                .arg(config)
                .arg("--pid-file")
                .arg(pid_file)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let log = keep_log(BufReader::new(proc.0.stdout.take().unwrap()));
        let admin_line =
            |l: &serde_json::Value| l["role"] == "admin" && l["msg"] == "listening (TCP)";
        wait_until("the admin listener", || count(&log, admin_line) == 1);
        let admin = log.lock().unwrap().iter().find(|l| admin_line(l)).unwrap()["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        Served { proc, log, admin }
    }

    /// A series of the service `front`, from `/metrics`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut s = client(self.admin);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let x = prom::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        let mut all = vec![("service", "front"), ("role", "proxy")];
        all.extend_from_slice(labels);
        x.get(name, &all)
    }

    fn reload(&mut self, pid_file: &std::path::Path) {
        let before = count(&self.log, |l| l["msg"] == "reloaded");
        let out = binary()
            .arg("reload")
            .arg("--pid-file")
            .arg(pid_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        wait_until("the reload", || {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                panic!("serve exited ({status})");
            }
            count(&self.log, |l| l["msg"] == "reloaded") == before + 1
        });
    }
}

#[test]
fn under_serve_a_reload_keeps_the_health_state_and_turning_checks_off_clears_it() {
    let dir = std::env::temp_dir().join(format!("switchboard-health-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (config, pid_file) = (dir.join("serve.toml"), dir.join("serve.pid"));
    let mut gone = Upstream::start(silent());
    gone.stop();
    let target = gone.target();
    let file = |balance: &str, checks: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nname = \"front\"\nrole = \"proxy\"\n\
             listen = [\"127.0.0.1:0\"]\nupstream = [\"{target}\"]\nbalance = \"{balance}\"\n{checks}"
        )
    };
    let checks = "check_interval = \"50ms\"\ncheck_fall = 2\n";
    std::fs::write(&config, file("first", checks)).unwrap();

    // `check` refuses health checks for a UDP proxy, with the key's line.
    let udp = dir.join("udp.toml");
    std::fs::write(&udp, file("first", &format!("udp = true\n{checks}"))).unwrap();
    let out = binary().arg("check").arg(&udp).output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("udp") && err.contains("check"), "{err}");

    let mut served = Served::start(&config, &pid_file);
    let down = |l: &serde_json::Value| {
        msg_starts(l, "proxy: upstream DOWN") && l["upstream"] == target.as_str()
    };
    wait_until("the DOWN line", || count(&served.log, down) == 1);
    let up = [("upstream", target.as_str())];
    let failures = "switchboard_proxy_upstream_check_failures_total";
    assert_eq!(
        served.metric("switchboard_proxy_upstream_up", &up),
        Some(0.0)
    );

    // A reload that changes the proxy (a new generation, a new checker) keeps the state:
    // it is still down, and no second DOWN line comes, however many probes fail.
    std::fs::write(&config, file("least-conn", checks)).unwrap();
    served.reload(&pid_file);
    let changed = |l: &serde_json::Value| l["msg"] == "reloaded" && l["changed"] == "front";
    assert_eq!(count(&served.log, changed), 1, "a new generation");
    let after = served.metric(failures, &up).unwrap();
    wait_until("three more failed checks", || {
        served.metric(failures, &up).unwrap() >= after + 3.0
    });
    assert_eq!(
        count(&served.log, down),
        1,
        "the state went on through the reload"
    );
    assert_eq!(
        served.metric("switchboard_proxy_upstream_up", &up),
        Some(0.0)
    );

    // Checks turned off: nobody would ever mark it up again, so the mark goes.
    std::fs::write(&config, file("least-conn", "")).unwrap();
    served.reload(&pid_file);
    wait_until("up again without checks", || {
        served.metric("switchboard_proxy_upstream_up", &up) == Some(1.0)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_upstream_a_reload_stops_naming_loses_its_down_mark_and_is_fresh_when_named_again() {
    // Generation 1 checks `gone` (refusing) and `kept`: `gone` is marked down.
    let mut gone = Upstream::start(banner(b"G\n"));
    gone.stop();
    let kept = Upstream::start(banner(b"K\n"));
    let metrics = ProxyMetrics::default();
    let table = |targets: Vec<String>| {
        Upstreams::new(targets, Balance::First, Duration::from_secs(30)).checked(every_50ms(1, 3))
    };
    let first = table(vec![gone.target(), kept.target()]);
    let checker = health::start([&first], &metrics, None);
    let health_of = |up: &Upstream| metrics.upstream(&up.target());
    wait_until("gone marked down", || health_of(&gone).health.is_down());

    // Generation 2 names `kept` alone: nobody checks `gone` any more, so nobody would
    // ever mark it up again; its mark goes, as when checks are turned off.
    let second = table(vec![kept.target()]);
    let checker2 = health::start([&second], &metrics, None);
    drop(checker);
    assert!(
        !health_of(&gone).health.is_down(),
        "an upstream no generation names keeps a stale DOWN (and /metrics shows it down)"
    );

    // Generation 3 names it again (it is back meanwhile): it is fresh, up on trust until
    // its first probe, not held down until --check-rise probes pass.
    let gone = gone.restart();
    let third = table(vec![gone.target(), kept.target()]);
    let _checker3 = health::start([&third], &metrics, None);
    drop(checker2);
    assert!(!health_of(&gone).health.is_down());
    third.count_into(&metrics);
    assert!(third.order().contains(&0), "{:?}", third.order());
}

#[test]
fn check_escapes_take_exactly_two_hex_digits() {
    assert_eq!(health::unescape("\\x0d\\x0A").unwrap(), b"\r\n");
    // `u8::from_str_radix` takes a sign: "+f" would decode to 0x0f.
    for typo in ["\\x+f", "\\x+1PING", "\\x-1"] {
        assert!(health::unescape(typo).is_err(), "{typo:?} was accepted");
    }
}
