//! Plumbing every role stands on: the accept loop, a TCP connection's plumbing (the
//! reader/writer pair, byte counts, idle timer, linger, close reason), the zero-copy
//! relay (splice), the UDP endpoint, the line framer, shutdown and counters, and the
//! parsing of what users type (addresses, durations, access lists).
//!
//! Nothing here knows about a role; roles are built from these pieces.

pub mod access;
pub mod bind;
pub mod connection;
pub mod describe;
pub mod duration;
pub mod handoff;
pub mod idle;
pub mod limits;
pub mod lines;
pub mod listener;
pub mod per_ip;
pub mod reader;
pub mod sendfile;
pub mod shutdown;
pub mod socket;
pub mod splice;
pub mod stats;
pub mod stream;
pub(crate) mod sys;
pub mod tls;
pub mod udp;
pub mod writer;
