//! `proxy --udp`: datagrams forwarded per client flow, over real sockets on 127.0.0.1.

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::roles::echo::Echo;
use switchboard::roles::proxy::udp::{self, MAX_DATAGRAM, UdpProxyConfig};
use switchboard::roles::proxy::upstreams::{Balance, Upstreams};
use switchboard::rt;

/// A UDP proxy in this process.
struct UdpProxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    trigger: Option<Trigger>,
    done: Option<rt::JoinHandle<()>>,
}

impl UdpProxy {
    fn start(
        upstreams: Vec<String>,
        balance: Balance,
        idle: Duration,
        max_flows: usize,
    ) -> UdpProxy {
        Self::start_on("127.0.0.1:0", upstreams, balance, idle, max_flows)
    }

    fn start_on(
        bind: &str,
        upstreams: Vec<String>,
        balance: Balance,
        idle: Duration,
        max_flows: usize,
    ) -> UdpProxy {
        let socket = rt::block_on(rt::UdpSocket::bind(bind)).unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Stats::new();
        let (trigger, shutdown) = shutdown::channel();
        let config = UdpProxyConfig {
            upstreams: Upstreams::new(upstreams, balance, Duration::from_secs(10)),
            idle,
            max_flows,
        };
        let done = rt::spawn(udp::run(socket, config, stats.clone(), shutdown));
        UdpProxy {
            addr,
            stats,
            trigger: Some(trigger),
            done: Some(done),
        }
    }

    fn stop(mut self) {
        self.trigger.take().unwrap().fire();
        rt::block_on(self.done.take().unwrap());
    }
}

/// A client socket with the test's deadline as its read timeout.
fn client() -> StdUdp {
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn ask(s: &StdUdp, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    s.send_to(data, to).unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, to, "the reply comes from the proxy's address");
    buf.truncate(n);
    buf
}

#[test]
fn datagrams_keep_their_boundaries_and_size_both_ways() {
    let upstream = start_role(Echo, ServerConfig::default());
    let proxy = UdpProxy::start(
        vec![upstream.udp.to_string()],
        Balance::RoundRobin,
        Duration::from_secs(60),
        100,
    );
    let c = client();
    let mut rng = Rng::new(17);
    let mut sent = 0u64;
    for size in [0, 1, 512, 1472, 9000, 65_000, MAX_DATAGRAM] {
        let data = rng.bytes(size);
        assert_eq!(ask(&c, proxy.addr, &data), data, "{size} bytes");
        sent += size as u64;
    }
    wait_until("the counts", || {
        proxy.stats.datagrams.load(Relaxed) == 7
            && proxy.stats.bytes_in.load(Relaxed) == sent
            && proxy.stats.bytes_out.load(Relaxed) == sent
    });
    proxy.stop();
    upstream.stop();
}

#[test]
fn each_client_is_a_flow_of_its_own_and_flows_end_when_idle() {
    let (a, b) = (
        start_role(Echo, ServerConfig::default()),
        start_role(Echo, ServerConfig::default()),
    );
    let proxy = UdpProxy::start(
        vec![a.udp.to_string(), b.udp.to_string()],
        Balance::RoundRobin,
        Duration::from_millis(300),
        100,
    );
    let clients: Vec<StdUdp> = (0..4).map(|_| client()).collect();
    for (i, c) in clients.iter().enumerate() {
        for k in 0..3 {
            let data = format!("client {i} datagram {k}");
            assert_eq!(ask(c, proxy.addr, data.as_bytes()), data.as_bytes());
        }
    }
    // Round robin over two upstreams: two flows each, every flow's datagrams to one.
    wait_until("each upstream's datagrams", || {
        a.stats.datagrams.load(Relaxed) == 6 && b.stats.datagrams.load(Relaxed) == 6
    });
    // Four flows, each a task, all gone once idle; a client then starts a new one.
    wait_until("the flows to idle out", || proxy.stats.live_tasks() == 0);
    assert_eq!(ask(&clients[0], proxy.addr, b"again"), b"again");
    proxy.stop();
    a.stop();
    b.stop();
}

/// A port on 127.0.0.1 where nothing listens (the kernel answers ICMP port unreachable).
fn closed_port() -> SocketAddr {
    StdUdp::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Sends `data` until a reply comes (each try waits `wait`), at most `tries` times.
fn ask_until_answered(s: &StdUdp, to: SocketAddr, data: &[u8], tries: usize) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..tries {
        s.send_to(data, to).unwrap();
        if let Ok(n) = s.recv(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

#[test]
fn an_upstream_that_refuses_is_backed_off_so_new_flows_fail_over() {
    let up = start_role(Echo, ServerConfig::default());
    let proxy = UdpProxy::start(
        vec![closed_port().to_string(), up.udp.to_string()],
        Balance::First,
        Duration::from_secs(60),
        100,
    );
    // The first client's first datagram meets the closed port
    // (its flow ends), then it is backed off, so `first` picks the other.
    let c = client();
    assert_eq!(
        ask_until_answered(&c, proxy.addr, b"again", 25).as_deref(),
        Some(&b"again"[..])
    );
    // A new client is answered at once.
    assert_eq!(ask(&client(), proxy.addr, b"new"), b"new");
    proxy.stop();
    up.stop();
}

#[test]
fn a_burst_toward_an_upstream_that_refuses_still_ends_its_flow() {
    // Sends after the ICMP error take it (ECONNREFUSED) before the flow's task reads it:
    // the flow must end all the same, not carry the client's datagrams to nowhere.
    let up = start_role(Echo, ServerConfig::default());
    let proxy = UdpProxy::start(
        vec![closed_port().to_string(), up.udp.to_string()],
        Balance::First,
        Duration::from_secs(60),
        100,
    );
    let c = client();
    for _ in 0..200 {
        c.send_to(b"burst", proxy.addr).unwrap();
    }
    // Any answer (the burst's own datagrams echo once the flow has failed over).
    assert!(ask_until_answered(&c, proxy.addr, b"then", 25).is_some());
    proxy.stop();
    up.stop();
}

#[test]
fn an_ipv6_datagram_larger_than_ipv4_allows_is_not_cut() {
    // Over IPv6 a UDP payload can be 65,527 bytes.
    let Ok(echo) = StdUdp::bind("[::1]:0") else {
        return; // no IPv6 loopback here
    };
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let proxy = UdpProxy::start_on(
        "[::1]:0",
        vec![echo_addr.to_string()],
        Balance::First,
        Duration::from_secs(60),
        10,
    );
    let c = StdUdp::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let data = Rng::new(5).bytes(65_527);
    c.send_to(&data, proxy.addr).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(n, data.len(), "the reply is whole");
    assert_eq!(&buf[..n], &data[..]);
    proxy.stop();
}

#[test]
fn clients_past_max_flows_are_dropped_and_counted() {
    let upstream = start_role(Echo, ServerConfig::default());
    let proxy = UdpProxy::start(
        vec![upstream.udp.to_string()],
        Balance::First,
        Duration::from_secs(60),
        1,
    );
    let (first, second) = (client(), client());
    assert_eq!(ask(&first, proxy.addr, b"in"), b"in");
    second.send_to(b"out", proxy.addr).unwrap();
    wait_until("the refusal", || {
        proxy.stats.refused.max_conns.load(Relaxed) == 1
    });
    // The flow that has its place goes on.
    assert_eq!(ask(&first, proxy.addr, b"still in"), b"still in");
    assert_eq!(upstream.stats.datagrams.load(Relaxed), 2);
    proxy.stop();
    upstream.stop();
}

#[test]
fn the_binary_forwards_udp_and_logs_one_line_per_flow() {
    let upstream = start_role(Echo, ServerConfig::default());
    let target = upstream.udp.to_string();
    let mut proc = spawn(&[
        "--log-format",
        "json",
        "proxy",
        "--udp",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &target,
        "--udp-idle",
        "200ms",
    ]);
    let (addr, log) = listening_addr_and_log(&mut proc, "UDP");
    let c = client();
    assert_eq!(ask(&c, addr, b"hello"), b"hello");
    assert_eq!(ask(&c, addr, b"world!"), b"world!");
    let line = std::io::BufRead::lines(log)
        .map(|l| l.unwrap())
        .find(|l| l.contains("UDP flow ended"))
        .expect("a flow line");
    let flow: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(flow["client"], c.local_addr().unwrap().to_string().as_str());
    assert_eq!(flow["upstream"], target.as_str());
    assert_eq!(
        (
            &flow["datagrams_up"],
            &flow["bytes_up"],
            &flow["datagrams_down"],
            &flow["bytes_down"]
        ),
        (&2.into(), &11.into(), &2.into(), &11.into())
    );
    assert_eq!(flow["ended"], "idle");
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    upstream.stop();
}

/// A minimal DNS server for the test: it answers every `A` question with `answer`
/// (one record, TTL 60) and counts the queries it answered; stops after `DEADLINE`
/// without a query.
fn dns_server(answer: [u8; 4]) -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let sock = StdUdp::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let served = std::thread::spawn(move || {
        let mut answered = 0;
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let query = &buf[..n];
            if n < 12 || query[2] & 0x80 != 0 {
                continue; // too short, or a response
            }
            // The question: names as labels up to the zero, then QTYPE and QCLASS.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + query[end] as usize;
            }
            let end = end + 5;
            if end > n {
                continue;
            }
            let mut reply = query[..end].to_vec();
            reply[2] = 0x81; // a response, recursion desired kept
            reply[3] = 0x80; // recursion available, no error
            reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // 1 answer, no others
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&answer);
            sock.send_to(&reply, from).unwrap();
            answered += 1;
            if query[end - 4..end - 2] == [0, 255] {
                break; // an ANY question: the test's signal to stop
            }
        }
        answered
    });
    (addr, served)
}

/// A DNS query for `name`, type `qtype`, with id `id` and recursion desired.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0]);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

#[test]
fn dns_goes_through_and_dig_gets_its_answer_where_installed() {
    let (dns, served) = dns_server([192, 0, 2, 7]);
    let proxy = UdpProxy::start(
        vec![dns.to_string()],
        Balance::RoundRobin,
        Duration::from_secs(60),
        100,
    );
    // Our own query: the answer comes back whole, its id and question intact.
    let c = client();
    let query = dns_query(0x5a5a, "www.example.test", 1);
    let reply = ask(&c, proxy.addr, &query);
    assert_eq!(&reply[..2], &[0x5a, 0x5a]);
    assert_eq!(&reply[12..query.len()], &query[12..]);
    assert_eq!(&reply[reply.len() - 4..], &[192, 0, 2, 7]);
    let mut asked = 1;
    // dig, where it is installed.
    let dig = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &proxy.addr.port().to_string(),
            "+short",
            "+tries=1",
            "+time=20",
            "dig.example.test",
            "A",
        ])
        .output();
    match dig {
        Ok(out) => {
            assert!(
                out.status.success(),
                "dig: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "192.0.2.7\n");
            asked += 1;
        }
        Err(_) => {
            eprintln!("SKIPPED: dig is not installed; the DNS check ran with our own query only")
        }
    }
    // The server's signal to stop, through the proxy too.
    let _ = ask(&c, proxy.addr, &dns_query(1, "stop.example.test", 255));
    assert_eq!(served.join().unwrap(), asked + 1);
    proxy.stop();
}
