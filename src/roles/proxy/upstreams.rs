//! The upstream table: which origin a new session tries first, failover, and back-off.
//!
//! Shared by every session of a proxy as a few atomics per upstream (an active count for
//! `least-conn`, a "down until" time for back-off, a round-robin cursor): choosing an
//! upstream is on the connect path of every session, so it is a handful of loads rather
//! than a round trip to an actor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::net::addr::describe;
use crate::rt::{self, TcpStream};

/// How new sessions pick an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each new session starts at the next upstream.
    #[default]
    RoundRobin,
    /// The upstream with the fewest open sessions.
    LeastConn,
    /// Always the first one that answers: failover order.
    First,
}

struct Upstream {
    /// As the user typed it; resolved again at every connect.
    target: String,
    active: AtomicUsize,
    /// Milliseconds since `Upstreams::base` until which this upstream is skipped; 0 = up.
    down_until: AtomicU64,
}

/// Every `--upstream`, with its state.
pub struct Upstreams {
    list: Vec<Upstream>,
    balance: Balance,
    cursor: AtomicUsize,
    /// How long a failed upstream is skipped.
    backoff: Duration,
    base: Instant,
}

/// Keeps a session counted against its upstream (for `least-conn`).
pub struct ActiveGuard(Arc<Upstreams>, usize);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.list[self.1].active.fetch_sub(1, Relaxed);
    }
}

/// A connected upstream.
pub struct Connected {
    pub stream: TcpStream,
    /// The upstream as configured (for logs).
    pub name: String,
    /// The address actually reached.
    pub addr: SocketAddr,
    pub guard: ActiveGuard,
}

impl Upstreams {
    pub fn new(targets: Vec<String>, balance: Balance, backoff: Duration) -> Arc<Self> {
        let list = targets
            .into_iter()
            .map(|target| Upstream {
                target,
                active: AtomicUsize::new(0),
                down_until: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Upstreams {
            list,
            balance,
            cursor: AtomicUsize::new(0),
            backoff,
            base: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// The order to try upstreams in: the balance policy's order, with those in back-off
    /// moved to the end (still tried when everything else fails).
    pub fn order(&self) -> Vec<usize> {
        let n = self.list.len();
        let mut order: Vec<usize> = match self.balance {
            Balance::First => (0..n).collect(),
            Balance::RoundRobin => {
                let start = self.cursor.fetch_add(1, Relaxed);
                (0..n).map(|i| (start + i) % n).collect()
            }
            Balance::LeastConn => {
                let mut o: Vec<usize> = (0..n).collect();
                o.sort_by_key(|&i| self.list[i].active.load(Relaxed));
                o
            }
        };
        let now = self.now_ms();
        order.sort_by_key(|&i| self.list[i].down_until.load(Relaxed) > now); // stable: keeps policy order
        order
    }

    /// Connects to the first upstream that answers, in [`Upstreams::order`]; the error
    /// says why each one failed.
    pub async fn connect(self: &Arc<Self>, timeout: Duration) -> Result<Connected, String> {
        let mut failures = Vec::new();
        for i in self.order() {
            let up = &self.list[i];
            match connect_one(&up.target, timeout).await {
                Ok((stream, addr)) => {
                    up.down_until.store(0, Relaxed);
                    up.active.fetch_add(1, Relaxed);
                    return Ok(Connected {
                        stream,
                        name: up.target.clone(),
                        addr,
                        guard: ActiveGuard(self.clone(), i),
                    });
                }
                Err(why) => {
                    log::warn!(upstream = up.target.as_str(), error = why.as_str(), backoff_ms = self.backoff.as_millis() as u64;
                        "proxy: upstream failed; skipping it for a while");
                    up.down_until
                        .store(self.now_ms() + self.backoff.as_millis() as u64, Relaxed);
                    failures.push(format!("{}: {why}", up.target));
                }
            }
        }
        Err(failures.join("; "))
    }
}

async fn connect_one(target: &str, timeout: Duration) -> Result<(TcpStream, SocketAddr), String> {
    let addrs = rt::resolve(target)
        .await
        .map_err(|e| format!("cannot resolve: {}", describe(&e)))?;
    let mut last = String::from("resolves to no address");
    for addr in addrs {
        match rt::timeout(timeout, TcpStream::connect(addr)).await {
            Some(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, addr));
            }
            Some(Err(e)) => last = describe(&e),
            None => last = format!("connect timed out after {timeout:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(balance: Balance) -> Arc<Upstreams> {
        Upstreams::new(
            vec!["a:1".into(), "b:1".into(), "c:1".into()],
            balance,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn orders() {
        let rr = table(Balance::RoundRobin);
        assert_eq!(rr.order(), vec![0, 1, 2]);
        assert_eq!(rr.order(), vec![1, 2, 0]);
        let first = table(Balance::First);
        assert_eq!(first.order(), vec![0, 1, 2]);
        assert_eq!(first.order(), vec![0, 1, 2]);
        let lc = table(Balance::LeastConn);
        lc.list[0].active.store(2, Relaxed);
        lc.list[1].active.store(1, Relaxed);
        assert_eq!(lc.order(), vec![2, 1, 0]);
        // An upstream in back-off goes last.
        first.list[0]
            .down_until
            .store(first.now_ms() + 60_000, Relaxed);
        assert_eq!(first.order(), vec![1, 2, 0]);
    }
}
