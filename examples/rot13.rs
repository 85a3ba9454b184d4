//! A complete new role in one file: ROT13 over TCP and UDP, on switchboard's public API.
//!
//! Run it: `cargo run --example rot13 -- --listen 127.0.0.1:7013` (`--help` lists the
//! options every server takes), then `printf 'Hello\n' | nc -N 127.0.0.1 7013` prints
//! `Uryyb`, and `printf 'Hello' | nc -u -w1 127.0.0.1 7013` answers the datagram.
//!
//! Everything a built-in role gets comes with it: reader and writer actors per client,
//! `--max-conns`, access lists, timeouts, the log pipe, graceful shutdown on Ctrl-C.
//!
//! It is also a plug-in: `cargo run --example rot13 -- serve examples/rot13.toml` runs a
//! config file in which `role = "rot13"` services sit beside the built-in roles (echo,
//! here), with `check`, reload and the admin listener's `/metrics` as for any of them.

use std::net::SocketAddr;

use clap::Parser;
use switchboard::role::{Flow, Role, Session};
use switchboard::service::{self, Addrs, ServerArgs, Verbosity};

/// The role: stateless, so it is its own session (each client gets a copy).
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

    fn datagram(&self, _peer: SocketAddr, mut input: Vec<u8>) -> Option<Vec<u8>> {
        rot13(&mut input);
        Some(input)
    }
}

impl Session for Rot13 {
    fn data(&mut self, mut input: Vec<u8>) -> (Vec<u8>, Flow) {
        // ROT13 is byte-wise, so chunk borders do not matter: transform and send on.
        rot13(&mut input);
        (input, Flow::Continue)
    }
}

/// ROT13 over TCP and UDP.
#[derive(Parser)]
#[command(name = "rot13")]
pub struct Args {
    /// Address to serve, TCP and UDP.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7013")]
    pub listen: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub verbosity: Verbosity,
}

#[allow(dead_code)] // the tests include this file for `Rot13` and `Args`, not `main`
fn main() -> std::process::ExitCode {
    // `rot13 serve FILE` (and `check`, `reload`): the built-in roles, and rot13 by name.
    let commands = ["serve", "check", "reload"];
    if std::env::args()
        .skip(1)
        .any(|a| commands.contains(&a.as_str()))
    {
        return switchboard::serve::Server::new()
            .role("rot13", || Rot13)
            .main();
    }
    let args = Args::parse();
    let addrs = Addrs::both(&args.listen);
    service::serve_role(Rot13, addrs, &args.server, args.verbosity)
}
