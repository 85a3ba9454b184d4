//! The nc-style tools: `connect` (stdin to a socket and the socket to stdout, at once)
//! and `listen` (print what arrives, from many clients at once).
//!
//! They write data to stdout and nothing else; errors go to stderr as one line each.

pub mod connect;
pub mod listen;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Result;
use crate::net::describe::describe;
use crate::net::tls::Verify;
use crate::rt;

/// A client's TLS on the command line — `--tls`, `--ca`, `--sni`, `--insecure` — one
/// definition for `connect` and `bench`, so the two say and check the same thing.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// TCP: speak TLS (1.2 or 1.3), verifying the server against the system's root
    /// certificates (or --ca) by the target's host name (or --sni).
    #[arg(long, conflicts_with = "udp")]
    pub tls: bool,
    /// With --tls: trust only the certificates in this PEM file.
    #[arg(long, value_name = "PEM", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// With --tls: the name to verify the certificate against and send as SNI.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub sni: Option<String>,
    /// With --tls: do not verify the server's certificate at all (anyone in the path
    /// can then read and change the traffic).
    #[arg(long, requires = "tls", conflicts_with = "ca")]
    pub insecure: bool,
}

impl TlsArgs {
    /// How to check the server: `--insecure`, else `--ca`, else the system's roots.
    pub fn verify(&self) -> Verify {
        match (self.insecure, &self.ca) {
            (true, _) => Verify::Insecure,
            (false, Some(ca)) => Verify::Ca(ca.clone()),
            (false, None) => Verify::SystemRoots,
        }
    }
}

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
