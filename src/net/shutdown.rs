//! Shutdown as a dropped sender.
//!
//! A [`Trigger`] holds the only sender of a channel that never carries a message; every
//! [`Shutdown`] is a receiver of it. Firing (or dropping) the trigger disconnects the
//! channel, and every waiter wakes at once. Only long-lived loops wait on it (accept
//! loops, brokers, UDP receive loops): connections are ended by their accept loop, which
//! shuts their read halves, so no per-message path polls a shared channel.

/// A channel whose only meaning is being dropped.
#[derive(Debug)]
enum Void {}

/// Fires the shutdown when [`Trigger::fire`] is called or the trigger is dropped.
pub struct Trigger {
    _tx: flume::Sender<Void>,
}

impl Trigger {
    /// Begins the shutdown of everything holding the matching [`Shutdown`].
    pub fn fire(self) {}
}

/// The waiting side: cheap to clone, one per long-lived loop.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: flume::Receiver<Void>,
}

impl Shutdown {
    /// Completes once the trigger has fired (at once if it already has).
    pub async fn wait(&self) {
        // The channel carries no values, so the only outcome is Disconnected.
        let _ = self.rx.recv_async().await;
    }

    /// Whether the trigger has fired.
    pub fn is_fired(&self) -> bool {
        self.rx.is_disconnected()
    }
}

impl Shutdown {
    /// A waiter that fires when either `a` or `b` fires (a task watches both until then).
    pub fn either(a: &Shutdown, b: &Shutdown) -> Shutdown {
        use futures::FutureExt;
        let (trigger, either) = channel();
        let (a, b) = (a.clone(), b.clone());
        crate::rt::spawn(async move {
            futures::select! {
                _ = a.wait().fuse() => {}
                _ = b.wait().fuse() => {}
            }
            trigger.fire();
        });
        either
    }
}

/// A new trigger and its first waiter.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = flume::bounded(0);
    (Trigger { _tx: tx }, Shutdown { rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_wakes_every_waiter() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        assert!(!shutdown.is_fired());
        trigger.fire();
        assert!(shutdown.is_fired() && other.is_fired());
        crate::rt::block_on(async {
            shutdown.wait().await;
            other.wait().await;
        });
    }
}
