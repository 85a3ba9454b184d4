//! The nc-style tools: `connect` (stdin to a socket and the socket to stdout, at once)
//! and `listen` (print what arrives, from many clients at once).
//!
//! They write data to stdout and nothing else; errors go to stderr as one line each.

pub mod connect;
pub mod listen;

use std::net::SocketAddr;

use crate::Result;
use crate::net::describe::describe;
use crate::rt;

/// Resolves a `HOST:PORT` the user typed, with errors a user can act on.
pub async fn resolve_target(target: &str) -> Result<Vec<SocketAddr>> {
    if !target.contains(':') {
        return Err(format!("{target}: give HOST:PORT (for example 127.0.0.1:7007)").into());
    }
    match rt::resolve(target).await {
        Ok(addrs) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(format!("{target}: unknown host (it resolves to no address)").into()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Err(format!("{target}: not a valid HOST:PORT ({})", describe(&e)).into())
        }
        Err(_) => Err(format!("{target}: unknown host").into()),
    }
}
