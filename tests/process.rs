//! The server as a process: signals, a busy port, running out of descriptors.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn sigterm_stops_the_server_cleanly_with_a_summary() {
    let mut proc = spawn(&["echo", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    let stdout = proc.0.stdout.take().unwrap();
    // Read the log on a thread: it gives the address, and later the summary.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(DEADLINE).expect("no listening line");
        if let Some(addr) = find_addr(&line) {
            break addr;
        }
    };
    let mut c = client(addr);
    c.write_all(b"before the end").unwrap();
    assert_eq!(read_n(&mut c, 14), b"before the end");

    signal(&proc, libc::SIGTERM);
    let status = wait_exit(&mut proc);
    assert!(status.success(), "exit status {status}");
    // The open client was closed, not left hanging.
    assert!(closed_by_server(&mut c));
    let log: Vec<String> = rx.iter().collect(); // to the end of its output
    let summary = log
        .iter()
        .find(|l| l.contains("stopped:"))
        .unwrap_or_else(|| panic!("no summary in {log:?}"));
    assert!(
        summary.contains("connections=1")
            && summary.contains("bytes_in=14")
            && summary.contains("bytes_out=14"),
        "{summary}"
    );
}

#[test]
fn a_busy_port_fails_at_once_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = binary()
        .args(["echo", "--tcp", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!("switchboard echo: cannot listen on {addr} (TCP): address already in use")
    );
}

#[test]
fn a_second_proxy_on_the_same_port_fails_instead_of_sharing_it() {
    // The proxy listens with SO_REUSEPORT (one listener per thread); a second one on the
    // same address must still fail as on any busy port.
    let mut first = spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--threads",
        "2",
    ]);
    let (addr, mut first_log) = listening_addr_and_log(&mut first, "TCP");
    let mut second = spawn(&[
        "proxy",
        "--listen",
        &addr.to_string(),
        "--upstream",
        "127.0.0.1:9",
    ]);
    let status = wait_exit(&mut second);
    assert!(!status.success());
    let err = stderr_of(&mut second);
    assert_eq!(
        err.trim(),
        format!("switchboard proxy: cannot listen on {addr} (TCP): address already in use")
    );

    // The two threads' accept loops are announced once, as one server.
    signal(&first, libc::SIGTERM);
    assert!(wait_exit(&mut first).success());
    let mut rest = String::new();
    first_log.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("listening"), "{rest}");
    assert_eq!(rest.matches("stopped accepting").count(), 1, "{rest}");
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn running_out_of_descriptors_neither_stops_nor_spins_the_accept_loop() {
    let mut cmd = binary();
    cmd.args(["echo", "--tcp", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_open_files(&mut cmd, 48);
    let mut proc = Proc(cmd.spawn().unwrap());
    let addr = listening_addr(&mut proc, "TCP");

    // More clients than descriptors: the kernel completes their handshakes, the server
    // can accept only some of them.
    let mut clients: Vec<_> = (0..60).map(|_| client(addr)).collect();
    let mut first = clients.remove(0);
    first.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut first, 1), b"x");

    let before = cpu_time(proc.0.id());
    std::thread::sleep(Duration::from_secs(1)); // a window to measure CPU use in
    let used = cpu_time(proc.0.id()) - before;
    assert!(
        used < Duration::from_millis(500),
        "the accept loop spins: {used:?} of CPU in 1s"
    );

    // Free the descriptors: every waiting client is served in turn, and new ones too.
    drop(first);
    for mut c in clients.drain(..) {
        c.write_all(b"y").unwrap();
        assert_eq!(read_n(&mut c, 1), b"y");
    }
    let mut late = client(addr);
    late.write_all(b"recovered").unwrap();
    assert_eq!(read_n(&mut late, 9), b"recovered");
    signal(&proc, libc::SIGTERM);
    wait_exit(&mut proc);
    let err = stderr_of(&mut proc);
    assert!(err.is_empty() || !err.contains("panicked"), "{err}");
}

#[test]
fn a_closed_stdout_neither_panics_nor_stops_the_chat() {
    // `switchboard chat | head -1`: whatever read the log has gone. Every log line after
    // this fails with EPIPE; before the log pipe, the task that logged panicked (a
    // joining client's reader, or the broker when someone left).
    let mut proc = spawn(&["chat", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    drop(log);

    // (join checks the whole welcome line.)
    let mut a = User::join(addr);
    assert_eq!(a.nick, "guest1");
    let mut b = User::join(addr);
    assert_eq!(b.nick, "guest2");
    assert_eq!(a.line(), "* guest2 joined");
    b.say("still here");
    assert_eq!(a.line(), "<guest2> still here");
    drop(b);
    assert_eq!(a.line(), "* guest2 left (connection closed)");
    let c = User::join(addr);
    assert_eq!(c.nick, "guest3");
    assert_eq!(a.line(), "* guest3 joined");

    signal(&proc, libc::SIGTERM);
    assert_eq!(a.line(), "* server shutting down");
    let status = wait_exit(&mut proc);
    assert!(status.success(), "exit status {status}");
    let err = stderr_of(&mut proc);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim(),
        "switchboard: log output stopped: cannot write to stdout (Broken pipe (os error 32))"
    );
}

#[test]
fn an_unread_stdout_neither_stalls_the_server_nor_hides_what_it_dropped() {
    // `switchboard chat -v | less`, left unscrolled: nothing reads the log. Before the
    // log pipe, the server stopped once the 64 KiB pipe was full.
    let mut proc = spawn(&["chat", "-v", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    // Each join and leave logs four records (accepted, joined, reader done, left), more
    // than 300 bytes: 4,000 of them overflow the pipe and the 1 MiB queue behind it.
    for i in 1..=4000 {
        assert_eq!(User::join(addr).nick, format!("guest{i}"));
    }
    // Reading again: what was queued comes out, then a warning counting what was not.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in log.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = std::time::Instant::now();
    loop {
        let line = rx
            .recv_timeout(DEADLINE.saturating_sub(start.elapsed()))
            .expect("no warning about dropped log lines");
        if line.contains("log output fell behind: lines dropped") {
            break;
        }
    }
    signal(&proc, libc::SIGTERM);
    let status = wait_exit(&mut proc);
    assert!(status.success(), "exit status {status}");
    // The summary is still the last record, written before the process exits.
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("stopped: connections=4000")),
        "no summary in the last lines: {:?}",
        &rest[rest.len().saturating_sub(5)..]
    );
}

#[test]
fn a_proxy_session_still_open_at_shutdown_is_counted_and_logged() {
    session_open_at_shutdown(&[]);
}

#[test]
fn a_proxy_session_still_open_at_shutdown_is_counted_and_logged_copying() {
    session_open_at_shutdown(&["--no-splice"]);
}

#[test]
fn a_proxy_session_still_open_at_shutdown_is_counted_and_logged_splicing_everything() {
    session_open_at_shutdown(&["--splice-always"]);
}

/// The proxy (as by default: small messages copied, bulk spliced; or with `extra` flags) with a session open past the drain.
fn session_open_at_shutdown(extra: &[&str]) {
    // The session stays open past the drain.
    let up_addr = echo_upstream().to_string();
    let mut proc = spawn_proxy(&up_addr, &[&["--drain", "300ms"], extra].concat());
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut c = client(addr);
    c.write_all(&[7u8; 1000]).unwrap();
    assert_eq!(read_n(&mut c, 1000), vec![7u8; 1000]);

    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    assert!(
        closed_by_server(&mut c),
        "the open session was closed at the end"
    );
    // The process has exited: read to the end of its output, not just what has arrived.
    let log: Vec<String> = lines.iter().collect();
    let session = record(&log, "session closed");
    assert!(
        session.contains("bytes_up 1000") && session.contains("bytes_down 1000"),
        "{session}"
    );
    assert!(session.contains("closed_first shutdown"), "{session}");
    let summary = record(&log, "stopped:");
    assert!(
        summary.contains("bytes_in=2000") && summary.contains("bytes_out=2000"),
        "{summary}"
    );
}

/// The log record whose message contains `what`, with its key-value lines (femme's
/// development format puts each on an indented line of its own) and without colours.
fn record(log: &[String], what: &str) -> String {
    let start = log
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {log:?}"));
    let mut text = log[start].clone();
    for l in log[start + 1..].iter().take_while(|l| l.starts_with(' ')) {
        text.push('\n');
        text.push_str(l);
    }
    strip_ansi(&text)
}

/// The rest of a child's log, line by line, read on a thread until it ends.
fn log_lines(
    log: std::io::BufReader<std::process::ChildStdout>,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

#[test]
fn a_proxy_out_of_descriptors_waits_for_one_and_blames_no_upstream() {
    proxy_out_of_descriptors("127.0.0.1");
}

#[test]
fn a_proxy_out_of_descriptors_blames_no_upstream_named_by_host_name() {
    // Resolving a name needs descriptors too (getaddrinfo opens /etc/hosts, sockets):
    // when it fails for want of one, that is as local as a failed connect. Before, the
    // runtime's wrapping hid the errno and the upstream was put in back-off.
    proxy_out_of_descriptors("localhost");
}

/// A proxy with 40 descriptors and an upstream named `host:PORT`: a burst of clients
/// larger than the descriptors left waits for them, and no upstream is blamed.
fn proxy_out_of_descriptors(host: &str) {
    let up_addr = format!("{host}:{}", echo_upstream().port());
    // The proxy with a few dozen descriptors: room for a handful of sessions (two each).
    let mut proc = proxy_with_nofile(&up_addr, 40, &[]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);

    // Sessions that hold their descriptors until the test lets them go.
    let mut held = Vec::new();
    for i in 0..4u8 {
        let mut c = client(addr);
        c.write_all(&[i]).unwrap();
        assert_eq!(read_n(&mut c, 1), [i]);
        held.push(c);
    }
    // A burst of clients, more than the descriptors left: the accept loop takes what it
    // can, and sessions find no descriptor for their upstream connect.
    let burst: Vec<_> = (0..24u8)
        .map(|i| {
            let mut c = client(addr);
            c.write_all(&[100 + i]).unwrap();
            std::thread::spawn(move || {
                // Served once a descriptor frees up, then gone, freeing its own.
                let got = read_n(&mut c, 1);
                assert_eq!(got, [100 + i], "client {i}");
            })
        })
        .collect();
    let mut log = Vec::new();
    wait_until("the proxy to say it is out of descriptors", || {
        log.extend(lines.try_iter());
        log.iter().any(|l| l.contains("out of descriptors here"))
    });
    // The sessions held end: every waiting client is served, none is dropped.
    drop(held);
    for b in burst {
        b.join().unwrap();
    }
    // And the upstream was never blamed.
    let mut late = client(addr);
    late.write_all(b"after").unwrap();
    assert_eq!(read_n(&mut late, 5), b"after");
    drop(late);
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter()); // to the end of the log: the process has exited
    let text = log.join("\n");
    assert!(!text.contains("skipping it"), "{text}");
    assert!(!text.contains("closing the client"), "{text}");
}

#[test]
fn a_proxy_out_of_descriptors_blames_no_host_name_upstream_while_sessions_churn() {
    // A lookup that failed for want of a descriptor (glibc says "Name or service not
    // known" and leaves EMFILE in errno) used to be checked by probing for a socket
    // afterwards; with sessions ending all the time that probe found one, and the
    // healthy upstream was put in back-off. Here clients come and go, each served or
    // waiting within --connect-timeout, a bounded number of times, while four sessions
    // hold descriptors so the proxy stays at its limit.
    const CHURNERS: usize = 16;
    const ROUNDS: usize = 60;
    let up_addr = format!("localhost:{}", echo_upstream().port());
    let mut proc = proxy_with_nofile(&up_addr, 40, &[]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut held = Vec::new();
    for i in 0..4u8 {
        let mut c = client(addr);
        c.write_all(&[i]).unwrap();
        assert_eq!(read_n(&mut c, 1), [i]);
        held.push(c);
    }
    let churn: Vec<_> = (0..CHURNERS)
        .map(|t| {
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    // Served (perhaps after waiting for a descriptor), then gone.
                    let mut c = client(addr);
                    c.write_all(b"c").unwrap();
                    assert_eq!(read_n(&mut c, 1), b"c", "churner {t}, round {r}");
                }
            })
        })
        .collect();
    for c in churn {
        c.join().unwrap();
    }
    // The held sessions still work, and so does a new one.
    for (i, c) in held.iter_mut().enumerate() {
        c.write_all(&[i as u8]).unwrap();
        assert_eq!(read_n(c, 1), [i as u8]);
    }
    drop(held);
    let mut late = client(addr);
    late.write_all(b"after").unwrap();
    assert_eq!(read_n(&mut late, 5), b"after");
    drop(late);
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    let text = lines.iter().collect::<Vec<_>>().join("\n");
    assert!(
        text.contains("out of descriptors here"),
        "never at the limit: {text}"
    );
    assert!(!text.contains("skipping it"), "{text}");
    assert!(!text.contains("closing the client"), "{text}");
}

/// A proxy to `upstream` with an open-files limit of `nofile`, a 60 s connect timeout
/// and a 60 s back-off, logging on a pipe; `global` goes before the subcommand (`-v`).
fn proxy_with_nofile(upstream: &str, nofile: u64, global: &[&str]) -> Proc {
    let mut cmd = binary();
    cmd.args(global)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--threads",
            "1",
            "--connect-timeout",
            "60s",
            "--backoff",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_open_files(&mut cmd, nofile);
    Proc(cmd.spawn().unwrap())
}

#[test]
fn a_stalled_stdout_at_shutdown_sends_the_last_lines_to_stderr() {
    // `switchboard proxy --tap | less`, left unscrolled: the pipe and the 1 MiB queue are
    // full when SIGTERM comes, so "shutting down", the summary and the dropped-lines
    // warning cannot go to stdout. They must reach stderr.
    let up_addr = echo_upstream().to_string();
    let mut proc = spawn_proxy(&up_addr, &["--tap", "--drain", "0"]);
    // The log is never read again; it stays open, full.
    let (addr, _unread_log) = listening_addr_and_log(&mut proc, "TCP");
    // 1 KiB ping-pongs: two tap lines of more than 1 KiB each per round trip, 3,000 of
    // them in all, well past what the pipes and the queue hold.
    let mut c = client(addr);
    let ping = vec![b'p'; 1024];
    for _ in 0..1500 {
        c.write_all(&ping).unwrap();
        assert_eq!(read_n(&mut c, ping.len()), ping);
    }
    drop(c);
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    let err = stderr_of(&mut proc);
    assert!(err.contains("lines dropped"), "{err}");
    assert!(err.contains("shutting down"), "{err}");
    assert!(
        err.contains("stopped: connections=1")
            && err.contains("bytes_in=3072000")
            && err.contains("bytes_out=3072000"),
        "{err}"
    );
}

#[test]
fn a_tapped_session_copies_and_logs_its_bytes_with_splice_on() {
    // --tap needs the bytes in user space, so a tapped session copies even with --splice:
    // each chunk is logged with its direction, and the session line counts the bytes.
    let up_addr = echo_upstream().to_string();
    let mut proc = spawn_proxy(&up_addr, &["--tap", "--splice"]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut c = client(addr);
    c.write_all(b"tapped bytes").unwrap();
    assert_eq!(read_n(&mut c, 12), b"tapped bytes");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c), b"");
    let mut log = Vec::new();
    wait_until("the session line", || {
        log.extend(lines.try_iter());
        log.iter().any(|l| l.contains("session closed"))
            && record(&log, "session closed").contains("closed_first")
    });
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let taps: Vec<String> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"tapped bytes\""))
        .map(|(i, _)| record(&log[i..], "\"tapped bytes\""))
        .collect();
    assert_eq!(taps.len(), 2, "{log:?}");
    assert!(
        taps[0].contains("direction client->server") && taps[0].contains("bytes 12"),
        "{}",
        taps[0]
    );
    assert!(
        taps[1].contains("direction server->client") && taps[1].contains("bytes 12"),
        "{}",
        taps[1]
    );
    let session = record(&log, "session closed");
    assert_eq!(field(&session, "bytes_up"), Some(12), "{session}");
    assert_eq!(field(&session, "bytes_down"), Some(12), "{session}");
}

/// The number after `key ` in a log record (femme's development format).
fn field(record: &str, key: &str) -> Option<u64> {
    record.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

#[test]
fn a_proxy_session_line_counts_bytes_delivered_not_bytes_read() {
    session_line_counts_delivered(&[]);
}

#[test]
fn a_proxy_session_line_counts_bytes_delivered_not_bytes_read_copying() {
    session_line_counts_delivered(&["--no-splice"]);
}

#[test]
fn a_proxy_session_line_counts_bytes_delivered_not_bytes_read_splicing_everything() {
    session_line_counts_delivered(&["--splice-always"]);
}

/// The proxy (as by default: small messages copied, bulk spliced; or with `extra` flags) with a client that resets into an
/// upstream that does not read.
fn session_line_counts_delivered(extra: &[&str]) {
    // A client pushes into an upstream that does not read, then resets: what the proxy
    // read and had queued for the upstream is never delivered. The session line must
    // say what the upstream got (and how much was dropped), not what was read.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap().to_string();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = upstream.accept() {
            let _ = held_tx.send(s); // kept unread by the test
        }
    });
    let mut proc = spawn_proxy(&up_addr, &[&["--threads", "1"], extra].concat());
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut c = client(addr);
    let mut up = held_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream was reached");
    // Write until a write makes no progress for 500 ms twice in a row: the proxy has
    // stopped reading, its mailbox (or, spliced, its pipe) to the upstream full.
    c.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut quiet_rounds = 0;
    while quiet_rounds < 2 {
        match c.write(&chunk) {
            Ok(_) => quiet_rounds = 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => quiet_rounds += 1,
        }
    }
    reset_on_close(&c);
    drop(c);
    let mut log = Vec::new();
    // The whole record: in debug builds its fields come as lines of their own, and
    // `closed_first` is the last of them.
    wait_until("the session line", || {
        log.extend(lines.try_iter());
        log.iter().any(|l| l.contains("session closed"))
            && record(&log, "session closed").contains("closed_first")
    });
    let session = record(&log, "session closed");
    // What the upstream gets, to the proxy's close.
    up.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match up.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading what the proxy delivered: {e}"),
        }
    }
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let summary = record(&log, "stopped:");
    let read: u64 = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_in=")?.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(session.contains("closed_first client reset"), "{session}");
    assert_eq!(field(&session, "bytes_up"), Some(got), "{session}");
    assert_eq!(field(&session, "bytes_down"), Some(0), "{session}");
    // The rest of what was read was dropped, and the line says so.
    let dropped = field(&session, "dropped_up").unwrap_or_else(|| panic!("{session}"));
    assert!(dropped > 0, "{session}");
    assert_eq!(got + dropped, read, "{session}\n{summary}");
    assert_eq!(field(&session, "dropped_down"), Some(0), "{session}");
}

#[test]
fn a_proxy_session_cut_by_the_fin_timeout_says_so_in_its_line() {
    session_cut_by_fin_timeout(&[]);
}

#[test]
fn a_proxy_session_cut_by_the_fin_timeout_says_so_in_its_line_copying() {
    session_cut_by_fin_timeout(&["--no-splice"]);
}

#[test]
fn a_proxy_session_cut_by_the_fin_timeout_says_so_in_its_line_splicing_everything() {
    session_cut_by_fin_timeout(&["--splice-always"]);
}

/// The proxy (as by default: small messages copied, bulk spliced; or with `extra` flags) with a quiet half-closed session.
fn session_cut_by_fin_timeout(extra: &[&str]) {
    // The upstream says hello and shuts its write half; the client reads and stays
    // quiet, its own half open: after --fin-timeout the proxy cuts the session, and its
    // line says the fin timeout cut it (closed_first still says who closed first).
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in upstream.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = (&s).write_all(b"hello\n");
                let _ = s.shutdown(std::net::Shutdown::Write);
                // Held open until the proxy closes it.
                let _ = std::io::copy(&mut &s, &mut std::io::sink());
            });
        }
    });
    let mut proc = spawn_proxy(&up_addr, &[&["--fin-timeout", "300ms"], extra].concat());
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut c = client(addr);
    assert_eq!(read_n(&mut c, 6), b"hello\n");
    // The server's FIN is carried over at once; the cut comes after the timeout, and the
    // line before shutdown (which would cut it too).
    assert!(
        closed_by_server(&mut c),
        "the server's FIN was carried over"
    );
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("session closed")) {
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("a session line before the deadline");
        log.push(line);
    }
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let session = record(&log, "session closed");
    assert!(session.contains("closed_first server FIN"), "{session}");
    assert!(session.contains("cut_by fin timeout"), "{session}");
    assert!(session.contains("bytes_down 6"), "{session}");
}

/// What a client sent is in the summary even when the process ends while the server
/// still waits to write to it: echo to a client that sends and never reads, then
/// SIGTERM. (The reader's count was once added only after the writer ended, which a
/// stalled client put off past the summary: `bytes_in=0` beside megabytes out.)
#[test]
fn a_summary_counts_what_a_stalled_client_sent() {
    let mut proc = spawn(&["echo", "--tcp", "127.0.0.1:0"]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let c = client_with_rcvbuf(addr, 4096);
    c.set_nonblocking(true).unwrap();
    // Send until neither the server's buffers nor ours take more: the server's writer
    // now waits on us, and its reader on the writer.
    let chunk = vec![b'e'; 64 * 1024];
    let mut sent = 0u64;
    let mut refused = 0;
    while refused < 20 {
        match (&c).write(&chunk) {
            Ok(n) => {
                sent += n as u64;
                refused = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("send: {e}"),
        }
        assert!(sent < 1 << 30, "the server never stopped taking bytes");
    }
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    let log: Vec<String> = lines.iter().collect();
    let summary = record(&log, "stopped:");
    let count = |key: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {summary}"))
    };
    let (bytes_in, bytes_out) = (count("bytes_in="), count("bytes_out="));
    assert!(bytes_in > 0 && bytes_in <= sent, "{summary} (sent {sent})");
    assert!(
        bytes_out <= bytes_in,
        "echo sent more than it got: {summary}"
    );
    drop(c);
}

/// `switchboard proxy` on 127.0.0.1 port 0 to `upstream`, with `flags`.
fn spawn_proxy(upstream: &str, flags: &[&str]) -> Proc {
    let args = [
        &["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream],
        flags,
    ]
    .concat();
    spawn(&args)
}

/// An echo server on test threads (one per connection), as an upstream for the proxy.
fn echo_upstream() -> std::net::SocketAddr {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in upstream.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s, &mut &s);
            });
        }
    });
    addr
}

#[test]
fn sessions_past_the_pipe_share_copy_and_every_byte_arrives() {
    // 48 open files: pipes may hold 12 descriptors (a quarter), six pipes. The upstream
    // reads nothing until told, so each session's client-to-upstream relay keeps its pipe
    // full; once the pipes are all held, a new session's relay cannot have one and the
    // session copies instead. When the upstream reads, every session's bytes arrive.
    const SENT: usize = 8 << 20;
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let (got_tx, got_rx) = std::sync::mpsc::channel::<(u8, usize, bool)>();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Accepted sockets take the listener's small receive buffer, so what the kernel
    // holds for an upstream that reads nothing is far less than a session sends.
    set_rcvbuf(&upstream, 4096);
    let up_addr = upstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        upstream.set_nonblocking(true).unwrap();
        // Accept until the gate opens, reading nothing.
        loop {
            match upstream.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) if gate_rx.try_recv().is_ok() => break,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for mut s in held {
            let got_tx = got_tx.clone();
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                let tag = got.first().copied().unwrap_or(0);
                let _ = got_tx.send((tag, got.len(), got.iter().all(|&b| b == tag)));
            });
        }
    });
    let mut proc = proxy_with_nofile(&up_addr, 48, &["-v"]);
    let (addr, log) = listening_addr_and_log(&mut proc, "TCP");
    let lines = log_lines(log);
    let mut log = Vec::new();
    let mut senders = Vec::new();
    let no_pipe = |log: &[String]| log.iter().any(|l| l.contains("no pipe for splicing"));
    for tag in 1..=10u8 {
        let c = client(addr);
        let mut w = c.try_clone().unwrap();
        senders.push((
            c,
            std::thread::spawn(move || {
                w.write_all(&vec![tag; SENT]).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            }),
        ));
        // Until this session's relay is stalled with its pipe full, or was refused one.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(300) && !no_pipe(&log) {
            log.extend(lines.try_iter());
            std::thread::sleep(Duration::from_millis(10));
        }
        if no_pipe(&log) {
            break;
        }
    }
    wait_until("a session refused a pipe", || {
        log.extend(lines.try_iter());
        no_pipe(&log)
    });
    let sessions = senders.len();
    assert!(sessions > 1, "the first session was refused a pipe");
    gate_tx.send(()).unwrap();
    for _ in 0..sessions {
        let (tag, len, same) = got_rx.recv_timeout(DEADLINE).expect("an upstream's bytes");
        assert!(
            len == SENT && same,
            "session {tag}: {len} bytes, all {tag}: {same}"
        );
    }
    for (mut c, sender) in senders {
        sender.join().unwrap();
        // The upstream closes after reading: the client sees the end.
        assert_eq!(read_to_end(&mut c), b"");
    }
    wait_until("every session line", || {
        log.extend(lines.try_iter());
        log.iter().filter(|l| l.contains("session closed")).count() == sessions
    });
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let summary = record(&log, "stopped:");
    assert!(
        summary.contains(&format!("bytes_in={}", sessions * SENT)),
        "{summary}"
    );
}

/// Sets `SO_RCVBUF` on a listener, which the sockets it accepts inherit.
fn set_rcvbuf(listener: &std::net::TcpListener, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket, a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_RCVBUF)");
}

#[test]
fn one_proxy_serves_every_listen_address_on_shared_or_pinned_threads() {
    use std::io::BufRead;
    let up_addr = echo_upstream().to_string();
    for threads in ["0", "2"] {
        let mut proc = spawn_proxy(&up_addr, &["--listen", "127.0.0.1:0", "--threads", threads]);
        let (first, log) = listening_addr_and_log(&mut proc, "TCP");
        // The second address is announced after the first.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            let mut line = String::new();
            let mut in_listening = false;
            while log.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.contains("listening") {
                    in_listening = line.contains("TCP");
                }
                if let Some(addr) = find_addr(&line).filter(|_| in_listening) {
                    let _ = tx.send(addr);
                    return;
                }
                line.clear();
            }
        });
        let second = rx
            .recv_timeout(DEADLINE)
            .expect("a second listening address");
        assert_ne!(first, second);
        for (i, addr) in [first, second].into_iter().enumerate() {
            let mut c = client(addr);
            let hello = format!("through listener {i}\n");
            c.write_all(hello.as_bytes()).unwrap();
            assert_eq!(
                read_n(&mut c, hello.len()),
                hello.as_bytes(),
                "threads {threads}"
            );
        }
        signal(&proc, libc::SIGTERM);
        assert!(wait_exit(&mut proc).success());
    }
    // The same address twice is refused before anything is bound (port 0 twice is two
    // ports, as above).
    let out = binary()
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:9",
        ])
        .args(["--upstream", &up_addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen 127.0.0.1:9 is given twice"), "{err}");
}
