//! Chat over real sockets: TCP and UDP users in one room, every command, abuse handling.

mod common;

use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown::{self, Trigger};
use switchboard::net::stats::Stats;
use switchboard::roles::chat::{self, broker::ChatConfig};
use switchboard::rt::{self, TcpListener};

struct Chat {
    tcp: SocketAddr,
    udp: SocketAddr,
    stats: Arc<Stats>,
    trigger: Option<Trigger>,
    done: Option<rt::JoinHandle<()>>,
}

impl Chat {
    fn stop(mut self) {
        self.trigger.take().unwrap().fire();
        rt::block_on(self.done.take().unwrap());
    }
}

fn start_chat(server: ServerConfig, config: ChatConfig) -> Chat {
    let (tcp, udp) = rt::block_on(async {
        (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            rt::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        )
    });
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let stats = Stats::new();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(chat::run(
        Some(tcp),
        Some(udp),
        server,
        config,
        stats.clone(),
        shutdown,
    ));
    Chat {
        tcp: tcp_addr,
        udp: udp_addr,
        stats,
        trigger: Some(trigger),
        done: Some(done),
    }
}

fn default_chat() -> Chat {
    start_chat(ServerConfig::default(), ChatConfig::default())
}

/// A UDP chat user.
struct UdpUser {
    s: UdpSocket,
    server: SocketAddr,
}

impl UdpUser {
    fn new(chat: &Chat) -> UdpUser {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        UdpUser {
            s,
            server: chat.udp,
        }
    }
    fn say(&self, text: &str) {
        self.s
            .send_to(format!("{text}\n").as_bytes(), self.server)
            .unwrap();
    }
    fn datagram(&self) -> String {
        let mut buf = vec![0; 70_000];
        let n = self.s.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }
    fn until(&self, want: &str) {
        while self.datagram() != format!("{want}\n") {}
    }
    /// Sends `text` and returns the next datagram, sending again every 500 ms until one
    /// comes: the server's receive buffer may have dropped it under a burst, as UDP may.
    fn ask(&self, text: &str) -> String {
        let start = std::time::Instant::now();
        self.s
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let answer = loop {
            assert!(start.elapsed() < DEADLINE, "no answer to {text:?}");
            self.say(text);
            let mut buf = vec![0; 70_000];
            if let Ok(n) = self.s.recv(&mut buf) {
                break String::from_utf8(buf[..n].to_vec()).unwrap();
            }
        };
        self.s.set_read_timeout(Some(DEADLINE)).unwrap();
        answer
    }
    /// Joins (the `/hello` handshake); returns the welcome.
    fn join(&self) -> String {
        let welcome = udp_chat_hello(&self.s, self.server);
        assert!(
            welcome.starts_with("* welcome to #lobby, you are guest"),
            "{welcome:?}"
        );
        welcome
    }
}

#[test]
fn tcp_and_udp_users_chat_in_one_room_with_every_command() {
    let chat = default_chat();
    let mut alice = User::join(chat.tcp);
    alice.nick("alice");
    let mut bob = User::join(chat.tcp);
    assert_eq!(alice.line(), format!("* {} joined", bob.nick));
    bob.nick("bob");
    assert_eq!(alice.line(), format!("* {} is now bob", "guest2"));

    // A UDP user joins with the /hello handshake and is in the same room.
    let carol = UdpUser::new(&chat);
    let welcome = carol.join();
    assert!(
        welcome.starts_with("* welcome to #lobby, you are guest"),
        "{welcome}"
    );
    carol.say("/nick carol");
    let guest = welcome.split(' ').nth(6).unwrap().to_string();
    assert_eq!(carol.datagram(), format!("* {guest} is now carol\n"));
    assert_eq!(alice.line(), format!("* {guest} joined"));
    assert_eq!(alice.line(), format!("* {guest} is now carol"));
    bob.until(&format!("* {guest} is now carol"));

    // Plain lines go to everyone else, not back to the sender.
    alice.say("hello all");
    assert_eq!(bob.line(), "<alice> hello all");
    assert_eq!(carol.datagram(), "<alice> hello all\n");
    carol.say("hi from udp");
    assert_eq!(alice.line(), "<carol> hi from udp");
    assert_eq!(bob.line(), "<carol> hi from udp");

    // /me, /msg (to a UDP user and back), unknown nick.
    bob.say("/me waves");
    assert_eq!(alice.line(), "* bob waves");
    assert_eq!(carol.datagram(), "* bob waves\n");
    alice.say("/msg Carol just for you");
    assert_eq!(carol.datagram(), "*alice* just for you\n");
    carol.say("/msg ALICE got it");
    assert_eq!(alice.line(), "*carol* got it");
    alice.say("/msg nobody hello?");
    assert_eq!(alice.line(), "! no such nick: nobody");

    // /who, /rooms, /join with notices in both rooms.
    alice.say("/who");
    assert_eq!(alice.line(), "* in #lobby: alice, bob, carol");
    bob.say("/join #Dev");
    assert_eq!(alice.line(), "* bob left for #dev");
    assert_eq!(carol.datagram(), "* bob left for #dev\n");
    assert_eq!(bob.line(), "* now in #dev");
    alice.say("/rooms");
    assert_eq!(alice.line(), "* rooms: #dev (1), #lobby (2)");
    alice.say("only the lobby hears this");
    assert_eq!(carol.datagram(), "<alice> only the lobby hears this\n");
    bob.say("/who");
    assert_eq!(bob.line(), "* in #dev: bob");

    // Errors go to the sender alone.
    alice.say("/frob");
    assert_eq!(alice.line(), "! unknown command: /frob (try /help)");
    alice.say("/msg bob");
    assert_eq!(alice.line(), "! usage: /msg NAME TEXT");
    alice.say("/nick no*stars");
    assert_eq!(
        alice.line(),
        "! invalid nick: use 1-32 letters, digits, _ or -"
    );
    alice.say("/join a b");
    assert_eq!(alice.line(), "! usage: /join ROOM");
    alice.say("//slash is literal");
    assert_eq!(carol.datagram(), "<alice> /slash is literal\n");
    alice.say("/help");
    assert_eq!(alice.line(), "* commands:");
    alice.until("*   //text           send a line that starts with /");

    // /quit: the room hears the reason, the quitter gets `* bye` and is closed.
    alice.say("/quit off to lunch");
    assert_eq!(alice.line(), "* bye");
    let mut rest = String::new();
    assert_eq!(
        alice.r.read_line(&mut rest).unwrap(),
        0,
        "closed after bye, got {rest:?}"
    );
    assert_eq!(carol.datagram(), "* alice left (off to lunch)\n");
    carol.say("/quit");
    assert_eq!(carol.datagram(), "* bye\n");
    bob.say("/join lobby");
    bob.until("* now in #lobby");
    bob.say("/who");
    assert_eq!(bob.line(), "* in #lobby: bob");
    chat.stop();
}

#[test]
fn nicks_are_unique_ignoring_case_across_transports() {
    let chat = default_chat();
    let mut alice = User::join(chat.tcp);
    alice.nick("Alice");
    let udp = UdpUser::new(&chat);
    udp.join();
    udp.say("/nick aLiCe");
    assert_eq!(udp.datagram(), "! nick taken: aLiCe\n");
    udp.say("/nick dave");
    udp.until("* guest2 is now dave");
    let mut other = User::join(chat.tcp);
    other.say("/nick DAVE");
    other.until("! nick taken: DAVE");
    // A client may change the case of its own nick.
    alice.say("/nick ALICE");
    alice.until("* Alice is now ALICE");
    // A nick is free again once its owner leaves.
    drop(alice);
    other.until("* ALICE left (connection closed)");
    other.nick("alice");
    chat.stop();
}

#[test]
fn two_hundred_clients_each_get_every_other_line_once_in_order() {
    const CLIENTS: usize = 200;
    const LINES: usize = 5;
    let chat = default_chat();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (barrier, joined) = (barrier.clone(), joined.clone());
            let addr = chat.tcp;
            std::thread::spawn(move || {
                let mut u = User::join(addr);
                joined.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                barrier.wait();
                for i in 0..LINES {
                    u.say(&format!("{} {i}", u.nick));
                }
                // Each other client's lines, exactly once and in its order.
                let mut next: std::collections::HashMap<String, usize> = Default::default();
                let mut got = 0;
                while got < (CLIENTS - 1) * LINES {
                    let l = u.line();
                    let Some(body) = l.strip_prefix('<') else {
                        continue;
                    };
                    let (from, text) = body.split_once("> ").unwrap();
                    assert_ne!(from, u.nick, "own line echoed");
                    let (who, i) = text.split_once(' ').unwrap();
                    assert_eq!(who, from);
                    let expected = next.entry(from.to_string()).or_insert(0);
                    assert_eq!(
                        i.parse::<usize>().unwrap(),
                        *expected,
                        "line from {from} out of order or twice"
                    );
                    *expected += 1;
                    got += 1;
                }
                assert_eq!(next.len(), CLIENTS - 1);
                assert!(next.values().all(|&n| n == LINES));
                u
            })
        })
        .collect();
    let users: Vec<User> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(chat.stats.active(), CLIENTS);
    drop(users);
    wait_until("every client to leave", || chat.stats.live_tasks() == 0);
    chat.stop();
}

#[test]
fn a_slow_consumer_is_evicted_while_others_keep_receiving() {
    let config = ChatConfig {
        sendq: 64,
        rate: 0.0,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut slow = User::join(chat.tcp);
    slow.nick("slow");
    let mut fast = User::join(chat.tcp);
    let mut sender = User::join(chat.tcp);
    fast.nick("fast");
    sender.nick("sender");
    fast.until("* guest3 is now sender");
    // `slow` stops reading. The sender sends far more than every buffer on the way
    // holds, in batches that `fast` confirms, so only `slow` falls behind.
    const N: usize = 4000;
    const BATCH: usize = 10;
    let text = "x".repeat(3000);
    let mut w = sender.w.try_clone().unwrap();
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            w.write_all(format!("{i} {text}\n").as_bytes()).unwrap();
            if i % BATCH == BATCH - 1 && ack_rx.recv_timeout(DEADLINE).is_err() {
                return;
            }
        }
    });
    let mut evicted = false;
    for i in 0..N {
        let mut l = fast.line();
        if l == "* slow left (send queue exceeded)" {
            evicted = true;
            l = fast.line();
        }
        assert!(
            l.starts_with(&format!("<sender> {i} ")),
            "{}",
            &l[..20.min(l.len())]
        );
        if i % BATCH == BATCH - 1 {
            let _ = ack_tx.send(());
        }
    }
    flood.join().unwrap();
    if !evicted {
        assert_eq!(fast.line(), "* slow left (send queue exceeded)");
    }
    // The evicted client's socket was cut off: it reaches EOF (or a reset) after
    // whatever was already buffered.
    slow.r.get_mut().set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slow.r, &mut sink);
    sender.say("/who");
    let skipped = sender.until("* in #lobby: fast, sender");
    assert_eq!(
        skipped,
        vec!["* slow left (send queue exceeded)".to_string()]
    );
    chat.stop();
}

#[test]
fn flooding_is_limited_with_one_warning_per_burst() {
    let config = ChatConfig {
        rate: 2.0,
        burst: 5,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut flooder = User::join(chat.tcp);
    let mut listener = User::join(chat.tcp);
    flooder.until(&format!("* {} joined", listener.nick));
    let mut burst = String::new();
    for i in 0..50 {
        burst.push_str(&format!("flood {i}\n"));
    }
    flooder.w.write_all(burst.as_bytes()).unwrap();
    assert_eq!(flooder.line(), "! slow down (lines are being dropped)");
    // Ask `/who` until one gets through: its reply means the broker has handled the
    // whole flood (a client's lines are handled in order). Reading on a thread lets us
    // wait with a timeout without losing half-read lines.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let mut reader = flooder.r;
    std::thread::spawn(move || {
        let mut l = String::new();
        while reader.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
            let _ = lines_tx.send(std::mem::take(&mut l));
        }
    });
    let start = std::time::Instant::now();
    let mut warnings = 1;
    'asking: loop {
        flooder.w.write_all(b"/who\n").unwrap();
        while let Ok(l) = lines_rx.recv_timeout(Duration::from_millis(300)) {
            if l.starts_with("* in #lobby") {
                break 'asking;
            }
            warnings += usize::from(l.starts_with("! slow down"));
        }
        assert!(start.elapsed() < DEADLINE, "never allowed to speak again");
    }
    assert_eq!(warnings, 1, "one warning per burst");
    // The listener's own /who reply comes after every flood line it was sent.
    listener.say("/who");
    let seen = listener.until(&format!("* in #lobby: {}, {}", flooder.nick, listener.nick));
    let floods: Vec<&String> = seen.iter().filter(|l| l.contains("> flood ")).collect();
    // The burst of 5, plus what the rate (2/s) refilled while the flood was read.
    assert!(
        (5..=7).contains(&floods.len()),
        "{} flood lines got through: {seen:?}",
        floods.len()
    );
    for (i, l) in floods.iter().enumerate() {
        assert_eq!(**l, format!("<{}> flood {i}", flooder.nick));
    }
    chat.stop();
}

#[test]
fn long_lines_control_characters_and_telnet_negotiation_are_handled() {
    let chat = default_chat();
    let mut a = User::join(chat.tcp);
    let mut b = User::join(chat.tcp);
    a.until(&format!("* {} joined", b.nick));
    let long = "y".repeat(5000);
    a.say(&long);
    assert_eq!(a.line(), "! line too long (the limit is 4096 bytes)");
    // Telnet negotiation and terminal escapes never reach others; CRLF works.
    a.w.write_all(b"\xff\xfb\x01\xff\xfa\x18\x00xterm\xff\xf0he\x1b[2Jl\x07lo\r\n")
        .unwrap();
    assert_eq!(b.line(), format!("<{}> he[2Jllo", a.nick));
    a.w.write_all(b"bad \xc3\x28 utf8\n").unwrap();
    assert_eq!(b.line(), format!("<{}> bad \u{FFFD}( utf8", a.nick));
    let exact = "z".repeat(4096);
    a.w.write_all(format!("{exact}\r\n").as_bytes()).unwrap();
    assert_eq!(b.line(), format!("<{}> {exact}", a.nick));
    chat.stop();
}

#[test]
fn a_udp_datagram_is_cut_into_lines_as_a_tcp_stream_is() {
    // The receive loop frames a datagram with the TCP readers' rules: `\r\n` or `\n`,
    // a blank line ignored, a line over the limit dropped and reported alone, and a last
    // line without a newline.
    let chat = default_chat();
    let mut alice = User::join(chat.tcp);
    let carol = UdpUser::new(&chat);
    let guest = carol.join().split(' ').nth(6).unwrap().to_string();
    assert_eq!(alice.line(), format!("* {guest} joined"));
    let long = "y".repeat(5000);
    carol
        .s
        .send_to(format!("one\r\n{long}\ntwo\n\nthree").as_bytes(), chat.udp)
        .unwrap();
    assert_eq!(
        carol.datagram(),
        "! line too long (the limit is 4096 bytes)\n"
    );
    for text in ["one", "two", "three"] {
        assert_eq!(alice.line(), format!("<{guest}> {text}"));
    }
    chat.stop();
}

#[test]
fn silent_udp_users_time_out() {
    let config = ChatConfig {
        udp_idle: Duration::from_millis(300),
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut watcher = User::join(chat.tcp);
    let udp = UdpUser::new(&chat);
    udp.join();
    udp.say("/nick ghost");
    watcher.until("* guest2 is now ghost");
    assert_eq!(watcher.line(), "* ghost left (timeout)");
    udp.until("* disconnected after 300ms of silence");
    chat.stop();
}

#[test]
fn shutdown_tells_everyone_before_closing() {
    let chat = default_chat();
    let mut a = User::join(chat.tcp);
    let udp = UdpUser::new(&chat);
    udp.join();
    udp.say("hello");
    a.until("<guest2> hello");
    let stats = chat.stats.clone();
    chat.stop();
    assert_eq!(a.line(), "* server shutting down");
    let mut rest = String::new();
    assert_eq!(a.r.read_line(&mut rest).unwrap(), 0);
    udp.until("* server shutting down");
    wait_until("connection tasks to end", || stats.live_tasks() == 0);
}

#[test]
fn a_full_server_says_so_before_closing() {
    let chat = start_chat(
        ServerConfig {
            max_conns: 1,
            ..Default::default()
        },
        ChatConfig::default(),
    );
    let _a = User::join(chat.tcp);
    let mut b = client(chat.tcp);
    assert_eq!(read_to_end(&mut b), b"! server full\n");
    chat.stop();
}

#[test]
fn udp_users_are_capped() {
    let config = ChatConfig {
        max_udp_users: 1,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let first = UdpUser::new(&chat);
    assert!(first.join().starts_with("* welcome to #lobby"));
    let second = UdpUser::new(&chat);
    assert_eq!(udp_chat_hello(&second.s, chat.udp), "! server full\n");
    chat.stop();
}

#[test]
fn a_raw_0xff_from_a_latin1_client_eats_nothing() {
    let chat = default_chat();
    let mut a = User::join(chat.tcp);
    let mut b = User::join(chat.tcp);
    a.until(&format!("* {} joined", b.nick));
    // A Latin-1 client's `5ÿ`, then a command on the next line: the 0xFF is not telnet.
    a.w.write_all(b"5\xff\n/who\n").unwrap();
    assert_eq!(b.line(), format!("<{}> 5\u{FFFD}", a.nick));
    assert_eq!(a.line(), format!("* in #lobby: {}, {}", a.nick, b.nick));
    chat.stop();
}

#[test]
fn an_unclosed_telnet_subnegotiation_does_not_swallow_the_connection() {
    let chat = default_chat();
    let mut a = User::join(chat.tcp);
    let mut b = User::join(chat.tcp);
    a.until(&format!("* {} joined", b.nick));
    // `IAC SB` never closed: after the cap, what follows is data again.
    let mut bytes = vec![0xff, 0xfa, 24];
    bytes.extend(std::iter::repeat_n(0u8, 300));
    bytes.extend_from_slice(b"\nstill heard\n");
    a.w.write_all(&bytes).unwrap();
    assert_eq!(b.line(), format!("<{}> still heard", a.nick));
    chat.stop();
}

#[test]
fn invisible_and_bidi_characters_never_reach_others() {
    let chat = default_chat();
    let mut a = User::join(chat.tcp);
    let mut b = User::join(chat.tcp);
    a.until(&format!("* {} joined", b.nick));
    a.say("a\u{200B}d\u{200D}m\u{2060}i\u{FEFF}n\u{200E} \u{200F}o\u{061C}k\u{2028}a\u{2029}y\u{E0041}\u{E007F}!");
    assert_eq!(b.line(), format!("<{}> admin okay!", a.nick));
    chat.stop();
}

#[test]
fn udp_bytes_are_in_bytes_out_while_running_and_after_shutdown() {
    use std::sync::atomic::Ordering::Relaxed;
    let chat = default_chat();
    let udp = UdpUser::new(&chat);
    udp.say("hello");
    let challenge = udp.datagram();
    let token = udp_chat_token(&challenge);
    udp.say(&format!("/hello {token}"));
    let mut received = (challenge.len() + udp.datagram().len()) as u64; // and the welcome
    let stats = chat.stats.clone();
    wait_until("the challenge and the welcome to be counted", || {
        stats.bytes_out.load(Relaxed) == received
    });
    chat.stop();
    let bye = udp.datagram();
    assert_eq!(bye, "* server shutting down\n");
    received += bye.len() as u64;
    // Once the server has stopped and its tasks have ended (what the process waits for
    // before its summary), every byte sent is counted.
    wait_until("every task to end", || stats.live_tasks() == 0);
    assert_eq!(stats.bytes_out.load(Relaxed), received);
}

/// A chat client that reads only when told to: it connects with a receive buffer of
/// 4 KiB (asked for before connecting, so the kernel never grows it), so once it stops
/// reading, it stalls after a few lines.
struct Stalled {
    s: std::net::TcpStream,
    /// The last bytes read, to find a marker line in.
    tail: Vec<u8>,
}

impl Stalled {
    fn connect(addr: SocketAddr) -> Stalled {
        // A small receive buffer, and segments to match (loopback's 64 KiB segments
        // would not fit, and the window would reopen only on the persist timer).
        let s = client_with_options(
            addr,
            &[
                (libc::SOL_SOCKET, libc::SO_RCVBUF, 16 * 1024),
                (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1400),
            ],
        );
        s.set_nonblocking(true).unwrap();
        Stalled {
            s,
            tail: Vec::new(),
        }
    }

    /// Reads what is there; whether the last line read is one of `markers`.
    fn read_to(&mut self, markers: &[String], buf: &mut [u8]) -> bool {
        loop {
            match std::io::Read::read(&mut self.s, buf) {
                Ok(0) => panic!(
                    "a stalled client was closed while it was being read: {:?}",
                    String::from_utf8_lossy(&self.tail)
                ),
                Ok(n) => {
                    self.tail.extend_from_slice(&buf[..n]);
                    let keep = self.tail.len().saturating_sub(256);
                    self.tail.drain(..keep);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("stalled client: {e}"),
            }
        }
        markers.iter().any(|m| self.tail.ends_with(m.as_bytes()))
    }
}

/// Reads every client until the last line each has read is one of `markers`.
fn read_all_to(clients: &mut [Stalled], markers: &[String]) {
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut waiting: Vec<&mut Stalled> = clients.iter_mut().collect();
    while !waiting.is_empty() {
        assert!(
            start.elapsed() < DEADLINE,
            "{} clients never got {markers:?}",
            waiting.len()
        );
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|c| libc::pollfd {
                fd: c.s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll on a correctly sized array of pollfd for open descriptors.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        let mut i = 0;
        while i < waiting.len() {
            if fds[i].revents != 0 && waiting[i].read_to(markers, &mut buf) {
                waiting.swap_remove(i);
                fds.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

#[test]
fn a_mass_eviction_of_5000_stalled_clients_spares_every_healthy_one() {
    const STALLED: usize = 5000;
    const HEALTHY: usize = 5;
    // Stalled clients join in batches; between batches all are read up to the last join
    // notice, so no queue holds more than a batch.
    const BATCH: usize = 500;
    const SENDQ: usize = BATCH + 100;
    // Each client is two descriptors in this process (ours and the server's).
    let limit = switchboard::net::limits::raise_nofile_limit().unwrap_or(0);
    let needed = (2 * (STALLED + HEALTHY) + 500) as u64;
    if limit < needed {
        eprintln!(
            "SKIPPED a_mass_eviction_of_5000_stalled_clients_spares_every_healthy_one: \
             it needs {needed} open files and the hard limit allows {limit}"
        );
        return;
    }
    let config = ChatConfig {
        sendq: SENDQ,
        rate: 0.0,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);

    let mut stalled: Vec<Stalled> = Vec::with_capacity(STALLED);
    while stalled.len() < STALLED {
        for _ in 0..BATCH {
            stalled.push(Stalled::connect(chat.tcp));
        }
        // Once the n-th join is done, everyone has its notice last, but the n-th client
        // itself (whichever that is: joins are numbered as the broker takes them), which
        // has its welcome last.
        let n = stalled.len();
        let markers = [
            format!("* guest{n} joined\n"),
            format!("* welcome to #lobby, you are guest{n} (type /help for commands)\n"),
        ];
        read_all_to(&mut stalled, &markers);
    }
    // The healthy clients join last, and read everything from here on.
    let mut healthy: Vec<User> = (0..HEALTHY).map(|_| User::join(chat.tcp)).collect();
    for (i, u) in healthy.iter_mut().enumerate() {
        u.nick(&format!("h{i}"));
    }
    for u in &mut healthy[..HEALTHY - 1] {
        u.until(&format!(
            "* guest{} is now h{}",
            STALLED + HEALTHY,
            HEALTHY - 1
        ));
    }
    healthy[0].say("ready");
    for u in &mut healthy[1..] {
        assert_eq!(u.line(), "<h0> ready");
    }
    // Every stalled client's queue is empty now; from here on none of them reads.
    read_all_to(&mut stalled, &["<h0> ready\n".to_string()]);
    assert_eq!(chat.stats.active(), STALLED + HEALTHY);

    // Each healthy client's lines go to a channel, read by a thread of its own.
    let mut writers = Vec::new();
    let mut inboxes = Vec::new();
    for u in healthy {
        writers.push(u.w);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let mut r = u.r;
        std::thread::spawn(move || {
            let mut l = String::new();
            while r.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
                if tx.send(std::mem::take(&mut l)).is_err() {
                    return;
                }
            }
        });
        inboxes.push(rx);
    }
    // The healthy clients take turns to speak, in lock step: each line is read by all the
    // others before the next is sent. The stalled clients' sockets and queues fill at the
    // same line, and they are evicted together. Every healthy client must get every line,
    // exactly once and in order, and nothing else but departure notices, which must
    // count every stalled client once, in a few lines.
    let text = "x".repeat(1000);
    let mut departed = vec![0usize; HEALTHY];
    let mut notices = vec![0usize; HEALTHY];
    let mut i = 0;
    while departed.iter().any(|&d| d < STALLED) {
        assert!(
            i < 5 * SENDQ,
            "{i} lines sent and only {departed:?} stalled clients gone"
        );
        let from = i % HEALTHY;
        writers[from]
            .write_all(format!("{i} {text}\n").as_bytes())
            .unwrap();
        let want = format!("<h{from}> {i} {text}\n");
        for (to, inbox) in inboxes.iter().enumerate() {
            if to == from {
                continue;
            }
            loop {
                let l = inbox
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|_| panic!("h{to} got no line {i} (or was closed)"));
                if l == want {
                    break;
                }
                departed[to] += departures(&l)
                    .unwrap_or_else(|| panic!("h{to} got {:?}", &l[..l.len().min(80)]));
                notices[to] += 1;
            }
        }
        i += 1;
    }
    assert!(departed.iter().all(|&d| d == STALLED), "{departed:?}");
    assert!(notices.iter().all(|&n| n < 100), "{notices:?} notices");
    writers[0].write_all(b"/who\n").unwrap();
    let who = inboxes[0].recv_timeout(DEADLINE).unwrap();
    assert_eq!(who, "* in #lobby: h0, h1, h2, h3, h4\n");
    wait_until("the evicted clients' connections to end", || {
        chat.stats.active() == HEALTHY
    });
    drop(stalled);
    chat.stop();
}

/// How many departures a notice line announces: `* NICK left (send queue exceeded)` or
/// `* N users left (send queue exceeded)`; `None` for anything else.
fn departures(line: &str) -> Option<usize> {
    let rest = line
        .strip_prefix("* ")?
        .strip_suffix(" left (send queue exceeded)\n")?;
    match rest.strip_suffix(" users").or(rest.strip_suffix(" user")) {
        Some(n) => n.parse().ok(),
        None => rest.starts_with("guest").then_some(1),
    }
}

#[test]
fn an_unknown_udp_address_gets_only_a_short_challenge_and_joins_with_its_token() {
    let chat = default_chat();
    let mut watcher = User::join(chat.tcp);
    let alice = UdpUser::new(&chat);
    // Whatever an unknown address sends, it gets the challenge and nothing else, and
    // nobody hears of it.
    alice.say("hi");
    let challenge = alice.datagram();
    let token = udp_chat_token(&challenge);
    assert_eq!(challenge, format!("* to join, send: /hello {token}\n"));
    alice.s.send_to(b"", chat.udp).unwrap();
    assert_eq!(alice.datagram(), challenge, "same address, same window");
    // Another address cannot use that token, nor a wrong one: it is challenged in turn.
    let mallory = UdpUser::new(&chat);
    mallory.say(&format!("/hello {token}"));
    let other = udp_chat_token(&mallory.datagram());
    assert_ne!(other, token);
    mallory.say("/hello 0123456789abcdef");
    assert_eq!(
        mallory.datagram(),
        format!("* to join, send: /hello {other}\n")
    );
    watcher.say("/who");
    assert_eq!(watcher.line(), format!("* in #lobby: {}", watcher.nick));
    // The token joins; the rest of its datagram is the user's first line.
    alice.say(&format!("/hello {token}\nfirst words"));
    assert_eq!(
        alice.datagram(),
        "* welcome to #lobby, you are guest2 (type /help for commands)\n"
    );
    assert_eq!(watcher.line(), "* guest2 joined");
    assert_eq!(watcher.line(), "<guest2> first words");
    // Once joined, a /hello is just a reminder.
    alice.say(&format!("/hello {token}"));
    assert_eq!(alice.datagram(), "* already joined as guest2\n");
    chat.stop();
}

#[test]
fn udp_challenges_are_rate_limited_globally() {
    let config = ChatConfig {
        udp_challenge_rate: 2.0,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let chat = start_chat(ServerConfig::default(), config);
    let control = UdpUser::new(&chat);
    control.join();
    // 300 fresh addresses (as a spoofer would forge) each send an empty datagram.
    let sources: Vec<UdpSocket> = (0..300)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"", chat.udp).unwrap();
            s
        })
        .collect();
    // The server handles datagrams in order and sends in order: once the control user's
    // answer is here, every reply to the sources has been sent (and, on loopback, is in
    // their sockets). (Asked again if the burst overflowed the server's receive buffer.)
    assert_eq!(control.ask("/who"), "* in #lobby: guest1\n");
    let elapsed = started.elapsed().as_secs_f64();
    let mut replies = 0;
    let mut buf = [0u8; 100];
    for s in &sources {
        s.set_nonblocking(true).unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            udp_chat_token(std::str::from_utf8(&buf[..n]).unwrap());
            replies += 1;
        }
    }
    // At most the burst (2) and the rate (2/s) since the server started, less the
    // control user's own challenge; nobody joined.
    let bound = 2.0 + 2.0 * elapsed;
    assert!(
        replies >= 1 && f64::from(replies) <= bound,
        "{replies} challenges in {elapsed:.2} s"
    );
    chat.stop();
}

#[test]
fn udp_joins_are_rate_limited_globally() {
    let config = ChatConfig {
        udp_join_rate: 0.001, // one join now, the next in 1,000 s
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut watcher = User::join(chat.tcp);
    let first = UdpUser::new(&chat);
    first.join();
    watcher.until("* guest2 joined");
    let second = UdpUser::new(&chat);
    assert_eq!(
        udp_chat_hello(&second.s, chat.udp),
        "! too many joins, try again shortly\n"
    );
    watcher.say("/who");
    assert_eq!(watcher.line(), "* in #lobby: guest1, guest2");
    chat.stop();
}

#[test]
fn a_validated_udp_users_welcome_is_never_dropped() {
    use std::os::fd::AsRawFd;
    const SOURCES: usize = 800;
    let config = ChatConfig {
        udp_join_rate: 0.0, // no limits: as many joins at once as possible
        udp_joins_per_ip: 0.0,
        udp_challenge_rate: 0.0,
        max_udp_users_per_ip: SOURCES,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let socks: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    // Each gets its challenge (nobody has joined, so nothing else is queued).
    let mut buf = vec![0u8; 70_000];
    let tokens: Vec<String> = socks
        .iter()
        .map(|s| {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.send_to(b"hi\n", chat.udp).unwrap();
            let n = s.recv(&mut buf).unwrap();
            udp_chat_token(std::str::from_utf8(&buf[..n]).unwrap())
        })
        .collect();
    // All answer at once. Each join is a notice to every user already in: far more than
    // the send queue holds, so most notices are dropped — but no welcome may be. A source
    // the server could not take yet hears nothing and asks again, as a UDP client would.
    let hello = |i: usize| {
        socks[i]
            .send_to(format!("/hello {}\n", tokens[i]).as_bytes(), chat.udp)
            .unwrap();
    };
    (0..SOURCES).for_each(hello);
    let mut pending: Vec<usize> = (0..SOURCES).collect();
    let mut nicks = std::collections::HashSet::new();
    let start = std::time::Instant::now();
    let mut asked = std::time::Instant::now();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    while !pending.is_empty() {
        assert!(
            start.elapsed() < DEADLINE,
            "{} sources never got a welcome",
            pending.len()
        );
        if asked.elapsed() > Duration::from_millis(500) {
            pending.iter().for_each(|&i| hello(i));
            asked = std::time::Instant::now();
        }
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd {
                fd: socks[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll on a correctly sized array of pollfd for open descriptors.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        pending.retain(|&i| {
            let Ok(n) = socks[i].recv(&mut buf) else {
                return true;
            };
            // The first datagram after the challenge is the welcome.
            let d = std::str::from_utf8(&buf[..n]).unwrap();
            let nick = d
                .strip_prefix("* welcome to #lobby, you are ")
                .and_then(|r| r.strip_suffix(" (type /help for commands)\n"))
                .unwrap_or_else(|| panic!("source {i} got {d:?} before a welcome"));
            assert!(nicks.insert(nick.to_string()), "{nick} welcomed twice");
            false
        });
    }
    assert_eq!(nicks.len(), SOURCES);
    chat.stop();
}

/// `n` UDP users from `ip` (ports chosen by the kernel), joined with the `/hello`
/// handshake as a crowd: every socket asks at once, and any that heard nothing asks again
/// after a while, as a UDP client would. Returns them nonblocking, with nothing unread
/// that was sent before the last of them joined: one of them asks `/rooms`, whose answer
/// comes through the same send queue after every join notice (asked again if dropped).
fn udp_crowd(chat: &Chat, ip: &str, n: usize) -> Vec<UdpSocket> {
    use std::os::fd::AsRawFd;
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| {
            let s = UdpSocket::bind((ip, 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut buf = vec![0u8; 70_000];
    let start = std::time::Instant::now();
    // Whether socket i has what it waits for; `ask` sends its request.
    let mut phase = |ask: &dyn Fn(usize), got: &dyn Fn(&str, usize) -> bool| {
        let mut pending: Vec<usize> = (0..n).collect();
        let mut asked = std::time::Instant::now() - Duration::from_secs(1);
        while !pending.is_empty() {
            assert!(
                start.elapsed() < DEADLINE * 3,
                "{} of {n} UDP users never answered",
                pending.len()
            );
            if asked.elapsed() > Duration::from_millis(500) {
                pending.iter().for_each(|&i| ask(i));
                asked = std::time::Instant::now();
            }
            let mut fds: Vec<libc::pollfd> = pending
                .iter()
                .map(|&i| libc::pollfd {
                    fd: socks[i].as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: poll on a correctly sized array of pollfd for open descriptors.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            pending.retain(|&i| {
                let mut done = false;
                while let Ok(len) = socks[i].recv(&mut buf) {
                    done |= got(std::str::from_utf8(&buf[..len]).unwrap(), i);
                }
                !done
            });
        }
    };
    let tokens: Vec<std::cell::RefCell<String>> = (0..n)
        .map(|_| std::cell::RefCell::new(String::new()))
        .collect();
    phase(
        &|i| {
            socks[i].send_to(b"hi\n", chat.udp).unwrap();
        },
        &|d, i| {
            *tokens[i].borrow_mut() = udp_chat_token(d);
            true
        },
    );
    phase(
        &|i| {
            let hello = format!("/hello {}\n", tokens[i].borrow());
            socks[i].send_to(hello.as_bytes(), chat.udp).unwrap();
        },
        &|d, _| d.starts_with("* welcome to #lobby, you are ") || d.starts_with("* already joined"),
    );
    // Every join notice is queued before this answer; once it is here, all are in the
    // sockets, and are read away.
    let last = &socks[n - 1];
    let rooms = loop {
        last.send_to(b"/rooms\n", chat.udp).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        let mut answer = None;
        while answer.is_none() && std::time::Instant::now() < deadline {
            match last.recv(&mut buf) {
                Ok(len) if buf[..len].starts_with(b"* rooms: ") => {
                    answer = Some(String::from_utf8(buf[..len].to_vec()).unwrap())
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(start.elapsed() < DEADLINE * 3, "no answer to /rooms");
        if let Some(answer) = answer {
            break answer;
        }
    };
    assert!(rooms.contains("#lobby ("), "{rooms:?}");
    for s in &socks {
        while s.recv(&mut buf).is_ok() {}
    }
    socks
}

#[test]
fn every_one_of_1500_udp_users_gets_every_line_and_the_goodbye() {
    const USERS: usize = 1500;
    const LINES: usize = 5;
    let config = ChatConfig {
        udp_join_rate: 0.0, // the test's own crowd joins as fast as it can
        udp_joins_per_ip: 0.0,
        udp_challenge_rate: 0.0,
        max_udp_users: USERS,
        max_udp_users_per_ip: USERS,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut talker = User::join(chat.tcp);
    let socks = udp_crowd(&chat, "127.0.0.1", USERS);
    // Each line is one job for the send actor, however many users it goes to.
    for i in 0..LINES {
        talker.say(&format!("line {i}"));
    }
    talker.say("/who");
    // Once the answer is here, every line has been handed to the send actor.
    while !talker.line().starts_with("* in #lobby: ") {}
    chat.stop();
    let mut want: Vec<String> = (0..LINES)
        .map(|i| format!("<{}> line {i}\n", talker.nick))
        .collect();
    want.push("* server shutting down\n".into());
    let mut buf = vec![0u8; 70_000];
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        for w in &want {
            let len = s
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("UDP user {i} of {USERS} did not get {w:?}: {e}"));
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), w, "UDP user {i}");
        }
    }
}

/// The `/hello` handshake from `sock` (nonblocking or not), sending again every 500 ms
/// until answered: a flood from elsewhere may overflow the server's receive buffer.
/// Returns the answer to `/hello` (the welcome, unless refused).
fn udp_hello_retrying(sock: &UdpSocket, server: SocketAddr) -> String {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 70_000];
    let mut ask = |what: &[u8]| loop {
        assert!(start.elapsed() < DEADLINE, "no answer from {server}");
        sock.send_to(what, server).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            break String::from_utf8(buf[..n].to_vec()).unwrap();
        }
    };
    let token = udp_chat_token(&ask(b"hello, server\n"));
    let answer = ask(format!("/hello {token}\n").as_bytes());
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    answer
}

#[test]
fn a_host_churning_joins_from_many_ports_cannot_starve_another_hosts_join() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let config = ChatConfig {
        udp_join_rate: 10.0,
        udp_joins_per_ip: 0.001, // one join per source, the next in 1,000 s
        udp_challenge_rate: 0.0,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let mut watcher = User::join(chat.tcp);
    // 127.0.0.1 gets tokens for 20 ports, then sends `/hello TOKEN` and `/quit` from each,
    // again and again: every datagram a join and a leave, if the server allowed it.
    let bots: Vec<(UdpSocket, String)> = (0..20)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.send_to(b"hi\n", chat.udp).unwrap();
            let mut buf = [0u8; 100];
            let n = s.recv(&mut buf).unwrap();
            let token = udp_chat_token(std::str::from_utf8(&buf[..n]).unwrap());
            s.set_nonblocking(true).unwrap();
            (s, token)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, refused, server) = (stop.clone(), refused.clone(), chat.udp);
        std::thread::spawn(move || {
            let mut buf = [0u8; 200];
            while !stop.load(Ordering::Relaxed) {
                for (s, token) in &bots {
                    let _ = s.send_to(format!("/hello {token}\n/quit churn\n").as_bytes(), server);
                    while let Ok(n) = s.recv(&mut buf) {
                        if buf[..n].starts_with(b"! too many joins") {
                            refused.store(true, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    wait_until("the churning host to be refused", || {
        refused.load(Ordering::Relaxed)
    });
    // Three other hosts join at the first try each, while the churn goes on.
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let s = UdpSocket::bind((ip, 0)).unwrap();
        let answer = udp_hello_retrying(&s, chat.udp);
        assert!(
            answer.starts_with("* welcome to #lobby, you are guest"),
            "{ip}: {answer:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    // The churning host joined (and quit) once; the three are in.
    watcher.say("/who");
    let who = loop {
        let l = watcher.line();
        if l.starts_with("* in #lobby: ") {
            break l;
        }
    };
    assert_eq!(who.split(", ").count(), 1 + 3, "{who}");
    chat.stop();
}

#[test]
fn a_datagram_of_14_bytes_is_challenged_whatever_floods_the_server() {
    let config = ChatConfig {
        udp_challenge_rate: 0.001, // one short reply now, the next in 1,000 s
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let control = UdpUser::new(&chat);
    control.join(); // its `hi` takes the budget for replies to short datagrams
    // A flood of 3-byte datagrams from 300 fresh addresses: far beyond the budget.
    let flood: Vec<UdpSocket> = (0..300)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"hi\n", chat.udp).unwrap();
            s
        })
        .collect();
    // A new address whose first line is 13 bytes gets nothing (its challenge, 41 bytes,
    // would be more than three times that); one whose first line is 14 bytes gets it.
    let short = UdpSocket::bind("127.0.0.1:0").unwrap();
    short.send_to(b"hello there\r\n", chat.udp).unwrap();
    let long = UdpSocket::bind("127.0.0.1:0").unwrap();
    long.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // (Sent again if the burst overflowed the server's receive buffer.)
    let started = std::time::Instant::now();
    let mut buf = [0u8; 100];
    let n = loop {
        assert!(started.elapsed() < DEADLINE, "no challenge for 14 bytes");
        long.send_to(b"hello, there\r\n", chat.udp).unwrap();
        if let Ok(n) = long.recv(&mut buf) {
            break n;
        }
    };
    long.set_read_timeout(Some(DEADLINE)).unwrap();
    // Replies go out in order: once the control user's answer is here, the others are
    // in their sockets.
    assert_eq!(control.ask("/who"), "* in #lobby: guest1\n");
    let token = udp_chat_token(std::str::from_utf8(&buf[..n]).unwrap());
    assert_eq!(
        &buf[..n],
        format!("* to join, send: /hello {token}\n").as_bytes()
    );
    short.set_nonblocking(true).unwrap();
    assert!(
        short.recv(&mut buf).is_err(),
        "a 13-byte datagram was answered"
    );
    let answered = flood
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            s.recv(&mut buf).is_ok()
        })
        .count();
    assert_eq!(
        answered, 0,
        "3-byte datagrams were answered beyond the budget"
    );
    // The long one joins with its token.
    long.send_to(format!("/hello {token}\n").as_bytes(), chat.udp)
        .unwrap();
    let n = long.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"* welcome to #lobby, you are guest2"));
    chat.stop();
}

#[test]
fn answers_to_a_udp_users_commands_are_paid_for_by_the_bytes_it_sent() {
    use switchboard::roles::chat::broker::{REPLY_ALLOWANCE, REPLY_REFILL};
    let chat = default_chat();
    // Sixty TCP users with 32-character nicks: a `/who` of about 2 KB.
    let mut room: Vec<User> = (0..60)
        .map(|i| {
            let mut u = User::join(chat.tcp);
            u.nick(&format!("u{i:0>31}"));
            u
        })
        .collect();
    let started = std::time::Instant::now();
    let udp = UdpUser::new(&chat);
    udp.join();
    // One datagram asks `/who` 30 times (within the burst of 40 lines): 150 bytes that
    // would have been answered with some 62 KB, toward an address anyone can forge.
    let ask = "/who\n".repeat(30);
    udp.s.send_to(ask.as_bytes(), chat.udp).unwrap();
    let help = "/help\n";
    udp.s.send_to(help.as_bytes(), chat.udp).unwrap();
    // A rename after them, which the room (the user too) hears: the server handles one
    // address's datagrams in order, so every answer has been sent once it arrives.
    let rename = "/nick marker\n";
    udp.s.send_to(rename.as_bytes(), chat.udp).unwrap();
    let mut answers = Vec::new();
    loop {
        let d = udp.datagram();
        if d == "* guest61 is now marker\n" {
            break;
        }
        answers.push(d);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // What came from the address since it joined: `/hello TOKEN\n` and the three above.
    let hello = "/hello 0123456789abcdef\n".len();
    let sent = (hello + ask.len() + help.len() + rename.len()) as f64;
    let bytes: usize = answers.iter().map(String::len).sum();
    let bound = 3.0 * sent + REPLY_ALLOWANCE as f64 + REPLY_REFILL as f64 * elapsed;
    assert!(
        bytes as f64 <= bound,
        "{bytes} bytes answered {sent} bytes in {elapsed:.1} s"
    );
    // The first `/who` is whole; the one that no longer fits is cut, with a count.
    let names: Vec<String> = room.iter().map(|u| u.nick.clone()).collect();
    let mut sorted = names.clone();
    sorted.push("guest61".into());
    sorted.sort_by_key(|n| n.to_ascii_lowercase());
    assert_eq!(answers[0], format!("* in #lobby: {}\n", sorted.join(", ")));
    let cut = answers
        .iter()
        .find(|a| a.starts_with("* in #lobby: ") && a.ends_with(" more)\n"))
        .expect("a /who cut to what the budget allows");
    assert!(cut.contains(" … (+"), "{cut:?}");
    // (The short /help may come after the budget ran out: it is not asked for here.)
    drop(room.drain(..));
    chat.stop();
}

#[test]
fn a_udp_users_help_is_one_short_datagram() {
    let chat = default_chat();
    let udp = UdpUser::new(&chat);
    udp.join();
    udp.say("/help");
    assert_eq!(
        udp.datagram(),
        "* commands: /nick NAME, /msg NAME TEXT, /who, /join ROOM, /rooms, /me TEXT, /quit [REASON], //text\n"
    );
    chat.stop();
}

#[test]
fn one_host_cannot_take_every_udp_place() {
    let config = ChatConfig {
        max_udp_users_per_ip: 2,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    let first = UdpUser::new(&chat);
    first.join();
    UdpUser::new(&chat).join();
    let third = UdpUser::new(&chat);
    assert_eq!(
        udp_chat_hello(&third.s, chat.udp),
        "! too many users from your address\n"
    );
    // Another host still gets in.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    let welcome = udp_chat_hello(&other, chat.udp);
    assert!(
        welcome.starts_with("* welcome to #lobby, you are guest"),
        "{welcome:?}"
    );
    // A place freed is a place for the host again.
    first.say("/quit");
    first.until("* bye");
    let welcome = udp_chat_hello(&third.s, chat.udp);
    assert!(
        welcome.starts_with("* welcome to #lobby, you are guest"),
        "{welcome:?}"
    );
    chat.stop();
}

#[test]
fn a_stalled_client_asking_who_is_evicted_by_its_queued_bytes() {
    let config = ChatConfig {
        rate: 0.0,
        sendq: 1_000_000, // never reached: the bytes are the bound here
        sendq_bytes: 64 * 1024,
        ..Default::default()
    };
    let chat = start_chat(ServerConfig::default(), config);
    // Thirty users with 32-character nicks: each `/who` is about 1 KB.
    let mut room: Vec<User> = (0..30)
        .map(|i| {
            let mut u = User::join(chat.tcp);
            u.nick(&format!("u{i:0>31}"));
            u
        })
        .collect();
    // A client that never reads (a 4 KiB receive buffer) asks `/who` 20,000 times:
    // some 20 MB of answers, in 20,000 lines.
    let mut stalled = client_with_rcvbuf(chat.tcp, 4096);
    let watcher = &mut room[0];
    watcher.until("* guest31 joined");
    let _ = stalled.write_all("/who\n".repeat(20_000).as_bytes());
    watcher.until("* guest31 left (send queue exceeded)");
    watcher.say("/who");
    let who = watcher.line();
    assert!(who.starts_with("* in #lobby: u0"), "{who}");
    assert!(!who.contains("guest31"), "{who}");
    drop(stalled);
    chat.stop();
}

#[test]
fn nobody_can_pass_for_the_server() {
    let chat = default_chat();
    let mut mallory = User::join(chat.tcp);
    let mut victim = User::join(chat.tcp);
    mallory.until(&format!("* {} joined", victim.nick));
    mallory.say("/nick server");
    assert_eq!(mallory.line(), "! that nick is reserved");
    mallory.say("/nick SERVER");
    assert_eq!(mallory.line(), "! that nick is reserved");
    mallory.say("/nick 1500");
    assert_eq!(
        mallory.line(),
        "! invalid nick: it must start with a letter"
    );
    // Renaming to the nick one has is no news for the room.
    let nick = mallory.nick.clone();
    mallory.say(&format!("/nick {nick}"));
    assert_eq!(mallory.line(), format!("* you are already {nick}"));
    mallory.say("/me is still here");
    assert_eq!(victim.line(), format!("* {nick} is still here"));
    chat.stop();
}
