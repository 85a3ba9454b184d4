//! Echo over real sockets: byte-exact integrity under concurrency, UDP sizes, server
//! options (max-conns, allow/deny, idle timeout), task accounting and shutdown.

mod common;

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use common::*;
use switchboard::net::access::{AccessList, parse_cidr};
use switchboard::net::listener::ServerConfig;
use switchboard::roles::echo::Echo;

#[test]
fn eight_clients_get_back_exactly_four_mib_each() {
    let server = start_role(Echo, ServerConfig::default());
    let clients: Vec<_> = (0..8u64)
        .map(|seed| {
            let addr = server.tcp;
            thread::spawn(move || {
                let mut rng = Rng::new(seed + 1);
                let data = rng.bytes(4 << 20);
                let mut s = client(addr);
                let mut w = s.try_clone().unwrap();
                let sent = data.clone();
                let chunks: Vec<usize> = (0..).map(|_| 1 + rng.below(100_000)).take(400).collect();
                let writer = thread::spawn(move || {
                    let mut at = 0;
                    for size in chunks.iter().cycle() {
                        if at == sent.len() {
                            break;
                        }
                        let end = (at + size).min(sent.len());
                        w.write_all(&sent[at..end]).unwrap();
                        at = end;
                    }
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let got = read_to_end(&mut s);
                writer.join().unwrap();
                assert!(
                    got.len() == data.len(),
                    "client {seed}: {} bytes back of {}",
                    got.len(),
                    data.len()
                );
                assert!(got == data, "client {seed}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("connection tasks to end", || server.stats.live_tasks() == 0);
    let stats = server.stop();
    assert_eq!(
        stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
        8 * (4 << 20)
    );
    assert_eq!(
        stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        8 * (4 << 20)
    );
}

#[test]
fn udp_datagrams_of_every_size_come_back_whole() {
    let server = start_role(Echo, ServerConfig::default());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rng = Rng::new(7);
    for size in [0, 1, 1400, 65_507] {
        let data = rng.bytes(size);
        sock.send_to(&data, server.udp).unwrap();
        let mut buf = vec![0; 70_000];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, server.udp);
        assert!(
            n == size && buf[..n] == data[..],
            "datagram of {size} bytes came back as {n}"
        );
    }
    server.stop();
}

#[test]
fn tasks_return_to_zero_after_clients_leave() {
    let server = start_role(Echo, ServerConfig::default());
    let mut clients: Vec<_> = (0..20).map(|_| client(server.tcp)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_n(c, msg.len()), msg.as_bytes());
    }
    wait_until("20 connections", || server.stats.active() == 20);
    assert!(
        server.stats.live_tasks() >= 40,
        "a reader and a writer per client"
    );
    // Half leave politely, half reset.
    for (i, c) in clients.drain(..).enumerate() {
        if i % 2 == 0 {
            c.shutdown(std::net::Shutdown::Both).unwrap();
        } else {
            reset_on_close(&c);
            drop(c);
        }
    }
    wait_until("connection tasks to end", || {
        server.stats.live_tasks() == 0 && server.stats.active() == 0
    });
    server.stop();
}

#[test]
fn max_conns_closes_new_clients_and_leaves_others_alone() {
    let server = start_role(
        Echo,
        ServerConfig {
            max_conns: 2,
            ..Default::default()
        },
    );
    let mut a = client(server.tcp);
    let mut b = client(server.tcp);
    for s in [&mut a, &mut b] {
        s.write_all(b"ping").unwrap();
        assert_eq!(read_n(s, 4), b"ping");
    }
    let mut c = client(server.tcp);
    assert!(closed_by_server(&mut c), "the third client must be closed");
    for s in [&mut a, &mut b] {
        s.write_all(b"still here").unwrap();
        assert_eq!(read_n(s, 10), b"still here");
    }
    drop(a);
    wait_until("a slot to free up", || server.stats.active() == 1);
    let mut d = client(server.tcp);
    d.write_all(b"d").unwrap();
    assert_eq!(read_n(&mut d, 1), b"d");
    assert_eq!(
        server
            .stats
            .refused
            .max_conns
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.stop();
}

#[test]
fn deny_and_allow_lists_close_refused_peers_at_accept() {
    let cidr = |s: &str| parse_cidr(s).unwrap();
    let denied = start_role(
        Echo,
        ServerConfig {
            access: AccessList::new(vec![], vec![cidr("127.0.0.1")]),
            ..Default::default()
        },
    );
    let not_allowed = start_role(
        Echo,
        ServerConfig {
            access: AccessList::new(vec![cidr("10.0.0.0/8")], vec![]),
            ..Default::default()
        },
    );
    let allowed = start_role(
        Echo,
        ServerConfig {
            access: AccessList::new(vec![cidr("127.0.0.0/8")], vec![cidr("127.0.0.2")]),
            ..Default::default()
        },
    );
    for server in [&denied, &not_allowed] {
        let mut s = client(server.tcp);
        let _ = s.write_all(b"hello");
        assert!(closed_by_server(&mut s));
        assert_eq!(
            server
                .stats
                .served
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    let mut s = client(allowed.tcp);
    s.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut s, 5), b"hello");
    for server in [denied, not_allowed, allowed] {
        server.stop();
    }
}

#[test]
fn idle_timeout_closes_silent_clients_but_not_talkative_ones() {
    let server = start_role(
        Echo,
        ServerConfig {
            idle_timeout: Some(Duration::from_millis(600)),
            ..Default::default()
        },
    );
    let mut silent = client(server.tcp);
    let mut talker = client(server.tcp);
    // The talker speaks every 100 ms for well over the timeout and is never cut off.
    for i in 0..15u8 {
        talker.write_all(&[i]).unwrap();
        assert_eq!(read_n(&mut talker, 1), [i]);
        thread::sleep(Duration::from_millis(100)); // pacing the client, not synchronisation
    }
    assert!(closed_by_server(&mut silent), "the silent client is closed");
    talker.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut talker, 1), b"x");
    server.stop();
}

#[test]
fn shutdown_closes_every_client_and_stops_accepting() {
    let server = start_role(Echo, ServerConfig::default());
    let addr = server.tcp;
    let mut a = client(addr);
    a.write_all(b"last words").unwrap();
    assert_eq!(read_n(&mut a, 10), b"last words");
    let stats = server.stop();
    assert!(
        closed_by_server(&mut a),
        "an open client sees the server close"
    );
    wait_until("connection tasks to end", || stats.live_tasks() == 0);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed"
    );
}

/// A client that sends without end and never reads: the writer's socket fills, the
/// reader waits for room in the writer's mailbox, and the reader's idle timer (which
/// only runs while it waits to read) never fires. The writer's send timeout (the idle
/// timeout) closes it; the old code kept it open for good.
#[test]
fn a_client_that_sends_but_never_reads_is_closed_after_the_idle_timeout() {
    let server = start_role(
        Echo,
        ServerConfig {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    );
    let mut s = client_with_rcvbuf(server.tcp, 4096);
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(DEADLINE)).unwrap();
    // Writes until the server's close makes a write fail (or the deadline passes).
    let sender = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while w.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    wait_until("the server to hold a connection", || {
        server.stats.active() == 1
    });
    wait_until(
        "the server to close the client that stopped reading",
        || server.stats.active() == 0,
    );
    let echoed = drain_to_close(&mut s);
    let sent = sender.join().unwrap();
    assert!(
        echoed < sent,
        "the client was cut, not served: {echoed} of {sent}"
    );
    wait_until("connection tasks to end", || server.stats.live_tasks() == 0);
    server.stop();
}

/// The send timeout is about progress, not duration: a client that reads slowly but
/// steadily gets everything back even though the exchange lasts longer than the idle
/// timeout many times over.
#[test]
fn a_slow_but_steady_reader_is_not_cut_off() {
    let server = start_role(
        Echo,
        ServerConfig {
            idle_timeout: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    );
    // The data is made before connecting: a client that connects and then spends the
    // idle timeout making it (a debug build on a loaded machine can) is idle indeed.
    let data = Rng::new(21).bytes(2 << 20);
    let sending = data.clone();
    let mut s = client_with_rcvbuf(server.tcp, 4096);
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        w.write_all(&sending).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        thread::sleep(Duration::from_millis(2)); // pacing the client, not synchronisation
    }
    sender.join().unwrap();
    assert!(
        got == data,
        "{} of {} bytes came back",
        got.len(),
        data.len()
    );
    server.stop();
}

/// A role that answers a client's end of input with 8 MiB, and counts the ends it saw:
/// more than the kernel's send buffer holds for a client that never reads, so its
/// writer is still waiting when the reader has finished.
struct BigGoodbye(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl switchboard::role::Role for BigGoodbye {
    type Session = BigGoodbye;
    fn name(&self) -> &'static str {
        "big-goodbye"
    }
}

impl switchboard::role::NewSession for BigGoodbye {
    fn session(&self, _peer: std::net::SocketAddr) -> BigGoodbye {
        BigGoodbye(self.0.clone())
    }
}

impl switchboard::role::Session for BigGoodbye {
    fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, switchboard::role::Flow) {
        (input, switchboard::role::Flow::Continue)
    }
    fn end(&mut self) -> Vec<u8> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        vec![b'z'; 8 << 20]
    }
}

/// Attack round 3, item 2: a connection's `--max-conns` slot is held until its writer
/// has ended. The old session returned (and released the slot, logging "client closed")
/// as soon as the reader saw the client's FIN, while the writer still held the socket
/// writing to a client that never reads — with `--idle-timeout 0`, for good.
#[test]
fn a_slot_is_held_until_the_writer_has_ended() {
    use std::sync::atomic::Ordering::SeqCst;
    let ends = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = start_role(
        BigGoodbye(ends.clone()),
        ServerConfig {
            max_conns: 2,
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    );
    // Two clients send a little and FIN, and never read the 8 MiB that answers it.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let s = client_with_rcvbuf(server.tcp, 4096);
            (&s).write_all(b"bye").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s
        })
        .collect();
    wait_until("both readers to see the end", || ends.load(SeqCst) == 2);
    assert_eq!(
        server.stats.active(),
        2,
        "slots released while writers hold sockets"
    );
    let mut third = client(server.tcp);
    assert!(
        closed_by_server(&mut third),
        "a third client must be closed"
    );
    assert_eq!(
        server.stats.refused.max_conns.load(SeqCst),
        1,
        "the third client must be refused at accept, not served"
    );
    assert_eq!(server.stats.active(), 2);
    // The send timeout (the idle timeout, 1 s) ends the writers; then the slots free up.
    wait_until("the writers to give up", || server.stats.active() == 0);
    let mut fourth = client(server.tcp);
    fourth.write_all(b"d").unwrap();
    assert_eq!(read_n(&mut fourth, 1), b"d");
    drop(held);
    server.stop();
}
