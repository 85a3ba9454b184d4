//! `--log-format`: the servers' log in the format asked for, whatever the build.
//!
//! Try it: `switchboard echo --log-format json | jq -c '{msg, addr}'`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;

use common::*;
use serde_json::Value;

/// Every line of a child's stdout, read on a thread until it ends.
fn stdout_lines(proc: &mut Proc) -> Receiver<String> {
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads `lines` into `log` until one satisfies `want`; returns its index.
fn read_until(
    log: &mut Vec<String>,
    lines: &Receiver<String>,
    want: impl Fn(&str) -> bool,
) -> usize {
    if let Some(i) = log.iter().position(|l| want(l)) {
        return i;
    }
    loop {
        let line = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the line waited for never came; log so far: {log:?}"));
        log.push(line);
        if want(log.last().unwrap()) {
            return log.len() - 1;
        }
    }
}

/// Parses one log line as a JSON object with femme's ndjson members, or panics saying
/// which line is not.
fn json_record(line: &str) -> serde_json::Map<String, Value> {
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON value ({e}): {line:?}"));
    let Value::Object(record) = value else {
        panic!("not a JSON object: {line:?}");
    };
    // femme's order: level, time, msg first (a parsed map no longer says).
    let rest = line.strip_prefix("{\"level\":").unwrap_or("");
    let (level, rest) = rest.split_once(",\"time\":").unwrap_or_default();
    let (time, _) = rest.split_once(",\"msg\":\"").unwrap_or_default();
    assert!(
        ["10", "20", "30", "40", "50"].contains(&level),
        "not femme's level, time, msg: {line}"
    );
    assert!(
        !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit()),
        "{line}"
    );
    assert!(record["msg"].is_string(), "{line}");
    record
}

/// The JSON log record whose `msg` starts with `prefix`.
fn json_with_msg<'a>(
    records: &'a [serde_json::Map<String, Value>],
    prefix: &str,
) -> &'a serde_json::Map<String, Value> {
    records
        .iter()
        .find(|r| r["msg"].as_str().is_some_and(|m| m.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no record {prefix:?} in {records:?}"))
}

/// The address in the JSON `listening` record for `transport`.
fn listening(log: &mut Vec<String>, lines: &Receiver<String>, transport: &str) -> SocketAddr {
    let msg = format!("listening ({transport})");
    let i = read_until(log, lines, |l| l.contains(&msg));
    json_record(&log[i])["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn json_gives_one_valid_json_object_per_line_from_start_to_summary() {
    // The flag after the subcommand, as an operator adds it to a command line.
    let mut proc = spawn(&[
        "echo",
        "--tcp",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
        "-v",
        "--log-format",
        "json",
    ]);
    let lines = stdout_lines(&mut proc);
    let mut log = Vec::new();
    let tcp = listening(&mut log, &lines, "TCP");
    let udp = listening(&mut log, &lines, "UDP");

    let sent = b"a \"quoted\" \\ line\n";
    let mut c = client(tcp);
    c.write_all(sent).unwrap();
    assert_eq!(read_n(&mut c, sent.len()), sent);
    drop(c);
    let datagram = b"\x00\x1b[31m\xff";
    assert_eq!(udp_round_trip(udp, datagram), datagram);
    read_until(&mut log, &lines, |l| l.contains("connection closed"));

    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter()); // to the end of its output
    let records: Vec<_> = log.iter().map(|l| json_record(l)).collect();

    let listen = json_with_msg(&records, "listening (TCP)");
    assert_eq!(listen["role"], "echo");
    assert_eq!(listen["addr"], tcp.to_string());
    let summary = json_with_msg(&records, "stopped:");
    assert_eq!(summary["level"], 30);
    assert_eq!(summary["role"], "echo");
    assert!(summary["uptime_s"].is_u64(), "{summary:?}");
    let msg = summary["msg"].as_str().unwrap();
    let n = sent.len() + datagram.len();
    assert!(
        msg.contains(&format!(
            "connections=1 refused=0 datagrams=1 bytes_in={n} bytes_out={n}"
        )),
        "{msg}"
    );
    // -v still chooses the level: debug records are there.
    assert!(records.iter().any(|r| r["level"] == 20), "{log:?}");
}

#[test]
fn json_keeps_a_peers_quotes_backslashes_and_control_bytes_inside_the_string() {
    // The proxy's --tap logs what a peer sent: the line that carries it must stay one
    // valid JSON object whatever the bytes are.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in upstream.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s, &mut &s);
            });
        }
    });
    let mut proc = spawn(&[
        "--log-format",
        "json",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up_addr,
        "--tap",
    ]);
    let lines = stdout_lines(&mut proc);
    let mut log = Vec::new();
    let addr = listening(&mut log, &lines, "TCP");
    let text = "say \"hi\" \\ to\tall\r\n";
    let mut c = client(addr);
    c.write_all(text.as_bytes()).unwrap();
    assert_eq!(read_n(&mut c, text.len()), text.as_bytes());
    drop(c);
    read_until(&mut log, &lines, |l| l.contains("session closed"));
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let records: Vec<_> = log.iter().map(|l| json_record(l)).collect();

    // The tap shows the chunk as a Rust string literal; JSON carries it exactly.
    let shown = format!("{text:?}");
    let taps: Vec<_> = records.iter().filter(|r| r["msg"] == *shown).collect();
    assert_eq!(taps.len(), 2, "{log:?}");
    assert_eq!(taps[0]["direction"], "client->server");
    assert_eq!(taps[0]["bytes"], text.len());
}

#[test]
fn pretty_gives_the_coloured_form_in_any_build() {
    // The flag before the subcommand, as a global option.
    let mut proc = spawn(&["--log-format", "pretty", "echo", "--tcp", "127.0.0.1:0"]);
    let lines = stdout_lines(&mut proc);
    let mut log = Vec::new();
    let at = read_until(&mut log, &lines, |l| l.contains("listening (TCP)"));
    // Its two fields, each on an indented line of its own.
    while log.len() < at + 3 {
        log.push(
            lines
                .recv_timeout(DEADLINE)
                .expect("the listening record's fields"),
        );
    }
    let addr = find_addr(&log[at + 2]).expect("an address");
    assert_eq!(
        log[at..at + 3],
        [
            "\x1b[32m\x1b[1mswitchboard::net::listener\x1b[0m listening (TCP)".to_string(),
            "    \x1b[1mrole\x1b[0m echo".to_string(),
            format!("    \x1b[1maddr\x1b[0m {addr}"),
        ]
    );
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
    log.extend(lines.iter());
    let summary = log.iter().find(|l| l.contains("stopped:")).unwrap();
    assert!(summary.starts_with("\x1b[32m\x1b[1mswitchboard::service\x1b[0m stopped: "));
    // Nothing in JSON.
    assert!(!log.iter().any(|l| l.starts_with('{')), "{log:?}");
}

#[test]
fn pretty_is_what_auto_gives_in_a_debug_build() {
    // femme picks its pretty form in debug builds: ours must be the same bytes. (A
    // release build's auto is femme's JSON, which the test above checks as JSON.)
    if !cfg!(debug_assertions) {
        return;
    }
    let whole_log = |format: &str| {
        let mut proc = spawn(&["--log-format", format, "echo", "--tcp", "127.0.0.1:0"]);
        let lines = stdout_lines(&mut proc);
        let mut log = Vec::new();
        let at = read_until(&mut log, &lines, |l| l.contains("listening (TCP)"));
        while log.len() < at + 3 {
            log.push(lines.recv_timeout(DEADLINE).expect("the record's fields"));
        }
        let addr = find_addr(&log[at + 2]).expect("an address").to_string();
        signal(&proc, libc::SIGTERM);
        assert!(wait_exit(&mut proc).success());
        log.extend(lines.iter());
        // Its own port and uptime aside, the same lines.
        log.iter()
            .map(|l| {
                l.replace(&addr, "ADDR")
                    .replace(|c: char| c.is_ascii_digit(), "N")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(whole_log("pretty"), whole_log("auto"));
}
