//! The runtime seam: the only module that names async-std (and its signal helper).
//!
//! async-std is the runtime the design card asks for; upstream it is deprecated in favour
//! of smol, on whose crates it is built. Everything else in the crate takes its tasks,
//! timers, sockets and stdio from here, so moving runtime is a change to this one file.

use std::time::Duration;

pub use async_std::net::{TcpListener, TcpStream, UdpSocket};
pub use async_std::task::{JoinHandle, block_on, sleep, spawn, spawn_blocking};

/// Runs `fut` for at most `limit`; `None` when the time ran out first.
pub async fn timeout<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    async_std::future::timeout(limit, fut).await.ok()
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
pub async fn resolve(addr: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use async_std::net::ToSocketAddrs;
    Ok(addr.to_socket_addrs().await?.collect())
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

    /// Waits for the next signal and returns its name.
    pub async fn next(&mut self) -> &'static str {
        use futures::StreamExt;
        match self.0.next().await {
            Some(signal_hook::consts::SIGTERM) => "SIGTERM",
            Some(_) => "SIGINT",
            // The stream only ends when its handle is closed, which we never do.
            None => futures::future::pending().await,
        }
    }
}
