//! `chat --cluster`: several chat processes and one real Redis (`redis-server` from PATH,
//! started here on a free port with `--save "" --appendonly no`, and stopped) behaving
//! as one chat server. Each test uses its own `--cluster-prefix`.
//!
//! Without redis-server a test says SKIPPED and passes, so `cargo test` on a bare machine
//! passes; under CI (`CI=true`, as `.ci/run` sets it) it fails instead, saying so.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};

use common::*;

/// A redis-server on a free port, killed when dropped.
struct Redis {
    proc: Option<Proc>,
    port: u16,
    extra: Vec<String>,
}

/// The redis-server in PATH, or `None` after saying why the test did not run.
fn redis_server(test: &str) -> Option<String> {
    program_on_path("redis-server", test).map(|p| p.to_string_lossy().into_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start(test: &str) -> Option<Redis> {
        Redis::start_with(test, &[])
    }

    fn start_with(test: &str, extra: &[&str]) -> Option<Redis> {
        redis_server(test)?;
        let mut redis = Redis {
            proc: None,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.up();
        Some(redis)
    }

    /// Starts it (again) on its port and waits until it answers.
    fn up(&mut self) {
        let path = redis_server("redis").unwrap();
        let port = self.port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        // (`{port}` in an extra argument is this server's port: `--tls-port {port}`.)
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|a| a.replace("{port}", &port))
            .collect();
        args.extend(extra.iter().map(String::as_str));
        let child = Command::new(path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_until("redis-server to answer", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Kills it (as a crash would).
    fn down(&mut self) {
        drop(self.proc.take());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command over RESP and returns the raw reply.
    fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut s = client(SocketAddr::from(([127, 0, 0, 1], self.port)));
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).unwrap();
        let mut reply = vec![0u8; 4096];
        let n = s.read(&mut reply).unwrap();
        reply.truncate(n);
        reply
    }
}

/// A chat process in the cluster; its log (JSON lines) is collected as it comes.
struct Node {
    proc: Logged,
    tcp: SocketAddr,
    udp: SocketAddr,
}

impl Node {
    /// Starts `switchboard chat` on free ports in the cluster at `url` (lease 2 s) and
    /// waits until it listens.
    fn start(url: &str, prefix: &str, name: &str, extra: &[&str]) -> Node {
        Node::start_with_env(url, prefix, name, extra, &[])
    }

    /// As [`Node::start`], with environment variables set for the process.
    fn start_with_env(
        url: &str,
        prefix: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let mut args = vec![
            "chat",
            "--tcp",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--cluster",
            url,
            "--cluster-prefix",
            prefix,
            "--node-name",
            name,
        ];
        if !extra.contains(&"--cluster-lease") {
            args.extend_from_slice(&["--cluster-lease", "2s"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = binary();
        cmd.args(&args).envs(env.iter().copied());
        let proc = Logged::spawn(cmd);
        Node {
            tcp: proc.addr(&["listening (TCP)"]),
            udp: proc.addr(&["listening (UDP)"]),
            proc,
        }
    }

    /// Waits until a log line contains `text`; returns it.
    fn wait_log(&self, text: &str) -> String {
        self.proc.wait_line(&[text])
    }

    /// Starts a node and waits until it has joined the cluster.
    fn joined(url: &str, prefix: &str, name: &str) -> Node {
        let node = Node::start(url, prefix, name, &[]);
        node.wait_log("chat: cluster joined");
        node
    }

    fn user(&self) -> User {
        User::join(self.tcp)
    }

    fn log_text(&self) -> String {
        self.proc.text()
    }
}

/// Asks `/who` until the answer is `want` (other nodes' members show once they have
/// registered).
fn who_until(user: &mut User, want: &str) {
    let mut last = String::new();
    wait_until(&format!("/who to say {want:?} (last: {last:?})"), || {
        user.say("/who");
        loop {
            let l = user.line();
            if l.starts_with("* in #") {
                last = l;
                break;
            }
        }
        last == want
    });
}

/// What `/who` says for these names in `room` (sorted ignoring case).
fn who_line(room: &str, names: &[&str]) -> String {
    let mut names = names.to_vec();
    names.sort_by_key(|n| n.to_ascii_lowercase());
    format!("* in #{room}: {}", names.join(", "))
}

#[test]
fn three_nodes_deliver_every_line_once_in_order_to_every_member() {
    let test = "three_nodes_deliver_every_line_once_in_order_to_every_member";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-order";
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::joined(&redis.url(), prefix, n))
        .collect();
    raise_open_files(1024);
    const CLIENTS: usize = 200;
    const SENDERS: usize = 20;
    const LINES: usize = 20;
    let mut users: Vec<User> = (0..CLIENTS).map(|i| nodes[i % 3].user()).collect();
    // Everyone registered everywhere: each node's /who lists all 200.
    for node in &nodes {
        let mut probe = node.user();
        wait_until("every node to see every user", || {
            probe.say("/rooms");
            let l = loop {
                let l = probe.line();
                if l.starts_with("* rooms:") {
                    break l;
                }
            };
            // (The probe itself is the one more.)
            l == format!("* rooms: #lobby ({})", CLIENTS + 1)
        });
        drop(probe);
    }
    let senders: Vec<String> = users[..SENDERS].iter().map(|u| u.nick.clone()).collect();
    let readers: Vec<_> = users
        .drain(..)
        .enumerate()
        .map(|(i, mut user)| {
            let senders = senders.clone();
            std::thread::spawn(move || {
                if i < SENDERS {
                    for n in 0..LINES {
                        user.say(&format!("m {n}"));
                    }
                    user.say("done");
                }
                let mut next = [0usize; SENDERS];
                let mut done = [false; SENDERS];
                if i < SENDERS {
                    done[i] = true; // (its own lines do not come back)
                }
                while !done.iter().all(|d| *d) {
                    let l = user.line();
                    let Some(rest) = l.strip_prefix('<') else {
                        continue; // joins and departures
                    };
                    let (nick, text) = rest.split_once("> ").unwrap();
                    let s = senders
                        .iter()
                        .position(|n| n == nick)
                        .unwrap_or_else(|| panic!("{l}"));
                    assert_ne!(s, i, "a sender got its own line back: {l}");
                    assert!(!done[s], "{} after its done: {l}", senders[s]);
                    if text == "done" {
                        assert_eq!(
                            next[s], LINES,
                            "{} done after {} lines",
                            senders[s], next[s]
                        );
                        done[s] = true;
                    } else {
                        assert_eq!(
                            text,
                            format!("m {}", next[s]),
                            "out of order or twice from {}",
                            senders[s]
                        );
                        next[s] += 1;
                    }
                }
                user
            })
        })
        .collect();
    let users: Vec<User> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(users.len(), CLIENTS);
    for node in &nodes {
        assert!(
            !node.log_text().contains("cluster link lost"),
            "{}",
            node.log_text()
        );
    }
}

#[test]
fn nicks_msg_who_rooms_and_notices_work_across_nodes() {
    let test = "nicks_msg_who_rooms_and_notices_work_across_nodes";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-commands";
    let (a, b) = (
        Node::joined(&redis.url(), prefix, "a"),
        Node::joined(&redis.url(), prefix, "b"),
    );
    let mut alice = a.user();
    let mut bob = b.user();
    // Guest numbers come from one sequence: no two nodes hand out the same.
    assert_ne!(alice.nick, bob.nick);
    alice.until(&format!("* {} joined", bob.nick));
    let guest = alice.nick.clone();
    alice.nick("Alice");
    bob.until(&format!("* {guest} is now Alice"));
    // Held on node a, ignoring case: node b's user cannot take it.
    bob.say("/nick alice");
    assert_eq!(bob.line(), "! nick taken: alice");
    let guest = bob.nick.clone();
    bob.nick("bob");
    alice.until(&format!("* {guest} is now bob"));

    // A UDP user on node b, in the same cluster.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(DEADLINE)).unwrap();
    let welcome = udp_chat_hello(&udp, b.udp);
    let carol_guest = welcome
        .strip_prefix("* welcome to #lobby, you are ")
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    alice.until(&format!("* {carol_guest} joined"));
    udp.send_to(b"/nick carol\n", b.udp).unwrap();
    alice.until(&format!("* {carol_guest} is now carol"));

    // Lines, /me and /msg cross; /msg to nobody says so.
    alice.say("hello from a");
    bob.until(&format!("* {carol_guest} is now carol"));
    assert_eq!(bob.line(), "<Alice> hello from a");
    alice.say("/me waves");
    assert_eq!(bob.line(), "* Alice waves");
    alice.say("/msg BOB psst");
    assert_eq!(bob.line(), "*Alice* psst");
    alice.say("/msg nobody hi");
    assert_eq!(alice.until("! no such nick: nobody"), Vec::<String>::new());
    bob.say("/msg alice back");
    assert_eq!(alice.line(), "*bob* back");
    alice.say("/msg carol over udp");
    let mut buf = [0u8; 2048];
    let got = loop {
        let n = udp.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        if got.starts_with("*Alice*") {
            break got;
        }
    };
    assert_eq!(got, "*Alice* over udp\n");

    // /who and /rooms answer for the whole cluster.
    who_until(&mut alice, "* in #lobby: Alice, bob, carol");
    bob.say("/join dev");
    assert_eq!(bob.until("* now in #dev"), Vec::<String>::new());
    assert_eq!(alice.until("* bob left for #dev"), Vec::<String>::new());
    alice.say("/rooms");
    assert_eq!(alice.line(), "* rooms: #dev (1), #lobby (2)");
    alice.say("/join dev");
    assert_eq!(bob.line(), "* Alice joined #dev");
    assert_eq!(alice.until("* now in #dev"), Vec::<String>::new());
    alice.say("in dev");
    assert_eq!(bob.line(), "<Alice> in dev");
    who_until(&mut bob, "* in #dev: Alice, bob");

    // A quit is announced everywhere, and frees the nick for everyone.
    alice.say("/quit off");
    assert_eq!(bob.line(), "* Alice left (off)");
    wait_until("node b's user to take the freed nick", || {
        bob.say("/nick alice");
        let l = bob.line();
        assert!(
            l == "! nick taken: alice" || l == "* bob is now alice",
            "{l}"
        );
        l == "* bob is now alice"
    });
}

#[test]
fn a_killed_node_frees_its_nicks_and_the_others_announce_its_users() {
    let test = "a_killed_node_frees_its_nicks_and_the_others_announce_its_users";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-kill";
    let a = Node::joined(&redis.url(), prefix, "a");
    let b = Node::joined(&redis.url(), prefix, "b");
    let mut c = Node::joined(&redis.url(), prefix, "c");
    let mut watcher = a.user();
    let mut other = b.user();
    let mut doomed = c.user();
    let guest = doomed.nick.clone();
    doomed.nick("doomed");
    watcher.until(&format!("* {guest} is now doomed"));
    let everyone = who_line("lobby", &["doomed", &other.nick, &watcher.nick]);
    who_until(&mut watcher, &everyone);
    c.proc.proc.0.kill().unwrap(); // SIGKILL: no goodbye
    let _ = c.proc.proc.0.wait();
    // Within the lease (2 s) and a tick, both other nodes tell their users.
    watcher.until("* doomed left (node lost)");
    other.until("* doomed left (node lost)");
    // And the nick is free.
    wait_until("the lost node's nick to be free", || {
        other.say("/nick doomed");
        let l = other.line();
        l.ends_with(" is now doomed")
    });
    assert!(
        a.log_text().contains("cluster node lost"),
        "{}",
        a.log_text()
    );
}

#[test]
fn a_redis_restart_mid_chat_loses_no_user_and_lines_flow_again() {
    let test = "a_redis_restart_mid_chat_loses_no_user_and_lines_flow_again";
    let Some(mut redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-restart";
    let a = Node::joined(&redis.url(), prefix, "a");
    let b = Node::joined(&redis.url(), prefix, "b");
    let mut ann = a.user();
    let mut ben = b.user();
    let mut amy = a.user();
    ann.nick("ann");
    ben.nick("ben");
    amy.nick("amy");
    who_until(&mut ann, &who_line("lobby", &["amy", "ann", "ben"]));

    redis.down();
    const LOST: &str = "* cluster link lost; only this server's users can hear you";
    for user in [&mut ann, &mut ben, &mut amy] {
        user.until(LOST);
    }
    // Local users still hear each other meanwhile.
    ann.say("only here");
    assert_eq!(amy.line(), "<ann> only here");
    // A /who while the link is down answers from this node.
    ann.say("/who");
    assert_eq!(ann.line(), who_line("lobby", &["amy", "ann"]));

    redis.up(); // empty: every key is gone
    const RESTORED: &str = "* cluster link restored";
    for user in [&mut ann, &mut ben, &mut amy] {
        user.until(RESTORED);
    }
    // Nobody was lost: the nicks are held again, lines cross, /who sees all three.
    who_until(&mut ben, &who_line("lobby", &["amy", "ann", "ben"]));
    ann.say("back again");
    assert_eq!(ben.until("<ann> back again"), Vec::<String>::new());
    let mut newcomer = b.user();
    newcomer.say("/nick ann");
    assert_eq!(newcomer.line(), "! nick taken: ann");
}

#[test]
fn a_node_that_starts_before_redis_serves_locally_and_joins_when_it_appears() {
    let test = "a_node_that_starts_before_redis_serves_locally_and_joins_when_it_appears";
    let Some(mut redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-late";
    redis.down();
    let a = Node::start(&redis.url(), prefix, "a", &[]);
    a.wait_log("cannot reach the cluster's Redis");
    let mut ann = a.user();
    let mut amy = a.user();
    ann.until("* cluster link lost; only this server's users can hear you");
    ann.nick("ann");
    amy.until("* cluster link lost; only this server's users can hear you");
    ann.say("hello locally");
    amy.until("<ann> hello locally");

    redis.up();
    a.wait_log("cluster link restored");
    ann.until("* cluster link restored");
    let b = Node::joined(&redis.url(), prefix, "b");
    let mut ben = b.user();
    let everyone = who_line("lobby", &["ann", &amy.nick, &ben.nick]);
    who_until(&mut ben, &everyone);
    ben.say("/nick ann");
    assert_eq!(ben.line(), "! nick taken: ann");
    ann.say("now everywhere");
    assert_eq!(ben.until("<ann> now everywhere"), Vec::<String>::new());
}

#[test]
fn a_nick_taken_elsewhere_while_the_link_was_down_makes_its_user_a_guest() {
    let test = "a_nick_taken_elsewhere_while_the_link_was_down_makes_its_user_a_guest";
    let Some(mut redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-clash";
    redis.down();
    // Two nodes that cannot reach Redis: each grants "sam" to its own user.
    let a = Node::start(&redis.url(), prefix, "a", &[]);
    let b = Node::start(&redis.url(), prefix, "b", &[]);
    let mut sam_a = a.user();
    let mut sam_b = b.user();
    sam_a.nick("sam");
    sam_b.nick("Sam");
    redis.up();
    a.wait_log("cluster link restored");
    b.wait_log("cluster link restored");
    // One of them kept it; the other is a guest now, and was told why.
    const TOLD: &str = " was taken on another server while the cluster link was down; you are now ";
    // What a user was told from the link's return to its /who.
    let outcome = |u: &mut User| {
        u.say("/who");
        let mut told = None;
        loop {
            let l = u.line();
            if l.contains(TOLD) {
                told = Some(l);
            } else if l.starts_with("* in #") {
                return told.unwrap_or(l);
            }
        }
    };
    let (first, second) = (outcome(&mut sam_a), outcome(&mut sam_b));
    let (mut keeper, told) = match (first.contains(TOLD), second.contains(TOLD)) {
        (true, false) => (sam_b, first),
        (false, true) => (sam_a, second),
        _ => panic!("exactly one should lose the nick: {first:?} / {second:?}"),
    };
    let guest = told.split_once(TOLD).unwrap().1.to_string();
    assert!(
        told.starts_with("* your nick s") || told.starts_with("* your nick S"),
        "{told}"
    );
    assert!(guest.starts_with("guest"), "{told}");
    let both = who_line("lobby", &[&keeper.nick, &guest]);
    who_until(&mut keeper, &both);
}

#[test]
fn hostile_messages_from_a_compromised_node_are_dropped_or_sanitised() {
    let test = "hostile_messages_from_a_compromised_node_are_dropped_or_sanitised";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-hostile";
    let a = Node::joined(&redis.url(), prefix, "a");
    let mut ann = a.user();
    ann.nick("ann");
    let node_channel = {
        let line = a.wait_log("chat: cluster joined");
        let node = line
            .split("\"node\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        format!("{prefix}:node:{node}")
    };
    let room = format!("{prefix}:room:lobby");
    let upper_room = format!("{prefix}:room:LOBBY");
    let big = vec![b'x'; 1 << 20];
    let hostile: Vec<(&[u8], &[u8])> = vec![
        (room.as_bytes(), b"no origin at all"),
        (room.as_bytes(), &big),
        (room.as_bytes(), b"evil.1\t\r\n\x00"),
        (upper_room.as_bytes(), b"evil.1\tbad room"),
        (node_channel.as_bytes(), b"msg\tann"),
        (node_channel.as_bytes(), b"msg\tnot a nick\thi"),
        (node_channel.as_bytes(), b"shout\tann\thi"),
        (
            room.as_bytes(),
            b"evil.1\t<eve> \x1b[2J\x07clear \xff screen",
        ),
        (
            node_channel.as_bytes(),
            b"msg\tANN\t*eve* \x1b]0;pwned\x07psst",
        ),
    ];
    for (channel, payload) in &hostile {
        redis.command(&[b"PUBLISH", channel, payload]);
    }
    // Only the two well-formed ones arrive, sanitised, and in order.
    assert_eq!(ann.line(), "<eve> [2Jclear \u{fffd} screen");
    assert_eq!(ann.line(), "*eve* ]0;pwnedpsst");
    ann.say("/who");
    assert_eq!(ann.line(), "* in #lobby: ann");
    // A users hash with junk in it: /who shows only the valid names.
    let alive = format!("{prefix}:alive:evil.1");
    let nodes = format!("{prefix}:nodes");
    let users = format!("{prefix}:users:evil.1");
    redis.command(&[b"SET", alive.as_bytes(), b"evil.1"]);
    redis.command(&[b"SADD", nodes.as_bytes(), b"evil.1"]);
    redis.command(&[
        b"HSET",
        users.as_bytes(),
        b"eve",
        b"lobby",
        b"bad nick",
        b"lobby",
        b"mallory",
        b"no such room!",
        b"\xff\xfe",
        b"lobby",
    ]);
    who_until(&mut ann, "* in #lobby: ann, eve");
    assert!(a.log_text().contains("a cluster message dropped (invalid)"));
}

#[test]
fn the_password_in_the_url_works_and_is_never_logged() {
    let test = "the_password_in_the_url_works_and_is_never_logged";
    let Some(redis) = Redis::start_with(test, &["--requirepass", "s3cret-pw"]) else {
        return;
    };
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", redis.port);
    let a = Node::joined(&url, "t-auth", "a");
    let wrong = format!("redis://:wrong-pw@127.0.0.1:{}", redis.port);
    let b = Node::start(&wrong, "t-auth", "b", &[]);
    b.wait_log("cannot reach the cluster's Redis");
    for node in [&a, &b] {
        let log = node.log_text();
        assert!(
            !log.contains("s3cret") && !log.contains("wrong-pw"),
            "{log}"
        );
    }
    assert!(
        b.log_text().contains("redis://***@127.0.0.1"),
        "{}",
        b.log_text()
    );
}

#[test]
fn a_stalled_redis_never_blocks_local_delivery_and_the_sayer_is_told_once() {
    let test = "a_stalled_redis_never_blocks_local_delivery_and_the_sayer_is_told_once";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-stall";
    // A long lease: a stalled Redis is not a lost link within this test.
    let a = Node::start(
        &redis.url(),
        prefix,
        "a",
        &["--cluster-queue", "1", "--cluster-lease", "60s"],
    );
    a.wait_log("chat: cluster joined");
    let mut ann = a.user();
    let mut amy = a.user();
    let guest = ann.nick.clone();
    ann.nick("ann");
    amy.until(&format!("* {guest} is now ann"));
    let pid = redis.proc.as_ref().unwrap().0.id() as i32;
    // SAFETY: signals a child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for n in 0..10 {
        ann.say(&format!("line {n}"));
    }
    // Every line reaches the local member, in order; the sayer hears once that the
    // cluster did not take some.
    for n in 0..10 {
        assert_eq!(amy.line(), format!("<ann> line {n}"));
    }
    assert_eq!(
        ann.line(),
        "! cluster busy: your lines are reaching only this server's users"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    ann.say("/who");
    assert_eq!(ann.line(), who_line("lobby", &["ann", &amy.nick]));
}

#[test]
fn a_guest_nick_given_up_at_once_is_released_at_once() {
    let test = "a_guest_nick_given_up_at_once_is_released_at_once";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-hold";
    // A long lease: a key left behind would outlast the test.
    let a = Node::start(&redis.url(), prefix, "a", &["--cluster-lease", "60s"]);
    a.wait_log("chat: cluster joined");
    let mut ann = a.user();
    let guest = ann.nick.clone();
    let key = format!("{prefix}:nick:{guest}");
    ann.nick("ann");
    // The guest nick was held for the user (it used to be taken in Redis but not
    // recorded as this node's, so the rename did not let go of it).
    wait_until("the guest nick's key to be released", || {
        redis.command(&[b"GET", key.as_bytes()]) == b"$-1\r\n"
    });
    let b = Node::joined(&redis.url(), prefix, "b");
    let mut ben = b.user();
    ben.nick(&guest);
}

#[test]
fn junk_in_the_shared_keys_never_breaks_the_link() {
    let test = "junk_in_the_shared_keys_never_breaks_the_link";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-junk";
    let key = |k: &str| format!("{prefix}:{k}").into_bytes();
    // What a compromised node (anyone who can write to Redis) may leave there before a
    // node starts: a guest sequence INCRBY refuses, node ids that are not UTF-8 or not
    // names, an alive node whose users "hash" is a string, nick keys of the wrong type
    // or not UTF-8.
    redis.command(&[b"SET", &key("guest-seq"), b"not a number"]);
    redis.command(&[b"SADD", &key("nodes"), b"\xff\xfe", b"x y", b"evil.1"]);
    redis.command(&[b"SET", &key("alive:evil.1"), b"evil.1"]);
    redis.command(&[b"SET", &key("users:evil.1"), b"not a hash"]);
    redis.command(&[b"HSET", &key("nick:bob"), b"a", b"b"]);
    redis.command(&[b"SET", &key("nick:carol"), b"\xff"]);
    // The node joins all the same (it used to fail its setup, silently, forever).
    let a = Node::joined(&redis.url(), prefix, "a");
    let mut ann = a.user();
    ann.say("/who");
    assert_eq!(ann.line(), format!("* in #lobby: {}", ann.nick));
    ann.say("/msg bob hi");
    assert_eq!(ann.line(), "! no such nick: bob");
    ann.say("/msg carol hi");
    assert_eq!(ann.line(), "! no such nick: carol");
    ann.say("/nick bob");
    assert_eq!(ann.line(), "! nick taken: bob");
    ann.nick("ann");
    // The junk node ids are taken out of the node set.
    wait_until("the junk node ids to be removed", || {
        redis.command(&[b"SISMEMBER", &key("nodes"), b"\xff\xfe"]) == b":0\r\n"
    });
    // Junk written while it runs: a nick it holds turned into a hash, the node set into
    // a string, another non-UTF-8 id. The link stays up through the ticks that read them.
    redis.command(&[b"DEL", &key("nick:ann")]);
    redis.command(&[b"HSET", &key("nick:ann"), b"x", b"y"]);
    redis.command(&[b"DEL", &key("nodes")]);
    redis.command(&[b"SET", &key("nodes"), b"junk"]);
    wait_until("the node set to be a set again", || {
        redis.command(&[b"TYPE", &key("nodes")]) == b"+set\r\n"
    });
    redis.command(&[b"SADD", &key("nodes"), b"\xfe"]);
    wait_until("the junk node id to be removed", || {
        redis.command(&[b"SISMEMBER", &key("nodes"), b"\xfe"]) == b":0\r\n"
    });
    // The nick key that is not this node's any more counts as taken elsewhere.
    let l = ann.line();
    let guest = l
        .split_once("; you are now ")
        .map(|(_, g)| g.to_string())
        .unwrap_or_else(|| panic!("unexpected {l:?}"));
    assert_eq!(
        l,
        format!(
            "* your nick ann was taken on another server while the cluster link was down; you are now {guest}"
        )
    );
    assert_eq!(ann.line(), format!("* ann is now {guest}"));
    ann.nick = guest;
    // A real second node sees this one, and lines cross.
    let b = Node::joined(&redis.url(), prefix, "b");
    let mut ben = b.user();
    ben.nick("ben");
    who_until(&mut ben, &who_line("lobby", &[&ann.nick, "ben"]));
    ben.say("hi");
    ann.until("<ben> hi");
    let log = a.log_text();
    assert!(!log.contains("cluster link lost"), "{log}");
    assert!(log.contains("guest sequence is unusable"), "{log}");
}

#[test]
fn fake_nodes_cost_a_bounded_amount_and_their_loss_is_one_notice() {
    let test = "fake_nodes_cost_a_bounded_amount_and_their_loss_is_one_notice";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-fake";
    let a = Node::joined(&redis.url(), prefix, "a");
    let mut ann = a.user();
    ann.nick("ann");
    // 500 fake nodes, alive, one user each in #lobby; one with a users hash bigger than a
    // node may have (ignored); and 5,000 dead ones (no keys at all).
    let setup = r"
for i = 1, 500 do
  local n = 'evil.' .. i
  redis.call('SADD', KEYS[1], n)
  redis.call('SET', ARGV[1] .. ':alive:' .. n, n)
  redis.call('HSET', ARGV[1] .. ':users:' .. n, 'eve' .. i, 'lobby')
end
redis.call('SADD', KEYS[1], 'huge.1')
redis.call('SET', ARGV[1] .. ':alive:huge.1', 'huge.1')
for i = 1, 70000, 1000 do
  local args = {}
  for j = i, i + 999 do
    args[#args + 1] = 'h' .. j
    args[#args + 1] = 'lobby'
  end
  redis.call('HSET', ARGV[1] .. ':users:huge.1', unpack(args))
end
for i = 1, 5000 do
  redis.call('SADD', KEYS[1], 'dead.' .. i)
end
return 0
";
    let nodes = format!("{prefix}:nodes");
    assert_eq!(
        redis.command(&[
            b"EVAL",
            setup.as_bytes(),
            b"1",
            nodes.as_bytes(),
            prefix.as_bytes()
        ]),
        b":0\r\n"
    );
    // The dead ones are forgotten, a bounded number each tick; the link holds.
    wait_until("the dead fake nodes to be forgotten", || {
        redis.command(&[b"SCARD", nodes.as_bytes()]) == b":502\r\n"
    });
    // Every fake user counts, but not the oversized hash's.
    wait_until("the fake users to show", || {
        ann.say("/rooms");
        let l = loop {
            let l = ann.line();
            if l.starts_with("* rooms:") {
                break l;
            }
        };
        l == "* rooms: #lobby (501)"
    });
    // And once every fake node has had a tick to be seen alive, all of them go at once:
    // one notice, not 500.
    let mut del: Vec<Vec<u8>> = vec![b"DEL".to_vec()];
    del.extend((1..=500).map(|i| format!("{prefix}:alive:evil.{i}").into_bytes()));
    // (A tick that forgets a dead marker node has looked at every node: the set is
    // small again.)
    redis.command(&[b"SADD", nodes.as_bytes(), b"marker.1"]);
    wait_until("a tick over the whole node set", || {
        redis.command(&[b"SISMEMBER", nodes.as_bytes(), b"marker.1"]) == b":0\r\n"
    });
    let del: Vec<&[u8]> = del.iter().map(Vec::as_slice).collect();
    redis.command(&del);
    assert_eq!(ann.line(), "* 500 users left (node lost)");
    ann.say("/rooms");
    assert_eq!(ann.line(), "* rooms: #lobby (1)");
    assert!(
        !a.log_text().contains("cluster link lost"),
        "{}",
        a.log_text()
    );
}

#[test]
fn a_room_left_and_entered_again_at_once_stays_subscribed() {
    let test = "a_room_left_and_entered_again_at_once_stays_subscribed";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let prefix = "t-resub";
    // Long leases: a stalled Redis is not a lost link within this test.
    let long = ["--cluster-lease", "60s"];
    let a = Node::start(&redis.url(), prefix, "a", &long);
    let b = Node::start(&redis.url(), prefix, "b", &long);
    a.wait_log("chat: cluster joined");
    b.wait_log("chat: cluster joined");
    let mut alice = a.user();
    let mut bob = b.user();
    alice.nick("alice");
    bob.nick("bob");
    alice.say("/join dev");
    alice.until("* now in #dev");
    bob.say("/join dev");
    alice.until("* bob joined #dev");
    // Redis stalls while a line is on its way: alice's leaving #dev (its last member
    // here) and coming back queue up behind it, and reach the link in one run.
    let pid = redis.proc.as_ref().unwrap().0.id() as i32;
    // SAFETY: signals a child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    alice.say("stalled");
    alice.say("/join lobby");
    alice.until("* now in #lobby");
    alice.say("/join dev");
    alice.until("* now in #dev");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    bob.until("* alice joined #dev");
    // (A /who is answered after the runs before it.)
    who_until(&mut alice, &who_line("dev", &["alice", "bob"]));
    // Node a still listens to #dev (it used to subscribe, then unsubscribe).
    bob.say("still there?");
    assert_eq!(alice.line(), "<bob> still there?");
}

#[test]
fn rediss_verifies_the_server_and_carries_the_cluster() {
    let test = "rediss_verifies_the_server_and_carries_the_cluster";
    let certs = common::certs::Certs::new("rediss");
    let (cert, key, ca) = (
        common::certs::path(&certs.cert).to_string(),
        common::certs::path(&certs.key).to_string(),
        common::certs::path(&certs.ca).to_string(),
    );
    // TLS only: the plain port off, the TLS one on the port the helper picked.
    let tls = [
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ];
    let Some(redis) = Redis::start_with(test, &tls) else {
        return;
    };
    let url = format!("rediss://localhost:{}", redis.port);
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let a = Node::start_with_env(&url, "t-tls", "a", &[], &trust);
    let b = Node::start_with_env(&url, "t-tls", "b", &[], &trust);
    a.wait_log("chat: cluster joined");
    b.wait_log("chat: cluster joined");
    let mut ann = a.user();
    let mut ben = b.user();
    let guest = ann.nick.clone();
    ann.nick("ann");
    ben.until(&format!("* {guest} is now ann"));
    ann.say("over tls");
    ben.until("<ann> over tls");
    // Without the test CA among the roots, the server is not trusted: no plain fallback.
    let elsewhere = [("SSL_CERT_FILE", "/nonexistent/roots.pem")];
    let c = Node::start_with_env(&url, "t-tls", "c", &[], &elsewhere);
    c.wait_log("cannot reach the cluster's Redis");
    assert!(!c.log_text().contains("cluster joined"), "{}", c.log_text());
}

#[test]
fn bench_chat_spreads_its_clients_over_the_nodes_and_times_the_crossings() {
    let test = "bench_chat_spreads_its_clients_over_the_nodes_and_times_the_crossings";
    let Some(redis) = Redis::start(test) else {
        return;
    };
    let a = Node::start(&redis.url(), "t-bench", "a", &["--rate", "0"]);
    let b = Node::start(&redis.url(), "t-bench", "b", &["--rate", "0"]);
    a.wait_log("chat: cluster joined");
    b.wait_log("chat: cluster joined");
    let out = binary()
        .args(["bench", "chat", &a.tcp.to_string(), "--targets"])
        .arg(format!("{},{}", a.tcp, b.tcp))
        .args(["--conns", "20", "--senders", "4", "--rate", "20"])
        .args(["--duration", "1s", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "{report}");
    let count = |name: &str| {
        report["counts"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let sent = count("lines sent");
    assert!(sent > 0, "{report}");
    assert_eq!(count("lost"), 0, "{report}");
    // Every line reaches the 19 others; the 10 on the other node from each sender cross.
    assert_eq!(report["ops"].as_u64(), Some(sent * 19), "{report}");
    assert_eq!(count("cross-node deliveries"), sent * 10, "{report}");
    assert!(count("cross-node p99 µs") > 0, "{report}");
}
