//! Running a server as a process: bind, serve until SIGINT or SIGTERM, drain, summarise.
//!
//! Shutdown order: the signal fires the [`Trigger`]; accept loops close their listeners and
//! shut the read half of every connection; readers end as on a client's EOF and drop
//! their senders; writers flush and close. The process waits for the connection tasks to
//! finish for at most the drain time (a second signal cuts it short). A server that
//! leaves connections open at shutdown (the proxy), or whose writers may still be waiting
//! on a client that stopped reading (HTTP), is then told to close what is left
//! ([`run_until_signal_closing`]), so each connection still logs its own line; the
//! process logs one summary line and returns.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::Result;
use crate::net::describe::describe;
use crate::net::listener::ServerConfig;
use crate::net::shutdown::{self, Shutdown};
use crate::net::stats::Stats;
use crate::net::{bind, limits};
use crate::role::{self, Role};
use crate::rt::{self, TcpListener, UdpSocket};

/// Default time given to open connections to finish after a shutdown signal.
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(1500);

/// How often the drain checks whether the connection tasks are gone.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// After the drain, how long connections told to close are given to end and log.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The sockets a server was asked to use.
pub struct Bound {
    pub tcp: Option<TcpListener>,
    pub udp: Option<UdpSocket>,
}

/// Binds the addresses given; the error names the address that failed.
pub async fn bind(tcp: Option<&str>, udp: Option<&str>) -> Result<Bound> {
    let tcp = match tcp {
        Some(a) => Some(bind::bind_tcp(a).await?),
        None => None,
    };
    let udp = match udp {
        Some(a) => Some(bind::bind_udp(a).await?),
        None => None,
    };
    Ok(Bound { tcp, udp })
}

/// Binds `n` listeners on one address with `SO_REUSEPORT` (port 0 picks one port for all).
pub async fn bind_reuseport(addr: &str, n: usize) -> Result<Vec<std::net::TcpListener>> {
    let mut target = *rt::resolve(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (TCP): {}", describe(&e)))?
        .first()
        .ok_or_else(|| format!("cannot listen on {addr} (TCP): it resolves to no address"))?;
    // SO_REUSEPORT would let this process join a port another process already listens
    // on with the option (a second switchboard, say) and split its clients. A plain bind
    // first fails on any listener, so a busy port is an error here as everywhere.
    let probe = std::net::TcpListener::bind(target)
        .map_err(|e| format!("cannot listen on {target} (TCP): {}", describe(&e)))?;
    target = probe.local_addr()?; // the port picked, when 0 was asked for
    drop(probe);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let l = bind::bind_tcp_reuseport(target)
            .map_err(|e| format!("cannot listen on {target} (TCP): {}", describe(&e)))?;
        target = l.local_addr()?; // the port the first bind picked, for the rest
        listeners.push(l);
    }
    Ok(listeners)
}

/// Prepares the process for serving: raises the open-files limit.
pub fn prepare() {
    match limits::raise_nofile_limit() {
        Ok(n) => log::debug!(open_files = n; "open-files limit"),
        Err(e) => {
            log::warn!(error = e.to_string().as_str(); "could not raise the open-files limit")
        }
    }
}

/// Runs `serve` until SIGINT or SIGTERM, then drains for up to `drain` and logs a summary.
pub async fn run_until_signal<F, Fut>(
    role: &str,
    stats: Arc<Stats>,
    drain: Duration,
    serve: F,
) -> Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_until_signal_closing(role, stats, drain, move |shutdown, _close| serve(shutdown)).await
}

/// Like [`run_until_signal`], for a server that leaves its connections open at shutdown:
/// `serve` also gets a second [`Shutdown`] that fires when the drain is over (or a second
/// signal came). The server closes what is still open then, and the process waits up to
/// [`CLOSE_WAIT`] for those connections to end (and log) before the summary.
pub async fn run_until_signal_closing<F, Fut>(
    role: &str,
    stats: Arc<Stats>,
    drain: Duration,
    serve: F,
) -> Result<()>
where
    F: FnOnce(Shutdown, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut signals = rt::Signals::new()?;
    let (trigger, shutdown) = shutdown::channel();
    let (close_trigger, close) = shutdown::channel();
    let started = Instant::now();
    let server = rt::spawn(serve(shutdown, close));
    let signal = signals.next().await;
    log::info!(role = role, signal = signal; "shutting down");
    trigger.fire();
    server.await;

    let deadline = Instant::now() + drain;
    let drained = async {
        while stats.live_tasks() > 0 && Instant::now() < deadline {
            rt::sleep(DRAIN_POLL).await;
        }
    };
    futures::select! {
        _ = drained.fuse() => {}
        _ = signals.next().fuse() => log::warn!(role = role; "second signal: closing at once"),
    }
    let left = stats.live_tasks();
    if left > 0 {
        log::warn!(role = role, tasks = left; "closing connections that did not finish in time");
    }
    close_trigger.fire();
    if left > 0 {
        let deadline = Instant::now() + CLOSE_WAIT;
        while stats.live_tasks() > 0 && Instant::now() < deadline {
            rt::sleep(DRAIN_POLL).await;
        }
    }
    log::info!(role = role, uptime_s = started.elapsed().as_secs(); "stopped: {}", stats.summary());
    Ok(())
}

/// Binds `tcp` and `udp` (either may be `None`), serves `role` on them until SIGINT or
/// SIGTERM, drains and logs a summary: a whole server process in one call.
pub async fn serve_role<R: Role>(
    role: R,
    (tcp, udp): (Option<String>, Option<String>),
    config: Arc<ServerConfig>,
) -> Result<()> {
    let bound = bind(tcp.as_deref(), udp.as_deref()).await?;
    let stats = Stats::new();
    let role = Arc::new(role);
    let name = role.name();
    let serve_stats = stats.clone();
    run_until_signal(name, stats, DEFAULT_DRAIN, move |shutdown| {
        role::run(role, bound.tcp, bound.udp, config, serve_stats, shutdown)
    })
    .await
}
