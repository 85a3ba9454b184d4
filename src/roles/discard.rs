//! Discard (RFC 863): reads everything and answers nothing. A sink for `switchboard bench
//! stream` and for proxies under test.
//!
//! Try it: `switchboard discard`, then `head -c 1G /dev/zero | nc -N 127.0.0.1 7010`.

use crate::role::{Flow, Role, Session};

/// Default address for TCP and UDP.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7010";

/// The discard role.
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

impl Role for Discard {
    type Session = Discard;

    fn name(&self) -> &'static str {
        "discard"
    }
}

impl Session for Discard {
    fn data(&mut self, _input: Vec<u8>) -> (Vec<u8>, Flow) {
        (Vec::new(), Flow::Continue)
    }
}
