//! The runtime seam: the only module that names async-std (and its signal helper) and,
//! with `net`, async-io.
//!
//! Tasks, timers, stdio and signals come from async-std, the runtime the design card
//! asks for; upstream it is deprecated in favour of smol, on whose crates it is built.
//! Sockets are async-io's `Async` (the reactor async-std itself runs on) wrapped around
//! std's sockets directly, so a read is one `recv` and a wait is one readiness
//! registration: `net::stream` builds the connection type on it. Everything else in the
//! crate takes its tasks, timers, sockets and stdio from here, so moving runtime is a
//! change to this one file, its `timeouts` (one table of deadlines served by a single
//! reactor timer, for the timeouts a server arms around nearly every wait) and
//! `net::stream`.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

mod timeouts;

pub use async_io::Async;
pub use async_std::task::{JoinHandle, block_on, sleep, spawn, spawn_blocking};
pub use timeouts::timeout;

thread_local! {
    /// Whether this thread runs its own executor (see [`spawn_pinned_thread`]).
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread runs its own executor (see [`spawn_pinned_thread`]).
fn is_pinned() -> bool {
    PINNED.with(Cell::get)
}

/// Spawns a task of a connection (its writer, a pump) beside the task spawning it. On a
/// pinned thread it goes on that thread's own executor, so a connection's actors never
/// hop threads (each hop would be a cross-thread wake-up); anywhere else it goes on the
/// shared executor, where idle threads steal work.
pub fn spawn_here<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if PINNED.with(Cell::get) {
        async_std::task::spawn_local(fut)
    } else {
        spawn(fut)
    }
}

/// Spawns a new connection's task, detached. On a pinned thread it stays there (the
/// proxy's threads accept for themselves); from anywhere else — an accept loop on the
/// shared executor — it goes to the next of the connection threads in turn, so the
/// connection's reader, writer and session share one thread and wake each other there
/// without a system call (see [`set_connection_threads`]).
pub fn spawn_connection<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if PINNED.with(Cell::get) {
        drop(async_std::task::spawn_local(fut));
    } else if let Some(pool) = connection_pool() {
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.threads.len();
        if let Err(flume::SendError(job)) = pool.threads[i].send(Box::pin(fut)) {
            // That thread is gone (it cannot end but by a panic): the shared executor.
            drop(spawn(job));
        }
    } else {
        drop(spawn(fut));
    }
}

/// A connection's task on its way to a connection thread.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The connection threads: each an executor of its own fed through its own channel.
struct Pool {
    threads: Vec<flume::Sender<Job>>,
    next: AtomicUsize,
}

/// The connection threads asked for ([`set_connection_threads`]); `usize::MAX` until
/// then, which means one per core.
static CONNECTION_THREADS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets how many connection threads [`spawn_connection`] spreads connections over: one
/// per core by default; 0 puts connections on the shared executor, where idle threads
/// steal work. Takes effect only before the first connection is spawned.
///
/// The reactor stays shared, so a connection thread is woken by whichever thread waits
/// on it; what a connection thread saves is every wake-up between a connection's own
/// tasks (the session's reply to its writer, the writer's room to the reader), which on
/// the shared executor wake another thread and its futex.
pub fn set_connection_threads(n: usize) {
    CONNECTION_THREADS.store(n, Ordering::Relaxed);
}

/// The connection threads, started on first use; `None` when there are none.
fn connection_pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = match CONNECTION_THREADS.load(Ordering::Relaxed) {
            usize::MAX => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            // Unbounded: the accept loop never waits on a thread; each job is one
            // connection it has already accepted.
            let (job_tx, job_rx) = flume::unbounded::<Job>();
            let started = spawn_pinned_thread(format!("conn-{i}"), move || async move {
                while let Ok(job) = job_rx.recv_async().await {
                    drop(async_std::task::spawn_local(job));
                }
            });
            match started {
                Ok(_) => threads.push(job_tx),
                Err(e) => {
                    log::warn!(error = e.to_string().as_str(); "could not start a connection thread");
                    break;
                }
            }
        }
        (!threads.is_empty()).then(|| Pool {
            threads,
            next: AtomicUsize::new(0),
        })
    })
    .as_ref()
}

/// Starts an OS thread that runs `make()` to completion on its own executor; tasks it
/// starts with [`spawn_here`] stay on it. (The I/O reactor and timers stay shared.)
pub fn spawn_pinned_thread<F>(
    name: String,
    make: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<F::Output>>
where
    F: Future + 'static,
    F::Output: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        PINNED.with(|p| p.set(true));
        // `make()` runs as a task of its own rather than as the future `block_on` drives:
        // `block_on` re-polls its future whenever any task on this thread wakes, and an
        // accept loop polled that way retries accept(2) (and re-arms its listener) once
        // per message of every session on the thread.
        block_on(async_std::task::spawn_local(make()))
    })
}

/// Wraps a bound, listening std socket (set non-blocking here) for the runtime.
pub fn listener_from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    Ok(TcpListener(Async::new(listener)?))
}

/// A listening TCP socket on the reactor.
pub struct TcpListener(Async<std::net::TcpListener>);

impl TcpListener {
    /// Binds and listens on the first of `addr`'s addresses that can be bound. A host
    /// name is resolved on the calling thread: `net::bind` resolves names off-thread
    /// first and passes addresses.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        listener_from_std(std::net::TcpListener::bind(addr)?)
    }

    /// The next connection: a non-blocking std socket (`net::stream::Stream::new` puts it
    /// on the reactor) and the peer's address.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        self.0.read_with(|l| l.accept()).await
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// Another descriptor for the same listening socket, on the reactor.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        listener_from_std(self.0.get_ref().try_clone()?)
    }
}

/// Connects to `addr`, waiting on the reactor while the connection is in progress.
pub async fn connect(addr: SocketAddr) -> io::Result<Async<std::net::TcpStream>> {
    Async::<std::net::TcpStream>::connect(addr).await
}

/// A UDP socket on the reactor.
pub struct UdpSocket(Async<std::net::UdpSocket>);

impl UdpSocket {
    /// Binds the first of `addr`'s addresses that can be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        Ok(UdpSocket(Async::new(std::net::UdpSocket::bind(addr)?)?))
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    /// Wraps a bound std socket (set non-blocking here) for the runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket(Async::new(socket)?))
    }

    /// Another descriptor for the same socket, on the reactor.
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        UdpSocket::from_std(self.0.get_ref().try_clone()?)
    }

    /// Sets the one peer [`UdpSocket::send`] sends to and [`UdpSocket::recv`] hears from.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.0.get_ref().connect(addr)
    }

    /// Receives one datagram and says who sent it.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }

    /// Sends one datagram to `addr`.
    /// Sends now if the socket takes the datagram; `WouldBlock` if it would have to wait.
    pub fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.0.get_ref().send_to(buf, addr)
    }

    pub async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, addr).await
    }

    /// Receives one datagram from the connected peer.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf).await
    }

    /// Sends one datagram to the connected peer.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf).await
    }
}

/// Standard input as an async reader (async-std reads it on a blocking thread).
pub fn stdin() -> async_std::io::Stdin {
    async_std::io::stdin()
}

/// Standard output as an async writer.
pub fn stdout() -> async_std::io::Stdout {
    async_std::io::stdout()
}

/// Resolves `addr` ("host:port", "[::1]:80", "1.2.3.4:5") to every address it names.
pub async fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(async_std::net::ToSocketAddrs::to_socket_addrs(addr)
        .await?
        .collect())
}

/// Completes at the first SIGINT (Ctrl-C) or SIGTERM after it is called, then again at
/// the next one: the caller awaits it once to begin a graceful stop and may await it
/// again to stop at once.
pub struct Signals(signal_hook_async_std::Signals);

impl Signals {
    /// Installs the handlers for SIGINT and SIGTERM.
    pub fn new() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        Ok(Signals(signal_hook_async_std::Signals::new([
            SIGINT, SIGTERM,
        ])?))
    }

    /// Installs the handlers for SIGINT, SIGTERM and SIGHUP (`serve`'s reload).
    pub fn with_reload() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        Ok(Signals(signal_hook_async_std::Signals::new([
            SIGINT, SIGTERM, SIGHUP,
        ])?))
    }

    /// Waits for the next signal and returns its name.
    pub async fn next(&mut self) -> &'static str {
        use futures::StreamExt;
        match self.0.next().await {
            Some(signal_hook::consts::SIGTERM) => "SIGTERM",
            Some(signal_hook::consts::SIGHUP) => "SIGHUP",
            Some(_) => "SIGINT",
            // The stream only ends when its handle is closed, which we never do.
            None => futures::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_connection_and_what_it_spawns_share_a_connection_thread() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let name = || std::thread::current().name().map(str::to_owned);
        spawn_connection(async move {
            let outer = name();
            let inner = spawn_here(async move { name() }).await;
            let _ = done_tx.send((outer, inner));
        });
        let (outer, inner) = done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            outer.as_deref().is_some_and(|n| n.starts_with("conn-")),
            "{outer:?}"
        );
        assert_eq!(outer, inner);
    }
}
