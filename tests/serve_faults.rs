//! `switchboard serve` and `check` as an operator and a hostile client meet them (found by
//! an attack review): every service's summary at the end, a SIGHUP during the drain, a
//! service named like the admin listener, values that start with a dash, and a slow
//! client of the admin listener.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A config file in a fresh temporary directory, removed when dropped.
struct Config {
    dir: PathBuf,
}

impl Config {
    fn new(tag: &str, text: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-serve-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("serve.toml"), text).unwrap();
        Config { dir }
    }

    fn path(&self) -> String {
        self.dir.join("serve.toml").display().to_string()
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `switchboard --log-format json serve FILE`, and a thread that hands on each log line.
fn serve(config: &Config) -> (Proc, mpsc::Receiver<String>) {
    let mut proc = spawn(&["--log-format", "json", "serve", &config.path()]);
    let stdout: ChildStdout = proc.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (proc, rx)
}

/// Log lines until one contains `want`; returns it.
fn until(log: &mpsc::Receiver<String>, want: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(want) => return line,
            Ok(_) => {}
            Err(_) => panic!("the log never said {want:?}"),
        }
    }
}

/// The address of the next "listening (TCP)" line for `role`.
fn listening(log: &mpsc::Receiver<String>, role: &str) -> SocketAddr {
    let want = format!("\"role\":\"{role}\"");
    loop {
        let line = until(log, "listening (TCP)");
        if line.contains(&want) {
            return find_addr(&line).unwrap();
        }
    }
}

/// The rest of the log, to the process's exit.
fn rest(log: &mpsc::Receiver<String>) -> Vec<String> {
    log.iter().collect()
}

fn check(config: &Config) -> (bool, String) {
    let out = binary()
        .args(["check", "--no-bind", &config.path()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Idle services have nothing to drain: each one's summary must still be written before
/// the process exits (a drain that was over was dropped from the list the end waits for).
#[test]
fn every_service_logs_its_summary_at_shutdown() {
    let mut text = String::new();
    for i in 0..6 {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nrole = \"echo\"\ntcp = \"127.0.0.{}:0\"\n\n",
            i + 1
        );
    }
    let config = Config::new("summaries", &text);
    for _ in 0..3 {
        let (mut proc, log) = serve(&config);
        until(&log, "\"serving\"");
        signal(&proc, libc::SIGTERM);
        assert!(wait_exit(&mut proc).success());
        let summaries = rest(&log)
            .into_iter()
            .filter(|l| l.contains("\"stopped: "))
            .count();
        assert_eq!(summaries, 6, "one summary line per service");
    }
}

/// A SIGHUP (`switchboard reload` from a cron job) while the proxy drains its sessions
/// is not a second SIGTERM: the session goes on.
#[test]
fn sighup_during_the_drain_does_not_cut_it_short() {
    let upstream = StdListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    thread::spawn(move || {
        for conn in upstream.incoming().take(1) {
            let mut conn = conn.unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let config = Config::new(
        "drain",
        &format!(
            "[[service]]\nname = \"px\"\nrole = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream_addr}\"\ndrain = \"20s\"\n"
        ),
    );
    let (mut proc, log) = serve(&config);
    // Listening means the signal handlers are in place (they come first). ("serving"
    // may come before or after this line: the accept loops log from their own tasks.)
    let addr = listening(&log, "proxy");
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"one\n").unwrap();
    assert_eq!(read_n(&mut client, 4), b"one\n");
    signal(&proc, libc::SIGTERM);
    until(&log, "shutting down");
    signal(&proc, libc::SIGHUP);
    until(&log, "SIGHUP while stopping");
    // The session still carries bytes after the SIGHUP.
    client.write_all(b"two\n").unwrap();
    assert_eq!(read_n(&mut client, 4), b"two\n");
    drop(client);
    assert!(wait_exit(&mut proc).success());
    let log = rest(&log);
    assert!(!log.iter().any(|l| l.contains("second signal")), "{log:#?}");
}

/// A service may be named like the admin listener's description; it is still another
/// owner of the address.
#[test]
fn a_service_named_the_admin_listener_is_not_the_admin_listener() {
    // A port of our own (held, so nothing else takes it); check finds the clash before
    // it would bind anything.
    let held = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let config = Config::new(
        "admin-name",
        &format!(
            "[admin]\nlisten = \"{addr}\"\n\n[[service]]\nname = \"the admin listener\"\nrole = \"hello\"\ntcp = \"{addr}\"\n"
        ),
    );
    let (ok, err) = check(&config);
    assert!(!ok);
    assert!(
        err.contains("is also service \"the admin listener\"'s"),
        "{err}"
    );
}

/// A value that starts with a dash is the key's value, as `--message=-x` is on the
/// command line, not a flag of its own.
#[test]
fn values_may_start_with_a_dash() {
    let config = Config::new(
        "dash",
        "[[service]]\nrole = \"hello\"\ntcp = \"127.0.0.1:0\"\nmessage = \"-- welcome --\"\n\n[[service]]\nrole = \"chat\"\ntcp = \"127.0.0.2:0\"\nrate = -1\n",
    );
    let (ok, err) = check(&config);
    assert!(!ok);
    // Only the chat's rate is wrong, and it is the chat's own check that says so.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--rate 0 or more"), "{err}");

    let config = Config::new(
        "dash-serve",
        "[[service]]\nrole = \"hello\"\ntcp = \"127.0.0.1:0\"\nmessage = \"-- welcome --\"\n",
    );
    let (mut proc, log) = serve(&config);
    let addr = listening(&log, "hello");
    let mut client = TcpStream::connect(addr).unwrap();
    assert_eq!(read_to_end(&mut client), b"-- welcome --\n");
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
}

/// The admin listener gives a request head ten seconds in all, not ten seconds a read:
/// a client that sends a byte a second is closed in time.
#[test]
fn admin_closes_a_trickling_client_at_the_head_deadline() {
    let config = Config::new("slow", "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let (mut proc, log) = serve(&config);
    let addr = listening(&log, "admin");
    let mut slow = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let mut closed = None;
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*byte]).is_err() {
            closed = Some(started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(500));
        if started.elapsed() > Duration::from_secs(25) {
            break;
        }
    }
    // Per read, the 10 s would never run out at a byte every 500 ms.
    assert!(closed.is_some(), "the trickling client was never closed");
    // And the listener still answers.
    let mut probe = TcpStream::connect(addr).unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let answer = read_to_end(&mut probe);
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    signal(&proc, libc::SIGTERM);
    assert!(wait_exit(&mut proc).success());
}

/// A key that `requires` another (`proxy_from` needs `accept_proxy`) is not judged alone:
/// with both in the table the file checks, and a proxy behind a balancer can be served.
/// Without `accept_proxy`, the check of all keys together still says it is needed.
#[test]
fn a_key_that_requires_another_is_accepted_beside_it() {
    let table = "[[service]]\nrole = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstream = [\"127.0.0.1:1\"]\nproxy_from = [\"127.0.0.0/8\"]\n";
    let config = Config::new("requires", &format!("{table}accept_proxy = true\n"));
    let (ok, err) = check(&config);
    assert!(ok, "{err}");
    let config = Config::new("requires-missing", table);
    let (ok, err) = check(&config);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("accept_proxy: is required"), "{err}");
}
