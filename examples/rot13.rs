//! A complete new role in one file: ROT13 over TCP and UDP, on switchboard's public API.
//!
//! Run it: `cargo run --example rot13 -- 127.0.0.1:7013`, then
//! `printf 'Hello\n' | nc -N 127.0.0.1 7013` prints `Uryyb`, and
//! `printf 'Hello' | nc -u -w1 127.0.0.1 7013` answers the datagram.
//!
//! Everything a built-in role gets comes with it: reader and writer actors per client,
//! `--max-conns`-style limits through `ServerConfig`, graceful shutdown on Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard::net::listener::ServerConfig;
use switchboard::role::{Role, Session};

/// The role: stateless, so it is its own session too.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rot13;

/// Rotates ASCII letters by 13 places, in place; every other byte is left alone, so
/// UTF-8 text stays valid and binary data passes through.
pub fn rot13(bytes: &mut [u8]) {
    for b in bytes {
        *b = match *b {
            b'a'..=b'z' => (*b - b'a' + 13) % 26 + b'a',
            b'A'..=b'Z' => (*b - b'A' + 13) % 26 + b'A',
            other => other,
        };
    }
}

impl Role for Rot13 {
    type Session = Rot13;

    fn name(&self) -> &'static str {
        "rot13"
    }

    fn session(&self, _peer: SocketAddr) -> Rot13 {
        Rot13
    }

    fn datagram(&self, _peer: SocketAddr, mut input: Vec<u8>) -> Option<Vec<u8>> {
        rot13(&mut input);
        Some(input)
    }
}

impl Session for Rot13 {
    fn data(&mut self, mut input: Vec<u8>) -> Vec<u8> {
        // ROT13 is byte-wise, so chunk borders do not matter: transform and send on.
        rot13(&mut input);
        input
    }
}

#[allow(dead_code)] // the tests include this file for `Rot13` and do not call main
fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7013".into());
    femme::with_level(log::LevelFilter::Info);
    let served = (Some(addr.clone()), Some(addr));
    let config = Arc::new(ServerConfig::default());
    if let Err(e) =
        switchboard::rt::block_on(switchboard::service::serve_role(Rot13, served, config))
    {
        eprintln!("rot13: {e}");
        std::process::exit(1);
    }
}
