//! switchboard: small network services as actors on async-std.
//!
//! Each accepted TCP client becomes two actors, a reader that owns the read half and a
//! writer that owns the write half, linked by bounded flume channels to an upstream
//! actor: the role. A UDP socket gets the same pair (a receive loop and a send actor).
//! ARCHITECTURE.md draws the map; in code:
//!
//! - [`rt`]: the runtime seam, the only module naming async-std.
//! - [`net`]: plumbing (accept loop, reader/writer, UDP endpoint, shutdown, counters).
//! - [`role`]: the public API for writing a role; [`roles`]: the built-in ones.
//! - [`client`]: the nc-style tools `connect` and `listen`.
//! - [`service`]: running a server as a process (signals, drain, summary).
//! - [`logging`]: the servers' log output, which a stalled or closed stdout cannot stop.
//! - [`metrics`]: every service's counters as Prometheus (OpenMetrics) text.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod client;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod options;
pub mod role;
pub mod roles;
pub mod rt;
pub mod serve;
pub mod service;

/// `eprintln!` for notices, except that a stderr that is closed or gone (`2>&-`, a pipe
/// whose reader left) is ignored instead of panicking: a notice is never worth a crash.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The error type for glue code: anything that can be shown to a user.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
