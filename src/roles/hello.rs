//! Greeting: sends a message to each client and closes, as the classic "daytime"-style
//! exercise does. Whatever the client sends is read and discarded, so closing never
//! resets the connection under the greeting.
//!
//! Try it: `switchboard hello --message "hi there"`, then `nc 127.0.0.1 7009`.

use crate::role::{Flow, Role, Session};

/// Default TCP address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7009";

/// Default message (a newline is added).
pub const DEFAULT_MESSAGE: &str = "Hello, world!";

/// The greeting role.
#[derive(Clone, Debug)]
pub struct Hello {
    message: Vec<u8>,
}

impl Hello {
    /// Greets with `message` followed by a newline.
    pub fn new(message: &str) -> Self {
        let mut message = message.as_bytes().to_vec();
        message.push(b'\n');
        Hello { message }
    }
}

impl Role for Hello {
    type Session = Hello;

    fn name(&self) -> &'static str {
        "hello"
    }
}

impl Session for Hello {
    fn open(&mut self) -> (Vec<u8>, Flow) {
        (std::mem::take(&mut self.message), Flow::Close)
    }

    fn data(&mut self, _input: Vec<u8>) -> (Vec<u8>, Flow) {
        (Vec::new(), Flow::Continue)
    }
}
