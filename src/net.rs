//! Plumbing every role stands on: addresses and access lists, the accept loop, the
//! reader/writer pair of a TCP connection, the zero-copy relay (splice), the UDP endpoint,
//! the line framer, shutdown and counters.
//!
//! Nothing here knows about a role; roles are built from these pieces.

pub mod addr;
pub mod conn;
pub mod limits;
pub mod lines;
pub mod listener;
pub mod shutdown;
pub mod splice;
pub mod stats;
pub mod udp;
