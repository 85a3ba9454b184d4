//! The examples as roles over real sockets — rot13 (tier one) and kv (tier two, a role
//! with an actor of its own) — their command lines, and a session closing by `Flow`.
//! The examples' own files are included, so what is tested is what a user reads.

mod common;

#[path = "../examples/kv.rs"]
mod kv;
#[path = "../examples/rot13.rs"]
mod rot13;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;

use clap::Parser;
use common::*;
use kv::{Kv, Limits};
use switchboard::logging::LogFormat;
use switchboard::net::listener::ServerConfig;
use switchboard::role::{Flow, Role, Session};

/// Reads one line, newline included (panics after [`DEADLINE`]).
fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

/// A kv client: the socket to write, a buffered reader of the same socket.
fn kv_client(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = client(addr);
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn rot13_example_is_a_complete_role() {
    let server = start_role(rot13::Rot13, ServerConfig::default());
    let mut s = client(server.tcp);
    s.write_all(b"Hello, World! \xff").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"Uryyb, Jbeyq! \xff");
    assert_eq!(udp_round_trip(server.udp, b"Uryyb"), b"Hello");
    server.stop();
}

#[test]
fn both_examples_take_the_server_options_and_explain_them() {
    for (name, help) in [
        (
            "rot13",
            rot13::Args::try_parse_from(["rot13", "--help"]).err(),
        ),
        ("kv", kv::Args::try_parse_from(["kv", "--help"]).err()),
    ] {
        let help = help.unwrap_or_else(|| panic!("{name} --help did not print help"));
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let text = help.to_string();
        for option in [
            "--listen",
            "--max-conns",
            "--idle-timeout",
            "--allow",
            "--deny",
            "--verbose",
        ] {
            assert!(
                text.contains(option),
                "{name} --help lacks {option}:\n{text}"
            );
        }
    }
    let args = kv::Args::try_parse_from([
        "kv",
        "--listen",
        "127.0.0.1:0",
        "--max-keys",
        "5",
        "--max-conns",
        "3",
        "-vv",
    ])
    .unwrap();
    assert_eq!((args.listen.as_str(), args.max_keys), ("127.0.0.1:0", 5));
    assert_eq!(args.server.config().unwrap().max_conns, 3);
    assert_eq!(args.verbosity.level(), log::LevelFilter::Trace);
    assert_eq!(args.verbosity.format(), LogFormat::Auto);
    let args = rot13::Args::try_parse_from(["rot13", "-q", "--log-format", "json"]).unwrap();
    assert_eq!(args.listen, "127.0.0.1:7013");
    assert_eq!(args.verbosity.level(), log::LevelFilter::Warn);
    assert_eq!(args.verbosity.format(), LogFormat::Json);
}

#[test]
fn kv_sets_gets_and_deletes() {
    let server = start_role(Kv::new(Limits::default()), ServerConfig::default());
    let mut s = client(server.tcp);
    // Pipelined, CRLF and LF, command words in any case, a value with spaces, and a
    // last command without its newline that runs when the client finishes.
    s.write_all(b"SET color dark blue\r\nGET color\nget nothing\nDel color\nDEL color\nGET color\nSET n 1\nGET n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_to_end(&mut s)).unwrap(),
        "OK\nVALUE dark blue\nNIL\nDELETED\nNIL\nNIL\nOK\nVALUE 1\n"
    );
    // The store outlives its clients: the next one sees what the last one set.
    let (mut w, mut r) = kv_client(server.tcp);
    w.write_all(b"GET n\n").unwrap();
    assert_eq!(line(&mut r), "VALUE 1\n");
    server.stop();
}

#[test]
fn kv_pushes_each_change_to_the_clients_watching_the_key() {
    let server = start_role(Kv::new(Limits::default()), ServerConfig::default());
    let (mut watcher, mut watched) = kv_client(server.tcp);
    watcher.write_all(b"WATCH color\nWATCH color\n").unwrap();
    assert_eq!(line(&mut watched), "WATCHING color\n");
    assert_eq!(line(&mut watched), "WATCHING color\n");
    let (mut setter, mut answers) = kv_client(server.tcp);
    setter
        .write_all(b"SET color blue\nSET other x\nSET color red\nDEL color\nDEL color\n")
        .unwrap();
    for answer in ["OK\n", "OK\n", "OK\n", "DELETED\n", "NIL\n"] {
        assert_eq!(line(&mut answers), answer);
    }
    // Once per change (watched twice, pushed once), nothing for another key or for a
    // DEL that deleted nothing; the watcher's own commands still answer in between.
    watcher.write_all(b"GET other\n").unwrap();
    for push in [
        "CHANGED color blue\n",
        "CHANGED color red\n",
        "DELETED color\n",
        "VALUE x\n",
    ] {
        assert_eq!(line(&mut watched), push);
    }
    // A setter that watches gets the push before its own OK.
    setter.write_all(b"WATCH k\nSET k v\n").unwrap();
    for answer in ["WATCHING k\n", "CHANGED k v\n", "OK\n"] {
        assert_eq!(line(&mut answers), answer);
    }
    server.stop();
}

#[test]
fn kv_says_what_is_wrong_and_keeps_its_caps() {
    let limits = Limits {
        max_keys: 2,
        max_key: 4,
        max_value: 8,
        max_watches: 1,
    };
    let server = start_role(Kv::new(limits), ServerConfig::default());
    let (mut s, mut r) = kv_client(server.tcp);
    let long_line = format!("SET a {}\n", "x".repeat(40));
    let script: &[(&str, &str)] = &[
        ("FOO bar\n", "ERR unknown command\n"),
        ("SET a\n", "ERR usage: SET key value\n"),
        ("GET\n", "ERR usage: GET key\n"),
        ("DEL a b\n", "ERR usage: DEL key\n"),
        ("WATCH\n", "ERR usage: WATCH key\n"),
        ("QUIT now\n", "ERR usage: QUIT\n"),
        ("\n", ""),
        ("SET abcde 1\n", "ERR key too long\n"),
        ("SET a 123456789\n", "ERR value too long\n"),
        (&long_line, "ERR line too long\n"),
        ("SET a 1\n", "OK\n"),
        ("SET b 2\n", "OK\n"),
        ("SET c 3\n", "ERR too many keys\n"),
        ("SET a 12345678\n", "OK\n"),
        ("WATCH a\n", "WATCHING a\n"),
        ("WATCH a\n", "WATCHING a\n"),
        ("WATCH b\n", "ERR too many watches\n"),
        ("GET a\n", "VALUE 12345678\n"),
    ];
    let sent: String = script.iter().map(|(command, _)| *command).collect();
    let expected: String = script.iter().map(|(_, answer)| *answer).collect();
    s.write_all(sent.as_bytes()).unwrap();
    let got = read_n(&mut r, expected.len());
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    // A watch of a client that left is forgotten when the cap is reached.
    drop((s, r));
    wait_until("the first client to be gone", || server.stats.active() == 0);
    let (mut s, mut r) = kv_client(server.tcp);
    s.write_all(b"WATCH b\n").unwrap();
    assert_eq!(line(&mut r), "WATCHING b\n");
    server.stop();
}

#[test]
fn kv_parses_a_line_into_one_command_or_the_reason_it_cannot() {
    use kv::{Command, parse};
    let limits = Limits::default();
    let set = |k: &str, v: &str| Command::Set {
        key: k.into(),
        value: v.into(),
    };
    assert_eq!(
        parse(b"SET k  two words ", &limits),
        Ok(set("k", " two words "))
    );
    assert_eq!(parse(b"  set\tk v", &limits), Err("unknown command"));
    assert_eq!(
        parse(b"  wAtCh k", &limits),
        Ok(Command::Watch { key: b"k".to_vec() })
    );
    assert_eq!(
        parse(b"GET k ", &limits),
        Ok(Command::Get { key: b"k".to_vec() })
    );
    assert_eq!(
        parse(b"GET  k", &limits),
        Ok(Command::Get { key: b"k".to_vec() })
    );
    assert_eq!(parse(b"SET k ", &limits), Err("usage: SET key value"));
    assert_eq!(parse(b"QUIT ", &limits), Ok(Command::Quit));
    assert_eq!(parse(b"   ", &limits), Ok(Command::Nothing));
    assert_eq!(
        parse(b"DEL \xff\x00", &limits),
        Ok(Command::Del {
            key: b"\xff\x00".to_vec()
        })
    );
}

#[test]
fn kv_quit_answers_then_closes() {
    let server = start_role(Kv::new(Limits::default()), ServerConfig::default());
    let mut s = client(server.tcp);
    // The client has not closed its side: the end it reads is the server's close, and
    // what it sent after QUIT is never run.
    s.write_all(b"SET a 1\nQUIT\nSET a 2\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"OK\nBYE\n");
    let (mut w, mut r) = kv_client(server.tcp);
    w.write_all(b"GET a\n").unwrap();
    assert_eq!(line(&mut r), "VALUE 1\n");
    server.stop();
}

#[test]
fn a_watcher_that_never_reads_is_closed_and_nobody_waits_for_it() {
    let server = start_role(Kv::new(Limits::default()), ServerConfig::default());
    // A watcher with a tiny receive buffer that stops reading once it is watching.
    let mut stalled = client_with_rcvbuf(server.tcp, 4096);
    stalled.write_all(b"WATCH k\n").unwrap();
    assert_eq!(read_n(&mut stalled, 11), b"WATCHING k\n");
    let (mut healthy, mut healthy_r) = kv_client(server.tcp);
    healthy.write_all(b"WATCH k\n").unwrap();
    assert_eq!(line(&mut healthy_r), "WATCHING k\n");
    let (mut setter, mut setter_r) = kv_client(server.tcp);
    setter.write_all(b"GET k\n").unwrap();
    assert_eq!(line(&mut setter_r), "NIL\n"); // all three are being served
    let value = "v".repeat(1000);
    // Changes in batches, each read by the setter and the healthy watcher before the
    // next: they keep up, the stalled one falls behind until its queue is full.
    let started = Instant::now();
    let mut n = 0u32;
    while server.stats.active() == 3 {
        assert!(
            started.elapsed() < DEADLINE,
            "the stalled watcher was never closed"
        );
        let batch: String = (n..n + 50)
            .map(|i| format!("SET k {i} {value}\n"))
            .collect();
        setter.write_all(batch.as_bytes()).unwrap();
        for i in n..n + 50 {
            assert_eq!(line(&mut setter_r), "OK\n");
            assert!(
                line(&mut healthy_r) == format!("CHANGED k {i} {value}\n"),
                "change {i} lost"
            );
        }
        n += 50;
    }
    // The others go on as before.
    setter.write_all(b"SET k last\n").unwrap();
    assert_eq!(line(&mut setter_r), "OK\n");
    assert_eq!(line(&mut healthy_r), "CHANGED k last\n");
    // The stalled client's connection was closed by the server: reading it comes to an end.
    drain_to_close(&mut stalled);
    server.stop();
}

/// A tier-one role that echoes until a chunk holds `bye`, then closes.
#[derive(Clone)]
struct UntilBye;

impl Role for UntilBye {
    type Session = UntilBye;
    fn name(&self) -> &'static str {
        "until-bye"
    }
}

impl Session for UntilBye {
    fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, Flow) {
        let bye = input.windows(3).any(|w| w == b"bye");
        (input, if bye { Flow::Close } else { Flow::Continue })
    }
}

#[test]
fn a_session_that_answers_close_closes_after_sending() {
    let server = start_role(UntilBye, ServerConfig::default());
    let (mut s, mut r) = kv_client(server.tcp);
    s.write_all(b"hello\n").unwrap();
    assert_eq!(line(&mut r), "hello\n");
    // The client keeps its side open: the end after the answer is the server's close.
    s.write_all(b"bye now\n").unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut rest).unwrap();
    assert_eq!(rest, b"bye now\n");
    drop((s, r));
    wait_until("the connection to end", || server.stats.active() == 0);
    server.stop();
}
