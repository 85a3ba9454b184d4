//! Timeouts without a reactor timer each: every [`timeout`] keeps its deadline in a
//! table, and one driver task per table sleeps on a single async-io timer set for the
//! earliest of them. A pinned thread (a connection thread) has a table of its own, used
//! by its tasks alone; tasks elsewhere share one.
//!
//! ```text
//!   timeout(limit, fut) ──insert (deadline, waker)──▶ the thread's table (BTreeMap)
//!        │ fut ready: remove                             │ earliest
//!        ▼                                               ▼
//!   Some(output)             None ◀──wake at deadline── driver task ── one async-io Timer
//! ```
//!
//! An async-io timer costs a registration with the reactor each time it is armed — a
//! queued operation and a wake-up of the thread asleep in `epoll_wait` (an eventfd
//! write, and a turn of the reactor) — and another to cancel it. A server arms a timeout
//! around nearly every wait (an HTTP connection's keep-alive, a writer's look at its
//! acknowledgements), and nearly all of them are cancelled because the wait ended first.
//! Here arming is an insert into the table and cancelling a removal, under a lock only
//! its own thread takes; the driver's timer is re-armed only when a deadline comes in
//! before the one it is set for, and wakes only when the earliest deadline in the table
//! passes (or one that was cancelled meanwhile: it then sets itself for the next).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Runs `fut` for at most `limit`; `None` when the time ran out first.
pub async fn timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let Some(deadline) = Instant::now().checked_add(limit) else {
        // Beyond any clock: no deadline.
        return Some(fut.await);
    };
    let mut entry = Entry {
        deadline,
        key: None,
    };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        entry.poll_passed(cx).map(|()| None)
    })
    .await
}

/// The deadlines of the pending [`timeout`]s of one thread (or of the shared
/// executor), and what its driver is set for.
#[derive(Default)]
struct Table {
    /// By deadline, then by key (unique): the waker of the task that waits.
    entries: BTreeMap<(Instant, u64), Waker>,
    next_key: u64,
    /// The deadline the driver's timer is set for; `None` while it has none.
    armed: Option<Instant>,
    /// The driver's waker while it sleeps.
    driver: Option<Waker>,
}

/// A table and its lock: only one thread takes it, unless a timeout is dropped on
/// another (a future moved after it started waiting), so the lock costs no wait.
#[derive(Default)]
struct Shared(Mutex<Table>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // No method panics with the lock held midway; a poisoned table is whole.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

thread_local! {
    /// A pinned thread's table, made (and its driver spawned there) on first use.
    static LOCAL: OnceCell<Arc<Shared>> = const { OnceCell::new() };
}

/// The table for a timeout armed on this thread.
fn table_here() -> Arc<Shared> {
    if super::is_pinned() {
        return LOCAL.with(|local| {
            local
                .get_or_init(|| {
                    let shared = Arc::new(Shared::default());
                    drop(async_std::task::spawn_local(Driver::new(shared.clone())));
                    shared
                })
                .clone()
        });
    }
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let shared = Arc::new(Shared::default());
            drop(async_std::task::spawn(Driver::new(shared.clone())));
            shared
        })
        .clone()
}

/// One timeout's place in a table; removed when dropped.
struct Entry {
    deadline: Instant,
    /// Once registered: its table, its key there, and the waker it was registered with.
    key: Option<(Arc<Shared>, u64, Waker)>,
}

impl Entry {
    /// Ready once the deadline has passed; otherwise makes sure the table will wake the
    /// task that polls now.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        match &mut self.key {
            Some((_, _, waker)) if waker.will_wake(cx.waker()) => {}
            Some((shared, key, waker)) => {
                *waker = cx.waker().clone();
                let mut table = shared.lock();
                if let Some(stored) = table.entries.get_mut(&(self.deadline, *key)) {
                    *stored = cx.waker().clone();
                } else {
                    // The driver took it as passed between our look at the clock and
                    // now: it has been woken already.
                    drop(table);
                    cx.waker().wake_by_ref();
                }
            }
            None => {
                let shared = table_here();
                let key = insert(&shared, self.deadline, cx.waker().clone());
                self.key = Some((shared, key, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some((shared, key, _)) = &self.key {
            shared.lock().entries.remove(&(self.deadline, *key));
        }
    }
}

/// Adds a deadline; wakes the driver if it comes before the one the driver is set for.
fn insert(shared: &Shared, deadline: Instant, waker: Waker) -> u64 {
    let mut table = shared.lock();
    let key = table.next_key;
    table.next_key += 1;
    table.entries.insert((deadline, key), waker);
    let driver = match table.armed {
        Some(armed) if armed <= deadline => None,
        _ => table.driver.take(),
    };
    drop(table);
    if let Some(driver) = driver {
        driver.wake();
    }
    key
}

/// The task that sleeps until its table's earliest deadline and wakes what has passed.
struct Driver {
    shared: Arc<Shared>,
    timer: Option<async_io::Timer>,
    /// What `timer` is set for.
    set_for: Option<Instant>,
}

impl Driver {
    fn new(shared: Arc<Shared>) -> Self {
        Driver {
            shared,
            timer: None,
            set_for: None,
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let (passed, next) = {
                let mut table = this.shared.lock();
                let now = Instant::now();
                let later = table.entries.split_off(&(now + Duration::from_nanos(1), 0));
                let passed = std::mem::replace(&mut table.entries, later);
                let next = table.entries.keys().next().map(|(at, _)| *at);
                table.armed = next;
                table.driver = Some(cx.waker().clone());
                (passed, next)
            };
            for waker in passed.into_values() {
                waker.wake();
            }
            let Some(at) = next else {
                return Poll::Pending;
            };
            if this.set_for != Some(at) {
                match &mut this.timer {
                    Some(timer) => timer.set_at(at),
                    None => this.timer = Some(async_io::Timer::at(at)),
                }
                this.set_for = Some(at);
            }
            let timer = this.timer.as_mut().expect("set above");
            if Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.set_for = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_fires_at_its_deadline_and_not_before() {
        // On a pinned thread (its own table) and on the shared executor (the shared one).
        let pinned = crate::rt::spawn_pinned_thread("timeouts-test".into(), || async {
            let started = Instant::now();
            let never = futures::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(30), never).await, None);
            started.elapsed()
        });
        let waited = pinned.unwrap().join().unwrap();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        crate::rt::block_on(async {
            let started = Instant::now();
            let never = futures::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(30), never).await, None);
            assert!(started.elapsed() >= Duration::from_millis(30));
            // A later deadline registered first does not hold back an earlier one.
            let late = timeout(Duration::from_secs(30), futures::future::pending::<()>());
            let early = timeout(Duration::from_millis(20), futures::future::pending::<()>());
            let started = Instant::now();
            futures::pin_mut!(late, early);
            assert!(futures::poll!(late.as_mut()).is_pending());
            assert_eq!(early.await, None);
            assert!(started.elapsed() < Duration::from_secs(20));
        });
    }

    #[test]
    fn a_future_that_finishes_first_gives_its_output_and_leaves_no_deadline() {
        crate::rt::block_on(async {
            let quick = async {
                crate::rt::sleep(Duration::from_millis(5)).await;
                7
            };
            assert_eq!(timeout(Duration::from_secs(60), quick).await, Some(7));
            assert_eq!(timeout(Duration::MAX, async { 8 }).await, Some(8));
        });
        // An entry is in the table while it waits, and gone once dropped.
        let mut entry = Entry {
            deadline: Instant::now() + Duration::from_secs(60),
            key: None,
        };
        let waker = futures::task::noop_waker();
        let pending = entry.poll_passed(&mut Context::from_waker(&waker));
        assert!(pending.is_pending());
        let (shared, key, _) = entry.key.clone().unwrap();
        let deadline = entry.deadline;
        assert!(shared.lock().entries.contains_key(&(deadline, key)));
        drop(entry);
        assert!(!shared.lock().entries.contains_key(&(deadline, key)));
    }
}
