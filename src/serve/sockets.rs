//! The listening sockets of `serve`, by address as written in the config file.
//!
//! The set owns one socket per address; each generation of a service gets duplicates
//! (`dup(2)`: the same socket, another descriptor), so a generation that retires closes
//! only its own descriptors and the socket itself stays open, its backlog and all. A
//! reload binds only the addresses that are new and lets go of the ones no longer in
//! the file: an address that stays is never rebound, and no client is refused.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use super::Listen;
use crate::Result;
use crate::net::bind;
use crate::rt::{TcpListener, UdpSocket};

/// The sockets, by address.
#[derive(Default)]
pub struct Sockets {
    tcp: HashMap<String, TcpListener>,
    udp: HashMap<String, UdpSocket>,
}

impl Sockets {
    /// An empty set.
    pub fn new() -> Sockets {
        Sockets::default()
    }

    /// Adopts a TCP socket passed by systemd for `addr`.
    pub fn adopt_tcp(&mut self, addr: &str, listener: TcpListener) {
        self.tcp.insert(addr.to_owned(), listener);
    }

    /// Adopts a UDP socket passed by systemd for `addr`.
    pub fn adopt_udp(&mut self, addr: &str, socket: UdpSocket) {
        self.udp.insert(addr.to_owned(), socket);
    }

    /// Binds every address of `listen` not held yet. On an error nothing new is kept,
    /// and the error names the address.
    pub async fn bind(&mut self, listen: &[&Listen]) -> Result<()> {
        let mut tcp = HashMap::new();
        let mut udp = HashMap::new();
        for l in listen {
            for addr in &l.tcp {
                if !self.tcp.contains_key(addr) && !tcp.contains_key(addr) {
                    tcp.insert(addr.clone(), bind::bind_tcp(addr).await?);
                }
            }
            for addr in &l.udp {
                if !self.udp.contains_key(addr) && !udp.contains_key(addr) {
                    udp.insert(addr.clone(), bind::bind_udp(addr).await?);
                }
            }
        }
        self.tcp.extend(tcp);
        self.udp.extend(udp);
        Ok(())
    }

    /// Duplicates of the sockets for `listen`, in its order (bound by [`Sockets::bind`]).
    pub fn for_service(&self, listen: &Listen) -> io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
        let missing = |addr: &str| io::Error::other(format!("{addr} is not bound"));
        let tcp = listen
            .tcp
            .iter()
            .map(|a| self.tcp.get(a).ok_or_else(|| missing(a))?.try_clone())
            .collect::<io::Result<_>>()?;
        let udp = listen
            .udp
            .iter()
            .map(|a| self.udp.get(a).ok_or_else(|| missing(a))?.try_clone())
            .collect::<io::Result<_>>()?;
        Ok((tcp, udp))
    }

    /// The address the socket for `addr` is bound to (the port picked, for port 0).
    pub fn local_tcp(&self, addr: &str) -> Option<SocketAddr> {
        self.tcp.get(addr).and_then(|l| l.local_addr().ok())
    }

    /// [`Sockets::local_tcp`] for UDP.
    pub fn local_udp(&self, addr: &str) -> Option<SocketAddr> {
        self.udp.get(addr).and_then(|s| s.local_addr().ok())
    }

    /// Lets go of every socket not in `listen` (generations that still have duplicates
    /// keep those open until they end).
    pub fn keep_only(&mut self, listen: &[&Listen]) {
        self.tcp
            .retain(|addr, _| listen.iter().any(|l| l.tcp.contains(addr)));
        self.udp
            .retain(|addr, _| listen.iter().any(|l| l.udp.contains(addr)));
    }
}
