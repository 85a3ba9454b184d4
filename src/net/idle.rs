//! A connection's idle clock: when something last moved ([`Activity`]), and a timer over
//! it ([`IdleTimer`]) armed once per idle period, not once per message.
//!
//! Whatever moves touches the clock (one relaxed store); the timer sleeps until the limit
//! could have passed since the last touch, then looks: if something moved meanwhile, it
//! sleeps again for the time left. A busy connection so arms one timer per limit's worth
//! of time, however many messages it moves. The reader's idle timeout (`net/reader.rs`)
//! and the proxy's idle and fin timeouts (a session's two directions share one clock)
//! both stand on it.
//!
//! Try it: `switchboard echo --idle-timeout 3s`, then `nc 127.0.0.1 7007` and wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::rt;

/// When anything last moved on a connection; shared by the tasks that move its bytes.
pub struct Activity {
    base: Instant,
    /// Nanoseconds from `base` to the last touch (enough for centuries): an atomic, so
    /// any task may touch it.
    last_ns: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// A clock touched now.
    pub fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Something moved: the quiet starts again from now.
    pub fn touch(&self) {
        self.last_ns
            .store(self.base.elapsed().as_nanos() as u64, Relaxed);
    }

    /// How long nothing has moved.
    pub fn quiet_for(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_ns.load(Relaxed)))
    }
}

type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A timer that fires once an [`Activity`] has been quiet for a limit. It keeps its sleep
/// between polls, so a wait that is dropped and made again (a `select!` loop, a reader
/// polled once per message) does not arm a new timer each time.
#[derive(Default)]
pub struct IdleTimer {
    sleep: Option<Sleep>,
    /// The limit the sleep was armed for: a new limit (the proxy's fin timeout once a
    /// side has half-closed) arms it again.
    limit: Option<Duration>,
    /// Looks per limit: 1 (the default) looks only when the limit could have passed;
    /// more ([`IdleTimer::looking`]) look that much more often as well.
    looks: u32,
}

impl IdleTimer {
    /// A timer with nothing armed yet.
    pub fn new() -> Self {
        IdleTimer::default()
    }

    /// A timer that also looks `looks` times per limit, for a `moved` that sees what the
    /// clock does not: a look counts a change since the last look as activity *now*, so
    /// the further apart the looks, the more a change made while the clock was running
    /// anyway (bytes a writer wrote just behind its reader) is over-counted. With a look
    /// every limit, a session quiet since just after a look would wait out two limits;
    /// with `looks`, at most one limit and a `looks`th.
    pub fn looking(looks: u32) -> Self {
        IdleTimer {
            looks: looks.max(1),
            ..IdleTimer::default()
        }
    }

    /// Ready once `activity` has been quiet for `limit`. Each time the timer fires,
    /// `moved` takes a last look at what the clock cannot see (the proxy's send queues):
    /// `true` touches the clock and the wait goes on.
    pub fn poll_quiet(
        &mut self,
        cx: &mut Context<'_>,
        activity: &Activity,
        limit: Duration,
        mut moved: impl FnMut() -> bool,
    ) -> Poll<()> {
        if self.limit != Some(limit) {
            self.limit = Some(limit);
            self.sleep = None;
            // A new limit counts from the clock: what `moved` would see from before it (a
            // whole session's bytes, when no limit was armed) is not news.
            let _ = moved();
        }
        let every = limit / self.looks.max(1);
        loop {
            let sleep = self.sleep.get_or_insert_with(|| {
                Box::pin(rt::sleep(
                    limit.saturating_sub(activity.quiet_for()).min(every),
                ))
            });
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            if moved() {
                activity.touch();
            } else if activity.quiet_for() >= limit {
                return Poll::Ready(());
            }
            // Something moved since the sleep was armed: sleep for the time left (polled
            // at once, so it holds this task's waker).
        }
    }

    /// [`IdleTimer::poll_quiet`] as a future; with no limit, it never completes.
    pub async fn quiet(
        &mut self,
        activity: &Activity,
        limit: Option<Duration>,
        mut moved: impl FnMut() -> bool,
    ) {
        match limit {
            Some(limit) => {
                std::future::poll_fn(|cx| self.poll_quiet(cx, activity, limit, &mut moved)).await
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits out `timer` with a `moved` that sees a change at its look number `moving`
    /// (from 1) and none at any other; returns how many looks it took.
    async fn looks_until_quiet(
        timer: &mut IdleTimer,
        activity: &Activity,
        limit: Duration,
        moving: usize,
    ) -> usize {
        let mut looks = 0;
        timer
            .quiet(activity, Some(limit), || {
                looks += 1;
                looks == moving
            })
            .await;
        looks
    }

    #[test]
    fn the_timer_waits_out_the_quiet_not_the_time_since_it_was_armed() {
        rt::block_on(async {
            let activity = Activity::new();
            let mut timer = IdleTimer::new();
            let limit = Duration::from_millis(50);
            // Touched while the timer sleeps: it fires, sees the touch, and waits again.
            let start = Instant::now();
            let touch = async {
                rt::sleep(limit / 2).await;
                let before = start.elapsed();
                activity.touch();
                before
            };
            let ((), touched) =
                futures::join!(timer.quiet(&activity, Some(limit), || false), touch);
            assert!(start.elapsed() >= touched + limit);
            assert!(activity.quiet_for() >= limit);
            // A last look that finds movement keeps it going once more.
            assert_eq!(looks_until_quiet(&mut timer, &activity, limit, 1).await, 2);
        });
    }

    #[test]
    fn what_moved_before_a_limit_was_set_does_not_put_the_limit_off() {
        rt::block_on(async {
            let activity = Activity::new();
            let limit = Duration::from_millis(40);
            for mut timer in [IdleTimer::new(), IdleTimer::looking(8)] {
                // A `moved` whose snapshot is from long before (the session's start): its
                // first look sees a change, later looks none.
                looks_until_quiet(&mut timer, &activity, limit, 1).await;
                assert_eq!(activity.last_ns.load(Relaxed), 0, "the clock was touched");
            }
        });
    }

    #[test]
    fn a_timer_looking_often_looks_between_the_limits() {
        rt::block_on(async {
            let activity = Activity::new();
            let limit = Duration::from_millis(400);
            for (mut timer, more_than) in [(IdleTimer::new(), 2), (IdleTimer::looking(8), 3)] {
                // A change at the first look after the new limit's, then none: a timer
                // looking once per limit looks twice more (the change, then the quiet
                // limit); one looking eight times sees the change an eighth of the limit
                // in and looks several times before the limit is up. (Only a thread held
                // up for most of the limit could make it look less.)
                let looks = looks_until_quiet(&mut timer, &activity, limit, 2).await;
                assert!(looks > more_than, "{looks} looks");
                assert!(
                    activity.last_ns.load(Relaxed) > 0,
                    "the change was not counted"
                );
            }
        });
    }
}
