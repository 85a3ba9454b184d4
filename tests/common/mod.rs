//! Helpers shared by the integration tests: start a role on 127.0.0.1 port 0, wait on a
//! condition with a deadline, run the built binary, make reproducible random bytes.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod certs;
pub mod prom;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::role::{self, NewSession};
use switchboard::rt::{self, TcpListener, UdpSocket};

/// Generous: tests must pass on a loaded 2-core machine. Only failures wait this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A role running in this process.
pub struct Server {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub stats: Arc<Stats>,
    trigger: Option<Trigger>,
    done: Option<rt::JoinHandle<()>>,
}

impl Server {
    /// Fires the shutdown and waits until the accept and receive loops have stopped.
    pub fn stop(mut self) -> Arc<Stats> {
        self.trigger.take().unwrap().fire();
        rt::block_on(self.done.take().unwrap());
        self.stats.clone()
    }
}

/// Starts `role` on TCP and UDP 127.0.0.1 port 0.
pub fn start_role<R: NewSession>(role: R, config: ServerConfig) -> Server {
    let (tcp, udp) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(role::run(
        Arc::new(role),
        Some(tcp),
        Some(udp),
        Arc::new(config),
        stats.clone(),
        shutdown,
    ));
    Server {
        tcp: tcp_addr,
        udp: udp_addr,
        stats,
        trigger: Some(trigger),
        done: Some(done),
    }
}

/// Polls `cond` until it holds, panicking with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A connected blocking client with a read timeout of [`DEADLINE`].
pub fn client(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends one datagram to `server` and returns the one that answers it.
pub fn udp_round_trip(server: SocketAddr, data: &[u8]) -> Vec<u8> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.send_to(data, server).unwrap();
    let mut buf = vec![0; 70_000];
    let n = sock.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Reads until the peer closes (panics on a timeout).
pub fn read_to_end(s: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    buf
}

/// Whether the server closed this connection: EOF or reset, within [`DEADLINE`].
pub fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// Reproducible pseudo-random bytes (xorshift64*), so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The built `switchboard` binary.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// A spawned binary, killed when dropped so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `switchboard ARGS` with piped stdio.
pub fn spawn(args: &[&str]) -> Proc {
    Proc(
        binary()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Reads the child's log (stdout) until a "listening" line names an address; returns it.
/// A thread keeps draining the log afterwards so the server never blocks on a full pipe.
pub fn listening_addr(proc: &mut Proc, transport: &str) -> SocketAddr {
    let (addr, mut log) = listening_addr_and_log(proc, transport);
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
    addr
}

/// Like [`listening_addr`], but hands back the rest of the log, unread: the caller reads
/// it, or closes it, or leaves it full.
pub fn listening_addr_and_log(
    proc: &mut Proc,
    transport: &str,
) -> (SocketAddr, BufReader<ChildStdout>) {
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let transport = transport.to_string();
    std::thread::spawn(move || {
        let mut log = BufReader::new(stdout);
        let mut in_listening = false;
        let mut line = String::new();
        loop {
            line.clear();
            match log.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.contains("listening") {
                in_listening = line.contains(&transport);
            }
            if let Some(addr) = find_addr(&line).filter(|_| in_listening) {
                let _ = tx.send((addr, log));
                return;
            }
        }
    });
    rx.recv_timeout(DEADLINE)
        .expect("the server never said where it listens")
}

/// The first `127.0.0.1:PORT` in a line.
pub fn find_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Waits for the child to exit, at most [`DEADLINE`]; returns its status.
pub fn wait_exit(proc: &mut Proc) -> std::process::ExitStatus {
    let mut status = None;
    wait_until("the process to exit", || {
        status = proc.0.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

/// Everything the child wrote to stderr, to its end (the child has exited or will).
pub fn stderr_of(proc: &mut Proc) -> String {
    let mut err = String::new();
    proc.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Makes the process `cmd` starts run with at most `n` open files (soft and hard limit).
pub fn limit_open_files(cmd: &mut Command, n: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends a signal to the child.
pub fn signal(proc: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(proc.0.id() as i32, sig);
    }
}

/// Makes closing `s` send a reset instead of a FIN (SO_LINGER with a zero timeout).
pub fn reset_on_close(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// A TCP chat user: joins, and reads the server's lines with [`DEADLINE`] as the read
/// timeout (set by [`client`]).
pub struct User {
    pub w: std::net::TcpStream,
    pub r: BufReader<std::net::TcpStream>,
    pub nick: String,
}

impl User {
    /// Connects to the chat at `addr` and checks the welcome, which names the nick.
    pub fn join(addr: SocketAddr) -> User {
        let s = client(addr);
        let mut u = User {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            nick: String::new(),
        };
        let welcome = u.line();
        let nick = welcome
            .strip_prefix("* welcome to #lobby, you are ")
            .and_then(|r| r.split(' ').next());
        u.nick = nick
            .unwrap_or_else(|| panic!("unexpected greeting {welcome:?}"))
            .to_string();
        assert_eq!(
            welcome,
            format!(
                "* welcome to #lobby, you are {} (type /help for commands)",
                u.nick
            )
        );
        u
    }
    pub fn say(&mut self, text: &str) {
        self.w.write_all(format!("{text}\n").as_bytes()).unwrap();
    }
    /// The next line, without its `\n`; panics at EOF or after the deadline.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.r.read_line(&mut l).unwrap() > 0, "unexpected EOF");
        assert!(l.ends_with('\n'), "line without newline: {l:?}");
        l.pop();
        l
    }
    /// Skips lines until one equals `want`; returns the ones skipped.
    pub fn until(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            let l = self.line();
            if l == want {
                return skipped;
            }
            skipped.push(l);
        }
    }
    pub fn nick(&mut self, nick: &str) {
        let old = self.nick.clone();
        self.say(&format!("/nick {nick}"));
        self.until(&format!("* {old} is now {nick}"));
        self.nick = nick.to_string();
    }
}

/// A connected blocking client with socket options set before connecting (so the window
/// it offers, or the segment size, holds from the first byte): `(level, option, value)`
/// for `setsockopt`. Read timeout [`DEADLINE`].
pub fn client_with_options(
    addr: SocketAddr,
    options: &[(libc::c_int, libc::c_int, libc::c_int)],
) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: a new socket we own, handed at once to TcpStream, which closes it;
    // setsockopt with a correctly sized int; connect with a correctly filled sockaddr_in.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let s = std::net::TcpStream::from_raw_fd(fd);
        for &(level, option, value) in options {
            let rc = libc::setsockopt(
                fd,
                level,
                option,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sin as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        s
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A connected blocking client whose receive buffer is `bytes` (set before connecting,
/// so the window it offers stays that small): a client that stops reading fills it at
/// once, and the server's writes then wait. Read timeout [`DEADLINE`].
pub fn client_with_rcvbuf(addr: SocketAddr, bytes: i32) -> std::net::TcpStream {
    client_with_options(addr, &[(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)])
}

/// Reads until EOF or a reset, after the server has closed: how many bytes came first.
/// (A reset is how a close with our unread input in its buffer arrives.)
pub fn drain_to_close(s: &mut std::net::TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return total;
            }
            Err(e) => panic!("the connection did not close: {e}"),
        }
    }
}

/// What a UDP chat server answers an address that has not joined:
/// `* to join, send: /hello TOKEN`. Returns the token; panics on anything else.
pub fn udp_chat_token(challenge: &str) -> String {
    let token = challenge
        .strip_prefix("* to join, send: /hello ")
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a challenge: {challenge:?}"));
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{challenge:?}"
    );
    assert!(
        challenge.len() < 64,
        "a challenge of {} bytes",
        challenge.len()
    );
    token.to_string()
}

/// The UDP chat handshake from `sock` (which has a read timeout): sends `hi`, expects the
/// challenge, answers `/hello TOKEN` and returns the server's next datagram (the welcome,
/// unless the server refused).
pub fn udp_chat_hello(sock: &std::net::UdpSocket, server: SocketAddr) -> String {
    let mut buf = vec![0u8; 70_000];
    sock.send_to(b"hi\n", server).unwrap();
    let n = sock.recv(&mut buf).expect("no challenge");
    let token = udp_chat_token(std::str::from_utf8(&buf[..n]).unwrap());
    sock.send_to(format!("/hello {token}\n").as_bytes(), server)
        .unwrap();
    let n = sock.recv(&mut buf).expect("no answer to /hello");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// `text` without its ANSI colour sequences (ESC [ ... m), as the debug log prints them.
pub fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Raises this process's descriptor limit so `want` silent clients (two descriptors
/// each here: theirs and the proxy's) fit; how many fit.
pub fn raise_open_files(want: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let needed = (want as libc::rlim_t) * 2 + 512;
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    let fit = ((limit.rlim_cur.saturating_sub(512)) / 2) as usize;
    if fit < want {
        eprintln!(
            "descriptor limit {}: {fit} silent clients, not {want}",
            limit.rlim_cur
        );
    }
    fit.min(want)
}

/// A program on PATH that an interop test drives (`redis-server`, `chromium`): its path,
/// or `None` after saying on stderr that `test` did not run. Under CI (`CI=true`, as
/// `.ci/run` sets it, having installed the program) its absence is a failure instead.
pub fn program_on_path(name: &str, test: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{name} is not installed and CI=true: {test} cannot run (.ci/run installs {name} with apt-get)"
            )
        }
        None => {
            eprintln!("SKIPPED: {name} is not installed; {test} did not run");
            None
        }
    }
}

/// A spawned binary whose log (stdout, one line each) is collected as it comes, so a
/// test can wait for lines and read it all at the end.
pub struct Logged {
    pub proc: Proc,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Spawns `cmd` (the binary with its arguments and environment) with piped stdio.
    pub fn spawn(mut cmd: Command) -> Logged {
        let mut proc = Proc(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = proc.0.stdout.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Logged { proc, log }
    }

    /// Waits until a log line contains every one of `want`; returns it.
    pub fn wait_line(&self, want: &[&str]) -> String {
        let mut found = None;
        wait_until(&format!("a log line with {want:?}"), || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| want.iter().all(|w| l.contains(w)))
                .cloned();
            found.is_some()
        });
        found.unwrap()
    }

    /// The address in the first log line containing every one of `want`.
    pub fn addr(&self, want: &[&str]) -> SocketAddr {
        let line = self.wait_line(want);
        find_addr(&line).unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// The log so far.
    pub fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}
