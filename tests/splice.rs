//! The zero-copy relay (`net::splice`) on real loopback sockets: integrity of large
//! streams both ways, half-close (and a FIN told while bytes wait), a slow receiver held
//! to one pipe, resets on either side, a dropped future, and the fallback when `splice`
//! cannot move a stream.
//!
//! Each test wires `client ─▶ near ═relay═▶ far ─▶ server` (and back, where a test
//! needs both directions) with the test holding `client` and `server` as blocking
//! sockets and the relay the two non-blocking ones in the middle.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;

use futures::future::Either;
use rustix::net::sockopt;

use common::{DEADLINE, Rng, read_to_end, reset_on_close, wait_until};
use switchboard::net::socket::Socket;
use switchboard::net::splice::{End, Failure, PIPE_CAPACITY, Relay, Side, Step};
use switchboard::net::stream::Stream;
use switchboard::rt;

/// Bytes the reproducible streams are made and checked in.
const CHUNK: usize = 64 * 1024;

/// Small socket buffers for the tests that fill a path.
const SMALL_BUFFER: usize = 32 * 1024;

/// The smallest buffers: a path that fills with a few segments.
const TINY_BUFFER: usize = 4096;

/// The four sockets of one relayed connection.
struct Relayed {
    /// The test's sending end (blocking).
    client: TcpStream,
    /// The relay's socket facing the client.
    near: Socket,
    /// The relay's socket facing the server.
    far: Socket,
    /// The test's receiving end (blocking).
    server: TcpStream,
}

/// Connects `client ─▶ near` and `far ─▶ server` on 127.0.0.1 port 0. `front` and `back`,
/// when given, make the path from the client to the relay, and from the relay to the
/// server, hold little: that send buffer on the sender, that receive buffer on the
/// receiver (set on the listener, so the window offered from the first byte is small).
/// The kernel doubles both, and a size set by hand is never grown by autotuning.
fn relayed(front: Option<usize>, back: Option<usize>) -> Relayed {
    let (front_listener, back_listener) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let connect = |listener: &TcpListener, buffer: Option<usize>| {
        if let Some(bytes) = buffer {
            sockopt::set_socket_recv_buffer_size(listener, bytes).unwrap();
        }
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        if let Some(bytes) = buffer {
            sockopt::set_socket_send_buffer_size(&sender, bytes).unwrap();
        }
        let (receiver, _) = listener.accept().unwrap();
        (sender, receiver)
    };
    let (client, near) = connect(&front_listener, front);
    let (far, server) = connect(&back_listener, back);
    for s in [&client, &server] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
    }
    Relayed {
        client,
        near: on_reactor(near),
        far: on_reactor(far),
        server,
    }
}

/// The socket beneath a plain stream on the reactor, as the proxy hands it to a relay.
fn on_reactor(socket: TcpStream) -> Socket {
    Stream::new(socket).unwrap().socket().clone()
}

/// What a relay's `on_step` heard, summed as it ran.
#[derive(Default)]
struct Steps {
    read: AtomicU64,
    wrote: AtomicU64,
    fins: AtomicU64,
    /// The most the pipe held at any step (read less written).
    most_in_pipe: AtomicU64,
}

impl Steps {
    fn note(&self, step: Step) {
        match step {
            Step::Read(n) => {
                self.read.fetch_add(n as u64, Relaxed);
            }
            Step::Wrote(n) => {
                self.wrote.fetch_add(n as u64, Relaxed);
            }
            Step::SourceFin => {
                self.fins.fetch_add(1, Relaxed);
            }
        }
        let held = self.read.load(Relaxed) - self.wrote.load(Relaxed);
        self.most_in_pipe.fetch_max(held, Relaxed);
    }
    fn read(&self) -> u64 {
        self.read.load(Relaxed)
    }
    fn wrote(&self) -> u64 {
        self.wrote.load(Relaxed)
    }
}

type Running = rt::JoinHandle<(Relay, Result<End, Failure>)>;

/// Runs `relay` from `from` to `to` in a task of its own.
fn start(mut relay: Relay, from: &Socket, to: &Socket) -> (Arc<Steps>, Running) {
    let steps = Arc::new(Steps::default());
    let (from, to, heard) = (from.clone(), to.clone(), steps.clone());
    let running = rt::spawn(async move {
        let end = relay.run(&from, &to, |step| heard.note(step)).await;
        (relay, end)
    });
    (steps, running)
}

/// Waits for a relay's task to end.
fn finish(running: Running) -> (Relay, Result<End, Failure>) {
    rt::block_on(rt::timeout(DEADLINE, running)).expect("the relay did not end")
}

/// The reproducible stream `seed`, made one [`CHUNK`] at a time.
struct Pattern(Rng);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(Rng::new(seed))
    }
    fn chunk(&mut self) -> Vec<u8> {
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            chunk.extend_from_slice(&self.0.next().to_le_bytes());
        }
        chunk
    }
}

/// Writes `total` bytes (a multiple of [`CHUNK`]) of stream `seed`, then shuts the
/// write half.
fn send_stream(mut w: TcpStream, seed: u64, total: usize) {
    let mut pattern = Pattern::new(seed);
    for _ in 0..total / CHUNK {
        w.write_all(&pattern.chunk()).unwrap();
    }
    w.shutdown(Shutdown::Write).unwrap();
}

/// Reads `total` bytes and asserts they are stream `seed`'s, then that EOF follows.
fn check_stream(mut r: TcpStream, seed: u64, total: usize) {
    let (mut pattern, mut got) = (Pattern::new(seed), vec![0; CHUNK]);
    for i in 0..total / CHUNK {
        r.read_exact(&mut got).unwrap();
        assert!(got == pattern.chunk(), "chunk {i} of stream {seed} differs");
    }
    assert_eq!(
        r.read(&mut got).unwrap(),
        0,
        "bytes after the end of stream {seed}"
    );
}

/// Asserts `got` is the start of stream `seed`.
fn assert_prefix(got: &[u8], seed: u64) {
    let mut pattern = Pattern::new(seed);
    for (i, part) in got.chunks(CHUNK).enumerate() {
        assert!(
            part == &pattern.chunk()[..part.len()],
            "chunk {i} of stream {seed} differs"
        );
    }
}

/// Stream `seed` written without blocking: as much as the socket takes each call.
struct Pusher {
    pattern: Pattern,
    chunk: Vec<u8>,
    at: usize,
    sent: u64,
}

impl Pusher {
    fn new(seed: u64) -> Self {
        let mut pattern = Pattern::new(seed);
        let chunk = pattern.chunk();
        Pusher {
            pattern,
            chunk,
            at: 0,
            sent: 0,
        }
    }
    /// Writes until the socket takes no more (or `total` has gone); returns whether the
    /// socket refused.
    fn push(&mut self, w: &mut TcpStream, total: u64) -> bool {
        while self.sent < total {
            let left = (total - self.sent).min((CHUNK - self.at) as u64) as usize;
            match w.write(&self.chunk[self.at..self.at + left]) {
                Ok(n) => {
                    self.sent += n as u64;
                    self.at += n;
                    if self.at == CHUNK {
                        self.chunk = self.pattern.chunk();
                        self.at = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) => panic!("write failed: {e}"),
            }
        }
        false
    }
}

#[test]
fn a_large_random_stream_crosses_each_way_intact_with_exact_counts() {
    const TOTAL: usize = 64 << 20;
    let r = relayed(None, None);
    let (up_relay, down_relay) = (
        Relay::new(PIPE_CAPACITY).unwrap(),
        Relay::new(PIPE_CAPACITY).unwrap(),
    );
    let (up_tally, down_tally) = (up_relay.tally(), down_relay.tally());
    let (up_steps, up) = start(up_relay, &r.near, &r.far);
    let (down_steps, down) = start(down_relay, &r.far, &r.near);
    let threads = [
        thread::spawn({
            let w = r.client.try_clone().unwrap();
            move || send_stream(w, 1, TOTAL)
        }),
        thread::spawn({
            let w = r.server.try_clone().unwrap();
            move || send_stream(w, 2, TOTAL)
        }),
        thread::spawn(move || check_stream(r.server, 1, TOTAL)),
        thread::spawn(move || check_stream(r.client, 2, TOTAL)),
    ];
    for t in threads {
        t.join().unwrap();
    }
    for (running, tally, steps) in [(up, up_tally, up_steps), (down, down_tally, down_steps)] {
        let (relay, end) = finish(running);
        assert_eq!(end.unwrap(), End::Eof);
        assert_eq!(
            (tally.read(), tally.written()),
            (TOTAL as u64, TOTAL as u64)
        );
        assert_eq!((steps.read(), steps.wrote()), (TOTAL as u64, TOTAL as u64));
        assert!(steps.most_in_pipe.load(Relaxed) <= relay.capacity() as u64);
    }
}

/// Sends `bytes` and a FIN from `w`; `r` must get exactly those bytes and then EOF (the
/// relay shut its destination's write half), and the relay carrying them must end at
/// the FIN with exact counts.
fn half_close_through(
    w: &mut TcpStream,
    r: &mut TcpStream,
    (steps, running): (Arc<Steps>, Running),
    bytes: &[u8],
) {
    w.write_all(bytes).unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(r), bytes);
    let (relay, end) = finish(running);
    assert_eq!(end.unwrap(), End::Eof);
    let n = bytes.len() as u64;
    assert_eq!((relay.tally().read(), relay.tally().written()), (n, n));
    assert_eq!((steps.read(), steps.wrote()), (n, n));
}

#[test]
fn a_half_close_carries_over_in_each_direction_and_the_other_goes_on() {
    let mut r = relayed(None, None);
    let up = start(Relay::new(PIPE_CAPACITY).unwrap(), &r.near, &r.far);
    let down = start(Relay::new(PIPE_CAPACITY).unwrap(), &r.far, &r.near);
    half_close_through(&mut r.client, &mut r.server, up, b"ping");
    // The server's direction is still open after the client's FIN.
    half_close_through(&mut r.server, &mut r.client, down, b"pong from the server");
}

#[test]
fn a_fin_read_while_the_pipe_still_holds_bytes_is_told_before_the_end() {
    // The path to the server holds far less than the client sends, so the relay reads the
    // FIN with bytes still in its pipe: it says so at once (a session's fin timeout runs
    // from then, as it does when a copying reader reads the EOF), and once.
    let mut r = relayed(None, Some(TINY_BUFFER));
    let relay = Relay::new(PIPE_CAPACITY).unwrap();
    let tally = relay.tally();
    let (steps, up) = start(relay, &r.near, &r.far);
    let sent = Rng::new(8).bytes(48 * 1024);
    r.client.write_all(&sent).unwrap();
    r.client.shutdown(Shutdown::Write).unwrap();
    wait_until("the relay to tell the FIN it read", || {
        steps.fins.load(Relaxed) == 1
    });
    assert!(tally.unwritten() > 0, "told with nothing left to write");
    assert_eq!(read_to_end(&mut r.server), sent);
    let (_, end) = finish(up);
    assert_eq!(end.unwrap(), End::Eof);
    assert_eq!(steps.fins.load(Relaxed), 1);
    assert_eq!(
        (tally.read(), tally.written()),
        (sent.len() as u64, sent.len() as u64)
    );
}

#[test]
fn keep_open_leaves_the_destination_write_half_to_the_caller() {
    let mut r = relayed(None, None);
    let (_, up) = start(
        Relay::new(PIPE_CAPACITY).unwrap().keep_open(),
        &r.near,
        &r.far,
    );
    r.client.write_all(b"ping").unwrap();
    r.client.shutdown(Shutdown::Write).unwrap();
    let (_, end) = finish(up);
    assert_eq!(end.unwrap(), End::Eof);
    // Still open: the caller writes more and shuts it itself.
    assert_eq!(rustix::io::write(&r.far, b" and more"), Ok(9));
    r.far.shut_write().unwrap();
    assert_eq!(read_to_end(&mut r.server), b"ping and more");
}

/// Starts `relay` from `near` to `far`, and has the client send stream `seed` without
/// blocking, up to `step` bytes at each look, until the relay stalls on a server that
/// reads nothing. The client is left non-blocking.
fn stall(r: &mut Relayed, relay: Relay, seed: u64, step: u64) -> (Arc<Steps>, Running, Pusher) {
    let tally = relay.tally();
    let (steps, running) = start(relay, &r.near, &r.far);
    r.client.set_nonblocking(true).unwrap();
    let mut pusher = Pusher::new(seed);
    wait_until("the relay to stall on a server that reads nothing", || {
        pusher.push(&mut r.client, pusher.sent.saturating_add(step));
        tally.stalled()
    });
    (steps, running, pusher)
}

#[test]
fn a_receiver_that_reads_nothing_holds_the_sender_back_with_one_pipe_in_between() {
    const TOTAL: u64 = 16 << 20;
    let mut r = relayed(Some(SMALL_BUFFER), Some(SMALL_BUFFER));
    let relay = Relay::new(PIPE_CAPACITY).unwrap();
    let (capacity, tally) = (relay.capacity() as u64, relay.tally());
    let (steps, up, mut pusher) = stall(&mut r, relay, 3, 1 << 20);
    // Fill what is left between the sender and the relay; the socket then refuses.
    assert!(
        pusher.push(&mut r.client, TOTAL),
        "the sender was never held back"
    );
    assert!(
        tally.unwritten() <= capacity,
        "the relay holds more than its pipe"
    );
    // All the sender got out beyond what the relay read sits in the kernel's buffers on
    // the way (its send buffer, the relay's receive buffer): nothing piles up in between.
    let kernel = sockopt::socket_send_buffer_size(&r.client).unwrap()
        + sockopt::socket_recv_buffer_size(&r.near).unwrap();
    assert!(
        pusher.sent - tally.read() <= 2 * kernel as u64,
        "{} bytes sent, {} read by the relay",
        pusher.sent,
        tally.read()
    );
    assert!(pusher.sent < TOTAL);

    // The receiver starts reading: the rest flows, intact, through the same pipe.
    r.client.set_nonblocking(false).unwrap();
    let mut client = r.client;
    let sender = thread::spawn(move || {
        while pusher.push(&mut client, TOTAL) {}
        client.shutdown(Shutdown::Write).unwrap();
    });
    check_stream(r.server, 3, TOTAL as usize);
    sender.join().unwrap();
    let (_, end) = finish(up);
    assert_eq!(end.unwrap(), End::Eof);
    assert_eq!((tally.read(), tally.written()), (TOTAL, TOTAL));
    assert!(steps.most_in_pipe.load(Relaxed) <= capacity);
}

#[test]
fn a_stalled_relay_sees_its_source_fin_and_then_its_reset() {
    // The relay stalls after a few pages (a one-page pipe, a tiny path to the server),
    // so everything the client sent fits in the relay's receive buffer and its FIN is
    // not held back in the client's send queue behind a closed window.
    let mut r = relayed(None, Some(TINY_BUFFER));
    let relay = Relay::new(TINY_BUFFER).unwrap();
    let tally = relay.tally();
    // A little at a time, so little is left in flight once it stalls.
    let (steps, up, mut pusher) = stall(&mut r, relay, 4, 1024);
    // Some bytes more behind the stall, so the relay cannot reach the FIN by reading
    // even if the path to the server takes a little more meanwhile.
    let behind = pusher.sent + 16 * 1024;
    wait_until("the client's last bytes to go out", || {
        !pusher.push(&mut r.client, behind)
    });
    // The FIN waits behind bytes the relay has no room to read: it is seen by looking.
    r.client.shutdown(Shutdown::Write).unwrap();
    wait_until("the stalled relay to see the FIN", || {
        steps.fins.load(Relaxed) == 1
    });
    reset_on_close(&r.client);
    drop(r.client);
    let (_, end) = finish(up);
    let failure = end.unwrap_err();
    assert_eq!(failure.side, Side::Source);
    assert_eq!(failure.error.kind(), ErrorKind::ConnectionReset);
    assert_eq!(failure.written, tally.written());
    assert_eq!(failure.in_pipe, tally.unwritten());
    assert!(tally.read() <= pusher.sent);
    assert_eq!(
        (steps.read(), steps.wrote()),
        (tally.read(), tally.written())
    );
    assert_eq!(steps.fins.load(Relaxed), 1);
}

#[test]
fn a_receiver_reset_mid_stream_reports_what_was_written_and_what_the_pipe_held() {
    const READ_FIRST: usize = 1 << 20;
    let mut r = relayed(Some(SMALL_BUFFER), Some(SMALL_BUFFER));
    let relay = Relay::new(PIPE_CAPACITY).unwrap();
    let (capacity, tally) = (relay.capacity() as u64, relay.tally());
    let (steps, up) = start(relay, &r.near, &r.far);
    // The sender goes on until the relay's end of its connection closes.
    let mut client = r.client;
    let sender = thread::spawn(move || {
        let mut pattern = Pattern::new(5);
        while client.write_all(&pattern.chunk()).is_ok() {}
    });
    let mut got = vec![0; READ_FIRST];
    r.server.read_exact(&mut got).unwrap();
    assert_prefix(&got, 5);
    reset_on_close(&r.server);
    drop(r.server);

    let (_, end) = finish(up);
    let failure = end.unwrap_err();
    assert_eq!(failure.side, Side::Destination);
    assert!(
        matches!(
            failure.error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "{failure:?}"
    );
    assert_eq!(failure.written, tally.written());
    assert_eq!(failure.in_pipe, tally.unwritten());
    assert!(failure.written >= READ_FIRST as u64);
    assert!(failure.in_pipe <= capacity);
    assert_eq!(
        (steps.read(), steps.wrote()),
        (tally.read(), tally.written())
    );
    // Closing the relay's side with the sender's bytes unread resets the sender.
    let _ = r.near.shut_both();
    drop(r.near);
    sender.join().unwrap();
}

#[test]
fn a_sender_reset_mid_stream_reports_a_source_failure_after_what_it_delivered() {
    const SENT: usize = 1 << 20;
    let mut r = relayed(None, None);
    let relay = Relay::new(PIPE_CAPACITY).unwrap();
    let tally = relay.tally();
    let (steps, up) = start(relay, &r.near, &r.far);
    let mut pattern = Pattern::new(6);
    for _ in 0..SENT / CHUNK {
        r.client.write_all(&pattern.chunk()).unwrap();
    }
    reset_on_close(&r.client);
    drop(r.client);

    let (relay, end) = finish(up);
    let failure = end.unwrap_err();
    assert_eq!(failure.side, Side::Source);
    assert_eq!(failure.error.kind(), ErrorKind::ConnectionReset);
    assert_eq!(failure.written + failure.in_pipe, tally.read());
    assert!(tally.read() <= SENT as u64);
    assert_eq!(
        (steps.read(), steps.wrote()),
        (tally.read(), tally.written())
    );
    // What the failure calls written is what the server gets, and it is the stream's start.
    drop(relay);
    r.far.shut_write().unwrap();
    let got = read_to_end(&mut r.server);
    assert_eq!(got.len() as u64, failure.written);
    assert_prefix(&got, 6);
}

#[test]
fn dropping_the_future_mid_transfer_keeps_the_counts_and_running_again_resumes() {
    const TOTAL: usize = 16 << 20;
    const DROP_AFTER: u64 = 4 << 20;
    let r = relayed(None, None);
    let mut relay = Relay::new(PIPE_CAPACITY).unwrap();
    let (capacity, tally) = (relay.capacity() as u64, relay.tally());
    let steps = Steps::default();
    let sender = thread::spawn(move || send_stream(r.client, 7, TOTAL));
    let receiver = thread::spawn(move || check_stream(r.server, 7, TOTAL));
    let (near, far) = (r.near, r.far);
    rt::block_on(async {
        let (cancel_tx, cancel_rx) = flume::bounded::<()>(1);
        let run = relay.run(&near, &far, |step| {
            steps.note(step);
            if steps.wrote() >= DROP_AFTER {
                let _ = cancel_tx.try_send(());
            }
        });
        let (run, cancel) = (std::pin::pin!(run), std::pin::pin!(cancel_rx.recv_async()));
        let raced = futures::future::select(run, cancel);
        match rt::timeout(DEADLINE, raced).await {
            Some(Either::Right(_)) => {}
            Some(Either::Left(_)) => panic!("the relay ended before it was dropped"),
            None => panic!("the relay did not move {DROP_AFTER} bytes"),
        }
    });
    // The future is gone; the counts it kept are whole.
    assert!(tally.written() >= DROP_AFTER);
    assert_eq!(
        (steps.read(), steps.wrote()),
        (tally.read(), tally.written())
    );
    assert!(tally.unwritten() <= capacity);
    assert!(!tally.stalled());

    // Run again: the pipe's bytes go first, then the rest, nothing lost or repeated.
    let end = rt::block_on(rt::timeout(
        DEADLINE,
        relay.run(&near, &far, |step| steps.note(step)),
    ))
    .expect("the resumed relay did not end");
    assert_eq!(end.unwrap(), End::Eof);
    sender.join().unwrap();
    receiver.join().unwrap();
    assert_eq!(
        (tally.read(), tally.written()),
        (TOTAL as u64, TOTAL as u64)
    );
    assert_eq!((steps.read(), steps.wrote()), (TOTAL as u64, TOTAL as u64));
}

/// A descriptor `splice` refuses (`EINVAL`) dressed as a socket: an eventfd, which the
/// reactor can still watch. Its count starts at 1, so it reads as readable.
fn unspliceable() -> Socket {
    use rustix::event::{EventfdFlags, eventfd};
    let fd = eventfd(1, EventfdFlags::CLOEXEC).unwrap();
    on_reactor(TcpStream::from(fd))
}

#[test]
fn a_destination_splice_cannot_reach_hands_back_what_the_pipe_held() {
    let mut r = relayed(None, None);
    r.client.write_all(b"hello").unwrap();
    let (steps, up) = start(Relay::new(PIPE_CAPACITY).unwrap(), &r.near, &unspliceable());
    let (relay, end) = finish(up);
    assert_eq!(
        end.unwrap(),
        End::Unsupported {
            pending: b"hello".to_vec()
        }
    );
    assert_eq!((relay.tally().read(), relay.tally().written()), (5, 0));
    assert_eq!((steps.read(), steps.wrote()), (5, 0));
}

#[test]
fn a_source_splice_cannot_read_is_reported_before_anything_moves() {
    let r = relayed(None, None);
    let (steps, up) = start(Relay::new(PIPE_CAPACITY).unwrap(), &unspliceable(), &r.far);
    let (relay, end) = finish(up);
    assert_eq!(end.unwrap(), End::Unsupported { pending: vec![] });
    assert_eq!((relay.tally().read(), relay.tally().written()), (0, 0));
    assert_eq!((steps.read(), steps.wrote()), (0, 0));
}
