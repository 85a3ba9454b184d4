//! Reading many sockets on one OS thread with level-triggered epoll, for load generators
//! whose own cost would otherwise be part of what they measure.
//!
//! An async reader on the shared reactor pays about four system calls per read: the read
//! itself, two reads that find nothing (one to learn the socket is drained, one because
//! the reactor's readiness was already consumed), and an `epoll_ctl` to re-arm the
//! one-shot registration, plus a wake-up of the task's thread. Here a readable socket
//! costs one `recv(2)`: the registration is level-triggered, so it never needs re-arming,
//! and a socket that still holds data is simply reported again by the next `epoll_wait`.
//! The CPU this saves is CPU the server under test gets back on a small machine
//! (benches/RESULTS.md has the figure).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::net::RecvFlags;

/// What one socket did.
pub enum Event<'a> {
    /// Bytes arrived.
    Data(&'a [u8]),
    /// The socket reached end of stream or failed; it is not read again.
    Closed(Option<io::Error>),
}

/// The most bytes read from one socket in one `recv(2)`.
const READ_SIZE: usize = 64 * 1024;

/// Calls `on_event(i, event)` for whatever arrives on `sockets[i]`, in arrival order per
/// socket, until every socket has closed or `deadline` passes (`Ok(false)` then).
pub fn read_until_closed(
    sockets: &[impl AsFd],
    deadline: Instant,
    mut on_event: impl FnMut(usize, Event<'_>),
) -> io::Result<bool> {
    let epoll = Epoll::new()?;
    for (i, socket) in sockets.iter().enumerate() {
        epoll.add(socket, i as u64)?;
    }
    let mut open = vec![true; sockets.len()];
    let mut left = sockets.len();
    let idle = epoll::Event {
        flags: epoll::EventFlags::empty(),
        data: epoll::EventData::new_u64(0),
    };
    let mut events = vec![idle; 256];
    let mut buf = vec![0u8; READ_SIZE];
    while left > 0 {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        let ready = epoll.wait(&mut events, wait)?;
        for ev in &events[..ready] {
            let i = { ev.data }.u64() as usize;
            if !open[i] {
                continue;
            }
            // MSG_DONTWAIT keeps a spurious report from blocking the loop.
            let end = match rustix::net::recv(&sockets[i], &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) if n > 0 => {
                    on_event(i, Event::Data(&buf[..n]));
                    continue;
                }
                Ok(_) => None,
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => continue,
                Err(e) => Some(e.into()),
            };
            open[i] = false;
            left -= 1;
            epoll.delete(&sockets[i]);
            on_event(i, Event::Closed(end));
        }
    }
    Ok(true)
}

/// An epoll instance, closed on drop.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        Ok(Epoll(epoll::create(epoll::CreateFlags::CLOEXEC)?))
    }

    fn add(&self, socket: impl AsFd, key: u64) -> io::Result<()> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        Ok(epoll::add(
            &self.0,
            socket,
            epoll::EventData::new_u64(key),
            flags,
        )?)
    }

    fn delete(&self, socket: impl AsFd) {
        // A failure only means the socket was no longer registered, which is the goal.
        let _ = epoll::delete(&self.0, socket);
    }

    /// Waits up to `timeout` and returns how many of `events` were filled.
    fn wait(&self, events: &mut [epoll::Event], timeout: Duration) -> io::Result<usize> {
        // Whole milliseconds, at least one, as `epoll_wait` takes them: a shorter wait
        // would only spin.
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i64;
        let timeout = rustix::time::Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        match epoll::wait(&self.0, events, Some(&timeout)) {
            Ok(n) => Ok(n),
            Err(rustix::io::Errno::INTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn reads_every_socket_in_order_until_each_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut served: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        // Match each accepted socket to its client by port.
        served.sort_by_key(|s| s.peer_addr().unwrap().port());
        let mut clients = clients;
        clients.sort_by_key(|c| c.local_addr().unwrap().port());
        let writer = std::thread::spawn(move || {
            for (i, s) in served.iter_mut().enumerate() {
                // 200 KiB per socket: more than one recv's worth, so order matters.
                let data: Vec<u8> = (0..200 * 1024).map(|k| (k * (i + 1)) as u8).collect();
                s.write_all(&data).unwrap();
            }
            drop(served);
        });
        let mut got = vec![Vec::new(); 3];
        let mut closed = vec![false; 3];
        let done = read_until_closed(
            &clients,
            Instant::now() + Duration::from_secs(30),
            |i, ev| match ev {
                Event::Data(d) => got[i].extend_from_slice(d),
                Event::Closed(e) => {
                    assert!(e.is_none(), "{e:?}");
                    closed[i] = true;
                }
            },
        )
        .unwrap();
        writer.join().unwrap();
        assert!(done);
        assert_eq!(closed, vec![true; 3]);
        for (i, g) in got.iter().enumerate() {
            let want: Vec<u8> = (0..200 * 1024).map(|k| (k * (i + 1)) as u8).collect();
            assert!(
                g == &want,
                "socket {i}: {} bytes, wrong order or content",
                g.len()
            );
        }
    }

    #[test]
    fn stops_at_the_deadline_when_a_socket_stays_open() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _served = listener.accept().unwrap();
        let done = read_until_closed(
            &[client],
            Instant::now() + Duration::from_millis(200),
            |_, _| panic!("nothing was sent"),
        )
        .unwrap();
        assert!(!done);
    }
}
