//! The nc-style tools driven as the built binary with piped stdin.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{ChildStderr, ChildStdout, Stdio};

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::roles::echo::Echo;
use switchboard::roles::hello::Hello;

/// Runs `switchboard ARGS` with `input` on stdin; returns (exit ok, stdout, stderr).
fn run(args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = binary()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut proc = Proc(child);
    let mut out = Vec::new();
    proc.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let err = stderr_of(&mut proc);
    let status = wait_exit(&mut proc);
    feeder.join().unwrap();
    (status.success(), out, err)
}

#[test]
fn connect_carries_stdin_to_the_server_and_back_binary_safe() {
    let server = start_role(Echo, ServerConfig::default());
    let data = Rng::new(3).bytes(1 << 20);
    let (ok, out, err) = run(&["connect", &server.tcp.to_string()], &data);
    assert!(ok, "connect failed: {err}");
    assert!(out == data, "{} bytes back of {}", out.len(), data.len());
    server.stop();
}

#[test]
fn connect_prints_what_a_server_says_first() {
    let server = start_role(Hello::new("welcome"), ServerConfig::default());
    let (ok, out, err) = run(&["connect", &server.tcp.to_string()], b"");
    assert!(ok, "connect failed: {err}");
    assert_eq!(out, b"welcome\n");
    server.stop();
}

#[test]
fn connect_udp_sends_a_datagram_per_line_and_prints_replies() {
    let server = start_role(Echo, ServerConfig::default());
    let (ok, out, err) = run(
        &["connect", "--udp", "--wait", "2s", &server.udp.to_string()],
        b"one\ntwo\nthree\n",
    );
    assert!(ok, "connect failed: {err}");
    assert_eq!(out, b"one\ntwo\nthree\n");
    assert_eq!(
        server
            .stats
            .datagrams
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    server.stop();
}

#[test]
fn connect_reports_refused_and_unknown_hosts_in_one_line() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, out, err) = run(&["connect", &free.to_string()], b"");
    assert!(!ok && out.is_empty());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("connection refused"), "{err}");

    let (ok, _, err) = run(&["connect", "no-such-host.invalid:7"], b"");
    assert!(!ok && err.contains("unknown host"), "{err}");

    let (ok, _, err) = run(&["connect", "missing-port"], b"");
    assert!(!ok && err.contains("HOST:PORT"), "{err}");
}

/// Starts `switchboard listen ARGS` on port 0; returns it, the address its first stderr
/// line names, and its stderr and stdout to read on.
fn start_listen(
    args: &[&str],
) -> (
    Proc,
    SocketAddr,
    BufReader<ChildStderr>,
    BufReader<ChildStdout>,
) {
    let mut proc = spawn(&[&["listen"], args].concat());
    let mut stderr = BufReader::new(proc.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = find_addr(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
    let stdout = BufReader::new(proc.0.stdout.take().unwrap());
    (proc, addr, stderr, stdout)
}

#[test]
fn listen_prints_lines_from_many_clients_tagged_by_peer() {
    let (_proc, addr, _stderr, mut stdout) = start_listen(&["127.0.0.1:0"]);

    let mut a = client(addr);
    let mut b = client(addr);
    a.write_all(b"from a\n").unwrap();
    let mut got = String::new();
    stdout.read_line(&mut got).unwrap();
    assert_eq!(got, format!("[{}] from a\n", a.local_addr().unwrap()));

    // A line split across writes prints whole; an unfinished line prints at close.
    b.write_all(b"from ").unwrap();
    b.flush().unwrap();
    b.write_all(b"b\nno newline").unwrap();
    drop(b.try_clone().unwrap());
    b.shutdown(std::net::Shutdown::Write).unwrap();
    let peer_b = b.local_addr().unwrap();
    let mut first = String::new();
    let mut second = String::new();
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut second).unwrap();
    assert_eq!(first, format!("[{peer_b}] from b\n"));
    assert_eq!(second, format!("[{peer_b}] no newline\n"));
}

#[test]
fn listen_udp_prints_each_datagram_with_its_sender() {
    let (_proc, addr, _stderr, mut stdout) = start_listen(&["--udp", "127.0.0.1:0"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"ping", addr).unwrap();
    let mut got = String::new();
    stdout.read_line(&mut got).unwrap();
    assert_eq!(got, format!("[{}] ping\n", sock.local_addr().unwrap()));
}

#[test]
fn listen_udp_tags_every_line_of_a_datagram_with_its_sender() {
    // A sender that puts a newline and another peer's tag in its datagram must not get a
    // line printed as that peer's.
    let (_proc, addr, _stderr, mut stdout) = start_listen(&["--udp", "127.0.0.1:0"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(b"hello\n[10.0.0.1:4242] forged\n\nlast", addr)
        .unwrap();
    let mut lines = Vec::new();
    for _ in 0..4 {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        lines.push(l);
    }
    assert_eq!(
        lines,
        [
            format!("[{me}] hello\n"),
            format!("[{me}] [10.0.0.1:4242] forged\n"),
            format!("[{me}] \n"),
            format!("[{me}] last\n"),
        ]
    );
}

#[test]
fn listen_carries_on_when_its_stderr_goes_away() {
    // `switchboard listen ADDR 2>&1 | ...` whose reader of stderr left: the notices
    // ("connected", "closed") fail with EPIPE; before, the first one panicked the tool.
    let (_proc, addr, stderr, mut stdout) = start_listen(&["127.0.0.1:0"]);
    drop(stderr);
    for text in ["first", "second"] {
        let mut c = client(addr);
        c.write_all(format!("{text}\n").as_bytes()).unwrap();
        let mut got = String::new();
        stdout.read_line(&mut got).unwrap();
        assert_eq!(got, format!("[{}] {text}\n", c.local_addr().unwrap()));
    }
}

#[test]
fn listen_escapes_control_characters_so_no_sender_can_forge_a_tag() {
    // A carriage return, an escape sequence, a vertical tab, a form feed, NEL (C1), a
    // line separator, DEL, NUL and invalid UTF-8 could each move a terminal's cursor to
    // the start of a line (or render as a break) and make the rest look like another
    // peer's line. In tagged output each is printed as a visible escape; a backslash is
    // doubled so an escape is never ambiguous; a tab and valid text stay as they are.
    let (_proc, addr, _stderr, mut stdout) = start_listen(&["--udp", "127.0.0.1:0"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    let datagrams: [&[u8]; 6] = [
        b"x\r[10.9.9.9:1] forged via CR",
        b"\x1b[2K\r[10.9.9.9:3] ansi\x7f",
        b"x\x0b[10.9.9.9:4] vt\x0c[10.9.9.9:5] ff\x00",
        "x\u{85}[10.9.9.9:7] NEL\u{2028}LS\u{2029}PS".as_bytes(),
        b"bad \xff\xfe utf-8 \xe2\x82 cut\r\n",
        "tab\there, caf\u{e9} \\x0d stays text".as_bytes(),
    ];
    for d in datagrams {
        sock.send_to(d, addr).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..datagrams.len() {
        let mut line = Vec::new();
        stdout.read_until(b'\n', &mut line).unwrap();
        got.push(line);
    }
    let expected: Vec<Vec<u8>> = [
        r"x\x0d[10.9.9.9:1] forged via CR",
        r"\x1b[2K\x0d[10.9.9.9:3] ansi\x7f",
        r"x\x0b[10.9.9.9:4] vt\x0c[10.9.9.9:5] ff\x00",
        r"x\u{85}[10.9.9.9:7] NEL\u{2028}LS\u{2029}PS",
        r"bad \xff\xfe utf-8 \xe2\x82 cut\x0d",
        "tab\there, caf\u{e9} \\\\x0d stays text",
    ]
    .iter()
    .map(|l| format!("[{me}] {l}\n").into_bytes())
    .collect();
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(String::from_utf8_lossy(g), String::from_utf8_lossy(e));
    }
    assert_eq!(got, expected);
}

#[test]
fn listen_escapes_control_characters_on_tcp_too() {
    let (_proc, addr, _stderr, mut stdout) = start_listen(&["127.0.0.1:0"]);
    let mut c = client(addr);
    c.write_all(b"x\r[10.9.9.9:1] forged\r\nnext\n").unwrap();
    let me = c.local_addr().unwrap();
    let mut first = String::new();
    let mut second = String::new();
    stdout.read_line(&mut first).unwrap();
    stdout.read_line(&mut second).unwrap();
    assert_eq!(first, format!("[{me}] x\\x0d[10.9.9.9:1] forged\\x0d\n"));
    assert_eq!(second, format!("[{me}] next\n"));
}

#[test]
fn listen_udp_prints_a_65520_byte_ipv6_datagram_whole() {
    // An IPv6 UDP payload can be 65,527 bytes; the buffer held 65,508 and cut the rest.
    let sock = match std::net::UdpSocket::bind("[::1]:0") {
        Ok(s) => s,
        Err(e) => {
            println!("SKIPPED: ::1 is unavailable here ({e}); the IPv6 datagram test did not run");
            return;
        }
    };
    let mut proc = spawn(&["listen", "--udp", "[::1]:0"]);
    let mut stderr = BufReader::new(proc.0.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    // "listening on [::1]:PORT (UDP)"
    let addr: SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let mut stdout = BufReader::new(proc.0.stdout.take().unwrap());
    let payload: Vec<u8> = (0..65_520u32).map(|i| b'a' + (i % 26) as u8).collect();
    sock.send_to(&payload, addr).unwrap();
    let mut line = Vec::new();
    stdout.read_until(b'\n', &mut line).unwrap();
    let mut expected = format!("[{}] ", sock.local_addr().unwrap()).into_bytes();
    expected.extend_from_slice(&payload);
    expected.push(b'\n');
    assert_eq!(line.len(), expected.len(), "the datagram was cut");
    assert!(line == expected, "bytes changed");
}

/// Reads `n` lines from `out` on a thread, so a test fails at the deadline instead of
/// hanging on a line that never comes.
fn read_lines(out: BufReader<ChildStdout>, n: usize) -> Vec<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = out;
        for _ in 0..n {
            let mut line = Vec::new();
            if out.read_until(b'\n', &mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
                return;
            }
        }
    });
    (0..n)
        .map(|i| {
            rx.recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("line {} of {n} never printed", i + 1))
        })
        .collect()
}

#[test]
fn listen_prints_a_long_line_in_pieces_cut_between_characters() {
    // '€' is 3 bytes: a 64 KiB piece would end inside one, so the first piece stops
    // before it (65,535 bytes) and the rest of the line follows as its own line.
    let (_proc, addr, _stderr, stdout) = start_listen(&["127.0.0.1:0"]);
    let mut c = client(addr);
    let text = "€".repeat(30_000);
    c.write_all(text.as_bytes()).unwrap();
    c.write_all(b"\n").unwrap();
    let me = c.local_addr().unwrap();
    let lines = read_lines(stdout, 2);
    let (first, second) = text.split_at(65_535);
    for (got, want) in lines.iter().zip([first, second]) {
        let want = format!("[{me}] {want}\n").into_bytes();
        assert!(
            *got == want,
            "a piece of {} bytes, not {}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn listen_out_of_descriptors_pauses_until_clients_leave_then_takes_the_rest() {
    // `listen` takes clients through the servers' accept loop: out of descriptors it says
    // so once and waits for a client to leave, instead of retrying at once (and printing
    // an error each time); then it takes every client that waited.
    let mut cmd = binary();
    cmd.args(["listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_open_files(&mut cmd, 32);
    let mut proc = Proc(cmd.spawn().unwrap());
    let mut stderr = BufReader::new(proc.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = find_addr(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
    let stdout = BufReader::new(proc.0.stdout.take().unwrap());

    // More clients than descriptors, each with a line sent and the connection kept open.
    let mut clients: Vec<_> = (0..64).map(|_| client(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("client {i}\n").as_bytes()).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    loop {
        let note = rx
            .recv_timeout(DEADLINE)
            .expect("no note that accepting paused");
        assert!(!note.contains("accept failed"), "{note}");
        if note.contains("pausing until connections close") {
            break;
        }
    }

    // The clients leave; each one leaving makes room for one that waited.
    for c in &clients {
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut got: Vec<Vec<u8>> = read_lines(stdout, clients.len());
    let mut want: Vec<Vec<u8>> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| format!("[{}] client {i}\n", c.local_addr().unwrap()).into_bytes())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    clients.clear();
}
