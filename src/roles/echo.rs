//! Echo (RFC 862): every byte comes back exactly, in order; each UDP datagram comes back
//! whole. No framing, nothing added, nothing dropped.
//!
//! Try it: `switchboard echo`, then `nc 127.0.0.1 7007` or `nc -u 127.0.0.1 7007`.

use std::net::SocketAddr;

use crate::role::{Flow, Role, Session};

/// Default address for TCP and UDP.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7007";

/// The echo role (and its session: echo keeps no state).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Role for Echo {
    type Session = Echo;

    fn name(&self) -> &'static str {
        "echo"
    }

    fn datagram(&self, _peer: SocketAddr, input: Vec<u8>) -> Option<Vec<u8>> {
        Some(input)
    }
}

impl Session for Echo {
    fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, Flow) {
        // The buffer the reader filled goes straight to the writer: no copy.
        (input, Flow::Continue)
    }
}
